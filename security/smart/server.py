"""The OAuth 2 authorization server: authlib's ``AuthorizationServer`` adapted to our storage
and to SMART's stricter rules. authlib has no FastAPI integration; the HTTP layer hands it an
:class:`OAuthRequest` built from the already-read form and takes back ``(status, body,
headers)``.

What SMART changes from authlib's defaults:

* PKCE is required for every authorization code and only ``S256`` is accepted (authlib allows
  ``plain`` and a missing challenge);
* client assertions (``private_key_jwt``, RFC 7523) are verified with an explicit algorithm
  allow-list, RS384 and ES384 (joserfc's defaults refuse both), a ``jti`` that may be used once,
  an ``exp`` at most five minutes ahead, and a ``jku`` only if it is the registered JWKS URL;
* a token's scope is what the client's registration and the user's role both allow;
  backend (``client_credentials``) tokens last at most 300 s and have no refresh token.

See https://build.fhir.org/ig/HL7/smart-app-launch/ and RFC 6749, 7009, 7523, 7636, 7662.
"""

from __future__ import annotations

import contextvars
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlencode

import httpx
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    InvalidClientError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    OAuth2Payload,
    OAuth2Request,
    grants,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import Connection, update
from sqlalchemy.exc import DBAPIError

from resources.sql.engine import Database
from resources.sql.tables import AuthToken
from security.audit import append
from security.balp import Actor, balp_event
from security.crypto import KeyRing
from security.scopes import Grants, ScopeError
from security.smart import tokens
from security.smart.registry import Client, User, get_client, get_user
from security.smart.signing import IdTokenSigner
from security.trail import AuditUnavailable

__all__ = [
    "ASSERTION_ALGORITHMS",
    "SYSTEM_TOKEN_TTL",
    "USER_TOKEN_TTL",
    "OAuthRequest",
    "SmartServer",
    "malformed",
]

ASSERTION_ALGORITHMS = ["RS384", "ES384"]  # SMART Backend Services: the server SHALL support
USER_TOKEN_TTL = 3600
SYSTEM_TOKEN_TTL = 300
MAX_ASSERTION_LIFETIME = 300  # exp at most five minutes ahead
JWKS_CACHE_SECONDS = 300

# RFC 6749 Appendix A: a scope token is NQCHAR (%x21 / %x23-5B / %x5D-7E); the other
# parameters authlib reads, and may quote back in an error description, are printable ASCII
# without " and \ (error descriptions may hold nothing else, §4.1.2.1)
_SCOPE = re.compile(r"[ \x21\x23-\x5B\x5D-\x7E]*")
_PLAIN = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]*")
_PLAIN_PARAMETERS = (
    "client_id",
    "redirect_uri",
    "response_type",
    "grant_type",
    "code_challenge",
    "code_challenge_method",
    "code_verifier",
    "code",
    "refresh_token",
    "token_type_hint",
    "client_assertion_type",
)


def _printable(text: str) -> str:
    """``text`` fit for an OAuth error description: anything else becomes ``?``."""
    return "".join(c if c != '"' and c != "\\" and " " <= c <= "~" else "?" for c in text)


def malformed(request: OAuth2Request) -> OAuth2Error | None:
    """The error for a parameter no client could have meant, before authlib reads it (it would
    quote the value back in a description, which RFC 6749 forbids for such characters)."""
    data = request.payload.data
    for name in _PLAIN_PARAMETERS:
        value = data.get(name)
        if value is not None and not _PLAIN.fullmatch(value):
            return InvalidRequestError(
                f"{name} holds characters OAuth does not allow there (RFC 6749 Appendix A)"
            )
    return None


