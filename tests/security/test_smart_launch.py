"""SMART App Launch: the authorization code flow through the real pages (sign-in, patient
picker, consent), PKCE S256 only, single-use codes, refresh, id_token, EHR launch."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import select, update

from resources.sql.engine import Database
from resources.sql.tables import AuditLog, AuthCode
from security.audit import open_event
from security.crypto import KeyRing
from security.smart.registry import add_user
from security.smart.tokens import mint_launch, take_launch
from tests.builders import make_patient
from tests.conftest import someone_waits_for_a_lock
from tests.smart import (
    REDIRECT,
    authorize_params,
    backend_token,
    exchange,
    page_form,
    pkce,
    redirect_query,
    register_app,
    sign_in_and_allow,
    submit,
)

FHIR = {"content-type": "application/fhir+json"}


@pytest.fixture
def clinic(anonymous: TestClient, db: Database, keys: KeyRing) -> dict[str, str]:
    """Two patients; Maria signs in for herself (A) and her child (B); a desk user."""
    admin = {"Authorization": f"Bearer {backend_token(anonymous, db)}"}
    ids = {}
    for name in ("A", "B"):
        r = anonymous.post("/fhir/Patient", json=make_patient(f"Fam{name}"), headers=admin | FHIR)
        ids[name] = r.json()["id"]
    with db.write() as conn:
        add_user(
            conn,
            keys,
            login="maria",
            password="maria-password-1",
            role="patient",
            fhir_user=f"Patient/{ids['A']}",
            patients=[ids["B"]],
        )
        add_user(conn, keys, login="desk", password="desk-password-1", role="front-desk")
    register_app(db)
    return ids


def _code(resp: object) -> str:
    query = redirect_query(resp)
    assert query["state"] == "st-1"
    return query["code"]


def test_standalone_launch_with_patient_picker(
    anonymous: TestClient, clinic: dict[str, str]
) -> None:
    verifier, challenge = pkce()
    params = authorize_params("app", challenge)
    final = sign_in_and_allow(
        anonymous, params, login="maria", password="maria-password-1", patient=clinic["B"]
    )
    r = exchange(anonymous, "app", _code(final), verifier)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache"
    token = r.json()
    assert token["patient"] == clinic["B"]
    assert 0 < token["expires_in"] <= 3600
    assert "refresh_token" in token
    assert "patient/Appointment.$book" in token["scope"].split()
    assert "user/" not in token["scope"]  # a patient's role never grants user/ scopes
    keys = KeySet.import_key_set(anonymous.get("/auth/jwks").json())
    claims = jwt.decode(token["id_token"], keys, algorithms=["RS256"]).claims
    assert claims["aud"] == "app" and claims["iss"] == "http://testserver/fhir"
    assert claims["fhirUser"] == f"http://testserver/fhir/Patient/{clinic['A']}"
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    assert anonymous.get(f"/fhir/Patient/{clinic['B']}", headers=auth).status_code == 200
    other = anonymous.get(f"/fhir/Patient/{clinic['A']}", headers=auth)
    assert other.status_code == 403 and other.json()["issue"][0]["code"] == "forbidden"


def test_consent_can_untick_scopes_and_deny(anonymous: TestClient, clinic: dict[str, str]) -> None:
    verifier, challenge = pkce()
    ticked = ["openid", "launch/patient", "patient/Patient.rs"]
    params = authorize_params(
        "app", challenge, scope="openid launch/patient patient/Patient.rs patient/Slot.rs"
    )
    final = sign_in_and_allow(
        anonymous,
        params,
        login="maria",
        password="maria-password-1",
        patient=clinic["A"],
        grant=ticked,
    )
    token = exchange(anonymous, "app", _code(final), verifier).json()
    assert set(token["scope"].split()) == set(ticked)
    assert "refresh_token" not in token  # offline_access was not asked for
    denied = sign_in_and_allow(
        anonymous,
        params,
        login="maria",
        password="maria-password-1",
        patient=clinic["A"],
        decision="deny",
    )
    assert redirect_query(denied)["error"] == "access_denied"


@pytest.mark.parametrize(
    "change",
    [
        {"code_challenge": None, "code_challenge_method": None},
        {"code_challenge_method": "plain"},
        {"code_challenge_method": None},
    ],
    ids=["no challenge", "plain", "method missing"],
)
def test_authorize_without_s256_gets_no_code(
    anonymous: TestClient, clinic: dict[str, str], change: dict[str, str | None]
) -> None:
    _, challenge = pkce()
    resp = anonymous.get("/auth/authorize", params=authorize_params("app", challenge, **change))
    query = redirect_query(resp)
    assert query["error"] == "invalid_request" and "code" not in query


def test_aud_must_be_this_server(anonymous: TestClient, clinic: dict[str, str]) -> None:
    _, challenge = pkce()
    params = authorize_params("app", challenge, aud="https://other.example/fhir")
    assert redirect_query(anonymous.get("/auth/authorize", params=params))["error"]


def test_unregistered_redirect_is_never_followed(
    anonymous: TestClient, clinic: dict[str, str]
) -> None:
    _, challenge = pkce()
    params = authorize_params("app", challenge, redirect_uri="https://evil.example/cb")
    resp = anonymous.get("/auth/authorize", params=params)
    assert resp.status_code == 400 and "location" not in resp.headers
    assert "text/html" in resp.headers["content-type"]


def test_wrong_password_gives_no_ticket(anonymous: TestClient, clinic: dict[str, str]) -> None:
    _, challenge = pkce()
    resp = sign_in_and_allow(
        anonymous, authorize_params("app", challenge), login="maria", password="wrong-password"
    )
    assert resp.status_code == 401
    assert all(f["name"] != "ticket" for f in page_form(resp.text)["fields"])


@pytest.mark.parametrize("verifier", [None, "", "x" * 50], ids=["missing", "blank", "wrong"])
def test_token_exchange_needs_the_right_verifier(
    anonymous: TestClient, clinic: dict[str, str], verifier: str | None
) -> None:
    _, challenge = pkce()
    final = sign_in_and_allow(
        anonymous,
        authorize_params("app", challenge),
        login="maria",
        password="maria-password-1",
        patient=clinic["A"],
    )
    r = exchange(anonymous, "app", _code(final), verifier)
    assert r.status_code == 400 and r.json()["error"] in ("invalid_request", "invalid_grant")


def _fresh_code(anonymous: TestClient, clinic: dict[str, str]) -> tuple[str, str]:
    verifier, challenge = pkce()
    final = sign_in_and_allow(
        anonymous,
        authorize_params("app", challenge),
        login="maria",
        password="maria-password-1",
        patient=clinic["A"],
    )
    return _code(final), verifier


def test_code_reuse_fails_and_revokes_the_first_tokens(
    anonymous: TestClient, clinic: dict[str, str]
) -> None:
    code, verifier = _fresh_code(anonymous, clinic)
    first = exchange(anonymous, "app", code, verifier).json()
    auth = {"Authorization": f"Bearer {first['access_token']}"}
    assert anonymous.get(f"/fhir/Patient/{clinic['A']}", headers=auth).status_code == 200
    again = exchange(anonymous, "app", code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert anonymous.get(f"/fhir/Patient/{clinic['A']}", headers=auth).status_code == 401
    refresh = {
        "grant_type": "refresh_token",
        "refresh_token": first["refresh_token"],
        "client_id": "app",
    }
    assert anonymous.post("/auth/token", data=refresh).status_code == 400


def test_code_expires_and_is_bound_to_client_and_redirect(
    anonymous: TestClient, db: Database, clinic: dict[str, str]
) -> None:
    register_app(db, client_id="other-app")
    code, verifier = _fresh_code(anonymous, clinic)
    assert exchange(anonymous, "other-app", code, verifier).json()["error"] == "invalid_grant"
    code, verifier = _fresh_code(anonymous, clinic)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": "app",
        "redirect_uri": REDIRECT + "/x",
        "code_verifier": verifier,
    }
    assert anonymous.post("/auth/token", data=form).json()["error"] == "invalid_grant"
    code, verifier = _fresh_code(anonymous, clinic)
    with db.write() as conn:  # 61 s later, as far as the code is concerned
        conn.execute(update(AuthCode).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert exchange(anonymous, "app", code, verifier).json()["error"] == "invalid_grant"


def test_refresh_cannot_widen_and_is_bound_to_its_client(
    anonymous: TestClient, db: Database, clinic: dict[str, str]
) -> None:
    register_app(db, client_id="other-app")
    code, verifier = _fresh_code(anonymous, clinic)
    first = exchange(anonymous, "app", code, verifier).json()

    def refresh(client_id: str, token: str, scope: str | None = None) -> object:
        form = {"grant_type": "refresh_token", "refresh_token": token, "client_id": client_id}
        if scope:
            form["scope"] = scope
        return anonymous.post("/auth/token", data=form)

    wider = refresh("app", first["refresh_token"], first["scope"] + " patient/Patient.cruds")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    assert refresh("other-app", first["refresh_token"]).json()["error"] == "invalid_grant"
    narrower = refresh(
        "app", first["refresh_token"], "launch/patient patient/Patient.rs offline_access"
    )
    assert narrower.status_code == 200, narrower.text
    second = narrower.json()
    assert second["scope"] == "patient/Patient.rs launch/patient offline_access"
    assert second["patient"] == clinic["A"]
    # rotated: the new one works, once
    third = refresh("app", second["refresh_token"])
    assert third.status_code == 200, third.text
    revoked = anonymous.post(
        "/auth/revoke", data={"token": third.json()["refresh_token"], "client_id": "app"}
    )
    assert revoked.status_code == 200
    assert refresh("app", third.json()["refresh_token"]).json()["error"] == "invalid_grant"


def test_a_spent_refresh_token_used_again_ends_the_whole_grant(
    anonymous: TestClient, db: Database, keys: KeyRing, clinic: dict[str, str]
) -> None:
    """The attack: a refresh token leaks after the app has used it. Presenting it again is
    refused, and everything the grant issued since (the app's newer refresh and access
    tokens) is revoked too, because the server cannot tell the thief from the app. Before,
    only the spent token was refused and the newer ones kept working. Audited as an alert."""
    code, verifier = _fresh_code(anonymous, clinic)
    first = exchange(anonymous, "app", code, verifier).json()
    form = {"grant_type": "refresh_token", "client_id": "app"}
    second = anonymous.post("/auth/token", data={**form, "refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    newer = second.json()
    bearer = {"Authorization": f"Bearer {newer['access_token']}"}
    assert anonymous.get(f"/fhir/Patient/{clinic['A']}", headers=bearer).status_code == 200

    reused = anonymous.post("/auth/token", data={**form, "refresh_token": first["refresh_token"]})
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"

    after = anonymous.post("/auth/token", data={**form, "refresh_token": newer["refresh_token"]})
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
    assert anonymous.get(f"/fhir/Patient/{clinic['A']}", headers=bearer).status_code == 401
    with db.read() as conn:
        rows = conn.execute(select(AuditLog.__table__).order_by(AuditLog.__table__.c.seq))
        events = [open_event(keys, r) for r in rows]
    alerts = [e for e in events if "refresh token was used again" in e.get("outcomeDesc", "")]
    assert len(alerts) == 1, [e.get("outcomeDesc") for e in events]


def test_ehr_launch_brings_its_patient(
    anonymous: TestClient, db: Database, clinic: dict[str, str]
) -> None:
    with db.write() as conn:
        launch = mint_launch(conn, patient=clinic["B"])
    verifier, challenge = pkce()
    params = authorize_params(
        "app", challenge, launch=launch, scope="launch openid fhirUser user/*.rs patient/*.rs"
    )
    final = sign_in_and_allow(anonymous, params, login="desk", password="desk-password-1")
    token = exchange(anonymous, "app", _code(final), verifier).json()
    assert token["patient"] == clinic["B"]
    assert "user/Patient.rs" in token["scope"].split()  # front desk: within its role
    assert "user/AuditEvent.rs" not in token["scope"].split()
    unknown = authorize_params("app", challenge, launch="not-minted-here", scope="launch")
    assert redirect_query(anonymous.get("/auth/authorize", params=unknown))["error"]


def test_confidential_app_introspects_its_patient_token(
    anonymous: TestClient, db: Database, clinic: dict[str, str]
) -> None:
    from security.smart.registry import add_client

    with db.write() as conn:
        client, secret = add_client(
            conn, name="Confidential app", kind="symmetric",
            scope="launch/patient openid patient/*.rs", redirect_uris=[REDIRECT],
        )  # fmt: skip
    assert secret is not None
    cid = client.client_id
    verifier, challenge = pkce()
    params = authorize_params(cid, challenge, scope="launch/patient patient/Patient.rs")
    final = sign_in_and_allow(
        anonymous, params, login="maria", password="maria-password-1", patient=clinic["B"]
    )
    form = {"grant_type": "authorization_code", "code": _code(final), "redirect_uri": REDIRECT,
            "code_verifier": verifier}  # fmt: skip
    assert anonymous.post("/auth/token", data=form).status_code == 401  # no secret, no token
    final = sign_in_and_allow(
        anonymous, params, login="maria", password="maria-password-1", patient=clinic["B"]
    )
    form["code"] = _code(final)
    token = anonymous.post("/auth/token", data=form, auth=(cid, secret)).json()
    seen = anonymous.post(
        "/auth/introspect", data={"token": token["access_token"]}, auth=(cid, secret)
    ).json()
    assert seen["active"] is True and seen["patient"] == clinic["B"]
    assert seen["client_id"] == cid and seen["scope"] == token["scope"]
    assert seen["fhirUser"].endswith(f"/Patient/{clinic['A']}")


def test_disabled_user_cannot_sign_in_and_loses_tokens(
    anonymous: TestClient, db: Database, clinic: dict[str, str]
) -> None:
    from security.smart.registry import list_users, set_user_disabled

    code, verifier = _fresh_code(anonymous, clinic)
    token = exchange(anonymous, "app", code, verifier).json()
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    assert anonymous.get(f"/fhir/Patient/{clinic['A']}", headers=auth).status_code == 200
    with db.write() as conn:
        maria = next(u for u in list_users(conn) if u.role == "patient")
        set_user_disabled(conn, maria.user_id)
    assert anonymous.get(f"/fhir/Patient/{clinic['A']}", headers=auth).status_code == 401
    _, challenge = pkce()
    again = sign_in_and_allow(
        anonymous, authorize_params("app", challenge), login="maria", password="maria-password-1"
    )
    assert again.status_code == 401


def test_a_staff_user_is_linked_to_their_record_later(
    db: Database, keys: KeyRing, clinic: dict[str, str]
) -> None:
    from security.smart.registry import RegistryError, find_user, set_fhir_user

    with db.write() as conn:
        assert set_fhir_user(conn, keys, login="desk", fhir_user="PractitionerRole/desk")
        assert not set_fhir_user(conn, keys, login="desk", fhir_user="PractitionerRole/desk")
        assert not set_fhir_user(conn, keys, login="nobody", fhir_user="PractitionerRole/desk")
        # a patient's record comes with the patients they act for, set when they are added
        assert not set_fhir_user(conn, keys, login="maria", fhir_user="Practitioner/x")
        with pytest.raises(RegistryError, match="when the user is added"):
            set_fhir_user(conn, keys, login="desk", fhir_user=f"Patient/{clinic['A']}")
        with pytest.raises(RegistryError, match="relative reference"):
            set_fhir_user(conn, keys, login="desk", fhir_user="Person/desk")
        desk = find_user(conn, keys, login="desk", password="desk-password-1")
        maria = find_user(conn, keys, login="maria", password="maria-password-1")
    assert desk is not None and desk.fhir_user == "PractitionerRole/desk"
    assert maria is not None and maria.fhir_user == f"Patient/{clinic['A']}"


def test_cors_on_discovery_token_and_fhir(anonymous: TestClient) -> None:
    origin = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    for path in ("/auth/token", "/fhir/Patient", "/fhir/.well-known/smart-configuration"):
        pre = anonymous.options(
            path, headers={**origin, "Access-Control-Request-Headers": "authorization"}
        )
        assert pre.status_code == 200, (path, pre.text)
        assert pre.headers["access-control-allow-origin"] in ("*", "https://app.example")
    got = anonymous.get("/fhir/.well-known/smart-configuration", headers=origin)
    assert got.headers["access-control-allow-origin"] in ("*", "https://app.example")
    denied = anonymous.get("/fhir/Patient", headers=origin)
    assert denied.status_code == 401
    assert "www-authenticate" in denied.headers["access-control-expose-headers"].lower()


def test_sign_out_ends_the_apps_tokens_and_is_audited(
    anonymous: TestClient, clinic: dict[str, str], db: Database, keys: KeyRing
) -> None:
    verifier, challenge = pkce()
    params = authorize_params("app", challenge)
    final = sign_in_and_allow(
        anonymous, params, login="maria", password="maria-password-1", patient=clinic["A"]
    )
    token = exchange(anonymous, "app", _code(final), verifier).json()
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    assert anonymous.get(f"/fhir/Patient/{clinic['A']}", headers=auth).status_code == 200
    discovery = anonymous.get("/fhir/.well-known/openid-configuration").json()
    assert discovery["end_session_endpoint"] == "http://testserver/auth/logout"

    # a forged or missing hint signs no one out
    assert anonymous.get("/auth/logout", params={"id_token_hint": "x.y.z"}).status_code == 400
    assert anonymous.get(f"/fhir/Patient/{clinic['A']}", headers=auth).status_code == 200

    out = anonymous.get(
        "/auth/logout",
        params={
            "id_token_hint": token["id_token"],
            "post_logout_redirect_uri": REDIRECT,
            "state": "bye",
        },
    )
    assert out.status_code == 303 and out.headers["location"] == f"{REDIRECT}?state=bye"
    assert anonymous.get(f"/fhir/Patient/{clinic['A']}", headers=auth).status_code == 401
    refreshed = anonymous.post(
        "/auth/token",
        data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
        auth=("app", ""),
    )
    assert refreshed.status_code in (400, 401)
    # an unregistered redirect is never followed
    elsewhere = anonymous.get(
        "/auth/logout",
        params={"id_token_hint": token["id_token"], "post_logout_redirect_uri": "https://evil"},
    )
    assert elsewhere.status_code == 200 and "signed out" in elsewhere.text

    with db.read() as conn:
        rows = conn.execute(select(AuditLog.__table__).order_by(AuditLog.__table__.c.seq))
        events = [open_event(keys, r) for r in rows]
    logouts = [e for e in events if e["subtype"][0]["code"] == "110123"]
    assert [e["outcome"] for e in logouts] == ["4", "0", "0"]
    user_agent = logouts[1]["agent"][1]
    assert user_agent["who"]["reference"] == f"Patient/{clinic['A']}"
    assert logouts[1]["agent"][0]["who"]["identifier"]["value"] == "app"


def _user_token(
    c: TestClient, client_id: str, scope: str, login: str, patient: str | None = None
) -> dict[str, str] | None:
    """The token a user gets through the real pages asking for ``scope``; None if none."""
    verifier, challenge = pkce()
    params = authorize_params(client_id, challenge, scope=scope)
    final = sign_in_and_allow(
        c, params, login=login, password=f"{login}-password-1", patient=patient
    )
    if final.status_code != 302 or "code=" not in final.headers["location"]:
        return None
    token = exchange(c, client_id, _code(final), verifier)
    return token.json() if token.status_code == 200 else None  # type: ignore[no-any-return]


def test_a_wildcard_app_or_role_is_not_granted_the_audit_log(
    anonymous: TestClient, clinic: dict[str, str], db: Database, keys: KeyRing
) -> None:
    """Only an app registration and a role that both name AuditEvent get it: a clinician
    (role ``user/*.rs``) through an app that names it, a compliance officer through an app
    registered for ``user/*.rs``, a patient through an app registered for ``patient/*.rs``
    are granted none of it."""
    with db.write() as conn:
        add_user(conn, keys, login="doc", password="doc-password-1", role="clinician")
        add_user(conn, keys, login="auditor", password="auditor-password-1", role="compliance")
    register_app(db, client_id="audit-app", scope="openid user/AuditEvent.rs user/*.rs")
    asked = "openid user/AuditEvent.rs user/Patient.rs"
    attempts = [
        ("audit-app", asked, "doc", None),  # the app names it, the clinician's role does not
        ("app", asked, "auditor", None),  # the role names it, the app (user/*.rs) does not
        ("app", "openid user/AuditEvent.read user/Patient.read", "doc", None),
        ("app", "launch/patient patient/AuditEvent.rs patient/Patient.rs", "maria", "A"),
    ]
    for client_id, scope, login, patient in attempts:
        token = _user_token(anonymous, client_id, scope, login, patient and clinic[patient])
        if token is None:
            continue
        assert "AuditEvent" not in token["scope"], (client_id, login, token["scope"])
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        assert anonymous.get("/fhir/AuditEvent", headers=bearer).status_code == 403
    named = _user_token(anonymous, "audit-app", "openid user/AuditEvent.rs", "auditor")
    assert named is not None and named["scope"] == "user/AuditEvent.rs openid"
    bearer = {"Authorization": f"Bearer {named['access_token']}"}
    assert anonymous.get("/fhir/AuditEvent", headers=bearer).status_code == 200


def _post(c: TestClient, action: str, pairs: list[tuple[str, str]]) -> Any:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    return c.post(action, content=urlencode(pairs), headers=headers)


def _consent_form(
    c: TestClient, params: dict[str, str], *, login: str, password: str, patient: str | None
) -> dict[str, Any]:
    """Sign in (and pick ``patient`` if asked): the consent page's form."""
    form = page_form(c.get("/auth/authorize", params=params).text)
    resp = _post(c, form["action"], submit(form, username=login, password=password))
    assert resp.status_code == 200, resp.text
    form = page_form(resp.text)
    if any(f["name"] == "step" and f["value"] == "patient" for f in form["fields"]):
        resp = _post(c, form["action"], submit(form, patient=patient))
        assert resp.status_code == 200, resp.text
        form = page_form(resp.text)
    return form


def _another_patient(c: TestClient, db: Database) -> str:
    admin = {"Authorization": f"Bearer {backend_token(c, db)}"}
    r = c.post("/fhir/Patient", json=make_patient("FamC"), headers=admin | FHIR)
    return str(r.json()["id"])


@pytest.mark.parametrize("signed_in_with", [None, "B"], ids=["no launch", "launch for B"])
def test_a_launch_added_at_the_consent_step_is_refused(
    anonymous: TestClient, db: Database, clinic: dict[str, str], signed_in_with: str | None
) -> None:
    """The attack: Maria signs in (without a launch, or with one for a patient she may act for)
    and puts a launch minted for patient C, whom she may not act for, into the consent form.
    No code may come back (before, one did, and its token read C's record)."""
    c_id = _another_patient(anonymous, db)
    with db.write() as conn:
        launch_c = mint_launch(conn, patient=c_id)
        launch_b = mint_launch(conn, patient=clinic["B"])
    _, challenge = pkce()
    params = authorize_params("app", challenge)
    if signed_in_with:
        params["launch"] = launch_b
    form = _consent_form(
        anonymous, params, login="maria", password="maria-password-1", patient=clinic["A"]
    )
    pairs = [(k, v) for k, v in submit(form, decision="allow") if k != "launch"]
    final = _post(anonymous, form["action"], [*pairs, ("launch", launch_c)])
    assert final.status_code == 400, final.headers.get("location")
    assert "location" not in final.headers
    # the refused attempt did not spend C's launch value
    page = anonymous.get("/auth/authorize", params={**params, "launch": launch_c})
    assert page.status_code == 200, page.text


def test_a_launch_value_is_used_once(
    anonymous: TestClient, db: Database, clinic: dict[str, str]
) -> None:
    """Two sign-ins started with one launch value: the first to finish gets a code with its
    patient, the second is refused, and the value opens no sign-in page after that."""
    with db.write() as conn:
        launch = mint_launch(conn, patient=clinic["B"])
    scope = "launch openid fhirUser user/*.rs patient/*.rs"
    flows = []
    for _ in range(2):
        verifier, challenge = pkce()
        params = authorize_params("app", challenge, launch=launch, scope=scope)
        form = _consent_form(
            anonymous, params, login="desk", password="desk-password-1", patient=None
        )
        flows.append((verifier, params, form))
    (verifier, params, form), (_, _, second) = flows
    final = _post(anonymous, form["action"], submit(form, decision="allow"))
    token = exchange(anonymous, "app", _code(final), verifier).json()
    assert token["patient"] == clinic["B"]
    again = _post(anonymous, second["action"], submit(second, decision="allow"))
    query = redirect_query(again)
    assert query["error"] == "invalid_request" and "code" not in query
    assert redirect_query(anonymous.get("/auth/authorize", params=params))["error"]


def test_a_launch_is_taken_once_by_concurrent_requests(db: Database) -> None:
    """Two transactions take one launch value at the same time: the second waits for the
    first (PostgreSQL: its row lock; SQLite: its one writer) and finds it spent."""
    with db.write() as conn:
        launch = mint_launch(conn, patient="p1")
    first_took, got = threading.Event(), {}

    def first() -> None:
        with db.write() as conn:
            got["first"] = take_launch(conn, launch)
            first_took.set()
            deadline = time.monotonic() + (10 if db.dialect == "postgresql" else 0.3)
            while time.monotonic() < deadline and not someone_waits_for_a_lock(db):
                time.sleep(0.02)

    def second() -> None:
        assert first_took.wait(30)
        with db.write() as conn:
            got["second"] = take_launch(conn, launch)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got["first"] is not None and got["first"].patient == "p1"
    assert got["second"] is None


def test_sign_in_pages_send_a_strict_content_security_policy(
    anonymous: TestClient, clinic: dict[str, str]
) -> None:
    """Every page of the sign-in (sign in, patient picker, an error) forbids scripts, loads and
    framing, and allows exactly its own inline style, by hash."""
    _, challenge = pkce()
    params = authorize_params("app", challenge)
    signin = anonymous.get("/auth/authorize", params=params)
    form = page_form(signin.text)
    picker = _post(
        anonymous, form["action"], submit(form, username="maria", password="maria-password-1")
    )
    unknown = anonymous.get("/auth/authorize", params={**params, "client_id": "nobody"})
    assert [signin.status_code, picker.status_code, unknown.status_code] == [200, 200, 400]
    for page in (signin, picker, unknown):
        policy = page.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["frame-ancestors"] == "'none'"
        assert "script-src" not in directives and "unsafe" not in policy
        style = re.search(r"<style>(.*?)</style>", page.text, re.S)
        assert style is not None
        digest = base64.b64encode(hashlib.sha256(style.group(1).encode()).digest()).decode()
        assert directives["style-src"] == f"'sha256-{digest}'"
        assert page.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("char", ['"', "\\", "é"], ids=["quote", "backslash", "non-ascii"])
def test_characters_oauth_forbids_are_refused_at_the_authorization_endpoint(
    anonymous: TestClient, clinic: dict[str, str], char: str
) -> None:
    """A bad scope goes back to the (registered) app as invalid_scope, RFC 6749 §4.1.2.1; a
    bad redirect URI or client id is never followed: a 400 page. Before, each was a 500."""
    _, challenge = pkce()
    r = anonymous.get(
        "/auth/authorize", params=authorize_params("app", challenge, scope=f"openid{char}")
    )
    assert redirect_query(r)["error"] == "invalid_scope"
    for over in (
        {"redirect_uri": f"{REDIRECT}{char}"},
        {"client_id": f"app{char}"},
        {"response_type": f"code{char}"},
    ):
        for method in ("get", "post"):
            params = {**authorize_params("app", challenge), **over}
            if method == "get":
                r = anonymous.get("/auth/authorize", params=params)
            else:
                r = _post(anonymous, "/auth/authorize", list(params.items()))
            assert r.status_code == 400, (over, method, r.status_code)
            assert "location" not in r.headers
            assert "characters OAuth does not allow" in r.text
