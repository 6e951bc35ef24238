"""What `bench.soak` checks once the load has stopped: the ledger of acknowledged writes and
the checks over what the server holds (no database or HTTP here, so each check can be shown
to fail on planted data: ``tests/integration/test_soak.py``).

A write is *acknowledged* when its answer arrived: a 2xx with the resource (FHIR), an AA
(HL7). A request whose answer never arrived (the server was killed, the connection dropped)
is *unknown*: it may or may not have applied. The ledger keeps, per appointment, the state
of its last acknowledged write and the states of unknown writes sent after it; the
appointment as stored must be one of those. A later acknowledged write supersedes all of
them. Each booking that creates an Appointment carries an identifier of its own
(``CREATED_BY``), so an Appointment that a refused (409) request created anyway is found too.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "CONFLICT_TAG",
    "CREATED_BY",
    "HOLDS_TIME",
    "BusyRow",
    "Ledger",
    "Snapshot",
    "State",
    "Violation",
    "check",
    "state_of",
    "utc",
]

CREATED_BY = "urn:fhir-sched:soak:booking"  # identifier system: the op that created it
HL7_FILLER = ":filler"  # the bridge's identifier systems end so: urn:fhir-sched:hl7:<sender>:filler
CONFLICT_TAG = ("urn:fhir-sched:tags", "hl7-conflict")
HOLDS_TIME = {"booked", "pending", "arrived", "checked-in", "fulfilled"}
MAX_DETAILS = 20  # examples kept per check in the report


def utc(value: Any) -> datetime:
    """An instant (ISO text with or without an offset, or a datetime; naive means UTC)."""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(when, datetime), value
    return when.replace(tzinfo=when.tzinfo or UTC).astimezone(UTC)


@dataclass(frozen=True, slots=True)
class State:
    """What an acknowledged (or unknown) write leaves on an Appointment. ``version`` and
    ``slots`` are checked only when known (None: not known, e.g. the old Appointment of a
    reschedule, cancelled by a write that answered with the new one)."""

    status: str
    start: datetime | None = None
    end: datetime | None = None
    practitioner: str | None = None
    version: int | None = None
    slots: frozenset[str] | None = None

    def matches(self, other: State) -> bool:
        """Whether ``other`` (as stored) is this state; fields left None here are not compared."""
        return (
            self.status == other.status
            and (self.start is None or self.start == other.start)
            and (self.end is None or self.end == other.end)
            and (self.practitioner is None or self.practitioner == other.practitioner)
            and (self.version is None or self.version == other.version)
            and (self.slots is None or self.slots == other.slots)
        )

    def brief(self) -> str:
        when = self.start.isoformat() if self.start else "?"
        return f"{self.status}@{when} {self.practitioner or '?'} v{self.version or '?'}"


def _ref(appt: Mapping[str, Any], rtype: str) -> str | None:
    for p in appt.get("participant", []):
        ref = str((p.get("actor") or {}).get("reference", ""))
        if ref.startswith(f"{rtype}/"):
            return ref.split("/", 1)[1]
    return None


def state_of(appt: Mapping[str, Any]) -> State:
    """An Appointment resource's state, as the ledger compares it."""
    return State(
        status=str(appt.get("status")),
        start=utc(appt["start"]) if appt.get("start") else None,
        end=utc(appt["end"]) if appt.get("end") else None,
        practitioner=_ref(appt, "Practitioner"),
        version=int(appt["meta"]["versionId"]) if appt.get("meta", {}).get("versionId") else None,
        slots=frozenset(str(s["reference"]).split("/")[-1] for s in appt.get("slot", [])),
    )


def _conflicted(appt: Mapping[str, Any]) -> bool:
    return any(
        (t.get("system"), t.get("code")) == CONFLICT_TAG
        for t in (appt.get("meta") or {}).get("tag", [])
    )


