"""hl7_message: warning codes, and a digest of each message's content for resends

* ``warnings``: the codes of what a message was applied with a caveat (an SCH-25 filler
  status no table knows, a duration unit it cannot read, a date without a time, a reused
  control id), in plain sight for ``fhir-sched hl7 messages --warnings`` to list and count;
  their words are sealed with the message (they may quote it).
* ``digest``: a keyed digest (HMAC under the key ring's index key) of the message's content
  without MSH-7 and trailing separators. A resend is the same sender, MSH-10 *and* content:
  the unique key becomes (direction, peer, control id, digest), so a different message that
  reuses a control id is stored and applied as new instead of being answered as a resend and
  dropped. Rows stored before have no digest; a resend of one is recognised by opening it.

Revision ID: 0014
Revises: 0013
"""

from alembic import op
import sqlalchemy as sa

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hl7_message") as batch:
        batch.add_column(sa.Column("warnings", sa.String(200), nullable=True))
        batch.add_column(sa.Column("digest", sa.LargeBinary(16), nullable=True))
        batch.drop_constraint("uq_hl7_message_control", type_="unique")
        batch.create_unique_constraint(
            "uq_hl7_message_content", ["direction", "peer", "control_id", "digest"]
        )


def downgrade() -> None:
    with op.batch_alter_table("hl7_message") as batch:
        batch.drop_constraint("uq_hl7_message_content", type_="unique")
        batch.create_unique_constraint(
            "uq_hl7_message_control", ["direction", "peer", "control_id"]
        )
        batch.drop_column("digest")
        batch.drop_column("warnings")
