"""An empty ``$find`` says why: an OperationOutcome entry naming the clinic rules that removed
the times, never anyone else's bookings. On both databases (GET: the async reads on
PostgreSQL; POST with a patient-resource: the synchronous ones)."""

from __future__ import annotations

from datetime import UTC, date, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert

from resources.sql.engine import Database
from resources.sql.tables import BusyTime
from scheduling.calendar_reads import Calendar
from scheduling.config import parse_clinic_config
from scheduling.find import compute_options
from scheduling.plan import FindRequest, plan_find
from tests.builders import FHIR_JSON, create, make_patient
from tests.scheduling.conftest import ClientFor
from tests.scheduling.test_find import MONDAY, clinic_data, local

CFG = parse_clinic_config(clinic_data())
TUESDAY, WEDNESDAY, THURSDAY, FRIDAY, SATURDAY = (MONDAY + timedelta(days=k) for k in range(1, 6))


def _clinic() -> dict[str, Any]:
    """The test clinic (Smith and Evans at Main, weekdays 09:00-12:00) with a holiday on
    Wednesday and Smith away on Thursday."""
    return {
        **clinic_data(),
        "exceptions": [
            {"name": "Founders' Day", "start_date": WEDNESDAY.isoformat()},
            {"name": "Training", "start_date": THURSDAY.isoformat(), "practitioners": ["smith"]},
        ],
    }


def _seen_before(client: TestClient) -> str:
    """A patient with a visit here last year (MRN K-1)."""
    pid = str(create(client, make_patient("Known", mrn="K-1"))["id"])
    create(
        client,
        {
            "resourceType": "Appointment",
            "status": "fulfilled",
            "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"}],
        },
    )
    return pid


def _find(
    client: TestClient, day: date, visit: str, *, hours: tuple[int, int] = (0, 24), **more: str
) -> dict[str, Any]:
    end = local(CFG, day, 0) + timedelta(hours=hours[1])
    params = {
        "start": local(CFG, day, hours[0]).isoformat(),
        "end": end.isoformat(),
        "visit-type": visit,
        **more,
    }
    r = client.get("/fhir/Appointment/$find", params=params)
    assert r.status_code == 200, r.text
    bundle: dict[str, Any] = r.json()
    return bundle


