"""``fhir-sched hl7 …``: the MLLP listener and the staff's tools for the message store.

Examples::

    fhir-sched hl7 listen                       # MLLP on 127.0.0.1:2575 (FHIRSCHED_HL7_*)
    fhir-sched hl7 messages --status failed     # what needs review (no message content)
    fhir-sched hl7 show 0b6f…                    # one message, its ACK and why it failed
    fhir-sched hl7 replay 0b6f…                  # apply a failed message again, after the fix
    fhir-sched hl7 replay --all-failed
"""

from __future__ import annotations

import asyncio

import click

from fhir_server.cli_auth import open_database
from fhir_server.console_trail import audited, record
from fhir_server.settings import Settings
from hl7_bridge.messages import HL7_MESSAGE
from scheduling.config import ClinicConfig

__all__ = ["hl7"]


def _messages(ids: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(HL7_MESSAGE, m) for m in ids]


@click.group()
def hl7() -> None:
    """HL7 v2 bridge: MLLP listener, message review and replay."""


def _clinic(settings: Settings) -> ClinicConfig | None:
    from scheduling.config import load_clinic_config

    return load_clinic_config(settings.clinic_file) if settings.clinic_file else None


@hl7.command("listen")
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1)")
@click.option("--port", type=int, default=None, help="Port (default 2575)")
def listen(host: str | None, port: int | None) -> None:
    """Accept SIU messages over MLLP and send outbound ones, until interrupted."""
    from base.logging import configure_logging
    from fhir_server.heap import settle_heap
    from fhir_server.hl7_runtime import install_outbox, start_bridge
    from fhir_server.replies_runtime import install_outreach_watch
    from resources.store import Store

    settings = Settings()
    if host is not None:
        settings.hl7_host = host
    if port is not None:
        settings.hl7_port = port
    configure_logging(settings.log_level)
    database, ring = open_database(keys=True)
    assert ring is not None
    store = Store(ring, base_url=settings.fhir_base)
    install_outbox(settings, store)
    install_outreach_watch(store, _clinic(settings))
    settle_heap()

    async def run() -> None:
        bridge = await start_bridge(
            settings, db=database, store=store, clinic=_clinic(settings), own_loop=True
        )
        click.echo(f"MLLP listening on {settings.hl7_host}:{bridge.port}", err=True)
        for endpoint in settings.hl7_endpoints:
            click.echo(f"sending to {endpoint.name} at {endpoint.host}:{endpoint.port}", err=True)
        try:
            await asyncio.Event().wait()
        finally:
            await bridge.close()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        database.dispose()


@hl7.command("messages")
@click.option("--status", "statuses", multiple=True, help="failed, conflict, rejected, applied…")
@click.option("--direction", type=click.Choice(["in", "out"]), default=None)
@click.option("--limit", type=int, default=100, show_default=True)
@click.option(
    "--warnings",
    "warned",
    is_flag=True,
    help="Only messages applied with warnings (unknown status, unit, reused control id…), "
    "then a count of each warning",
)
@audited("query", "hl7 messages")
def messages(statuses: tuple[str, ...], direction: str | None, limit: int, warned: bool) -> None:
    """List stored messages (ids, sender, control id, event, status, warning codes; never
    their content; `hl7 show ID` gives a warning's words)."""
    from collections import Counter

    from hl7_bridge.messages import MessageStore

    database, ring = open_database(keys=True)
    assert ring is not None
    try:
        with database.read() as conn:
            rows = MessageStore(ring).listing(
                conn, direction=direction, statuses=list(statuses), limit=limit, warned=warned
            )
    finally:
        database.dispose()
    counts: Counter[str] = Counter()
    for r in rows:
        counts.update((r.warnings or "").split())
        click.echo(
            f"{r.id}  {r.created:%Y-%m-%d %H:%M:%S}  {r.direction:3}  {r.peer:20}  "
            f"{r.control_id:20}  {r.event:12}  {r.status:10}  {r.ack_code or '':2}  "
            f"{r.error or ''}  {r.appointment_id or ''}  {r.warnings or ''}".rstrip()
        )
    if warned:
        click.echo(f"{len(rows)} message(s) with warnings")
        for code, n in sorted(counts.items()):
            click.echo(f"  {code}: {n}")


@hl7.command("show")
@click.argument("message_id")
def show(message_id: str) -> None:
    """One message as received, the ACK sent and why it failed (contains PHI)."""
    from hl7_bridge.messages import MessageStore

    database, ring = open_database(keys=True)
    assert ring is not None
    about = [(HL7_MESSAGE, message_id)]
    try:
        store = MessageStore(ring)
        with database.read() as conn:
            row = store.get(conn, message_id)
        if row is None:
            record(
                database,
                ring,
                "export",
                "hl7 show",
                outcome="minor",
                description="no such message",
                identifiers=about,
            )
            raise click.ClickException(f"no message {message_id}")
        opened = store.open(row)
        record(database, ring, "export", "hl7 show", identifiers=about)  # before it is shown
    finally:
        database.dispose()
    click.echo(f"status: {row.status}  ack: {row.ack_code}  from: {opened.address}")
    if opened.detail:
        click.echo(f"why: {opened.detail}")
    for words in opened.warnings:
        click.echo(f"warning: {words}")
    click.echo(opened.message.decode("utf-8", "replace").replace("\r", "\n"))
    if opened.ack:
        click.echo("--- ack ---")
        click.echo(opened.ack.decode("utf-8", "replace").replace("\r", "\n"))


@hl7.command("replay")
@click.argument("message_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Replay every failed inbound message")
@audited(
    "import",
    "hl7 replay",
    about=lambda kw: {"identifiers": [(HL7_MESSAGE, m) for m in kw.get("message_ids") or ()]},
)
def replay(message_ids: tuple[str, ...], all_failed: bool) -> None:
    """Apply failed inbound messages again (after the cause is fixed)."""
    from base.logging import configure_logging
    from fhir_server.hl7_runtime import bridge_config, install_outbox
    from fhir_server.replies_runtime import install_outreach_watch
    from hl7_bridge.listener import Listener
    from hl7_bridge.messages import MessageStore
    from resources.store import Store

    if not message_ids and not all_failed:
        raise click.UsageError("name message ids or pass --all-failed")
    settings = Settings()
    configure_logging(settings.log_level)
    database, ring = open_database(keys=True)
    assert ring is not None
    clinic = _clinic(settings)
    store = Store(ring, base_url=settings.fhir_base)
    install_outbox(settings, store)  # a replayed change reaches the other EMRs too
    install_outreach_watch(store, clinic)
    listener = Listener(
        database, ring, store, clinic=clinic, config=bridge_config(settings, clinic)
    )
    failed = 0
    try:
        ids = list(message_ids)
        if all_failed:
            with database.read() as conn:
                rows = MessageStore(ring).listing(
                    conn, direction="in", statuses=["failed"], limit=100_000
                )
            ids += [r.id for r in rows]
        for message_id in ids:
            try:
                status = listener.replay(message_id)
            except (LookupError, ValueError) as exc:
                click.echo(f"{message_id}: {exc}", err=True)
                failed += 1
                continue
            failed += status == "failed"
            click.echo(f"{message_id}: {status}")
    finally:
        database.dispose()
    if failed:
        raise SystemExit(1)
