"""The error model: every error is an OperationOutcome with the right status and no stack trace.

See https://hl7.org/fhir/R4/http.html#Status-Codes and
https://hl7.org/fhir/R4/operationoutcome.html.  Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from base.logging import configure_logging
from fhir_server.app import create_app
from fhir_server.settings import Settings
from resources.sql.engine import Database
from resources.store import Store, V
from security.crypto import KeyRing
from tests.builders import FHIR_JSON, MINIMAL, create, make_patient
from tests.smart import backend_token

BASE = "http://testserver/fhir"
# A history cursor as the server writes one, for a version no Integer column can hold
HUGE_VERSION_CURSOR = json.dumps(["2026-01-01T00:00:00+00:00", "p", 2**64]).encode().hex()
PATCH_JSON = {"content-type": "application/json-patch+json"}
STATUS_CODES = {
    400: {"invalid", "structure", "not-supported"},
    404: {"not-found"},
    405: {"not-supported"},
    409: {"conflict"},
    410: {"deleted"},
    412: {"conflict"},
    413: {"too-costly"},
    415: {"not-supported"},
    422: {"processing"},
    500: {"exception"},
}


def assert_outcome(r: httpx.Response, status: int) -> dict[str, Any]:
    """``r`` is an error OperationOutcome with ``status``; returns its single issue."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    assert r.headers["x-request-id"]
    body: dict[str, Any] = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert len(body["issue"]) == 1
    issue: dict[str, Any] = body["issue"][0]
    assert issue["severity"] == "error"
    assert issue["code"] in STATUS_CODES[status]
    assert isinstance(issue["diagnostics"], str)
    assert len(issue["diagnostics"]) > 10
    assert issue["details"]["coding"][0]["system"] == "urn:fhir-sched:message-id"
    message_ids = {"FS-0400", "FS-0401", "FS-0402"} if status == 400 else {f"FS-0{status}"}
    assert issue["details"]["coding"][0]["code"] in message_ids
    assert "Traceback" not in r.text
    assert ".py" not in r.text
    return issue


def make_invalid_patient(**elements: Any) -> dict[str, Any]:
    return {**make_patient(), **elements}


def patient_count(client: TestClient) -> int:
    total: int = client.get("/fhir/Patient", params={"_summary": "count"}).json()["total"]
    return total


# -- 400 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [b'{"resourceType": "Patient",', b'{"resourceType": "Patient"} trailing', b"", b"\xff\xfe{}"],
    ids=["truncated", "trailing-garbage", "empty", "not-utf8"],
)
@pytest.mark.parametrize(
    ("method", "url"),
    [("POST", "/fhir/Patient"), ("PUT", "/fhir/Patient/p1"), ("PUT", "/fhir/Patient?name=x")],
    ids=["create", "update", "conditional-update"],
)
def test_malformed_json_is_400(client: TestClient, method: str, url: str, raw: bytes) -> None:
    r = client.request(method, url, content=raw, headers=FHIR_JSON)
    issue = assert_outcome(r, 400)
    assert "JSON" in issue["diagnostics"] or "empty" in issue["diagnostics"]
    assert patient_count(client) == 0


def test_malformed_json_patch_body_is_400(client: TestClient) -> None:
    p = create(client, make_patient())
    r = client.patch(f"/fhir/Patient/{p['id']}", content=b'[{"op": "add",', headers=PATCH_JSON)
    assert "not valid JSON" in assert_outcome(r, 400)["diagnostics"]