def _parse_scope(scope: str | None) -> Grants:
    if scope and not _SCOPE.fullmatch(scope):
        raise InvalidScopeError(
            description="scope is scope tokens separated by spaces, each printable ASCII "
            "without quotes or backslashes (RFC 6749 section 3.3)"
        )
    try:
        return Grants.parse(scope or "")
    except ScopeError as exc:
        raise InvalidScopeError(description=_printable(str(exc))) from None


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._datalist: dict[str, list[str]] = defaultdict(list)
        for key, value in pairs:
            self._datalist[key].append(value)
        self._data = {key: values[0] for key, values in self._datalist.items()}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class OAuthRequest(OAuth2Request):  # type: ignore[misc]
    """An HTTP request as authlib sees it: method, URL, headers, query and form.

    authlib's own constructor refuses plain-HTTP URLs; transport security is decided where the
    server binds (``Settings.check_bind``), so this request is built without that check.
    """

    def __init__(
        self,
        *,
        method: str,
        uri: str,
        headers: Mapping[str, str],
        query: list[tuple[str, str]],
        form: list[tuple[str, str]],
        address: str | None = None,
    ) -> None:
        self.address = address
        self.method = method
        self.uri = uri
        self.headers = headers
        self._body = None
        self.payload = _Payload(query + form)
        self._args = dict(query)
        self._form = dict(form)
        self.client = None
        self.auth_method = None
        self.user = None
        self.authorization_code = None
        self.refresh_token = None
        self.credential = None
        self._scope = None

    @property
    def args(self) -> dict[str, str]:
        return self._args

    @property
    def form(self) -> dict[str, str]:
        return self._form


