"""The Alembic migrations build exactly the schema the models declare, on both databases."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, inspect, text

from agent.store import metadata as agent_metadata
from resources.sql.engine import MIGRATIONS, Database, migrate
from resources.sql.tables import Base
from tests.conftest import BACKENDS, PG_URL, pg_database


def _declared() -> MetaData:
    """The server's tables and the booking agent's (its own module declares them; the one
    migration chain creates both)."""
    every = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in [*Base.metadata.tables.values(), *agent_metadata.tables.values()]:
        table.to_metadata(every)
    return every


def test_migrations_match_models(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), _declared())
    assert diff == []


def test_migrate_is_idempotent(db: Database) -> None:
    migrate(db)
    migrate(db)
    tables = set(inspect(db.engine).get_table_names())
    assert {"resource", "resource_version", "idx_blind", "alembic_version"} <= tables


@pytest.fixture(params=BACKENDS)
def blank(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty, unmigrated database on each backend (a PostgreSQL schema of its own)."""
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'blank.db'}")
        yield database
        database.dispose()
        return
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = Database(PG_URL)
    with admin.engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    database = pg_database(schema)
    try:
        yield database
    finally:
        database.dispose()
        with admin.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _downgrade(db: Database, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _keys(db: Database) -> list[tuple[str, ...]]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT client_id, user_id, patient, key FROM idempotency_key ORDER BY key")
        )
        return [tuple(r) for r in rows]


def test_0011_keeps_old_retry_keys_ownerless(blank: Database) -> None:
    """A key stored before revision 0011 gets no owner (client ''), so it replays to no one;
    going back down keeps only such keys (an owner's key would be global again)."""
    migrate(blank, "0010")
    old = (
        "INSERT INTO idempotency_key (key, operation, status, res_type, res_id, version, created) "
        "VALUES (:key, 'book', 201, 'Appointment', 'a1', 1, :created)"
    )
    with blank.engine.begin() as conn:
        conn.execute(text(old), {"key": "header:old-1", "created": datetime.now(UTC)})
    migrate(blank)
    assert _keys(blank) == [("", "", "", "header:old-1")]
    with blank.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), _declared())
        assert diff == []
    new = (
        "INSERT INTO idempotency_key (client_id, user_id, patient, key, request_hash, operation,"
        " status, res_type, res_id, version, created) VALUES ('app', 'u1', 'p1', 'header:old-1',"
        " :hash, 'book', 201, 'Appointment', 'a2', 1, :created)"
    )
    with blank.engine.begin() as conn:  # the same key, now someone's own
        conn.execute(text(new), {"hash": bytes(32), "created": datetime.now(UTC)})
    _downgrade(blank, "0010")
    with blank.engine.connect() as conn:
        rows = conn.execute(text("SELECT key, res_id FROM idempotency_key")).all()
    assert [tuple(r) for r in rows] == [("header:old-1", "a1")]
    migrate(blank)
    assert _keys(blank) == [("", "", "", "header:old-1")]
