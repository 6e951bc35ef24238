"""idx_number: the search index of number parameters

FHIR ``number`` search (https://hl7.org/fhir/R4/search.html#number) needs values compared as
numbers: ``Appointment?risk=ge0.5`` over the no-show risk score the server writes on booked
Appointments. One row per value, as in the other ``idx_*`` tables; the lookup index leads with
(type, parameter, value) so a prefix search is one range scan. Nothing is backfilled: no stored
resource had a number parameter before this revision.

Revision ID: 0016
Revises: 0015
"""

from alembic import op
import sqlalchemy as sa

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "idx_number",
        sa.Column(
            "pk",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("res_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_idx_number")),
    )
    op.create_index(
        "ix_idx_number_lookup", "idx_number", ["res_type", "param", "value", "seq"], unique=False
    )
    op.create_index(op.f("ix_idx_number_seq"), "idx_number", ["seq"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_idx_number_seq"), table_name="idx_number")
    op.drop_index("ix_idx_number_lookup", table_name="idx_number")
    op.drop_table("idx_number")
