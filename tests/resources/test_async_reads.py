"""The async read pool's connection string: the same server SQLAlchemy's URL names."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from resources.sql.async_reads import AsyncReader, conninfo
from resources.sql.engine import Database

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
    Database(url).dispose()  # SQLAlchemy takes the same URL

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
