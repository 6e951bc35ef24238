"""Alembic environment: runs on the connection handed in by resources.sql.engine.migrate."""

from alembic import context

from resources.sql.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `fhir-sched db upgrade` (resources.sql.engine)")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
