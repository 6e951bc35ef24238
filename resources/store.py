"""The only code that writes resource rows: versions, history, soft delete, optimistic locking.

Bodies are the resource's JSON (with ``id`` and ``meta``) sealed by :class:`KeyRing`, AAD
``type|id|version``.  Every write replaces the resource's search-index rows in the same
transaction as the version it indexes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, cast

import orjson
from sqlalchemy import Connection, Table, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from conformance.declaration import RESOURCE_TYPES
from resources.fhirdate import as_utc
from resources.indexing import IndexRows, index_kinds, index_resource
from resources.sql.direct import Direct, pipelined
from resources.sql.tables import (
    IdxBlind,
    IdxDate,
    IdxNumber,
    IdxReference,
    IdxString,
    IdxToken,
    ResourceRow,
    ResourceVersion,
    SlotTime,
)
from security.crypto import KeyRing, Sealed

__all__ = ["Current", "Store", "StoredVersion", "VersionConflict", "format_instant"]

R = cast(Table, ResourceRow.__table__)
V = cast(Table, ResourceVersion.__table__)
INDEX_TABLES: dict[str, Table] = {
    "string": cast(Table, IdxString.__table__),
    "token": cast(Table, IdxToken.__table__),
    "date": cast(Table, IdxDate.__table__),
    "reference": cast(Table, IdxReference.__table__),
    "blind": cast(Table, IdxBlind.__table__),
    "number": cast(Table, IdxNumber.__table__),
    "slot": cast(Table, SlotTime.__table__),
}
# The index tables each type can have rows in: a write touches only those.
KINDS_BY_TYPE = {rtype: index_kinds(rtype) for rtype in RESOURCE_TYPES}


# Built once: the hot read path skips statement construction and cache-key work.
# A resource's head row joined to its current version.
_IS_CURRENT = and_(
    R.c.res_type == V.c.res_type, R.c.res_id == V.c.res_id, R.c.version == V.c.version
)
# reads every write makes, on the driver (SQLAlchemy's execute and Row cost more than them)
_READ_CURRENT = Direct(
    select(V)
    .join(R, _IS_CURRENT)
    .where(R.c.res_type == bindparam("rtype"), R.c.res_id == bindparam("rid"))
)


_CURRENT = Direct(
    select(R.c.seq, R.c.version, R.c.last_updated, R.c.deleted).where(
        R.c.res_type == bindparam("rtype"), R.c.res_id == bindparam("rid")
    )
)


@lru_cache(maxsize=256)
def _read_current_many(rids: int) -> Direct:
    """The current versions of ``rids`` resources of one type (bound as r0, r1, …), in id
    order: a fixed statement per count, as ``_delete_rows``."""
    return Direct(
        select(R.c.seq, V)
        .join(V, _IS_CURRENT)
        .where(
            R.c.res_type == bindparam("rtype"),
            R.c.res_id.in_([bindparam(f"r{i}") for i in range(rids)]),
        )
        .order_by(R.c.res_id)
    )


_READ_SEQS = (
    select(R.c.seq, V).join(V, _IS_CURRENT).where(R.c.seq.in_(bindparam("seqs", expanding=True)))
)
_INSERT_HEAD = Direct(insert(R).returning(R.c.seq))
# a new resource's head under a seq reserved already (``Store.reserving``): nothing to read back,
# so inside ``deferring`` it waits and goes with the transaction's other rows
_INSERT_HEAD_AT = Direct(insert(R).inline(), deferrable=True)
_RESERVE_SEQS = Direct(
    select(func.nextval(func.pg_get_serial_sequence("resource", "seq")).label("seq")).select_from(
        func.generate_series(1, bindparam("n"))
    )
)
_SEQS = "store.seqs"  # Connection.info key: seqs reserved for new resources
_ADVANCE_HEAD = Direct(
    update(R)
    .where(R.c.seq == bindparam("seq_"), R.c.version == bindparam("old"))
    .values(
        version=bindparam("version"),
        last_updated=bindparam("last_updated"),
        deleted=bindparam("deleted"),
    )
)
# deferrable: inside ``deferring`` (a group of HL7 messages) these rows go at its end, together
_INSERT_VERSION = Direct(insert(V), deferrable=True)
# inline(): PostgreSQL would otherwise return each row's surrogate key, which nothing reads
_INSERT_INDEX = {k: Direct(insert(t).inline(), deferrable=True) for k, t in INDEX_TABLES.items()}
_ST = INDEX_TABLES["slot"]
_UPDATE_SLOT_TIME = Direct(update(_ST).where(_ST.c.seq == bindparam("b_seq")))  # SET: params


@lru_cache(maxsize=512)
def _delete_rows(kind: str, seqs: int, params: int = 0) -> Direct:
    """A fixed DELETE of a table's index rows for ``seqs`` resources (bound as s0, s1, …),
    only those of ``params`` search parameters (p0, p1, …) if that is not 0."""
    t = INDEX_TABLES[kind]
    where = [t.c.seq.in_([bindparam(f"s{i}") for i in range(seqs)])]
    if params:
        where.append(t.c.param.in_([bindparam(f"p{i}") for i in range(params)]))
    return Direct(delete(t).where(*where))


def _numbered(values: Sequence[Any], prefix: str = "s") -> dict[str, Any]:
    return {f"{prefix}{i}": v for i, v in enumerate(values)}


@contextmanager
def _advancing(conn: Connection, heads: list[dict[str, Any]], conflict: str) -> Iterator[None]:
    """Move ``heads`` one version on, then run the block's statements: one round trip on
    PostgreSQL, checked after it. A head that had moved meanwhile raises
    :class:`VersionConflict` ``conflict``, also when the block's version rows then collided
    with the newer ones (the caller's transaction rolls back)."""
    try:
        with pipelined(conn):
            moved = _ADVANCE_HEAD.run(conn, heads)
            yield
    except IntegrityError as exc:
        if moved.rowcount != len(heads):
            raise VersionConflict(conflict) from exc
        raise
    if moved.rowcount != len(heads):
        raise VersionConflict(conflict)


@dataclass(slots=True)
class _Fetched:
    """A head insert's row read already (inside its savepoint), as its cursor would give it."""

    row: Any

    def fetchone(self) -> Any:
        return self.row


@dataclass(slots=True)
class _Reserved:
    """Seqs reserved for new resources (``Store.reserving``), read once they are needed."""

    sent: list[Callable[[], list[Any]]] = field(default_factory=list)
    seqs: deque[int] = field(default_factory=deque)

    def take(self) -> int | None:
        for read in self.sent:
            self.seqs.extend(int(row.seq) for row in read())
        self.sent.clear()
        return self.seqs.popleft() if self.seqs else None


@dataclass(slots=True)
class _SlotTimes:
    """Slots' time rows rewritten in place (``cursor``), checked once that has run: where a
    row was missing (a Slot stored before it had a time), the rows are written anew."""

    cursor: Any
    seqs: list[int]
    rows: list[dict[str, Any]]

    def finish(self, conn: Connection) -> None:
        if self.cursor is None or self.cursor.rowcount == len(self.seqs):
            return
        _delete_rows("slot", len(self.seqs)).run(conn, _numbered(self.seqs))
        if self.rows:
            _INSERT_INDEX["slot"].run(conn, self.rows)


@lru_cache(maxsize=256)
def _param_kinds(rtype: str, params: frozenset[str]) -> frozenset[str]:
    """The index tables the search parameters ``params`` of ``rtype`` are kept in."""
    declared = RESOURCE_TYPES[rtype].params
    return frozenset(declared[p].index_table for p in params if p in declared)


class VersionConflict(Exception):
    """The row changed (or appeared) since the caller looked: optimistic lock lost."""


def format_instant(value: datetime) -> str:
    """FHIR instant in UTC with millisecond precision: ``2026-11-22T16:00:00.123Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def now_ms() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def aad(rtype: str, rid: str, version: int) -> bytes:
    return f"{rtype}|{rid}|{version}".encode()


def _stamped(resource: dict[str, Any], version: int, when: datetime) -> bytes:
    """Set ``meta.versionId`` and ``meta.lastUpdated`` (other meta kept); the JSON to store."""
    resource["meta"] = {
        **(resource.get("meta") or {}),
        "versionId": str(version),
        "lastUpdated": format_instant(when),
    }
    return orjson.dumps(resource)


def _advanced(seq: int, old: int, when: datetime, deleted: bool) -> dict[str, Any]:
    """Parameters of ``_ADVANCE_HEAD``: the head at ``seq`` moves from version ``old``."""
    return {"seq_": seq, "old": old, "version": old + 1, "last_updated": when, "deleted": deleted}


@dataclass(frozen=True, slots=True)
class Current:
    seq: int
    version: int
    last_updated: datetime
    deleted: bool


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version as read back: ``body`` is the exact JSON bytes (None when deleted)."""

    res_type: str
    res_id: str
    version: int
    last_updated: datetime
    method: str
    deleted: bool
    body: bytes | None

    def resource(self) -> dict[str, Any]:
        if self.body is None:
            raise ValueError("a deleted version has no body")
        value: dict[str, Any] = orjson.loads(self.body)
        return value

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


Watcher = Callable[[Connection, "StoredVersion"], None]


class Store:
    """Resource rows over one database, sealed with one key ring."""

    def __init__(self, keys: KeyRing, *, base_url: str = "") -> None:
        self.keys = keys
        self.base_url = base_url
        self._watchers: dict[str, list[Watcher]] = {}

    def watch(self, rtype: str, watcher: Watcher) -> None:
        """Call ``watcher(conn, stored)`` after every write or delete of ``rtype``, inside the
        writing transaction (the HL7 outbox queues its messages there, so they commit or roll
        back with the change)."""
        self._watchers.setdefault(rtype, []).append(watcher)

    def _notify(self, conn: Connection, stored: StoredVersion) -> None:
        for watcher in self._watchers.get(stored.res_type, ()):
            watcher(conn, stored)

    # -- reads ------------------------------------------------------------------------------
    def current(self, conn: Connection, rtype: str, rid: str) -> Current | None:
        return self.send_current(conn, rtype, rid)()

    def send_current(self, conn: Connection, rtype: str, rid: str) -> Callable[[], Current | None]:
        """Send :meth:`current`'s query now (inside ``pipelined``, with others); the returned
        function reads its answer."""
        read = _CURRENT.send(conn, {"rtype": rtype, "rid": rid})

        def answer() -> Current | None:
            found = read()
            if not found:
                return None
            row = found[0]
            return Current(row.seq, row.version, as_utc(row.last_updated), bool(row.deleted))

        return answer

    def read(self, conn: Connection, rtype: str, rid: str) -> StoredVersion | None:
        """The current version (possibly a deletion marker), or None if it never existed."""
        found = _READ_CURRENT.rows(conn, {"rtype": rtype, "rid": rid})
        return self.open_row(found[0]) if found else None

    def vread(self, conn: Connection, rtype: str, rid: str, version: int) -> StoredVersion | None:
        row = conn.execute(
            select(V).where(V.c.res_type == rtype, V.c.res_id == rid, V.c.version == version)
        ).first()
        return self.open_row(row) if row is not None else None

    def read_many(self, conn: Connection, seqs: Sequence[int]) -> dict[int, StoredVersion]:
        """Current versions by ``resource.seq`` (for search pages and includes)."""
        if not seqs:
            return {}
        rows = conn.execute(_READ_SEQS, {"seqs": list(seqs)}).all()
        return {row.seq: self.open_row(row) for row in rows}

    def history_rows(self, rows: Iterable[Any]) -> list[StoredVersion]:
        return [self.open_row(row) for row in rows]

    def open_row(self, row: Any) -> StoredVersion:
        """Open a ``resource_version`` row (any object with its column attributes)."""
        body: bytes | None = None
        if not row.deleted:
            body = self.keys.open(
                Sealed(row.kek_id, row.wrapped_key, row.nonce, row.ciphertext),
                aad=aad(row.res_type, row.res_id, row.version),
            )
        return StoredVersion(
            row.res_type,
            row.res_id,
            row.version,
            as_utc(row.last_updated),
            row.method,
            bool(row.deleted),
            body,
        )

    # -- writes -----------------------------------------------------------------------------
    @contextmanager
    def reserving(self, conn: Connection) -> Iterator[Callable[[int], None]]:
        """``reserve(n)`` inside the block sends a query for ``n`` seqs (PostgreSQL; call it
        inside ``pipelined``, with other statements): new resources written in the block with
        a fresh id take them, so their heads need no round trip for their seq and, inside
        ``deferring``, go with the other rows. Seqs left unused when the block ends are gaps
        (a sequence never gives a number twice). On SQLite ``reserve`` does nothing."""

        reserved = conn.info[_SEQS] = _Reserved()

        def reserve(count: int) -> None:
            if conn.dialect.name == "postgresql" and count > 0:
                reserved.sent.append(_RESERVE_SEQS.send(conn, {"n": count}))

        try:
            yield reserve
        finally:
            del conn.info[_SEQS]

    def write(
        self,
        conn: Connection,
        *,
        resource: dict[str, Any],
        method: str,
        expected: Current | None,
        fresh_id: bool = False,
        changed: frozenset[str] | None = None,
    ) -> StoredVersion:
        """Write a new version of ``resource`` (its ``id`` set by the caller).

        ``expected`` is what the caller read as current (None: the resource must not exist).
        ``fresh_id`` says the id was just generated here (a UUID), so it cannot collide.
        ``changed``: the caller changed only values of these search parameters (a Slot's
        ``status``), so only their index rows are rewritten.
        Raises :class:`VersionConflict` if that is no longer true.
        """
        rtype, rid = resource["resourceType"], resource["id"]
        version = 1 if expected is None else expected.version + 1
        when = now_ms()
        body = _stamped(resource, version, when)
        if expected is None:
            # the head (which gives the seq) with the version row, then the index rows: two
            # round trips on PostgreSQL, whatever the number of index tables
            with pipelined(conn) if fresh_id else nullcontext():
                inserted = self._insert_head(conn, rtype, rid, version, when, fresh_id=fresh_id)
                self._insert_versions(conn, rtype, when, method, [(rid, version, body)])
            seq = int(inserted.fetchone()[0])
            rows = index_resource(resource, seq=seq, keys=self.keys, base_url=self.base_url)
            with pipelined(conn):
                self._reindex(conn, rtype, seq, rows, new=True)
        else:
            # the seq is known: the whole write in one round trip on PostgreSQL, checked after
            seq = expected.seq
            rows = index_resource(
                resource, seq=seq, keys=self.keys, base_url=self.base_url, only=changed
            )
            head = _advanced(seq, expected.version, when, False)
            slot_times: _SlotTimes | None = None
            with _advancing(
                conn, [head], f"{rtype}/{rid} changed since version {expected.version}"
            ):
                self._insert_versions(conn, rtype, when, method, [(rid, version, body)])
                if changed is None:
                    self._reindex(conn, rtype, seq, rows)
                else:
                    slot_times = self._reindex_params(conn, rtype, [(seq, rows)], changed)
            if slot_times is not None:
                slot_times.finish(conn)
        stored = StoredVersion(rtype, rid, version, when, method, False, body)
        self._notify(conn, stored)
        return stored

    def delete(self, conn: Connection, *, rtype: str, rid: str, expected: Current) -> int:
        """Soft delete: a new version marked deleted; index rows removed. Returns version."""
        version = expected.version + 1
        when = now_ms()
        head = _advanced(expected.seq, expected.version, when, True)
        with _advancing(conn, [head], f"{rtype}/{rid} changed since version {expected.version}"):
            self._insert_versions(conn, rtype, when, "DELETE", [(rid, version, None)])
            self._reindex(conn, rtype, expected.seq, IndexRows())
        self._notify(conn, StoredVersion(rtype, rid, version, when, "DELETE", True, None))
        return version

    def _insert_head(
        self,
        conn: Connection,
        rtype: str,
        rid: str,
        version: int,
        when: datetime,
        *,
        fresh_id: bool,
    ) -> Any:
        """The new resource's head row; its cursor returns the seq."""
        head = {
            "res_type": rtype,
            "res_id": rid,
            "version": version,
            "last_updated": when,
            "deleted": False,
        }
        if fresh_id:  # a new UUID: no savepoint needed to survive a duplicate
            reserved: _Reserved | None = conn.info.get(_SEQS)
            seq = reserved.take() if reserved is not None else None
            if seq is not None:
                _INSERT_HEAD_AT.run(conn, {"seq": seq, **head})
                return _Fetched((seq,))
            return _INSERT_HEAD.run(conn, head)
        try:
            with conn.begin_nested():
                return _Fetched(_INSERT_HEAD.run(conn, head).fetchone())
        except IntegrityError as exc:
            raise VersionConflict(f"{rtype}/{rid} already exists") from exc

    def _insert_versions(
        self,
        conn: Connection,
        rtype: str,
        when: datetime,
        method: str,
        versions: Sequence[tuple[str, int, bytes | None]],
    ) -> None:
        """Insert ``(id, version, body)`` rows, bodies sealed together (None: a deletion)."""
        bodies = [(body, aad(rtype, rid, v)) for rid, v, body in versions if body is not None]
        boxes = iter(self.keys.seal_many(bodies) if bodies else [])
        rows = []
        for rid, version, body in versions:
            box = next(boxes) if body is not None else None
            rows.append(
                {
                    "res_type": rtype,
                    "res_id": rid,
                    "version": version,
                    "last_updated": when,
                    "method": method,
                    "deleted": box is None,
                    "kek_id": box.kek_id if box else None,
                    "wrapped_key": box.wrapped_key if box else None,
                    "nonce": box.nonce if box else None,
                    "ciphertext": box.ciphertext if box else None,
                }
            )
        _INSERT_VERSION.run(conn, rows)

    def _reindex(
        self, conn: Connection, rtype: str, seq: int, rows: IndexRows, *, new: bool = False
    ) -> None:
        for kind in KINDS_BY_TYPE[rtype]:
            if not new:  # a brand-new resource has no index rows yet
                _delete_rows(kind, 1).run(conn, {"s0": seq})
            values = getattr(rows, kind)
            if values:
                _INSERT_INDEX[kind].run(conn, values)

    def _reindex_params(
        self,
        conn: Connection,
        rtype: str,
        batch: Sequence[tuple[int, IndexRows]],
        params: frozenset[str],
    ) -> _SlotTimes:
        """Rewrite only the index rows of ``params`` for each ``(seq, rows)`` of ``batch``,
        one statement per table whatever the batch's size (all ``Direct``, so a caller may
        pipeline them). A Slot's time row is rewritten in place: call ``finish`` on what this
        returns once the statements have run."""
        seqs = [seq for seq, _ in batch]
        slot_times = _SlotTimes(None, seqs, [])
        for kind in KINDS_BY_TYPE[rtype]:
            if kind == "slot":  # one row per Slot, rewritten in place
                rows = [getattr(r, kind) for _, r in batch]
                slot_times.rows = [v for vals in rows for v in vals]
                if all(len(v) == 1 for v in rows):
                    moved = [
                        {**{k: v for k, v in vals[0].items() if k != "seq"}, "b_seq": seq}
                        for (seq, _), vals in zip(batch, rows, strict=True)
                    ]
                    slot_times.cursor = _UPDATE_SLOT_TIME.run(conn, moved)
                    continue
                _delete_rows(kind, len(seqs)).run(conn, _numbered(seqs))
                values = slot_times.rows
            elif kind not in _param_kinds(rtype, params):
                continue  # none of the changed parameters is indexed in this table
            else:
                named = tuple(sorted(params))
                wanted = {**_numbered(seqs), **_numbered(named, "p")}
                _delete_rows(kind, len(seqs), len(named)).run(conn, wanted)
                values = [v for _, r in batch for v in getattr(r, kind) if v["param"] in params]
            if values:
                _INSERT_INDEX[kind].run(conn, values)
        return slot_times

    def update_many(
        self,
        conn: Connection,
        rtype: str,
        ids: Iterable[str],
        edit: Callable[[dict[str, Any]], dict[str, Any] | None],
        *,
        changed: frozenset[str],
    ) -> list[StoredVersion]:
        """Server-made edits of several resources of one type (Slots marked busy or free),
        written with one statement per table however many there are.

        ``edit`` gets each current body and returns the new one, or None to leave that
        resource alone; missing and deleted ids are skipped. Only the search parameters in
        ``changed`` may differ, so only their index rows are rewritten, and the bodies are
        not validated again: never for anything a client sent. Resources are read and written
        in id order. Raises :class:`VersionConflict` if one changed since it was read.
        """
        wanted = sorted(set(ids))
        if not wanted:
            return []
        when = now_ms()
        edited: list[tuple[Any, dict[str, Any], bytes]] = []
        current = _read_current_many(len(wanted)).rows(
            conn, {"rtype": rtype, **_numbered(wanted, "r")}
        )
        for row in current:
            if row.deleted:
                continue
            body = edit(self.open_row(row).resource())
            if body is not None:
                edited.append((row, body, _stamped(body, row.version + 1, when)))
        if not edited:
            return []
        heads = [_advanced(row.seq, row.version, when, False) for row, _, _ in edited]
        versions = [(row.res_id, row.version + 1, raw) for row, _, raw in edited]
        batch = [
            (
                row.seq,
                index_resource(
                    body, seq=row.seq, keys=self.keys, base_url=self.base_url, only=changed
                ),
            )
            for row, body, _ in edited
        ]
        with _advancing(conn, heads, f"one of {len(heads)} {rtype} resources changed meanwhile"):
            self._insert_versions(conn, rtype, when, "PUT", versions)
            slot_times = self._reindex_params(conn, rtype, batch, changed)
        slot_times.finish(conn)
        stored = [StoredVersion(rtype, rid, v, when, "PUT", False, raw) for rid, v, raw in versions]
        for version in stored:
            self._notify(conn, version)
        return stored
