"""hl7_message.warnings: the codes of what a message was applied with a caveat

An inbound message the bridge applies despite something it could not use (an SCH-25 filler
status no table knows, a duration unit it cannot read, a date without a time, a reused
control id) is kept with those warnings: their codes in plain sight, for
``fhir-sched hl7 messages --warnings`` to list and count; their words sealed with the message
(they may quote it).

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
    op.add_column("hl7_message", sa.Column("warnings", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hl7_message") as batch:
        batch.drop_column("warnings")
