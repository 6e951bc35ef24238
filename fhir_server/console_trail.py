"""AuditEvents for the console: every ``fhir-sched`` command that reads or changes stored data
leaves one, as every HTTP request does.

The agent is the console itself (client ``fhir-sched-console``) and the operating-system
account that ran the command, as ``console:<user>@<host>``. What the command did sets the
event's DICOM type (``security.balp.CONSOLE``: audit log used, export, import, query, security
configuration, application activity) and the command is its subtype, so a compliance officer
finds ``hl7 show`` and ``audit export`` beside the API's reads.

A command that shows stored data (``hl7 show``, ``audit export``) records the event before
anything is shown: no disclosure goes unrecorded. The others are recorded when they end, with
their outcome (a failed command is recorded as a minor failure with its message). The long-running
commands (``serve``, ``demo``, ``hl7 listen``) record nothing themselves: the server audits
each access it serves.
"""

from __future__ import annotations

import functools
import getpass
import socket
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

import click

from fhir_server.settings import Settings
from resources.sql.engine import Database
from security.audit import append
from security.balp import Actor, balp_event
from security.crypto import KeyRing

__all__ = ["CONSOLE_CLIENT", "audited", "console_event", "operator", "record"]

CONSOLE_CLIENT = "fhir-sched-console"
P = ParamSpec("P")
R = TypeVar("R")


def operator() -> str:
    """Who ran the command: the operating-system account and the host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's bare uid)
        user = "unknown"
    return f"console:{user}@{socket.gethostname()}"


def console_event(
    kind: str,
    command: str,
    server: str,
    *,
    outcome: str = "success",
    description: str | None = None,
    patient: str | None = None,
    identifiers: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """The console's AuditEvent for ``command`` (``kind``: a key of ``balp.CONSOLE``)."""
    return balp_event(
        kind=f"console-{kind}:{command}",
        actor=Actor(client_id=CONSOLE_CLIENT, user=operator()),
        server=server,
        outcome=outcome,
        description=description,
        patient=patient.removeprefix("Patient/") if patient else None,
        identifiers=identifiers,
    )


def record(
    database: Database,
    ring: KeyRing,
    kind: str,
    command: str,
    *,
    outcome: str = "success",
    description: str | None = None,
    patient: str | None = None,
    identifiers: list[tuple[str, str]] | None = None,
    settings: Settings | None = None,
) -> None:
    """Append the console event for ``command`` in a transaction of its own."""
    settings = settings or Settings()
    if not settings.audit_enabled:
        return
    event = console_event(
        kind,
        command,
        settings.fhir_base,
        outcome=outcome,
        description=description,
        patient=patient,
        identifiers=identifiers,
    )
    with database.write() as conn:
        append(conn, ring, [event])


def _failure(exc: BaseException) -> str | None:
    """The message of a command that failed; None if it ended well."""
    if isinstance(exc, SystemExit):
        return None if exc.code in (0, None) else f"exit status {exc.code}"
    if isinstance(exc, click.ClickException):
        return exc.format_message()
    return type(exc).__name__


def audited(
    kind: str,
    command: str,
    *,
    about: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Record the command when it ends, with its outcome. ``about`` turns the command's
    arguments into ``record``'s ``patient``/``identifiers``."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            extra = about(kwargs) if about is not None else {}
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                message = _failure(exc)
                if message is not None:
                    _record_apart(kind, command, outcome="minor", description=message, **extra)
                else:
                    _record_apart(kind, command, **extra)
                raise
            _record_apart(kind, command, **extra)
            return result

        return run

    return wrap


def _record_apart(kind: str, command: str, **kwargs: Any) -> None:
    """:func:`record` on a database and key ring of its own (the command's are closed)."""
    from fhir_server.cli_auth import open_database

    database, ring = open_database(keys=True)
    assert ring is not None
    try:
        record(database, ring, kind, command, **kwargs)
    finally:
        database.dispose()
