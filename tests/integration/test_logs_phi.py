"""A full scenario against a real server: the log is JSON events with request ids, no PHI."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx

from tests.integration.server import running_server, server_env

H = {"content-type": "application/fhir+json"}
PHI = [
    "Quintavalle",
    "quintavalle",
    "Brunhilde",
    "+1-508-555-0142",
    "5085550142",
    "MRN-424242",
    "1959-02-28",
    "Orchardgate",
    "brunhilde@example.org",
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


def _scenario(base: str) -> None:
    with httpx.Client(base_url=base, timeout=30) as c:
        p = c.post("/Patient", json=_patient(), headers=H).json()
        pid = p["id"]
        for q in (
            {"name": "Quintavalle"},
            {"phone": "+1-508-555-0142"},
            {"birthdate": "1959-02-28"},
            {"identifier": "urn:mrn|MRN-424242"},
            {"email": "brunhilde@example.org"},
            {"name:contains": "Quinta"},
        ):
            c.get("/Patient", params=q)
        c.post("/Patient/_search", data={"family": "Quintavalle"})
        c.put(f"/Patient/{pid}", json={**_patient(), "id": pid, "gender": "female"}, headers=H)
        patch = [{"op": "test", "path": "/name/0/family", "value": "Brunhilde-Quintavalle"}]
        c.patch(
            f"/Patient/{pid}", json=patch, headers={"content-type": "application/json-patch+json"}
        )
        c.patch(
            f"/Patient/{pid}",
            json=[{"op": "remove", "path": "/name/9"}],
            headers={"content-type": "application/json-patch+json"},
        )
        bad = {**_patient(), "birthDate": "Quintavalle 1959"}
        c.post("/Patient", json=bad, headers=H)
        c.post("/Patient", content=b'{"name": "Quintavalle"', headers=H)
        c.put(
            f"/Patient/{pid}", json={**_patient(), "id": pid}, headers={**H, "if-match": 'W/"99"'}
        )
        patch_binary = base64.b64encode(
            json.dumps(
                [{"op": "replace", "path": "/name/0/given/0", "value": "Brunhilde"}]
            ).encode()
        ).decode()
        c.post(
            "",
            json={
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {"resource": _patient(), "request": {"method": "POST", "url": "Patient"}},
                    {
                        "resource": {
                            "resourceType": "Binary",
                            "contentType": "application/json-patch+json",
                            "data": patch_binary,
                        },
                        "request": {"method": "PATCH", "url": f"Patient/{pid}"},
                    },
                ],
            },
            headers=H,
        )
        c.post(
            "",
            json={
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [
                    {"resource": bad, "request": {"method": "POST", "url": "Patient"}},
                    {"request": {"method": "GET", "url": "Patient?name=Quintavalle"}},
                ],
            },
            headers=H,
        )
        c.get(f"/Patient/{pid}/_history")
        c.delete(f"/Patient/{pid}")
        c.get(f"/Patient/{pid}")


def test_log_has_request_ids_and_no_phi(tmp_path: Path, database_url: str) -> None:
    env = server_env(tmp_path, database_url, FHIRSCHED_LOG_LEVEL="debug")
    with running_server(tmp_path, env) as server:
        _scenario(server.base)
    log = server.log_path.read_text()
    events = []
    for line in log.splitlines():
        if line.startswith("FHIR base URL: "):
            continue
        events.append(json.loads(line))  # every other line is a JSON event
    requests = [e for e in events if e["event"] == "http.request"]
    assert len(requests) >= 20
    assert all(len(e["request_id"]) == 32 for e in requests)
    assert {e["status"] for e in requests} >= {200, 201, 204, 400, 410, 412, 422}
    leaked = [value for value in PHI if value in log]
    assert leaked == []