INVALID: list[tuple[str, str, dict[str, Any], str]] = [
    (
        "family-not-string",
        "Patient",
        make_invalid_patient(name=[{"family": 42}]),
        "Patient.name[0].family",
    ),
    (
        "given-not-list",
        "Patient",
        make_invalid_patient(name=[{"given": "Ann"}]),
        "Patient.name[0].given",
    ),
    ("name-not-list", "Patient", make_invalid_patient(name={"family": "X"}), "Patient.name"),
    ("bad-date", "Patient", make_invalid_patient(birthDate="02/05/1980"), "Patient.birthDate"),
    ("unknown-element", "Patient", make_invalid_patient(shoeSize=9), "Patient.shoeSize"),
    ("bad-gender-code", "Patient", make_invalid_patient(gender="x"), "Patient.gender"),
    (
        "bad-telecom-system",
        "Patient",
        make_invalid_patient(telecom=[{"system": "pigeon", "value": "1"}]),
        "Patient.telecom.system",
    ),
    ("slot-without-schedule", "Slot", {"resourceType": "Slot", "status": "free"}, "Slot.schedule"),
    (
        "appointment-participant-status",
        "Appointment",
        {**MINIMAL["Appointment"], "participant": [{"status": "maybe"}]},
        "Appointment.participant.status",
    ),
    ("no-resource-type", "Patient", {"name": [{"family": "X"}]}, "resourceType"),
    ("type-differs-from-url", "Patient", {"resourceType": "Practitioner"}, "resourceType"),
]


@pytest.mark.parametrize(
    ("rtype", "body", "path"), [i[1:] for i in INVALID], ids=[i[0] for i in INVALID]
)
def test_invalid_resource_names_the_element(
    client: TestClient, rtype: str, body: dict[str, Any], path: str
) -> None:
    r = client.post(f"/fhir/{rtype}", json=body, headers=FHIR_JSON)
    issue = assert_outcome(r, 400)
    assert path in issue["expression"]
    if "." in path:
        assert path.split(".")[-1].split("[")[0] in issue["diagnostics"]
    # and the same body sent by PUT is refused the same way
    same = client.put(f"/fhir/{rtype}/x1", json={**body, "id": "x1"}, headers=FHIR_JSON)
    assert path in assert_outcome(same, 400)["expression"]
    assert client.get(f"/fhir/{rtype}/x1").status_code == 404


@pytest.mark.parametrize(
    ("method", "url", "body", "needle"),
    [
        ("PUT", "/fhir/Patient/p1", make_patient(), "must carry its id"),
        ("PUT", "/fhir/Patient/p1", {**make_patient(), "id": "p2"}, "does not match"),
        ("PUT", "/fhir/Patient/a_b", {**make_patient(), "id": "a_b"}, "not a valid FHIR id"),
        ("PUT", "/fhir/Patient", make_patient(), "needs search criteria"),
        ("POST", "/fhir/Patient", [make_patient()], "JSON object"),
    ],
    ids=["put-without-id", "put-id-mismatch", "put-bad-id", "put-type-no-criteria", "array"],
)
def test_other_bad_requests(
    client: TestClient, method: str, url: str, body: Any, needle: str
) -> None:
    r = client.request(method, url, json=body, headers=FHIR_JSON)
    assert needle in assert_outcome(r, 400)["diagnostics"]
    assert patient_count(client) == 0


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("/fhir/Patient/_history?_count=0", "_count"),
        ("/fhir/Patient/_history?_count=many", "_count"),
        ("/fhir/Patient/_history?_since=yesterday", "_since"),
        ("/fhir/Patient/_history?_cursor=zz", "_cursor"),
        ("/fhir/Patient?_count=abc", "_count"),
        ("/fhir/Patient?birthdate=notadate", "birthdate"),
        ("/fhir/Patient/_history?_count=²", "_count"),  # a digit to isdigit(), not to int()
        (f"/fhir/Patient/_history?_cursor={HUGE_VERSION_CURSOR}", "_cursor"),
    ],
    ids=[
        "count-zero",
        "count-word",
        "since",
        "cursor",
        "search-count",
        "search-date",
        "count-superscript",
        "cursor-past-any-version",
    ],
)
def test_bad_query_parameters_are_400(client: TestClient, url: str, needle: str) -> None:
    assert needle in assert_outcome(client.get(url), 400)["diagnostics"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"resourceType": "Patient", "gender": "male", "gender": "female"}',
        b'{"resourceType": "Patient", "name": [{"family": "A", "given": ["B"], "family": "C"}]}',
    ],
    ids=["top-level", "nested"],
)
def test_duplicate_json_keys_are_400(client: TestClient, body: bytes) -> None:
    """Two readers may take different values of a key named twice: refuse it, store nothing."""
    issue = assert_outcome(client.post("/fhir/Patient", content=body, headers=FHIR_JSON), 400)
    assert "twice" in issue["diagnostics"]
    assert patient_count(client) == 0


