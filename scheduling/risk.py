"""No-show risk: a score from 0 to 1 on each booked Appointment, with its reasons in words.

The model is a logistic regression whose coefficients live in ``risk_model.json`` beside this
module (versioned: ``model`` in the extension names the file's ``version``); ``bench/
noshow_risk.py`` trains it with scikit-learn on a synthetic clinic history and writes the
file. Scoring is a dot product and a sigmoid in plain Python.

The features, all computed by :func:`features` from the Appointment and what the database
says about its patient (see ``docs/architecture.md``, "No-show risk"):

* ``noshow_rate``, ``noshows``: the patient's past visits here (``noshow`` against
  ``fulfilled``, ``arrived``, ``checked-in`` and ``booked`` Appointments that began before
  now, over the last :data:`HISTORY_YEARS` years); S26 messages from an EMR set ``noshow``, so
  they count too. ``no_history``: no past visit at all.
* ``lead``: log(1 + days between booking and start); the booking time is
  ``Appointment.created``, else when the Appointment was first stored.
* ``monday``, ``early`` (starts before 09:00), ``late`` (starts at 16:00 or later): in the
  clinic's time zone.
* ``new_patient``: the visit type is one the clinic file offers to new patients only.
* ``unanswered``: reminders sent for this Appointment that got no answer (``outreach_message``).

Each reason is a feature that pushed the score up: its contribution, coefficient * (value -
the training mean), largest first, at most :data:`MAX_REASONS`. Reasons are for staff: the
server strips the extension from what a patient's token reads (``fhir_server/handlers.py``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Table, and_, func, select

from conformance.declaration import NO_SHOW_RISK_URL
from resources.fhirdate import as_utc, parse_fhir_date
from resources.sql.tables import OutreachMessage
from resources.store import INDEX_TABLES, R, Store, StoredVersion, V
from scheduling.booking import participant_id
from scheduling.clinic import VISIT_TYPE_SYSTEM
from scheduling.config import ClinicConfig

__all__ = [
    "MODEL_FILE",
    "RISK_URL",
    "Features",
    "History",
    "Model",
    "Risk",
    "features",
    "load_model",
    "rescore",
    "rescore_upcoming",
    "risk_extension",
    "risk_of",
    "score",
    "with_risk",
    "without_risk",
]

RISK_URL = NO_SHOW_RISK_URL
MODEL_FILE = Path(__file__).with_name("risk_model.json")
FEATURES = (
    "noshow_rate",
    "noshows",
    "no_history",
    "lead",
    "monday",
    "early",
    "late",
    "new_patient",
    "unanswered",
)
MAX_REASONS = 3
MIN_REASON = 0.05  # a contribution (in log-odds) smaller than this is not worth a reason
HISTORY_YEARS = 2
VISITED = ("noshow", "fulfilled", "arrived", "checked-in", "booked")  # a past visit's statuses
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
RISK_PARAM = frozenset({"risk"})


@dataclass(frozen=True, slots=True)
class History:
    """The patient's past visits here: how many, and how many of them were no-shows."""

    visits: int = 0
    noshows: int = 0


@dataclass(frozen=True, slots=True)
class Features:
    """The model's inputs for one Appointment, and the words each one becomes as a reason."""

    values: dict[str, float]
    words: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Risk:
    score: float  # 0..1, rounded to 2 places
    reasons: tuple[str, ...]
    model: str


@dataclass(frozen=True, slots=True)
class Model:
    """A logistic regression: P(no-show) = sigmoid(intercept + sum of coef * value)."""

    version: str
    features: tuple[str, ...]
    coefficients: tuple[float, ...]
    intercept: float
    reference: tuple[float, ...]  # each feature's mean in the training data

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Model:
        return cls(
            version=str(doc["version"]),
            features=tuple(doc["features"]),
            coefficients=tuple(float(c) for c in doc["coefficients"]),
            intercept=float(doc["intercept"]),
            reference=tuple(float(m) for m in doc["reference"]),
        )


@cache
def load_model(path: Path = MODEL_FILE) -> Model:
    """The shipped model (read once)."""
    model = Model.from_document(json.loads(path.read_text()))
    if model.features != FEATURES:
        raise ValueError(f"{path} was trained on {model.features}, not {FEATURES}")
    return model


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def visit_type(appointment: dict[str, Any]) -> str | None:
    """The clinic's visit type code (``serviceType``, system ``urn:fhir-sched:visit-type``)."""
    for concept in appointment.get("serviceType", []):
        for coding in concept.get("coding", []):
            if coding.get("system") == VISIT_TYPE_SYSTEM and coding.get("code"):
                return str(coding["code"])
    return None


