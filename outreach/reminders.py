"""The reminder job: texts before booked appointments, at the clinic file's times
(``reminders:`` in the clinic file, ``docs/clinic-config.md``), each sent once.

One pass (:func:`run_reminders`, every ``FHIRSCHED_REMINDER_SECONDS`` in the server):

1. Messages left ``sending`` by a crash are settled (:meth:`Outreach.settle`).
2. **One read of the search index** lists the booked Appointments that start within the
   reminder window (id, version, start; no body opened), and **one read of
   ``outreach_message``** what was already claimed for them.
3. For each appointment the reminder due now is worked out from its start alone (below). Only
   the appointments with a reminder to send (or an escalation to make) are opened, all in one
   read, with their Patients in another.
4. Each reminder goes through :meth:`Outreach.send_once` under the key
   ``reminder:<appointment>:<start UTC>:<offset>``: two workers, or a restart, find it claimed
   and send nothing; a moved appointment has a new start and so new keys; a cancelled one is
   no longer booked and is not listed. After a reminder is sent, the patient's conversation
   with the booking agent is told (``Conversations.note``), with the appointment in context.
5. Appointments whose reminders went unanswered go to the staff queue, once
   (``Conversations.escalate``).

Which reminder is due: each offset's **planned time** is the start minus the offset; one that
falls in quiet hours is moved *earlier*, to a minute before the quiet hours begin (never later:
a reminder must not come after the time the clinic promised). At a pass outside quiet hours,
the offset whose planned time came last (and has come) is the one due; an earlier one that was
missed is not sent any more. A due reminder goes out at its planned time, or later by at most
a quarter of its offset (at least an hour) if the server was down, the appointment was booked
or moved after that time, or quiet hours held it; otherwise it is dropped and the next offset
comes at its own time. So an appointment booked 3 hours ahead gets only the 2 hour reminder,
and nothing is ever sent in quiet hours.

An appointment whose no-show risk score (``urn:fhir-sched:StructureDefinition/no-show-risk``)
is at or above ``extra_when_risk_at_least`` also gets a reminder ``extra_offset_hours`` before
it; the text is the same (a patient-facing message never mentions the score).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, Table, bindparam, exists, false, select, update

from base.logging import get_logger
from outreach.hooks import Conversations
from outreach.replies import appointment_facts
from outreach.sending import Outreach, phone_of
from resources.fhirdate import as_utc
from resources.sql.engine import Database
from resources.sql.tables import IdxDate, IdxToken, OutreachMessage, ResourceRow
from resources.store import Store
from scheduling.clinic import VISIT_TYPE_SYSTEM
from scheduling.config import ClinicConfig, QuietHours, Reminders
from scheduling.risk import risk_of

__all__ = [
    "Report",
    "due_offset",
    "late_limit",
    "latest_planned",
    "phone_of",
    "planned",
    "quiet_at",
    "run_reminders",
    "shown_time",
]

log = get_logger("outreach.reminders")

R = cast(Table, ResourceRow.__table__)
D = cast(Table, IdxDate.__table__)
TK = cast(Table, IdxToken.__table__)
T = cast(Table, OutreachMessage.__table__)
_RISK_CACHE: dict[tuple[str, int], float | None] = {}  # (id, version) -> score, this process
_RISK_CACHE_MAX = 100_000


@dataclass
class Report:
    """What one pass did (counts only: it is logged)."""

    upcoming: int = 0  # booked appointments in the window
    opened: int = 0  # appointments whose body was read
    sent: int = 0
    skipped: int = 0  # opted out
    failed: int = 0
    duplicate: int = 0  # another worker claimed it first
    no_phone: int = 0
    escalated: int = 0
    settled: int = 0  # left "sending" by a crash, now "unknown"
    quiet: bool = False
    dedupes: list[str] = field(default_factory=list)  # the keys sent in this pass


# -- times ------------------------------------------------------------------------------------


def quiet_at(when: datetime, quiet: QuietHours | None, tz: ZoneInfo) -> datetime | None:
    """The instant the quiet hours that ``when`` falls in began, or None if it is not quiet."""
    if quiet is None or quiet.start == quiet.end:
        return None
    local = when.astimezone(tz)
    t = local.time().replace(tzinfo=None)
    day = local.date()
    if quiet.start < quiet.end:  # within one day
        inside = quiet.start <= t < quiet.end
    else:  # overnight: from start to midnight, and from midnight to end
        inside = t >= quiet.start or t < quiet.end
        if t < quiet.end:
            day -= timedelta(days=1)
    return datetime.combine(day, quiet.start, tzinfo=tz) if inside else None


@lru_cache(maxsize=16384)  # appointments start on the clinic's slot grid: starts repeat
def planned(start: datetime, hours: int, quiet: QuietHours | None, tz: ZoneInfo) -> datetime:
    """When the reminder ``hours`` before ``start`` is sent: a minute before quiet hours
    begin if its time falls in them."""
    at = start - timedelta(hours=hours)
    began = quiet_at(at, quiet, tz)
    return at if began is None else began - timedelta(minutes=1)


def late_limit(hours: int) -> timedelta:
    """How late a reminder may still go out: a quarter of its offset, at least an hour."""
    return max(timedelta(hours=1), timedelta(hours=hours) / 4)


def latest_planned(
    start: datetime,
    offsets: Iterable[int],
    now: datetime,
    quiet: QuietHours | None,
    tz: ZoneInfo,
) -> tuple[datetime, int] | None:
    """(planned time, offset) of the offset planned last among those whose time has come."""
    best: tuple[datetime, int] | None = None
    for hours in offsets:
        at = planned(start, hours, quiet, tz)
        if at <= now and (best is None or (at, -hours) > (best[0], -best[1])):
            best = (at, hours)
    return best


def _fresh(found: tuple[datetime, int] | None, now: datetime) -> int | None:
    if found is None or now - found[0] > late_limit(found[1]):
        return None
    return found[1]


def due_offset(
    start: datetime,
    offsets: Iterable[int],
    now: datetime,
    quiet: QuietHours | None,
    tz: ZoneInfo,
) -> int | None:
    """The offset whose reminder is due at ``now`` (see the module), or None."""
    if now >= start:
        return None
    return _fresh(latest_planned(start, offsets, now, quiet, tz), now)


def shown_time(start: datetime, tz: ZoneInfo) -> tuple[str, str]:
    """("Tue Dec 8", "2:30 pm"): the start as the patient reads it, in the clinic's zone."""
    local = start.astimezone(tz)
    hour = local.hour % 12 or 12
    return (
        f"{local:%a} {local:%b} {local.day}",
        f"{hour}:{local.minute:02d} {'am' if local.hour < 12 else 'pm'}",
    )


