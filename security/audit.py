"""The audit log: BALP-shaped FHIR R4 AuditEvents, sealed like every resource, in a hash chain
that shows any edit, deletion or reordering done behind the application's back.

Each record has a sequence number (no gaps), the previous record's MAC, and its own MAC: an
HMAC-SHA256, under a key derived from the index secret, of the sequence number, the previous
MAC and the SHA-256 of the record's canonical JSON. A head row holds the last sequence number
and MAC, so a truncated tail shows too, unless the head was moved back with it: checkpoints
anchor the head outside the database (``security/audit_checkpoint.py``). Records are written
only by :func:`append` (in a SQLAlchemy transaction), :func:`append_dbapi` and
:func:`append_async` (the audit writer's own transactions), which all build their rows with
``_extend``; each takes the head's row lock
(PostgreSQL) or runs under SQLite's single writer, so the chain is extended by one writer at a
time, inside the caller's transaction: a write and its AuditEvent commit together or not at
all. :class:`AsyncChain` (the audit writer on PostgreSQL) sends a batch as one statement that
extends the chain only if the head is still the one it sealed the batch after. Triggers
refuse UPDATE and DELETE on the records for every database role; :func:`verify` finds what
someone with more power than that did anyway, the search index included (rebuilt from the
records and compared).

Search values that identify a patient or an agent are stored only as keyed digests
(``audit_index``); types, actions, outcomes, sources and times are plain.

See https://profiles.ihe.net/ITI/BALP/ and https://hl7.org/fhir/R4/auditevent.html
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from psycopg import AsyncConnection, AsyncRawCursor
from sqlalchemy import Connection, and_, func, or_, select, text
from sqlalchemy.exc import DBAPIError

from resources.fhirdate import as_utc
from resources.sql.direct import pipelined, raw
from resources.sql.tables import AuditIndex, AuditLog
from security.balp import CONVERSATION
from security.crypto import DecryptionError, KeyRing, Sealed

__all__ = [
    "AsyncChain",
    "AuditQuery",
    "ChainReport",
    "Finding",
    "append",
    "append_async",
    "append_dbapi",
    "open_event",
    "search",
    "verify",
]

GENESIS = bytes(32)
# Straight to the driver: this runs for every audited request, and SQLAlchemy's per-row
# statement handling cost more than the sealing. Each column is declared once, with its
# PostgreSQL type (the one-statement append casts its VALUES to them).
_LOG = (
    ("seq", "bigint"), ("event_id", "varchar"), ("recorded", "timestamptz"),
    ("type_code", "varchar"), ("subtype_code", "varchar"), ("action", "varchar"),
    ("outcome", "varchar"), ("source", "varchar"), ("kek_id", "varchar"),
    ("wrapped_key", "bytea"), ("nonce", "bytea"), ("ciphertext", "bytea"),
    ("prev_hash", "bytea"), ("mac", "bytea"),
)  # fmt: skip
_INDEX = (("seq", "bigint"), ("param", "varchar"), ("digest", "bytea"))
_LOG_COLUMNS = tuple(name for name, _ in _LOG)
_INSERT_LOG = f"INSERT INTO audit_log ({', '.join(_LOG_COLUMNS)}) VALUES ({{p}})"  # noqa: S608
_INSERT_INDEX = (
    f"INSERT INTO audit_index ({', '.join(name for name, _ in _INDEX)}) "  # noqa: S608
    "VALUES ({p}, {p}, {p})"
)
_UPDATE_HEAD = "UPDATE audit_head SET seq = {p}, mac = {p} WHERE id = 1"
_READ_HEAD = "SELECT seq, mac FROM audit_head WHERE id = 1"


class _Sql(NamedTuple):
    """The statements that extend the chain, in one dialect's parameter style."""

    head: str
    log: str
    digests: str
    update: str


def _sql(style: str, head: str) -> _Sql:
    marks = ", ".join([style] * len(_LOG_COLUMNS))
    log, index = _INSERT_LOG.format(p=marks), _INSERT_INDEX.format(p=style)
    return _Sql(head, log, index, _UPDATE_HEAD.format(p=style))