def test_duplicate_keys_in_operation_parameters_are_400(client: TestClient) -> None:
    body = b'{"resourceType": "Parameters", "parameter": [], "parameter": []}'
    r = client.post("/fhir/Appointment/$find", content=body, headers=FHIR_JSON)
    assert "'parameter' twice" in assert_outcome(r, 400)["diagnostics"]


def test_deeply_nested_body_is_400(client: TestClient) -> None:
    """Deep enough for the standard library's parser to run out of recursion (orjson's own
    limit is 1,024 levels)."""
    body = b'{"resourceType": "Patient", "extension": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    assert_outcome(client.post("/fhir/Patient", content=body, headers=FHIR_JSON), 400)
    assert patient_count(client) == 0


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ([("gender", "male")] * 700, "700 parameters"),
        ([("_id", ",".join(f"p{k}" for k in range(300)))], "300 values"),
    ],
    ids=["700-repeated-parameters", "300-values"],
)
def test_oversized_searches_are_400(
    client: TestClient, query: list[tuple[str, str]], needle: str
) -> None:
    assert needle in assert_outcome(client.get("/fhir/Patient", params=query), 400)["diagnostics"]
    r = client.post("/fhir/Patient/_search", data={"gender": ["male"] * 700})
    assert "700 parameters" in assert_outcome(r, 400)["diagnostics"]


def test_searches_up_to_the_limit_run(client: TestClient) -> None:
    create(client, make_patient(gender="male"))
    r = client.get("/fhir/Patient", params=[("gender", "male")] * 64)
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 1


def test_if_match_that_is_not_an_etag_is_400(client: TestClient) -> None:
    p = create(client, make_patient())
    r = client.put(
        f"/fhir/Patient/{p['id']}", json=p, headers={**FHIR_JSON, "if-match": "yesterday"}
    )
    assert "If-Match" in assert_outcome(r, 400)["diagnostics"]


# -- 404 -----------------------------------------------------------------------------------------
OBSERVATION = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}


@pytest.mark.parametrize(
    ("method", "url", "body", "headers"),
    [
        ("GET", "/fhir/Observation/1", None, {}),
        ("GET", "/fhir/Observation", None, {}),
        ("POST", "/fhir/Observation", OBSERVATION, FHIR_JSON),
        ("PUT", "/fhir/Observation/1", {**OBSERVATION, "id": "1"}, FHIR_JSON),
        ("PUT", "/fhir/Observation?code=x", OBSERVATION, FHIR_JSON),
        ("PATCH", "/fhir/Observation/1", [], PATCH_JSON),
        ("DELETE", "/fhir/Observation/1", None, {}),
        ("GET", "/fhir/Observation/_history", None, {}),
        ("GET", "/fhir/Observation/1/_history", None, {}),
        ("GET", "/fhir/Observation/1/_history/1", None, {}),
        ("POST", "/fhir/Observation/_search", None, {}),
    ],
    ids=[
        "read",
        "search",
        "create",
        "update",
        "conditional-update",
        "patch",
        "delete",
        "type-history",
        "instance-history",
        "vread",
        "post-search",
    ],
)
def test_unknown_type_is_404(
    client: TestClient, method: str, url: str, body: Any, headers: dict[str, str]
) -> None:
    r = client.request(method, url, json=body, headers=headers)
    assert "Observation" in assert_outcome(r, 404)["diagnostics"]


