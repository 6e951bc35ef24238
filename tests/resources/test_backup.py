"""A backup directory is checked whole before anything is restored from it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import uuid
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import text

from resources.backup import BackupError, open_backup, write_backup
from resources.sql.backup import CopyFailed, copy_out, restore_postgresql
from resources.sql.engine import Database
from security.backup_seal import BackupKey, WrongPassphrase
from tests.conftest import PG_URL

PASSPHRASE = "a passphrase"


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    source = tmp_path / "source.db"
    with closing(sqlite3.connect(source)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES ('row')")
        conn.commit()
    out = tmp_path / "backup"
    key = BackupKey.new(PASSPHRASE, n=2**10)
    write_backup(out, url=f"sqlite:///{source}", key=key, files={"keys.json": b"{}"})
    return out


def test_a_backup_opens_and_restores(backup_dir: Path, tmp_path: Path) -> None:
    found = open_backup(backup_dir, PASSPHRASE)
    assert found.kind == "sqlite" and found.names() == ["keys.json"]
    target = tmp_path / "restored" / "db.sqlite"
    found.restore(
        url=f"sqlite:///{target}", files={"keys.json": target.with_name("k")}, force=False
    )
    with closing(sqlite3.connect(target)) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [("row",)]
    assert target.with_name("k").read_bytes() == b"{}"
    assert sorted(p.name for p in target.parent.iterdir()) == ["db.sqlite", "k"]  # no temp left


def _edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_wrong_passphrase_is_refused(backup_dir: Path) -> None:
    with pytest.raises(WrongPassphrase):
        open_backup(backup_dir, "another")


def test_an_altered_manifest_is_refused(backup_dir: Path) -> None:
    _edit_manifest(backup_dir, audit_head_seq=10**6)
    with pytest.raises(BackupError, match="altered"):
        open_backup(backup_dir, PASSPHRASE)


def test_a_damaged_file_is_refused_before_anything_is_written(
    backup_dir: Path, tmp_path: Path
) -> None:
    sealed = backup_dir / "database.sqlite.sealed"
    data = bytearray(sealed.read_bytes())
    data[-1] ^= 1
    sealed.write_bytes(bytes(data))
    with pytest.raises(BackupError, match="damaged"):
        open_backup(backup_dir, PASSPHRASE)


def test_an_unfinished_backup_is_refused(backup_dir: Path) -> None:
    (backup_dir / "manifest.json").unlink()
    with pytest.raises(BackupError, match="unfinished"):
        open_backup(backup_dir, PASSPHRASE)


def test_a_backup_goes_into_a_new_directory(backup_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="not empty"):
        write_backup(
            backup_dir,
            url=f"sqlite:///{tmp_path / 'source.db'}",
            key=BackupKey.new(PASSPHRASE, n=2**10),
            files={},
        )


def _parked(admin: Database) -> set[str]:
    with admin.engine.begin() as conn:
        query = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'fhirsched_parked_%'"
        return set(conn.execute(text(query)).scalars())


def test_a_failed_postgresql_restore_changes_nothing(tmp_path: Path) -> None:
    """The script fails on its last table (a type the target lacks): the transaction takes
    back the tables before it, the schemas renamed meanwhile and the parked live one."""
    tag = uuid.uuid4().hex[:8]
    src, dst, extra = f"bk_src_{tag}", f"bk_dst_{tag}", f"bk_extra_{tag}"
    admin = Database(PG_URL)
    with admin.engine.begin() as conn:
        for statement in (
            f"CREATE SCHEMA {src}",
            f"CREATE SCHEMA {dst}",
            f"CREATE SCHEMA {extra}",
            f"CREATE TYPE {extra}.mood AS ENUM ('calm')",
            f"CREATE TABLE {src}.alembic_version (version_num text)",
            f"CREATE TABLE {src}.audit_head (id int, seq bigint)",
            f"CREATE TABLE {src}.kept (x int)",
            f"INSERT INTO {src}.kept VALUES (1)",
            f"CREATE TABLE {src}.zz_last (m {extra}.mood)",
        ):
            conn.execute(text(statement))
    dump = tmp_path / "dump"
    try:
        with dump.open("wb") as out:
            copy_out(
                f"{PG_URL}?options=-csearch_path%3D{src}", lambda s: shutil.copyfileobj(s, out)
            )
        with admin.engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {extra} CASCADE"))
        parked = _parked(admin)
        with pytest.raises(CopyFailed, match="does not exist"):
            restore_postgresql(
                f"{PG_URL}?options=-csearch_path%3D{dst}", dump, source=src, force=False
            )
        with admin.engine.begin() as conn:
            assert conn.execute(text(f"SELECT x FROM {src}.kept")).scalars().all() == [1]
            left = conn.execute(
                text(
                    "SELECT nspname, (SELECT count(*) FROM pg_class WHERE relnamespace = n.oid) "
                    "FROM pg_namespace n WHERE nspname LIKE :tag"
                ),
                {"tag": f"%{tag}"},
            ).all()
        assert sorted(left) == [(dst, 0), (src, 4)]
        assert _parked(admin) == parked
    finally:
        with admin.engine.begin() as conn:
            for schema in (src, dst, extra):
                conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()
