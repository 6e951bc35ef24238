"""PostgreSQL plans searches for each run's values, never with one cached generic plan.

psycopg prepares a statement on the server after its fifth run on a connection; PostgreSQL then
switches a prepared statement to one generic plan once that looks no dearer than the custom
ones, and keeps it however the table grows. A patient lookup planned while its index table was
nearly empty went on scanning the whole table (``resources.sql.engine.PLAN_PER_RUN``).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from resources import service
from resources.sql.async_reads import AsyncReader
from resources.sql.engine import Database, migrate
from resources.store import Store
from tests.builders import make_patient
from tests.conftest import pg_database, pg_url

RUNS = 20  # psycopg prepares at the 5th run, PostgreSQL may go generic from the 6th after that


def _plans(db: Database) -> list[tuple[str, int, int]]:
    with db.read() as conn:
        rows = conn.execute(
            text(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements "
                "WHERE statement LIKE '%idx_blind%'"
            )
        ).all()
    return [(r.statement, r.generic_plans, r.custom_plans) for r in rows]


def test_a_search_run_many_times_is_planned_for_each_run(pg_schema: str, store: Store) -> None:
    db = pg_database(pg_schema, pool_size=1)  # used one at a time: one connection, one plan cache
    try:
        migrate(db)
        with db.write() as conn:
            for n in range(3):
                patient = make_patient(f"Plan{n}", ["Ann"], birth="1980-01-01", mrn=f"PL{n}")
                service.create(conn, store=store, resource_type="Patient", resource=patient)
        for n in range(RUNS):
            with db.read() as conn:
                _, result = service.search(
                    conn,
                    store=store,
                    resource_type="Patient",
                    params=[("identifier", f"PL{n % 4}")],  # PL3 matches nothing
                )
                assert len(result.matches) == (0 if n % 4 == 3 else 1)
        plans = _plans(db)
        assert plans, "the search was never prepared: the check below would prove nothing"
        assert all(custom >= 1 and generic == 0 for _, generic, custom in plans), plans
    finally:
        db.dispose()


def test_the_async_pool_plans_for_each_run_too(pg_schema: str) -> None:
    async def mode() -> str:
        pool = AsyncReader(pg_url(pg_schema), max_size=1)
        await pool.open()
        try:
            async with pool.connection() as conn:
                row = await (await conn.execute("SHOW plan_cache_mode")).fetchone()
                return str(row[0])
        finally:
            await pool.close()

    assert asyncio.run(mode()) == "force_custom_plan"