@dataclass(frozen=True)
class ClientModel:
    """A registered client with the methods authlib asks of one (``ClientMixin``)."""

    client: Client

    def get_client_id(self) -> str:
        return self.client.client_id

    def get_default_redirect_uri(self) -> str | None:
        uris = self.client.redirect_uris
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        granted = self.client.allowed.narrowed(_parse_scope(scope))
        return str(granted) or None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.client.redirect_uris  # exact match, no prefixes

    def check_client_secret(self, client_secret: str) -> bool:
        return self.client.check_secret(client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        expected = {
            "public": "none",
            "symmetric": "client_secret_basic",
            "asymmetric": "private_key_jwt",
        }[self.client.kind]
        return method == expected

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.client.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.client.grant_types


class S256Only(CodeChallenge):  # type: ignore[misc]
    """PKCE as SMART requires it: a challenge on every request, ``S256`` named explicitly."""

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": CodeChallenge.CODE_CHALLENGE_METHODS["S256"]}

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send code_challenge (S256)")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)

    def get_authorization_code_challenge_method(self, authorization_code: Any) -> str:
        return "S256"


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """``private_key_jwt`` client authentication (RFC 7523 §2.2, SMART Backend Services)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, server: SmartServer) -> None:
        super().__init__(validate_jti=True, leeway=0)
        self.server = server

    def __call__(self, query_client: Callable[[str], Any], request: OAuth2Request) -> Any:
        if request.form.get("client_assertion_type") != self.CLIENT_ASSERTION_TYPE:
            return None
        assertion = request.form.get("client_assertion")
        if not assertion:
            raise InvalidClientError(description="client_assertion is missing")
        header, claims = self.extract_assertion(assertion)
        alg = header.get("alg")
        if alg not in ASSERTION_ALGORITHMS:
            raise InvalidClientError(
                description=_printable(
                    f"alg {alg!r} is not accepted (use one of {ASSERTION_ALGORITHMS})"
                )
            )
        client_id = claims.get("sub")
        if not isinstance(client_id, str) or claims.get("iss") != client_id:
            raise InvalidClientError(description="iss and sub must both be the client id")
        client = query_client(client_id)
        if client is None:
            raise InvalidClientError(description="the client is not registered here")
        registered = client.client
        if "jku" in header and header["jku"] != registered.jwks_uri:
            raise InvalidClientError(description="jku is not this client's registered JWKS URL")
        keys = self.server.client_keys(registered)
        kid = header.get("kid")
        if kid is not None and all(k.kid != kid for k in keys.keys):
            raise InvalidClientError(description=_printable(f"no registered key has kid {kid!r}"))
        try:
            token = jwt.decode(assertion, keys, algorithms=ASSERTION_ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description="the client assertion does not verify") from exc
        exp = token.claims.get("exp")
        if not isinstance(exp, int | float) or exp > time.time() + MAX_ASSERTION_LIFETIME:
            raise InvalidClientError(description="exp must be at most five minutes ahead")
        request.client = client
        self.verify_claims(token.claims)
        return self.authenticate_client(client)

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            obj = jws.extract_compact(assertion.encode())
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description="the client assertion is not a JWT") from exc
        header, claims = obj.headers(), super().extract_assertion(assertion)[1]
        return dict(header), dict(claims)

    def get_audiences(self) -> list[str]:
        return [self.server.token_url]

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        expires = datetime.fromtimestamp(float(claims["exp"]), UTC)
        fresh = tokens.remember_jti(
            self.server.conn, client_id=str(claims["sub"]), jti=str(jti), expires_at=expires
        )
        if not fresh:
            _alert.set("a client assertion's jti was replayed")
        return fresh


class _TokenEndpointClients:
    CLIENT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt", "none"]


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = _TokenEndpointClients.CLIENT_AUTH_METHODS
    server: SmartServer

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        self.server.save_code(
            code,
            client_id=request.client.get_client_id(),
            redirect_uri=data.get("redirect_uri") or "",
            scope=request.scope,
            user=request.user,
            nonce=data.get("nonce"),
            code_challenge=data["code_challenge"],
        )

    def query_authorization_code(self, code: str, client: ClientModel) -> Any:
        return tokens.consume_code(self.server.conn, code, client.get_client_id())

    def delete_authorization_code(self, authorization_code: Any) -> None:
        """Nothing to delete: :func:`tokens.consume_code` marked it used (a replay must find
        it, to revoke what it issued)."""

    def authenticate_user(self, authorization_code: Any) -> Any:
        return self.server.active_user(authorization_code.user_id)


class ClientCredentialsGrant(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt"]


class RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = _TokenEndpointClients.CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotate: each refresh token works once
    server: SmartServer

    def authenticate_refresh_token(self, refresh_token: str) -> Any:
        """The live refresh token, or None. One already spent (rotated) or revoked ends its
        whole grant: either the app or a thief used it before, and the server cannot tell
        which, so neither keeps the tokens it got (OAuth 2.1 §4.3.1, reuse detection)."""
        conn = self.server.conn
        record = tokens.lookup_token(conn, refresh_token, "refresh")
        if record is None:
            return None
        if record.revoked:
            if tokens.revoke_grant(conn, record.grant_id):
                _alert.set("a spent refresh token was used again: its grant is revoked")
            return None
        return record if record.active else None

    def authenticate_user(self, refresh_token: Any) -> Any:
        return self.server.active_user(refresh_token.user_id)

    def revoke_old_credential(self, refresh_token: Any) -> None:
        conn = self.server.conn
        conn.execute(
            update(AuthToken)
            .where(AuthToken.jti == refresh_token.jti, AuthToken.kind == "refresh")
            .values(revoked=True)
        )


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662: a client may introspect the tokens issued to it."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "private_key_jwt"]
    server: SmartServer

    def query_token(self, token: str, token_type_hint: str | None) -> Any:
        return tokens.lookup_token(self.server.conn, token)

    def check_permission(self, token: Any, client: Any, request: Any) -> bool:
        return bool(token.check_client(client))

    def introspect_token(self, token: Any) -> dict[str, Any]:
        if not self.server.grant_alive(token):
            return {"active": False}
        body: dict[str, Any] = {
            "active": True,
            "scope": token.scope,
            "client_id": token.client_id,
            "token_type": "Bearer" if token.kind == "access" else "refresh_token",
            "exp": int(token.expires_at.timestamp()),
            "iat": int(token.issued_at.timestamp()),
            "jti": token.jti,
        }
        if token.patient:
            body["patient"] = token.patient
        user = self.server.active_user(token.user_id) if token.user_id else None
        if user is not None:
            body["sub"] = user.user_id
            if user.fhir_user:
                body["fhirUser"] = f"{self.server.fhir_base}/{user.fhir_user}"
        return body


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009: revoking either token of a grant ends the whole grant."""

    CLIENT_AUTH_METHODS = _TokenEndpointClients.CLIENT_AUTH_METHODS
    server: SmartServer

    def query_token(self, token: str, token_type_hint: str | None) -> Any:
        return tokens.lookup_token(self.server.conn, token)

    def revoke_token(self, token: Any, request: Any) -> None:
        tokens.revoke_grant(self.server.conn, token.grant_id)


_current_conn: contextvars.ContextVar[Connection] = contextvars.ContextVar("oauth_conn")
_alert: contextvars.ContextVar[str | None] = contextvars.ContextVar("oauth_alert", default=None)


class SmartServer(AuthorizationServer):  # type: ignore[misc]
    """authlib's server over our registry and token tables; one database transaction per
    request (:meth:`unit`), so a refused request still records what it must (a replayed code's
    revocation, a used ``jti``)."""

    def __init__(
        self,
        *,
        db: Database,
        keys: KeyRing,
        signer: IdTokenSigner,
        issuer: str,
        fhir_base: str,
        audit_enabled: bool = True,
    ) -> None:
        super().__init__(scopes_supported=None)
        self.audit_enabled = audit_enabled
        self.db = db
        self.keys = keys
        self.signer = signer
        self.issuer = issuer.rstrip("/")
        self.fhir_base = fhir_base.rstrip("/")
        self.token_url = f"{self.issuer}/auth/token"
        self._jwks_cache: dict[str, tuple[float, KeySet]] = {}
        self.register_token_generator("default", self._generate)
        self.register_client_auth_method("private_key_jwt", PrivateKeyJWT(self))
        self.register_grant(AuthorizationCodeGrant, [S256Only(required=True)])
        self.register_grant(ClientCredentialsGrant)
        self.register_grant(RefreshTokenGrant)
        self.register_endpoint(Introspection)
        self.register_endpoint(Revocation)

    # -- one transaction per request --------------------------------------------------------
    @contextmanager
    def unit(self) -> Iterator[Connection]:
        with self.db.write() as conn:
            reset = _current_conn.set(conn)
            alert = _alert.set(None)
            try:
                yield conn
            finally:
                _current_conn.reset(reset)
                _alert.reset(alert)

    def audit(
        self,
        kind: str,
        request: OAuthRequest,
        *,
        status: int,
        client_id: str | None = None,
        user: User | None = None,
        description: str | None = None,
    ) -> None:
        """Record an authorization event in this request's transaction (with it, or not at
        all); a replayed assertion is recorded as a security alert too."""
        if not self.audit_enabled:
            return
        who = None
        if user is not None:
            who = user.fhir_user or user.user_id
        actor = Actor(client_id=client_id, address=request.address, user=who)
        outcome = "success" if status < 400 else "minor"
        events = [
            balp_event(
                kind=kind,
                actor=actor,
                server=self.fhir_base,
                outcome=outcome,
                description=description,
            )
        ]
        alert = _alert.get()
        if alert:
            events.append(
                balp_event(
                    kind="alert",
                    actor=actor,
                    server=self.fhir_base,
                    outcome="serious",
                    description=alert,
                )
            )
        try:
            append(self.conn, self.keys, events)
        except DBAPIError as exc:
            raise AuditUnavailable("the audit log refused the record") from exc

    @property
    def conn(self) -> Connection:
        return _current_conn.get()

    # -- what authlib asks of a framework integration ---------------------------------------
    def create_oauth2_request(self, request: Any) -> Any:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, Any]:
        return status, body, headers

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """authlib's hook for events (token revoked…); the audit log will listen here."""

    # -- storage ------------------------------------------------------------------------------
    def query_client(self, client_id: str) -> ClientModel | None:
        client = get_client(self.conn, client_id)
        return ClientModel(client) if client is not None and not client.revoked else None

    def active_user(self, user_id: str | None) -> User | None:
        user = get_user(self.conn, user_id) if user_id else None
        return user if user is not None and not user.disabled else None

    def end_session(self, request: OAuthRequest) -> tuple[int, str | None]:
        """OpenID RP-Initiated Logout in this request's transaction: the user named by
        ``id_token_hint`` is signed out of its client (every token of theirs through it is
        revoked) and the event is audited. Returns (status, where to send the browser)."""
        params = {**request.args, **request.form}
        claims = self.signer.read_hint(params.get("id_token_hint", ""), issuer=self.fhir_base)
        if claims is None:
            self.audit("logout", request, status=400, description="no valid id_token_hint")
            return 400, None
        user_id, client_id = str(claims["sub"]), str(claims["aud"])
        ended = tokens.revoke_user_client(self.conn, user_id=user_id, client_id=client_id)
        user = get_user(self.conn, user_id)
        self.audit(
            "logout",
            request,
            status=200,
            client_id=client_id,
            user=user,
            description=None if ended else "no live tokens",
        )
        wanted = params.get("post_logout_redirect_uri")
        client = self.query_client(client_id)
        if wanted and client is not None and client.check_redirect_uri(wanted):
            state = params.get("state")
            return 303, wanted + (f"?{urlencode({'state': state})}" if state else "")
        return 200, None

    def grant_alive(self, token: tokens.TokenRecord) -> bool:
        client = get_client(self.conn, token.client_id)
        if client is None or client.revoked:
            return False
        return token.user_id is None or self.active_user(token.user_id) is not None

    def client_keys(self, client: Client) -> KeySet:
        """The client's public keys: registered inline, or fetched from its JWKS URL (cached
        for five minutes)."""
        if client.jwks is not None:
            return KeySet.import_key_set(cast(Any, client.jwks))
        if client.jwks_uri is None:
            raise InvalidClientError(description="the client has no registered keys")
        cached = self._jwks_cache.get(client.jwks_uri)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            response = httpx.get(client.jwks_uri, timeout=5, follow_redirects=False)
            response.raise_for_status()
            keyset = KeySet.import_key_set(response.json())
        except (httpx.HTTPError, ValueError, JoseError) as exc:
            raise InvalidClientError(description="the client's JWKS URL did not answer") from exc
        self._jwks_cache[client.jwks_uri] = (time.monotonic() + JWKS_CACHE_SECONDS, keyset)
        return keyset

    def save_code(
        self,
        code: str,
        *,
        client_id: str,
        redirect_uri: str,
        scope: str,
        user: Any,
        nonce: str | None,
        code_challenge: str,
    ) -> None:
        selection: AuthorizationChoice = user
        tokens.save_code(
            self.conn,
            code=code,
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope=selection.scope or scope,
            user_id=selection.user.user_id,
            patient=selection.patient,
            nonce=nonce,
            code_challenge=code_challenge,
        )

    # -- tokens ---------------------------------------------------------------------------
    def _generate(
        self,
        grant_type: str,
        client: ClientModel,
        user: Any = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        requested = _parse_scope(scope)
        allowed = client.client.allowed
        if grant_type == "client_credentials":
            if not scope:  # nothing asked: everything registered
                requested = allowed
            granted = allowed.narrowed(requested)
            granted = Grants(tuple(s for s in granted.scopes if s.context == "system"))
            ttl = SYSTEM_TOKEN_TTL
        else:
            granted = allowed.narrowed(requested)
            if isinstance(user, User):
                granted = user.allowed.narrowed(granted)
            ttl = USER_TOKEN_TTL
        if not granted.scopes:
            raise InvalidScopeError(
                description="none of the requested scopes is allowed for this client"
            )
        refresh = (
            include_refresh_token
            and grant_type != "client_credentials"
            and "offline_access" in granted.other
            and client.check_grant_type("refresh_token")
        )
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "access_token": tokens.new_credential(),
            "expires_in": ttl,
            "scope": str(granted),
        }
        if refresh:
            body["refresh_token"] = tokens.new_credential()
        return body

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        user = request.user
        code = request.authorization_code
        previous = request.refresh_token
        patient = grant_id = None
        if code is not None:
            patient, grant_id = code.patient, code.grant_id
        elif previous is not None:
            patient, grant_id = previous.patient, previous.grant_id
        granted = Grants.parse(token["scope"])
        launch = {"launch", "launch/patient"} & granted.other  # EHR or standalone context
        if patient and ("patient" in granted.contexts or launch):
            token["patient"] = patient
        else:
            patient = None
        if isinstance(user, User) and "openid" in granted.other:
            fhir_user = None
            if user.fhir_user and "fhirUser" in granted.other:
                fhir_user = f"{self.fhir_base}/{user.fhir_user}"
            token["id_token"] = self.signer.id_token(
                issuer=self.fhir_base,
                subject=user.user_id,
                audience=request.client.get_client_id(),
                fhir_user=fhir_user,
                nonce=code.nonce if code is not None else None,
            )
        tokens.store_tokens(
            self.conn,
            token,
            client_id=request.client.get_client_id(),
            user_id=user.user_id if isinstance(user, User) else None,
            patient=patient,
            grant_id=grant_id,
        )


@dataclass(frozen=True, slots=True)
class AuthorizationChoice:
    """What the user decided on the consent page: who they are, the patient they chose and
    the scopes they left ticked. authlib passes it through as the "user" of the grant."""

    user: User
    patient: str | None
    scope: str

    def get_user_id(self) -> str:
        return self.user.user_id
