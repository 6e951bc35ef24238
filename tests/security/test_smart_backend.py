"""SMART Backend Services: client_credentials with private_key_jwt (assertions built here with
joserfc, not by the server) and client_secret_basic; introspection, revocation, discovery."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from joserfc.jwk import ECKey, OctKey

from resources.sql.engine import Database
from security.smart.registry import add_client
from tests.smart import (
    EC_KEY,
    RSA_KEY,
    TOKEN_URL,
    assertion,
    backend_form,
    public_jwks,
    register_backend,
)

FHIR = {"content-type": "application/fhir+json"}


def _token(c: TestClient, form: dict[str, str]) -> Any:
    return c.post("/auth/token", data=form)


def test_discovery_documents(anonymous: TestClient) -> None:
    r = anonymous.get("/fhir/.well-known/smart-configuration")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert anonymous.get("/.well-known/smart-configuration").json() == doc
    for key in ("authorization_endpoint", "token_endpoint", "introspection_endpoint"):
        assert doc[key].startswith("http://testserver/auth/")
    assert {"authorization_code", "client_credentials"} <= set(doc["grant_types_supported"])
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert {"RS384", "ES384"} <= set(doc["token_endpoint_auth_signing_alg_values_supported"])
    assert {
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
    } <= set(doc["capabilities"])
    oidc = anonymous.get("/fhir/.well-known/openid-configuration").json()
    assert oidc["issuer"] == "http://testserver/fhir"
    keys = anonymous.get("/auth/jwks").json()["keys"]
    assert keys and all("d" not in k for k in keys) and keys[0]["alg"] == "RS256"


@pytest.mark.parametrize(
    ("key", "alg"), [(EC_KEY, "ES384"), (RSA_KEY, "RS384")], ids=["ES384", "RS384"]
)
def test_backend_token_with_signed_assertion(
    anonymous: TestClient, db: Database, key: Any, alg: str
) -> None:
    cid = register_backend(db, scope="system/Patient.rs system/Slot.rs")
    r = _token(anonymous, backend_form(cid, TOKEN_URL, "system/Patient.rs", key=key, alg=alg))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache"
    body = r.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "system/Patient.rs"
    assert 0 < body["expires_in"] <= 300
    assert "refresh_token" not in body
    auth = {"Authorization": f"Bearer {body['access_token']}"}
    assert anonymous.get("/fhir/Patient", headers=auth).status_code == 200
    assert anonymous.get("/fhir/Slot", headers=auth).status_code == 403  # not granted now


def test_backend_scope_is_never_wider_than_registered(anonymous: TestClient, db: Database) -> None:
    cid = register_backend(db, scope="system/Patient.rs")
    r = _token(anonymous, backend_form(cid, TOKEN_URL, "system/Patient.cruds system/Slot.rs"))
    assert r.status_code == 200 and r.json()["scope"] == "system/Patient.rs"
    r = _token(anonymous, backend_form(cid, TOKEN_URL, "system/*.rs"))
    assert r.json()["scope"] == "system/Patient.rs"
    r = _token(anonymous, backend_form(cid, TOKEN_URL, "system/Slot.rs patient/Patient.rs"))
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
    malformed = _token(anonymous, backend_form(cid, TOKEN_URL, "system/Patient.rr"))
    assert malformed.status_code == 400 and malformed.json()["error"] == "invalid_scope"


def _hs256_assertion(cid: str) -> str:
    from joserfc import jwt

    key = OctKey.generate_key(256)
    claims = {"iss": cid, "sub": cid, "aud": TOKEN_URL, "exp": int(time.time()) + 60, "jti": "x"}
    return jwt.encode({"alg": "HS256"}, claims, key, algorithms=["HS256"])


def _none_assertion(cid: str) -> str:
    import base64

    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    claims = {"iss": cid, "sub": cid, "aud": TOKEN_URL, "exp": int(time.time()) + 60, "jti": "n"}
    return f"{b64({'alg': 'none'})}.{b64(claims)}."


REFUSED = {
    "wrong aud": lambda cid: assertion(cid, "http://elsewhere/token"),
    "exp in the past": lambda cid: assertion(cid, TOKEN_URL, exp=int(time.time()) - 5),
    "exp over 5 min ahead": lambda cid: assertion(cid, TOKEN_URL, exp=int(time.time()) + 600),
    "iss differs from sub": lambda cid: assertion(cid, TOKEN_URL, iss="someone-else"),
    "unknown kid": lambda cid: assertion(
        cid, TOKEN_URL, key=ECKey.generate_key("P-384", parameters={"kid": "stranger"})
    ),
    "known kid, wrong key": lambda cid: assertion(
        cid, TOKEN_URL, key=ECKey.generate_key("P-384", parameters={"kid": "test-ec"})
    ),
    "alg none": _none_assertion,
    "alg HS256": _hs256_assertion,
    "unregistered jku": lambda cid: assertion(
        cid, TOKEN_URL, header={"jku": "https://attacker.example/jwks"}
    ),
    "no jti": lambda cid: assertion(cid, TOKEN_URL, jti=None),
}


@pytest.mark.parametrize("make", list(REFUSED.values()), ids=list(REFUSED))
def test_bad_assertions_are_invalid_client(anonymous: TestClient, db: Database, make: Any) -> None:
    cid = register_backend(db)
    form = backend_form(cid, TOKEN_URL)
    form["client_assertion"] = make(cid)
    r = _token(anonymous, form)
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"] == "invalid_client"


def test_replayed_jti_is_refused(anonymous: TestClient, db: Database) -> None:
    cid = register_backend(db)
    form = backend_form(cid, TOKEN_URL)
    assert _token(anonymous, form).status_code == 200
    again = _token(anonymous, form)
    assert again.json()["error"] == "invalid_client"


class _JWKS(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def jwks_url() -> Iterator[str]:
    """A stand-in client web site serving its public JWKS over real HTTP."""
    _JWKS.body = json.dumps(public_jwks()).encode()
    server = HTTPServer(("127.0.0.1", 0), _JWKS)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()
    server.server_close()


def test_keys_registered_by_url(anonymous: TestClient, db: Database, jwks_url: str) -> None:
    cid = register_backend(db, jwks_uri=jwks_url)
    ok = _token(anonymous, backend_form(cid, TOKEN_URL, header={"jku": jwks_url}))
    assert ok.status_code == 200, ok.text
    other = _token(anonymous, backend_form(cid, TOKEN_URL, header={"jku": jwks_url + "?x"}))
    assert other.json()["error"] == "invalid_client"


def _symmetric(db: Database, scope: str = "system/*.rs") -> tuple[str, str]:
    with db.write() as conn:
        client, secret = add_client(conn, name="sym", kind="symmetric", scope=scope)
    assert secret is not None
    return client.client_id, secret


def test_client_secret_basic(anonymous: TestClient, db: Database) -> None:
    cid, secret = _symmetric(db)
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs"}
    assert anonymous.post("/auth/token", data=form, auth=(cid, secret)).status_code == 200
    wrong = anonymous.post("/auth/token", data=form, auth=(cid, secret + "x"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"


def test_introspection_and_revocation(anonymous: TestClient, db: Database) -> None:
    cid, secret = _symmetric(db)
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs"}
    token = anonymous.post("/auth/token", data=form, auth=(cid, secret)).json()["access_token"]
    seen = anonymous.post("/auth/introspect", data={"token": token}, auth=(cid, secret)).json()
    assert seen["active"] is True and seen["client_id"] == cid
    assert seen["scope"] == "system/Patient.rs" and seen["exp"] > time.time()
    unknown = anonymous.post("/auth/introspect", data={"token": "nope"}, auth=(cid, secret))
    assert unknown.status_code == 200 and unknown.json() == {"active": False}
    auth = {"Authorization": f"Bearer {token}"}
    assert anonymous.get("/fhir/Patient", headers=auth).status_code == 200
    assert (
        anonymous.post("/auth/revoke", data={"token": token}, auth=(cid, secret)).status_code == 200
    )
    after = anonymous.get("/fhir/Patient", headers=auth)
    assert after.status_code == 401 and after.headers["www-authenticate"].startswith("Bearer")
    revoked = anonymous.post("/auth/introspect", data={"token": token}, auth=(cid, secret))
    assert revoked.json() == {"active": False}


def test_revoked_client_loses_its_tokens(anonymous: TestClient, db: Database) -> None:
    from security.smart.registry import revoke_client

    cid = register_backend(db)
    token = _token(anonymous, backend_form(cid, TOKEN_URL)).json()["access_token"]
    with db.write() as conn:
        revoke_client(conn, cid)
    r = anonymous.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert _token(anonymous, backend_form(cid, TOKEN_URL)).json()["error"] == "invalid_client"


def test_token_cache_never_outlives_a_revocation(db: Database, keys: Any, settings: Any) -> None:
    """With checked tokens cached, a revocation in this process ends them at once; one made
    elsewhere (a direct database change, as another process would) within the cache time."""
    from sqlalchemy import update

    from fhir_server.app import create_app
    from resources.sql.tables import AuthToken

    app = create_app(settings.model_copy(update={"token_cache_seconds": 0.5}), keys=keys, db=db)
    with TestClient(app, raise_server_exceptions=False) as c:
        cid, secret = _symmetric(db)
        form = {"grant_type": "client_credentials", "scope": "system/Patient.rs"}

        def token() -> dict[str, str]:
            value = c.post("/auth/token", data=form, auth=(cid, secret)).json()["access_token"]
            return {"Authorization": f"Bearer {value}"}

        first = token()
        assert c.get("/fhir/Patient", headers=first).status_code == 200
        revoke = {"token": first["Authorization"][7:]}
        assert c.post("/auth/revoke", data=revoke, auth=(cid, secret)).status_code == 200
        assert c.get("/fhir/Patient", headers=first).status_code == 401  # at once
        second = token()
        assert c.get("/fhir/Patient", headers=second).status_code == 200
        with db.write() as conn:  # behind the server's back
            conn.execute(update(AuthToken).values(revoked=True))
        deadline = time.monotonic() + 5
        while c.get("/fhir/Patient", headers=second).status_code == 200:
            assert time.monotonic() < deadline, "a revoked token outlived the cache time"
            time.sleep(0.1)


HOSTILE = ['"', "\\", "é", "\x01"]


def _forged(cid: str, alg: str) -> str:
    """A compact JWT whose header names ``alg`` (unsigned: the server must refuse it before
    it would check a signature)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    claims = {"iss": cid, "sub": cid, "aud": TOKEN_URL, "exp": int(time.time()) + 60}
    return f"{part({'alg': alg, 'kid': EC_KEY.kid})}.{part(claims)}.c2ln"