# -- reads ------------------------------------------------------------------------------------

_BOOKED = exists().where(
    TK.c.seq == D.c.seq,
    TK.c.res_type == "Appointment",
    TK.c.param == "status",
    TK.c.code == "booked",
)


def _window(visit_types: list[str] | None) -> Any:
    """Booked Appointments starting in (lo, hi], from the date index (no body opened)."""
    query = (
        select(R.c.seq, R.c.res_id, R.c.version, D.c.low)
        .select_from(D)
        .join(R, R.c.seq == D.c.seq)
        .where(
            D.c.res_type == "Appointment",
            D.c.param == "date",
            D.c.low > bindparam("lo"),
            D.c.low <= bindparam("hi"),
            R.c.deleted == false(),
            _BOOKED,
        )
    )
    if visit_types is not None:
        query = query.where(
            exists().where(
                TK.c.seq == D.c.seq,
                TK.c.res_type == "Appointment",
                TK.c.param == "service-type",
                TK.c.system == VISIT_TYPE_SYSTEM,
                TK.c.code.in_(visit_types),
            )
        )
    return query


def _claimed(window: Any) -> Any:
    """What ``outreach_message`` holds for the appointments of ``window``."""
    ids = window.with_only_columns(R.c.res_id).scalar_subquery()
    return select(
        T.c.id, T.c.appointment_id, T.c.kind, T.c.dedupe, T.c.state, T.c.sent, T.c.answer
    ).where(T.c.appointment_id.in_(ids))


