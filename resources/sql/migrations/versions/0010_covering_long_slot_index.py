"""ix_slot_time_long covers the long-Slot branch of the overlap query (end_s, slot_id in the
key), so PostgreSQL's generic plan for the prepared statement picks it

Revision 0008's index held (schedule_id, start_s) only. Planned generically (psycopg prepares
a statement after its fifth run), PostgreSQL estimated its rows from the whole table's and
preferred ix_slot_time_free's index-only scan over every Slot of the schedule: 0.15 ms a
message where this index's index-only scan takes a few µs.

Revision ID: 0010
Revises: 0009
"""

from alembic import op
import sqlalchemy as sa

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# as in resources/sql/tables.py at this revision (a migration keeps its own copy)
SLOT_IS_LONG = "end_s - start_s > 86400"


def _long_index(columns: list[str]) -> None:
    op.create_index(
        "ix_slot_time_long",
        "slot_time",
        columns,
        sqlite_where=sa.text(SLOT_IS_LONG),
        postgresql_where=sa.text(SLOT_IS_LONG),
    )


def upgrade() -> None:
    op.drop_index("ix_slot_time_long", table_name="slot_time")
    _long_index(["schedule_id", "start_s", "end_s", "slot_id"])


def downgrade() -> None:
    op.drop_index("ix_slot_time_long", table_name="slot_time")
    _long_index(["schedule_id", "start_s"])
