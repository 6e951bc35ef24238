"""The ``fhir-sched`` command.

Examples::

    fhir-sched demo                      # SQLite + demo clinic, prints the FHIR base URL
    fhir-sched serve --port 8080         # serve what is in the configured database
    fhir-sched serve --workers 4         # four server processes (PostgreSQL)
    fhir-sched db upgrade                # apply migrations
    fhir-sched keys init                 # make the key files (for secrets mounted read-only)
    fhir-sched keys rotate               # add a KEK and rewrap every row (server may run)
    fhir-sched keys retire KEY_ID        # drop an old KEK once no row uses it
    fhir-sched client add|list|revoke    # SMART clients (see fhir_server/cli_auth.py)
    fhir-sched user add|list|disable     # people who sign in
    fhir-sched launch --patient ID       # an EHR launch value
    fhir-sched audit verify|export       # the audit log (see fhir_server/cli_audit.py)
    fhir-sched backup DIR                # online copy, keys sealed (see fhir_server/cli_backup.py)
    fhir-sched restore DIR [--force]     # into the configured database and key file
    fhir-sched outbox [--to N]           # the automated texts (see fhir_server/cli_outreach.py)
    fhir-sched console register          # the staff console's client (see docs/console.md)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fhir_server.cli_agent import agent
from fhir_server.cli_audit import audit
from fhir_server.cli_auth import client, launch, user
from fhir_server.cli_backup import backup, restore
from fhir_server.cli_console import console
from fhir_server.cli_errors import config_error, shows_tracebacks
from fhir_server.cli_hl7 import hl7
from fhir_server.cli_outreach import outbox
from fhir_server.console_trail import audited
from fhir_server.settings import Settings

__all__ = ["main"]


def _settings(**overrides: object) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**values)  # type: ignore[arg-type]


def _keys(settings: Settings, database: Any) -> Any:
    """The database's key ring, or the one-line error of :func:`open_keys`."""
    from fhir_server.keyring import KeysMissing, open_keys

    try:
        return open_keys(settings, database)
    except KeysMissing as exc:
        database.dispose()
        raise click.ClickException(str(exc)) from exc


