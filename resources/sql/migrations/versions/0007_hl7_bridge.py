"""HL7 bridge: sealed message store (in and out, with ACKs; the outbox) and appointment keys

Revision ID: 0007
Revises: 0006
"""

from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "hl7_message",
        sa.Column("seq", SEQ, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("direction", sa.String(3), nullable=False),
        sa.Column("peer", sa.String(200), nullable=False),
        sa.Column("control_id", sa.String(200), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("created", TZ, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ack_code", sa.String(2), nullable=True),
        sa.Column("appointment_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt", TZ, nullable=True),
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_hl7_message")),
        sa.UniqueConstraint("id", name=op.f("uq_hl7_message_id")),
        sa.UniqueConstraint("direction", "peer", "control_id", name="uq_hl7_message_control"),
    )
    op.create_index("ix_hl7_message_status", "hl7_message", ["direction", "status", "next_attempt"])
    op.create_table(
        "hl7_link",
        sa.Column("sender", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.Column("appointment_id", sa.String(64), nullable=False),
        sa.Column("last_sent_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("sender", "kind", "value", name=op.f("pk_hl7_link")),
    )
    op.create_index(op.f("ix_hl7_link_appointment_id"), "hl7_link", ["appointment_id"])


def downgrade() -> None:
    op.drop_table("hl7_link")
    op.drop_index("ix_hl7_message_status", table_name="hl7_message")
    op.drop_table("hl7_message")
