"""A backup directory is checked whole before anything is restored from it."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from resources.backup import BackupError, open_backup, write_backup
from security.backup_seal import BackupKey, WrongPassphrase

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
