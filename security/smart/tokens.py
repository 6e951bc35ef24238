"""Issued credentials: access and refresh tokens, authorization codes, EHR launch contexts and
the client-assertion ids already seen.

Every credential is 256 random bits handed out once; the database keeps only its SHA-256
digest, so a copy of the database holds no usable token. ``grant_id`` ties together what one
authorization issued: revoking any of it, or replaying its code, ends all of it.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from resources.fhirdate import as_utc
from resources.sql.tables import AuthCode, AuthJti, AuthLaunch, AuthToken
from security.principal import Principal
from security.scopes import Grants

__all__ = [
    "ACTIVE_ACCESS_SQL",
    "CODE_TTL",
    "LAUNCH_TTL",
    "TokenRecord",
    "active_principal",
    "consume_code",
    "digest",
    "lookup_token",
    "mint_launch",
    "new_credential",
    "principal_from_row",
    "read_launch",
    "remember_jti",
    "revocations",
    "revoke_grant",
    "save_code",
    "store_tokens",
    "take_launch",
]

CODE_TTL = timedelta(seconds=60)  # SMART: codes expire within 60 s
LAUNCH_TTL = timedelta(minutes=5)
REFRESH_TTL = timedelta(days=30)


def new_credential() -> str:
    return secrets.token_urlsafe(32)


def digest(credential: str) -> bytes:
    return hashlib.sha256(credential.encode()).digest()


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One issued token, as stored (authlib's TokenMixin methods included)."""

    kind: str  # access | refresh
    client_id: str
    scope: str
    user_id: str | None
    patient: str | None
    grant_id: str
    jti: str
    issued_at: datetime
    expires_at: datetime
    revoked: bool

    def check_client(self, client: Any) -> bool:
        return bool(client is not None and client.get_client_id() == self.client_id)

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return int((self.expires_at - self.issued_at).total_seconds())

    def is_expired(self) -> bool:
        return _aware(self.expires_at) <= datetime.now(UTC)

    def is_revoked(self) -> bool:
        return self.revoked

    @property
    def active(self) -> bool:
        return not self.revoked and not self.is_expired()


def _aware(value: datetime | str) -> datetime:
    if isinstance(value, str):  # SQLite through a text() query: the stored ISO string
        value = datetime.fromisoformat(value)
    return as_utc(value)


def store_tokens(
    conn: Connection,
    body: dict[str, Any],
    *,
    client_id: str,
    user_id: str | None = None,
    patient: str | None = None,
    grant_id: str | None = None,
) -> str:
    """Store the tokens of a token response ``body`` (by digest); returns the grant id."""
    now = datetime.now(UTC)
    grant_id = grant_id or uuid.uuid4().hex
    rows = [_row(body["access_token"], "access", now, now + timedelta(seconds=body["expires_in"]))]
    if "refresh_token" in body:
        rows.append(_row(body["refresh_token"], "refresh", now, now + REFRESH_TTL))
    common = {
        "client_id": client_id,
        "scope": body["scope"],
        "user_id": user_id,
        "patient": patient,
        "grant_id": grant_id,
        "revoked": False,
    }
    conn.execute(insert(AuthToken), [{**r, **common} for r in rows])
    return grant_id


def _row(credential: str, kind: str, now: datetime, expires: datetime) -> dict[str, Any]:
    return {
        "token_hash": digest(credential),
        "kind": kind,
        "jti": uuid.uuid4().hex,
        "issued_at": now,
        "expires_at": expires,
    }


def lookup_token(conn: Connection, credential: str, kind: str | None = None) -> TokenRecord | None:
    """The stored token for this credential (active or not), None if never issued."""
    row = conn.execute(select(AuthToken).filter_by(token_hash=digest(credential))).first()
    if row is None or (kind is not None and row.kind != kind):
        return None
    return record(row)


def record(row: Any) -> TokenRecord:
    return TokenRecord(
        kind=row.kind,
        client_id=row.client_id,
        scope=row.scope,
        user_id=row.user_id,
        patient=row.patient,
        grant_id=row.grant_id,
        jti=row.jti,
        issued_at=_aware(row.issued_at),
        expires_at=_aware(row.expires_at),
        revoked=bool(row.revoked),
    )


class _Revocations:
    """Counts revocations made in this process: a principal cached before the latest one is
    not trusted (see ``fhir_server.http.PrincipalCache``)."""

    generation = 0

    @classmethod
    def bump(cls) -> None:
        cls.generation += 1


revocations = _Revocations


def revoke_user_client(conn: Connection, *, user_id: str, client_id: str) -> int:
    """Sign-out: every live token this user holds through this client ends. Returns how many."""
    done = conn.execute(
        update(AuthToken)
        .where(
            AuthToken.user_id == user_id,
            AuthToken.client_id == client_id,
            AuthToken.revoked.is_(False),
        )
        .values(revoked=True)
    )
    revocations.bump()
    return int(done.rowcount or 0)


def revoke_grant(conn: Connection, grant_id: str) -> int:
    """End every token of a grant; returns how many were still live."""
    done = conn.execute(
        update(AuthToken)
        .where(AuthToken.grant_id == grant_id, AuthToken.revoked.is_(False))
        .values(revoked=True)
    )
    revocations.bump()
    return int(done.rowcount or 0)


@dataclass(frozen=True, slots=True)
class CodeRecord:
    """A redeemed authorization code (authlib's AuthorizationCodeMixin methods included)."""

    client_id: str
    redirect_uri: str
    scope: str
    user_id: str
    patient: str | None
    nonce: str | None
    code_challenge: str
    grant_id: str
    code_challenge_method: str = "S256"

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int | None:
        return None


