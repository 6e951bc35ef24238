"""``fhir-sched agent …``: the booking agent from the console.

Examples::

    fhir-sched agent register          # its SMART client ($find and $book only) and its key
    fhir-sched agent chat              # a conversation in the terminal (the server must run)
    fhir-sched agent outbox            # the texts the local SMS provider kept (demo, tests)
"""

from __future__ import annotations

import click

from fhir_server.cli_auth import open_database
from fhir_server.console_trail import audited, record
from fhir_server.settings import Settings

__all__ = ["agent"]


@click.group()
def agent() -> None:
    """The booking agent: registration, a terminal chat, the local SMS outbox."""


@agent.command("register")
@audited("security", "agent register")
def agent_register() -> None:
    """Register the agent's SMART Backend Services client and make its signing key."""
    from fhir_server.agent_runtime import register_agent

    settings = Settings()
    database, _ = open_database(keys=False)
    try:
        with database.write() as conn:
            added = register_agent(conn, settings)
    finally:
        database.dispose()
    state = "registered" if added else "already registered"
    click.echo(
        f"client {settings.agent_client_id} {state} (scopes: Appointment $find and $book); "
        f"its key: {settings.agent_key_path}"
    )


@agent.command("chat")
@click.option("--sms-from", default=None, help="Talk as a text from this number (else web chat)")
@audited("application", "agent chat")
def agent_chat(sms_from: str | None) -> None:
    """Talk with the agent in this terminal, as a patient would (Ctrl-D to end).

    The agent reaches the server over HTTP, so `fhir-sched serve` or `demo` must be running."""
    from fhir_server.agent_runtime import build_agent
    from scheduling.config import load_clinic_config

    settings = Settings()
    if settings.clinic_file is None:
        from fhir_server.demo import DEMO_CLINIC

        settings = settings.model_copy(update={"clinic_file": DEMO_CLINIC})
    assert settings.clinic_file is not None
    database, ring = open_database(keys=True)
    assert ring is not None
    try:
        bot = build_agent(
            settings, db=database, keys=ring, clinic=load_clinic_config(settings.clinic_file)
        )
        if bot is None:
            raise click.ClickException(
                "the agent is not registered here: run `fhir-sched agent register` (the demo "
                "registers it)"
            )
        click.echo(f"(answering: {bot.model.label}; type your messages, Ctrl-D to end)")
        if sms_from:
            row = bot.accept_sms(sms_from, "hello")
            cid = row.id
            click.echo(f"agent> {bot.answer(cid, 'hello').replies[0]}")
        else:
            start, hello = bot.start("cli")
            cid = start.id
            click.echo(f"agent> {hello}")
        while True:
            try:
                text = click.prompt("you", prompt_suffix="> ")
            except (EOFError, click.Abort):
                click.echo()
                break
            for reply in bot.receive(cid, text).replies:
                click.echo(f"agent> {reply}")
        click.echo(f"(conversation {cid})")
    finally:
        database.dispose()


@agent.command("outbox")
@click.option("--to", default=None, help="Only the texts to this number")
def agent_outbox(to: str | None) -> None:
    """Show the texts the local SMS provider kept instead of sending (they hold PHI: the
    command is recorded in the audit log before anything is shown)."""
    from agent.sms import normalize_phone
    from fhir_server.agent_runtime import agent_store

    database, ring = open_database(keys=True)
    assert ring is not None
    try:
        record(database, ring, "export", "agent outbox")
        store = agent_store(database, ring)
        for line in store.outbox(normalize_phone(to) if to else None):
            click.echo(f"{line.at:%Y-%m-%d %H:%M:%S} to {line.to}: {line.body}")
    finally:
        database.dispose()