class _Commands(click.Group):
    """Every command's configuration mistakes answered in one line (see cli_errors)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:  # translated, or re-raised as it was
            message = config_error(exc)
            if message is None or shows_tracebacks():
                raise
            raise click.ClickException(message) from exc


@click.group(cls=_Commands)
def main() -> None:
    """fhir-sched: a FHIR R4 scheduling server for clinics."""


main.add_command(client)
main.add_command(user)
main.add_command(launch)
main.add_command(audit)
main.add_command(hl7)
main.add_command(agent)
main.add_command(backup)
main.add_command(restore)
main.add_command(outbox)
main.add_command(console)


def _serve(settings: Settings) -> None:
    import uvicorn

    from base.logging import configure_logging
    from fhir_server.protocol import DeadlineProtocol, use_settings
    from fhir_server.worker import hand_over, serving_app, shared_metrics
    from scheduling.config import load_clinic_config

    try:
        settings.check_bind()
        settings.check_workers()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if settings.clinic_file is not None:  # a bad file is refused before anything is served
        load_clinic_config(settings.clinic_file)
    from resources.sql.engine import Database, migrate

    database = Database(settings.database_url)
    try:
        migrate(database)  # once, here: every worker then finds the schema up to date
        _keys(settings, database)  # the right key file, before anything is served
    finally:
        database.dispose()
    configure_logging(settings.log_level)
    served: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": "warning",
        "access_log": False,  # its lines carry query strings, and search values can be PHI
        "log_config": None,  # uvicorn's records go through our JSON formatter (no tracebacks)
        "loop": "uvloop",
        "http": DeadlineProtocol,  # httptools, with deadlines for headers and body
        "timeout_keep_alive": settings.keep_alive_seconds,
    }
    use_settings(settings)
    click.echo(f"FHIR base URL: {settings.fhir_base}", err=True)
    if settings.workers > 1:
        hand_over(settings)
        with shared_metrics(settings):
            uvicorn.run(
                "fhir_server.worker:create", factory=True, workers=settings.workers, **served
            )
        return
    uvicorn.run(serving_app(settings), **served)


@main.command()
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1)")
@click.option("--port", type=int, default=None, help="Port (default 8080)")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Server processes (default 1; more need PostgreSQL)",
)
def serve(host: str | None, port: int | None, workers: int | None) -> None:
    """Serve the FHIR API on the configured database."""
    _serve(_settings(host=host, port=port, workers=workers))


@main.command()
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1)")
@click.option("--port", type=int, default=None, help="Port (default 8080)")
@click.option("--weeks", type=int, default=2, show_default=True, help="Weeks of Slots to create")
def demo(host: str | None, port: int | None, weeks: int) -> None:
    """Load the demo clinic and patients (idempotent) and serve them."""
    from fhir_server.demo import DEMO_CLINIC, load_demo

    settings = _settings(host=host, port=port)
    if settings.host not in ("127.0.0.1", "::1", "localhost"):
        raise click.ClickException(
            "the demo's users and clients have published passwords: it serves on loopback only"
        )
    if settings.clinic_file is None:  # $find applies the demo clinic's rules
        settings = settings.model_copy(update={"clinic_file": DEMO_CLINIC})
    report, patients = load_demo(settings, weeks=weeks)
    click.echo(
        f"demo clinic: {report.created} resources created, {report.unchanged} unchanged, "
        f"{report.slots_created} Slots created, {patients['Patient']} patients added",
        err=True,
    )
    root = settings.public_root
    click.echo(
        "get a token (demo backend client, see README for users and the SMART app):\n"
        f"  curl -u demo-backend:demo-backend-secret -d grant_type=client_credentials "
        f"-d 'scope=system/*.cruds' {root}/auth/token",
        err=True,
    )
    model = f"Claude ({settings.agent_model})" if settings.anthropic_api_key else "offline rules"
    click.echo(f"booking agent ({model}): chat with it at {root}/agent/chat", err=True)
    click.echo(f"staff console (sign in as frontdesk / frontdesk-demo): {root}/console/", err=True)
    _serve(settings)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@audited("application", "db upgrade")
def db_upgrade() -> None:
    """Apply Alembic migrations up to the newest schema."""
    from resources.sql.engine import Database, migrate

    settings = _settings()
    database = Database(settings.database_url)
    migrate(database)
    click.echo("schema is up to date")


@main.group()
def keys() -> None:
    """Encryption keys."""


def _writable_key_file(settings: Settings, command: str) -> None:
    """Rotation and retirement rewrite the key file beside itself (a lock file, a temporary
    file renamed over it): refused in one line where that cannot be done, as on a secret
    mounted read-only, before anything changes."""
    path = settings.key_file
    if settings.keys is not None or not path.exists():
        return  # _key_store says what to do about FHIRSCHED_KEYS; a missing file is made
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        raise click.ClickException(
            f"the key file {path} cannot be rewritten here (is it mounted read-only?): run "
            f"`fhir-sched keys {command}` with FHIRSCHED_KEY_FILE naming the writable file it "
            'is mounted from (docs/deploy.md, "Rotating keys")'
        )


def _key_store(settings: Settings) -> tuple[object, object]:
    from resources.sql.engine import Database, migrate
    from resources.store import Store

    if settings.keys is not None:
        raise click.ClickException(
            "keys come from FHIRSCHED_KEYS; rotate them where that value is managed"
        )
    database = Database(settings.database_url)
    migrate(database)
    return database, Store(_keys(settings, database), base_url=settings.fhir_base)


@keys.command("rotate")
@click.option("--batch", type=int, default=500, show_default=True, help="Rows per transaction")
@audited("security", "keys rotate")
def keys_rotate(batch: int) -> None:
    """Add a new key-encryption key, make it active and rewrap every stored row under it.

    Running servers seal under the new key from their next write; the command returns once no
    row is left under an older key (see resources/rotation.py), then `keys retire OLD_ID`.
    """
    from resources.rotation import RotationIncomplete, rotate_keys
    from resources.sql.engine import Database
    from resources.store import Store

    settings = _settings()
    _writable_key_file(settings, "rotate")
    database, store = _key_store(settings)
    assert isinstance(database, Database) and isinstance(store, Store)
    try:
        report = rotate_keys(
            database=database, store=store, key_file=settings.key_file, batch=batch
        )
    except RotationIncomplete as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report.as_dict()))
    left = {k: n for k, n in report.rows_by_key.items() if k != report.active}
    if left:
        raise click.ClickException(f"rows still under older keys: {left}; run it again")


@keys.command("retire")
@click.argument("key_id")
@audited("security", "keys retire")
def keys_retire(key_id: str) -> None:
    """Remove an old key-encryption key once no stored row still needs it."""
    from resources.rotation import kek_usage, sealed_elsewhere
    from resources.sql.engine import Database
    from resources.store import Store
    from security.crypto import retire_key

    settings = _settings()
    _writable_key_file(settings, "retire")
    database, store = _key_store(settings)
    assert isinstance(database, Database) and isinstance(store, Store)
    if key_id == store.keys.active:
        raise click.ClickException(
            f"{key_id} is the active key; run `fhir-sched keys rotate` first"
        )
    with database.read() as conn:
        usage = kek_usage(conn)
        elsewhere = sealed_elsewhere(conn, key_id)
    if usage.get(key_id):
        raise click.ClickException(
            f"{usage[key_id]} rows still use {key_id}; run `fhir-sched keys rotate` first"
        )
    if elsewhere:
        raise click.ClickException(
            f"rows that key rotation does not rewrap still use {key_id} ({elsewhere}); keep "
            "the key while they are wanted"
        )
    try:
        retire_key(settings.key_file, key_id)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"retired {key_id}")


@keys.command("init")
def keys_init() -> None:
    """Make the key file, the id_token signing key and the booking agent's key where the
    configuration puts them (each 0600), keeping any that is already there.

    The server makes the first two on its first run; a container whose keys are mounted
    read-only cannot, so they are made once beforehand (docs/deploy.md). It touches no
    database: a database that already holds data needs its own key file (from its old server
    or a backup), never a new one.
    """
    from agent.fhir import generate_agent_key
    from security.crypto import load_keyring
    from security.smart.signing import load_signer

    settings = _settings()
    makers: list[tuple[str, Path | None, Callable[[Path], object]]] = [
        (
            "key file",
            None if settings.keys else settings.key_file,
            lambda path: load_keyring(key_file=path, keys_json=None),
        ),
        (
            "signing key",
            None if settings.signing_key else settings.signing_key_path,
            lambda path: load_signer(path=path, key_json=None),
        ),
        ("agent key", settings.agent_key_path, generate_agent_key),
    ]
    for what, path, make in makers:
        if path is None:
            click.echo(f"{what}: given through the environment")
            continue
        state = "kept" if path.exists() else "created"
        make(path)
        click.echo(f"{what}: {state} {path}")


@keys.command("status")
@audited("query", "keys status")
def keys_status() -> None:
    """Show the active key and how many rows each key wraps."""
    from resources.rotation import kek_usage
    from resources.sql.engine import Database
    from resources.store import Store

    settings = _settings()
    database, store = _key_store(settings)
    assert isinstance(database, Database) and isinstance(store, Store)
    with database.read() as conn:
        usage = kek_usage(conn)
    click.echo(json.dumps({"active": store.keys.active, "rows_by_key": usage}))


@main.group()
def clinic() -> None:
    """Clinic configuration (see docs/clinic-config.md)."""


@clinic.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--weeks", type=int, default=None, help="Horizon (default: the file's horizon_weeks)")
@audited("import", "clinic load")
def clinic_load(file: Path, weeks: int | None) -> None:
    """Create or update the clinic's resources from FILE and materialise its Slots.

    Loading the same file again changes nothing; changed hours regenerate free Slots only, and
    busy Slots that fall outside the new hours are reported, never deleted.
    """
    from datetime import datetime

    from resources.sql.engine import Database, migrate
    from resources.store import Store
    from scheduling.clinic import load_clinic
    from scheduling.config import ClinicConfigError, load_clinic_config

    try:
        config = load_clinic_config(file)
    except ClinicConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    settings = _settings()
    database = Database(settings.database_url)
    migrate(database)
    store = Store(_keys(settings, database), base_url=settings.fhir_base)
    with database.write() as conn:
        report = load_clinic(
            conn, store=store, config=config, today=datetime.now(config.tz).date(), weeks=weeks
        )
    click.echo(json.dumps(report.as_dict(), indent=2))
    if report.outside_hours:
        click.echo(
            f"warning: {len(report.outside_hours)} busy Slot(s) fall outside the new hours; "
            "they were kept — reschedule those appointments",
            err=True,
        )
