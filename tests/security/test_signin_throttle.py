"""The sign-in throttle, through the real sign-in page: failures per account and per address
slow further tries with a back-off that ends, the refusal comes before the password is looked
at, and every refused try is audited."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from fhir_server.app import create_app
from fhir_server.cli import main
from fhir_server.settings import Settings
from resources.sql.engine import Database
from resources.sql.tables import AuditLog, SigninThrottle
from security.audit import open_event
from security.crypto import KeyRing, generate_key_material
from security.smart.registry import add_user
from security.smart.throttle import ACCOUNT_FREE, ADDRESS_FREE, FIRST_DELAY, MAX_DELAY, delay_after
from tests.smart import authorize_params, page_form, pkce, register_app, submit

Browser = Callable[[str], TestClient]
KEY_DOCUMENT = generate_key_material()


@pytest.fixture
def keys() -> KeyRing:
    """The key ring the CLI is given too (FHIRSCHED_KEYS)."""
    return KeyRing.from_document(KEY_DOCUMENT)


@pytest.fixture
def browser(db: Database, keys: KeyRing, settings: Settings) -> Iterator[Browser]:
    """TestClients over one app, each from the client address it is asked for."""
    register_app(db)
    with db.write() as conn:
        add_user(conn, keys, login="desk", password="desk-password-1", role="front-desk")
    app = create_app(settings, keys=keys, db=db)
    opened: dict[str, TestClient] = {}

    def at(address: str) -> TestClient:
        if address not in opened:
            c = TestClient(
                app, raise_server_exceptions=False, follow_redirects=False, client=(address, 50000)
            )
            opened[address] = c.__enter__()
        return opened[address]

    yield at
    for c in opened.values():
        c.__exit__(None, None, None)


def sign_in(c: TestClient, login: str, password: str) -> Any:
    _, challenge = pkce()
    form = page_form(c.get("/auth/authorize", params=authorize_params("app", challenge)).text)
    pairs = submit(form, username=login, password=password)
    return c.post(form["action"], data=dict(pairs))


def _pass_time(db: Database) -> None:
    """As if every wait had run out (the clock is the database's rows, not the test's)."""
    past = datetime.now(UTC) - timedelta(seconds=1)
    with db.write() as conn:
        conn.execute(update(SigninThrottle).values(blocked_until=past))


def _login_events(db: Database, keys: KeyRing) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(select(AuditLog.__table__).order_by(AuditLog.__table__.c.seq))
        events = [open_event(keys, r) for r in rows]
    return [e for e in events if e["subtype"][0]["code"] == "110122"]


def test_guessing_a_password_is_slowed_then_the_right_one_works_again(
    browser: Browser, db: Database, keys: KeyRing
) -> None:
    """The attack: 25 wrong passwords, then the right one. Before, the right one simply
    worked. Now the tries past the free ones are refused with 429 and Retry-After, the right
    password too while the wait lasts, and each refusal is audited; once the wait has run out
    the right password signs in and the account starts afresh."""
    c = browser("10.0.0.1")
    answers = [sign_in(c, "desk", f"guess-{i}").status_code for i in range(25)]
    assert answers[: ACCOUNT_FREE + 1] == [401] * (ACCOUNT_FREE + 1)
    assert answers[ACCOUNT_FREE + 1 :] == [429] * (25 - ACCOUNT_FREE - 1)
    right = sign_in(c, "desk", "desk-password-1")
    assert right.status_code == 429
    assert 1 <= int(right.headers["retry-after"]) <= FIRST_DELAY
    assert "too many failed sign-ins" in right.text
    # the account's wait holds from another address too
    assert sign_in(browser("10.0.0.2"), "desk", "desk-password-1").status_code == 429

    _pass_time(db)
    assert sign_in(c, "desk", "wrong-again").status_code == 401  # the 7th failure: 4 s
    refused = sign_in(c, "desk", "desk-password-1")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > FIRST_DELAY
    _pass_time(db)
    ok = sign_in(c, "desk", "desk-password-1")
    assert ok.status_code == 200 and "ticket" in ok.text  # on to the consent page
    # afresh: the free failures are free again
    for _ in range(ACCOUNT_FREE):
        assert sign_in(c, "desk", "nope").status_code == 401

    events = _login_events(db, keys)
    throttled = [e for e in events if "too many failed sign-ins" in e.get("outcomeDesc", "")]
    assert len(throttled) == 25 - ACCOUNT_FREE - 1 + 3
    assert all(e["outcome"] == "4" for e in throttled)
    failed = [e for e in events if "wrong user name or password" in e.get("outcomeDesc", "")]
    assert failed[ACCOUNT_FREE]["outcomeDesc"].endswith(f"({ACCOUNT_FREE + 1} in a row)")


def test_an_unknown_login_is_throttled_like_a_real_one(browser: Browser) -> None:
    """The refusal must not tell a guesser which logins exist."""
    c = browser("10.0.1.1")
    real = [sign_in(c, "desk", "x").status_code for _ in range(ACCOUNT_FREE + 2)]
    ghost = [sign_in(c, "nobody-here", "x").status_code for _ in range(ACCOUNT_FREE + 2)]
    assert real == ghost == [401] * (ACCOUNT_FREE + 1) + [429]


def test_one_address_guessing_many_accounts_is_slowed(browser: Browser) -> None:
    """Spraying one password over many logins from one address: past the address's free
    failures, every login (the real user's too) waits there, and nowhere else."""
    sprayer = browser("10.0.2.1")
    answers = [sign_in(sprayer, f"user-{i}", "Winter2026!").status_code for i in range(25)]
    assert answers[: ADDRESS_FREE + 1] == [401] * (ADDRESS_FREE + 1)
    assert set(answers[ADDRESS_FREE + 1 :]) == {429}
    assert sign_in(sprayer, "desk", "desk-password-1").status_code == 429
    ok = sign_in(browser("10.0.2.2"), "desk", "desk-password-1")
    assert ok.status_code == 200, ok.text


def test_no_login_name_or_address_is_stored(browser: Browser, db: Database) -> None:
    sign_in(browser("10.0.3.77"), "desk", "nope")
    with db.read() as conn:
        rows = conn.execute(select(SigninThrottle)).all()
    assert len(rows) == 2
    for row in rows:
        assert b"desk" not in row.key and b"10.0.3.77" not in row.key


def test_the_back_off_doubles_and_always_ends() -> None:
    assert [delay_after(n, 5) for n in range(1, 6)] == [0.0] * 5
    assert [delay_after(n, 5) for n in range(6, 10)] == [2.0, 4.0, 8.0, 16.0]
    assert delay_after(10_000, 5) == MAX_DELAY == 900.0


def test_staff_can_unblock_an_account_at_once(
    browser: Browser, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = browser("10.0.4.1")
    for _ in range(ACCOUNT_FREE + 1):
        sign_in(c, "desk", "nope")
    assert sign_in(c, "desk", "desk-password-1").status_code == 429
    monkeypatch.setenv("FHIRSCHED_DATABASE_URL", db.url)
    monkeypatch.setenv("FHIRSCHED_KEYS", orjson.dumps(KEY_DOCUMENT).decode())
    done = CliRunner().invoke(main, ["user", "unblock", "Desk "])  # as typed at the page
    assert done.exit_code == 0 and done.output == "unblocked Desk \n", done.output
    assert sign_in(c, "desk", "desk-password-1").status_code == 200
    again = CliRunner().invoke(main, ["user", "unblock", "desk"])
    assert again.output == "desk had no failed sign-ins to clear\n"