@pytest.mark.parametrize(
    ("method", "url", "body", "headers"),
    [
        ("GET", "/fhir/Patient/missing", None, {}),
        ("GET", "/fhir/Patient/missing/_history/1", None, {}),
        ("GET", "/fhir/Patient/missing/_history", None, {}),
        ("PATCH", "/fhir/Patient/missing", [], PATCH_JSON),
        ("DELETE", "/fhir/Patient/missing", None, {}),
    ],
    ids=["read", "vread", "history", "patch", "delete"],
)
def test_unknown_id_is_404(
    client: TestClient, method: str, url: str, body: Any, headers: dict[str, str]
) -> None:
    create(client, make_patient())
    r = client.request(method, url, json=body, headers=headers)
    assert "Patient/missing" in assert_outcome(r, 404)["diagnostics"]


@pytest.mark.parametrize(
    "version",
    ["2", "0", "x", "-1", "²", "2147483648", "99999999999999999999"],
    ids=["too-new", "zero", "word", "negative", "superscript", "past-int4", "past-int8"],
)
def test_unknown_version_is_404(client: TestClient, version: str) -> None:
    p = create(client, make_patient())
    assert_outcome(client.get(f"/fhir/Patient/{p['id']}/_history/{version}"), 404)


def test_unknown_path_is_404(client: TestClient) -> None:
    assert (
        "/fhir/Patient/1/x/y"
        in assert_outcome(client.get("/fhir/Patient/1/x/y"), 404)["diagnostics"]
    )


# -- 405 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "url", "allow"),
    [
        ("POST", "/fhir/Patient/123", "GET, PUT, PATCH, DELETE"),
        ("DELETE", "/fhir/Patient", "GET, POST, PUT"),
        ("PATCH", "/fhir/Patient", "GET, POST, PUT"),
        ("PUT", "/fhir/Patient/1/_history/1", "GET"),
        ("DELETE", "/fhir/Patient/1/_history", "GET"),
    ],
    ids=[
        "post-instance",
        "delete-type",
        "patch-type",
        "put-version",
        "delete-history",
    ],
)
def test_method_not_allowed_is_405_with_allow(
    client: TestClient, method: str, url: str, allow: str
) -> None:
    r = client.request(method, url, json={"resourceType": "Patient"}, headers=FHIR_JSON)
    issue = assert_outcome(r, 405)
    assert method in issue["diagnostics"]
    assert r.headers["allow"] == allow
    assert patient_count(client) == 0


# -- 409 -----------------------------------------------------------------------------------------
def _waiting_on(db: Database, holder_pid: int) -> int:
    """How many PostgreSQL sessions wait on a lock held by the session ``holder_pid``.

    Asked on a fresh connection: pg_stat_activity is a snapshot taken once per transaction.
    """
    sql = "SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"
    with db.engine.connect() as probe:
        return int(probe.execute(text(sql), {"pid": holder_pid}).scalar_one())


