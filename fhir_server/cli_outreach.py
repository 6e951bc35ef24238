"""``fhir-sched outbox``: the automated texts (reminders, waitlist offers, notices) as
``outreach_message`` holds them, newest last.

Examples::

    fhir-sched outbox                      # every text: time, kind, state, masked number, body
    fhir-sched outbox --to +14135550101    # only the texts to one number
    fhir-sched outbox --unmasked           # full numbers

With the local outbox provider (``FHIRSCHED_SMS_PROVIDER=outbox``, the default and the demo's)
nothing leaves the machine: this is what would have been sent. The texts hold PHI, so the
command is recorded in the audit log before anything is shown.
"""

from __future__ import annotations

import click

from fhir_server.cli_auth import open_database
from fhir_server.console_trail import record
from fhir_server.settings import Settings

__all__ = ["outbox"]


class _Reading:
    """The command only reads: it has no provider to send through."""

    def __init__(self, name: str) -> None:
        self.name = name

    def send(self, to: str, body: str) -> str:
        raise RuntimeError("fhir-sched outbox sends nothing")


@click.command("outbox")
@click.option("--to", default=None, help="Only the texts to this number")
@click.option("--unmasked", is_flag=True, help="Show whole numbers (default: last two digits)")
def outbox(to: str | None, unmasked: bool) -> None:
    """Show the automated texts: reminders, waitlist offers and notices, with their state
    (sent, skipped for an opted-out number, failed, unknown after a crash)."""
    from base.phones import mask_phone
    from outreach.sending import Outreach
    from resources.store import Store
    from scheduling.config import load_clinic_config

    settings = Settings()
    clinic = load_clinic_config(settings.clinic_file) if settings.clinic_file else None
    database, ring = open_database(keys=True)
    assert ring is not None
    try:
        record(
            database,
            ring,
            "export",
            "outbox",
            description="unmasked numbers" if unmasked else None,
            settings=settings,
        )
        reader = Outreach(
            db=database,
            store=Store(ring, base_url=settings.fhir_base),
            keys=ring,
            sender=_Reading(settings.sms_provider),
            server=settings.fhir_base,
            audit=False,
            region=clinic.phone_region if clinic is not None else None,  # --to as texts go
        )
        if settings.sms_provider == "outbox":
            click.echo(
                "(provider: the local outbox; these texts were kept here, not sent to anyone)"
            )
        else:
            click.echo(f"(provider: {settings.sms_provider})")
        for m in reader.messages(to=to):
            number = m.to if unmasked else mask_phone(m.to)
            click.echo(f"{m.created:%Y-%m-%d %H:%M:%S} {m.kind:<10} {m.state:<8} {number} {m.body}")
    finally:
        database.dispose()
