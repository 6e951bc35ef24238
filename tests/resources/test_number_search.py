"""Number search (https://hl7.org/fhir/R4/search.html#number) on both databases, over the
one number parameter served: Appointment ``risk``, the score inside the no-show risk
extension."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from conformance.declaration import NO_SHOW_RISK_URL, search_param
from resources.indexing import element_values
from tests.builders import make_appointment
from tests.resources.test_search import ids, put, search

SCORES = {"r10": 0.1, "r45": 0.45, "r50": 0.5, "r55": 0.55, "r90": 0.9, "r100": 1}


def _with_risk(score: float | None) -> dict[str, Any]:
    appt = make_appointment(
        "Patient/pat1", "Practitioner/dr1", "2026-12-01T10:00:00Z", "2026-12-01T10:30:00Z"
    )
    if score is not None:
        appt["extension"] = [
            {"url": "urn:other", "valueString": "not a risk"},
            {
                "url": NO_SHOW_RISK_URL,
                "extension": [
                    {"url": "score", "valueDecimal": score},
                    {"url": "reason", "valueString": "booked 45 days ahead"},
                    {"url": "model", "valueString": "noshow-lr-1"},
                ],
            },
        ]
    return appt


@pytest.fixture
def scored(client: TestClient) -> TestClient:
    for rid, score in SCORES.items():
        put(client, _with_risk(score), rid)
    put(client, _with_risk(None), "none")
    return client


CASES = [
    ({"risk": "0.5"}, ["r45", "r50"]),  # [0.45, 0.55)
    ({"risk": "eq0.50"}, ["r50"]),  # [0.495, 0.505)
    ({"risk": "1"}, ["r100", "r50", "r55", "r90"]),  # [0.5, 1.5)
    ({"risk": "1.0"}, ["r100"]),  # [0.95, 1.05)
    ({"risk": "1e-1"}, ["r10"]),  # [0.05, 0.15)
    ({"risk": "ne0.5"}, ["r10", "r100", "r55", "r90"]),
    ({"risk": "gt0.5"}, ["r100", "r55", "r90"]),
    ({"risk": "ge0.5"}, ["r100", "r50", "r55", "r90"]),
    ({"risk": "lt0.5"}, ["r10", "r45"]),
    ({"risk": "le0.45"}, ["r10", "r45"]),
    ({"risk": "sa0.9"}, ["r100"]),
    ({"risk": "eb0.1"}, []),
    ({"risk": "ap0.5"}, ["r45", "r50", "r55"]),  # within 10 %: [0.45, 0.55]
    ({"risk": "lt0.2,gt0.95"}, ["r10", "r100"]),
    ({"risk": "ge0.45", "_count": "50", "status": "booked"}, ["r100", "r45", "r50", "r55", "r90"]),
    ({"risk:missing": "true"}, ["none"]),
    ({"risk:missing": "false"}, ["r10", "r100", "r45", "r50", "r55", "r90"]),
]


@pytest.mark.parametrize(
    ("params", "expected"),
    CASES,
    ids=["&".join(f"{k}={v}" for k, v in c[0].items()) for c in CASES],
)
def test_number_search(scored: TestClient, params: dict[str, str], expected: list[str]) -> None:
    assert sorted(ids(search(scored, "Appointment", **params))) == expected


def test_ge_and_le_together_are_a_range(scored: TestClient) -> None:
    r = scored.get("/fhir/Appointment", params=[("risk", "ge0.45"), ("risk", "le0.55")])
    assert sorted(ids(r.json())) == ["r45", "r50", "r55"]


def test_sort_by_risk_pages_in_order(scored: TestClient) -> None:
    seen: list[str] = []
    bundle = search(scored, "Appointment", _sort="-risk", _count="2")
    while True:
        seen += ids(bundle)
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            break
        bundle = scored.get(nxt[0]).json()
    assert seen == ["r100", "r90", "r55", "r50", "r45", "r10", "none"]


def test_a_changed_score_moves_in_the_index(scored: TestClient) -> None:
    put(scored, _with_risk(0.2), "r90")
    assert sorted(ids(search(scored, "Appointment", risk="gt0.8"))) == ["r100"]


@pytest.mark.parametrize("value", ["abc", "zz0.5", "ge", "0.5x", "nan", "ge-inf"])
def test_a_value_that_is_not_a_number_is_400(client: TestClient, value: str) -> None:
    r = client.get("/fhir/Appointment", params={"risk": value})
    assert r.status_code == 400, r.text


def test_the_risk_path_reads_only_the_score_of_the_risk_extension() -> None:
    appt = _with_risk(0.37)
    appt["extension"].append({"url": "score", "valueDecimal": 9})  # not inside the risk one
    declared = search_param("Appointment", "risk")
    assert declared is not None and declared.type == "number"
    assert element_values(appt, declared.paths[0]) == [0.37]


def test_the_custom_parameter_is_served(client: TestClient) -> None:
    r = client.get("/fhir/SearchParameter/Appointment-risk")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["type"], body["code"], body["base"]) == ("number", "risk", ["Appointment"])
    assert NO_SHOW_RISK_URL in body["expression"]
