"""A full scenario against a real server: the log is JSON events with request ids, no PHI.

The server runs as `fhir-sched serve` (uvicorn) at debug level with stdout and stderr captured
together; the scenario sends PHI in bodies, query strings, form posts, headers and invalid
resources whose diagnostics echo it, and provokes a 500.  Then the whole log is searched.
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select, update

from resources.sql.engine import Database
from resources.store import V
from tests.integration.server import running_server, server_env

H = {"content-type": "application/fhir+json"}
PATCH_JSON = {"content-type": "application/json-patch+json"}
SUPPLIED_REQUEST_ID = "client-req-0001"
PATCH_BINARY = base64.b64encode(
    json.dumps([{"op": "replace", "path": "/name/0/given/0", "value": "Brunhilde"}]).encode()
).decode()
PHI = [
    "Quintavalle",
    "quintavalle",
    "QUINTAVALLE",
    "Brunhilde",
    "brunhilde",
    "+1-508-555-0142",
    "%2B1-508-555-0142",
    "508-555-0142",
    "5085550142",
    "MRN-424242",
    "424242",
    "1959-02-28",
    "Orchardgate",
    "brunhilde@example.org",
    "brunhilde%40example.org",
    PATCH_BINARY,
]


def _patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:mrn", "value": "MRN-424242"}],
        "name": [{"family": "Quintavalle", "given": ["Brunhilde"]}],
        "telecom": [
            {"system": "phone", "value": "+1-508-555-0142"},
            {"system": "email", "value": "brunhilde@example.org"},
        ],
        "birthDate": "1959-02-28",
        "address": [{"line": ["7 Orchardgate"]}],
    }


def _searches(c: httpx.Client) -> None:
    for q in (
        {"name": "Quintavalle"},
        {"family": "quinta"},
        {"phone": "+1-508-555-0142"},
        {"telecom": "5085550142"},
        {"birthdate": "1959-02-28"},
        {"identifier": "urn:mrn|MRN-424242"},
        {"email": "brunhilde@example.org"},
        {"address": "Orchardgate"},
        {"name:contains": "Quinta"},
        {"name:unknownmodifier": "Quintavalle"},  # 400 that may echo the value
        {"birthdate": "Quintavalle"},  # 400: not a date
    ):
        c.get("/Patient", params=q)
    c.post("/Patient/_search", data={"family": "Quintavalle", "birthdate": "1959-02-28"})


def _writes_and_errors(c: httpx.Client, pid: str) -> None:
    c.put(f"/Patient/{pid}", json={**_patient(), "id": pid, "gender": "female"}, headers=H)
    failing_test = [{"op": "test", "path": "/name/0/family", "value": "Brunhilde-Quintavalle"}]
    c.patch(f"/Patient/{pid}", json=failing_test, headers=PATCH_JSON)
    c.patch(f"/Patient/{pid}", json=[{"op": "remove", "path": "/name/9"}], headers=PATCH_JSON)
    rename = [{"op": "replace", "path": "/name/0/given/0", "value": "Brunhilde"}]
    c.patch(f"/Patient/{pid}", json=rename, headers=PATCH_JSON)
    bad = {**_patient(), "birthDate": "Quintavalle 1959"}
    c.post("/Patient", json=bad, headers=H)
    c.post("/Patient", json={**_patient(), "nickname": "Quintavalle"}, headers=H)
    c.post("/Patient", json={**_patient(), "gender": "Quintavalle"}, headers=H)
    c.post("/Patient", content=b'{"name": "Quintavalle"', headers=H)
    c.post("/Practitioner", json=_patient(), headers=H)  # type in body differs from URL
    c.put(f"/Patient/{pid}", json={**_patient(), "id": pid}, headers={**H, "if-match": 'W/"99"'})
    c.post("/Patient", json=_patient(), headers={**H, "if-none-exist": "identifier=MRN-424242"})
    c.post("", json=_transaction(pid), headers=H)
    c.post("", json=_batch(bad), headers=H)
    c.get(f"/Patient/{pid}/_history")
    c.get("/Patient", params={"name": "Quintavalle"}, headers={"x-request-id": SUPPLIED_REQUEST_ID})


def _transaction(pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _patient(), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {
                    "resourceType": "Binary",
                    "contentType": "application/json-patch+json",
                    "data": PATCH_BINARY,
                },
                "request": {"method": "PATCH", "url": f"Patient/{pid}"},
            },
        ],
    }


def _batch(bad: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": bad, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient?name=Quintavalle&phone=5085550142"}},
            {"request": {"method": "GET", "url": "Patient?birthdate=Quintavalle"}},
        ],
    }


def _server_error(
    c: httpx.Client, database_url: str, pid: str, seen: list[httpx.Response]
) -> httpx.Response:
    """A 500: another patient's sealed body copied onto this row no longer opens."""
    victim = c.post("/Patient", json=_patient(), headers=H).json()["id"]
    cols = (V.c.kek_id, V.c.wrapped_key, V.c.nonce, V.c.ciphertext)
    db = Database(database_url)
    try:
        with db.write() as conn:
            row = conn.execute(select(*cols).where(V.c.res_id == pid).limit(1)).one()
            conn.execute(update(V).where(V.c.res_id == victim).values(**row._asdict()))
    finally:
        db.dispose()
    # uvicorn closes the connection after an application error: use a connection of its own
    url = f"{str(c.base_url).rstrip('/')}/Patient/{victim}"
    seen.append(httpx.get(url, headers=dict(c.headers), timeout=30))
    return seen[-1]


