"""The sample SMART app (``examples/smart_app/app.py``), run as the README says, against the
real server with the demo loaded: the authorize URL it builds is the README's, its sign-in runs
end to end (the two form posts a browser makes), it shows the granted scopes and the verified
id_token's ``fhirUser``, lists the user's appointments and books one through ``$find`` and
``$book``, for a patient and for the front desk."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit
from zoneinfo import ZoneInfo

import httpx

from fhir_server.demo import DEMO_CLIENTS, DEMO_CLINIC, load_demo
from fhir_server.settings import Settings
from resources.sql.engine import Database
from security.smart.registry import add_client
from tests.integration.server import Server, free_port, running_server, server_env
from tests.smart import page_form, submit

ROOT = Path(__file__).parents[2]
APP = ROOT / "examples" / "smart_app" / "app.py"
CLIENT_ID = "sample-app-test"


@contextmanager
def running_app(tmp_path: Path, server: Server, port: int) -> Iterator[str]:
    """The sample app as the README starts it, on ``port``, for the test's client."""
    log_path = tmp_path / "app.log"
    args = ["--port", str(port), "--fhir-base", server.base, "--client-id", CLIENT_ID]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(APP), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the sample app did not start"
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def _register(database_url: str, redirect_uri: str) -> None:
    """demo-app's registration, with the test's redirect instead of port 9000's."""
    demo_app = next(c for c in DEMO_CLIENTS if c["client_id"] == "demo-app")
    db = Database(database_url)
    try:
        with db.write() as conn:
            add_client(
                conn, **{**demo_app, "client_id": CLIENT_ID, "redirect_uris": [redirect_uri]}
            )
    finally:
        db.dispose()


def _readme_authorize_query() -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    url = re.search(r"^http://127\.0\.0\.1:8080/auth/authorize\?\S+$", readme, re.MULTILINE)
    assert url is not None, "the README writes out the sample app's authorize URL"
    return dict(parse_qsl(urlsplit(url.group(0)).query))


def _post(browser: httpx.Client, url: str, pairs: list[tuple[str, str]]) -> httpx.Response:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    return browser.post(url, content=urlencode(pairs), headers=headers)


def _sign_in(browser: httpx.Client, app: str, server: Server, login: str, password: str) -> str:
    """A browser's sign-in through the app: its authorize URL, the two form posts, the
    callback; the app's page after it."""
    to_server = browser.get(f"{app}/login")
    assert to_server.status_code == 302
    authorize = to_server.headers["location"]
    assert authorize.startswith(f"{server.root}/auth/authorize?")
    query = dict(parse_qsl(urlsplit(authorize).query))
    written = _readme_authorize_query()
    assert query.keys() == written.keys()
    for name in ("response_type", "scope", "code_challenge_method"):
        assert query[name] == written[name], name
    assert (query["client_id"], written["client_id"]) == (CLIENT_ID, "demo-app")
    assert query["redirect_uri"] == f"{app}/callback"
    assert written["redirect_uri"] == "http://127.0.0.1:9000/callback"
    assert (query["aud"], written["aud"]) == (server.base, "http://127.0.0.1:8080/fhir")

    page = browser.get(authorize)
    assert page.status_code == 200, page.text
    form = page_form(page.text)  # post 1: user name and password
    consent = _post(
        browser,
        urljoin(authorize, form["action"]),
        submit(form, username=login, password=password),
    )
    assert consent.status_code == 200, consent.text
    form = page_form(consent.text)  # post 2: allow what is ticked
    back = _post(browser, urljoin(authorize, form["action"]), submit(form, decision="allow"))
    assert back.status_code == 302, back.text
    assert back.headers["location"].startswith(f"{app}/callback?code=")
    signed_in = browser.get(back.headers["location"])  # the app exchanges the code
    assert signed_in.status_code == 303, signed_in.text
    home = browser.get(f"{app}/")
    assert home.status_code == 200
    return home.text


def _book(browser: httpx.Client, app: str, day: date, **fields: str) -> str:
    pairs = [("date", day.isoformat()), ("visit-type", "pt-eval"), *fields.items()]
    page = _post(browser, f"{app}/book", pairs)
    assert page.status_code == 200
    booked = re.search(r"Booked (Appointment/[\w-]+) at", page.text)
    assert booked is not None, page.text
    return booked.group(1)


def _next_monday() -> date:
    today = datetime.now(ZoneInfo("America/New_York")).date()  # the demo clinic's zone
    return today + timedelta(days=7 - today.weekday())


def _patient(server: Server, appointment: str) -> str:
    stored = httpx.get(f"{server.base}/{appointment}", headers=server.headers, timeout=30)
    assert stored.status_code == 200 and stored.json()["status"] == "booked"
    actors = [p["actor"]["reference"] for p in stored.json()["participant"]]
    return next(a for a in actors if a.startswith("Patient/"))


def test_the_sample_app_signs_in_lists_and_books(tmp_path: Path, database_url: str) -> None:
    env = server_env(tmp_path, database_url, FHIRSCHED_CLINIC_FILE=str(DEMO_CLINIC))
    load_demo(Settings(database_url=database_url, key_file=tmp_path / "keys.json"), weeks=2)
    port = free_port()
    _register(database_url, f"http://127.0.0.1:{port}/callback")
    monday = _next_monday()
    with running_server(tmp_path, env) as server, running_app(tmp_path, server, port) as app:
        with httpx.Client(follow_redirects=False, timeout=30) as browser:  # a patient
            page = _sign_in(browser, app, server, "peter", "peter-demo-1")
            assert f"<code>{server.base}/Patient/pat-1</code>" in page
            for scope in ("patient/Appointment.rs", "patient/Appointment.$book", "openid"):
                assert f"<li><code>{scope}</code></li>" in page
            assert "<code>user/" not in page
            mine = _book(browser, app, monday)
            assert _patient(server, mine) == "Patient/pat-1"
            assert mine in browser.get(f"{app}/").text  # listed among his appointments

        with httpx.Client(follow_redirects=False, timeout=30) as browser:  # the front desk
            page = _sign_in(browser, app, server, "frontdesk", "frontdesk-demo")
            assert f"<code>{server.base}/PractitionerRole/front-desk</code>" in page
            for scope in ("user/Appointment.rs", "user/Appointment.$book", "openid"):
                assert f"<li><code>{scope}</code></li>" in page
            assert "<code>patient/" not in page
            assert mine in page  # the clinic's next appointments
            theirs = _book(browser, app, monday, patient="pat-3")
            assert _patient(server, theirs) == "Patient/pat-3"
