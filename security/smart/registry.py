"""Who may ask for tokens: registered clients and the users who sign in.

Nothing secret is stored in a form that can be read back: client secrets and passwords are
argon2id hashes; a user's login name is a keyed blind digest (a patient's login is often an
e-mail address, which is PHI), so ``user list`` shows ids, roles and links, never names.

Roles bound what a signed-in user can be granted (``ROLE_SCOPES``); a client's registration
bounds what it can be granted (``OAuthClient.scope``). A token gets the requested scopes that
both allow (:meth:`security.scopes.Grants.narrowed`). The audit log is granted only when both
name it (``user/AuditEvent.rs``): a wildcard in either does not reach it
(:data:`security.scopes.NAMED_ONLY`).
"""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, insert, select, update

from resources.sql.tables import OAuthClient, OAuthUser
from security.crypto import KeyRing
from security.scopes import Grants, ScopeError
from security.smart.tokens import revocations

__all__ = [
    "CLIENT_KINDS",
    "ROLES",
    "ROLE_DOORS",
    "ROLE_SCOPES",
    "Client",
    "RegistryError",
    "User",
    "add_client",
    "add_redirect_uris",
    "add_user",
    "find_user",
    "get_client",
    "get_user",
    "list_clients",
    "list_users",
    "revoke_client",
    "set_fhir_user",
    "set_user_disabled",
]

CLIENT_KINDS = ("public", "symmetric", "asymmetric")
_OPERATIONS = "Appointment.$find Appointment.$hold Appointment.$book"
_DIRECTORY = (
    "Slot.rs Schedule.rs Practitioner.rs PractitionerRole.rs Location.rs HealthcareService.rs"
)


def _scopes(context: str, *groups: str) -> str:
    return " ".join(f"{context}/{item}" for group in groups for item in group.split())


# Communication: the booking agent's conversations (its staff queue, ``/agent/…``): the front
# desk answers them; compliance reads them, to go from an AuditEvent to the transcript
ROLE_SCOPES = {
    "front-desk": _scopes(
        "user", "Patient.cruds Appointment.cruds Communication.cruds", _OPERATIONS, _DIRECTORY
    ),
    "clinician": _scopes("user", "*.rs Appointment.u", _OPERATIONS),
    "compliance": _scopes("user", "AuditEvent.rs Communication.rs"),
    # the EMR team: reviews and replays HL7 messages (ROLE_DOORS); of FHIR only the directory
    # (who and where a message names), no patient data beyond what the message screens show
    "interface": _scopes("user", _DIRECTORY),
    # Communication.rs: the texts the clinic sent the patient (reminders, offers) and replies
    "patient": _scopes(
        "patient", "Patient.rs Appointment.rs Communication.rs", _OPERATIONS, _DIRECTORY
    ),
}
ROLES = tuple(ROLE_SCOPES)
# What each role may do at the doors that are not FHIR resources, so no scope names them
# (``fhir_server/routes/hl7.py``): a door is open to a user token whose role is listed.
# The listing shows no message content; ``show`` does (PHI) and ``replay`` changes data.
ROLE_DOORS: dict[str, frozenset[str]] = {
    "hl7.list": frozenset({"interface", "front-desk"}),
    "hl7.show": frozenset({"interface"}),
    "hl7.replay": frozenset({"interface"}),
}
# scopes about identity and session, allowed to every signed-in user
SESSION_SCOPES = "openid fhirUser profile launch launch/patient offline_access"

_hasher = PasswordHasher()  # argon2id, the library's current recommended parameters


class RegistryError(ValueError):
    """A registration that cannot be accepted (the message says what to change)."""


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    kind: str
    secret_hash: str | None
    jwks: dict[str, Any] | None
    jwks_uri: str | None
    scope: str
    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    revoked: bool

    @property
    def allowed(self) -> Grants:
        return Grants.parse(self.scope)

    def check_secret(self, secret: str) -> bool:
        return self.secret_hash is not None and _verify(self.secret_hash, secret)

    def summary(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "name": self.name,
            "kind": self.kind,
            "scope": self.scope,
            "redirect_uris": list(self.redirect_uris),
            "grant_types": list(self.grant_types),
            "jwks_uri": self.jwks_uri,
            "revoked": self.revoked,
        }


@dataclass(frozen=True, slots=True)
class User:
    user_id: str
    role: str
    fhir_user: str | None
    patients: tuple[str, ...]
    disabled: bool
    password_hash: str

    @property
    def allowed(self) -> Grants:
        return Grants.parse(f"{ROLE_SCOPES[self.role]} {SESSION_SCOPES}")

    def summary(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "role": self.role,
            "fhir_user": self.fhir_user,
            "patients": list(self.patients),
            "disabled": self.disabled,
        }


