from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import FHIR_JSON


def test_create_then_read(client: TestClient) -> None:
    created = client.post(
        "/fhir/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Smith"}]},
        headers=FHIR_JSON,
    )
    assert created.status_code == 201
    rid = created.json()["id"]
    assert created.headers["location"].endswith(f"/Patient/{rid}/_history/1")
    read = client.get(f"/fhir/Patient/{rid}")
    assert read.status_code == 200
    assert read.json()["name"] == [{"family": "Smith"}]
    assert read.headers["etag"] == 'W/"1"'
