"""Key rotation: a new KEK in the key file, then every stored data key rewrapped under it.

Servers keep serving throughout.  The hard part is the last row: a server transaction that
looked at the key file just before it was replaced seals under the old KEK and may commit after
a rewrap pass has already looked.  Two facts close that window without guessing at timings:

* a :class:`~security.crypto.KeyRing` that follows a file looks at it before every seal, so a
  transaction sealing under the old KEK had started before the file was replaced;
* so once every transaction that started before then has ended, one more pass finds every row.

On SQLite every write transaction holds the database's write lock (``BEGIN IMMEDIATE``) from
before it seals until it commits, so a pass that takes the lock after the file was replaced
already comes after all of them.  On PostgreSQL the rotation reads the database clock right after
replacing the file and waits until no client transaction in this database that started before
then is still open (``pg_stat_activity``; sessions of other roles count only if this role may see
their ``xact_start``, e.g. with ``pg_read_all_stats``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, inspect, select, text, update

from resources.sql.engine import Database
from resources.store import Store, V, aad
from security.crypto import KeyRing, rotate_key_file

__all__ = [
    "RotationIncomplete",
    "RotationReport",
    "kek_usage",
    "rewrap_all",
    "rewrap_batch",
    "rotate_keys",
    "sealed_elsewhere",
]

_OLDER_TRANSACTIONS = text(
    "SELECT pid FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND backend_type = 'client backend' AND xact_start < :cutoff"
)


class RotationIncomplete(Exception):
    """Transactions older than the new key were still open when the rotation gave up."""


@dataclass(frozen=True, slots=True)
class RotationReport:
    active: str
    rewrapped: int
    rows_by_key: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {"active": self.active, "rewrapped": self.rewrapped, "rows_by_key": self.rows_by_key}


def rewrap_batch(conn: Connection, keys: KeyRing, *, limit: int = 500) -> int:
    """Rewrap up to ``limit`` stored versions not under the active KEK. Returns how many."""
    active = keys.active
    rows = conn.execute(
        select(V.c.res_type, V.c.res_id, V.c.version, V.c.kek_id, V.c.wrapped_key)
        .where(V.c.kek_id.is_not(None), V.c.kek_id != active)
        .limit(limit)
    ).all()
    done = 0
    for row in rows:
        new_kek, wrapped = keys.rewrap(
            row.wrapped_key, kek_id=row.kek_id, aad=aad(row.res_type, row.res_id, row.version)
        )
        result = conn.execute(
            update(V)
            .where(
                V.c.res_type == row.res_type,
                V.c.res_id == row.res_id,
                V.c.version == row.version,
                V.c.kek_id == row.kek_id,
            )
            .values(kek_id=new_kek, wrapped_key=wrapped)
        )
        done += result.rowcount
    return done


def kek_usage(conn: Connection) -> dict[str, int]:
    """How many stored versions each KEK wraps."""
    rows = conn.execute(
        select(V.c.kek_id, func.count()).where(V.c.kek_id.is_not(None)).group_by(V.c.kek_id)
    ).all()
    return {str(k): int(n) for k, n in rows}


def sealed_elsewhere(conn: Connection, kek_id: str) -> dict[str, int]:
    """Rows outside resource versions sealed under ``kek_id``, by table: every table with a
    ``kek_id`` column (the audit log, the HL7 message store, the booking agent's tables).
    :func:`rewrap_all` does not rewrap them, so a key they use must not be retired."""
    found = {}
    for table in inspect(conn).get_table_names():
        if table == V.name:
            continue
        if not any(c["name"] == "kek_id" for c in inspect(conn).get_columns(table)):
            continue
        n = conn.execute(
            text(f"SELECT count(*) FROM {table} WHERE kek_id = :k"),  # noqa: S608 - a table name
            {"k": kek_id},
        ).scalar()
        if n:
            found[table] = int(n)
    return found


def rewrap_all(*, database: Database, store: Store, batch: int = 500) -> int:
    """Rewrap, one short transaction per batch, until no row is under another KEK."""
    total = 0
    while True:
        with database.write() as conn:
            done = rewrap_batch(conn, store.keys, limit=batch)
        total += done
        if done == 0:
            return total


def _db_now(database: Database) -> datetime | None:
    if database.is_sqlite:
        return None
    with database.read() as conn:
        value: datetime = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    return value


def _wait_for_older_transactions(
    database: Database,
    cutoff: datetime | None,
    *,
    timeout: float,
    sleep: Callable[[float], None],
) -> None:
    if cutoff is None:  # SQLite: the write lock already ordered every older writer before us
        return
    deadline = time.monotonic() + timeout
    while True:
        with database.read() as conn:
            pids = list(conn.execute(_OLDER_TRANSACTIONS, {"cutoff": cutoff}).scalars())
        if not pids:
            return
        if time.monotonic() >= deadline:
            raise RotationIncomplete(
                f"transactions older than the new key are still open (PostgreSQL pids {pids}); "
                "rows they write may be under the old key: end them and run `keys rotate` again"
            )
        sleep(0.05)


def rotate_keys(
    *,
    database: Database,
    store: Store,
    key_file: Path,
    batch: int = 500,
    timeout: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
) -> RotationReport:
    """Add a KEK, make it active and rewrap every stored row under it (servers may run)."""
    rotate_key_file(key_file)
    store.keys.refresh(force=True)
    cutoff = _db_now(database)
    total = rewrap_all(database=database, store=store, batch=batch)
    _wait_for_older_transactions(database, cutoff, timeout=timeout, sleep=sleep)
    total += rewrap_all(database=database, store=store, batch=batch)
    with database.read() as conn:
        usage = kek_usage(conn)
    return RotationReport(store.keys.active, total, usage)