def save_code(
    conn: Connection,
    *,
    code: str,
    client_id: str,
    redirect_uri: str,
    scope: str,
    user_id: str,
    patient: str | None,
    nonce: str | None,
    code_challenge: str,
) -> None:
    conn.execute(
        insert(AuthCode).values(
            code_hash=digest(code),
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope=scope,
            user_id=user_id,
            patient=patient,
            nonce=nonce,
            code_challenge=code_challenge,
            grant_id=uuid.uuid4().hex,
            expires_at=datetime.now(UTC) + CODE_TTL,
            used=False,
        )
    )


def consume_code(conn: Connection, code: str, client_id: str) -> CodeRecord | None:
    """Redeem a code once. A second use revokes everything the first use issued (RFC 6749
    §4.1.2); an expired code, or one issued to another client, is simply refused."""
    row = conn.execute(select(AuthCode).filter_by(code_hash=digest(code))).first()
    if row is None:
        return None
    code_row = row
    if code_row.used:
        revoke_grant(conn, code_row.grant_id)
        return None
    if code_row.client_id != client_id or _aware(code_row.expires_at) <= datetime.now(UTC):
        return None
    conn.execute(update(AuthCode).filter_by(code_hash=code_row.code_hash).values(used=True))
    return CodeRecord(
        client_id=code_row.client_id,
        redirect_uri=code_row.redirect_uri,
        scope=code_row.scope,
        user_id=code_row.user_id,
        patient=code_row.patient,
        nonce=code_row.nonce,
        code_challenge=code_row.code_challenge,
        grant_id=code_row.grant_id,
    )


def remember_jti(conn: Connection, *, client_id: str, jti: str, expires_at: datetime) -> bool:
    """Record a client assertion's ``jti``; False if this client used it before."""
    now = datetime.now(UTC)
    conn.execute(delete(AuthJti).where(AuthJti.expires_at < now))
    values = {"client_id": client_id, "jti": jti, "expires_at": expires_at}
    dialect = conn.dialect.name
    stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(AuthJti).values(**values)
    inserted = conn.execute(stmt.on_conflict_do_nothing().returning(AuthJti.jti)).first()
    return inserted is not None  # (rowcount is -1 here on psycopg)


def mint_launch(conn: Connection, *, patient: str | None, encounter: str | None = None) -> str:
    """An EHR launch value carrying the context the app will be launched into: good for one
    authorization (:func:`take_launch`) within :data:`LAUNCH_TTL`."""
    launch = new_credential()
    conn.execute(
        insert(AuthLaunch).values(
            launch_hash=digest(launch),
            patient=patient,
            encounter=encounter,
            expires_at=datetime.now(UTC) + LAUNCH_TTL,
        )
    )
    return launch


def read_launch(conn: Connection, launch: str) -> Any:
    """The launch context, if the value is live (minted here, not expired, not yet used);
    reading it does not use it."""
    row = conn.execute(select(AuthLaunch).filter_by(launch_hash=digest(launch))).first()
    if row is None or _aware(row.expires_at) <= datetime.now(UTC):
        return None
    return row


def take_launch(conn: Connection, launch: str) -> Any:
    """Use a launch value: its context once, then never again (None if it is unknown, expired
    or already used).

    One ``DELETE … RETURNING``: of two transactions taking the same value, PostgreSQL makes
    the second wait on the first's row lock and then finds the row gone, and SQLite runs one
    writer at a time; so exactly one of them gets it. If the transaction rolls back (the
    authorization failed), the value is live again.
    """
    row = conn.execute(
        delete(AuthLaunch)
        .where(AuthLaunch.launch_hash == digest(launch))
        .returning(AuthLaunch.patient, AuthLaunch.encounter, AuthLaunch.expires_at)
    ).first()
    if row is None or _aware(row.expires_at) <= datetime.now(UTC):
        return None
    return row


# One query answers "is this bearer token good, and for whom": the token, its client and its
# user must all still be in good standing.
ACTIVE_ACCESS_SQL = (
    "SELECT t.client_id, t.scope, t.user_id, t.patient, t.jti, t.expires_at, u.fhir_user, "
    "u.role "
    "FROM auth_token t JOIN oauth_client c ON c.client_id = t.client_id "
    "LEFT JOIN oauth_user u ON u.user_id = t.user_id "
    "WHERE t.token_hash = {p} AND t.kind = 'access' AND NOT t.revoked AND NOT c.revoked "
    "AND (t.user_id IS NULL OR NOT u.disabled)"
)


def principal_from_row(row: Any) -> Principal | None:
    """The principal for an :data:`ACTIVE_ACCESS_SQL` row (None once it has expired)."""
    if row is None or (expires := _aware(row[5])) <= datetime.now(UTC):
        return None
    return Principal(
        expires_at=expires.timestamp(),
        client_id=row[0],
        grants=Grants.parse(row[1]),
        user_id=row[2],
        patient=row[3],
        jti=row[4],
        fhir_user=row[6],
        role=row[7],
    )


_SQLITE_ACTIVE_ACCESS = ACTIVE_ACCESS_SQL.format(p="?")


def active_principal(conn: Connection, credential: str) -> Principal | None:
    """The principal for a bearer token on the synchronous path (SQLite: straight to the
    driver, as this runs on every request)."""
    if conn.dialect.name == "sqlite":
        row = conn.exec_driver_sql(_SQLITE_ACTIVE_ACCESS, (digest(credential),)).first()
        return principal_from_row(row)
    sql = text(ACTIVE_ACCESS_SQL.format(p=":h"))
    return principal_from_row(conn.execute(sql, {"h": digest(credential)}).first())