def test_concurrent_update_is_409_or_serialised(
    client: TestClient, db: Database, keys: KeyRing
) -> None:
    """A PUT that read version 1 while another writer made version 2 must not overwrite it.

    PostgreSQL: the PUT reads v1, then waits on the other writer's row lock; when that commits
    the optimistic check fails and the client gets 409.  SQLite: writers hold the database lock
    from the start, so the PUT reads v2 and makes v3.  Either way no update is lost.
    """
    p = create(client, make_patient("First"))
    rid = p["id"]
    store = Store(keys, base_url=BASE)
    result: dict[str, httpx.Response] = {}

    def late_put() -> None:
        body = {**make_patient("Late"), "id": rid}
        result["r"] = client.put(f"/fhir/Patient/{rid}", json=body, headers=FHIR_JSON)

    worker = threading.Thread(target=late_put)
    with db.write() as conn:
        current = store.current(conn, "Patient", rid)
        racer = {**make_patient("Racer"), "id": rid}
        store.write(conn, resource=racer, method="PUT", expected=current)
        worker.start()
        deadline = time.monotonic() + 10
        if db.is_sqlite:
            time.sleep(0.3)  # the PUT waits for BEGIN IMMEDIATE
        else:
            holder = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            while _waiting_on(db, holder) == 0:
                if time.monotonic() > deadline - 8:
                    import faulthandler
                    import sys

                    faulthandler.dump_traceback(sys.stdout, all_threads=True)
                    break
                assert time.monotonic() < deadline, "the PUT never reached the row lock"
                time.sleep(0.02)
    worker.join(timeout=30)
    assert not worker.is_alive()
    r = result["r"]
    history = client.get(f"/fhir/Patient/{rid}/_history").json()
    families = [e["resource"]["name"][0]["family"] for e in history["entry"]]
    if db.is_sqlite:
        assert r.status_code == 200, r.text
        assert families == ["Late", "Racer", "First"]
    else:
        issue = assert_outcome(r, 409)
        assert f"Patient/{rid}" in issue["diagnostics"]
        assert families == ["Racer", "First"]
        assert client.get(f"/fhir/Patient/{rid}").json()["name"][0]["family"] == "Racer"


# -- 410 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "suffix", "body", "headers"),
    [
        ("GET", "", None, {}),
        ("GET", "/_history/2", None, {}),
        ("PATCH", "", [{"op": "add", "path": "/gender", "value": "male"}], PATCH_JSON),
    ],
    ids=["read", "vread-deletion", "patch"],
)
def test_deleted_is_410(
    client: TestClient, method: str, suffix: str, body: Any, headers: dict[str, str]
) -> None:
    p = create(client, make_patient())
    assert client.delete(f"/fhir/Patient/{p['id']}").status_code == 204
    r = client.request(method, f"/fhir/Patient/{p['id']}{suffix}", json=body, headers=headers)
    assert "delet" in assert_outcome(r, 410)["diagnostics"]
    assert client.get(f"/fhir/Patient/{p['id']}/_history/1").json() == p


# -- 412 -----------------------------------------------------------------------------------------
def _stale_update(client: TestClient) -> httpx.Response:
    p = create(client, make_patient(mrn="A"))
    return client.put(
        f"/fhir/Patient/{p['id']}", json=p, headers={**FHIR_JSON, "if-match": 'W/"5"'}
    )


def _stale_patch(client: TestClient) -> httpx.Response:
    p = create(client, make_patient(mrn="A"))
    ops = [{"op": "add", "path": "/gender", "value": "male"}]
    return client.patch(
        f"/fhir/Patient/{p['id']}", json=ops, headers={**PATCH_JSON, "if-match": 'W/"5"'}
    )


def _ambiguous_create(client: TestClient) -> httpx.Response:
    create(client, make_patient(mrn="A"))
    create(client, make_patient(mrn="A"))
    return client.post(
        "/fhir/Patient",
        json=make_patient(mrn="A"),
        headers={**FHIR_JSON, "if-none-exist": "identifier=urn:mrn|A"},
    )


def _ambiguous_update(client: TestClient) -> httpx.Response:
    create(client, make_patient(mrn="A"))
    create(client, make_patient(mrn="A"))
    return client.put(
        "/fhir/Patient", params={"identifier": "urn:mrn|A"}, json=make_patient(), headers=FHIR_JSON
    )


@pytest.mark.parametrize(
    ("make_request", "patients_after"),
    [(_stale_update, 1), (_stale_patch, 1), (_ambiguous_create, 2), (_ambiguous_update, 2)],
    ids=["update-if-match", "patch-if-match", "conditional-create", "conditional-update"],
)
def test_precondition_failed_is_412_and_changes_nothing(
    client: TestClient, make_request: Any, patients_after: int
) -> None:
    r = make_request(client)
    assert_outcome(r, 412)
    assert patient_count(client) == patients_after
    hist = client.get("/fhir/Patient/_history").json()
    assert len(hist["entry"]) == patients_after  # no new version was written