def _verify(hashed: str, secret: str) -> bool:
    try:
        return _hasher.verify(hashed, secret)
    except (VerificationError, InvalidHashError):
        return False


def _check_scope(scope: str) -> str:
    try:
        return str(Grants.parse(scope))
    except ScopeError as exc:
        raise RegistryError(f"scope: {exc}") from None


def _grant_types(kind: str, scope: Grants) -> tuple[str, ...]:
    if kind == "public":
        types = ["authorization_code"]
    else:
        types = ["authorization_code", "client_credentials"]
    if "offline_access" in scope.other:
        types.append("refresh_token")
    return tuple(types)


def add_client(
    conn: Connection,
    *,
    name: str,
    kind: str,
    scope: str,
    redirect_uris: list[str] | None = None,
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
    client_id: str | None = None,
    secret: str | None = None,
) -> tuple[Client, str | None]:
    """Register a client. Returns it and, for a symmetric client, its secret (shown once;
    a random one unless ``secret`` is given, as the demo does)."""
    if kind not in CLIENT_KINDS:
        raise RegistryError(f"kind must be one of {', '.join(CLIENT_KINDS)}, not {kind!r}")
    scope = _check_scope(scope)
    grants = Grants.parse(scope)
    uris = list(redirect_uris or [])
    for uri in uris:
        if not uri.startswith(("https://", "http://localhost", "http://127.0.0.1")):
            raise RegistryError(f"redirect URI {uri!r} must be https (or http on loopback)")
    if kind == "public" and not uris:
        raise RegistryError("a public client signs users in, so it needs a redirect URI")
    if kind == "public" and "system" in grants.contexts:
        raise RegistryError("a public client cannot hold system/ scopes")
    if kind == "asymmetric":
        if (jwks is None) == (jwks_uri is None):
            raise RegistryError("an asymmetric client registers a JWKS or a JWKS URL (one)")
        if jwks is not None:
            keys = jwks.get("keys")
            if not isinstance(keys, list) or not keys:
                raise RegistryError('the JWKS needs a non-empty "keys" list')
            if any("d" in k or "k" in k for k in keys if isinstance(k, dict)):
                raise RegistryError("the JWKS holds private or symmetric key material")
    elif jwks is not None or jwks_uri is not None:
        raise RegistryError("only an asymmetric client registers keys")
    if kind != "symmetric":
        secret = None
    elif secret is None:
        secret = secrets.token_urlsafe(32)
    row = {
        "client_id": client_id or uuid.uuid4().hex,
        "name": name,
        "kind": kind,
        "secret_hash": _hasher.hash(secret) if secret else None,
        "jwks": json.dumps(jwks) if jwks is not None else None,
        "jwks_uri": jwks_uri,
        "scope": scope,
        "redirect_uris": " ".join(uris),
        "grant_types": " ".join(_grant_types(kind, grants)),
        "created": datetime.now(UTC),
        "revoked": False,
    }
    if conn.execute(select(OAuthClient.client_id).filter_by(client_id=row["client_id"])).first():
        raise RegistryError(f"client id {row['client_id']!r} is already registered")
    conn.execute(insert(OAuthClient).values(**row))
    client = get_client(conn, str(row["client_id"]))
    assert client is not None
    return client, secret


def add_redirect_uris(conn: Connection, client_id: str, uris: list[str]) -> list[str]:
    """Add redirect URIs to a registered client (those it lacks); returns the ones added."""
    client = get_client(conn, client_id)
    if client is None:
        raise RegistryError(f"no client {client_id!r}")
    for uri in uris:
        if not uri.startswith(("https://", "http://localhost", "http://127.0.0.1")):
            raise RegistryError(f"redirect URI {uri!r} must be https (or http on loopback)")
    added = [u for u in dict.fromkeys(uris) if u not in client.redirect_uris]
    if added:
        joined = " ".join([*client.redirect_uris, *added])
        conn.execute(
            update(OAuthClient).filter_by(client_id=client_id).values(redirect_uris=joined)
        )
    return added


def _client(row: Any) -> Client:
    return Client(
        client_id=row.client_id,
        name=row.name,
        kind=row.kind,
        secret_hash=row.secret_hash,
        jwks=json.loads(row.jwks) if row.jwks else None,
        jwks_uri=row.jwks_uri,
        scope=row.scope,
        redirect_uris=tuple(row.redirect_uris.split()),
        grant_types=tuple(row.grant_types.split()),
        revoked=bool(row.revoked),
    )


def get_client(conn: Connection, client_id: str) -> Client | None:
    row = conn.execute(select(OAuthClient).filter_by(client_id=client_id)).first()
    return _client(row) if row else None


def list_clients(conn: Connection) -> list[Client]:
    rows = conn.execute(select(OAuthClient).order_by(OAuthClient.created)).all()
    return [_client(r) for r in rows]