@dataclass(frozen=True, slots=True)
class _Upcoming:
    seq: int
    id: str
    version: int
    start: datetime


def _read_window(
    conn: Connection, config: Reminders, now: datetime, span: timedelta
) -> tuple[list[_Upcoming], list[Any]]:
    window = _window(config.visit_types)
    params = {"lo": now, "hi": now + span}
    rows = conn.execute(window, params).all()
    upcoming = [_Upcoming(r.seq, r.res_id, r.version, as_utc(r.low)) for r in rows]
    messages = list(conn.execute(_claimed(window), params).all()) if upcoming else []
    return upcoming, messages


def _open_patients(conn: Connection, store: Store, ids: set[str]) -> dict[str, dict[str, Any]]:
    if not ids:
        return {}
    seqs = conn.execute(
        select(R.c.seq).where(
            R.c.res_type == "Patient", R.c.res_id.in_(sorted(ids)), R.c.deleted == false()
        )
    ).scalars()
    return {v.res_id: v.resource() for v in store.read_many(conn, list(seqs)).values()}


def _participant(appt: dict[str, Any], rtype: str) -> str | None:
    for p in appt.get("participant") or []:
        ref = ((p or {}).get("actor") or {}).get("reference", "")
        if isinstance(ref, str) and ref.startswith(f"{rtype}/"):
            return ref.split("/", 1)[1]
    return None


def _visit_code(appt: dict[str, Any]) -> str | None:
    for concept in appt.get("serviceType") or []:
        for c in (concept or {}).get("coding") or []:
            if c.get("system") == VISIT_TYPE_SYSTEM and c.get("code"):
                return str(c["code"])
    return None


def _remember_risk(key: tuple[str, int], score: float | None) -> None:
    if len(_RISK_CACHE) >= _RISK_CACHE_MAX:
        _RISK_CACHE.clear()
    _RISK_CACHE[key] = score


# -- the pass ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    upcoming: _Upcoming
    hours: int | None  # the regular offset due (None: none)
    extra: int | None  # the extra offset, if it is the one due for an appointment at risk


def run_reminders(
    outreach: Outreach,
    *,
    db: Database,
    store: Store,
    config: ClinicConfig,
    conversations: Conversations,
    now: datetime,
) -> Report:
    """One pass of the reminder job (see the module). Safe to run in several workers at once."""
    rem = config.reminders
    now = as_utc(now).astimezone(UTC)  # SQLite compares the stored UTC text as it is
    report = Report(settled=outreach.settle())
    if not rem.enabled:
        return report
    tz = config.tz
    quiet = rem.quiet_hours
    extra = rem.extra_offset_hours if rem.extra_when_risk_at_least is not None else None
    if extra in rem.offsets_hours:
        extra = None  # the regular reminder at that offset is sent to everyone anyway
    longest = max([*rem.offsets_hours, extra or 0])
    span = timedelta(hours=longest) + _quiet_span(quiet)
    with db.read() as conn:
        upcoming, messages = _read_window(conn, rem, now, span)
    report.upcoming = len(upcoming)
    claimed = {m.dedupe for m in messages}
    report.quiet = quiet_at(now, quiet, tz) is not None
    plans: list[_Plan] = []
    if not report.quiet:
        plans = _due(upcoming, rem, extra, claimed, now, quiet, tz)
    escalations = _unanswered(upcoming, messages, rem, now)
    if not plans and not escalations:
        _log(report)
        return report
    wanted = {p.upcoming.seq: p.upcoming for p in plans} | {u.seq: u for u, _ in escalations}
    with db.read() as conn:
        opened = store.read_many(conn, list(wanted))
        report.opened = len(opened)
        bodies = {s: v.resource() for s, v in opened.items() if not v.deleted}
        patients = _open_patients(
            conn, store, {pid for b in bodies.values() if (pid := _participant(b, "Patient"))}
        )
    for plan in plans:
        body = bodies.get(plan.upcoming.seq)
        if body is None:
            continue
        hours = plan.hours
        if plan.extra is not None:
            score = risk_of(body)
            _remember_risk((plan.upcoming.id, plan.upcoming.version), score)
            if score is not None and score >= cast(float, rem.extra_when_risk_at_least):
                hours = plan.extra
        if hours is None:
            continue
        _send(outreach, config, conversations, plan.upcoming, hours, body, patients, report)
    for up, last_message in escalations:
        body = bodies.get(up.seq)
        if body is not None:
            _escalate(outreach, config, conversations, up, body, last_message, report)
    _log(report)
    return report