def _reasons(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    """(rule, words) of each issue in the outcome entry; [] if there is none."""
    outcomes = [e for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]
    if not outcomes:
        return []
    assert len(outcomes) == 1
    out = []
    for issue in outcomes[0]["resource"]["issue"]:
        assert (issue["severity"], issue["code"]) == ("information", "informational")
        codes = {c["system"]: c["code"] for c in issue["details"]["coding"]}
        assert codes["urn:fhir-sched:message-id"] == "FS-0605"
        assert issue["diagnostics"] == issue["details"]["text"]
        out.append((codes["urn:fhir-sched:find-reason"], issue["details"]["text"]))
    return out


SMITH_WINDOW = "Smith sees new patients only on Tuesday mornings (09:00 to 12:00)"
NEEDS_A_VISIT = "a follow-up needs an earlier visit here"
# (id, day, visit type, the patient (None, "new" or "seen"), more parameters, reasons)
CASES: list[tuple[str, date, str, str | None, dict[str, Any], list[tuple[str, str]]]] = [
    (
        "follow-up-nobody-named",
        MONDAY,
        "follow-up",
        None,
        {},
        [
            (
                "patients",
                f"{NEEDS_A_VISIT}; name the patient (patient-reference or patient-resource)",
            )
        ],
    ),
    ("follow-up-new-patient", MONDAY, "follow-up", "new", {}, [("patients", NEEDS_A_VISIT)]),
    (
        "new-patient-visit-for-an-existing-one",
        MONDAY,
        "new-patient",
        "seen",
        {},
        [("patients", "a new is for new patients, and this is an existing patient here")],
    ),
    (
        "procedure-new-patient-monday",
        MONDAY,
        "procedure",
        "new",
        {},
        [("new-patient-window", SMITH_WINDOW)],
    ),
    (
        "new-patient-friday",
        FRIDAY,
        "new-patient",
        None,
        {},
        [
            ("exclusion", "Evans takes no new patients on Fridays"),
            ("new-patient-window", SMITH_WINDOW),
        ],
    ),
    (
        "saturday",
        SATURDAY,
        "follow-up",
        "seen",
        {},
        [
            ("no-hours", "Smith does not see patients at Main on Saturdays"),
            ("no-hours", "Evans does not see patients at Main on Saturdays"),
        ],
    ),
    (
        "weekend-to-monday-9",
        SATURDAY,
        "follow-up",
        "seen",
        {"hours": (0, 57)},
        [
            ("no-hours", "Smith does not see patients at Main on weekends"),
            ("no-hours", "Evans does not see patients at Main on weekends"),
            ("hours", "Smith sees patients at Main 09:00-12:00 on Mondays"),
            ("hours", "Evans sees patients at Main 09:00-12:00 on Mondays"),
        ],
    ),
    (
        "friday-to-monday-9",  # Monday's hours go unnamed: the window met Friday's
        FRIDAY,
        "procedure",
        "new",
        {"hours": (0, 81)},
        [
            ("no-hours", "Smith does not see patients at Main on weekends"),
            ("new-patient-window", SMITH_WINDOW),
        ],
    ),
    (
        "holiday",
        WEDNESDAY,
        "follow-up",
        "seen",
        {},
        [("closed", f"the clinic is closed on Wednesday {WEDNESDAY:%-d %B %Y} (Founders' Day)")],
    ),
    (
        "smith-away",
        THURSDAY,
        "procedure",
        "seen",
        {},
        [("time-off", f"Smith is away on Thursday {THURSDAY:%-d %B %Y} (Training)")],
    ),
    (
        "beyond-the-horizon",
        MONDAY + timedelta(weeks=9),
        "follow-up",
        "seen",
        {},
        [("horizon", "nothing is bookable more than 8 weeks ahead")],
    ),
    (
        "afternoon",
        MONDAY,
        "follow-up",
        "seen",
        {"hours": (13, 17)},
        [
            ("hours", "Smith sees patients at Main 09:00-12:00 on Mondays"),
            ("hours", "Evans sees patients at Main 09:00-12:00 on Mondays"),
        ],
    ),
    (
        "not-offered-by-who-was-asked",
        MONDAY,
        "procedure",
        "seen",
        {"practitioner": "Practitioner/evans"},
        [("practitioner", "Evans does not offer procedure")],
    ),
]


@pytest.mark.parametrize(
    ("day", "visit", "patient", "more", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_an_empty_find_names_the_rules(
    client_for: ClientFor,
    day: date,
    visit: str,
    patient: str | None,
    more: dict[str, Any],
    expected: list[tuple[str, str]],
) -> None:
    client = client_for(_clinic())
    extra = dict(more)
    hours = extra.pop("hours", (0, 24))
    if patient == "seen":
        extra["patient-reference"] = f"Patient/{_seen_before(client)}"
    elif patient == "new":
        new = create(client, make_patient("Newcomer", mrn="N-1"))
        extra["patient-reference"] = f"Patient/{new['id']}"
    bundle = _find(client, day, visit, hours=hours, **extra)
    assert bundle["total"] == 0
    assert _reasons(bundle) == expected


def test_the_described_patient_is_judged_the_same(client_for: ClientFor) -> None:
    """POST with a patient-resource (matched: the synchronous path) gives the same reasons."""
    client = client_for(_clinic())
    _seen_before(client)
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "start", "valueDateTime": local(CFG, MONDAY, 0).isoformat()},
            {"name": "end", "valueDateTime": local(CFG, TUESDAY, 0).isoformat()},
            {"name": "visit-type", "valueString": "new-patient"},
            {"name": "patient-resource", "resource": make_patient("Known", mrn="K-1")},
        ],
    }
    r = client.post("/fhir/Appointment/$find", json=body, headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert _reasons(r.json()) == [
        ("patients", "a new is for new patients, and this is an existing patient here")
    ]


def _take(db: Database, day: date, schedule: str, kind: str, visit: str) -> None:
    """Someone else's booking (or its buffer) over the whole morning."""
    with db.write() as conn:
        conn.execute(
            insert(BusyTime.__table__).values(
                schedule_id=schedule,
                start=local(CFG, day, 9).astimezone(UTC),
                end=local(CFG, day, 12).astimezone(UTC),
                appointment_id=f"other-{schedule}",
                kind=kind,
                visit_type=visit,
            )
        )


def test_taken_time_is_never_a_reason(client_for: ClientFor, db: Database) -> None:
    """Time booked by another patient, or kept free after their procedure, is just not
    offered: the reason names no booking, buffer or hold."""
    client = client_for(_clinic())
    pid = _seen_before(client)
    _take(db, MONDAY, "sched-smith-main", "booked", "follow-up")
    _take(db, MONDAY, "sched-evans-main", "buffer", "procedure")
    bundle = _find(client, MONDAY, "follow-up", **{"patient-reference": f"Patient/{pid}"})
    assert bundle["total"] == 0
    assert _reasons(bundle) == [("no-free-time", "no free time for this visit in the window asked")]


def test_a_full_day_of_procedures_names_the_cap(client_for: ClientFor) -> None:
    """The daily cap is the clinic's rule, named as such (two procedures a day here)."""
    client = client_for(_clinic())
    pid = _seen_before(client)
    seen = {"patient-reference": f"Patient/{pid}"}
    for _ in range(2):
        option = _find(client, MONDAY, "procedure", **seen, _count="1")["entry"][0]["resource"]
        body = {
            "resourceType": "Parameters",
            "parameter": [{"name": "appointment-resource", "resource": option}],
        }
        booked = client.post("/fhir/Appointment/$book", json=body, headers=FHIR_JSON)
        assert booked.status_code == 201, booked.text
    bundle = _find(client, MONDAY, "procedure", **seen)
    assert bundle["total"] == 0
    assert _reasons(bundle) == [("daily-cap", "Smith sees at most 2 procedure visits a day")]


def test_an_answer_with_times_carries_no_outcome(client_for: ClientFor) -> None:
    client = client_for(_clinic())
    bundle = _find(client, TUESDAY, "new-patient")
    assert bundle["total"] > 0
    assert _reasons(bundle) == []


PURE_CASES = [
    # (id, extra rules, hour of "now" on Monday, reasons)
    ("min-notice", {}, 10, [("min-notice", "nothing is bookable less than 2 hours ahead")]),
    (
        "exclusion-of-a-visit-type",
        {"exclusions": [{"practitioner": "evans", "visit_types": ["follow-up"], "days": ["mon"]}]},
        -24 * 7,
        [("exclusion", "Evans offers no follow-up visits on Mondays")],
    ),
]


@pytest.mark.parametrize(
    ("rules", "now_hour", "expected"), [c[1:] for c in PURE_CASES], ids=[c[0] for c in PURE_CASES]
)
def test_reasons_from_the_rules_alone(
    rules: dict[str, Any], now_hour: int, expected: list[tuple[str, str]]
) -> None:
    """compute_options with ``explain``: no database, the clock passed in (Evans only, an
    existing patient, Monday)."""
    data = clinic_data()
    data["rules"] = {**data["rules"], **rules}
    config = parse_clinic_config(data)
    request = FindRequest(
        start=local(config, MONDAY, 0),
        end=local(config, TUESDAY, 0),
        visit_type="follow-up",
        practitioners=["evans"],
        patient_id="p",
    )
    plan = plan_find(config, request)
    calendar = Calendar(new_patient=False, busy=[], free={})
    now = local(config, MONDAY, 0) + timedelta(hours=now_hour)
    found = compute_options(config, plan, request, calendar, now=now, explain=True)
    assert found.total == 0
    assert [(r.rule, r.text) for r in found.reasons] == expected
    assert compute_options(config, plan, request, calendar, now=now).reasons == ()
