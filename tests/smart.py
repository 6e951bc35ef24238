"""SMART helpers for tests: backend clients whose JWT assertions the *test* builds with
joserfc (not with the server's code), and tokens from the real token endpoint."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from resources.sql.engine import Database
from security.smart.registry import add_client

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FULL_ACCESS = "system/*.cruds"
TOKEN_URL = "http://testserver/auth/token"  # the in-process app's token endpoint

EC_KEY = ECKey.generate_key("P-384", parameters={"kid": "test-ec"})
RSA_KEY = RSAKey.generate_key(2048, parameters={"kid": "test-rsa"})


def public_jwks(*keys: Any) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in (keys or (EC_KEY, RSA_KEY))]}


def register_backend(
    db: Database,
    *,
    client_id: str = "test-backend",
    scope: str = FULL_ACCESS,
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
) -> str:
    with db.write() as conn:
        add_client(
            conn,
            name=f"test {client_id}",
            kind="asymmetric",
            scope=scope,
            jwks=jwks if jwks is not None or jwks_uri else public_jwks(),
            jwks_uri=jwks_uri,
            client_id=client_id,
        )
    return client_id


def assertion(
    client_id: str,
    token_url: str,
    *,
    key: Any = EC_KEY,
    alg: str = "ES384",
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    body = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
        **claims,
    }
    head = {"alg": alg, "kid": key.kid, **(header or {})}
    return jwt.encode(head, {k: v for k, v in body.items() if v is not None}, key, algorithms=[alg])


def backend_form(
    client_id: str, token_url: str, scope: str = FULL_ACCESS, **kw: Any
) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(client_id, token_url, **kw),
    }


def backend_token(
    c: TestClient, db: Database, scope: str = FULL_ACCESS, *, registered: bool = False, **kw: Any
) -> str:
    """A token from the real token endpoint for a backend client registered just now (for
    full access, or for ``scope`` itself if ``registered``: the audit log needs its name)."""
    if registered:
        kw["scope"] = scope
    client_id = register_backend(db, client_id=f"test-{uuid.uuid4().hex[:8]}", **kw)
    resp = c.post("/auth/token", data=backend_form(client_id, TOKEN_URL, scope))
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "fields": []})
        elif tag in ("input", "button") and self.forms and "name" in a:
            self.forms[-1]["fields"].append(a)


def page_form(html: str) -> dict[str, Any]:
    """The one form on an authorization page: its action and fields (as a browser sees them)."""
    parser = _Forms()
    parser.feed(html)
    assert len(parser.forms) == 1, html
    return parser.forms[0]


def submit(form: dict[str, Any], **choose: Any) -> list[tuple[str, str]]:
    """The fields a browser would send: hidden and ticked inputs, text typed in ``choose``
    (``grant=[...]`` ticks exactly those boxes; ``decision=`` picks the button)."""
    out: list[tuple[str, str]] = []
    for f in form["fields"]:
        name, kind = f["name"], f.get("type", "text")
        if kind == "hidden":
            out.append((name, f["value"]))
        elif kind == "checkbox":
            wanted = choose.get(name)
            if (wanted is None and "checked" in f) or (wanted is not None and f["value"] in wanted):
                out.append((name, f["value"]))
        elif kind == "radio":
            if choose.get(name) == f["value"]:
                out.append((name, f["value"]))
        elif kind == "submit":
            if choose.get(name) == f.get("value"):
                out.append((name, f["value"]))
        elif name in choose:
            out.append((name, str(choose[name])))
    return out


# -- the authorization-code flow, driven through the real pages ---------------------------------
REDIRECT = "http://127.0.0.1:9/callback"
APP_SCOPE = (
    "openid fhirUser launch launch/patient offline_access patient/*.rs "
    "patient/Appointment.$find patient/Appointment.$book user/*.rs"
)


def register_app(db: Database, *, client_id: str = "app", scope: str = APP_SCOPE) -> str:
    with db.write() as conn:
        add_client(
            conn,
            name="Test app",
            kind="public",
            scope=scope,
            redirect_uris=[REDIRECT],
            client_id=client_id,
        )
    return client_id


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


def authorize_params(client_id: str, challenge: str, **over: str | None) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": APP_SCOPE,
        "state": "st-1",
        "aud": "http://testserver/fhir",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **over,
    }
    return {k: v for k, v in params.items() if v is not None}


def redirect_query(resp: Any) -> dict[str, str]:
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    assert location.startswith(REDIRECT), location
    return dict(parse_qsl(urlsplit(location).query))


def sign_in_and_allow(
    c: TestClient,
    params: dict[str, str],
    *,
    login: str,
    password: str,
    patient: str | None = None,
    grant: list[str] | None = None,
    decision: str = "allow",
) -> Any:
    """Open the sign-in page, sign in, pick ``patient`` if asked, approve; the final response."""
    page = c.get("/auth/authorize", params=params)
    assert page.status_code == 200, page.text
    form = page_form(page.text)
    resp = _post_form(c, form["action"], submit(form, username=login, password=password))
    if resp.status_code != 200:
        return resp
    form = page_form(resp.text)
    if any(f["name"] == "step" and f["value"] == "patient" for f in form["fields"]):
        resp = _post_form(c, form["action"], submit(form, patient=patient))
        assert resp.status_code == 200, resp.text
        form = page_form(resp.text)
    return _post_form(c, form["action"], submit(form, grant=grant, decision=decision))


def _post_form(c: TestClient, action: str, pairs: list[tuple[str, str]]) -> Any:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    return c.post(action, content=urlencode(pairs), headers=headers)


def exchange(c: TestClient, client_id: str, code: str, verifier: str | None) -> Any:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": client_id,
    }
    if verifier is not None:
        form["code_verifier"] = verifier
    return c.post("/auth/token", data=form)
