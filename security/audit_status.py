"""The audit chain's status for a screen that shows it on every load (``GET /audit/verify``):
intact or not, up to which record, when it was last verified, the last checkpoint.

A walk of the whole chain (:func:`security.audit.verify`) costs time in proportion to the log;
so each process remembers how far the chain was found good (the last record's sequence number
and MAC) and walks only the records added since, linked from there, checking the checkpoints
it has not compared yet. The whole chain is walked again from the first record when the
process has not done so yet, and once ``full_every`` seconds have passed since it last did:
an edit to a record already verified is found by that walk, not by the incremental ones. A
chain found broken stays reported broken, with its findings, until the next full walk.
Concurrent calls wait for one walk (a lock), so a page loaded by many people walks once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select

from resources.fhirdate import as_utc
from resources.sql.tables import AuditLog
from security.audit import Finding, verify
from security.audit_checkpoint import Checkpoint, CheckpointLog
from security.crypto import KeyRing

__all__ = ["ChainStatus"]

MOST_FINDINGS = 20  # in one answer; `fhir-sched audit verify` prints them all


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch is not None else None


@dataclass
class _Known:
    """What this process last found."""

    through: tuple[int, bytes] | None = None  # the last record found good: seq and MAC
    intact: bool = True
    findings: tuple[Finding, ...] = ()
    full_at: float | None = None
    checked_at: float | None = None
    anchored: set[tuple[int, bytes]] = field(default_factory=set)  # checkpoints compared


class ChainStatus:
    """One per process (the app's state)."""

    def __init__(
        self,
        keys: KeyRing,
        checkpoints: CheckpointLog | None,
        *,
        full_every: float = 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.checkpoints = checkpoints
        self.full_every = full_every
        self.clock = clock
        self._known = _Known()
        self._lock = threading.Lock()
        self._file: tuple[tuple[int, int] | None, list[Checkpoint], list[Finding]] = (None, [], [])

    def _read_checkpoints(self) -> tuple[list[Checkpoint], list[Finding]]:
        """The checkpoint file's valid lines and findings, read again only when it changed."""
        if self.checkpoints is None:
            return [], []
        try:
            stat = self.checkpoints.path.stat()
            mark: tuple[int, int] | None = (stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError:
            mark = None
        if mark is None or mark != self._file[0]:
            good, bad = self.checkpoints.read(self.keys) if mark is not None else ([], [])
            self._file = (mark, good, bad)
        return self._file[1], self._file[2]

    def check(self, conn: Connection) -> dict[str, Any]:
        """Walk what needs walking and answer the status (see the module's docstring)."""
        with self._lock:
            return self._check(conn)

    def _check(self, conn: Connection) -> dict[str, Any]:
        known, now = self._known, self.clock()
        good, bad = self._read_checkpoints()
        full = known.full_at is None or now - known.full_at >= self.full_every
        if not full and not known.intact:
            return self._answer(conn, good, "cached")
        anchors = [(c.seq, c.mac) for c in good]
        if full:
            report = verify(conn, self.keys, checkpoints=anchors)
        else:
            fresh = [a for a in anchors if a not in known.anchored]
            report = verify(conn, self.keys, checkpoints=fresh, start=known.through)
        findings = tuple(
            sorted([*report.findings, *bad], key=lambda f: (f.seq is None, f.seq or 0))
        )
        known.intact, known.findings, known.checked_at = not findings, findings, now
        if full:
            known.full_at = now
        seq, mac = report.last
        if known.intact and mac is not None:
            known.through = (seq, mac)
            known.anchored = set(anchors)
        return self._answer(conn, good, "full" if full else "incremental")

    def _answer(self, conn: Connection, good: list[Checkpoint], mode: str) -> dict[str, Any]:
        known = self._known
        if known.intact:
            through = known.through[0] if known.through else 0
        else:
            first = known.findings[0].seq
            through = max(first - 1, 0) if first is not None else 0
        recorded = conn.execute(
            select(AuditLog.recorded).where(AuditLog.seq == through)
        ).scalar_one_or_none()
        newest = max(good, key=lambda c: c.seq, default=None)
        return {
            "intact": known.intact,
            "verified_through": {
                "seq": through,
                "recorded": as_utc(recorded).isoformat() if recorded is not None else None,
            },
            "verified_at": _iso(known.checked_at),
            "full_verified_at": _iso(known.full_at),
            "mode": mode,
            "broken_at": None if known.intact else known.findings[0].seq,
            "reason": None if known.intact else known.findings[0].detail,
            "findings": [f.as_dict() for f in known.findings[:MOST_FINDINGS]],
            "finding_count": len(known.findings),
            "checkpoints": len(good),
            "last_checkpoint": {"seq": newest.seq, "time": newest.time} if newest else None,
        }
