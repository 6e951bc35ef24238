"""audit log: hash-chained, sealed AuditEvents; UPDATE and DELETE refused by triggers

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import sqlalchemy as sa

from resources.sql.guards import audit_guard_create

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("recorded", TZ, nullable=False),
        sa.Column("type_code", sa.String(64), nullable=False),
        sa.Column("subtype_code", sa.String(64), nullable=True),
        sa.Column("action", sa.String(1), nullable=True),
        sa.Column("outcome", sa.String(2), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("mac", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_log")),
        sa.UniqueConstraint("event_id", name=op.f("uq_audit_log_event_id")),
    )
    op.create_index(op.f("ix_audit_log_recorded"), "audit_log", ["recorded"])
    op.create_table(
        "audit_index",
        sa.Column("pk", SEQ, autoincrement=True, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("param", sa.String(16), nullable=False),
        sa.Column("digest", sa.LargeBinary(16), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_audit_index")),
    )
    op.create_index("ix_audit_index_lookup", "audit_index", ["param", "digest", "seq"])
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("mac", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_head")),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0, "mac": bytes(32)}])
    for statement in audit_guard_create(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("audit_head")
    op.drop_table("audit_index")
    op.drop_table("audit_log")
