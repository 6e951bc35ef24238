"""Shared fixtures: every storage-touching test runs on SQLite and on PostgreSQL.

PostgreSQL is the real server on 127.0.0.1:5432 (database ``test``); each test session works in
its own schema.  If PostgreSQL cannot be reached the PostgreSQL-parametrised tests fail loudly:
they are never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, text

from agent.store import metadata as agent_metadata
from base.logging import configure_logging
from fhir_server.app import create_app
from fhir_server.settings import Settings
from resources.sql.engine import Database, migrate
from resources.sql.guards import audit_guard_create, audit_guard_drop
from resources.sql.tables import AuditHead, Base
from resources.store import Store
from security.crypto import KeyRing, generate_key_material
from tests.smart import backend_token

PG_URL = os.environ.get(
    "FHIRSCHED_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", "postgresql"]
FHIR_JSON = {"content-type": "application/fhir+json"}


def pytest_configure(config: pytest.Config) -> None:
    configure_logging("warning")


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str]:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    admin = Database(PG_URL)
    try:
        with admin.engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        raise RuntimeError(
            f"PostgreSQL at {PG_URL} is unreachable ({exc}); start it with "
            "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"
        ) from exc
    yield schema
    with admin.engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def pg_url(schema: str) -> str:
    """The PostgreSQL URL confined to ``schema`` (libpq ``options``, as a deployment would)."""
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


def pg_database(schema: str, **kwargs: Any) -> Database:
    return Database(pg_url(schema), **kwargs)


def someone_waits_for_a_lock(db: Database) -> bool:
    """Whether a session of this PostgreSQL database waits on a lock (a concurrent test's
    second transaction has reached the row the first holds); never on SQLite."""
    if db.dialect != "postgresql":
        return False
    with db.read() as conn:
        waiting = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        ).scalar_one()
    return bool(waiting)


@pytest.fixture(scope="session")
def _session_dbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    made: dict[str, Any] = {}
    yield made
    for db in made.values():
        db.dispose()


def _truncate(db: Database) -> None:
    """Empty every table; the audit log's guard is lifted for it and put back."""
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    tables += [t.name for t in agent_metadata.sorted_tables]
    with db.engine.begin() as conn:
        for statement in audit_guard_drop(db.dialect):
            conn.execute(text(statement))
        if db.is_sqlite:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))
        else:
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY"))
        conn.execute(insert(AuditHead).values(id=1, seq=0, mac=bytes(32)))
        for statement in audit_guard_create(db.dialect):
            conn.execute(text(statement))


@pytest.fixture(params=BACKENDS)
def db(
    request: pytest.FixtureRequest,
    _session_dbs: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Database:
    """A migrated, empty database on each backend."""
    backend: str = request.param
    if backend not in _session_dbs:
        if backend == "sqlite":
            path = tmp_path_factory.mktemp("sqlite") / "fhir.db"
            database = Database(f"sqlite:///{path}")
        else:
            database = pg_database(request.getfixturevalue("pg_schema"))
        migrate(database)
        _session_dbs[backend] = database
    database = _session_dbs[backend]
    _truncate(database)
    return database  # type: ignore[no-any-return]


@pytest.fixture
def keys() -> KeyRing:
    return KeyRing.from_document(generate_key_material())


@pytest.fixture
def store(keys: KeyRing) -> Store:
    return Store(keys, base_url="http://testserver/fhir")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path}/unused.db",
        key_file=tmp_path / "keys.json",
        base_url="http://testserver/fhir",
        token_cache_seconds=0,  # tests change tokens behind the server's back (expiry, …)
    )


@pytest.fixture
def anonymous(db: Database, keys: KeyRing, settings: Settings) -> Iterator[TestClient]:
    """A TestClient over the app on each backend, sending no token (redirects not followed:
    the authorization endpoint's redirect goes to the app, not here)."""
    app = create_app(settings, keys=keys, db=db)
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as c:
        yield c


@pytest.fixture
def client(anonymous: TestClient, db: Database) -> TestClient:
    """A TestClient over the app on each backend (in-process; see integration/ for uvicorn),
    carrying a full-access system token from the real token endpoint."""
    anonymous.headers["Authorization"] = f"Bearer {backend_token(anonymous, db)}"
    return anonymous


@contextmanager
def audit_writes_refused(db: Database) -> Iterator[None]:
    """The audit log refuses every record while the block runs (a trigger that raises), as a
    full or failing audit store would."""
    with db.write() as conn:
        if db.is_sqlite:
            conn.execute(
                text(
                    "CREATE TRIGGER audit_refuses BEFORE INSERT ON audit_log "
                    "BEGIN SELECT RAISE(ABORT, 'audit store is down'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE FUNCTION audit_refuses() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'audit store is down'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER audit_refuses BEFORE INSERT ON audit_log "
                    "FOR EACH ROW EXECUTE FUNCTION audit_refuses()"
                )
            )
    try:
        yield
    finally:
        with db.write() as conn:
            on = "" if db.is_sqlite else " ON audit_log"
            conn.execute(text(f"DROP TRIGGER audit_refuses{on}"))
            if not db.is_sqlite:
                conn.execute(text("DROP FUNCTION audit_refuses()"))
