"""The HL7 message store: every message in and out, sealed, with the ACK that answered it.

A message's bytes, the network address it came from and the ACK sent back are sealed together
(AES-256-GCM under the key ring, AAD = ``hl7|<id>``); the plain columns are what staff need to
find, count and replay messages without opening them: direction, peer (the sender's MSH-3/4
key, or the outbound endpoint's name), MSH-10, event, status, ACK code and the HL7 error code
(table 0357); the error's words may quote the message, so they are sealed with it.
``(direction, peer, control id, digest)`` is unique: a resend is the same sender, MSH-10 and
content (:func:`content_key`: MSH-7 and trailing separators aside), recognised by its keyed
digest; a different message reusing a control id is a new row.

Inbound statuses: ``received`` (stored, not yet applied), ``applied``, ``conflict`` (applied,
but its time overlaps a booking made here: staff must resolve it), ``superseded`` (older than
what was already applied), ``failed`` (AE: kept for ``fhir-sched hl7 replay``), ``rejected``
(AR). Outbound: ``pending``, ``sent`` (AA), ``rejected`` (AE/AR: set aside for staff).
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import Connection, Table, bindparam, insert, select, update

from hl7_bridge.parse import Encoding, ParseError, decode
from resources.sql.direct import Direct
from resources.sql.tables import HL7Message
from security.crypto import KeyRing, Sealed

__all__ = [
    "HL7_MESSAGE",
    "HM",
    "STATUSES",
    "MessageRecord",
    "MessageStore",
    "Opened",
    "content_key",
]

HM = cast(Table, HL7Message.__table__)
HL7_MESSAGE = "urn:fhir-sched:hl7-message"  # AuditEvent entity identifier: a stored message's id
INBOUND = ("received", "applied", "conflict", "superseded", "failed", "rejected")
STATUSES = (*INBOUND, "pending", "sent")  # outbound: pending, sent, rejected

# Built once: every inbound message runs these (no statement construction per message).
_INSERT = Direct(insert(HM).inline(), deferrable=True)  # every message writes one
_FIND = Direct(
    select(HM).where(
        HM.c.direction == bindparam("direction"),
        HM.c.peer == bindparam("peer"),
        HM.c.control_id == bindparam("control_id"),
    ),
    plan_per_run=True,  # see _LINKED in hl7_bridge.inbound
)


@dataclass(frozen=True, slots=True)
class Opened:
    message: bytes
    ack: bytes | None
    address: str | None  # the sender's network address
    detail: str | None  # why it failed, in words (may quote the message, so it is sealed)
    warnings: tuple[str, ...] = ()  # what was applied with a caveat, in words (sealed too)


@dataclass(frozen=True, slots=True)
class MessageRecord:
    seq: int
    id: str
    direction: str
    peer: str
    control_id: str
    event: str
    created: datetime
    status: str
    ack_code: str | None
    appointment_id: str | None
    error: str | None  # HL7 table 0357 error code (the words are sealed)
    warnings: str | None  # warning codes, space-separated (the words are sealed)
    attempts: int
    next_attempt: datetime | None


def content_key(raw: bytes) -> str:
    """The message as a resend compares it: decoded in its charset, terminators normalised,
    MSH-7 (the time it was sent, which senders restamp on a resend) blanked and trailing
    separators dropped from every field and segment (``PID|1||X||`` is ``PID|1||X``)."""
    try:
        text, _ = decode(raw)
    except ParseError:
        text = raw.decode("latin-1")
    lines = text.split("\r")
    try:
        enc = Encoding.from_msh(lines[0])
    except ParseError:
        return text
    trailing = re.compile(f"[{re.escape(enc.component + enc.subcomponent + enc.repetition)}]+$")
    out = []
    for n, line in enumerate(lines):
        fields = line.split(enc.field)
        if n == 0 and line.startswith("MSH"):
            fields = fields[:2] + [trailing.sub("", f) for f in fields[2:]]
            if len(fields) > 6:
                fields[6] = ""  # MSH-7: fields[0] is "MSH", fields[1] MSH-2
        else:
            fields = [trailing.sub("", f) for f in fields]
        while len(fields) > 1 and not fields[-1]:
            fields.pop()
        out.append(enc.field.join(fields))
    return "\r".join(out)


def _plain(text: str, length: int) -> str:
    """A header value as a plain column holds it: without control characters (PostgreSQL
    text cannot hold NUL), cut to the column's length. The message keeps the original."""
    return re.sub(r"[\x00-\x1f\x7f]", "", text)[:length]


def _codes(warnings: tuple[tuple[str, str], ...]) -> str | None:
    """The warnings' codes for the plain column (no message content): unique, in order."""
    return " ".join(dict.fromkeys(code for code, _ in warnings))[:200] or None


def _aad(message_id: str) -> bytes:
    return f"hl7|{message_id}".encode()


