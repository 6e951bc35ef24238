"""slot_time: each live Slot's schedule, times and status, for $find

Revision ID: 0004
Revises: 0003

Existing Slots are backfilled from the search index (schedule reference, start and end dates,
status token), which holds the same values in plain text; nothing needs decrypting.
"""

from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

EPOCH = {  # idx_date holds UTC instants
    "postgresql": "CAST(EXTRACT(EPOCH FROM {col}) AS BIGINT)",
    "sqlite": "CAST(strftime('%s', {col}) AS INTEGER)",
}
BACKFILL = """
INSERT INTO slot_time (seq, slot_id, schedule_id, start_s, end_s, status)
SELECT r.seq, r.res_id, ref.target_id, {start}, {end}, COALESCE(st.code, '')
FROM resource r
JOIN idx_reference ref
  ON ref.seq = r.seq AND ref.res_type = 'Slot' AND ref.param = 'schedule'
JOIN idx_date s ON s.seq = r.seq AND s.res_type = 'Slot' AND s.param = 'start'
JOIN idx_date e ON e.seq = r.seq AND e.res_type = 'Slot' AND e.param = 'end'
LEFT JOIN idx_token st ON st.seq = r.seq AND st.res_type = 'Slot' AND st.param = 'status'
WHERE r.res_type = 'Slot' AND r.deleted = false
"""


def upgrade() -> None:
    op.create_table(
        "slot_time",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("slot_id", sa.String(length=64), nullable=False),
        sa.Column("schedule_id", sa.String(length=64), nullable=False),
        sa.Column("start_s", sa.BigInteger(), nullable=False),
        sa.Column("end_s", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_slot_time")),
    )
    op.create_index(
        "ix_slot_time_free",
        "slot_time",
        ["schedule_id", "status", "start_s", "end_s", "slot_id"],
        unique=False,
    )
    op.execute(backfill_sql(op.get_bind().dialect.name))


def backfill_sql(dialect: str) -> str:
    epoch = EPOCH[dialect]
    return BACKFILL.format(start=epoch.format(col="s.low"), end=epoch.format(col="e.low"))


def downgrade() -> None:
    op.drop_index("ix_slot_time_free", table_name="slot_time")
    op.drop_table("slot_time")
