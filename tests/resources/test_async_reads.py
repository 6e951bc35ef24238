"""The async read pool's connection string: the same server SQLAlchemy's URL names."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import text

from resources.sql.async_reads import AsyncReader, conninfo
from resources.sql.engine import Database
from tests.conftest import pg_url

SOCKET_DIR = Path("/var/run/postgresql")


def test_conninfo_takes_host_port_and_options_from_the_url() -> None:
    got = conninfo_to_dict(
        conninfo("postgresql+psycopg://app:pw@db.example:6543/clinic?options=-csearch_path%3Dx")
    )
    assert got == {
        "host": "db.example",
        "port": "6543",
        "dbname": "clinic",
        "user": "app",
        "password": "pw",
        "options": "-csearch_path=x",
    }


def test_a_host_in_the_query_names_a_unix_socket() -> None:
    """SQLAlchemy's way to reach PostgreSQL over its socket: no host before the path, the
    socket's directory as ``?host=``. The pool must use it, not fail on two hosts."""
    got = conninfo_to_dict(conninfo("postgresql+psycopg://postgres@/test?host=/run/pg&port=5433"))
    assert got["host"] == "/run/pg"
    assert got["port"] == "5433"
    assert got["dbname"] == "test"


def test_the_pool_reads_over_the_unix_socket(pg_schema: str) -> None:
    if not (SOCKET_DIR / ".s.PGSQL.5432").exists():
        pytest.skip("no PostgreSQL socket in /var/run/postgresql on this machine")
    url = (
        f"postgresql+psycopg://postgres@/test?host={SOCKET_DIR}&options=-csearch_path%3D{pg_schema}"
    )
    db = Database(url)  # SQLAlchemy takes the same URL
    try:
        with db.read() as conn:
            assert conn.execute(text("SELECT current_schema()")).scalar_one() == pg_schema
    finally:
        db.dispose()

    async def run() -> tuple[str, str]:
        reader = AsyncReader(url, max_size=1)
        await reader.open()
        try:
            row = await reader.one(
                "SELECT current_schema(), coalesce(inet_server_addr()::text, 'socket')", ()
            )
        finally:
            await reader.close()
        return tuple(row)

    assert asyncio.run(run()) == (pg_schema, "socket")


def test_fetch_all_reads_every_query_in_one_transaction(
    pg_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The queries' rows in order, from one REPEATABLE READ snapshot; a failing query raises
    and leaves the pooled connection out of any transaction (ended here, not rolled back by
    the pool with a warning), ready for the next call."""
    url = pg_url(pg_schema)

    async def run() -> tuple[list[Any], str, list[Any]]:
        reader = AsyncReader(url, max_size=1)  # one connection: the failed call's is reused
        await reader.open()
        try:
            got = await reader.fetch_all(
                [
                    ("SELECT n FROM generate_series(1, %s) AS n", (3,)),
                    ("SELECT current_setting('transaction_isolation')", ()),
                    ("SELECT txid_current_if_assigned() IS NULL, %s::text", ("x",)),
                ]
            )
            with pytest.raises(psycopg.errors.DivisionByZero):
                await reader.fetch_all([("SELECT 1", ()), ("SELECT 1 / %s", (0,))])
            again = await reader.fetch_all([("SELECT %s::int", (7,))])
            async with reader.connection() as conn:
                status = conn.info.transaction_status.name
            return got, status, again
        finally:
            await reader.close()

    got, status, again = asyncio.run(run())
    assert got == [[(1,), (2,), (3,)], [("repeatable read",)], [(True, "x")]]
    assert again == [[(7,)]]
    assert status == "IDLE"
    assert not [r for r in caplog.records if r.name.startswith("psycopg.pool")]
