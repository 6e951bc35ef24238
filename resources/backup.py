"""A backup directory: the database copy and the files that go with it, sealed, plus a manifest.

Layout (the directory 0700, every file 0600)::

    manifest.json                   format, database kind, time, audit head, schema revision,
                                    scrypt parameters, key check, each file's SHA-256, HMAC
    database.sqlite.sealed          or database.pgdump.sealed (a pg_dump custom archive)
    keys.json.sealed                the key file (or the FHIRSCHED_KEYS value)
    signing-key.json.sealed         the id_token signing key, when it is a file
    audit-checkpoints.jsonl.sealed  the audit checkpoints, when there are any

Every file but the manifest is sealed under the passphrase (``security/backup_seal.py``), and
the manifest is written last: a directory without one is an unfinished backup. Restoring
checks the passphrase, the manifest's HMAC and every file's digest before it writes
anything, then opens each file into a temporary file beside its destination and renames it
into place; the database goes first, in one rename (SQLite) or one transaction (PostgreSQL),
so a failure leaves the destination as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy.engine import make_url

from resources.sql.backup import (
    CopyFailed,
    Snapshot,
    copy_out,
    is_empty,
    restore_postgresql,
    restore_sqlite,
    sqlite_file,
)
from security.backup_seal import BackupKey, SealError, open_file, seal_file

__all__ = ["FORMAT", "MANIFEST", "Backup", "BackupError", "open_backup", "write_backup"]

FORMAT = "fhir-sched-backup"
VERSION = 1
MANIFEST = "manifest.json"
_DATABASE = {"sqlite": "database.sqlite", "postgresql": "database.pgdump"}
_SEALED = ".sealed"


class BackupError(Exception):
    """The backup cannot be written or restored; the message is one line for the operator."""


def _private_dir(directory: Path) -> None:
    """``directory`` created 0700 (as the database's own directory is), and empty."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise BackupError(f"{directory} is not empty; name a new directory for each backup")
    directory.chmod(0o700)


@contextmanager
def _new_file(path: Path) -> Iterator[IO[bytes]]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def write_backup(
    directory: Path, *, url: str, key: BackupKey, files: dict[str, bytes]
) -> dict[str, Any]:
    """Copy the database at ``url`` (online) and ``files`` (name → content, read by the caller
    before the copy began) into the new directory ``directory``, sealed under ``key``.
    Returns the manifest."""
    _private_dir(directory)
    try:
        return _write(directory, url=url, key=key, files=files)
    except BaseException:
        for written in directory.iterdir():  # no half backup left to be mistaken for one
            written.unlink()
        raise


def _write(directory: Path, *, url: str, key: BackupKey, files: dict[str, bytes]) -> dict[str, Any]:
    digests: dict[str, dict[str, Any]] = {}

    def seal(name: str, source: IO[bytes]) -> None:
        path = directory / (name + _SEALED)
        with _new_file(path) as target:
            digest = seal_file(key, name, source, target)
        digests[path.name] = {"sha256": digest, "bytes": path.stat().st_size}

    for name, content in sorted(files.items()):
        with tempfile.SpooledTemporaryFile(max_size=1 << 20) as source:
            source.write(content)
            source.seek(0)
            seal(name, source)
    snapshot: Snapshot | None = None
    kind = make_url(url).get_backend_name()
    try:
        snapshot = copy_out(url, lambda stream: seal(_DATABASE[kind], stream))
    except CopyFailed as exc:
        raise BackupError(str(exc)) from exc
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "database": snapshot.kind,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "audit_head_seq": snapshot.audit_head,
        "schema_revision": snapshot.revision,
        "kdf": key.kdf(),
        "key_check": key.check_value(),
        "files": digests,
    }
    if snapshot.schema is not None:
        manifest["postgresql_schema"] = snapshot.schema
    manifest["mac"] = key.mac(_canonical(manifest))
    with _new_file(directory / MANIFEST) as fh:
        fh.write(json.dumps(manifest, indent=2).encode() + b"\n")
    return manifest