# -- 413 -----------------------------------------------------------------------------------------
def _padded_patient(size: int) -> bytes:
    """A valid Patient of about ``size`` bytes (its narrative padded)."""
    div = '<div xmlns="http://www.w3.org/1999/xhtml">' + "x" * size + "</div>"
    return json.dumps({**make_patient(), "text": {"status": "generated", "div": div}}).encode()


def _limited(db: Database, keys: KeyRing, settings: Settings, **limits: int) -> TestClient:
    app = create_app(settings.model_copy(update=limits), keys=keys, db=db)
    c = TestClient(app, raise_server_exceptions=False)
    c.headers["Authorization"] = f"Bearer {backend_token(c, db)}"
    return c


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413_and_stores_nothing(
    db: Database, keys: KeyRing, settings: Settings, chunked: bool
) -> None:
    with _limited(db, keys, settings, max_body_bytes=4096) as c:
        body = _padded_patient(5000)
        content: Any = iter([body[:2000], body[2000:]]) if chunked else body
        issue = assert_outcome(c.post("/fhir/Patient", content=content, headers=FHIR_JSON), 413)
        assert "4,096 bytes" in issue["diagnostics"]
        assert patient_count(c) == 0
        assert c.post("/fhir/Patient", content=_padded_patient(1000), headers=FHIR_JSON).is_success


def test_default_body_limit_is_2_mb(client: TestClient) -> None:
    r = client.post("/fhir/Patient", content=_padded_patient(2 * 1024 * 1024), headers=FHIR_JSON)
    assert "2,097,152 bytes" in assert_outcome(r, 413)["diagnostics"]
    assert patient_count(client) == 0


def test_bundles_have_their_own_larger_limit(
    db: Database, keys: KeyRing, settings: Settings
) -> None:
    with _limited(db, keys, settings, max_body_bytes=4096, max_bundle_bytes=16384) as c:
        entry = {
            "resource": json.loads(_padded_patient(6000)),
            "request": {"method": "POST", "url": "Patient"},
        }
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
        assert c.post("/fhir", json=bundle, headers=FHIR_JSON).status_code == 200
        bundle["entry"] = [entry] * 3
        assert_outcome(c.post("/fhir", json=bundle, headers=FHIR_JSON), 413)
        assert patient_count(c) == 1


# -- 415 -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "application/fhir+xml", "multipart/form-data", None],
    ids=["text-plain", "xml", "fhir-xml", "multipart", "none"],
)
@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("POST", "/fhir/Patient"),
        ("PUT", "/fhir/Patient/p1"),
        ("PUT", "/fhir/Patient?identifier=x"),
        ("POST", "/fhir"),
    ],
    ids=["create", "update", "conditional-update", "bundle"],
)
def test_wrong_content_type_is_415(
    client: TestClient, method: str, url: str, content_type: str | None
) -> None:
    body = json.dumps({**make_patient(), "id": "p1"}).encode()
    headers = {"content-type": content_type} if content_type else {}
    r = client.request(method, url, content=body, headers=headers)
    issue = assert_outcome(r, 415)
    assert "application/fhir+json" in issue["diagnostics"]
    assert patient_count(client) == 0


@pytest.mark.parametrize(
    "content_type",
    ["application/fhir+json", "application/json", "text/plain"],
    ids=["fhir-json", "json", "text"],
)
def test_patch_needs_json_patch_media_type(client: TestClient, content_type: str) -> None:
    p = create(client, make_patient())
    ops = [{"op": "add", "path": "/gender", "value": "male"}]
    r = client.patch(f"/fhir/Patient/{p['id']}", json=ops, headers={"content-type": content_type})
    assert "application/json-patch+json" in assert_outcome(r, 415)["diagnostics"]
    assert client.get(f"/fhir/Patient/{p['id']}").json() == p


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"], ids=["json", "text"])
def test_post_search_needs_form_encoding(client: TestClient, content_type: str) -> None:
    r = client.post(
        "/fhir/Patient/_search", content=b'{"family": "x"}', headers={"content-type": content_type}
    )
    assert "x-www-form-urlencoded" in assert_outcome(r, 415)["diagnostics"]