@pytest.mark.parametrize("char", HOSTILE, ids=["quote", "backslash", "non-ascii", "control"])
def test_characters_oauth_forbids_are_a_400_with_its_error_code(
    anonymous: TestClient, db: Database, char: str
) -> None:
    """A quote or backslash in a parameter used to reach authlib, which refused to build an
    error description quoting it back (ValueError, 500). RFC 6749's own codes come back."""
    cid = register_backend(db, client_id="odd-chars")
    cases: list[tuple[dict[str, str], str]] = [
        (backend_form(cid, TOKEN_URL, f"system/*.rs{char}"), "invalid_scope"),
        (backend_form(cid, TOKEN_URL, f"system/Patient{char}.rs"), "invalid_scope"),
        ({**backend_form(cid, TOKEN_URL), "grant_type": f"client_credentials{char}"}, ""),
        (backend_form(cid, TOKEN_URL, header={"kid": f"k{char}"}), "invalid_client"),
        (
            {**backend_form(cid, TOKEN_URL), "client_assertion": _forged(cid, f"ES384{char}")},
            "invalid_client",
        ),
        (
            {
                "grant_type": "authorization_code",
                "code": "x",
                "client_id": "app",
                "redirect_uri": f"http://127.0.0.1:9/cb{char}",
                "code_verifier": "v" * 50,
            },
            "invalid_request",
        ),
        ({"grant_type": "refresh_token", "refresh_token": f"r{char}"}, "invalid_request"),
    ]
    for form, code in cases:
        r = _token(anonymous, form)
        assert 400 <= r.status_code < 500, (form, r.status_code, r.text)
        body = r.json()
        assert body["error"] in {
            "invalid_request",
            "invalid_client",
            "invalid_grant",
            "invalid_scope",
            "unsupported_grant_type",
            "unauthorized_client",
        }, body
        if code:
            assert body["error"] == code, (form, body)
    for endpoint in ("/auth/introspect", "/auth/revoke"):
        r = anonymous.post(endpoint, data={"token": "t", "token_type_hint": f"access{char}"})
        assert 400 <= r.status_code < 500, (endpoint, r.status_code, r.text)