def revoke_client(conn: Connection, client_id: str) -> bool:
    """Refuse the client from now on and end every token it holds."""
    from resources.sql.tables import AuthToken

    done = conn.execute(
        update(OAuthClient).filter_by(client_id=client_id).values(revoked=True)
    ).rowcount
    conn.execute(update(AuthToken).filter_by(client_id=client_id).values(revoked=True))
    revocations.bump()
    return bool(done)


def _login_digest(keys: KeyRing, login: str) -> bytes:
    return keys.blind("oauth_user.login", login.strip().casefold())


def add_user(
    conn: Connection,
    keys: KeyRing,
    *,
    login: str,
    password: str,
    role: str,
    fhir_user: str | None = None,
    patients: list[str] | None = None,
) -> User:
    """Register someone who signs in. A patient user acts for their own Patient (``fhir_user``)
    and any listed here (a parent for a child, say)."""
    if role not in ROLE_SCOPES:
        raise RegistryError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if len(password) < 10:
        raise RegistryError("the password must be at least 10 characters long")
    if fhir_user is not None:
        _check_fhir_user(fhir_user)
    ids = list(patients or [])
    if fhir_user and fhir_user.startswith("Patient/") and fhir_user[8:] not in ids:
        ids.insert(0, fhir_user[8:])
    if role == "patient" and not ids:
        raise RegistryError("a patient user needs fhirUser Patient/<id> or a patient to act for")
    digest = _login_digest(keys, login)
    if conn.execute(select(OAuthUser.user_id).filter_by(login_digest=digest)).first():
        raise RegistryError("that login is already taken")
    user_id = uuid.uuid4().hex
    conn.execute(
        insert(OAuthUser).values(
            user_id=user_id,
            login_digest=digest,
            password_hash=_hasher.hash(password),
            role=role,
            fhir_user=fhir_user,
            patients=" ".join(ids),
            created=datetime.now(UTC),
            disabled=False,
        )
    )
    user = get_user(conn, user_id)
    assert user is not None
    return user


def _check_fhir_user(fhir_user: str) -> None:
    rtype, _, rid = fhir_user.partition("/")
    if rtype not in ("Patient", "Practitioner", "PractitionerRole", "RelatedPerson") or not rid:
        raise RegistryError(
            "fhirUser must be a relative reference such as Practitioner/123 or Patient/abc"
        )


def set_fhir_user(conn: Connection, keys: KeyRing, *, login: str, fhir_user: str) -> bool:
    """Link a staff user to their record (the id_token's ``fhirUser``); True if it changed.
    A patient user's record is set when they are added, with the patients they act for."""
    _check_fhir_user(fhir_user)
    if fhir_user.startswith("Patient/"):
        raise RegistryError("a patient user's fhirUser is set when the user is added")
    done = conn.execute(
        update(OAuthUser)
        .filter_by(login_digest=_login_digest(keys, login))
        .filter(OAuthUser.role != "patient", OAuthUser.fhir_user.is_distinct_from(fhir_user))
        .values(fhir_user=fhir_user)
    ).rowcount
    return bool(done)


def _user(row: Any) -> User:
    return User(
        user_id=row.user_id,
        role=row.role,
        fhir_user=row.fhir_user,
        patients=tuple(row.patients.split()),
        disabled=bool(row.disabled),
        password_hash=row.password_hash,
    )


def get_user(conn: Connection, user_id: str) -> User | None:
    row = conn.execute(select(OAuthUser).filter_by(user_id=user_id)).first()
    return _user(row) if row else None


def find_user(conn: Connection, keys: KeyRing, *, login: str, password: str) -> User | None:
    """The enabled user with this login and password, else None (same answer for both)."""
    row = conn.execute(select(OAuthUser).filter_by(login_digest=_login_digest(keys, login))).first()
    if row is None:
        _hasher.hash(password)  # spend the same time as a real check: no login oracle
        return None
    user = _user(row)
    if not _verify(user.password_hash, password) or user.disabled:
        return None
    return user


def list_users(conn: Connection) -> list[User]:
    rows = conn.execute(select(OAuthUser).order_by(OAuthUser.created)).all()
    return [_user(r) for r in rows]


def set_user_disabled(conn: Connection, user_id: str, *, disabled: bool = True) -> bool:
    """Disable (or re-enable) a user; disabling ends the tokens issued to them."""
    from resources.sql.tables import AuthToken

    done = conn.execute(
        update(OAuthUser).filter_by(user_id=user_id).values(disabled=disabled)
    ).rowcount
    if disabled:
        conn.execute(update(AuthToken).filter_by(user_id=user_id).values(revoked=True))
        revocations.bump()
    return bool(done)
