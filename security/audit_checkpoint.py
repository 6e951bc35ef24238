"""Checkpoints of the audit chain's head, kept outside the database.

The chain (``security/audit.py``) shows a record edited, deleted or reordered, but not the
newest records deleted together with the head moved back to the new last one: the head's new
value is a record's own sequence number and MAC, already in the database. A checkpoint is
``(seq, mac, time)``, the head at some moment, signed and appended to a file (and, if
configured, sent to syslog); :func:`verify_against` checks the chain against every checkpoint
in the file, so a checkpoint whose record has gone, or is no longer the one checkpointed, is a
finding.

The signature is an HMAC-SHA256 under a key derived (HKDF, label ``audit.checkpoint``) from the
key ring's index secret. That secret lives only in the key file or ``FHIRSCHED_KEYS``, never in
the database, so whoever holds the database alone cannot sign a checkpoint; and unlike a KEK it
is never rotated or retired (``KeyRing`` keeps it as loaded), so a checkpoint written years ago
still verifies. A separate key file would be one more secret to back up and to hand to every
worker, for no gain: ``verify`` needs the key ring anyway to open the records.

File format: one JSON object a line, ``{"v": 1, "seq": N, "mac": "<hex>", "time": "<ISO
8601 UTC>", "sig": "<hex>"}``. Each line is read as the JSON object from its first ``{``, so
lines copied from a syslog collector (which adds its own fields) verify as they are.

The file is opened with ``O_APPEND`` (created 0600) and never rewritten, so it can be made
append-only on disk (``chattr +a``); but someone who can write the database can usually write
a file beside it: syslog to another host is the anchor such a person cannot take back.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import logging.handlers
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC
from sqlalchemy import Connection, text

from base.logging import get_logger
from security.audit import ChainReport, Finding, verify
from security.crypto import KeyRing

__all__ = ["Checkpoint", "CheckpointLog", "read_head", "verify_against"]

log = get_logger("security.audit_checkpoint")

VERSION = 1
_PURPOSE = "audit.checkpoint"


def read_head(conn: Connection) -> tuple[int, bytes]:
    """The chain's head as committed: its sequence number and MAC."""
    row = conn.execute(text("SELECT seq, mac FROM audit_head WHERE id = 1")).one()
    return int(row[0]), bytes(row[1])


def _signed(seq: int, mac: bytes, time: str) -> bytes:
    return f"fhir-sched audit checkpoint v{VERSION}|{seq}|{mac.hex()}|{time}".encode()


def _hmac(keys: KeyRing) -> HMAC:
    return HMAC(keys.index_key(_PURPOSE), hashes.SHA256())


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The chain's head at ``time``."""

    seq: int
    mac: bytes
    time: str  # ISO 8601, UTC, as signed

    @classmethod
    def now(cls, head: tuple[int, bytes]) -> Checkpoint:
        return cls(head[0], head[1], datetime.now(UTC).isoformat(timespec="seconds"))

    def line(self, keys: KeyRing) -> str:
        """The signed JSON line (no newline)."""
        mac = _hmac(keys)
        mac.update(_signed(self.seq, self.mac, self.time))
        doc = {
            "v": VERSION,
            "seq": self.seq,
            "mac": self.mac.hex(),
            "time": self.time,
            "sig": mac.finalize().hex(),
        }
        return json.dumps(doc)

    @classmethod
    def parse(cls, keys: KeyRing, line: str) -> Checkpoint:
        """The checkpoint a line holds; ``ValueError`` if it does not read or its signature
        does not hold under ``keys``."""
        doc = _object(line)
        if not isinstance(doc, dict) or doc.get("v") != VERSION:
            raise ValueError("not a checkpoint of this version")
        seq, time = doc.get("seq"), doc.get("time")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(time, str):
            raise ValueError("a checkpoint's seq or time is of the wrong type")
        mac, sig = bytes.fromhex(str(doc.get("mac"))), bytes.fromhex(str(doc.get("sig")))
        check = _hmac(keys)
        check.update(_signed(seq, mac, time))
        try:
            check.verify(sig)
        except InvalidSignature:
            raise ValueError("the signature does not hold") from None
        return cls(seq, mac, time)


