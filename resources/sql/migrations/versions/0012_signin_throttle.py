"""Failed sign-ins per account and per address, for the sign-in throttle

Revision ID: 0012
Revises: 0011
"""

from alembic import op
import sqlalchemy as sa

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "signin_throttle",
        sa.Column("key", sa.LargeBinary(32), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure", TZ, nullable=False),
        sa.Column("blocked_until", TZ, nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_signin_throttle")),
    )
    op.create_index(op.f("ix_signin_throttle_last_failure"), "signin_throttle", ["last_failure"])


def downgrade() -> None:
    op.drop_index(op.f("ix_signin_throttle_last_failure"), table_name="signin_throttle")
    op.drop_table("signin_throttle")