def features(
    appointment: dict[str, Any],
    *,
    history: History,
    unanswered: int,
    booked_at: datetime | None,
    tz: ZoneInfo,
    new_visit_types: Collection[str],
) -> Features:
    """The model's inputs for ``appointment`` (pure: the bench calls it on plain dicts).

    ``booked_at`` is when it was booked if ``Appointment.created`` does not say; ``tz`` the
    clinic's zone; ``new_visit_types`` the visit types offered to new patients only.
    """
    start = parse_fhir_date(str(appointment["start"])).low
    local = start.astimezone(tz)
    created = appointment.get("created")
    booked = parse_fhir_date(str(created)).low if created else booked_at
    lead_days = max((start - booked).total_seconds() / 86400, 0.0) if booked else 0.0
    visits, noshows = history.visits, history.noshows
    kind = visit_type(appointment)
    values = {
        "noshow_rate": noshows / visits if visits else 0.0,
        "noshows": float(min(noshows, 5)),
        "no_history": 1.0 if visits == 0 else 0.0,
        "lead": math.log1p(lead_days),
        "monday": 1.0 if local.weekday() == 0 else 0.0,
        "early": 1.0 if local.hour < 9 else 0.0,
        "late": 1.0 if local.hour >= 16 else 0.0,
        "new_patient": 1.0 if kind is not None and kind in new_visit_types else 0.0,
        "unanswered": float(min(unanswered, 3)),
    }
    when = f"{WEEKDAYS[local.weekday()]} {local.hour}:{local.minute:02d}"
    past = f"{_plural(noshows, 'no-show')} in the last {_plural(visits, 'visit')}"
    words = {
        "noshow_rate": past,
        "noshows": past,
        "no_history": "no earlier visits here",
        "lead": f"booked {round(lead_days)} days ahead",
        "monday": when,
        "early": when,
        "late": when,
        "new_patient": f"visit type {kind}",
        "unanswered": f"{_plural(unanswered, 'reminder')} unanswered",
    }
    return Features(values, words)


def score(feats: Features, model: Model | None = None) -> Risk:
    """The no-show probability and the words for the features that raised it most."""
    model = model or load_model()
    logit = model.intercept
    pushes: list[tuple[float, str]] = []
    for name, coef, mean in zip(model.features, model.coefficients, model.reference, strict=True):
        value = feats.values[name]
        logit += coef * value
        pushes.append((coef * (value - mean), name))
    probability = 1 / (1 + math.exp(-logit))
    reasons: list[str] = []
    for push, name in sorted(pushes, reverse=True):
        words = feats.words.get(name, name)
        if push < MIN_REASON or len(reasons) == MAX_REASONS:
            break
        if words not in reasons:
            reasons.append(words)
    return Risk(round(probability, 2), tuple(reasons), model.version)


# -- the extension ------------------------------------------------------------------------------
def risk_extension(risk: Risk) -> dict[str, Any]:
    """``urn:fhir-sched:StructureDefinition/no-show-risk``: score, reasons, model version."""
    return {
        "url": RISK_URL,
        "extension": [
            {"url": "score", "valueDecimal": risk.score},
            *({"url": "reason", "valueString": r} for r in risk.reasons),
            {"url": "model", "valueString": risk.model},
        ],
    }


def _risk_of(appointment: dict[str, Any]) -> dict[str, Any] | None:
    for ext in appointment.get("extension", []):
        if isinstance(ext, dict) and ext.get("url") == RISK_URL:
            return cast(dict[str, Any], ext)
    return None


def risk_of(appointment: dict[str, Any]) -> float | None:
    """The Appointment's no-show risk score (0..1), or None if it has none (the reminder job
    sends an extra reminder above its threshold)."""
    ext = _risk_of(appointment)
    for sub in (ext or {}).get("extension", []):
        if sub.get("url") == "score" and isinstance(sub.get("valueDecimal"), int | float):
            return float(sub["valueDecimal"])
    return None


def with_risk(appointment: dict[str, Any], risk: Risk) -> dict[str, Any]:
    """A copy carrying ``risk`` in place of any risk extension it had (others kept)."""
    others = [e for e in appointment.get("extension", []) if e.get("url") != RISK_URL]
    return {**appointment, "extension": [*others, risk_extension(risk)]}


def without_risk(appointment: dict[str, Any]) -> dict[str, Any]:
    """A copy without the risk extension: what a patient is shown."""
    if _risk_of(appointment) is None:
        return appointment
    out = dict(appointment)
    others = [e for e in appointment["extension"] if e.get("url") != RISK_URL]
    if others:
        out["extension"] = others
    else:
        del out["extension"]
    return out


# -- the job ------------------------------------------------------------------------------------
_D, _T, _REF = INDEX_TABLES["date"], INDEX_TABLES["token"], INDEX_TABLES["reference"]
_V1 = V.alias("first")
_IS_CURRENT = and_(
    V.c.res_type == R.c.res_type, V.c.res_id == R.c.res_id, V.c.version == R.c.version
)
_OM = cast(Table, OutreachMessage.__table__)


