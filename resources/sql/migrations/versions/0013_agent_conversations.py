"""The booking agent's own tables: conversations, their messages, the local SMS outbox (sealed)

Revision ID: 0013
Revises: 0012
"""

from alembic import op
import sqlalchemy as sa

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def _sealed() -> list[sa.Column]:
    return [
        sa.Column("kek_id", sa.String(64), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "agent_conversation",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("channel", sa.String(8), nullable=False),
        sa.Column("address_digest", sa.LargeBinary(16), nullable=True),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("holder", sa.String(200), nullable=True),
        sa.Column("created", TZ, nullable=False),
        sa.Column("updated", TZ, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        *_sealed(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_conversation")),
    )
    op.create_index(
        op.f("ix_agent_conversation_address_digest"), "agent_conversation", ["address_digest"]
    )
    op.create_index(op.f("ix_agent_conversation_updated"), "agent_conversation", ["updated"])
    op.create_table(
        "agent_message",
        sa.Column("conversation_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("sender", sa.String(8), nullable=False),
        sa.Column("at", TZ, nullable=False),
        *_sealed(),
        sa.PrimaryKeyConstraint("conversation_id", "seq", name=op.f("pk_agent_message")),
    )
    op.create_table(
        "agent_outbox",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("to_digest", sa.LargeBinary(16), nullable=False),
        *_sealed(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_outbox")),
    )
    op.create_index(op.f("ix_agent_outbox_at"), "agent_outbox", ["at"])
    op.create_index(op.f("ix_agent_outbox_to_digest"), "agent_outbox", ["to_digest"])


def downgrade() -> None:
    op.drop_table("agent_outbox")
    op.drop_table("agent_message")
    op.drop_table("agent_conversation")
