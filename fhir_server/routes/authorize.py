"""The authorization endpoint: sign-in, patient picker and consent (SMART standalone and EHR
launch), ending in a redirect that carries a single-use code.

Every step re-validates the whole request with authlib (client, exact redirect URI, scope,
PKCE S256) and SMART's own checks (``aud`` is this FHIR server; a ``launch`` value is one this
server minted and has not expired or been used). Errors about the client or its redirect URI
are shown on a page, never redirected to an unverified address; everything else is redirected
back with an OAuth error, as RFC 6749 §4.1.2.1 says.

A ``launch`` value is bound to the sign-in that started with it (the ticket covers it, so one
added or swapped on a later page is refused) and is used up by the consent step, whatever the
user decides: a launch is good for one authorization.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Error
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from fhir_server import auth_pages
from fhir_server.http import Services, ServicesDep, run_sync
from fhir_server.openapi import oauth_form, parameters
from fhir_server.routes.auth import oauth_request
from security.scopes import Grants
from security.smart.consent import describe, make_ticket, offered, ticket_user_id, wants_patient
from security.smart.registry import User, find_user
from security.smart.server import AuthorizationChoice, OAuthRequest, SmartServer, malformed
from security.smart.throttle import Throttle
from security.smart.tokens import read_launch, take_launch

router = APIRouter()


class _Stop(Exception):  # a control-flow signal carrying the response
    def __init__(self, response: Response) -> None:
        self.response = response


def _html(body: str, status: int = 200) -> Response:
    return HTMLResponse(body, status, headers=_PAGE_HEADERS)


_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": auth_pages.CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the address holds the request's state and challenge
}


def _authlib_response(result: tuple[int, Any, Any]) -> Response:
    status, body, headers = result
    headers = dict(headers or [])
    if "Location" in headers:
        return Response(status_code=302, headers={"Location": headers["Location"]})
    return _html(auth_pages.error_page(str(body.get("error_description") or body)), status)


def _validate(server: SmartServer, oreq: OAuthRequest) -> tuple[Any, str | None]:
    """The validated grant and the EHR launch's patient (if any); :class:`_Stop` otherwise."""
    try:
        error = malformed(oreq)
        if error is not None:  # before authlib, which would quote the value back
            raise error
        grant = server.get_consent_grant(oreq)
        data = oreq.payload.data
        if (data.get("aud") or "").rstrip("/") != server.fhir_base:
            raise InvalidRequestError(
                f"aud must be this FHIR server's base URL, {server.fhir_base}",
                redirect_uri=grant.redirect_uri,
                state=data.get("state"),
            )
        patient = None
        if data.get("launch"):
            launch = read_launch(server.conn, data["launch"])
            if launch is None:
                raise _launch_gone(grant, data)
            patient = launch.patient
    except OAuth2Error as error:
        if getattr(error, "redirect_uri", None):
            raise _Stop(_authlib_response(server.handle_error_response(oreq, error))) from None
        message = error.description or error.error
        raise _Stop(_html(auth_pages.error_page(message), 400)) from None
    return grant, patient


def _launch_gone(grant: Any, data: dict[str, str]) -> OAuth2Error:
    return InvalidRequestError(
        "the launch value is unknown, has expired or was already used",
        redirect_uri=grant.redirect_uri,
        state=data.get("state"),
    )


def _use_launch(server: SmartServer, oreq: OAuthRequest, grant: Any) -> None:
    """Spend the request's launch value (if any) in this transaction, with the code it brings
    its context into; if another request spent it first, this one is refused."""
    data = oreq.payload.data
    if data.get("launch") and take_launch(server.conn, data["launch"]) is None:
        error = _launch_gone(grant, data)
        raise _Stop(_authlib_response(server.handle_error_response(oreq, error)))


def _may_launch(user: User, launch_patient: str) -> bool:
    """A patient user may be launched only into a patient they act for; staff into any."""
    return user.role != "patient" or launch_patient in user.patients


def _ticket_user(server: SmartServer, oreq: OAuthRequest) -> User:
    """The user a ticket names, if it was made for this very request: same client, PKCE
    challenge and launch value (or none) as at sign-in."""
    user_id = ticket_user_id(server.keys, oreq.form.get("ticket", ""), oreq.payload.data)
    user = server.active_user(user_id) if user_id else None
    if user is None:
        message = "the sign-in has expired or was made for another request; start again"
        raise _Stop(_html(auth_pages.error_page(message), 400))
    return user


# -- steps -------------------------------------------------------------------------------------
def _client_name(server: SmartServer, grant: Any) -> str:
    return str(grant.request.client.client.name)


def _patient_choices(services: Services, user: User) -> list[tuple[str, str]]:
    out = []
    for pid in user.patients:
        stored = services.ctx.store.read(services.oauth.conn, "Patient", pid)
        label = pid
        if stored is not None and stored.body is not None:
            patient = stored.resource()
            name = (patient.get("name") or [{}])[0]
            label = " ".join([*name.get("given", []), name.get("family", "")]).strip() or pid
            if patient.get("birthDate"):
                label += f" (born {patient['birthDate']})"
        out.append((pid, label))
    return out


