"""``fhir-sched client …``, ``fhir-sched user …`` and ``fhir-sched launch``: who may get tokens.

Examples::

    fhir-sched client add --name "Front desk app" --kind public \\
        --redirect-uri https://app.example/callback \\
        --scope "launch/patient openid fhirUser offline_access patient/*.rs"
    fhir-sched client add --name "EMR bridge" --kind asymmetric --jwks keys.json \\
        --scope "system/Appointment.cruds system/Patient.rs"
    fhir-sched user add --login desk1 --role front-desk --fhir-user Practitioner/abc
    fhir-sched user unblock desk1         # after too many wrong passwords
    fhir-sched launch --patient 123        # an EHR launch value for an app
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from sqlalchemy import Connection

from fhir_server.console_trail import audited
from fhir_server.settings import Settings
from resources.sql.engine import Database
from security.crypto import KeyRing

__all__ = ["client", "launch", "open_database", "user"]


def open_database(*, keys: bool) -> tuple[Database, KeyRing | None]:
    """The configured database (migrated) and, if asked for, the key ring: what every
    command that works on stored data starts from."""
    from fhir_server.keyring import KeysMissing, open_keys
    from resources.sql.engine import migrate

    settings = Settings()
    database = Database(settings.database_url)
    migrate(database)
    ring = None
    if keys:
        try:
            ring = open_keys(settings, database)
        except KeysMissing as exc:
            database.dispose()
            raise click.ClickException(str(exc)) from exc
    return database, ring


@contextmanager
def _unit(*, keys: bool = False) -> Iterator[tuple[Connection, KeyRing | None]]:
    database, ring = open_database(keys=keys)
    try:
        with database.write() as conn:
            yield conn, ring
    finally:
        database.dispose()


@click.group()
def client() -> None:
    """SMART clients: apps, EHRs and backend services allowed to ask for tokens."""


@client.command("add")
@click.option("--name", required=True, help="What the client is, for people reading the list")
@click.option(
    "--kind",
    type=click.Choice(["public", "symmetric", "asymmetric"]),
    required=True,
    help="public: a browser or mobile app (PKCE, no secret); symmetric: a server with a "
    "secret (client_secret_basic); asymmetric: signed JWT assertions (private_key_jwt)",
)
@click.option("--scope", required=True, help="The most this client may be granted")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Exact redirect URI")
@click.option(
    "--jwks",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Public JWKS file (asymmetric)",
)
@click.option("--jwks-url", help="JWKS URL fetched when the client authenticates (asymmetric)")
@click.option("--client-id", help="Choose the client id (default: a random one)")
@audited("security", "client add")
def client_add(
    name: str,
    kind: str,
    scope: str,
    redirect_uris: tuple[str, ...],
    jwks: Path | None,
    jwks_url: str | None,
    client_id: str | None,
) -> None:
    """Register a client; prints its id (and, once, a symmetric client's secret)."""
    from security.smart.registry import RegistryError, add_client

    keyset = json.loads(jwks.read_text()) if jwks else None
    try:
        with _unit() as (conn, _):
            registered, secret = add_client(
                conn,
                name=name,
                kind=kind,
                scope=scope,
                redirect_uris=list(redirect_uris),
                jwks=keyset,
                jwks_uri=jwks_url,
                client_id=client_id,
            )
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    out = registered.summary()
    if secret:
        out["client_secret"] = secret
        click.echo("keep the client secret now: it is stored only as a hash", err=True)
    click.echo(json.dumps(out, indent=2))


@client.command("list")
@audited("query", "client list")
def client_list() -> None:
    """Registered clients (never their secrets)."""
    from security.smart.registry import list_clients

    with _unit() as (conn, _):
        clients = [c.summary() for c in list_clients(conn)]
    click.echo(json.dumps(clients, indent=2))


@client.command("revoke")
@click.argument("client_id")
@audited("security", "client revoke")
def client_revoke(client_id: str) -> None:
    """Refuse CLIENT_ID from now on and end every token it holds."""
    from security.smart.registry import revoke_client

    with _unit() as (conn, _):
        if not revoke_client(conn, client_id):
            raise click.ClickException(f"no client {client_id!r}")
    click.echo(f"revoked {client_id}")


@click.group()
def user() -> None:
    """People who sign in: front desk, clinicians, compliance officers and patients."""


@user.command("add")
@click.option("--login", required=True, help="Sign-in name (stored only as a keyed digest)")
@click.option(
    "--role",
    type=click.Choice(["front-desk", "clinician", "compliance", "interface", "patient"]),
    required=True,
)
@click.option("--fhir-user", help="Practitioner/<id> or Patient/<id> this user is")
@click.option("--patient", "patients", multiple=True, help="A Patient id this user acts for")
@click.password_option(help="Password (prompted twice if not given)")
@audited("security", "user add")
def user_add(
    login: str, role: str, fhir_user: str | None, patients: tuple[str, ...], password: str
) -> None:
    """Register someone who signs in on the authorization pages."""
    from security.smart.registry import RegistryError, add_user

    try:
        with _unit(keys=True) as (conn, ring):
            assert ring is not None
            made = add_user(
                conn,
                ring,
                login=login,
                password=password,
                role=role,
                fhir_user=fhir_user,
                patients=list(patients),
            )
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(made.summary(), indent=2))


@user.command("list")
@audited("query", "user list")
def user_list() -> None:
    """Users: ids, roles and links (login names are not stored in readable form)."""
    from security.smart.registry import list_users

    with _unit() as (conn, _):
        users = [u.summary() for u in list_users(conn)]
    click.echo(json.dumps(users, indent=2))


@user.command("disable")
@click.argument("user_id")
@audited("security", "user disable")
def user_disable(user_id: str) -> None:
    """Stop USER_ID signing in and end the tokens issued to them."""
    from security.smart.registry import set_user_disabled

    with _unit() as (conn, _):
        if not set_user_disabled(conn, user_id):
            raise click.ClickException(f"no user {user_id!r}")
    click.echo(f"disabled {user_id}")


@user.command("unblock")
@click.argument("login")
@audited("security", "user unblock")
def user_unblock(login: str) -> None:
    """Let LOGIN sign in again at once after too many wrong passwords (the wait would end by
    itself within 15 minutes; waits on an address are not lifted)."""
    from security.smart.throttle import clear_account

    with _unit(keys=True) as (conn, ring):
        assert ring is not None
        cleared = clear_account(conn, ring, login)
    click.echo(f"unblocked {login}" if cleared else f"{login} had no failed sign-ins to clear")


@click.command()
@click.option("--patient", help="The Patient id the app is launched for")
@audited("security", "launch", about=lambda kw: {"patient": kw.get("patient")})
def launch(patient: str | None) -> None:
    """Mint an EHR launch value and print it.

    Pass it to the app as its launch parameter (SMART EHR launch). It is good for one
    authorization, within five minutes; with --patient, the app is launched for that Patient.

    \b
    Example:
      fhir-sched launch --patient pat-1
    """
    from security.smart.tokens import mint_launch

    with _unit() as (conn, _):
        value = mint_launch(conn, patient=patient)
    click.echo(value)
