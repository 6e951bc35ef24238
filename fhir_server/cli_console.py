"""``fhir-sched console …``: the staff console served at ``/console``.

Examples::

    fhir-sched console register      # the public client `console` for this server's address
    FHIRSCHED_BASE_URL=https://clinic.example/fhir fhir-sched console register
"""

from __future__ import annotations

import click

from fhir_server.console_trail import audited
from fhir_server.settings import Settings

__all__ = ["console"]


@click.group()
def console() -> None:
    """The staff console (a SMART app of this server, at /console)."""


@console.command("register")
@audited("security", "console register")
def console_register() -> None:
    """Register the console's public client for this server's public address (idempotent:
    run again behind another address, it adds that redirect URI)."""
    from fhir_server.cli_auth import open_database
    from fhir_server.console_client import CLIENT_ID, redirect_uri, register_console
    from security.smart.registry import RegistryError

    settings = Settings()
    database, _ = open_database(keys=False)
    try:
        with database.write() as conn:
            done = register_console(conn, settings.public_root)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        database.dispose()
    click.echo(f"client {CLIENT_ID}: {done}; open {redirect_uri(settings.public_root)}")
