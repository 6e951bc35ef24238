"""Engine setup for SQLite (embedded default) and PostgreSQL, and schema migration.

SQLite runs in WAL mode; a write transaction starts with ``BEGIN IMMEDIATE`` so two writers
serialise on the database lock up front instead of failing at commit. Checkpoints (copying the
WAL back into the database file, with an fsync) run on a background thread, not inside whichever
commit happens to cross SQLite's threshold: on the event loop that commit would stall every
request for the length of an fsync. PostgreSQL uses psycopg 3.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from base.errors import Conflict
from base.logging import get_logger

__all__ = ["CHECKPOINTER", "PLAN_PER_RUN", "Checkpointer", "Database", "migrate"]

# PostgreSQL: serialization_failure, deadlock_detected
TRANSIENT_SQLSTATES = {"40001", "40P01"}

MIGRATIONS = Path(__file__).parent / "migrations"

log = get_logger("resources.sql.engine")


class Database:
    """An engine plus the two kinds of unit of work: ``read()`` and ``write()``."""

    def __init__(self, url: str, *, pool_size: int | None = None, **engine_kwargs: Any) -> None:
        parsed = make_url(url)
        self.url = url
        # SQLite: a commit is on disk when it returns (FULL), unless the URL asks for
        # ?synchronous=normal (then a power cut may lose the newest commits; a crash does not)
        self.synchronous = "FULL"
        # SQLite has one writer at a time; threads of this process queue here, in order,
        # instead of polling in SQLite's busy handler (whose sleeps grow to 100 ms).
        self._writer = threading.Lock()
        self.dialect = parsed.get_backend_name()
        self._checkpoints: weakref.finalize[Any, Any] | None = None  # SQLite files only
        file = parsed.database if parsed.database not in (None, "", ":memory:") else None
        if self.dialect == "sqlite":
            if file:
                private_sqlite_file(Path(file))
            wanted = str(parsed.query.get("synchronous", "full")).upper()
            if wanted not in SQLITE_SYNCHRONOUS:
                raise ValueError(
                    f"synchronous={wanted.lower()} in the database URL: use full or normal"
                )
            self.synchronous = wanted
            self.engine: Engine = create_engine(
                parsed.difference_update_query(["synchronous"]),
                connect_args={"timeout": 30, "check_same_thread": False},
                # one connection per worker thread: opening SQLite connections is not free
                pool_size=pool_size or 40,
                max_overflow=10,
                **engine_kwargs,
            )
            _sqlite_pragmas(self.engine, self.synchronous)
            if file:
                path = str(Path(file).resolve())
                CHECKPOINTER.add(path)
                self._checkpoints = weakref.finalize(self, CHECKPOINTER.remove, path)
        else:
            self.engine = create_engine(
                url,
                pool_size=pool_size or 10,
                max_overflow=30,
                pool_recycle=1800,
                **engine_kwargs,
            )
            _driver_hook(self.engine)

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

    def try_write_now(self, fn: Callable[[Any], object], *, wait: bool = False) -> bool:
        """SQLite only: run ``fn`` on a DB-API connection inside a write transaction if no
        writer in this process holds the lock right now, without waiting for it (so an event
        loop may call this; ``wait``: a thread waits its turn). Returns whether it ran. For
        short, hot writes that gain from skipping SQLAlchemy (the audit writer); everything
        else uses :meth:`write`. With ``synchronous=FULL`` the commit waits for the disk, so
        an event loop should not call it."""
        if not self.is_sqlite or not self._writer.acquire(blocking=wait):
            return False
        try:
            with closing(self.engine.raw_connection()) as raw:
                dbapi: Any = raw.dbapi_connection
                dbapi.execute("BEGIN IMMEDIATE")
                try:
                    fn(dbapi)
                except BaseException:
                    dbapi.execute("ROLLBACK")
                    raise
                dbapi.execute("COMMIT")
                return True
        finally:
            self._writer.release()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._checkpoints is not None:
            self._checkpoints()


# a WAL file is a 32-byte header, then frames of a 24-byte header and a page
_WAL_HEADER, _FRAME_HEADER = 32, 24


@dataclass(slots=True)
class _Watched:
    """A database the checkpointer looks after."""

    users: int = 0  # Database objects of this process open on it
    conn: sqlite3.Connection | None = None  # the checkpointer's own connection
    frame_bytes: int = 0  # one WAL frame of this database (read with its first checkpoint)
    signature: tuple[int, int] | None = None  # WAL size and mtime at the last checkpoint
    frames: tuple[int, int, int] | None = None  # what that checkpoint answered
    caught_up: bool = False  # that checkpoint copied every frame the WAL file then held


class Checkpointer:
    """One thread per process that checkpoints the WAL of every SQLite database in use.

    Every ``interval`` seconds it looks at each database's WAL file and, if it has reached
    ``threshold`` bytes (about SQLite's own default of 1,000 pages), runs a PASSIVE
    checkpoint: that copies what no reader still needs into the database file and fsyncs it,
    without blocking readers or writers. A WAL file unchanged since the last checkpoint is
    skipped only if that checkpoint copied every frame the file held (SQLite's answer, frames
    in the WAL and frames copied, against the file's size). PASSIVE leaves behind what a
    reader's snapshot still needs, and a commit not yet visible: with ``synchronous=FULL`` a
    commit's frames are in the file, at its final size and time, while it waits for their
    fsync. Skipping on size and time alone left such a WAL out of the database file until the
    next write, if ever. Once SQLite has restarted the WAL from its start the file also holds
    older frames, so it is checkpointed every round; with nothing new to copy that reads the
    WAL index and fsyncs nothing. Connections keep SQLite's automatic checkpoint only as a
    backstop (``BACKSTOP_PAGES``, about 80 MB of WAL), for when this thread falls behind or the
    database is written by a process that does not run it. The WAL index (``-shm``) would say
    exactly how much is waiting, but this process must never open SQLite's files itself:
    closing any descriptor of a file drops every POSIX lock the process holds on it, SQLite's
    included.
    """

    BACKSTOP_PAGES = 20_000

    def __init__(
        self, interval: float = 1.0, threshold: int = 4 * 1024 * 1024, *, background: bool = True
    ) -> None:
        self.interval = interval
        self.threshold = threshold
        self.background = background  # False: rounds run only when run_once is called
        self._lock = threading.Condition()
        self._dbs: dict[str, _Watched] = {}
        self._thread: threading.Thread | None = None

    def add(self, path: str) -> None:
        with self._lock:
            entry = self._dbs.setdefault(path, _Watched())
            entry.users += 1
            if self._thread is None and self.background:
                self._thread = threading.Thread(
                    target=self._run, name="sqlite-checkpoint", daemon=True
                )
                self._thread.start()
            self._lock.notify()

    def remove(self, path: str) -> None:
        with self._lock:
            entry = self._dbs.get(path)
            if entry is None:
                return
            entry.users -= 1
            if entry.users <= 0:
                del self._dbs[path]
                if entry.conn is not None:
                    entry.conn.close()

    def run_once(self) -> int:
        """Checkpoint every database whose WAL is big enough and changed, or was left behind
        by the last checkpoint; returns how many of those found something new."""
        done = 0
        with self._lock:
            for path, entry in list(self._dbs.items()):
                try:
                    st = os.stat(path + "-wal")
                except FileNotFoundError:
                    continue
                signature = (st.st_size, st.st_mtime_ns)
                if st.st_size < self.threshold or (
                    signature == entry.signature and entry.caught_up
                ):
                    continue
                try:
                    frames = self._checkpoint(path, entry)
                except sqlite3.OperationalError:
                    # another process is checkpointing (SQLITE_BUSY): an expected race; the
                    # next round tries again, and the backstop holds meanwhile
                    continue
                except sqlite3.Error as exc:
                    log.error("sqlite.checkpoint_failed", error=str(exc))
                    continue
                if signature != entry.signature or frames != entry.frames:
                    done += 1
                busy, in_wal, copied = frames
                entry.signature, entry.frames = signature, frames
                entry.caught_up = (
                    busy == 0
                    and copied == in_wal
                    and _WAL_HEADER + in_wal * entry.frame_bytes >= st.st_size
                )
        return done

    @staticmethod
    def _checkpoint(path: str, entry: _Watched) -> tuple[int, int, int]:
        """A PASSIVE checkpoint: (busy, frames in the WAL, frames copied), as SQLite answers."""
        if entry.conn is None:
            entry.conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=0
            )
        if not entry.frame_bytes:
            (page_size,) = entry.conn.execute("PRAGMA page_size").fetchone()
            entry.frame_bytes = _FRAME_HEADER + int(page_size)
        busy, in_wal, copied = entry.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return int(busy), int(in_wal), int(copied)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._dbs:
                    self._lock.wait()
            self.run_once()
            time.sleep(self.interval)


CHECKPOINTER = Checkpointer()


def private_sqlite_file(path: Path) -> None:
    """Create the database file 0600 (in a directory created 0700) before SQLite opens it:
    SQLite gives its -wal and -shm files the database file's mode, so all three are the
    owner's alone; files an older version left readable to others are narrowed to 0600 too.
    Their content is sealed, but their sizes, times and index digests are nobody else's."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for each in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with suppress(FileNotFoundError):
            if each.stat().st_mode & 0o077:
                each.chmod(0o600)


SQLITE_SYNCHRONOUS = ("FULL", "NORMAL")


def _sqlite_pragmas(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA wal_autocheckpoint={Checkpointer.BACKSTOP_PAGES}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


# psycopg prepares a statement on the server after its fifth run on a connection, and PostgreSQL
# may then give it one generic plan, made from the statistics of that moment and kept however
# the table grows. For the fixed statements of writes and of $find that saves planning; for a
# search (whose selectivity depends on its values) it went wrong: the patient lookup by
# identifier went from 0.02 ms to 1.2 ms, by name and birth date to 2.3 ms, scanning the whole
# index table as it grew from a few rows to 7,700 (docs/architecture.md, "PostgreSQL plans").
# A statement executed with this execution option set is never prepared, so each run is
# planned for its values.
# (Planning every statement so, plan_cache_mode = force_custom_plan, cost $find about 15 %.)
# The same hook refuses a statement inside a psycopg pipeline (resources.sql.direct.pipelined),
# whose result SQLAlchemy would read before it exists.
PLAN_PER_RUN = "plan_per_run"


def _driver_hook(engine: Engine) -> None:
    """PostgreSQL statements SQLAlchemy hands to psycopg: refused inside a pipeline, and run
    unprepared when they ask for PLAN_PER_RUN."""

    @event.listens_for(engine, "do_execute")
    def _statement(cursor: Any, statement: str, parameters: Any, context: Any) -> bool | None:
        if cursor.connection.pgconn.pipeline_status:
            raise RuntimeError("SQLAlchemy cannot run a statement inside a pipeline")
        if not context.execution_options.get(PLAN_PER_RUN):
            return None  # SQLAlchemy runs it as usual
        cursor.execute(statement, parameters, prepare=False)
        return True


def migrate(db: Database, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` with Alembic (idempotent)."""
    logging.getLogger("alembic").setLevel(logging.WARNING)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def holds_data(db: Database) -> bool:
    """Whether the (migrated) database holds anything sealed under a key: a resource, an audit
    record, a stored HL7 message or a registered user."""
    from sqlalchemy import text

    with db.read() as conn:
        for table in ("resource", "audit_log", "hl7_message", "oauth_user"):
            if conn.execute(text(f"SELECT 1 FROM {table} LIMIT 1")).first():  # noqa: S608
                return True
    return False