class MessageStore:
    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys

    def digest(self, message: bytes) -> bytes:
        """Keyed digest of :func:`content_key` (the key ring's index key: no plain hash of
        a message that holds PHI)."""
        return self.keys.blind("hl7.message", content_key(message))

    def _seal(
        self,
        message_id: str,
        message: bytes,
        ack: bytes | None,
        address: str | None,
        detail: str | None,
        warnings: tuple[tuple[str, str], ...] = (),
    ) -> dict[str, Any]:
        doc = {
            "message": base64.b64encode(message).decode(),
            "ack": base64.b64encode(ack).decode() if ack is not None else None,
            "address": address,
            "detail": detail,
            "warnings": [words for _, words in warnings],
        }
        sealed = self.keys.seal(orjson.dumps(doc), aad=_aad(message_id))
        return {
            "kek_id": sealed.kek_id,
            "wrapped_key": sealed.wrapped_key,
            "nonce": sealed.nonce,
            "ciphertext": sealed.ciphertext,
        }

    def open(self, row: Any) -> Opened:
        """The sealed part of a stored row."""
        sealed = Sealed(row.kek_id, row.wrapped_key, row.nonce, row.ciphertext)
        doc = orjson.loads(self.keys.open(sealed, aad=_aad(row.id)))
        ack = base64.b64decode(doc["ack"]) if doc.get("ack") else None
        return Opened(
            base64.b64decode(doc["message"]),
            ack,
            doc.get("address"),
            doc.get("detail"),
            tuple(doc.get("warnings") or ()),
        )

    def add(
        self,
        conn: Connection,
        *,
        direction: str,
        peer: str,
        control_id: str,
        event: str,
        message: bytes,
        status: str,
        now: datetime,
        address: str | None = None,
        ack: bytes | None = None,
        ack_code: str | None = None,
        appointment_id: str | None = None,
        error: tuple[str, str] | None = None,
        next_attempt: datetime | None = None,
        warnings: tuple[tuple[str, str], ...] = (),
    ) -> str:
        message_id = str(uuid.uuid4())
        _INSERT.run(
            conn,
            {
                "id": message_id,
                "direction": direction,
                "peer": _plain(peer, 200),
                "control_id": _plain(control_id, 200),
                "event": _plain(event, 16),
                "created": now,
                "status": status,
                "ack_code": ack_code,
                "appointment_id": appointment_id,
                "error": error[0] if error else None,
                "warnings": _codes(warnings),
                "digest": self.digest(message),
                "attempts": 0,
                "next_attempt": next_attempt,
                **self._seal(
                    message_id, message, ack, address, error[1] if error else None, warnings
                ),
            },
        )
        return message_id

    def settle(
        self,
        conn: Connection,
        message_id: str,
        *,
        message: bytes,
        address: str | None,
        status: str,
        ack: bytes | None = None,
        ack_code: str | None = None,
        appointment_id: str | None = None,
        error: tuple[str, str] | None = None,
        warnings: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Record how a stored message ended (and the ACK that says so)."""
        conn.execute(
            update(HM)
            .where(HM.c.id == message_id)
            .values(
                status=status,
                ack_code=ack_code,
                appointment_id=appointment_id,
                error=error[0] if error else None,
                warnings=_codes(warnings),
                **self._seal(
                    message_id, message, ack, address, error[1] if error else None, warnings
                ),
            )
        )

    def find(self, conn: Connection, direction: str, peer: str, control_id: str) -> list[Any]:
        return self.send_find(conn, direction, peer, control_id)()

    def send_find(
        self, conn: Connection, direction: str, peer: str, control_id: str
    ) -> Callable[[], list[Any]]:
        """Send :meth:`find`'s query now (inside ``pipelined``, with others); the returned
        function reads its answer: every stored message with that control id (one, unless
        the sender reused it for different content)."""
        wanted = {
            "direction": direction,
            "peer": _plain(peer, 200),
            "control_id": _plain(control_id, 200),
        }
        read = _FIND.send(conn, wanted)
        return lambda: list(read())

    def same(self, rows: list[Any], message: bytes) -> Any:
        """Of ``rows`` (same sender and control id), the one holding this message's content,
        or None. Rows stored before digests were kept are opened and compared."""
        digest = self.digest(message)
        for row in rows:
            if row.digest == digest:
                return row
        for row in rows:
            if row.digest is None and self.digest(self.open(row).message) == digest:
                return row
        return None

    def get(self, conn: Connection, message_id: str) -> Any:
        return conn.execute(select(HM).where(HM.c.id == message_id)).first()

    def listing(
        self,
        conn: Connection,
        *,
        direction: str | None = None,
        statuses: list[str] | None = None,
        limit: int = 100,
        warned: bool = False,
        newest_first: bool = False,
        before: int | None = None,
    ) -> list[MessageRecord]:
        """Stored messages in arrival order (``newest_first``: the other way), without their
        content; ``before``: only those stored before the message numbered ``seq`` (a page's
        last, for the next page newest first)."""
        order = HM.c.seq.desc() if newest_first else HM.c.seq
        query = select(*[HM.c[f] for f in MessageRecord.__slots__]).order_by(order)
        if before is not None:
            query = query.where(HM.c.seq < before)
        if warned:
            query = query.where(HM.c.warnings.is_not(None))
        if direction:
            query = query.where(HM.c.direction == direction)
        if statuses:
            query = query.where(HM.c.status.in_(statuses))
        return [MessageRecord(*row) for row in conn.execute(query.limit(limit))]
