"""``fhir-sched audit verify``, ``checkpoint`` and ``export``: the compliance officer's commands
over the hash-chained audit log (``security/audit.py``, ``security/audit_checkpoint.py``).

Examples::

    fhir-sched audit verify                              # exit 1 and every finding
    fhir-sched audit verify --checkpoints collected.log  # against checkpoints kept elsewhere
    fhir-sched audit checkpoint                          # sign the head into the checkpoint file
    fhir-sched audit export --since 2026-01-01 > audit.ndjson
    fhir-sched audit export --since 2026-01-01 --patient Patient/123
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson
from sqlalchemy import select

from fhir_server.cli_auth import open_database
from fhir_server.console_trail import audited, record
from fhir_server.settings import Settings
from resources.fhirdate import as_utc
from resources.sql.engine import Database
from security.crypto import KeyRing

if TYPE_CHECKING:
    from security.audit_checkpoint import CheckpointLog

__all__ = ["audit"]


@click.group()
def audit() -> None:
    """The audit log: verify its chain, checkpoint its head, export records."""


def _open() -> tuple[Database, KeyRing]:
    database, ring = open_database(keys=True)
    assert ring is not None
    return database, ring


def _checkpoints(path: Path | None = None) -> CheckpointLog:
    from security.audit_checkpoint import CheckpointLog

    settings = Settings()
    return CheckpointLog(
        path or settings.audit_checkpoint_path, syslog=settings.audit_checkpoint_syslog
    )


@audit.command("verify")
@click.option(
    "--checkpoints",
    "checkpoint_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Check against the checkpoints in this file (default: FHIRSCHED_AUDIT_CHECKPOINT_FILE)",
)
@audited("audit", "audit verify")
def audit_verify(checkpoint_file: Path | None) -> None:
    """Check every record is present, in order and unedited, the search index is the one the
    records call for, and every checkpoint's record is still there; exit 1 if anything is
    not, with a finding for each."""
    from security.audit_checkpoint import verify_against

    checkpoints = _checkpoints(checkpoint_file)
    database, ring = _open()
    try:
        with database.read() as conn:
            report = verify_against(conn, ring, checkpoints)
    finally:
        database.dispose()
    out: dict[str, object] = {
        "records": report.records,
        "intact": report.intact,
        "checkpoints": report.checkpoints,
        "findings": [f.as_dict() for f in report.findings],
    }
    if not report.intact:
        out |= {"broken_at": report.broken_at, "reason": report.reason}
    click.echo(json.dumps(out))
    if not report.intact:
        sys.exit(1)


@audit.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the chain's head into the checkpoint file (and syslog, if configured) and print
    the line: `audit verify` then finds any record up to it deleted."""
    from security.audit_checkpoint import Checkpoint, read_head

    checkpoints = _checkpoints()
    database, ring = _open()
    try:
        record(database, ring, "audit", "audit checkpoint")  # first: the checkpoint covers it
        with database.read() as conn:
            head = read_head(conn)
    finally:
        database.dispose()
    click.echo(checkpoints.write(ring, Checkpoint.now(head)))


@audit.command("export")
@click.option("--since", required=True, help="Records on or after this date or instant")
@click.option("--patient", help="Only records about this Patient (Patient/<id>)")
def audit_export(since: str, patient: str | None) -> None:
    """Write AuditEvents as NDJSON (one per line, oldest first) to standard output."""
    from resources.sql.tables import AuditIndex, AuditLog
    from security.audit import digest, open_event

    try:
        start = datetime.fromisoformat(since)
    except ValueError as exc:
        raise click.BadParameter("use a date (2026-01-31) or an instant with an offset") from exc
    start = as_utc(start)  # an offset-less --since is read in UTC
    database, ring = _open()
    query = select(AuditLog).where(AuditLog.recorded >= start).order_by(AuditLog.seq)
    if patient:
        ref = patient if patient.startswith("Patient/") else f"Patient/{patient}"
        hits = select(AuditIndex.seq).where(
            AuditIndex.param == "patient", AuditIndex.digest == digest(ring, "patient", ref)
        )
        query = query.where(AuditLog.seq.in_(hits))
    out = sys.stdout.buffer
    try:
        record(database, ring, "audit", "audit export", patient=patient)  # before it is shown
        with database.read() as conn:
            for row in conn.execute(query.execution_options(yield_per=500)):
                out.write(orjson.dumps(open_event(ring, row)) + b"\n")
    finally:
        database.dispose()
