"""drop hl7_link's index on appointment_id: links are only ever found by their key (sender,
kind, value), and the index cost every inbound HL7 message a random B-tree page write

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_hl7_link_appointment_id", table_name="hl7_link")


def downgrade() -> None:
    op.create_index("ix_hl7_link_appointment_id", "hl7_link", ["appointment_id"])
