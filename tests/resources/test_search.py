"""FHIR search (https://hl7.org/fhir/R4/search.html) on both databases."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.builders import (
    FHIR_JSON,
    make_appointment,
    make_patient,
    make_practitioner,
    make_schedule,
    make_slot,
)


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def search(client: TestClient, rtype: str, **params: Any) -> dict[str, Any]:
    r = client.get(f"/fhir/{rtype}", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["type"] == "searchset"
    return body


def put(client: TestClient, resource: dict[str, Any], rid: str) -> dict[str, Any]:
    r = client.put(
        f"/fhir/{resource['resourceType']}/{rid}", json={**resource, "id": rid}, headers=FHIR_JSON
    )
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture
def people(client: TestClient) -> TestClient:
    put(
        client,
        make_patient(
            "Smith", ["John"], birth="1980-05-02", phone="(555) 123-4567", mrn="A1", gender="male"
        ),
        "p1",
    )
    put(
        client,
        make_patient("Smithers", ["Jane"], birth="1980-11-30", mrn="A2", gender="female"),
        "p2",
    )
    p3 = make_patient("Jones", ["Ann"], birth="1975", mrn="A3", gender="female")
    p3["meta"] = {"tag": [{"system": "urn:fhir-sched:patient-status", "code": "existing"}]}
    put(client, p3, "p3")
    p4 = make_patient("Müller", ["Zoë"], birth=None, gender="other")
    p4["telecom"] = [{"system": "email", "value": "Zoe@Example.org"}]
    put(client, p4, "p4")
    return client


PATIENT_CASES = [
    ({"name": "smith"}, ["p1", "p2"]),
    ({"name": "SMI"}, ["p1", "p2"]),
    ({"name": "joh"}, ["p1"]),
    ({"family": "smith"}, ["p1", "p2"]),
    ({"family:exact": "Smith"}, ["p1"]),
    ({"family:exact": "smith"}, []),
    ({"given": "ja"}, ["p2"]),
    ({"name": "muller"}, ["p4"]),
    ({"name": "smith,jones"}, ["p1", "p2", "p3"]),
    ({"birthdate": "1980-05-02"}, ["p1"]),
    ({"birthdate": "1980"}, ["p1", "p2"]),
    ({"birthdate": "1980-11"}, ["p2"]),
    ({"birthdate": "ge1980-06-01"}, ["p2"]),
    ({"birthdate": "lt1980-06-01"}, ["p1", "p3"]),
    ({"birthdate": "le1975-12-31"}, ["p3"]),
    ({"birthdate": "gt1975"}, ["p1", "p2"]),
    ({"birthdate": "ne1980-05-02"}, ["p2", "p3"]),
    ({"birthdate:missing": "true"}, ["p4"]),
    ({"gender": "female"}, ["p2", "p3"]),
    ({"gender:not": "female"}, ["p1", "p4"]),
    ({"phone": "555-123-4567"}, ["p1"]),
    ({"phone": "5551234567"}, ["p1"]),
    ({"telecom": "phone|(555) 123 4567"}, ["p1"]),
    ({"email": "zoe@example.org"}, ["p4"]),
    ({"identifier": "urn:mrn|A2"}, ["p2"]),
    ({"identifier": "A3"}, ["p3"]),
    ({"identifier": "urn:other|A3"}, []),
    ({"identifier": "urn:mrn|"}, ["p1", "p2", "p3"]),
    ({"identifier:missing": "true"}, ["p4"]),
    ({"_id": "p1,p3"}, ["p1", "p3"]),
    ({"name": "smith", "gender": "male"}, ["p1"]),
    ({"family": "smi", "family:exact": "Smithers"}, ["p2"]),
    ({"_tag": "urn:fhir-sched:patient-status|existing"}, ["p3"]),
]


@pytest.mark.parametrize(
    ("params", "expected"),
    PATIENT_CASES,
    ids=["&".join(f"{k}={v}" for k, v in c[0].items()) for c in PATIENT_CASES],
)
def test_patient_search(people: TestClient, params: dict[str, str], expected: list[str]) -> None:
    bundle = search(people, "Patient", **params)
    assert sorted(ids(bundle)) == expected
    assert bundle["total"] == len(expected)


def test_contains_is_refused_on_patient_data_but_works_elsewhere(client: TestClient) -> None:
    r = client.get("/fhir/Patient", params={"name:contains": "mit"})
    assert r.status_code == 400
    assert r.json()["issue"][0]["code"] == "not-supported"
    put(client, make_practitioner("Hutchinson"), "pr1")
    put(client, make_practitioner("Hutch"), "pr2")
    assert sorted(ids(search(client, "Practitioner", **{"name:contains": "chin"}))) == ["pr1"]
    assert sorted(ids(search(client, "Practitioner", name="hutch"))) == ["pr1", "pr2"]
    assert ids(search(client, "Practitioner", **{"name:exact": "Hutch"})) == ["pr2"]


def test_updated_and_deleted_resources_leave_the_index(client: TestClient) -> None:
    put(client, make_patient("Oldname"), "p1")
    put(client, make_patient("Newname"), "p1")
    assert ids(search(client, "Patient", name="oldname")) == []
    assert ids(search(client, "Patient", name="newname")) == ["p1"]
    client.delete("/fhir/Patient/p1")
    assert search(client, "Patient", name="newname")["total"] == 0


@pytest.fixture
def calendar(client: TestClient) -> TestClient:
    put(client, make_practitioner("Smith", "111"), "dr1")
    put(client, make_practitioner("Evans", "222"), "dr2")
    s1 = make_schedule("Practitioner/dr1")
    s1["planningHorizon"] = {"start": "2026-12-01", "end": "2026-12-31"}
    s1["serviceType"] = [{"coding": [{"system": "urn:vt", "code": "follow-up"}]}]
    put(client, s1, "s1")
    put(client, make_schedule("Practitioner/dr2", active=False), "s2")
    for day in (1, 2, 3):
        for hour in (9, 10):
            start = f"2026-12-0{day}T{hour:02d}:00:00-05:00"
            end = f"2026-12-0{day}T{hour:02d}:30:00-05:00"
            slot = make_slot("Schedule/s1", start, end, "free" if hour == 9 else "busy")
            slot["appointmentType"] = {"coding": [{"system": "urn:at", "code": "ROUTINE"}]}
            put(client, slot, f"a{day}{hour}")
    put(
        client,
        make_slot("Schedule/s2", "2026-12-01T09:00:00-05:00", "2026-12-01T09:30:00-05:00"),
        "b19",
    )
    put(client, make_patient("Pat"), "pat1")
    appt = make_appointment(
        "Patient/pat1", "Practitioner/dr1", "2026-12-01T10:00:00-05:00", "2026-12-01T10:30:00-05:00"
    )
    appt["slot"] = [{"reference": "Slot/a110"}]
    appt["identifier"] = [{"system": "urn:appt", "value": "X-1"}]
    put(client, appt, "ap1")
    put(
        client,
        make_appointment(
            "Patient/pat1",
            "Practitioner/dr2",
            "2026-12-02T10:00:00-05:00",
            "2026-12-02T10:30:00-05:00",
            status="cancelled",
        ),
        "ap2",
    )
    return client


SLOT_CASES = [
    ({"schedule": "Schedule/s1"}, ["a110", "a19", "a210", "a29", "a310", "a39"]),
    ({"schedule": "s2"}, ["b19"]),
    ({"schedule": "http://testserver/fhir/Schedule/s2"}, ["b19"]),
    ({"status": "free", "schedule": "Schedule/s1"}, ["a19", "a29", "a39"]),
    ({"start": "2026-12-02"}, ["a29", "a210"]),  # the UTC day holds 14:00Z and 15:00Z
    (
        {"start": "ge2026-12-02T00:00:00-05:00", "schedule": "Schedule/s1"},
        ["a210", "a29", "a310", "a39"],
    ),
    ({"start": "lt2026-12-01T10:00:00-05:00"}, ["a19", "b19"]),
    ({"start": "le2026-12-01T10:00:00-05:00", "schedule": "Schedule/s1"}, ["a110", "a19"]),
    ({"start": "gt2026-12-03T09:00:00-05:00"}, ["a310"]),
    ({"start": "sa2026-12-03T09:00:00-05:00"}, ["a310"]),
    ({"start": "eb2026-12-01T10:00:00-05:00"}, ["a19", "b19"]),
    (
        {"start": "ne2026-12-01T09:00:00-05:00", "schedule": "Schedule/s1", "status": "free"},
        ["a29", "a39"],
    ),
    ({"end": "2026-12-01T09:30:00-05:00"}, ["a19", "b19"]),
    ({"schedule.actor": "Practitioner/dr2"}, ["b19"]),
    ({"schedule.active": "false"}, ["b19"]),
    ({"appointment-type": "urn:at|ROUTINE", "start": "lt2026-12-02"}, ["a110", "a19"]),
    ({"appointment-type:missing": "true"}, ["b19"]),
]


@pytest.mark.parametrize(
    ("params", "expected"),
    SLOT_CASES,
    ids=["&".join(f"{k}={v}" for k, v in c[0].items()) for c in SLOT_CASES],
)
def test_slot_search(calendar: TestClient, params: dict[str, str], expected: list[str]) -> None:
    assert sorted(ids(search(calendar, "Slot", **params))) == sorted(expected)


SCHEDULE_CASES = [
    ({"actor": "Practitioner/dr1"}, ["s1"]),
    ({"actor:Practitioner": "dr2"}, ["s2"]),
    ({"active": "true"}, ["s1"]),
    ({"date": "2026-12-15"}, []),  # eq: the horizon is not inside one day
    ({"date": "ge2026-12-15"}, ["s1"]),  # the horizon runs past the 15th
    ({"date": "le2026-12-15"}, ["s1"]),
    ({"date": "sa2026-11-30"}, ["s1"]),
    ({"date": "sa2026-12-01"}, []),
    ({"date": "eb2027-01-01"}, ["s1"]),
    ({"date": "ap2026-12-15"}, ["s1"]),
    ({"date": "2026-12"}, ["s1"]),
    ({"service-type": "follow-up"}, ["s1"]),
    ({"service-type": "urn:vt|follow-up"}, ["s1"]),
    ({"service-type:not": "follow-up"}, ["s2"]),
]


@pytest.mark.parametrize(
    ("params", "expected"),
    SCHEDULE_CASES,
    ids=["&".join(f"{k}={v}" for k, v in c[0].items()) for c in SCHEDULE_CASES],
)
def test_schedule_search(calendar: TestClient, params: dict[str, str], expected: list[str]) -> None:
    assert sorted(ids(search(calendar, "Schedule", **params))) == expected


APPOINTMENT_CASES = [
    ({"patient": "Patient/pat1"}, ["ap1", "ap2"]),
    ({"patient": "pat1", "status": "booked"}, ["ap1"]),
    ({"actor": "Practitioner/dr2"}, ["ap2"]),
    ({"practitioner": "dr1"}, ["ap1"]),
    ({"location:missing": "true"}, ["ap1", "ap2"]),
    ({"date": "ge2026-12-02"}, ["ap2"]),
    ({"slot": "Slot/a110"}, ["ap1"]),
    ({"identifier": "urn:appt|X-1"}, ["ap1"]),
    ({"patient.name": "pat"}, ["ap1", "ap2"]),
    ({"practitioner.identifier": "222"}, ["ap2"]),
    ({"status:not": "cancelled"}, ["ap1"]),
]


@pytest.mark.parametrize(
    ("params", "expected"),
    APPOINTMENT_CASES,
    ids=["&".join(f"{k}={v}" for k, v in c[0].items()) for c in APPOINTMENT_CASES],
)
def test_appointment_search(
    calendar: TestClient, params: dict[str, str], expected: list[str]
) -> None:
    assert sorted(ids(search(calendar, "Appointment", **params))) == expected


def test_include_and_revinclude(calendar: TestClient) -> None:
    b = search(calendar, "Appointment", _id="ap1", _include="Appointment:patient")
    assert ids(b) == ["ap1"]
    assert ids(b, "include") == ["pat1"]
    b = search(calendar, "Appointment", _id="ap1", _include="Appointment:actor:Practitioner")
    assert ids(b, "include") == ["dr1"]
    b = search(calendar, "Schedule", _id="s2", _revinclude="Slot:schedule")
    assert ids(b) == ["s2"]
    assert ids(b, "include") == ["b19"]
    assert b["total"] == 1  # includes are not counted


def test_summary_count_elements_and_total(calendar: TestClient) -> None:
    counted = search(calendar, "Slot", _summary="count")
    assert counted["total"] == 7
    assert "entry" not in counted
    b = search(calendar, "Slot", _elements="start", _count="1")
    res = b["entry"][0]["resource"]
    assert set(res) <= {"resourceType", "id", "meta", "start", "status", "end", "schedule"}
    assert "appointmentType" not in res
    assert any(t["code"] == "SUBSETTED" for t in res["meta"]["tag"])
    summary = search(calendar, "Schedule", _id="s1", _summary="true")["entry"][0]["resource"]
    assert "planningHorizon" in summary
    assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])


def test_unknown_parameters_are_reported(calendar: TestClient) -> None:
    b = search(calendar, "Slot", schedule="Schedule/s2", colour="red")
    assert ids(b) == ["b19"]
    outcome = [e for e in b["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcome) == 1
    assert outcome[0]["resource"]["issue"][0]["severity"] == "warning"
    assert "colour" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    strict = calendar.get(
        "/fhir/Slot", params={"colour": "red"}, headers={"prefer": "handling=strict"}
    )
    assert strict.status_code == 400


def cursor(*values: list[Any]) -> str:
    """A next link's _cursor as the server encodes one (resources/search/engine.py)."""
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"start": "xx2026"}, "prefix"),
        ({"start": "2026-13-01"}, "calendar"),
        ({"status:fuzzy": "free"}, ":fuzzy"),
        ({"_sort": "colour"}, "sortable"),
        ({"_count": "-1"}, "_count"),
        ({"_include": "Slot:status"}, "reference"),
        ({"_cursor": "not-a-cursor"}, "_cursor"),
        # next links that name values no sort key holds: each was a 500
        ({"_cursor": cursor(["v", "x"])}, "_cursor"),
        ({"_cursor": cursor(["v", {"a": 1}])}, "_cursor"),
        ({"_cursor": cursor(["v", None])}, "_cursor"),
        ({"_cursor": cursor(["v", 2**63])}, "_cursor"),
        ({"_cursor": cursor(["d", "2026-01-01"])}, "_cursor"),
        ({"_sort": "start", "_cursor": cursor(["v", True], ["v", 1])}, "_cursor"),
        # in UTC, before year 1 or past 9999: each was a 500 (OverflowError)
        ({"start": "0001-01-01T00:00:00+14:00"}, "outside"),
        ({"start": "ge9999-12-31T23:59:59-14:00"}, "outside"),
    ],
    ids=[
        "prefix",
        "date",
        "modifier",
        "sort",
        "count",
        "include",
        "cursor",
        "cursor-text-for-seq",
        "cursor-object",
        "cursor-null",
        "cursor-past-int8",
        "cursor-date-for-seq",
        "cursor-bool-for-date",
        "date-before-year-1",
        "date-past-9999",
    ],
)
def test_bad_search_input_is_400(
    calendar: TestClient, params: dict[str, str], message: str
) -> None:
    r = calendar.get("/fhir/Slot", params=params)
    assert r.status_code == 400
    assert message in r.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "url",
    [
        "/fhir/Slot?start=ap0001-01-01T00:00:00-14:00",
        "/fhir/Slot?start=ap9999-12-30",
        "/fhir/Patient?birthdate=0001-01-01",
        "/fhir/Patient?birthdate=ap9999-12-30",
    ],
    ids=["ap-year-1", "ap-year-9999", "birthdate-year-1", "birthdate-ap-year-9999"],
)
def test_dates_at_the_calendars_ends_are_searched(client: TestClient, url: str) -> None:
    """``ap`` widens a range, and a birth date's digests cover a year either side: at year 1
    or 9999 that passed the calendar's end (a 500); it stops there now."""
    r = client.get(url)
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 0


