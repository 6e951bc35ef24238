"""``fhir-sched backup DIR`` and ``fhir-sched restore DIR``: the database, its keys and the
audit checkpoints, copied while the server runs and sealed under a passphrase.

Examples::

    fhir-sched backup /backups/2026-03-01          # prompts for the passphrase twice
    FHIRSCHED_BACKUP_PASSPHRASE=… fhir-sched backup /backups/nightly-42
    fhir-sched backup DIR --passphrase-file /etc/fhir-sched/backup-passphrase
    fhir-sched restore /backups/2026-03-01         # into the configured database and key file
    fhir-sched restore DIR --force                 # replace what is there (server stopped)

What the directory holds and how a restore stays all-or-nothing: ``resources/backup.py``.
Both commands leave an AuditEvent (DICOM 110106 Export, 110107 Import): the backup in the
live chain before it copies anything, so the copy holds its own record; the restore in the
restored chain, followed by a checkpoint of the new head.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fhir_server.cli_auth import open_database
from fhir_server.settings import Settings

if TYPE_CHECKING:  # imported where used: every `fhir-sched` command loads this module
    from sqlalchemy import Connection

    from resources.backup import Backup
    from security.crypto import KeyRing

__all__ = ["backup", "restore"]

PASSPHRASE_ENV = "FHIRSCHED_BACKUP_PASSPHRASE"  # noqa: S105 - a name, not a passphrase
KEYS, SIGNING_KEY, CHECKPOINTS = "keys.json", "signing-key.json", "audit-checkpoints.jsonl"

_passphrase_file = click.option(
    "--passphrase-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"Read the passphrase from this file's first line (else ${PASSPHRASE_ENV}, else a prompt)",
)


def _passphrase(file: Path | None, *, confirm: bool) -> str:
    if file is not None:
        lines = file.read_text().splitlines()
        value = lines[0] if lines else ""
    else:
        value = os.environ.get(PASSPHRASE_ENV) or click.prompt(
            "Backup passphrase", hide_input=True, confirmation_prompt=confirm
        )
    if not value:
        raise click.ClickException("the passphrase is empty")
    return value


def _record(
    conn: Connection,
    ring: KeyRing,
    settings: Settings,
    kind: str,
    *,
    outcome: str = "success",
    why: str | None = None,
) -> None:
    """One AuditEvent for this command, inside ``conn``'s write transaction."""
    from sqlalchemy.exc import DBAPIError

    from fhir_server.console_trail import console_event
    from security.audit import append

    family = {"backup": "export", "restore": "import"}[kind]
    event = console_event(family, kind, settings.fhir_base, outcome=outcome, description=why)
    try:
        append(conn, ring, [event])
    except DBAPIError as exc:
        raise click.ClickException("the audit log refused the record") from exc


def _checkpoint(conn: Connection, ring: KeyRing, settings: Settings) -> int:
    """Sign the chain's head into the checkpoint file; returns its seq."""
    from security.audit_checkpoint import Checkpoint, CheckpointLog, read_head

    head = read_head(conn)
    log = CheckpointLog(settings.audit_checkpoint_path, syslog=settings.audit_checkpoint_syslog)
    log.write(ring, Checkpoint.now(head))
    return head[0]


