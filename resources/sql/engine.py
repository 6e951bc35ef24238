"""Engine setup for SQLite (embedded default) and PostgreSQL, and schema migration.

SQLite runs in WAL mode; a write transaction starts with ``BEGIN IMMEDIATE`` so two writers
serialise on the database lock up front instead of failing at commit.  PostgreSQL uses psycopg 3.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from fhir_server.errors import Conflict

T = TypeVar("T")

__all__ = ["Database", "migrate"]

# PostgreSQL: serialization_failure, deadlock_detected
TRANSIENT_SQLSTATES = {"40001", "40P01"}

MIGRATIONS = Path(__file__).parent / "migrations"


class Database:
    """An engine plus the two kinds of unit of work: ``read()`` and ``write()``."""

    def __init__(self, url: str, *, pool_size: int | None = None, **engine_kwargs: Any) -> None:
        parsed = make_url(url)
        self.url = url
        # SQLite has one writer at a time; threads of this process queue here, in order,
        # instead of polling in SQLite's busy handler (whose sleeps grow to 100 ms).
        self._writer = threading.Lock()
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                url,
                connect_args={"timeout": 30, "check_same_thread": False},
                # one connection per worker thread: opening SQLite connections is not free
                pool_size=pool_size or 40,
                max_overflow=10,
                **engine_kwargs,
            )
            _sqlite_pragmas(self.engine)
        else:
            self.engine = create_engine(
                url,
                pool_size=pool_size or 10,
                max_overflow=30,
                pool_recycle=1800,
                **engine_kwargs,
            )

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only unit of work (a consistent snapshot on both databases)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write unit of work: commits on success, rolls back on any exception.

        A deadlock or serialization failure between concurrent writers is a conflict the
        client may retry (409), not a server fault: it is translated here, once.
        """
        try:
            with self._writer if self.is_sqlite else nullcontext(), self.engine.connect() as conn:
                if self.is_sqlite:
                    conn = conn.execution_options(sqlite_immediate=True)
                with conn.begin():
                    yield conn
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES:
                raise Conflict(
                    "a concurrent change to the same data got in the way; retry the request"
                ) from exc
            raise

    def try_write_now(self, fn: Callable[[Connection], T]) -> tuple[bool, T | None]:
        """SQLite only: run ``fn`` in a write unit if no writer in this process holds the lock
        right now, without waiting for it (so an event loop may call this). Returns (ran,
        result)."""
        if not self.is_sqlite or not self._writer.acquire(blocking=False):
            return False, None
        try:
            with self.engine.connect() as conn:
                conn = conn.execution_options(sqlite_immediate=True)
                with conn.begin():
                    return True, fn(conn)
        finally:
            self._writer.release()

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def migrate(db: Database, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` with Alembic (idempotent)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