def test_a_date_whose_end_passes_9999_is_stored_unindexed(client: TestClient) -> None:
    """9999-12-31 is a valid FHIR date, but the day it covers ends past the calendar: indexing
    it was a 500 (OverflowError); the resource is stored, the date left out of the index."""
    r = client.post("/fhir/Patient", json={**make_patient(), "birthDate": "9999-12-31"})
    assert r.status_code == 201, r.text


def _walk(client: TestClient, url: str, between: Any = None) -> list[str]:
    seen: list[str] = []
    next_url: str | None = url
    while next_url:
        page = client.get(next_url.replace("http://testserver", "")).json()
        seen += ids(page)
        if between:
            between()
        next_url = next((ln["url"] for ln in page["link"] if ln["relation"] == "next"), None)
    return seen


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("start", ["a19", "a110", "a29", "a210", "a39", "a310"]),
        ("-start", ["a310", "a39", "a210", "a29", "a110", "a19"]),
        ("status,-start", ["a310", "a210", "a110", "a39", "a29", "a19"]),
        ("-_lastUpdated", ["a310", "a39", "a210", "a29", "a110", "a19"]),
    ],
    ids=["start", "-start", "status,-start", "-lastUpdated"],
)
def test_sort_across_pages(calendar: TestClient, sort: str, expected: list[str]) -> None:
    url = f"/fhir/Slot?schedule=Schedule/s1&_sort={sort}&_count=4"
    assert _walk(calendar, url) == expected