# PostgreSQL: the head's row lock orders concurrent appenders. SQLite: the caller holds the
# database's write lock (BEGIN IMMEDIATE).
_SQL = {"sqlite": _sql("?", _READ_HEAD), "postgresql": _sql("%s", _READ_HEAD + " FOR UPDATE")}


def _canonical(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def _mac(keys: KeyRing, seq: int, prev: bytes, body: bytes) -> bytes:
    message = seq.to_bytes(8, "big") + prev + hashlib.sha256(body).digest()
    return hmac.digest(keys.index_key("audit.chain"), message, "sha256")


def _event_id() -> str:
    """A new AuditEvent id: 32 hex digits, time first, so ids arrive in index order (a random
    id would dirty a random page of the unique index on every insert)."""
    return f"{time.time_ns():016x}{secrets.token_hex(8)}"


def _aad(event_id: str, seq: int) -> bytes:
    return f"AuditEvent|{event_id}|{seq}".encode()


def _coding(concept: Any) -> str | None:
    if isinstance(concept, dict):
        code = concept.get("code")
        if code is None and concept.get("coding"):
            code = concept["coding"][0].get("code")
        return str(code) if code is not None else None
    return None


def _search_values(event: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """The patient, agent and entity references a compliance query looks for. A Patient
    entity is indexed once, as ``patient``; :func:`search` looks there for ``entity`` too."""
    for entity in event.get("entity") or []:
        what = entity.get("what") or {}
        ref = what.get("reference")
        if isinstance(ref, str):
            yield ("patient" if ref.startswith("Patient/") else "entity"), ref
        # a conversation id (entity:identifier=system|value); other identifiers were never
        # indexed, and records written before must verify as they are
        ident = what.get("identifier") or {}
        if ident.get("system") == CONVERSATION and isinstance(ident.get("value"), str):
            yield "entity", f"{CONVERSATION}|{ident['value']}"
    for agent in event.get("agent") or []:
        who = agent.get("who") or {}
        if isinstance(who.get("reference"), str):
            yield "agent", who["reference"]
        value = (who.get("identifier") or {}).get("value")
        if isinstance(value, str):
            yield "agent", value


def _columns(event: dict[str, Any]) -> dict[str, Any]:
    """The plain search columns, all derived from the (MAC-covered) body."""
    return {
        "recorded": datetime.fromisoformat(event["recorded"]),
        "type_code": _coding(event.get("type")) or "",
        "subtype_code": _coding((event.get("subtype") or [None])[0]),
        "action": event.get("action"),
        "outcome": event.get("outcome") or "0",
        "source": (event.get("source") or {}).get("site") or "",
    }


def digest(keys: KeyRing, param: str, value: str) -> bytes:
    return keys.blind(f"AuditEvent.{param}", value)


def send_head(conn: Connection) -> Callable[[], tuple[int, bytes]]:
    """PostgreSQL: send a read of the chain's head (unlocked) now, in the caller's
    :func:`~resources.sql.direct.pipelined` block, and read it from the function returned once
    the block has ended: for :func:`append`'s ``head``."""
    cursor = raw(conn, _READ_HEAD, [])

    @functools.cache
    def head() -> tuple[int, bytes]:
        row = cursor.fetchone()
        return int(row[0]), bytes(row[1])

    return head


def append(
    conn: Connection,
    keys: KeyRing,
    events: list[dict[str, Any]],
    *,
    head: tuple[int, bytes] | None = None,
) -> list[int]:
    """Add ``events`` to the chain in this transaction; returns their sequence numbers.

    ``head`` (PostgreSQL): the head read earlier in the transaction, unlocked
    (:func:`send_head`). The events are sealed after it and go in one statement that adds them
    only if the head is still that one, together with the rows a ``deferring`` block keeps: one
    round trip, where reading the head under its lock first costs two. If another writer has
    moved the head meanwhile, nothing was added, and the events go the locked way."""
    if head is not None and conn.dialect.name == "postgresql" and len(events) <= AsyncChain.MOST:
        batch = _extend(head, keys, events, sqlite=False)
        with pipelined(conn):
            cursor = raw(conn, *_append_after_head(batch, head))
        extended = cursor.fetchone()
        if extended is not None and extended[0] == 1:
            return batch.numbers
    driver_error = conn.dialect.loaded_dbapi.Error
    try:
        return append_dbapi(conn.connection.dbapi_connection, conn.dialect.name, keys, events)
    except driver_error as exc:  # raised as SQLAlchemy would have, for the callers' handlers
        raise DBAPIError.instance("audit append", None, exc, driver_error) from exc


@dataclass(slots=True)
class _Batch:
    """The rows that extend the chain from a given head by a list of events."""

    log: list[tuple[Any, ...]]
    index: list[tuple[int, str, bytes]]
    head: tuple[int, bytes]
    numbers: list[int]


def _extend(head: Any, keys: KeyRing, events: list[dict[str, Any]], *, sqlite: bool) -> _Batch:
    """Seal, chain and index ``events`` after ``head`` (its sequence number and MAC)."""
    seq, prev = int(head[0]), bytes(head[1])
    first = seq + 1
    for event in events:
        event.setdefault("id", _event_id())
    bodies = [_canonical(e) for e in events]
    boxes = keys.seal_many(
        [
            (body, _aad(e["id"], first + n))
            for n, (e, body) in enumerate(zip(events, bodies, strict=True))
        ]
    )
    log: list[tuple[Any, ...]] = []
    index: list[tuple[int, str, bytes]] = []
    for event, body, box in zip(events, bodies, boxes, strict=True):
        seq += 1
        mac = _mac(keys, seq, prev, body)
        columns = _columns(event)
        if sqlite:  # stored as SQLAlchemy's DateTime does on SQLite (naive UTC text)
            when = columns["recorded"].astimezone(UTC).replace(tzinfo=None)
            columns["recorded"] = when.isoformat(" ", "microseconds")
        row = {
            "seq": seq,
            "event_id": event["id"],
            **columns,
            "kek_id": box.kek_id,
            "wrapped_key": box.wrapped_key,
            "nonce": box.nonce,
            "ciphertext": box.ciphertext,
            "prev_hash": prev,
            "mac": mac,
        }
        log.append(tuple(row[c] for c in _LOG_COLUMNS))
        index.extend((seq, p, digest(keys, p, v)) for p, v in set(_search_values(event)))
        prev = mac
    return _Batch(log, index, (seq, prev), list(range(first, seq + 1)))


def append_dbapi(
    dbapi: Any, dialect: str, keys: KeyRing, events: list[dict[str, Any]]
) -> list[int]:
    """:func:`append` on a DB-API connection whose transaction the caller holds (the audit
    writer's own short transactions skip SQLAlchemy's per-statement machinery)."""
    if not events:
        return []
    sql = _SQL[dialect]
    cur = dbapi.cursor()
    try:
        cur.execute(sql.head)
        batch = _extend(cur.fetchone(), keys, events, sqlite=dialect == "sqlite")
        # on PostgreSQL the three writes go in one round trip (psycopg's pipeline itself:
        # resources.sql.direct.pipelined wants a SQLAlchemy connection, the writer has a driver's)
        with dbapi.pipeline() if dialect == "postgresql" else nullcontext():
            cur.executemany(sql.log, batch.log)
            if batch.index:
                cur.executemany(sql.digests, batch.index)
            cur.execute(sql.update, batch.head)
    finally:
        cur.close()
    return batch.numbers


async def append_async(
    conn: AsyncConnection[Any], keys: KeyRing, events: list[dict[str, Any]]
) -> list[int]:
    """:func:`append` on a psycopg ``AsyncConnection`` inside the caller's transaction
    (PostgreSQL only): the event loop is not blocked while the database answers, and the
    inserts go in one pipelined round trip."""
    if not events:
        return []
    sql = _SQL["postgresql"]
    cur = await conn.execute(sql.head)
    batch = _extend(await cur.fetchone(), keys, events, sqlite=False)
    async with conn.pipeline(), conn.cursor() as out:
        await out.executemany(sql.log, batch.log)
        if batch.index:
            await out.executemany(sql.digests, batch.index)
        await out.execute(sql.update, batch.head)
    return batch.numbers


def _insert_if_head(
    table: str, columns: tuple[tuple[str, str], ...], count: int, first: int
) -> str:
    """``count`` rows into ``table``, as VALUES numbered from ``$first``, added only if the
    head update matched."""
    width = len(columns)
    rows = ", ".join(
        "(" + ", ".join(f"${first + r * width + c}::{t}" for c, (_, t) in enumerate(columns)) + ")"
        for r in range(count)
    )
    return (
        f"INSERT INTO {table} ({', '.join(name for name, _ in columns)})\n"  # noqa: S608
        f"    SELECT * FROM (VALUES {rows}) AS v WHERE EXISTS (SELECT FROM head)"
    )


@functools.lru_cache(maxsize=256)
def _append_after(records: int, digests: int) -> str:
    """One statement (one round trip, atomic without a transaction around it) that extends
    the chain only from the head it names: if another writer has moved the head, the UPDATE
    matches nothing, the inserts (which add rows only when it matched) add nothing, and the
    count says so. The UPDATE waits for a concurrent writer's row lock and then re-checks.
    Built once per batch shape, with the server's own $n placeholders (psycopg re-parses a
    %s statement of more than 50 parameters on every call), rows as VALUES (scalars reach
    the driver cheaper than arrays)."""
    log = _insert_if_head("audit_log", _LOG, records, 5)
    index = (
        _insert_if_head("audit_index", _INDEX, digests, 5 + records * len(_LOG))
        if digests
        else "SELECT"
    )
    return f"""
WITH head AS (
    UPDATE audit_head SET seq = $1, mac = $2 WHERE id = 1 AND seq = $3 AND mac = $4 RETURNING 1
), log AS (
    {log}
), ix AS (
    {index}
)
SELECT count(*) FROM head
"""  # noqa: S608 - built from constants


def _append_after_head(batch: _Batch, head: tuple[int, bytes]) -> tuple[str, list[Any]]:
    """:func:`_append_after`'s statement for ``batch`` sealed after ``head``, and its values."""
    values = [v for row in (batch.head, head, *batch.log, *batch.index) for v in row]
    return _append_after(len(batch.log), len(batch.index)), values


class AsyncChain:
    """Extends the chain from one process's autocommit async connections (PostgreSQL), one
    statement per batch, from the head this process last wrote.

    The head is kept between batches; when another writer (a write transaction, another
    server process) has moved it, the statement adds nothing, the head is read again and the
    batch resealed for its new place. After a few such misses in a row the batch waits its
    turn on the head's row lock instead (:func:`append_async`).
    """

    TRIES = 3
    MOST = 200  # events in one statement (PostgreSQL takes at most 65,535 parameters)

    def __init__(self, keys: KeyRing) -> None:
        self.keys = keys
        self._head: tuple[int, bytes] | None = None

    async def append(self, conn: AsyncConnection[Any], events: list[dict[str, Any]]) -> list[int]:
        if not events:
            return []
        tries = self.TRIES if len(events) <= self.MOST else 0  # too big: the locked way
        for _ in range(tries):
            head, self._head = self._head, None  # unknown until this batch's answer
            if head is None:
                last = await (await conn.execute(_READ_HEAD)).fetchone()
                assert last is not None  # the head row is created with the schema
                head = (int(last[0]), bytes(last[1]))
            batch = _extend(head, self.keys, events, sqlite=False)
            async with AsyncRawCursor(conn) as cur:
                await cur.execute(*_append_after_head(batch, head))
                extended = await cur.fetchone()
            if extended is not None and extended[0] == 1:
                self._head = batch.head
                return batch.numbers
        async with conn.transaction():
            return await append_async(conn, self.keys, events)


def open_event(keys: KeyRing, row: Any) -> dict[str, Any]:
    sealed = Sealed(row.kek_id, row.wrapped_key, row.nonce, row.ciphertext)
    event: dict[str, Any] = orjson.loads(keys.open(sealed, aad=_aad(row.event_id, row.seq)))
    return event


@dataclass(frozen=True, slots=True)
class Finding:
    """One anomaly :func:`verify` found: its kind, the sequence number it is at (None when it
    has none, such as a checkpoint line that does not read), and a sentence. Never record
    content: findings are printed, and shared with whoever investigates."""

    kind: str
    seq: int | None
    detail: str
    line: int | None = None  # the checkpoint file's line, for a checkpoint's own findings

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "seq": self.seq, "detail": self.detail}
        if self.line is not None:
            out["line"] = self.line
        return out


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What :func:`verify` found: ``findings`` in sequence order (those without one last)."""

    records: int
    findings: tuple[Finding, ...] = ()
    checkpoints: int = 0  # checkpoints the chain was checked against
    last: tuple[int, bytes | None] = (0, GENESIS)  # the last record walked: seq and MAC

    @property
    def intact(self) -> bool:
        return not self.findings

    @property
    def broken_at(self) -> int | None:
        """The first sequence number that does not fit, None when intact."""
        return self.findings[0].seq if self.findings else None

    @property
    def reason(self) -> str | None:
        return self.findings[0].detail if self.findings else None


# Read as the driver hands the values back, not through SQLAlchemy's column types: a value of
# the wrong type (TEXT in a BLOB column, a time that is no time on SQLite) must become a
# finding, where a type's result processor would raise while fetching the whole batch.
_WALK = text(
    f"SELECT {', '.join(_LOG_COLUMNS)} FROM audit_log "  # noqa: S608 - constants
    "WHERE seq > :after ORDER BY seq LIMIT :n"
)
_WALK_INDEX = text("SELECT seq, param, digest FROM audit_index WHERE seq > :after AND seq <= :last")
_INDEX_AFTER = text("SELECT seq, param, digest FROM audit_index WHERE seq > :after")
_FIRST = -(2**63)  # below every sequence number: rows numbered 0 or less are found too


def _blob(value: Any) -> bytes | None:
    return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _instant(value: Any) -> datetime | None:
    """A stored ``recorded``: PostgreSQL's timestamptz, or SQLite's naive UTC text."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    return as_utc(value) if isinstance(value, datetime) else None


def _same(stored: Any, derived: Any) -> bool:
    if isinstance(derived, datetime):
        return _instant(stored) == derived
    return bool(stored == derived)


class _Walk:
    """:func:`verify`'s state along the chain: the previous record's MAC, the index each
    record calls for, the MACs at the checkpoints' sequence numbers, and what it found."""

    def __init__(self, keys: KeyRing, anchors: Iterable[tuple[int, bytes]]) -> None:
        self.keys = keys
        self.anchors = sorted(set(anchors))
        self.wanted = {seq for seq, _ in self.anchors}
        self.found: list[Finding] = []
        self.records = 0
        self.expected = 1  # the next sequence number
        self.last = 0  # the last one present
        self.prev: bytes | None = GENESIS  # its MAC; None when unknown (a gap, a bad value)
        self.macs: dict[int, bytes | None] = {}  # stored MACs at the checkpoints' numbers
        self.index: dict[int, Counter[tuple[str, bytes | None]]] = {}  # what records call for
        self.unknown: set[int] = set()  # records whose index cannot be derived

    def note(self, kind: str, seq: int | None, detail: str) -> None:
        self.found.append(Finding(kind, seq, detail))

    def record(self, row: Any) -> None:
        seq = _number(row.seq)
        if seq is None:
            self.note("record-malformed", None, "a record's sequence number is not a number")
            return
        self.records += 1
        if seq < self.expected:  # rows come in order, so only a number below the first
            self.note("record-extra", seq, "a record is numbered before the chain's first")
            self.unknown.add(seq)
            return
        if seq > self.expected:
            gap = f"records {self.expected} to {seq - 1} are" if seq > self.expected + 1 else ""
            self.note("record-missing", self.expected, f"{gap or 'a record is'} missing")
            self.prev = None
        previous, mac = self.prev, _blob(row.mac)
        self.expected, self.last, self.prev = seq + 1, seq, mac
        if seq in self.wanted:
            self.macs[seq] = mac
        event = self._open(row, seq, previous)
        if event is None:
            self.unknown.add(seq)
            return
        try:
            columns, values = _columns(event), set(_search_values(event))
        except (KeyError, TypeError, ValueError, AttributeError):
            self.note("record-malformed", seq, "the record is not an AuditEvent this server wrote")
            self.unknown.add(seq)
            return
        if not all(_same(getattr(row, k), v) for k, v in columns.items()):
            self.note("record-columns", seq, "the record's search columns were changed")
        self.index[seq] = Counter((p, digest(self.keys, p, v)) for p, v in values)

    def _open(self, row: Any, seq: int, previous: bytes | None) -> dict[str, Any] | None:
        """The record's event if it opens and its MAC holds, else None (and a finding)."""
        prev_hash, mac = _blob(row.prev_hash), _blob(row.mac)
        wrapped, nonce, ciphertext = _blob(row.wrapped_key), _blob(row.nonce), _blob(row.ciphertext)
        kek_id, event_id = row.kek_id, row.event_id
        if (
            prev_hash is None
            or mac is None
            or wrapped is None
            or nonce is None
            or ciphertext is None
            or not isinstance(kek_id, str)
            or not isinstance(event_id, str)
        ):
            self.note("record-malformed", seq, "a column of the record holds the wrong type")
            return None
        if previous is not None and prev_hash != previous:
            self.note("record-link", seq, "the link to the previous record is broken")
        try:
            body = self.keys.open(
                Sealed(kek_id, wrapped, nonce, ciphertext), aad=_aad(event_id, seq)
            )
            event = orjson.loads(body)
        except (DecryptionError, orjson.JSONDecodeError, ValueError):
            self.note("record-unreadable", seq, "the record does not open (edited or moved)")
            return None
        if not isinstance(event, dict) or not hmac.compare_digest(
            _mac(self.keys, seq, prev_hash, _canonical(event)), mac
        ):
            self.note("record-changed", seq, "the record's content was changed")
            return None
        return event

    def check_index(self, rows: Iterable[Any], present: set[int]) -> None:
        """Compare stored index rows with those the records in their range call for (the
        index rebuilt): rows missing, rows extra, rows pointing at no record."""
        stored: dict[int, Counter[tuple[str, bytes | None]]] = {}
        for row in rows:
            seq = _number(row.seq)
            if seq is None:
                self.note("index-extra", None, "an index row's sequence number is not a number")
                continue
            stored.setdefault(seq, Counter())[(str(row.param), _blob(row.digest))] += 1
        for seq in sorted(stored.keys() | self.index.keys()):
            called, kept = self.index.pop(seq, Counter()), stored.get(seq, Counter())
            if seq in self.unknown:
                continue
            for param, _ in (called - kept).elements():
                self.note(
                    "index-missing", seq, f"the record's {_param(param)} index row is missing"
                )
            for param, _ in (kept - called).elements():
                self.note(
                    "index-extra",
                    seq,
                    f"an extra {_param(param)} index row points at this record"
                    if seq in present
                    else f"a {_param(param)} index row points at no record",
                )

    def check_head(self, row: Any) -> None:
        seq, mac = (_number(row.seq), _blob(row.mac)) if row is not None else (None, None)
        if seq is None or mac is None:
            self.note("head", None, "the head row is missing or holds the wrong type")
        elif seq > self.last:
            self.note("head", self.last + 1, "records after this one were removed")
        elif seq < self.last:
            self.note("head", seq + 1, "the head points before the last record")
        elif mac != self.prev:
            self.note("head", seq, "the head does not hold the last record's MAC")

    def check_anchors(self) -> None:
        """Each checkpoint's record still there, and the one checkpointed."""
        for seq, mac in self.anchors:
            if seq > self.last:
                self.note(
                    "truncated",
                    seq,
                    f"a checkpoint names record {seq}; the log ends at {self.last}",
                )
            elif seq == 0 and mac == GENESIS:
                continue
            elif seq not in self.macs:
                self.note("checkpoint-mismatch", seq, "the checkpointed record is missing")
            elif self.macs[seq] != mac:
                self.note("checkpoint-mismatch", seq, "the record is not the one checkpointed")

    def report(self) -> ChainReport:
        ordered = sorted(self.found, key=lambda f: (f.seq is None, f.seq or 0))
        return ChainReport(self.records, tuple(ordered), last=(self.last, self.prev))


def _param(name: str) -> str:
    return name if name in _DIGESTED else "unknown-parameter"


def verify(
    conn: Connection,
    keys: KeyRing,
    *,
    batch: int = 2000,
    checkpoints: Iterable[tuple[int, bytes]] = (),
    start: tuple[int, bytes] | None = None,
) -> ChainReport:
    """Walk the chain from the start and report every anomaly: records missing, out of
    order, edited, unreadable or of the wrong type; search columns changed; index rows
    missing or extra (the index rebuilt from the records); the head not pointing at the last
    record; and, for each ``(seq, mac)`` checkpoint kept outside the database
    (``security.audit_checkpoint``), its record gone or not the one checkpointed.

    ``start``: the sequence number and MAC of a record found good by an earlier walk; only
    the records after it (and their index rows) are walked, linked from it, and a checkpoint
    at or before it is compared with the stored record's MAC. Records up to it are not
    looked at again: what was done to them since is found by the next walk from the start."""
    walk = _Walk(keys, checkpoints)
    after = _FIRST
    if start is not None:
        after, walk.prev = start
        walk.expected, walk.last = after + 1, after
        below = sorted(seq for seq in walk.wanted if seq <= after)
        for n in range(0, len(below), 500):
            chunk = below[n : n + 500]
            walk.macs |= {
                int(r[0]): _blob(r[1])
                for r in conn.execute(
                    select(AuditLog.seq, AuditLog.mac).where(AuditLog.seq.in_(chunk))
                )
            }
    while True:
        rows = conn.execute(_WALK, {"after": after, "n": batch}).all()
        for row in rows:
            walk.record(row)
        numbered = [seq for row in rows if (seq := _number(row.seq)) is not None]
        if numbered:
            last = numbered[-1]
            index = conn.execute(_WALK_INDEX, {"after": after, "last": last}).all()
            walk.check_index(index, set(numbered))
            after = last
        # on SQLite, rows numbered with text sort after every number: the walk ends there
        if len(rows) < batch or len(numbered) < len(rows):
            break
    walk.check_index(conn.execute(_INDEX_AFTER, {"after": after}).all(), set())
    walk.check_head(conn.execute(text(_READ_HEAD)).first())
    walk.check_anchors()
    return walk.report()


# -- compliance queries ----------------------------------------------------------------------
_PLAIN = {
    "type": AuditLog.type_code,
    "subtype": AuditLog.subtype_code,
    "action": AuditLog.action,
    "outcome": AuditLog.outcome,
    "source": AuditLog.source,
}
_DIGESTED = ("patient", "agent", "entity")
_DATE_OPS = {"ge": "__ge__", "gt": "__gt__", "le": "__le__", "lt": "__lt__"}


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Criteria for :func:`search`: every condition must hold (values within one parameter
    are alternatives). Dates are ``(prefix, instant)`` pairs: ``ge``/``gt``/``le``/``lt``."""

    dates: tuple[tuple[str, datetime], ...] = ()
    plain: tuple[tuple[str, tuple[str, ...]], ...] = ()
    digested: tuple[tuple[str, tuple[str, ...]], ...] = ()
    newest_first: bool = True
    count: int = 20
    after: int | None = None  # keyset cursor: the last sequence number of the previous page


def search(conn: Connection, keys: KeyRing, query: AuditQuery) -> tuple[int, list[Any]]:
    """``(total, rows of this page)``; patient, agent and entity are matched by digest."""
    where: list[Any] = []
    for prefix, instant in query.dates:
        where.append(getattr(AuditLog.recorded, _DATE_OPS[prefix])(instant))
    for name, values in query.plain:
        where.append(_PLAIN[name].in_(values))
    for name, values in query.digested:
        lookups = [(name, [digest(keys, name, v) for v in values])]
        if name == "entity":  # Patient entities are indexed under "patient" only
            patients = [digest(keys, "patient", v) for v in values if v.startswith("Patient/")]
            lookups += [("patient", patients)] if patients else []
        hits = select(AuditIndex.seq).where(
            or_(*(and_(AuditIndex.param == p, AuditIndex.digest.in_(d)) for p, d in lookups))
        )
        where.append(AuditLog.seq.in_(hits))
    total = int(conn.execute(select(func.count()).select_from(AuditLog).where(*where)).scalar_one())
    page = select(AuditLog).where(*where)
    if query.after is not None:
        after = AuditLog.seq < query.after if query.newest_first else AuditLog.seq > query.after
        page = page.where(after)
    order = AuditLog.seq.desc() if query.newest_first else AuditLog.seq.asc()
    rows = conn.execute(page.order_by(order).limit(query.count)).all()
    return total, list(rows)
