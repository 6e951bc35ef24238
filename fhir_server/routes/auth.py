"""SMART discovery and the OAuth 2 endpoints: token, introspection, revocation.

The routes read the request (query and form), hand it to :class:`security.smart.server.
SmartServer` and send back what it answers; the interactive authorization pages are in
``fhir_server/routes/authorize.py``.

See https://build.fhir.org/ig/HL7/smart-app-launch/conformance.html
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from fhir_server.http import Services, ServicesDep, run_sync
from fhir_server.openapi import oauth_form
from security.smart.registry import User
from security.smart.server import ASSERTION_ALGORITHMS, OAuthRequest, SmartServer, malformed

router = APIRouter()

FORM = "application/x-www-form-urlencoded"


def smart_configuration(server: SmartServer) -> dict[str, Any]:
    """The SMART configuration document (absolute URLs)."""
    issuer = server.issuer
    return {
        "issuer": server.fhir_base,
        "jwks_uri": f"{issuer}/auth/jwks",
        "authorization_endpoint": f"{issuer}/auth/authorize",
        "token_endpoint": server.token_url,
        "introspection_endpoint": f"{issuer}/auth/introspect",
        "revocation_endpoint": f"{issuer}/auth/revoke",
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "private_key_jwt",
            "none",
        ],
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "scopes_supported": [
            "openid",
            "fhirUser",
            "launch",
            "launch/patient",
            "offline_access",
            "patient/*.rs",
            "user/*.rs",
            "system/*.rs",
            "patient/Appointment.$find",
            "patient/Appointment.$hold",
            "patient/Appointment.$book",
            "user/Appointment.$find",
            "user/Appointment.$hold",
            "user/Appointment.$book",
            "system/Appointment.$find",
            "system/Appointment.$hold",
            "system/Appointment.$book",
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-ehr",
            "launch-standalone",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "sso-openid-connect",
            "context-ehr-patient",
            "context-standalone-patient",
            "permission-offline",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
            "authorize-post",
        ],
    }


def openid_configuration(server: SmartServer) -> dict[str, Any]:
    """OpenID Connect discovery: enough for a client to verify our id_tokens."""
    smart = smart_configuration(server)
    return {
        "issuer": server.fhir_base,
        "authorization_endpoint": smart["authorization_endpoint"],
        "token_endpoint": smart["token_endpoint"],
        "jwks_uri": smart["jwks_uri"],
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "fhirUser", "profile"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "fhirUser", "nonce"],
        "token_endpoint_auth_methods_supported": smart["token_endpoint_auth_methods_supported"],
        "code_challenge_methods_supported": ["S256"],
        "end_session_endpoint": f"{server.issuer}/auth/logout",
    }


def _json(body: Any, status: int = 200, headers: Any = ()) -> Response:
    out = dict(headers)
    out.pop("Content-Type", None)
    return Response(orjson.dumps(body), status, out, media_type="application/json")


@router.get("/.well-known/smart-configuration", include_in_schema=False)
@router.get("/fhir/.well-known/smart-configuration", summary="SMART configuration")
async def smart_config(services: ServicesDep) -> Response:
    return _json(smart_configuration(services.oauth))


@router.get("/.well-known/openid-configuration", include_in_schema=False)
@router.get("/fhir/.well-known/openid-configuration", summary="OpenID Connect discovery")
async def openid_config(services: ServicesDep) -> Response:
    return _json(openid_configuration(services.oauth))


@router.get("/auth/jwks", summary="The keys that sign id_tokens")
async def jwks(services: ServicesDep) -> Response:
    return _json(services.oauth.signer.jwks)


async def oauth_request(request: Request) -> OAuthRequest:
    """The request as authlib sees it (form fields only from a form body)."""
    form: list[tuple[str, str]] = []
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if request.method == "POST" and media == FORM:
        form = [(k, v) for k, v in (await request.form()).multi_items() if isinstance(v, str)]
    return OAuthRequest(
        method=request.method,
        uri=str(request.url),
        headers=request.headers,  # case-insensitive, as authlib's lookups need
        query=list(request.query_params.multi_items()),
        form=form,
        address=request.client.host if request.client else None,
    )


async def _endpoint(services: Services, request: Request, name: str) -> Response:
    oreq = await oauth_request(request)
    server = services.oauth

    def run() -> tuple[int, Any, Any]:
        with server.unit():
            error = malformed(oreq)
            if error is not None:  # before authlib, which would quote the value back
                result: tuple[int, Any, Any] = server.handle_error_response(oreq, error)
            elif name == "token":
                result = server.create_token_response(oreq)
            else:
                result = server.create_endpoint_response(name, oreq)
            status, body = result[0], result[1]
            client = oreq.client.get_client_id() if oreq.client is not None else None
            error = body.get("error") if isinstance(body, dict) else None
            kind = {"token": "token", "introspection": "introspect"}.get(name, "revoke")
            user = oreq.user if isinstance(oreq.user, User) else None
            server.audit(kind, oreq, status=status, client_id=client, user=user, description=error)
            if name == "token":
                services.metrics.token(oreq.form.get("grant_type"), status, error)
            return result

    status, body, headers = await run_sync(run)
    return _json(body, status, headers)


_CLIENT_AUTH = ("client_id", "client_secret", "client_assertion_type", "client_assertion")


@router.post(
    "/auth/token",
    summary="OAuth 2 token endpoint",
    openapi_extra=oauth_form(
        "grant_type",
        "code",
        "redirect_uri",
        "code_verifier",
        "refresh_token",
        "scope",
        *_CLIENT_AUTH,
        required=("grant_type",),
    ),
)
async def token(request: Request, services: ServicesDep) -> Response:
    return await _endpoint(services, request, "token")


@router.post(
    "/auth/introspect",
    summary="Token introspection (RFC 7662)",
    openapi_extra=oauth_form("token", "token_type_hint", *_CLIENT_AUTH, required=("token",)),
)
async def introspect(request: Request, services: ServicesDep) -> Response:
    return await _endpoint(services, request, "introspection")


@router.post(
    "/auth/revoke",
    summary="Token revocation (RFC 7009)",
    openapi_extra=oauth_form("token", "token_type_hint", *_CLIENT_AUTH, required=("token",)),
)
async def revoke(request: Request, services: ServicesDep) -> Response:
    return await _endpoint(services, request, "revocation")


@router.get("/auth/logout", summary="Sign out (OpenID RP-Initiated Logout)")
@router.post("/auth/logout", include_in_schema=False)
async def logout(request: Request, services: ServicesDep) -> Response:
    """``id_token_hint`` names the user and app: their tokens through that app are revoked.
    A registered ``post_logout_redirect_uri`` gets the browser back (with ``state``)."""
    oreq = await oauth_request(request)
    server = services.oauth

    def run() -> tuple[int, str | None]:
        with server.unit():
            return server.end_session(oreq)

    status, location = await run_sync(run)
    if location is not None:
        return Response(
            status_code=status, headers={"Location": location, "Cache-Control": "no-store"}
        )
    page = SIGNED_OUT if status == 200 else NOT_SIGNED_OUT
    return Response(page, status_code=status, media_type="text/html; charset=utf-8")


SIGNED_OUT = "<!doctype html><title>Signed out</title><p>You are signed out.</p>"
NOT_SIGNED_OUT = (
    "<!doctype html><title>Not signed out</title>"
    "<p>The sign-out request did not say who is signing out (id_token_hint).</p>"
)