def _booked_between(start: datetime, end: datetime) -> Any:
    """Current versions of the booked Appointments starting in [start, end), with when each
    was first stored: one query, driven by the Appointment ``date`` index."""
    return (
        select(R.c.seq, V, _V1.c.last_updated.label("first_stored"))
        .select_from(_D)
        .join(_T, and_(_T.c.seq == _D.c.seq, _T.c.res_type == "Appointment"))
        .join(R, R.c.seq == _D.c.seq)
        .join(V, _IS_CURRENT)
        .join(
            _V1,
            and_(_V1.c.res_type == R.c.res_type, _V1.c.res_id == R.c.res_id, _V1.c.version == 1),
        )
        .where(
            _D.c.res_type == "Appointment",
            _D.c.param == "date",
            _D.c.low >= start,
            _D.c.low < end,
            _T.c.param == "status",
            _T.c.code == "booked",
        )
        .order_by(_D.c.low, R.c.seq)
    )


def _chunks(items: list[str], size: int = 500) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _histories(conn: Connection, patients: list[str], now: datetime) -> dict[str, History]:
    """Each patient's past visits by status: one grouped query (per 500 patients)."""
    counts: dict[str, Counter[str]] = {}
    since = now - timedelta(days=365 * HISTORY_YEARS)
    d, t = _D.alias("d"), _T.alias("t")
    for part in _chunks(patients):
        rows = conn.execute(
            select(_REF.c.target_id, t.c.code, func.count())
            .join(t, and_(t.c.seq == _REF.c.seq, t.c.res_type == "Appointment"))
            .join(d, and_(d.c.seq == _REF.c.seq, d.c.res_type == "Appointment"))
            .where(
                _REF.c.res_type == "Appointment",
                _REF.c.param == "patient",
                _REF.c.target_type == "Patient",
                _REF.c.target_id.in_(part),
                t.c.param == "status",
                t.c.code.in_(VISITED),
                d.c.param == "date",
                d.c.low < now,
                d.c.low >= since,
            )
            .group_by(_REF.c.target_id, t.c.code)
        )
        for patient, status, n in rows:
            counts.setdefault(patient, Counter())[status] += n
    return {p: History(sum(c.values()), c["noshow"]) for p, c in counts.items()}


def _unanswered(conn: Connection, appointments: list[str]) -> dict[str, int]:
    """Reminders sent for each Appointment that got no answer: one grouped query (per 500)."""
    out: dict[str, int] = {}
    for part in _chunks(appointments):
        rows = conn.execute(
            select(_OM.c.appointment_id, func.count())
            .where(
                _OM.c.appointment_id.in_(part),
                _OM.c.kind == "reminder",
                _OM.c.state == "sent",
                _OM.c.answer.is_(None),
            )
            .group_by(_OM.c.appointment_id)
        )
        out.update({str(appt): int(n) for appt, n in rows})
    return out


def rescore(
    conn: Connection,
    *,
    store: Store,
    config: ClinicConfig,
    now: datetime,
    within: timedelta | None = None,
    model: Model | None = None,
) -> list[StoredVersion]:
    """Score every booked Appointment starting between ``now`` and ``within`` from now (by
    default the clinic's booking horizon) and write the risk extension where its score or
    reasons changed, in the caller's transaction. Returns the versions written: none when
    nothing changed. Three queries whatever the number of Appointments (the upcoming ones,
    their patients' past visits, their unanswered reminders), then one write for all of them
    (``Store.update_many``: only the ``risk`` index rows are rewritten)."""
    model = model or load_model()
    until = now + (within or timedelta(weeks=config.horizon_weeks))
    rows = conn.execute(_booked_between(now, until)).all()
    upcoming = {row.res_id: (store.open_row(row), as_utc(row.first_stored)) for row in rows}
    bodies = {rid: stored.resource() for rid, (stored, _) in upcoming.items()}
    patients = sorted({p for b in bodies.values() if (p := participant_id(b, "Patient"))})
    histories = _histories(conn, patients, now)
    unanswered = _unanswered(conn, sorted(bodies))
    new_types = {v.code for v in config.visit_types if v.patients == "new"}
    wanted: dict[str, Risk] = {}
    for rid, body in bodies.items():
        patient = participant_id(body, "Patient")
        feats = features(
            body,
            history=histories.get(patient or "", History()),
            unanswered=unanswered.get(rid, 0),
            booked_at=upcoming[rid][1],
            tz=config.tz,
            new_visit_types=new_types,
        )
        risk = score(feats, model)
        if _risk_of(body) != risk_extension(risk):  # a steady state writes nothing
            wanted[rid] = risk

    def edit(current: dict[str, Any]) -> dict[str, Any] | None:
        risk = wanted[current["id"]]
        if current.get("status") != "booked" or _risk_of(current) == risk_extension(risk):
            return None  # changed since it was read
        return with_risk(current, risk)

    return store.update_many(conn, "Appointment", wanted, edit, changed=RISK_PARAM)


def rescore_upcoming(conn: Connection, *, store: Store, config: ClinicConfig, now: datetime) -> int:
    """:func:`rescore` over the clinic's horizon; how many Appointments it wrote."""
    return len(rescore(conn, store=store, config=config, now=now))