def _quiet_span(quiet: QuietHours | None) -> timedelta:
    """How long quiet hours last: how much earlier a reminder may be planned."""
    if quiet is None or quiet.start == quiet.end:
        return timedelta(0)
    day = datetime(2000, 1, 1)
    start, end = datetime.combine(day, quiet.start), datetime.combine(day, quiet.end)
    return (end - start) % timedelta(days=1) + timedelta(minutes=1)


def _key(up: _Upcoming, hours: int) -> str:
    return f"reminder:{up.id}:{up.start.isoformat()}:{hours}"


def _due(
    upcoming: list[_Upcoming],
    rem: Reminders,
    extra: int | None,
    claimed: set[str],
    now: datetime,
    quiet: QuietHours | None,
    tz: ZoneInfo,
) -> list[_Plan]:
    """The appointments with a reminder to send now, not claimed yet, from their starts alone.
    Whether the extra reminder applies needs the risk score in the body: a score this process
    read before for the same version of the Appointment is not read again."""
    out = []
    threshold = cast(float, rem.extra_when_risk_at_least)
    every = [*rem.offsets_hours, *([extra] if extra is not None else [])]
    for up in upcoming:
        if up.start <= now:
            continue
        first = latest_planned(up.start, every, now, quiet, tz)
        if first is None:
            continue
        regular: int | None = first[1]
        extra_due: int | None = None
        if first[1] == extra:
            if _key(up, extra) in claimed:
                continue  # sent: it is the latest due for this appointment
            extra_due = _fresh(first, now)
            regular = _fresh(latest_planned(up.start, rem.offsets_hours, now, quiet, tz), now)
            known = _RISK_CACHE.get((up.id, up.version), -1.0)
            if known != -1.0:  # read before: decided without opening it
                if known is not None and known >= threshold:
                    regular = None
                else:
                    extra_due = None
        else:
            regular = _fresh(first, now)
        if regular is not None and _key(up, regular) in claimed:
            regular = None
        if regular is None and extra_due is None:
            continue
        out.append(_Plan(up, regular, extra_due))
    return out


def _unanswered(
    upcoming: list[_Upcoming], messages: list[Any], rem: Reminders, now: datetime
) -> list[tuple[_Upcoming, str]]:
    """Appointments still ahead with ``unanswered_to_staff`` reminders sent (for their current
    start, each out for ``unanswered_after_minutes``) and none answered, not yet escalated:
    (appointment, the id of its newest reminder)."""
    if not rem.unanswered_to_staff:
        return []
    wait = timedelta(minutes=rem.unanswered_after_minutes)
    by_appointment: dict[str, list[Any]] = {}
    for m in messages:
        by_appointment.setdefault(m.appointment_id, []).append(m)
    out = []
    for up in upcoming:
        mine = by_appointment.get(up.id)
        if not mine or up.start <= now:
            continue
        if any(m.kind == "escalation" for m in mine):
            continue
        reminders = [m for m in mine if m.kind == "reminder"]
        if any(m.answer is not None for m in reminders):
            continue
        prefix = f"reminder:{up.id}:{up.start.isoformat()}:"
        out_long = [
            m
            for m in reminders
            if m.state == "sent"
            and m.dedupe.startswith(prefix)
            and m.sent is not None
            and as_utc(m.sent) <= now - wait
        ]
        if len(out_long) >= rem.unanswered_to_staff:
            newest = max(out_long, key=lambda m: as_utc(m.sent))
            out.append((up, str(newest.id)))
    return out


