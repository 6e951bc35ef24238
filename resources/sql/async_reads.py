"""Primary-key reads on PostgreSQL through psycopg's asyncio connections.

The rest of the server runs synchronous SQLAlchemy in the thread pool; for the hottest request,
read-by-id, a thread hop costs more than the query (docs/architecture.md, "Event loop or
thread pool"), so on PostgreSQL it awaits an async connection instead.  The SQL is the same
join the Store runs. The audit writer borrows the same pool for its batches
(``fhir_server/auditing.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo
from psycopg.rows import namedtuple_row, tuple_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.engine import make_url

__all__ = ["AsyncReader"]

_COLUMNS = (
    "v.res_type, v.res_id, v.version, v.last_updated, v.method, v.deleted, "
    "v.kek_id, v.wrapped_key, v.nonce, v.ciphertext"
)
_CURRENT = (
    f"SELECT {_COLUMNS} FROM resource_version v JOIN resource r "  # noqa: S608 - constant text
    "ON r.res_type = v.res_type AND r.res_id = v.res_id AND r.version = v.version "
    "WHERE r.res_type = %s AND r.res_id = %s"
)
_VERSION = (
    f"SELECT {_COLUMNS} FROM resource_version v "  # noqa: S608 - constant text
    "WHERE v.res_type = %s AND v.res_id = %s AND v.version = %s"
)


def conninfo(url: str) -> str:
    """A libpq connection string from a SQLAlchemy ``postgresql+psycopg://`` URL."""
    u = make_url(url)
    params: dict[str, Any] = {
        "host": u.host or "",
        "port": u.port or "",
        "dbname": u.database or "",
        "user": u.username or "",
        "password": u.password or "",
    }
    # the query wins, as it does for SQLAlchemy: ?host=/var/run/postgresql is a Unix socket
    params.update({k: v if isinstance(v, str) else v[-1] for k, v in u.query.items()})
    return make_conninfo("", **params)


class AsyncReader:
    """A small pool of async connections for read-by-id and vread."""

    def __init__(self, url: str, *, max_size: int = 10) -> None:
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            conninfo(url),
            min_size=1,
            max_size=max_size,
            open=False,
            kwargs={"row_factory": namedtuple_row, "autocommit": True},
        )

    @property
    def is_open(self) -> bool:
        return not self.pool.closed

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection of the pool, in autocommit mode (the audit writer's batches, each one
        statement)."""
        async with self.pool.connection() as conn:
            yield conn

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    async def current(self, rtype: str, rid: str) -> Any:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_CURRENT, (rtype, rid))
            return await cur.fetchone()

    async def one(self, sql: str, params: tuple[Any, ...]) -> Any:
        """The first row of one query (autocommit: no transaction to open or end)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchone()

    async def fetch_all(
        self, queries: list[tuple[str, tuple[Any, ...]]]
    ) -> list[list[tuple[Any, ...]]]:
        """Every row of each query, as plain tuples (a named tuple per row cost $find more than
        its query), all read from one snapshot (a REPEATABLE READ transaction), as the
        synchronous ``Database.read()`` gives. Results come in binary: an array of a day's
        Slot times arrives as machine integers instead of text to parse.

        The transaction's BEGIN, the queries and its COMMIT go in one pipeline: one round trip
        (psycopg's ``transaction()`` would add a sync, and each statement its own wait: six
        round trips for three queries). A query that fails ends it with a ROLLBACK."""
        async with self.pool.connection() as conn:
            cursors = [conn.cursor(row_factory=tuple_row) for _ in queries]
            try:
                async with conn.pipeline():
                    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    for cur, (sql, params) in zip(cursors, queries, strict=True):
                        await cur.execute(sql, params, binary=True)
                    await conn.execute("COMMIT")
                return [await cur.fetchall() for cur in cursors]
            except Exception:
                # end the failed transaction here (the pool would, with a warning); a broken
                # connection the pool replaces, and the query's own error is what is raised
                with suppress(psycopg.Error):
                    await conn.execute("ROLLBACK")
                raise
            finally:
                for cur in cursors:
                    await cur.close()

    async def version(self, rtype: str, rid: str, version: int) -> Any:
        async with self.pool.connection() as conn:
            cur = await conn.execute(_VERSION, (rtype, rid, version))
            return await cur.fetchone()
