"""The console's shell: served with its policy, signs in through the server as the public
client ``console`` (PKCE S256), shows the screens the role may use, and signs out."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from playwright.sync_api import Page, expect

from tests.console.conftest import SignedIn, sign_in
from tests.integration.server import Server


def test_front_desk_signs_in_and_sees_the_calendar(signed_in: SignedIn) -> None:
    page = signed_in("frontdesk")
    expect(page.get_by_role("heading", name="Calendar", level=1)).to_be_visible()
    nav = page.get_by_role("navigation", name="Screens")
    expect(nav.get_by_role("link", name="Calendar")).to_have_attribute("aria-current", "page")
    expect(page.locator("#who")).to_contain_text("PractitionerRole/front-desk")


def test_a_patient_is_refused_by_the_server(open_console: Callable[..., Page]) -> None:
    """Peter asks for the console's staff scopes: his role allows none, so the server's consent
    step answers access_denied, which the console shows; no menu, no screen."""
    page = open_console()
    sign_in(page, "peter")
    expect(page.locator("#signin-error")).to_contain_text("The server refused the sign-in")
    expect(page.locator("#signin-error")).to_contain_text("access_denied")
    expect(page.get_by_role("navigation", name="Screens").get_by_role("link")).to_have_count(0)
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()


def test_sign_out_ends_the_session_at_the_server(
    signed_in: SignedIn, console_server: Server
) -> None:
    page = signed_in("frontdesk")
    token = page.evaluate("JSON.parse(sessionStorage.getItem('console.session')).accessToken")
    fhir = f"{console_server.base}/Appointment"
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(fhir, headers=auth, params={"_count": 1}, timeout=10).status_code == 200
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("alert")).to_have_text("You are signed out.")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    # RP-initiated logout revoked the token, not only forgot it
    refused = httpx.get(fhir, headers=auth, params={"_count": 1}, timeout=10)
    assert refused.status_code == 401
    assert refused.json()["resourceType"] == "OperationOutcome"


def test_the_page_is_served_with_its_policy(console_server: Server) -> None:
    page = httpx.get(f"{console_server.root}/console/", timeout=10)
    assert page.status_code == 200
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self';" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["Cache-Control"] == "no-cache"
    assert "<script>" not in page.text  # no inline script: every one has a src
    moved = httpx.get(f"{console_server.root}/console", timeout=10)
    assert moved.status_code == 308
    assert moved.headers["Location"] == "console/"


def test_only_the_console_files_are_served(console_server: Server) -> None:
    root = f"{console_server.root}/console"
    assert (
        httpx.get(f"{root}/app.js", timeout=10)
        .headers["Content-Type"]
        .startswith("text/javascript")
    )
    for wrong in ("nothing.js", "..%2F..%2Fapp.py", "vendor/fullcalendar/VENDORED.md", ".x.js"):
        answer = httpx.get(f"{root}/{wrong}", timeout=10)
        assert answer.status_code == 404, wrong
        assert answer.json()["resourceType"] == "OperationOutcome"


def test_a_session_that_ends_mid_task_signs_in_again_and_keeps_what_was_typed(
    signed_in: SignedIn, console_server: Server
) -> None:
    """The front desk is typing when the session ends at the server (here: its tokens revoked,
    the refresh token with them). The next call gets 401, the refresh fails, the console keeps
    the typed fields, signs in again and puts them back."""
    page = signed_in("frontdesk")
    field = page.get_by_label("Patient: name, birth date")
    field.fill("Stone 1990")
    id_token = page.evaluate("JSON.parse(sessionStorage.getItem('console.session')).idToken")
    ended = httpx.get(
        f"{console_server.root}/auth/logout",
        params={"id_token_hint": id_token},
        follow_redirects=False,
        timeout=30,
    )
    assert ended.status_code in (200, 302, 303), ended.text
    page.get_by_role("button", name="Search patients").click()
    page.get_by_label("User name").fill("frontdesk")  # the server's own sign-in page
    page.get_by_label("Password").fill("frontdesk-demo")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Allow").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(page.locator("#notice")).to_contain_text("What you had typed is back")
    expect(page.get_by_label("Patient: name, birth date")).to_have_value("Stone 1990")
