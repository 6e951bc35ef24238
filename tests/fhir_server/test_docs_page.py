"""``/docs`` works offline and its "Try it out" carries a token.

The page and everything it loads come from this server (Swagger UI's files are packaged), and
a client going through the document's SMART scheme, as Swagger UI's "Authorize" does, gets a
token that the protected operations take.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi.testclient import TestClient

from resources.sql.engine import Database
from security.crypto import KeyRing
from security.smart.registry import add_client, add_user
from tests.smart import authorize_params, pkce, sign_in_and_allow

URL = re.compile(r"""\b(?:https?:)?//[^\s"'<>)]+""")
LOADED = re.compile(r"""(?:src|href)="([^"]+)"|url:\s*'([^']+)'""")
SERVER = "http://testserver"


def _urls(text: str) -> list[str]:
    return URL.findall(text)


def test_the_docs_page_loads_nothing_from_elsewhere(anonymous: TestClient) -> None:
    page = anonymous.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # the only absolute URL is the FHIR base, the audience the sign-in names
    assert _urls(page.text) == [f"{SERVER}/fhir"], _urls(page.text)
    loaded = [a or b for a, b in LOADED.findall(page.text)]
    assert sorted(loaded) == [
        "/docs/assets/favicon-32x32.png",
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
        "/openapi.json",
    ]
    for path in loaded:
        served = anonymous.get(path)
        assert served.status_code == 200, path
    css = anonymous.get("/docs/assets/swagger-ui.css").text
    assert not [
        u for u in re.findall(r"url\(([^)]*)\)", css) if not u.strip("'\"").startswith("data:")
    ]
    assert "SwaggerUIBundle" in anonymous.get("/docs/assets/swagger-ui-bundle.js").text
    redirect = anonymous.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200
    assert _urls(redirect.text) == []


def test_no_other_file_and_no_cdn_page(anonymous: TestClient) -> None:
    assert anonymous.get("/docs/assets/swagger-ui.js.map").status_code == 404
    assert anonymous.get("/docs/assets/..%2Fmain.py").status_code == 404
    assert anonymous.get("/redoc").status_code == 404  # FastAPI's loads from a CDN


def _init_oauth(page: str) -> dict[str, Any]:
    found = re.search(r"ui\.initOAuth\((\{.*?\})\)", page)
    assert found is not None
    options: dict[str, Any] = json.loads(found.group(1))
    return options


def test_try_it_out_with_a_token_from_the_documents_smart_scheme(
    anonymous: TestClient, db: Database, keys: KeyRing
) -> None:
    """What Swagger UI does on "Authorize" with the authorization code flow (PKCE, and the
    page's extra ``aud``), then on "Try it out": the document's URLs, the page's options."""
    doc = anonymous.get("/openapi.json").json()
    flow = doc["components"]["securitySchemes"]["smart"]["flows"]["authorizationCode"]
    options = _init_oauth(anonymous.get("/docs").text)
    assert options["usePkceWithAuthorizationCodeGrant"] is True
    redirect = "http://127.0.0.1:8080/docs/oauth2-redirect"  # the page's origin + this path
    with db.write() as conn:
        add_client(
            conn,
            name="API docs",
            kind="public",
            scope="openid fhirUser user/*.cruds user/Appointment.$find",
            redirect_uris=[redirect],
            client_id="api-docs",
        )
        add_user(conn, keys, login="desk", password="desk-password-1", role="front-desk")
    verifier, challenge = pkce()
    params = authorize_params(
        "api-docs",
        challenge,
        redirect_uri=redirect,
        scope="openid user/*.cruds",
        **options["additionalQueryStringParams"],
    )
    assert urlsplit(flow["authorizationUrl"]).path == "/auth/authorize"
    done = sign_in_and_allow(anonymous, params, login="desk", password="desk-password-1")
    assert done.status_code == 302 and done.headers["location"].startswith(redirect)
    code = dict(parse_qsl(urlsplit(done.headers["location"]).query))["code"]
    token = anonymous.post(
        urlsplit(flow["tokenUrl"]).path,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "client_id": "api-docs",
            "code_verifier": verifier,
        },
    )
    assert token.status_code == 200, token.text
    bearer = {"Authorization": f"Bearer {token.json()['access_token']}"}
    assert doc["paths"]["/fhir/Patient"]["get"]["security"][0] == {"smart": []}
    assert anonymous.get("/fhir/Patient").status_code == 401
    assert anonymous.get("/fhir/Patient", headers=bearer).status_code == 200
