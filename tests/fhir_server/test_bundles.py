"""Transaction and batch Bundles (https://hl7.org/fhir/R4/http.html#transaction)."""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi.testclient import TestClient

from tests.builders import (
    FHIR_JSON,
    create,
    make_appointment,
    make_patient,
    make_practitioner,
    make_schedule,
    make_slot,
)


def entry(
    method: str, url: str, resource: Any = None, full_url: str | None = None, **request: str
) -> dict[str, Any]:
    e: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        e["resource"] = resource
    if full_url:
        e["fullUrl"] = full_url
    return e


def post_bundle(
    client: TestClient, kind: str, entries: list[dict[str, Any]], **headers: str
) -> Any:
    return client.post(
        "/fhir",
        json={"resourceType": "Bundle", "type": kind, "entry": entries},
        headers={**FHIR_JSON, **headers},
    )


def count(client: TestClient, rtype: str) -> int:
    total: int = client.get(f"/fhir/{rtype}", params={"_summary": "count"}).json()["total"]
    return total


PAT, DOC, SCHED, SLOT = (
    f"urn:uuid:{n}"
    for n in (
        "0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
        "15121321-4af5-424b-aaf7-5d6f4d4e5c31",
        "a1e2f3a4-0000-4000-8000-000000000001",
        "a1e2f3a4-0000-4000-8000-000000000002",
    )
)


def linked_entries() -> list[dict[str, Any]]:
    appt = make_appointment(PAT, DOC, "2026-12-01T09:00:00Z", "2026-12-01T09:30:00Z")
    appt["slot"] = [{"reference": SLOT}]
    return [
        entry("POST", "Appointment", appt),
        entry(
            "POST",
            "Slot",
            make_slot(SCHED, "2026-12-01T09:00:00Z", "2026-12-01T09:30:00Z", "busy"),
            SLOT,
        ),
        entry("POST", "Schedule", make_schedule(DOC), SCHED),
        entry("POST", "Practitioner", make_practitioner(), DOC),
        entry(
            "POST", "Patient", make_patient(mrn="T-1"), PAT, ifNoneExist="identifier=urn:mrn|T-1"
        ),
    ]


def test_transaction_rewrites_urn_uuid_references(client: TestClient) -> None:
    r = post_bundle(client, "transaction", linked_entries())
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created"] * 5
    for e in out["entry"]:
        assert e["response"]["location"].startswith("http://testserver/fhir/")
        assert e["response"]["etag"] == 'W/"1"'
        assert e["response"]["lastModified"].endswith("Z")
    appt_id = out["entry"][0]["resource"]["id"]
    appt = client.get(f"/fhir/Appointment/{appt_id}").json()
    refs = [p["actor"]["reference"] for p in appt["participant"]] + [appt["slot"][0]["reference"]]
    assert not any(ref.startswith("urn:uuid:") for ref in refs)
    for ref in refs:
        assert client.get(f"/fhir/{ref}").status_code == 200
    slot = client.get(f"/fhir/{appt['slot'][0]['reference']}").json()
    assert client.get(f"/fhir/{slot['schedule']['reference']}").status_code == 200
    # the index was written with the rewritten references
    found = client.get("/fhir/Appointment", params={"slot": appt["slot"][0]["reference"]})
    assert found.json()["total"] == 1


def test_transaction_conditional_create_reuses_existing(client: TestClient) -> None:
    existing = create(client, make_patient(mrn="T-1"))
    r = post_bundle(client, "transaction", linked_entries())
    assert r.status_code == 200
    out = r.json()
    assert out["entry"][4]["response"]["status"] == "200 OK"
    appt = client.get(f"/fhir/Appointment/{out['entry'][0]['resource']['id']}").json()
    assert appt["participant"][0]["actor"]["reference"] == f"Patient/{existing['id']}"
    assert count(client, "Patient") == 1


def test_transaction_is_all_or_nothing(client: TestClient) -> None:
    entries = linked_entries()
    entries.append(entry("POST", "Patient", {"resourceType": "Patient", "gender": "banana"}))
    r = post_bundle(client, "transaction", entries)
    assert r.status_code == 400
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert "Bundle.entry[5]" in body["issue"][0]["diagnostics"]
    for rtype in ("Patient", "Practitioner", "Schedule", "Slot", "Appointment"):
        assert count(client, rtype) == 0