# -- 422 -----------------------------------------------------------------------------------------
def test_failed_patch_test_is_422(client: TestClient) -> None:
    p = create(client, make_patient("Smith"))
    ops = [
        {"op": "test", "path": "/name/0/family", "value": "Jones"},
        {"op": "replace", "path": "/name/0/family", "value": "Brown"},
    ]
    r = client.patch(f"/fhir/Patient/{p['id']}", json=ops, headers=PATCH_JSON)
    issue = assert_outcome(r, 422)
    assert "test" in issue["diagnostics"]
    assert "/name/0/family" in issue["diagnostics"]
    assert "Smith" not in r.text
    assert client.get(f"/fhir/Patient/{p['id']}").json() == p


def test_patch_producing_an_invalid_resource_is_422_naming_the_element(
    client: TestClient,
) -> None:
    p = create(client, make_patient())
    ops = [{"op": "replace", "path": "/birthDate", "value": "05/02/1980"}]
    r = client.patch(f"/fhir/Patient/{p['id']}", json=ops, headers=PATCH_JSON)
    assert assert_outcome(r, 422)["expression"] == ["Patient.birthDate"]


# -- 500 -----------------------------------------------------------------------------------------
@pytest.fixture
def log_stream() -> Any:
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    try:
        yield stream
    finally:
        configure_logging("warning")


def _events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


@pytest.mark.parametrize(
    "suffix",
    ["/Patient/{id}", "/Patient/{id}/_history/1", "/Patient/{id}/_history", "/Patient?_id={id}"],
    ids=["read", "vread", "history", "search"],
)
def test_unexpected_failure_is_500_with_error_id_in_response_and_log(
    client: TestClient, db: Database, log_stream: io.StringIO, suffix: str
) -> None:
    p = create(client, make_patient("Zebedee", phone="555-0199"))
    with db.engine.begin() as conn:  # damage the sealed body behind the server's back
        conn.execute(update(V).where(V.c.res_id == p["id"]).values(ciphertext=b"\x00" * 48))

    r = client.get("/fhir" + suffix.format(id=p["id"]), headers={"x-request-id": "req-500-test"})

    issue = assert_outcome(r, 500)
    error_id = r.headers["x-error-id"]
    assert len(error_id) >= 8
    assert error_id in issue["diagnostics"]
    assert r.headers["x-request-id"] == "req-500-test"
    for leak in ("Traceback", "File ", "/", "\\", "Error:", "Invalid", "Zebedee", "cryptography"):
        assert leak not in issue["diagnostics"], leak
    assert "Zebedee" not in r.text

    events = _events(log_stream)
    failures = [e for e in events if e["event"] == "http.unexpected_error"]
    assert [e["error_id"] for e in failures] == [error_id]
    assert failures[0]["request_id"] == "req-500-test"
    assert failures[0]["level"] == "error"
    assert "Zebedee" not in log_stream.getvalue()
    assert "555-0199" not in log_stream.getvalue()


def test_errors_are_logged_with_their_message_id(
    client: TestClient, log_stream: io.StringIO
) -> None:
    r = client.get("/fhir/Patient/missing", headers={"x-request-id": "req-404-test"})
    assert_outcome(r, 404)
    events = _events(log_stream)
    errors = [e for e in events if e["event"] == "http.error"]
    assert errors == [
        {**errors[0], "status": 404, "message_id": "FS-0404", "request_id": "req-404-test"}
    ]
    access = [e for e in events if e["event"] == "http.request"]
    assert access[-1]["status"] == 404
    assert access[-1]["path"] == "/fhir/Patient/missing"