def test_string_sort(people: TestClient) -> None:
    put(people, make_practitioner("Baker"), "b")
    put(people, make_practitioner("Adams"), "a")
    put(people, make_practitioner("Carter"), "c")
    assert _walk(people, "/fhir/Practitioner?_sort=name&_count=2") == ["a", "b", "c"]
    assert _walk(people, "/fhir/Practitioner?_sort=-name&_count=2") == ["c", "b", "a"]


def test_paging_stays_correct_while_rows_are_inserted(client: TestClient) -> None:
    for n in range(10):
        put(
            client,
            make_slot(
                "Schedule/s", f"2026-12-01T{9 + n:02d}:00:00Z", f"2026-12-01T{9 + n:02d}:30:00Z"
            ),
            f"s{n}",
        )
    counter = iter(range(100))

    def insert_more() -> None:
        n = next(counter)
        put(
            client,
            make_slot(
                "Schedule/s",
                f"2026-12-02T{n % 24:02d}:0{n % 10}:00Z",
                f"2026-12-02T{n % 24:02d}:30:00Z",
            ),
            f"new{n}",
        )
        put(
            client,
            make_slot("Schedule/s", "2026-11-01T00:00:00Z", "2026-11-01T00:30:00Z"),
            f"early{n}",
        )

    for url in (
        "/fhir/Slot?schedule=Schedule/s&_count=3",
        "/fhir/Slot?schedule=Schedule/s&_count=3&_sort=start",
    ):
        seen = _walk(client, url, insert_more)
        old = [s for s in seen if s.startswith("s")]
        assert sorted(old) == [f"s{n}" for n in range(10)]
        assert len(seen) == len(set(seen))
