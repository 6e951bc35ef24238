"""Browser tests of the staff console: Playwright for Python driving Debian's ``chromium``
(``/usr/bin/chromium``; ``.ci/run`` installs it) against the real ``fhir-sched demo`` server.

Fixtures (see docs/console.md):

* ``console_server``: one real server for the session, started as ``./dev demo`` starts it
  (``fhir-sched demo --port N``: SQLite, the demo clinic with two weeks of Slots, its users and
  the console's client), as a ``tests.integration.server.Server`` (``.root``, ``.base``,
  ``.headers`` for a full-access backend token, ``.cli(...)``).
* ``browser``: one headless chromium for the session.
* ``signed_in``: ``signed_in("frontdesk")`` opens a new browser context at ``/console/``, signs
  in as that demo user through the server's own pages (sign-in, consent) and returns the page
  once the console shows its menu; ``signed_in("frontdesk", screen="calendar")`` opens that
  screen first (``#calendar``). Each call is a fresh context: its own sessionStorage.
* ``open_console``: a fresh page at ``/console/``, not signed in.
* ``check_a11y(page)``: runs axe-core (bundled by ``axe-playwright-python``) for WCAG 2.0/2.1
  A and AA and fails with the violations listed.
* ``screenshot(page, name)``: writes ``docs/images/<name>.png`` when ``FHIRSCHED_SCREENSHOTS=1``
  (and nothing otherwise, so a test run leaves the tree clean).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from fhir_server.demo import DEMO_USERS
from tests.integration.server import Server, running_server, server_env

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).parents[2]
EXE = Path(sys.executable).with_name("fhir-sched")
PASSWORDS = {login: password for login, password, *_ in DEMO_USERS}
LAPTOP = {"width": 1366, "height": 900}
TABLET = {"width": 820, "height": 1180}
CLINIC_ZONE = "America/New_York"  # fhir_server/demo_clinic.yaml

SignedIn = Callable[..., Page]


@pytest.fixture(scope="package")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("console")
    # the no-show risk job every few seconds, so a booking shows its score while a test runs
    env = server_env(tmp, f"sqlite:///{tmp}/demo.db", FHIRSCHED_RISK_REFRESH_SECONDS="3")
    with running_server(tmp, env, command=("demo", "--weeks", "2"), start_within=120) as server:
        yield server


@pytest.fixture(scope="package")  # gone before the next package: see below
def browser() -> Iterator[Browser]:
    """One headless chromium for this package's tests. Playwright's sync API runs an event loop
    on the test thread while it is open, and ``asyncio.run`` refuses to start under a running
    loop; so it must close when the console's tests are done, not at the end of the session."""
    assert CHROMIUM.exists(), "install Debian's chromium: apt-get install -y chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def open_console(browser: Browser, console_server: Server) -> Iterator[Callable[..., Page]]:
    contexts = []

    def open_(viewport: dict[str, int] | None = None) -> Page:
        context = browser.new_context(  # the demo clinic's zone, as at its front desk
            viewport=viewport or LAPTOP,  # type: ignore[arg-type]
            timezone_id=CLINIC_ZONE,
            locale="en-US",
        )
        contexts.append(context)
        page = context.new_page()
        page.goto(f"{console_server.root}/console/")
        return page

    yield open_
    for context in contexts:
        context.close()


def sign_in(page: Page, login: str) -> None:
    """From the console's landing page, through the server's sign-in and consent pages."""
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("User name").fill(login)
    page.get_by_label("Password").fill(PASSWORDS[login])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Allow").click()


@pytest.fixture
def signed_in(open_console: Callable[..., Page], console_server: Server) -> SignedIn:
    def sign(login: str, screen: str = "", viewport: dict[str, int] | None = None) -> Page:
        page = open_console(viewport)
        if screen:
            page.goto(f"{console_server.root}/console/#{screen}")
        sign_in(page, login)
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        return page

    return sign


@pytest.fixture
def check_a11y() -> Callable[[Page], None]:
    from axe_playwright_python.sync_playwright import Axe

    def check(page: Page) -> None:
        options = {
            "runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}
        }
        results = Axe().run(page, options=options)
        assert results.violations_count == 0, results.generate_report()

    return check


@pytest.fixture
def screenshot() -> Callable[[Page, str], None]:
    def take(page: Page, name: str) -> None:
        if os.environ.get("FHIRSCHED_SCREENSHOTS") == "1":
            page.screenshot(path=str(ROOT / "docs" / "images" / f"{name}.png"))

    return take
