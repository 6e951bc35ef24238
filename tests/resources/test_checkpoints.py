"""SQLite's WAL is checkpointed by a background thread, not by whichever commit crosses the
threshold (on the event loop that commit would stall every request for an fsync)."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from pathlib import Path

from sqlalchemy import text

from resources.sql.engine import CHECKPOINTER, Checkpointer, Database


def _write_rows(db: Database, n: int) -> None:
    with db.write() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS filler (id INTEGER PRIMARY KEY, b BLOB)"))
        conn.execute(
            text("INSERT INTO filler (b) VALUES (randomblob(3000))"), [{} for _ in range(n)]
        )


def test_commits_leave_checkpoints_to_the_background(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    db = Database(f"sqlite:///{path}")
    try:
        with db.engine.connect() as conn:
            backstop = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert backstop == Checkpointer.BACKSTOP_PAGES
        # Stop the shared thread's rounds from racing this test: run them by hand.
        mine = Checkpointer(background=False)  # WAL threshold: 4 MiB
        mine.add(str(path.resolve()))
        CHECKPOINTER.remove(str(path.resolve()))
        _write_rows(db, 2000)  # about 1,500 pages: over SQLite's default threshold of 1,000
        before = path.stat().st_size
        assert before < 1_000_000  # the commit itself did not copy the WAL into the file
        assert mine.run_once() == 1
        assert path.stat().st_size > 5_000_000  # ... the checkpoint did
        assert mine.run_once() == 0  # nothing new in the WAL: nothing to do
        _write_rows(db, 10)
        assert mine.run_once() == 1
        with sqlite3.connect(path) as check:
            assert check.execute("SELECT count(*) FROM filler").fetchone() == (2010,)
        small = tmp_path / "small.db"
        light = Database(f"sqlite:///{small}")
        mine.add(str(small.resolve()))
        _write_rows(light, 10)  # a small WAL waits, as SQLite's own threshold would
        assert mine.run_once() == 0
        light.dispose()
        mine.remove(str(path.resolve()))
    finally:
        db.dispose()


def test_a_checkpoint_that_left_frames_behind_runs_again_on_an_unchanged_wal(
    tmp_path: Path,
) -> None:
    """A PASSIVE checkpoint leaves in the WAL what a reader's snapshot still needs (and a
    commit not yet visible, waiting for its fsync). The WAL file does not change when that
    reader ends, so a file skipped for being unchanged was never folded in; it is checkpointed
    again until every frame it holds has been copied."""
    path = tmp_path / "behind.db"
    db = Database(f"sqlite:///{path}")
    try:
        mine = Checkpointer(background=False)
        mine.add(str(path.resolve()))
        CHECKPOINTER.remove(str(path.resolve()))
        _write_rows(db, 10)
        with closing(sqlite3.connect(path, isolation_level=None)) as reader:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM filler").fetchone()  # a snapshot of 10 rows
            _write_rows(db, 2000)
            assert mine.run_once() == 1
            assert path.stat().st_size < 1_000_000  # the reader still needs the WAL's frames
            reader.execute("COMMIT")
        wal = (path.parent / "behind.db-wal").stat()
        assert mine.run_once() == 1  # nothing wrote since, and yet it runs: now they go
        assert path.stat().st_size > 5_000_000
        assert (path.parent / "behind.db-wal").stat().st_mtime_ns == wal.st_mtime_ns
        assert mine.run_once() == 0  # all the WAL holds is in the database: nothing to do
        mine.remove(str(path.resolve()))
    finally:
        db.dispose()


def test_the_shared_thread_checkpoints_every_open_database(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    db = Database(f"sqlite:///{path}")
    try:
        _write_rows(db, 2000)
        deadline = time.monotonic() + 20
        while path.stat().st_size < 5_000_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_size > 5_000_000
    finally:
        db.dispose()
    assert str(path.resolve()) not in CHECKPOINTER._dbs  # disposed: no longer watched
