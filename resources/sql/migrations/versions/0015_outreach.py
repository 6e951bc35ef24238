"""Reminders, replies and the waitlist: outreach_message, outreach_optout, waitlist_freed,
waitlist_offer, waitlist_offered, outreach_escalation

* ``outreach_message``: every automated text, claimed (unique ``dedupe``) before it is sent,
  then marked sent with the provider's message id; its number and body sealed, the number also
  as a keyed digest so a reply can be matched to it.
* ``outreach_optout``: numbers that texted STOP, by digest.
* ``outreach_escalation``: appointments for the staff queue (cancelled inside the notice
  window), queued with the change and handed over once.
* ``waitlist_*``: time freed by cancellations, the offers made of it and to whom.

Revision ID: 0015
Revises: 0014
"""

from alembic import op
import sqlalchemy as sa

revision = "0015"
down_revision = "0014"
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
        "outreach_message",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(12), nullable=False),
        sa.Column("dedupe", sa.String(200), nullable=False),
        sa.Column("appointment_id", sa.String(64), nullable=True),
        sa.Column("to_digest", sa.LargeBinary(16), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("provider", sa.String(16), nullable=True),
        sa.Column("provider_id", sa.String(200), nullable=True),
        sa.Column("communication_id", sa.String(64), nullable=True),
        sa.Column("created", TZ, nullable=False),
        sa.Column("sent", TZ, nullable=True),
        sa.Column("answer", sa.String(12), nullable=True),
        sa.Column("answered", TZ, nullable=True),
        *_sealed(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outreach_message")),
        sa.UniqueConstraint("dedupe", name=op.f("uq_outreach_message_dedupe")),
    )
    op.create_index(
        op.f("ix_outreach_message_appointment_id"), "outreach_message", ["appointment_id"]
    )
    op.create_index(op.f("ix_outreach_message_to_digest"), "outreach_message", ["to_digest"])
    op.create_index("ix_outreach_message_to_sent", "outreach_message", ["to_digest", "sent"])
    op.create_table(
        "outreach_optout",
        sa.Column("to_digest", sa.LargeBinary(16), nullable=False),
        sa.Column("opted_out", sa.Boolean(), nullable=False),
        sa.Column("changed", TZ, nullable=False),
        sa.PrimaryKeyConstraint("to_digest", name=op.f("pk_outreach_optout")),
    )
    op.create_table(
        "outreach_escalation",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("dedupe", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("appointment_id", sa.String(64), nullable=False),
        sa.Column("created", TZ, nullable=False),
        sa.Column("done", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outreach_escalation")),
        sa.UniqueConstraint("dedupe", name=op.f("uq_outreach_escalation_dedupe")),
    )
    op.create_index(op.f("ix_outreach_escalation_done"), "outreach_escalation", ["done"])
    op.create_table(
        "waitlist_freed",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("appointment_id", sa.String(64), nullable=False),
        sa.Column("created", TZ, nullable=False),
        sa.Column("done", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_freed")),
    )
    op.create_index(op.f("ix_waitlist_freed_done"), "waitlist_freed", ["done"])
    op.create_table(
        "waitlist_offer",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("freed_id", sa.String(36), nullable=False),
        sa.Column("hold_id", sa.String(64), nullable=True),
        sa.Column("practitioner", sa.String(64), nullable=False),
        sa.Column("location", sa.String(64), nullable=False),
        sa.Column("visit_type", sa.String(64), nullable=False),
        sa.Column("start", TZ, nullable=False),
        sa.Column("end", TZ, nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("expires", TZ, nullable=False),
        sa.Column("created", TZ, nullable=False),
        sa.Column("taken_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_offer")),
    )
    op.create_index(op.f("ix_waitlist_offer_freed_id"), "waitlist_offer", ["freed_id"])
    op.create_index("ix_waitlist_offer_state", "waitlist_offer", ["state", "expires"])
    op.create_table(
        "waitlist_offered",
        sa.Column("offer_id", sa.String(36), nullable=False),
        sa.Column("waitlist_id", sa.String(64), nullable=False),
        sa.Column("slot_key", sa.String(200), nullable=False),
        sa.Column("message_id", sa.String(36), nullable=True),
        sa.Column("answer", sa.String(12), nullable=True),
        sa.PrimaryKeyConstraint("offer_id", "waitlist_id", name=op.f("pk_waitlist_offered")),
        sa.UniqueConstraint("waitlist_id", "slot_key", name="uq_waitlist_offered_time"),
    )


def downgrade() -> None:
    for table in (
        "waitlist_offered",
        "waitlist_offer",
        "waitlist_freed",
        "outreach_escalation",
        "outreach_optout",
        "outreach_message",
    ):
        op.drop_table(table)