def _shown(config: ClinicConfig, up: _Upcoming, body: dict[str, Any]) -> dict[str, str]:
    day, at = shown_time(up.start, config.tz)
    practitioner = _participant(body, "Practitioner")
    location = _participant(body, "Location")
    code = _visit_code(body)
    visit = config.visit_type(code) if code else None
    return {
        "date": day,
        "time": at,
        "clinician": config.practitioner_names.get(practitioner or "", "your clinician"),
        "location": config.location_names.get(location or "", config.name),
        "visit": visit.display if visit else "appointment",
    }


def _send(
    outreach: Outreach,
    config: ClinicConfig,
    conversations: Conversations,
    up: _Upcoming,
    hours: int,
    body: dict[str, Any],
    patients: dict[str, dict[str, Any]],
    report: Report,
) -> None:
    patient_id = _participant(body, "Patient")
    patient = patients.get(patient_id or "")
    number = outreach.phone_of(patient) if patient else None
    if patient_id is None or patient is None or number is None:
        report.no_phone += 1
        return
    shown = _shown(config, up, body)
    text = config.reminders.template.format(**shown)
    dedupe = _key(up, hours)
    sent = outreach.send_once(
        kind="reminder",
        dedupe=dedupe,
        to=number,
        body=text,
        appointment_id=up.id,
        patient_id=patient_id,
    )
    setattr(report, sent.state, getattr(report, sent.state) + 1)
    if sent.state != "sent":
        return
    report.dedupes.append(dedupe)
    try:
        with outreach.db.read() as conn:  # the agent's forms, as replies name it
            facts = appointment_facts(
                conn, store=outreach.store, config=config, appointment_id=up.id
            )
        conversations.note(number, text, facts)
    except Exception as exc:  # noqa: BLE001 - the text is sent and recorded; the note is extra
        log.warning("reminder.note_failed", appointment=up.id, error_type=type(exc).__name__)


def _escalate(
    outreach: Outreach,
    config: ClinicConfig,
    conversations: Conversations,
    up: _Upcoming,
    body: dict[str, Any],
    last_message: str,
    report: Report,
) -> None:
    """Claim ``escalation:<appointment>`` (once, whichever worker gets there first), hand it to
    the staff queue, then mark it sent with its AuditEvent. A crash in between leaves the
    claim, which :meth:`Outreach.settle` marks ``unknown``: at most once, never twice."""
    message = outreach.get(last_message)
    if message is None:
        return
    shown = _shown(config, up, body)
    count = config.reminders.unanswered_to_staff
    summary = (
        f"Appointment/{up.id} on {shown['date']} at {shown['time']} with {shown['clinician']} "
        f"({shown['visit']}): {count} reminders unanswered"
    )
    patient_id = _participant(body, "Patient")
    with outreach.db.write() as conn:
        claimed = outreach.claim(
            conn,
            kind="escalation",
            dedupe=f"escalation:{up.id}",
            to=message.to,
            body=summary,
            appointment_id=up.id,
        )
    if claimed is None:
        return
    mid = claimed[0]
    conversations.escalate(message.to, reason="unanswered_reminders", summary=summary)
    with outreach.db.write() as conn:
        conn.execute(update(T).where(T.c.id == mid).values(state="sent", sent=outreach.clock()))
        outreach.audit_in(
            conn,
            "outreach-acted:escalated",
            appointment_id=up.id,
            patient_id=patient_id,
            description="reminders unanswered: to the staff queue",
        )
    report.escalated += 1
    log.info("reminder.escalated", appointment=up.id, message_id=mid)


def _log(report: Report) -> None:
    if report.sent or report.failed or report.escalated or report.no_phone:
        log.info(
            "reminders.pass",
            upcoming=report.upcoming,
            opened=report.opened,
            sent=report.sent,
            skipped=report.skipped,
            failed=report.failed,
            duplicate=report.duplicate,
            no_phone=report.no_phone,
            escalated=report.escalated,
        )
