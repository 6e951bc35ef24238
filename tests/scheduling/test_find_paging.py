"""``$find`` pages: ``self`` and ``next`` links (GET, or POST Parameters all of which fit in a
URL), ``total`` counting every option on every page, and a ``_cursor`` to POST again when a
patient-resource cannot go in a link. On both databases."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from scheduling.config import ClinicConfig
from tests.builders import FHIR_JSON, make_patient
from tests.scheduling.test_booking import op
from tests.scheduling.test_find import MONDAY, existing_patient, local

ALL = 22  # an existing patient's follow-ups on Monday: 11 starts each for Smith and Evans


def _window(cfg: ClinicConfig) -> dict[str, str]:
    return {
        "start": local(cfg, MONDAY, 0).isoformat(),
        "end": local(cfg, MONDAY, 23).isoformat(),
        "visit-type": "follow-up",
    }


def _links(bundle: dict[str, Any]) -> dict[str, str]:
    return {link["relation"]: link["url"] for link in bundle.get("link", [])}


def _starts(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (e["resource"]["participant"][0]["actor"]["reference"], e["resource"]["start"])
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "match"
    ]


def _follow(client: TestClient, first: dict[str, Any]) -> list[dict[str, Any]]:
    """Every page from ``first`` on, by its next links."""
    pages = [first]
    while "next" in _links(pages[-1]):
        r = client.get(_links(pages[-1])["next"])
        assert r.status_code == 200, r.text
        pages.append(r.json())
    return pages


def test_get_pages_with_next_links(app_client: TestClient, cfg: ClinicConfig) -> None:
    pid = existing_patient(app_client)
    asked = {**_window(cfg), "patient-reference": f"Patient/{pid}"}
    whole = app_client.get("/fhir/Appointment/$find", params=asked).json()
    assert whole["total"] == len(whole["entry"]) == ALL
    assert set(_links(whole)) == {"self"}  # one page: no next link
    first = app_client.get("/fhir/Appointment/$find", params={**asked, "_count": "5"}).json()
    assert _links(first)["self"].startswith("http://testserver/fhir/Appointment/$find?")
    pages = _follow(app_client, first)
    assert [len(_starts(p)) for p in pages] == [5, 5, 5, 5, 2]
    assert {p["total"] for p in pages} == {ALL}
    assert [s for p in pages for s in _starts(p)] == _starts(whole)
    assert "next" not in _links(pages[-1])


def test_post_parameters_page_by_get_links(app_client: TestClient, cfg: ClinicConfig) -> None:
    """Every Parameters value fits in a URL (a Coding as system|code, a Reference as its
    reference): the links are the same request as a GET."""
    pid = existing_patient(app_client)
    w = _window(cfg)
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "start", "valueDateTime": w["start"]},
            {"name": "end", "valueDateTime": w["end"]},
            {
                "name": "visit-type",
                "valueCoding": {"system": "urn:fhir-sched:visit-type", "code": "follow-up"},
            },
            {"name": "patient-reference", "valueReference": {"reference": f"Patient/{pid}"}},
            {"name": "_count", "valueInteger": 8},
        ],
    }
    first = app_client.post("/fhir/Appointment/$find", json=body, headers=FHIR_JSON).json()
    self_again = app_client.get(_links(first)["self"]).json()
    assert _starts(self_again) == _starts(first)
    pages = _follow(app_client, first)
    assert [len(_starts(p)) for p in pages] == [8, 8, 6]
    whole = app_client.get(
        "/fhir/Appointment/$find", params={**w, "patient-reference": f"Patient/{pid}"}
    ).json()
    assert [s for p in pages for s in _starts(p)] == _starts(whole)


def test_a_page_goes_on_after_the_last_option_shown(
    app_client: TestClient, cfg: ClinicConfig
) -> None:
    """Times booked between two pages: the next page starts after the last option shown, so
    nothing is shown twice or skipped, and total counts what is bookable now."""
    pid = existing_patient(app_client)
    asked = {**_window(cfg), "patient-reference": f"Patient/{pid}", "_count": "4"}
    first = app_client.get("/fhir/Appointment/$find", params=asked).json()
    taken = app_client.get(_links(first)["next"]).json()["entry"][0]["resource"]
    assert op(app_client, "book", appointment_resource=taken).status_code == 201
    second = app_client.get(_links(first)["next"]).json()
    assert second["total"] < ALL
    assert (taken["participant"][0]["actor"]["reference"], taken["start"]) not in _starts(second)
    assert not set(_starts(first)) & set(_starts(second))
    assert min(s for _, s in _starts(second)) >= max(s for _, s in _starts(first))


def test_a_described_patient_pages_by_posting_the_cursor(
    app_client: TestClient, cfg: ClinicConfig
) -> None:
    """A patient-resource cannot go in a URL (nor may a Patient id stand in for it): no links;
    while more options follow, an outcome gives the _cursor to send again."""
    existing_patient(app_client)  # "Known", MRN K-1
    w = _window(cfg)
    parameters: list[dict[str, Any]] = [
        {"name": "start", "valueDateTime": w["start"]},
        {"name": "end", "valueDateTime": w["end"]},
        {"name": "visit-type", "valueString": "follow-up"},
        {"name": "patient-resource", "resource": make_patient("Known", mrn="K-1")},
        {"name": "_count", "valueInteger": 10},
    ]
    seen: list[tuple[str, str]] = []
    cursor = None
    for expected in (10, 10, 2):
        more = [{"name": "_cursor", "valueString": cursor}] if cursor else []
        body = {"resourceType": "Parameters", "parameter": [*parameters, *more]}
        r = app_client.post("/fhir/Appointment/$find", json=body, headers=FHIR_JSON)
        assert r.status_code == 200, r.text
        page = r.json()
        assert page["total"] == ALL
        assert "link" not in page
        assert len(_starts(page)) == expected
        seen += [(who, start) for who, start in _starts(page)]
        outcomes = [e["resource"] for e in page["entry"] if e["search"]["mode"] == "outcome"]
        cursor = None
        for outcome in outcomes:
            (issue,) = outcome["issue"]
            assert issue["severity"] == "information"
            codes = {c["system"]: c["code"] for c in issue["details"]["coding"]}
            assert codes["urn:fhir-sched:message-id"] == "FS-0606"
            cursor = codes["urn:fhir-sched:find-cursor"]
            assert f"_cursor {cursor}" in issue["details"]["text"]
    assert cursor is None  # the last page says nothing more follows
    assert len(set(seen)) == ALL


@pytest.mark.parametrize(
    "cursor",
    ["nonsense", "12~a", "x~a~b", "", "\u00b2~a~b", "9" * 5000 + "~a~b"],
    ids=["words", "two-parts", "not-a-time", "empty", "superscript-digit", "huge"],
)
def test_a_cursor_this_server_did_not_give_is_400(
    app_client: TestClient, cfg: ClinicConfig, cursor: str
) -> None:
    r = app_client.get("/fhir/Appointment/$find", params={**_window(cfg), "_cursor": cursor})
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == ["_cursor"]