@dataclass(frozen=True, slots=True)
class Backup:
    """A backup whose passphrase, manifest and files have been checked."""

    directory: Path
    manifest: dict[str, Any]
    key: BackupKey

    @property
    def kind(self) -> str:
        return str(self.manifest["database"])

    def names(self) -> list[str]:
        """The files other than the database (``keys.json``, …)."""
        database = _DATABASE[self.kind]
        return sorted(
            n.removesuffix(_SEALED) for n in self.manifest["files"] if not n.startswith(database)
        )

    def open_into(self, name: str, target: IO[bytes]) -> None:
        try:
            with (self.directory / (name + _SEALED)).open("rb") as source:
                open_file(self.key, name, source, target)
        except SealError as exc:
            raise BackupError(f"{name}: {exc}") from exc

    def read(self, name: str) -> bytes:
        with tempfile.SpooledTemporaryFile(max_size=1 << 20) as out:
            self.open_into(name, out)
            out.seek(0)
            return out.read()

    def restore(self, *, url: str, files: dict[str, Path], force: bool) -> None:
        """Restore the database into ``url`` and each named file to its path; an existing
        database or file is replaced only with ``force``. All or nothing (module docstring)."""
        _refuse_overwrites(url, files.values(), force=force)
        with ExitStack() as cleanup:
            staged = {n: cleanup.enter_context(self._staged(n, p)) for n, p in files.items()}
            try:
                self._restore_database(url, force=force)
            except CopyFailed as exc:
                raise BackupError(str(exc)) from exc
            for name, path in files.items():
                os.replace(staged[name], path)

    @contextmanager
    def _staged(self, name: str, path: Path) -> Iterator[Path]:
        """``name`` opened into a temporary file beside ``path``; removed unless renamed."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.restore-{secrets.token_hex(4)}")
        try:
            with _new_file(temp) as fh:
                self.open_into(name, fh)
            yield temp
        finally:
            temp.unlink(missing_ok=True)

    def _restore_database(self, url: str, *, force: bool) -> None:
        name = _DATABASE[self.kind]
        if self.kind == "sqlite":
            with self._staged(name, sqlite_file(url)) as temp:
                restore_sqlite(url, temp)
            return
        with tempfile.TemporaryDirectory(prefix="fhir-sched-restore-") as work:  # 0700
            dump = Path(work) / name
            with _new_file(dump) as fh:
                self.open_into(name, fh)
            restore_postgresql(
                url, dump, source=str(self.manifest["postgresql_schema"]), force=force
            )


def _refuse_overwrites(url: str, paths: Iterable[Path], *, force: bool) -> None:
    if force:
        return
    if not is_empty(url):
        raise BackupError("the configured database is not empty; pass --force to replace it")
    for path in paths:
        if path.exists():
            raise BackupError(f"{path} exists; pass --force to replace it")


def _read_manifest(directory: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(
            f"no {MANIFEST} in {directory}: not a backup, or an unfinished one"
        ) from None
    except ValueError:
        raise BackupError(f"{directory / MANIFEST} does not read as JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{directory} does not hold a fhir-sched backup")
    if manifest.get("version") != VERSION:
        raise BackupError(f"backup format version {manifest.get('version')} is not readable here")
    return manifest


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_backup(directory: Path, passphrase: str) -> Backup:
    """The backup in ``directory``, checked: :class:`security.backup_seal.WrongPassphrase`
    for a wrong passphrase, :class:`BackupError` for a manifest or file that is not the one
    written."""
    manifest = _read_manifest(directory)
    try:
        key = BackupKey.from_kdf(passphrase, manifest["kdf"])
    except SealError as exc:
        raise BackupError(str(exc)) from exc
    key.check(str(manifest.get("key_check")))  # WrongPassphrase
    if key.mac(_canonical(manifest)) != manifest.get("mac"):
        raise BackupError(f"{MANIFEST} was altered after the backup was written")
    if manifest.get("database") not in _DATABASE:
        raise BackupError(f"unknown database kind {manifest.get('database')!r}")
    if _DATABASE[manifest["database"]] + _SEALED not in manifest["files"]:
        raise BackupError(f"{MANIFEST} names no database file")
    for name, expected in manifest["files"].items():
        path = directory / name
        if path.parent != directory:
            raise BackupError(f"{MANIFEST} names a file outside the backup")
        if not path.is_file():
            raise BackupError(f"{name} is missing from {directory}")
        if _file_digest(path) != expected["sha256"]:
            raise BackupError(f"{name} is damaged (its SHA-256 is not the manifest's)")
    return Backup(directory, manifest, key)
