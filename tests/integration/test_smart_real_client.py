"""A full standalone launch against a real server by an independent OAuth client (authlib's
httpx ``OAuth2Client``: it makes the PKCE pair, the authorization URL, the code exchange and
the refresh), with the client and user registered through the ``fhir-sched`` command."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from urllib.parse import urlencode

import httpx
from authlib.integrations.httpx_client import OAuth2Client

from tests.builders import make_patient
from tests.integration.server import Server, running_server, server_env
from tests.smart import page_form, submit

REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: the test reads the redirect
SCOPE = "openid fhirUser launch/patient offline_access patient/*.rs"


def _post(http: httpx.Client, url: str, pairs: list[tuple[str, str]]) -> httpx.Response:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    return http.post(url, content=urlencode(pairs), headers=headers)


def test_standalone_launch_with_an_independent_client(tmp_path: Path, database_url: str) -> None:
    with running_server(tmp_path, server_env(tmp_path, database_url)) as server:
        admin = {**server.headers, "content-type": "application/fhir+json"}
        mine = httpx.post(f"{server.base}/Patient", json=make_patient("Mine"), headers=admin)
        other = httpx.post(f"{server.base}/Patient", json=make_patient("Other"), headers=admin)
        me, them = mine.json()["id"], other.json()["id"]

        added = server.cli(
            "client", "add", "--name", "Patient app", "--kind", "public",
            "--redirect-uri", REDIRECT, "--scope", SCOPE,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        client_id = json.loads(added.stdout)["client_id"]
        user = server.cli(
            "user", "add", "--login", "pat@example.org", "--role", "patient",
            "--fhir-user", f"Patient/{me}", "--password", "a-long-password",
        )  # fmt: skip
        assert user.returncode == 0, user.stderr
        listed = server.cli("user", "list")
        assert "pat@example.org" not in listed.stdout  # logins are stored as digests only
        assert json.loads(listed.stdout)[0]["fhir_user"] == f"Patient/{me}"

        with OAuth2Client(
            client_id=client_id,
            redirect_uri=REDIRECT,
            scope=SCOPE,
            code_challenge_method="S256",
            token_endpoint_auth_method="none",
        ) as oauth:
            _launch(server, oauth, client_id, me, them)
        revoked = server.cli("client", "revoke", client_id)
        assert revoked.returncode == 0
        listed = {c["client_id"]: c for c in json.loads(server.cli("client", "list").stdout)}
        assert listed[client_id]["revoked"] is True


def _launch(server: Server, oauth: OAuth2Client, client_id: str, me: str, them: str) -> None:
    """Sign in through the real pages, exchange the code, use, refresh and revoke."""
    verifier = secrets.token_urlsafe(48)
    config = httpx.get(f"{server.base}/.well-known/smart-configuration").json()
    url, state = oauth.create_authorization_url(
        config["authorization_endpoint"], code_verifier=verifier, aud=server.base
    )
    with httpx.Client(base_url=server.root, follow_redirects=False) as browser:
        page = browser.get(url)
        assert page.status_code == 200, page.text
        form = page_form(page.text)
        consent = _post(
            browser,
            form["action"],
            submit(form, username="PAT@example.org ", password="a-long-password"),
        )
        assert consent.status_code == 200, consent.text
        form = page_form(consent.text)
        done = _post(browser, form["action"], submit(form, decision="allow"))
    assert done.status_code == 302
    callback = done.headers["location"]
    token = oauth.fetch_token(
        config["token_endpoint"], authorization_response=callback, code_verifier=verifier
    )
    assert token["patient"] == me and token["token_type"] == "Bearer"
    assert "id_token" in token and "refresh_token" in token

    api = {"Authorization": f"Bearer {token['access_token']}"}
    assert httpx.get(f"{server.base}/Patient/{me}", headers=api).status_code == 200
    assert httpx.get(f"{server.base}/Patient/{them}", headers=api).status_code == 403
    found = httpx.get(f"{server.base}/Patient", headers=api).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [me]

    refreshed = oauth.refresh_token(  # the scope granted, not the wider one asked for
        config["token_endpoint"], refresh_token=token["refresh_token"], scope=token["scope"]
    )
    api = {"Authorization": f"Bearer {refreshed['access_token']}"}
    assert httpx.get(f"{server.base}/Patient/{me}", headers=api).status_code == 200
    oauth.revoke_token(config["revocation_endpoint"], token=refreshed["access_token"])
    assert httpx.get(f"{server.base}/Patient/{me}", headers=api).status_code == 401
    again = httpx.post(
        config["token_endpoint"],
        data={
            "grant_type": "refresh_token",
            "refresh_token": refreshed["refresh_token"],
            "client_id": client_id,
        },
    )
    assert again.status_code == 400
    assert state