def test_log_has_request_ids_and_no_phi(tmp_path: Path, database_url: str) -> None:
    env = server_env(tmp_path, database_url, FHIRSCHED_LOG_LEVEL="debug")
    with running_server(tmp_path, env) as server:
        token = server.token()  # a real bearer token: it must not be logged either
        auth = {"authorization": f"Bearer {token}"}
        seen: list[httpx.Response] = []
        hooks = {"response": [seen.append]}
        with httpx.Client(base_url=server.base, timeout=30, headers=auth, event_hooks=hooks) as c:
            created = c.post("/Patient", json=_patient(), headers=H)
            assert created.status_code == 201, created.text
            pid = created.json()["id"]
            _searches(c)
            _writes_and_errors(c, pid)
            failed = _server_error(c, database_url, pid, seen)
            c.delete(f"/Patient/{pid}")
            c.get(f"/Patient/{pid}")
    assert failed.status_code == 500
    log = server.log_path.read_text()
    lines = log.splitlines()
    # The one human line is the CLI's banner; everything else is a JSON event.
    assert lines[0].startswith("FHIR base URL: http://127.0.0.1:")
    events = [json.loads(line) for line in lines[1:]]
    requests = [
        e
        for e in events
        if e["event"] == "http.request"
        and e["path"].startswith("/fhir/")
        and e["path"] != "/fhir/metadata"
    ]
    # one access event per request the scenario sent, under the id the response carried
    assert len(seen) == 32
    assert sorted(e["request_id"] for e in requests) == sorted(
        r.headers["x-request-id"] for r in seen
    )
    assert SUPPLIED_REQUEST_ID in {e["request_id"] for e in requests}
    assert all(
        len(e["request_id"]) == 32 for e in requests if e["request_id"] != SUPPLIED_REQUEST_ID
    )
    logged_status = {e["request_id"]: e["status"] for e in requests}
    assert logged_status == {r.headers["x-request-id"]: r.status_code for r in seen}
    assert set(logged_status.values()) >= {200, 201, 204, 400, 410, 412, 422, 500}
    request_ids = {e["request_id"] for e in events if e["event"] == "http.request"}
    during_requests = [e for e in events if e["event"].startswith("http.")]
    assert all(e.get("request_id") in request_ids for e in during_requests)
    crash = [e for e in events if e["event"] == "http.unexpected_error"]
    assert [e["error_id"] for e in crash] == [failed.headers["x-error-id"]]
    assert crash[0]["error_type"] == "DecryptionError"
    assert "?" not in "".join(str(e.get("path")) for e in requests)
    leaked = [value for value in [*PHI, token] if value in log or urllib.parse.quote(value) in log]
    assert leaked == []
