"""The SQLite database's files on disk are the owner's alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from resources.sql.engine import Database, migrate


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_database_files_are_0600_in_a_0700_directory(tmp_path: Path) -> None:
    umask = os.umask(0o022)  # a login shell's usual umask: SQLite alone would make them 0644
    data = tmp_path / "data"
    db = Database(f"sqlite:///{data}/fhir-sched.db")
    try:
        migrate(db)
        with db.write() as conn:  # a commit: the -wal and -shm files exist now
            conn.execute(text("CREATE TABLE probe (x INTEGER)"))
        files = [data / "fhir-sched.db", data / "fhir-sched.db-wal", data / "fhir-sched.db-shm"]
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert _mode(data) == 0o700
    finally:
        db.dispose()
        os.umask(umask)


def test_files_left_readable_to_others_are_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    Database(f"sqlite:///{path}").dispose()
    assert _mode(path) == 0o600


def test_commits_reach_the_disk_unless_the_url_says_otherwise(tmp_path: Path) -> None:
    """synchronous=FULL (2): a committed booking survives a power cut; NORMAL (1) only when
    the database URL asks for it."""
    for url, level in (
        (f"sqlite:///{tmp_path}/a.db", 2),
        (f"sqlite:///{tmp_path}/b.db?synchronous=normal", 1),
        (f"sqlite:///{tmp_path}/c.db?synchronous=FULL", 2),
    ):
        db = Database(url)
        try:
            with db.write() as conn:
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == level, url
        finally:
            db.dispose()
    with pytest.raises(ValueError, match="use full or normal"):
        Database(f"sqlite:///{tmp_path}/d.db?synchronous=off")
    assert not (tmp_path / "b.db?synchronous=normal").exists()
