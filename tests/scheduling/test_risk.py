"""No-show risk: the model file, scoring, the extension and the rescoring job, on both
databases."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert

from resources import service
from resources.search.engine import run_search
from resources.search.query import parse_query
from resources.sql.engine import Database
from resources.sql.tables import OutreachMessage
from resources.store import Store
from scheduling.clinic import VISIT_TYPE_SYSTEM
from scheduling.config import ClinicConfig
from scheduling.risk import (
    FEATURES,
    RISK_URL,
    History,
    features,
    load_model,
    rescore,
    rescore_upcoming,
    risk_of,
    score,
    with_risk,
    without_risk,
)
from tests.builders import make_appointment, make_patient

NY = ZoneInfo("America/New_York")
NOW = datetime(2026, 3, 4, 15, 0, tzinfo=UTC)  # a Wednesday


def _appt(start: datetime, *, status: str = "booked", visit: str = "follow-up") -> dict[str, Any]:
    end = start + timedelta(minutes=30)
    appt = make_appointment(
        "Patient/pat1", "Practitioner/smith", start.isoformat(), end.isoformat(), status=status
    )
    appt["serviceType"] = [{"coding": [{"system": VISIT_TYPE_SYSTEM, "code": visit}]}]
    return appt


def _feats(**kw: Any) -> Any:
    start = kw.pop("start", datetime(2026, 3, 11, 15, 0, tzinfo=UTC))  # Wednesday 10:00 NY
    appt = _appt(start, visit=kw.pop("visit", "follow-up"))
    return features(
        appt,
        history=kw.pop("history", History(4, 0)),
        unanswered=kw.pop("unanswered", 0),
        booked_at=kw.pop("booked_at", start - timedelta(days=7)),
        tz=NY,
        new_visit_types={"new-patient"},
    )


# -- the model and the score --------------------------------------------------------------------
def test_the_shipped_model_is_trained_on_the_features_computed_here() -> None:
    model = load_model()
    assert model.features == FEATURES
    assert set(_feats().values) == set(FEATURES)
    assert len(model.coefficients) == len(model.reference) == len(FEATURES)
    assert model.version.startswith("noshow-lr-")


def test_the_score_rises_with_past_noshows() -> None:
    scores = [score(_feats(history=History(10, n))).score for n in range(6)]
    assert scores == sorted(scores)
    assert scores[-1] > scores[0] + 0.1


def test_reasons_name_what_raised_the_score_in_words() -> None:
    start = datetime(2026, 3, 9, 13, 0, tzinfo=UTC)  # Monday 8:00 in New York (EST)
    risk = score(
        _feats(
            start=start,
            visit="new-patient",
            history=History(10, 2),
            unanswered=1,
            booked_at=start - timedelta(days=45),
        )
    )
    assert len(risk.reasons) == 3  # the three largest pushes, in words
    possible = {
        "2 no-shows in the last 10 visits",
        "booked 45 days ahead",
        "Monday 8:00",
        "visit type new-patient",
        "1 reminder unanswered",
    }
    assert set(risk.reasons) <= possible
    habitual = score(_feats(history=History(5, 4), booked_at=datetime(2026, 3, 9, tzinfo=UTC)))
    assert habitual.reasons[0] == "4 no-shows in the last 5 visits"
    calm = score(_feats(history=History(10, 0), booked_at=datetime(2026, 3, 10, tzinfo=UTC)))
    assert calm.score < risk.score
    assert not set(calm.reasons) & possible


def test_created_says_when_it_was_booked() -> None:
    start = datetime(2026, 3, 11, 15, 0, tzinfo=UTC)
    appt = {**_appt(start), "created": "2026-01-25T09:00:00Z"}
    feats = features(
        appt, history=History(), unanswered=0, booked_at=start, tz=NY, new_visit_types=()
    )
    assert feats.words["lead"] == "booked 45 days ahead"


# -- the extension ------------------------------------------------------------------------------
def test_the_extension_round_trips_and_leaves_other_extensions_alone() -> None:
    other = {"url": "urn:other", "valueString": "kept"}
    appt = {**_appt(NOW), "extension": [other]}
    assert risk_of(appt) is None
    risk = score(_feats(history=History(10, 3)))
    marked = with_risk(with_risk(appt, risk), risk)
    assert risk_of(marked) == risk.score
    assert [e["url"] for e in marked["extension"]] == ["urn:other", RISK_URL]
    subs = marked["extension"][1]["extension"]
    assert subs[0] == {"url": "score", "valueDecimal": risk.score}
    assert subs[-1] == {"url": "model", "valueString": load_model().version}
    assert without_risk(marked) == appt
    assert "extension" not in without_risk(with_risk(_appt(NOW), risk))


# -- the job ------------------------------------------------------------------------------------
def _create(db: Database, store: Store, resource: dict[str, Any], rid: str) -> None:
    with db.write() as conn:
        service.update(
            conn,
            store=store,
            resource_type=resource["resourceType"],
            resource_id=rid,
            resource={**resource, "id": rid},
        )


def _reminder(db: Database, appointment_id: str, answer: str | None) -> None:
    with db.write() as conn:
        conn.execute(
            insert(OutreachMessage).values(
                id=str(uuid.uuid4()),
                kind="reminder",
                dedupe=str(uuid.uuid4()),
                appointment_id=appointment_id,
                to_digest=b"\0" * 16,
                state="sent",
                created=NOW,
                sent=NOW,
                answer=answer,
                kek_id="k",
                wrapped_key=b"w",
                nonce=b"n",
                ciphertext=b"c",
            )
        )


def _read(db: Database, store: Store, rid: str) -> dict[str, Any]:
    with db.read() as conn:
        stored = store.read(conn, "Appointment", rid)
    assert stored is not None
    return stored.resource()


def _rescore(db: Database, store: Store, cfg: ClinicConfig) -> int:
    with db.write() as conn:
        return rescore_upcoming(conn, store=store, config=cfg, now=NOW)


@pytest.fixture
def clinic_history(db: Database, store: Store) -> None:
    _create(db, store, make_patient("Pat"), "pat1")
    for i, status in enumerate(["noshow", "noshow", "fulfilled", "fulfilled", "arrived"]):
        _create(db, store, _appt(NOW - timedelta(days=30 * (i + 1)), status=status), f"past{i}")
    _create(db, store, _appt(NOW + timedelta(days=6)), "next")
    _create(db, store, _appt(NOW + timedelta(days=8), status="cancelled"), "gone")
    _create(db, store, _appt(NOW + timedelta(days=400)), "far")  # beyond the horizon


def test_rescoring_writes_the_risk_once_then_nothing(
    db: Database, store: Store, cfg: ClinicConfig, clinic_history: None
) -> None:
    assert _rescore(db, store, cfg) == 1
    appt = _read(db, store, "next")
    assert appt["meta"]["versionId"] == "2"
    first = risk_of(appt)
    assert first is not None and 0 <= first <= 1
    (ext,) = [e for e in appt["extension"] if e["url"] == RISK_URL]
    reasons = [s["valueString"] for s in ext["extension"] if s["url"] == "reason"]
    assert "2 no-shows in the last 5 visits" in reasons
    for rid in ("gone", "far", "past0"):
        assert risk_of(_read(db, store, rid)) is None
    assert _rescore(db, store, cfg) == 0  # a steady state writes nothing
    assert _read(db, store, "next")["meta"]["versionId"] == "2"
    # an unanswered reminder raises it; an answered one does not count
    _reminder(db, "next", None)
    _reminder(db, "next", "yes")
    assert _rescore(db, store, cfg) == 1
    later = risk_of(_read(db, store, "next"))
    assert later is not None and later > first


def test_the_score_is_searchable(
    db: Database, store: Store, cfg: ClinicConfig, clinic_history: None
) -> None:
    _rescore(db, store, cfg)
    value = risk_of(_read(db, store, "next"))
    assert value is not None
    for params, expected in ((f"ge{value}", ["next"]), (f"gt{value}", [])):
        query = parse_query("Appointment", [("risk", params)], default_count=10, max_count=10)
        with db.read() as conn:
            found = run_search(conn, store=store, query=query).matches
        assert [s.res_id for s in found] == expected


def test_a_new_version_made_meanwhile_keeps_its_content(
    db: Database, store: Store, cfg: ClinicConfig, clinic_history: None
) -> None:
    """The job edits the current body: a rescore after a change keeps the change."""
    _rescore(db, store, cfg)
    appt = _read(db, store, "next")
    appt["comment"] = "bring the referral letter"
    _create(db, store, appt, "next")
    with db.write() as conn:
        written = rescore(conn, store=store, config=cfg, now=NOW)
    assert written == []  # same score, same reasons: the extension came along with the edit
    assert _read(db, store, "next")["comment"] == "bring the referral letter"