def test_transaction_failed_if_match_rolls_back(client: TestClient) -> None:
    p = create(client, make_patient("Before"))
    r = post_bundle(
        client,
        "transaction",
        [
            entry("POST", "Practitioner", make_practitioner()),
            entry(
                "PUT",
                f"Patient/{p['id']}",
                {**make_patient("After"), "id": p["id"]},
                ifMatch='W/"9"',
            ),
        ],
    )
    assert r.status_code == 412
    assert count(client, "Practitioner") == 0
    assert client.get(f"/fhir/Patient/{p['id']}").json()["name"][0]["family"] == "Before"


def test_transaction_put_patch_delete_get(client: TestClient) -> None:
    keep = create(client, make_patient("Keep"))
    drop = create(client, make_patient("Drop"))
    patch = [{"op": "replace", "path": "/name/0/family", "value": "Patched"}]
    binary = {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(json.dumps(patch).encode()).decode(),
    }
    r = post_bundle(
        client,
        "transaction",
        [
            entry("GET", f"Patient/{keep['id']}"),
            entry("PATCH", f"Patient/{keep['id']}", binary),
            entry("DELETE", f"Patient/{drop['id']}"),
            entry("PUT", "Patient/chosen-id", {**make_patient("Chosen"), "id": "chosen-id"}),
            entry("PUT", "Patient?identifier=urn:mrn|CU-1", make_patient("Cond", mrn="CU-1")),
        ],
    )
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["200 OK", "200 OK", "204 No Content", "201 Created", "201 Created"]
    # GET runs last (spec order), so it sees the patch
    assert r.json()["entry"][0]["resource"]["name"][0]["family"] == "Patched"
    assert client.get(f"/fhir/Patient/{drop['id']}").status_code == 410
    assert client.get("/fhir/Patient/chosen-id").status_code == 200
    assert count(client, "Patient") == 3


def test_batch_entries_are_independent(client: TestClient) -> None:
    r = post_bundle(
        client,
        "batch",
        [
            entry("POST", "Patient", make_patient("Good")),
            entry("POST", "Patient", {"resourceType": "Patient", "gender": "banana"}),
            entry("GET", "Patient/missing"),
            entry("POST", "Practitioner", make_practitioner()),
        ],
    )
    assert r.status_code == 200
    out = r.json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses[0] == "201 Created"
    assert statuses[1] == "400"
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert statuses[2] == "404"
    assert statuses[3] == "201 Created"
    assert count(client, "Patient") == 1
    assert count(client, "Practitioner") == 1


def test_bundle_prefer_minimal_omits_resources(client: TestClient) -> None:
    r = post_bundle(
        client, "transaction", [entry("POST", "Patient", make_patient())], prefer="return=minimal"
    )
    assert "resource" not in r.json()["entry"][0]
    assert r.json()["entry"][0]["response"]["location"]


def test_bad_bundles(client: TestClient) -> None:
    r = client.post(
        "/fhir", json={"resourceType": "Bundle", "type": "collection"}, headers=FHIR_JSON
    )
    assert r.status_code == 400
    assert "transaction or batch" in r.json()["issue"][0]["diagnostics"]
    r = client.post("/fhir", json=make_patient(), headers=FHIR_JSON)
    assert r.status_code == 400
    r = post_bundle(client, "transaction", [{"resource": make_patient()}])
    assert r.status_code == 400
    assert "entry[0]" in r.json()["issue"][0]["diagnostics"]
    for kind in ("batch", "transaction"):  # found by the Schemathesis run: was a 500
        for entry in (-3.088971392392987e16, "x", {"request": {}}, None):
            bad = {"resourceType": "Bundle", "type": kind, "entry": entry}
            r = client.post("/fhir", json=bad, headers=FHIR_JSON)
            assert r.status_code == 400, (kind, entry, r.text)
            assert r.json()["issue"][0]["expression"] == ["Bundle.entry"]