def _idents(appt: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [(str(i.get("system", "")), str(i.get("value", ""))) for i in appt.get("identifier", [])]


@dataclass
class _Track:
    acked: State | None = None
    unknown: list[State] = field(default_factory=list)


class Ledger:
    """Acknowledged and unknown writes, by appointment key: ``fhir:<id>`` for an Appointment
    booked through `$book` (its id), ``hl7:<filler id>`` for one the EMR sent. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tracks: dict[str, _Track] = defaultdict(_Track)
        self.creations: dict[str, str] = {}  # creating op's identifier → acked|unknown|refused

    def ack(self, key: str, state: State) -> None:
        with self._lock:
            self._tracks[key] = _Track(acked=state)

    def unknown(self, key: str, state: State) -> None:
        with self._lock:
            self._tracks[key].unknown.append(state)

    def created(self, op: str, outcome: str) -> None:
        """What became of a request that creates an Appointment (identifier ``op``)."""
        with self._lock:
            self.creations[op] = outcome

    def tracks(self) -> dict[str, _Track]:
        with self._lock:
            return dict(self._tracks)

    def acknowledged(self) -> int:
        return sum(1 for t in self.tracks().values() if t.acked is not None)


@dataclass(frozen=True, slots=True)
class BusyRow:
    schedule: str
    start: datetime
    end: datetime
    appointment: str
    kind: str


@dataclass
class Snapshot:
    """What the server holds at the end: every Appointment (current versions), every Slot,
    the ``busy_time`` rows and ``fhir-sched audit verify``'s answer."""

    appointments: list[dict[str, Any]]
    slots: list[dict[str, Any]]
    busy: list[BusyRow]
    audit: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    detail: str


def _overlaps(spans: Iterable[tuple[str, datetime, datetime, str]]) -> list[str]:
    """Pairs of spans on one key that overlap (half-open), as text."""
    by_key: dict[str, list[tuple[datetime, datetime, str]]] = defaultdict(list)
    for key, start, end, what in spans:
        by_key[key].append((start, end, what))
    found = []
    for key, rows in by_key.items():
        rows.sort()
        latest: tuple[datetime, datetime, str] | None = None
        for row in rows:
            if latest is not None and row[0] < latest[1]:
                found.append(
                    f"{key}: {latest[2]} {latest[0]:%F %H:%M}-{latest[1]:%H:%M} and "
                    f"{row[2]} {row[0]:%F %H:%M}-{row[1]:%H:%M}"
                )
            if latest is None or row[1] > latest[1]:
                latest = row
    return found


def check(snapshot: Snapshot, ledger: Ledger) -> dict[str, list[Violation]]:
    """Every check by name, with what it found (an empty list: passed)."""
    appts = snapshot.appointments
    holding = [a for a in appts if a.get("status") in HOLDS_TIME and not _conflicted(a)]
    slots = {str(s["id"]): s for s in snapshot.slots}
    out: dict[str, list[Violation]] = {}

    def found(name: str, details: Iterable[str]) -> None:
        out[name] = [Violation(name, d) for d in details]

    # 1. no overlapping busy time: the guard's table, and the Appointments themselves
    found(
        "busy_time_overlap",
        _overlaps((b.schedule, b.start, b.end, b.appointment) for b in snapshot.busy),
    )
    found(
        "appointment_overlap",
        _overlaps(
            (_ref(a, "Practitioner") or "?", utc(a["start"]), utc(a["end"]), str(a["id"]))
            for a in holding
        ),
    )
    # 2. no booked Appointment with a free (or missing) Slot, and time and Slots agree
    found(
        "booked_with_free_slot",
        (
            f"Appointment/{a['id']} ({a['status']}): Slot/{sid} is "
            f"{slots[sid]['status'] if sid in slots else 'missing'}"
            for a in holding
            for sid in sorted(state_of(a).slots or ())
            if sid not in slots or slots[sid].get("status") != "busy"
        ),
    )
    claimed = {(b.appointment, b.start, b.end) for b in snapshot.busy if b.kind == "booked"}
    found(
        "booked_without_busy_time",
        (
            f"Appointment/{a['id']} ({a['status']}) {a['start']}: no busy_time row"
            for a in holding
            if a.get("status") != "pending"
            and (str(a["id"]), utc(a["start"]), utc(a["end"])) not in claimed
        ),
    )
    live = {str(a["id"]) for a in holding}
    found(
        "busy_time_without_booking",
        (
            f"busy_time {b.kind} {b.schedule} {b.start:%F %H:%M} for Appointment/{b.appointment}"
            for b in snapshot.busy
            if b.kind in ("booked", "buffer") and b.appointment not in live
        ),
    )
    taken = defaultdict(list)
    for b in snapshot.busy:
        taken[b.schedule].append((b.start, b.end))
    found(
        "busy_slot_without_booking",
        (
            f"Slot/{sid} is busy and no busy time covers it"
            for sid, s in slots.items()
            if s.get("status") == "busy"
            and not any(
                st < utc(s["end"]) and utc(s["start"]) < en
                for st, en in taken[str(s["schedule"]["reference"]).split("/")[-1]]
            )
        ),
    )
    # 3. every acknowledged write is there, in its acknowledged (or a later unknown) state
    found("acknowledged_writes", _lost_writes(appts, ledger))
    found("refused_writes_applied", _refused_applied(appts, ledger))
    # 4. the audit chain
    audit = snapshot.audit
    found(
        "audit_chain",
        []
        if audit.get("intact") is True and audit.get("returncode", 0) == 0
        else [f"audit verify: {audit}"[:500]],
    )
    return out


def _keyed(appts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_key: dict[str, dict[str, Any]] = {}
    for a in appts:
        by_key[f"fhir:{a['id']}"] = a
        for system, value in _idents(a):
            if system.startswith("urn:fhir-sched:hl7:") and system.endswith(HL7_FILLER):
                by_key[f"hl7:{value}"] = a
    return by_key


def _lost_writes(appts: list[dict[str, Any]], ledger: Ledger) -> list[str]:
    by_key = _keyed(appts)
    lost = []
    for key, track in ledger.tracks().items():
        allowed = ([track.acked] if track.acked else []) + track.unknown
        stored = by_key.get(key)
        if stored is None:
            if track.acked is not None:
                lost.append(f"{key}: acknowledged {track.acked.brief()}, not stored")
            continue
        if allowed and not any(s.matches(state_of(stored)) for s in allowed):
            wanted = " or ".join(s.brief() for s in allowed)
            lost.append(f"{key}: stored {state_of(stored).brief()}, acknowledged {wanted}")
    return lost


def _refused_applied(appts: list[dict[str, Any]], ledger: Ledger) -> list[str]:
    out = []
    for a in appts:
        for system, value in _idents(a):
            if system != CREATED_BY:
                continue
            outcome = ledger.creations.get(value)
            if outcome not in ("acked", "unknown"):
                out.append(f"Appointment/{a['id']} created by {value}, answered {outcome}")
    return out
