"""$book retry keys belong to the principal that sent them (client, user, patient) and keep
the SHA-256 of the request they came with

A key used to be global: anyone sending another principal's key got that principal's result.
The key is now one column of a primary key whose other columns name its owner ('' where the
token has no user or patient).

Rows stored before this revision say nothing about who sent them, so they get the client ''
(no registered client has that id) and no request hash: they never replay to anyone. A retry
of such a request is handled as a new one, which cannot book twice: the first booking's time
is taken (409) and a cancelled appointment cannot be cancelled again.

Revision ID: 0011
Revises: 0010
"""

from alembic import op
import sqlalchemy as sa

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

OWNER = ("client_id", "user_id", "patient")


def upgrade() -> None:
    with op.batch_alter_table("idempotency_key") as batch:
        batch.add_column(
            sa.Column("client_id", sa.String(length=100), nullable=False, server_default="")
        )
        batch.add_column(
            sa.Column("user_id", sa.String(length=64), nullable=False, server_default="")
        )
        batch.add_column(
            sa.Column("patient", sa.String(length=64), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("request_hash", sa.LargeBinary(length=32), nullable=True))
        batch.drop_constraint("pk_idempotency_key", type_="primary")
        batch.create_primary_key("pk_idempotency_key", [*OWNER, "key"])
    # the defaults only filled the old rows; new rows always name their owner
    with op.batch_alter_table("idempotency_key") as batch:
        for column in OWNER:
            batch.alter_column(column, server_default=None)


def downgrade() -> None:
    # a key is global again below this revision: the rows of an owner would replay to anyone,
    # so only the ownerless ones stay
    op.execute("DELETE FROM idempotency_key WHERE client_id <> ''")
    with op.batch_alter_table("idempotency_key") as batch:
        batch.drop_constraint("pk_idempotency_key", type_="primary")
        batch.create_primary_key("pk_idempotency_key", ["key"])
        batch.drop_column("request_hash")
        for column in OWNER:
            batch.drop_column(column)
