"""Every error is an OperationOutcome with the right status; no stack trace reaches a client."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from fhir_server.logging import configure_logging
from resources.sql.engine import Database
from resources.store import V
from tests.builders import FHIR_JSON, create, make_patient


def assert_outcome(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = r.json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] in ("error", "fatal")
    assert issue["diagnostics"]
    assert issue["details"]["coding"][0]["code"].startswith("FS-")
    if code:
        assert issue["code"] == code
    assert "Traceback" not in r.text
    return body


def test_malformed_json_is_400(client: TestClient) -> None:
    r = client.post("/fhir/Patient", content=b'{"resourceType": "Patient",', headers=FHIR_JSON)
    body = assert_outcome(r, 400)
    assert "not valid JSON" in body["issue"][0]["diagnostics"]


def test_invalid_resource_names_the_element(client: TestClient) -> None:
    bad = {"resourceType": "Patient", "name": [{"family": 42}], "birthDate": "02/05/1980"}
    body = assert_outcome(client.post("/fhir/Patient", json=bad, headers=FHIR_JSON), 400)
    expressions = body["issue"][0]["expression"]
    assert "Patient.name[0].family" in expressions
    assert "Patient.birthDate" in expressions


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"resourceType": "Slot"}, "Slot"),
        ({"resourceType": "Patient", "unknownElement": 1}, "Patient.unknownElement"),
        ({"name": [{"family": "x"}]}, "resourceType"),
        ([1, 2], "JSON object"),
        ({"resourceType": "Practitioner"}, "URL is for Patient"),
        ({"resourceType": "Observation"}, "URL is for Patient"),
    ],
    ids=["missing-required", "unknown-element", "no-type", "array", "wrong-type", "unserved"],
)
def test_invalid_bodies(client: TestClient, body: Any, needle: str) -> None:
    rtype = "Slot" if needle == "Slot" else "Patient"
    out = assert_outcome(client.post(f"/fhir/{rtype}", json=body, headers=FHIR_JSON), 400)
    text = json.dumps(out)
    assert needle in text


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("GET", "/fhir/Observation/1", 404),
        ("GET", "/fhir/Patient/does-not-exist", 404),
        ("GET", "/fhir/nothing/here/at/all/really", 404),
        ("POST", "/fhir/Patient/123", 405),
        ("DELETE", "/fhir/Patient", 405),
        ("PATCH", "/fhir/Patient", 405),
    ],
    ids=[
        "unknown-type",
        "unknown-id",
        "unknown-path",
        "post-instance",
        "delete-type",
        "patch-type",
    ],
)
def test_not_found_and_not_allowed(client: TestClient, method: str, url: str, status: int) -> None:
    assert_outcome(client.request(method, url, json={}, headers=FHIR_JSON), status)


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/xml", "application/fhir+xml", ""],
)
def test_unsupported_media_type(client: TestClient, content_type: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/fhir/Patient", content=json.dumps(make_patient()), headers=headers)
    assert_outcome(r, 415)


def test_conflict_and_gone_and_precondition(client: TestClient) -> None:
    p = create(client, make_patient())
    stale = client.put(
        f"/fhir/Patient/{p['id']}", json=p, headers={**FHIR_JSON, "if-match": 'W/"7"'}
    )
    assert_outcome(stale, 412)
    client.delete(f"/fhir/Patient/{p['id']}")
    gone = assert_outcome(client.get(f"/fhir/Patient/{p['id']}"), 410, "deleted")
    assert gone["issue"][0]["diagnostics"].endswith("was deleted")


def test_unknown_search_parameter_strict_is_400(client: TestClient) -> None:
    r = client.get(
        "/fhir/Patient", params={"shoe-size": "9"}, headers={"prefer": "handling=strict"}
    )
    body = assert_outcome(r, 400)
    assert "shoe-size" in body["issue"][0]["diagnostics"]


def test_unexpected_failure_is_500_with_error_id_in_log(client: TestClient, db: Database) -> None:
    p = create(client, make_patient("Zebedee"))
    with db.engine.begin() as conn:  # damage the stored ciphertext behind the server's back
        conn.execute(update(V).where(V.c.res_id == p["id"]).values(ciphertext=b"\x00" * 40))
    log = io.StringIO()
    configure_logging("info", stream=log)
    try:
        r = client.get(f"/fhir/Patient/{p['id']}")
    finally:
        configure_logging("warning")
    body = assert_outcome(r, 500, "exception")
    error_id = r.headers["x-error-id"]
    assert error_id in body["issue"][0]["diagnostics"]
    events = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]
    errors = [e for e in events if e["event"] == "http.unexpected_error"]
    assert [e["error_id"] for e in errors] == [error_id]
    assert errors[0]["request_id"] == r.headers["x-request-id"]
    assert "Zebedee" not in log.getvalue()
    assert "File " not in r.text