def _consent(
    server: SmartServer, oreq: OAuthRequest, grant: Any, user: User, patient: str | None
) -> Response:
    scopes = offered(user, grant.request.scope or "", patient)
    page = auth_pages.consent_page(
        oreq.payload.data,
        make_ticket(server.keys, user, oreq.payload.data),
        _client_name(server, grant),
        [(s, describe(s)) for s in scopes],
        patient,
    )
    return _html(page)


def _after_signin(
    services: Services, oreq: OAuthRequest, grant: Any, user: User, launch_patient: str | None
) -> Response:
    server = services.oauth
    if launch_patient is not None:
        if not _may_launch(user, launch_patient):
            return _html(auth_pages.error_page("this launch is for another patient"), 403)
        return _consent(server, oreq, grant, user, launch_patient)
    if wants_patient(grant.request.scope or "") and user.patients:
        if len(user.patients) == 1:
            return _consent(server, oreq, grant, user, user.patients[0])
        choices = _patient_choices(services, user)
        return _html(
            auth_pages.patient_page(
                oreq.payload.data, make_ticket(server.keys, user, oreq.payload.data), choices
            )
        )
    return _consent(server, oreq, grant, user, None)


def _duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def _decide(services: Services, oreq: OAuthRequest) -> Response:
    server = services.oauth
    grant, launch_patient = _validate(server, oreq)
    step = oreq.form.get("step")
    if step == "signin":
        login = oreq.form.get("username", "")
        client_id = oreq.payload.data.get("client_id")
        throttle = Throttle(server.conn, server.keys, login, oreq.address)
        wait = throttle.wait()
        if wait:  # refused before the password is looked at
            server.audit(
                "login",
                oreq,
                status=429,
                client_id=client_id,
                description=f"too many failed sign-ins: refused for {wait} s more",
            )
            services.metrics.signin("throttled")
            message = f"too many failed sign-ins; try again in {_duration(wait)}"
            page = auth_pages.signin_page(oreq.payload.data, _client_name(server, grant), message)
            response = _html(page, 429)
            response.headers["Retry-After"] = str(wait)
            return response
        user = find_user(
            server.conn, server.keys, login=login, password=oreq.form.get("password", "")
        )
        if user is None:
            failures = throttle.failed()
            services.metrics.signin("failed")
            server.audit(
                "login",
                oreq,
                status=401,
                client_id=client_id,
                description=f"wrong user name or password ({failures} in a row)",
            )
            page = auth_pages.signin_page(
                oreq.payload.data, _client_name(server, grant), "wrong user name or password"
            )
            return _html(page, 401)
        throttle.succeeded()
        server.audit("login", oreq, status=200, client_id=client_id, user=user)
        services.metrics.signin("succeeded")
        return _after_signin(services, oreq, grant, user, launch_patient)
    user = _ticket_user(server, oreq)  # also proves the launch is the one signed in with
    # checked on every page, not only at sign-in: the ticket keeps the launch the same, but
    # the user's patients may change meanwhile
    if launch_patient is not None and not _may_launch(user, launch_patient):
        return _html(auth_pages.error_page("this launch is for another patient"), 403)
    patient = launch_patient or oreq.form.get("patient") or None
    if patient is not None and launch_patient is None and patient not in user.patients:
        return _html(auth_pages.error_page("you cannot act for that patient"), 403)
    if step == "patient":
        return _consent(server, oreq, grant, user, patient)
    if step != "consent":
        return _html(auth_pages.error_page("unknown step; start again"), 400)
    allowed_scopes = offered(user, grant.request.scope or "", patient)
    ticked = [s for s in oreq.payload.datalist.get("grant", []) if s in allowed_scopes]
    allowed = oreq.form.get("decision") == "allow" and Grants.parse(" ".join(ticked)).scopes
    choice = AuthorizationChoice(user, patient, " ".join(ticked)) if allowed else None
    _use_launch(server, oreq, grant)
    return _authlib_response(server.create_authorization_response(oreq, choice, grant))


def _start(services: Services, oreq: OAuthRequest) -> Response:
    server = services.oauth
    grant, _ = _validate(server, oreq)
    return _html(auth_pages.signin_page(oreq.payload.data, _client_name(server, grant)))


async def _run(services: Services, request: Request, step: Any) -> Response:
    oreq = await oauth_request(request)

    def run() -> Response:
        try:
            with services.oauth.unit():
                response: Response = step(services, oreq)
                return response
        except _Stop as stop:
            return stop.response

    response: Response = await run_sync(run)
    return response


_AUTHORIZE = auth_pages.CARRIED  # the OAuth request parameters


@router.get(
    "/auth/authorize",
    summary="SMART authorization endpoint (sign-in page)",
    openapi_extra=parameters("query", dict.fromkeys(_AUTHORIZE, "an OAuth request parameter")),
)
async def authorize(request: Request, services: ServicesDep) -> Response:
    return await _run(services, request, _start)


@router.post(
    "/auth/authorize",
    summary="SMART authorization endpoint (authorize-post)",
    openapi_extra=oauth_form(*_AUTHORIZE),
)
async def authorize_post(request: Request, services: ServicesDep) -> Response:
    return await _run(services, request, _start)


@router.post(
    "/auth/authorize/decide",
    summary="The sign-in pages' form target (sign-in, patient choice, consent)",
    openapi_extra=oauth_form(
        *_AUTHORIZE, "step", "ticket", "username", "password", "patient", "grant", "decision"
    ),
)
async def decide(request: Request, services: ServicesDep) -> Response:
    return await _run(services, request, _decide)
