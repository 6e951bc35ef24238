"""What the consent step decides, without the web: which scopes a signed-in user can be
offered, how each reads to a person, whether a patient must be chosen, and the signed ticket
that carries the sign-in from page to page instead of the password.

The ticket is ``user_id.expiry.mac``: an HMAC (key derived from the index secret) over the
user, the expiry, the client, the PKCE challenge and the ``launch`` value (or its absence), so
it is good for this one authorization request for ten minutes and nothing else. Binding the
launch matters: whether a patient may be launched into a context is checked when they sign in,
so a launch added or swapped on a later page must not carry the ticket with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

from security.crypto import KeyRing
from security.scopes import VERBS, Grants
from security.smart.registry import User

__all__ = [
    "TICKET_SECONDS",
    "describe",
    "make_ticket",
    "offered",
    "ticket_user_id",
    "wants_patient",
]

TICKET_SECONDS = 600
SCOPE_TEXT = {
    "openid": "Know who you are",
    "fhirUser": "Know your user record in the clinic",
    "profile": "Know your profile",
    "launch": "Open in the context it was launched from",
    "launch/patient": "Know which patient is selected",
    "offline_access": "Keep access after you close the app",
}
OPERATION_TEXT = {"$find": "find", "$hold": "hold", "$book": "book or cancel"}
WHOSE = {"patient": "for the selected patient", "user": "as you", "system": "as a system"}


def describe(scope: str) -> str:
    """A scope as a person reads it on the consent page."""
    if scope in SCOPE_TEXT:
        return SCOPE_TEXT[scope]
    context, _, rest = scope.partition("/")
    rtype, _, perms = rest.partition(".")
    perms = perms.split("?")[0]
    if perms.startswith("$"):
        action = f"{OPERATION_TEXT.get(perms, perms)} appointments"
    else:
        verbs = [VERBS[p] for p in "cruds" if p in perms]
        action = f"{', '.join(verbs)} {'all records' if rtype == '*' else rtype + ' records'}"
    return f"{action.capitalize()} {WHOSE.get(context, '')}".strip()


def wants_patient(scope: str) -> bool:
    grants = Grants.parse(scope)
    return "launch/patient" in grants.other or "patient" in grants.contexts


def offered(user: User, requested: str, patient: str | None) -> list[str]:
    """The scopes to show: what the client may have (``requested``, already narrowed to its
    registration) and the user's role allows; patient ones only with a patient chosen."""
    granted = user.allowed.narrowed(Grants.parse(requested))
    scopes = [str(s) for s in granted.scopes if patient or s.context != "patient"]
    others = sorted(o for o in granted.other if patient or o != "launch/patient")
    return [*scopes, *others]


def _mac(keys: KeyRing, payload: str, request: Mapping[str, str]) -> str:
    # JSON, not a separator: the launch value comes from the browser and may contain anything
    bound = json.dumps(
        [
            payload,
            request.get("client_id"),
            request.get("code_challenge"),
            request.get("launch") or None,  # an empty launch is no launch, as the pages treat it
        ]
    )
    digest = hmac.new(keys.index_key("smart.signin-ticket"), bound.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")


def make_ticket(keys: KeyRing, user: User, request: Mapping[str, str]) -> str:
    payload = f"{user.user_id}.{int(time.time()) + TICKET_SECONDS}"
    return f"{payload}.{_mac(keys, payload, request)}"


def ticket_user_id(keys: KeyRing, ticket: str, request: Mapping[str, str]) -> str | None:
    """The user a ticket names, if it was made for this request and has not expired."""
    payload, _, mac = ticket.rpartition(".")
    user_id, _, expires = payload.partition(".")
    if not payload or not (expires.isascii() and expires.isdigit()) or int(expires) < time.time():
        return None
    return user_id if hmac.compare_digest(mac, _mac(keys, payload, request)) else None
