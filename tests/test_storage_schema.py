"""The Alembic migrations build exactly the schema the models declare, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from resources.sql.engine import Database, migrate
from resources.sql.tables import Base


def test_migrations_match_models(db: Database) -> None:
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_migrate_is_idempotent(db: Database) -> None:
    migrate(db)
    migrate(db)
    tables = set(inspect(db.engine).get_table_names())
    assert {"resource", "resource_version", "idx_blind", "alembic_version"} <= tables
