"""SMART authorization: clients, users, codes, tokens, assertion ids, EHR launches

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "oauth_client",
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(200), nullable=True),
        sa.Column("jwks", sa.Text(), nullable=True),
        sa.Column("jwks_uri", sa.String(500), nullable=True),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("redirect_uris", sa.Text(), nullable=False),
        sa.Column("grant_types", sa.String(200), nullable=False),
        sa.Column("created", TZ, nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_oauth_client")),
    )
    op.create_table(
        "oauth_user",
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("login_digest", sa.LargeBinary(16), nullable=False),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("fhir_user", sa.String(200), nullable=True),
        sa.Column("patients", sa.Text(), nullable=False),
        sa.Column("created", TZ, nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_oauth_user")),
        sa.UniqueConstraint("login_digest", name=op.f("uq_oauth_user_login_digest")),
    )
    op.create_table(
        "auth_code",
        sa.Column("code_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("redirect_uri", sa.String(500), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("patient", sa.String(64), nullable=True),
        sa.Column("nonce", sa.String(200), nullable=True),
        sa.Column("code_challenge", sa.String(200), nullable=False),
        sa.Column("grant_id", sa.String(64), nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("used", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("code_hash", name=op.f("pk_auth_code")),
    )
    op.create_table(
        "auth_token",
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("patient", sa.String(64), nullable=True),
        sa.Column("grant_id", sa.String(64), nullable=False),
        sa.Column("jti", sa.String(64), nullable=False),
        sa.Column("issued_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_auth_token")),
    )
    op.create_index(op.f("ix_auth_token_grant_id"), "auth_token", ["grant_id"])
    op.create_table(
        "auth_jti",
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("jti", sa.String(200), nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("client_id", "jti", name=op.f("pk_auth_jti")),
    )
    op.create_index(op.f("ix_auth_jti_expires_at"), "auth_jti", ["expires_at"])
    op.create_table(
        "auth_launch",
        sa.Column("launch_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("patient", sa.String(64), nullable=True),
        sa.Column("encounter", sa.String(64), nullable=True),
        sa.Column("expires_at", TZ, nullable=False),
        sa.PrimaryKeyConstraint("launch_hash", name=op.f("pk_auth_launch")),
    )


def downgrade() -> None:
    for name in ("auth_launch", "auth_jti", "auth_token", "auth_code", "oauth_user"):
        op.drop_table(name)
    op.drop_table("oauth_client")
