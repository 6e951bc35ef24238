"""PostgreSQL plans a search for each run's values, never with one cached generic plan.

psycopg prepares a statement on the server after its fifth run on a connection; PostgreSQL may
then give a prepared statement one generic plan and keep it however the table grows. A patient
lookup planned while its index table was nearly empty went on scanning the whole table, so a
search's count and page are never prepared (``resources.sql.engine.PLAN_PER_RUN``), while the
Store's fixed statements still are.
"""

from __future__ import annotations

from sqlalchemy import text

from resources import service
from resources.sql.engine import Database, migrate
from resources.store import Store
from tests.builders import make_patient
from tests.conftest import pg_database

RUNS = 20  # psycopg prepares at the 5th run; PostgreSQL may go generic from the 6th after that


def _prepared(db: Database) -> list[tuple[str, int]]:
    with db.read() as conn:
        rows = conn.execute(
            text("SELECT statement, generic_plans FROM pg_prepared_statements")
        ).all()
    return [(r.statement, r.generic_plans) for r in rows]


def test_a_search_run_many_times_is_never_given_a_generic_plan(
    pg_schema: str, store: Store
) -> None:
    db = pg_database(pg_schema, pool_size=1)  # used one at a time: one connection, one cache
    try:
        migrate(db)
        for n in range(RUNS):  # the Store's statements run as often as the search's
            with db.write() as conn:
                patient = make_patient(f"Plan{n}", ["Ann"], birth="1980-01-01", mrn=f"PL{n}")
                service.create(conn, store=store, resource_type="Patient", resource=patient)
        for n in range(RUNS):
            with db.read() as conn:
                _, result = service.search(
                    conn,
                    store=store,
                    resource_type="Patient",
                    params=[("identifier", f"PL{n * 3}")],  # from the 7th on, no match
                )
                assert result.total == (1 if n * 3 < RUNS else 0)
        prepared = _prepared(db)
        # the control: this connection does prepare what runs often (the Store's inserts)
        assert any("INSERT INTO resource_version" in s for s, _ in prepared), prepared
        searches = [(s, g) for s, g in prepared if "idx_blind" in s and s.startswith("SELECT")]
        assert searches == [], searches
    finally:
        db.dispose()
