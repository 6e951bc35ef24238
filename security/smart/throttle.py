"""The sign-in throttle: failed passwords slow down further tries, per account and per client
address, with an exponential back-off that always ends.

A login name gets ``ACCOUNT_FREE`` failures without delay, an address ``ADDRESS_FREE`` (a
clinic's staff may share one address). After that, each failure makes the next try wait twice
as long as the one before, from ``FIRST_DELAY`` up to ``MAX_DELAY``; no count ever locks anyone
out for longer than that. While an account or address waits, a sign-in is refused before the
password is looked at, so a guesser gains nothing by trying, and the refusal is the same for a
login that exists and one that does not. A successful sign-in clears its account's count; an
address's count is forgotten ``FORGET_AFTER`` after its last failure (a success from an address
does not clear it: an attacker would sign in to their own account in between).

Rows are keyed by a keyed digest (``KeyRing.blind``) of ``account:<login>`` or
``address:<ip>``: neither a login name nor an address is stored. Each sign-in locks its two
rows for the length of the password check, so parallel guesses against one account or from
one address queue up and each sees the failures before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from resources.sql.tables import SigninThrottle
from security.crypto import KeyRing

__all__ = [
    "ACCOUNT_FREE",
    "ADDRESS_FREE",
    "FIRST_DELAY",
    "MAX_DELAY",
    "Throttle",
    "clear_account",
]

ACCOUNT_FREE = 5
ADDRESS_FREE = 20
FIRST_DELAY = 2.0  # seconds, after the first failure past the free ones
MAX_DELAY = 900.0  # never longer than 15 minutes
FORGET_AFTER = timedelta(hours=1)
_PURPOSE = "signin_throttle"


def _account_key(keys: KeyRing, login: str) -> bytes:
    return keys.blind(_PURPOSE, "account:" + login.strip().casefold())


def _address_key(keys: KeyRing, address: str) -> bytes:
    return keys.blind(_PURPOSE, "address:" + address)


def delay_after(failures: int, free: int) -> float:
    """Seconds the next try waits after ``failures`` failures with ``free`` of them free."""
    over = failures - free
    if over <= 0:
        return 0.0
    return min(MAX_DELAY, FIRST_DELAY * float(2 ** min(over - 1, 32)))


@dataclass
class Throttle:
    """One sign-in attempt's view of the throttle, inside its write transaction."""

    conn: Connection
    keys: KeyRing
    login: str
    address: str | None

    def _rows(self) -> list[tuple[bytes, int]]:
        rows = [(_account_key(self.keys, self.login), ACCOUNT_FREE)]
        if self.address:
            rows.append((_address_key(self.keys, self.address), ADDRESS_FREE))
        return rows

    def _lock(self, key: bytes) -> SigninThrottle | None:
        """This key's row, locked until the transaction ends (PostgreSQL; SQLite's one writer
        holds the whole database already). A row is made first so there is one to lock."""
        epoch = datetime.fromtimestamp(0, UTC)
        values = {"key": key, "failures": 0, "last_failure": epoch, "blocked_until": epoch}
        dialect = postgresql if self.conn.dialect.name == "postgresql" else sqlite
        self.conn.execute(dialect.insert(SigninThrottle).values(values).on_conflict_do_nothing())
        query = select(SigninThrottle).where(SigninThrottle.key == key)
        if self.conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = self.conn.execute(query).first()
        return row  # type: ignore[return-value]

    def wait(self, now: datetime | None = None) -> int:
        """Whole seconds before this account and address may try again (0: now)."""
        now = now or datetime.now(UTC)
        longest = 0.0
        for key, _free in self._rows():
            row = self._lock(key)
            if row is not None:
                blocked = _aware(row.blocked_until)
                longest = max(longest, (blocked - now).total_seconds())
        return math.ceil(longest) if longest > 0 else 0

    def failed(self, now: datetime | None = None) -> int:
        """Count a wrong password; returns the account's failures so far."""
        now = now or datetime.now(UTC)
        forget_old(self.conn, now)
        counted = 0
        for key, free in self._rows():
            row = self._lock(key)
            failures = 0 if row is None else row.failures
            if row is not None and now - _aware(row.last_failure) > FORGET_AFTER:
                failures = 0
            failures += 1
            blocked = now + timedelta(seconds=delay_after(failures, free))
            self.conn.execute(
                update(SigninThrottle)
                .where(SigninThrottle.key == key)
                .values(failures=failures, last_failure=now, blocked_until=blocked)
            )
            counted = counted or failures
        return counted

    def succeeded(self) -> None:
        """The right password: the account starts afresh (the address does not)."""
        clear_account(self.conn, self.keys, self.login)


def clear_account(conn: Connection, keys: KeyRing, login: str) -> bool:
    """Forget an account's failures (a successful sign-in, or staff unblocking it)."""
    done = conn.execute(
        delete(SigninThrottle).where(SigninThrottle.key == _account_key(keys, login))
    )
    return bool(done.rowcount)


def forget_old(conn: Connection, now: datetime | None = None) -> None:
    """Drop rows whose last failure is long past (they no longer delay anyone)."""
    cutoff = (now or datetime.now(UTC)) - FORGET_AFTER - timedelta(seconds=MAX_DELAY)
    conn.execute(delete(SigninThrottle).where(SigninThrottle.last_failure < cutoff))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
