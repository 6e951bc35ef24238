"""The agent's own tables: conversations, their messages and the local SMS outbox, sealed.

Every transcript line and every conversation's working state (the patient's phone number, the
options offered, what was booked) is sealed with the project's envelope encryption
(:class:`security.crypto.KeyRing`: a fresh AES-256-GCM data key per row, wrapped by the key
ring's KEK, the row named in the AAD). Only ids, states and times are plaintext. An SMS
conversation is found by a keyed blind digest of the number, never by the number.

A patient's message is stored in a transaction of its own before anything answers it, so a
failure later in the turn loses nothing (see ``agent/engine.py``).

The tables are created by the server's migrations (``0013``); this module only reads and
writes them, through the connection factories the top floor hands in.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    func,
    insert,
    select,
    update,
)

from security.crypto import KeyRing, Sealed

__all__ = [
    "AgentStore",
    "ConversationRow",
    "Line",
    "OutboxLine",
    "Stale",
    "metadata",
]

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)
TZ = DateTime(timezone=True)


def _sealed_columns() -> list[Column[Any]]:
    return [
        Column("kek_id", String(64), nullable=False),
        Column("wrapped_key", LargeBinary, nullable=False),
        Column("nonce", LargeBinary, nullable=False),
        Column("ciphertext", LargeBinary, nullable=False),
    ]


conversation = Table(
    "agent_conversation",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("channel", String(8), nullable=False),  # web | sms | cli
    Column("address_digest", LargeBinary(16), nullable=True, index=True),  # sms: the number
    Column("state", String(12), nullable=False),  # agent | queued | staff
    Column("holder", String(200), nullable=True),  # the staff member who took it
    Column("created", TZ, nullable=False),
    Column("updated", TZ, nullable=False, index=True),
    Column("version", Integer, nullable=False),
    *_sealed_columns(),  # the working state (JSON)
)
message = Table(
    "agent_message",
    metadata,
    Column("conversation_id", String(36), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("sender", String(8), nullable=False),  # patient | agent | staff | clinic | system
    Column("at", TZ, nullable=False),
    *_sealed_columns(),  # {"text": ...}
)
outbox = Table(
    "agent_outbox",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("at", TZ, nullable=False, index=True),
    Column("to_digest", LargeBinary(16), nullable=False, index=True),
    *_sealed_columns(),  # {"to": ..., "body": ...}
)

ADDRESS = "agent.address"  # the blind-index purpose for phone numbers


class Stale(Exception):
    """Another worker saved the conversation first: the turn is run again on the new state."""


@dataclass(frozen=True, slots=True)
class ConversationRow:
    id: str
    channel: str
    state: str
    holder: str | None
    created: datetime
    updated: datetime
    version: int
    facts: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Line:
    seq: int
    sender: str
    at: datetime
    text: str


@dataclass(frozen=True, slots=True)
class OutboxLine:
    id: str
    at: datetime
    to: str
    body: str


Transaction = Callable[[], AbstractContextManager[Connection]]


def _aad(table: str, key: str) -> bytes:
    return f"{table}|{key}".encode()


class AgentStore:
    """Sealed reads and writes of the agent's tables."""

    def __init__(self, *, write: Transaction, read: Transaction, keys: KeyRing) -> None:
        self.write, self.read, self.keys = write, read, keys

    # -- sealing -----------------------------------------------------------------------------

    def _seal(self, table: str, key: str, doc: dict[str, Any]) -> dict[str, Any]:
        s = self.keys.seal(json.dumps(doc, separators=(",", ":")).encode(), aad=_aad(table, key))
        return {
            "kek_id": s.kek_id,
            "wrapped_key": s.wrapped_key,
            "nonce": s.nonce,
            "ciphertext": s.ciphertext,
        }

    def _open(self, table: str, key: str, row: Any) -> dict[str, Any]:
        sealed = Sealed(row.kek_id, row.wrapped_key, row.nonce, row.ciphertext)
        doc: dict[str, Any] = json.loads(self.keys.open(sealed, aad=_aad(table, key)))
        return doc

    def digest(self, address: str) -> bytes:
        return self.keys.blind(ADDRESS, address)

    # -- conversations ------------------------------------------------------------------------

    def create(
        self, channel: str, facts: dict[str, Any], *, address: str | None = None
    ) -> ConversationRow:
        cid = str(uuid.uuid4())
        now = datetime.now(UTC)
        with self.write() as conn:
            conn.execute(
                insert(conversation).values(
                    id=cid,
                    channel=channel,
                    address_digest=self.digest(address) if address else None,
                    state="agent",
                    holder=None,
                    created=now,
                    updated=now,
                    version=1,
                    **self._seal("agent_conversation", f"{cid}|1", facts),
                )
            )
        return ConversationRow(cid, channel, "agent", None, now, now, 1, facts)

    def get(self, cid: str, conn: Connection | None = None) -> ConversationRow | None:
        if conn is None:
            with self.read() as c:
                return self.get(cid, c)
        row = conn.execute(select(conversation).where(conversation.c.id == cid)).first()
        if row is None:
            return None
        facts = self._open("agent_conversation", f"{cid}|{row.version}", row)
        return ConversationRow(
            row.id, row.channel, row.state, row.holder, row.created, row.updated, row.version, facts
        )

    def by_address(self, channel: str, address: str) -> ConversationRow | None:
        """The newest conversation on ``channel`` with ``address`` (an SMS number)."""
        with self.read() as conn:
            cid = conn.execute(
                select(conversation.c.id)
                .where(
                    conversation.c.channel == channel,
                    conversation.c.address_digest == self.digest(address),
                )
                .order_by(conversation.c.updated.desc())
                .limit(1)
            ).scalar()
            return self.get(cid, conn) if cid else None

    def save(
        self,
        row: ConversationRow,
        *,
        facts: dict[str, Any],
        state: str | None = None,
        holder: str | None = None,
        keep_holder: bool = True,
        lines: list[tuple[str, str]] | None = None,
    ) -> ConversationRow:
        """Write the new working state and transcript lines in one transaction; :class:`Stale`
        if another writer saved since ``row`` was read. ``holder`` is written only when
        ``keep_holder`` is false."""
        now = datetime.now(UTC)
        version = row.version + 1
        new_state = state or row.state
        new_holder = row.holder if keep_holder else holder
        with self.write() as conn:
            done = conn.execute(
                update(conversation)
                .where(and_(conversation.c.id == row.id, conversation.c.version == row.version))
                .values(
                    state=new_state,
                    holder=new_holder,
                    updated=now,
                    version=version,
                    **self._seal("agent_conversation", f"{row.id}|{version}", facts),
                )
            )
            if done.rowcount != 1:
                raise Stale(row.id)
            self._append(conn, row.id, lines or [], now)
        return ConversationRow(
            row.id,
            row.channel,
            new_state,
            new_holder,
            row.created,
            now,
            version,
            facts,
        )

    def _append(
        self, conn: Connection, cid: str, lines: list[tuple[str, str]], now: datetime
    ) -> None:
        if not lines:
            return
        last = conn.execute(
            select(func.max(message.c.seq)).where(message.c.conversation_id == cid)
        ).scalar()
        seq = int(last or 0)
        for sender, text in lines:
            seq += 1
            conn.execute(
                insert(message).values(
                    conversation_id=cid,
                    seq=seq,
                    sender=sender,
                    at=now,
                    **self._seal("agent_message", f"{cid}|{seq}", {"text": text}),
                )
            )

    def append(self, cid: str, sender: str, text: str) -> None:
        """One transcript line, in a transaction of its own (a patient's message, first)."""
        with self.write() as conn:
            conn.execute(
                update(conversation)
                .where(conversation.c.id == cid)
                .values(updated=datetime.now(UTC))
            )
            self._append(conn, cid, [(sender, text)], datetime.now(UTC))

    def transcript(self, cid: str, *, after: int = 0) -> list[Line]:
        with self.read() as conn:
            rows = conn.execute(
                select(message)
                .where(message.c.conversation_id == cid, message.c.seq > after)
                .order_by(message.c.seq)
            ).all()
        return [
            Line(r.seq, r.sender, r.at, self._open("agent_message", f"{cid}|{r.seq}", r)["text"])
            for r in rows
        ]

    def queue(self, *, states: tuple[str, ...] = ("queued", "staff")) -> list[ConversationRow]:
        """Conversations waiting for or held by staff, oldest first."""
        with self.read() as conn:
            ids = conn.execute(
                select(conversation.c.id)
                .where(conversation.c.state.in_(states))
                .order_by(conversation.c.updated)
            ).scalars()
            return [r for cid in list(ids) if (r := self.get(cid, conn)) is not None]

    def unanswered(self, *, since: datetime) -> list[tuple[str, list[str]]]:
        """Conversations the agent holds whose newest lines, written since ``since``, are the
        patient's (a process stopped between storing a message and answering it): each with
        those messages, oldest first."""
        with self.read() as conn:
            ids = list(
                conn.execute(
                    select(conversation.c.id).where(
                        conversation.c.state == "agent", conversation.c.updated >= since
                    )
                ).scalars()
            )
        out = []
        for cid in ids:
            waiting: list[str] = []
            for line in reversed(self.transcript(cid)):
                if line.sender != "patient":
                    break
                waiting.insert(0, line.text)
            if waiting:
                out.append((cid, waiting))
        return out

    # -- the local SMS outbox ------------------------------------------------------------------

    def outbox_add(self, to: str, body: str) -> str:
        oid = str(uuid.uuid4())
        with self.write() as conn:
            conn.execute(
                insert(outbox).values(
                    id=oid,
                    at=datetime.now(UTC),
                    to_digest=self.digest(to),
                    **self._seal("agent_outbox", oid, {"to": to, "body": body}),
                )
            )
        return oid

    def outbox(self, to: str | None = None) -> list[OutboxLine]:
        query = select(outbox).order_by(outbox.c.at, outbox.c.id)
        if to is not None:
            query = query.where(outbox.c.to_digest == self.digest(to))
        with self.read() as conn:
            rows = conn.execute(query).all()
        out = []
        for r in rows:
            doc = self._open("agent_outbox", r.id, r)
            out.append(OutboxLine(r.id, r.at, doc["to"], doc["body"]))
        return out
