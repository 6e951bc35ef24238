"""partial indexes of the Slots and busy time longer than a day, so overlap queries can bound
their range scans (see LONG_SPAN in resources/sql/tables.py); SQLite's double-booking triggers
bounded the same way (each insert scanned the schedule's whole history)

Revision ID: 0008
Revises: 0007
"""

import importlib

from alembic import op
import sqlalchemy as sa

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# as in resources/sql/tables.py at this revision (a migration keeps its own copy)
SLOT_IS_LONG = "end_s - start_s > 86400"
BUSY_IS_LONG = {
    "sqlite": 'julianday("end") - julianday(start) > 1',
    "postgresql": "\"end\" - start > interval '1 day'",
}

# SQLite's guard: an overlapping row no longer than a day starts at most a day before the new
# one (a second of slack: strftime keeps milliseconds, the rows keep microseconds, and
# julianday differences are floating point); longer rows come from ix_busy_time_long.
_GUARD = """
CREATE TRIGGER {name} BEFORE {event} ON busy_time
FOR EACH ROW WHEN EXISTS (
    SELECT 1 FROM busy_time b
    WHERE {other}b.schedule_id = NEW.schedule_id
      AND b.start < NEW."end" AND b."end" > NEW.start
      AND b.start >= strftime('%Y-%m-%d %H:%M:%f', NEW.start, '-1 day', '-1 second')
      AND NOT (julianday(b."end") - julianday(b.start) > 1)
) OR EXISTS (
    SELECT 1 FROM busy_time b
    WHERE {other}b.schedule_id = NEW.schedule_id
      AND julianday(b."end") - julianday(b.start) > 1
      AND b.start < NEW."end" AND b."end" > NEW.start
)
BEGIN
    SELECT RAISE(ABORT, 'busy_time overlap: double booking refused');
END
"""
_NEW_INSERT = _GUARD.format(name="busy_time_no_overlap", event="INSERT", other="")
_NEW_UPDATE = _GUARD.format(
    name="busy_time_no_overlap_update", event="UPDATE", other="b.pk != NEW.pk AND "
)
# what downgrade puts back: the triggers as revision 0002 installed them
_REVISION_0002 = importlib.import_module("resources.sql.migrations.versions.0002_busy_time_guard")


def _replace_triggers(insert: str, update: str) -> None:
    op.execute("DROP TRIGGER IF EXISTS busy_time_no_overlap")
    op.execute("DROP TRIGGER IF EXISTS busy_time_no_overlap_update")
    op.execute(insert)
    op.execute(update)


def upgrade() -> None:
    op.create_index(
        "ix_slot_time_long",
        "slot_time",
        ["schedule_id", "start_s"],
        sqlite_where=sa.text(SLOT_IS_LONG),
        postgresql_where=sa.text(SLOT_IS_LONG),
    )
    op.create_index(
        "ix_busy_time_long",
        "busy_time",
        ["schedule_id", "start"],
        sqlite_where=sa.text(BUSY_IS_LONG["sqlite"]),
        postgresql_where=sa.text(BUSY_IS_LONG["postgresql"]),
    )
    if op.get_bind().dialect.name == "sqlite":  # PostgreSQL's exclusion constraint uses GiST
        _replace_triggers(_NEW_INSERT, _NEW_UPDATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _replace_triggers(_REVISION_0002.SQLITE_GUARD, _REVISION_0002.SQLITE_GUARD_UPDATE)
    op.drop_index("ix_busy_time_long", table_name="busy_time")
    op.drop_index("ix_slot_time_long", table_name="slot_time")