class _SyslogHandler(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        # the default prints a traceback to stderr; the file has the checkpoint anyway
        log.error("audit.checkpoint_syslog_failed")


def _send(address: str, line: str) -> None:
    """Send ``line`` to syslog at ``address``: a Unix socket path (``/dev/log``) or
    ``host:port`` (UDP). Through a logger of its own (no parent, so nothing reaches the
    server's log) and a socket opened for this one message: a checkpoint is rare."""
    if address.startswith("/"):
        target: str | tuple[str, int] = address
    else:
        host, _, port = address.rpartition(":") if ":" in address else (address, "", "514")
        target = (host.strip("[]"), int(port))
    handler = _SyslogHandler(target, facility=logging.handlers.SysLogHandler.LOG_AUTH)
    try:
        handler.ident = "fhir-sched: "
        sender = logging.Logger("fhir-sched.audit-checkpoint", logging.INFO)
        sender.addHandler(handler)
        sender.info("audit-checkpoint %s", line)
    finally:
        handler.close()


class CheckpointLog:
    """The configured file (and syslog address) checkpoints go to."""

    def __init__(self, path: Path, *, syslog: str | None = None) -> None:
        self.path = path
        self.syslog = syslog

    def write(self, keys: KeyRing, checkpoint: Checkpoint) -> str:
        """Append ``checkpoint`` to the file (and send it to syslog); returns its line."""
        line = checkpoint.line(keys)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: every write lands at the end, whoever else is appending (other workers,
        # the command line), and a file made append-only on disk still opens
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # one whole line at a time
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        if self.syslog:
            try:
                _send(self.syslog, line)
            except (OSError, ValueError) as exc:  # no socket there, a malformed address
                log.error("audit.checkpoint_syslog_failed", error_type=type(exc).__name__)
        return line

    def read(self, keys: KeyRing) -> tuple[list[Checkpoint], list[Finding]]:
        """The checkpoints whose signatures hold, and a finding for every other line. No file
        yet: none of either."""
        good: list[Checkpoint] = []
        bad: list[Finding] = []
        for number, line in self._lines():
            try:
                good.append(Checkpoint.parse(keys, line))
            except ValueError as exc:  # json's errors are ValueErrors too
                seq = _claimed_seq(line)
                detail = f"the checkpoint is not valid ({_why(exc)})"
                bad.append(Finding("checkpoint-invalid", seq, detail, line=number))
        return good, bad

    def _lines(self) -> Iterator[tuple[int, str]]:
        try:
            with self.path.open(encoding="utf-8", errors="replace") as fh:
                for number, line in enumerate(fh, start=1):
                    if line.strip():
                        yield number, line.strip()
        except FileNotFoundError:
            return


def _why(exc: ValueError) -> str:
    return "it does not read" if isinstance(exc, json.JSONDecodeError) else str(exc)


def _object(line: str) -> Any:
    """The JSON value from the line's first ``{`` on: what a syslog collector adds before it
    (its own fields) and after it (syslog's NUL, say) is not the checkpoint's."""
    start = line.find("{")
    if start < 0:
        raise ValueError("no checkpoint on the line")
    return json.JSONDecoder().raw_decode(line[start:])[0]


def _claimed_seq(line: str) -> int | None:
    try:
        seq = _object(line).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def verify_against(
    conn: Connection, keys: KeyRing, checkpoints: CheckpointLog, **kwargs: Any
) -> ChainReport:
    """:func:`security.audit.verify` against every checkpoint in the file; lines that are not
    valid checkpoints are findings of their own."""
    good, bad = checkpoints.read(keys)
    report = verify(conn, keys, checkpoints=[(c.seq, c.mac) for c in good], **kwargs)
    findings = sorted(
        [*report.findings, *bad], key=lambda f: (f.seq is None, f.seq or 0, f.line or 0)
    )
    return dataclasses.replace(report, findings=tuple(findings), checkpoints=len(good))