def _read_shared(path: Path) -> bytes:
    """A file others append to under ``flock`` (the checkpoints), read between their lines."""
    with path.open("rb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        return fh.read()


def _companions(settings: Settings) -> dict[str, bytes]:
    """The files a restored database needs, read before its copy begins: every checkpoint in
    them is then at or below the copy's head, so `audit verify` after a restore finds none
    beyond it."""
    files = {
        KEYS: settings.keys.get_secret_value().encode()
        if settings.keys
        else settings.key_file.read_bytes()
    }
    if settings.signing_key is None and settings.signing_key_path.exists():
        files[SIGNING_KEY] = settings.signing_key_path.read_bytes()
    if settings.audit_checkpoint_path.exists():
        files[CHECKPOINTS] = _read_shared(settings.audit_checkpoint_path)
    return files


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@_passphrase_file
def backup(directory: Path, passphrase_file: Path | None) -> None:
    """Copy the database (online: the server may run), its key file, signing key and audit
    checkpoints into the new DIRECTORY, sealed under a passphrase."""
    from resources.backup import BackupError, write_backup
    from security.backup_seal import BackupKey

    settings = Settings()
    if directory.exists() and any(directory.iterdir()):
        raise click.ClickException(f"{directory} is not empty; name a new directory")
    key = BackupKey.new(_passphrase(passphrase_file, confirm=True))
    database, ring = open_database(keys=True)
    assert ring is not None
    try:
        with database.write() as conn:
            _record(conn, ring, settings, "backup")
        with database.read() as conn:
            _checkpoint(conn, ring, settings)
        try:
            manifest = write_backup(
                directory, url=settings.database_url, key=key, files=_companions(settings)
            )
        except (BackupError, OSError) as exc:
            with database.write() as conn:
                _record(conn, ring, settings, "backup", outcome="serious", why=type(exc).__name__)
            raise click.ClickException(str(exc)) from exc
    finally:
        database.dispose()
    summary = {
        "backup": str(directory),
        "database": manifest["database"],
        "audit_head_seq": manifest["audit_head_seq"],
        "files": sorted(manifest["files"]),
    }
    click.echo(json.dumps(summary))


def _destinations(settings: Settings, found: Backup) -> dict[str, Path]:
    """Where each backed-up file goes; keys and the signing key given through the
    environment stay there (the keys must then be the backup's)."""
    from security.crypto import KeyRing

    names = found.names()
    out: dict[str, Path] = {}
    if settings.keys is None:
        out[KEYS] = settings.key_file
    else:
        held = KeyRing.from_document(json.loads(found.read(KEYS)))
        given = KeyRing.from_document(json.loads(settings.keys.get_secret_value()))
        if given.index_secret != held.index_secret or not held.keks.items() <= given.keks.items():
            raise click.ClickException(
                "FHIRSCHED_KEYS is not the backup's key ring; unset it to restore the key file"
            )
    if SIGNING_KEY in names and settings.signing_key is None:
        out[SIGNING_KEY] = settings.signing_key_path
    if CHECKPOINTS in names:
        out[CHECKPOINTS] = settings.audit_checkpoint_path
    return out


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@_passphrase_file
@click.option("--force", is_flag=True, help="Replace a database or key file already there")
def restore(directory: Path, passphrase_file: Path | None, force: bool) -> None:
    """Restore a backup into the configured database and key file locations, migrate it to
    the current schema and print a one-line JSON summary. Stop the server first."""
    from sqlalchemy.engine import make_url

    from resources.backup import BackupError, open_backup
    from security.backup_seal import WrongPassphrase

    settings = Settings()
    try:
        found = open_backup(directory, _passphrase(passphrase_file, confirm=False))
    except WrongPassphrase:
        raise click.ClickException("wrong passphrase for this backup") from None
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    configured = make_url(settings.database_url).get_backend_name()
    if configured != found.kind:
        raise click.ClickException(
            f"the backup is of a {found.kind} database; the configured one is {configured}"
        )
    destinations = _destinations(settings, found)
    try:
        found.restore(url=settings.database_url, files=destinations, force=force)
    except BackupError as exc:
        raise click.ClickException(f"{exc}; nothing was restored") from None
    except OSError as exc:  # a file that could not be written or renamed: it names which
        raise click.ClickException(str(exc)) from None
    database, ring = open_database(keys=True)  # migrates: the backup may be of an older schema
    assert ring is not None
    try:
        with database.write() as conn:
            _record(conn, ring, settings, "restore")
        with database.read() as conn:
            head = _checkpoint(conn, ring, settings)
            revision = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    finally:
        database.dispose()
    summary = {
        "restored": str(directory),
        "database": found.kind,
        "backup_created": found.manifest["created"],
        "backup_audit_head_seq": found.manifest["audit_head_seq"],
        "audit_head_seq": head,
        "schema_revision": {"backup": found.manifest["schema_revision"], "now": revision},
        "files": sorted(destinations),
    }
    click.echo(json.dumps(summary))
