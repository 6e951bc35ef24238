"""busy time with a database double-booking guard

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SQLITE_GUARD = """
CREATE TRIGGER busy_time_no_overlap BEFORE INSERT ON busy_time
FOR EACH ROW WHEN EXISTS (
    SELECT 1 FROM busy_time b
    WHERE b.schedule_id = NEW.schedule_id AND b.start < NEW."end" AND b."end" > NEW.start
)
BEGIN
    SELECT RAISE(ABORT, 'busy_time overlap: double booking refused');
END
"""
SQLITE_GUARD_UPDATE = """
CREATE TRIGGER busy_time_no_overlap_update BEFORE UPDATE ON busy_time
FOR EACH ROW WHEN EXISTS (
    SELECT 1 FROM busy_time b
    WHERE b.pk != NEW.pk AND b.schedule_id = NEW.schedule_id
      AND b.start < NEW."end" AND b."end" > NEW.start
)
BEGIN
    SELECT RAISE(ABORT, 'busy_time overlap: double booking refused');
END
"""


def upgrade() -> None:
    op.create_table(
        "busy_time",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("schedule_id", sa.String(length=64), nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("appointment_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("visit_type", sa.String(length=64), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_busy_time")),
        sa.CheckConstraint('start < "end"', name="ck_busy_time_positive"),
    )
    op.create_index("ix_busy_time_schedule_start", "busy_time", ["schedule_id", "start"])
    op.create_index("ix_busy_time_appointment", "busy_time", ["appointment_id"])
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # In public, not in whatever schema comes first on the search path: an extension lives
        # in one schema per database, and dropping that schema would silently drop it and,
        # by cascade, every schema's exclusion constraint with it. Default operator classes
        # are found without the search path, so schemas that do not list public work too.
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA public")
        op.execute(
            "ALTER TABLE busy_time ADD CONSTRAINT ex_busy_time_no_overlap EXCLUDE USING gist "
            '(schedule_id WITH =, tstzrange(start, "end") WITH &&)'
        )
    else:
        op.execute(SQLITE_GUARD)
        op.execute(SQLITE_GUARD_UPDATE)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        op.execute("DROP TRIGGER IF EXISTS busy_time_no_overlap")
        op.execute("DROP TRIGGER IF EXISTS busy_time_no_overlap_update")
    op.drop_index("ix_busy_time_appointment", table_name="busy_time")
    op.drop_index("ix_busy_time_schedule_start", table_name="busy_time")
    op.drop_table("busy_time")
