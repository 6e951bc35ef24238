"""Examples nobody here wrote: the official R4B examples round-trip unchanged but for meta."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.builders import FHIR_JSON

EXAMPLES = Path(__file__).parent.parent / "fixtures" / "r4b_examples"


def _examples() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(EXAMPLES.glob("*.json")):
        for key, item in json.loads(path.read_text()).items():
            # {"summary", "description", "value": resource}; the others only link to the web
            if "value" in item:
                resource = item["value"]
                out.append((f"{resource['resourceType']}/{key}", resource))
    return out


ALL = _examples()


def _strip(resource: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in keys}


def test_every_served_type_has_examples() -> None:
    assert {name.split("/")[0] for name, _ in ALL} == {
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "Location",
        "HealthcareService",
        "Schedule",
        "Slot",
        "Appointment",
    }
    assert len(ALL) == 8


def test_examples_round_trip(client: TestClient) -> None:
    for name, example in ALL:
        rtype = example["resourceType"]
        created = client.post(f"/fhir/{rtype}", json=example, headers=FHIR_JSON)
        assert created.status_code == 201, f"{name}: {created.text}"
        new_id = created.json()["id"]
        read = client.get(f"/fhir/{rtype}/{new_id}").json()
        assert _strip(read, "meta", "id") == _strip(example, "meta", "id"), name
        for key, value in (example.get("meta") or {}).items():
            if key not in ("versionId", "lastUpdated"):
                assert read["meta"][key] == value, name

        rid = example.get("id") or new_id
        put = client.put(f"/fhir/{rtype}/{rid}", json={**example, "id": rid}, headers=FHIR_JSON)
        assert put.status_code in (200, 201), f"{name}: {put.text}"
        again = client.get(f"/fhir/{rtype}/{rid}").json()
        assert _strip(again, "meta") == _strip({**example, "id": rid}, "meta"), name


@pytest.mark.parametrize("rtype", ["Patient", "Appointment", "Slot"])
def test_examples_are_searchable(client: TestClient, rtype: str) -> None:
    mine = [r for _, r in ALL if r["resourceType"] == rtype]
    for r in mine:
        client.post(f"/fhir/{rtype}", json=r, headers=FHIR_JSON)
    total = client.get(f"/fhir/{rtype}", params={"_summary": "count"}).json()["total"]
    assert total == len(mine)
