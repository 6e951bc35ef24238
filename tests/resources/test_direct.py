"""``Direct`` stores exactly what ``Connection.execute`` stores, in the caller's transaction,
and fails as SQLAlchemy would."""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError

from resources.fhirdate import as_utc
from resources.sql import direct
from resources.sql.direct import Direct, deferring, flush, pipelined, raw
from resources.sql.engine import Database
from resources.sql.tables import HL7Link, ResourceRow

R = cast(Table, ResourceRow.__table__)
WHEN = datetime(2027, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)


def _head(rid: str, version: int = 1, deleted: bool = False) -> dict[str, Any]:
    return {
        "res_type": "Patient",
        "res_id": rid,
        "version": version,
        "last_updated": WHEN,
        "deleted": deleted,
    }


def test_rows_read_back_as_if_sqlalchemy_had_written_them(db: Database) -> None:
    with db.write() as conn:
        conn.execute(insert(R), _head("by-sqlalchemy", deleted=True))
        seq = Direct(insert(R).returning(R.c.seq)).run(conn, _head("direct", deleted=True))
        assert int(seq.fetchone()[0]) > 0
        Direct(insert(R)).run(conn, [_head("many-1"), _head("many-2", version=3)])
    with db.read() as conn:
        rows = {
            r.res_id: r
            for r in conn.execute(select(R.c.res_id, R.c.version, R.c.last_updated, R.c.deleted))
        }
        raw = {
            r[0]: tuple(r[1:])
            for r in conn.exec_driver_sql("SELECT res_id, last_updated, deleted FROM resource")
        }
    assert set(rows) == {"by-sqlalchemy", "direct", "many-1", "many-2"}
    for rid in ("direct", "many-1"):
        # the driver's own values: the same text (SQLite) or timestamp the ORM path writes
        assert raw[rid][0] == raw["by-sqlalchemy"][0]
    assert raw["direct"][1] == raw["by-sqlalchemy"][1]
    assert rows["direct"].last_updated.replace(tzinfo=UTC) == WHEN
    assert rows["direct"].deleted is True and rows["many-1"].deleted is False
    assert rows["many-2"].version == 3


def test_rowcount_counts_every_row_of_an_executemany(db: Database) -> None:
    advance = Direct(
        update(R)
        .where(R.c.res_id == bindparam("b_id"), R.c.version == bindparam("old"))
        .values(version=bindparam("version"))
    )
    with db.write() as conn:
        Direct(insert(R)).run(conn, [_head("a"), _head("b")])
        moved = [{"b_id": "a", "old": 1, "version": 2}, {"b_id": "b", "old": 1, "version": 2}]
        assert advance.run(conn, moved).rowcount == 2
        stale = [{"b_id": "a", "old": 1, "version": 3}, {"b_id": "b", "old": 2, "version": 3}]
        assert advance.run(conn, stale).rowcount == 1  # "a" is at 2 now: its row is untouched


def test_a_driver_error_is_sqlalchemys_and_rolls_back_with_the_transaction(db: Database) -> None:
    def twice() -> None:
        with db.write() as conn:
            Direct(insert(R)).run(conn, _head("dup"))
            Direct(insert(R)).run(conn, _head("dup"))  # (res_type, res_id) is unique

    with pytest.raises(IntegrityError):
        twice()
    with db.read() as conn:
        assert conn.execute(select(R.c.res_id).where(R.c.res_id == "dup")).first() is None


def test_a_savepoint_keeps_the_rest_of_the_transaction(db: Database) -> None:
    with db.write() as conn:
        Direct(insert(R)).run(conn, _head("kept"))
        with pytest.raises(IntegrityError), conn.begin_nested():
            Direct(insert(R)).run(conn, _head("kept"))
        Direct(delete(R).where(R.c.res_id == bindparam("rid"))).run(conn, {"rid": "none"})
    with db.read() as conn:
        assert conn.execute(select(R.c.version).where(R.c.res_id == "kept")).scalar_one() == 1


def test_rows_are_the_values_sqlalchemy_reads_by_the_same_names(db: Database) -> None:
    """``rows`` gives what ``conn.execute(stmt).all()`` gives: datetimes (SQLite keeps text;
    naive UTC, as SQLAlchemy reads it),
    bools (SQLite keeps 0/1), bytes and NULLs processed alike, reached by column name; also
    for a UNION, and for none at all."""
    query = select(R.c.seq, R.c.res_id, R.c.last_updated, R.c.deleted).where(
        R.c.res_type == bindparam("rtype"), R.c.version == bindparam("version")
    )
    union = union_all(
        select(R.c.res_id, R.c.deleted).where(R.c.res_id == bindparam("a")),
        select(R.c.res_id, R.c.deleted).where(R.c.res_id == bindparam("b")),
    )
    with db.write() as conn:
        Direct(insert(R)).run(conn, [_head("kept"), _head("gone", deleted=True)])
        want = {"rtype": "Patient", "version": 1}
        expected = conn.execute(query.order_by(R.c.res_id), want).all()
        got = sorted(Direct(query).rows(conn, want), key=lambda r: r.res_id)
        assert [tuple(r) for r in got] == [tuple(r) for r in expected]
        assert [(r.res_id, as_utc(r.last_updated), r.deleted) for r in got] == [
            ("gone", WHEN, True),
            ("kept", WHEN, False),
        ]
        assert {tuple(r) for r in Direct(union).rows(conn, {"a": "kept", "b": "gone"})} == {
            ("kept", False),
            ("gone", True),
        }
        assert Direct(query).rows(conn, {"rtype": "Slot", "version": 1}) == []
        with pytest.raises(ValueError, match="returns no rows"):
            Direct(delete(R).where(R.c.res_id == bindparam("rid"))).rows(conn, {"rid": "x"})


def test_statements_that_need_sqlalchemy_at_run_time_are_refused(db: Database) -> None:
    expanding = Direct(delete(R).where(R.c.res_id.in_(bindparam("ids", expanding=True))))
    partial = Direct(update(R).where(R.c.res_id == bindparam("rid")))
    with db.write() as conn:
        with pytest.raises(ValueError, match="expanding"):
            expanding.run(conn, {"ids": ["a"]})
        with pytest.raises(ValueError, match="b_missing"):
            Direct(delete(R).where(R.c.res_id == bindparam("b_missing"))).run(conn, {"x": 1})
        assert partial.run(conn, {"rid": "a", "version": 2}).rowcount == 0


def test_many_rows_go_in_one_statement_on_postgresql_whatever_their_number(
    db: Database,
) -> None:
    """PostgreSQL: one statement for any number of rows (a VALUES list for a few, an array
    per column for more), which counts every row and stores the same values as one row at a
    time. (inline(): no implicit RETURNING of ``seq``, which keeps a statement to one row.)"""
    rows = [_head(f"v{i}", version=i % 7 + 1, deleted=i % 3 == 0) for i in range(600)]
    stmt = Direct(insert(R).inline())
    with db.write() as conn:
        assert stmt.run(conn, rows[:3]).rowcount == 3
        assert stmt.run(conn, rows[3:]).rowcount == 597
        assert stmt.run(conn, _head("alone")).rowcount == 1
    with db.read() as conn:
        stored = {r.res_id: r for r in conn.execute(select(R))}
    assert {k: (r.version, r.deleted) for k, r in stored.items()} == {
        **{r["res_id"]: (r["version"], r["deleted"]) for r in rows},
        "alone": (1, False),
    }
    assert as_utc(stored["v6"].last_updated) == WHEN
    links = [
        {"sender": "S", "kind": "filler", "value": str(i), "appointment_id": "a", "last_sent_at": t}
        for i, t in enumerate([None, WHEN, None] * 5)  # NULLs among a column's values
    ]
    link = cast(Table, HL7Link.__table__)
    with db.write() as conn:
        Direct(insert(link).inline()).run(conn, links)
    with db.read() as conn:
        sent = dict(conn.execute(select(link.c.value, link.c.last_sent_at)).all())
    assert sent["12"] is None and sent["14"] is None and as_utc(sent["13"]) == WHEN
    (compiled,) = stmt._compiled.values()
    if db.dialect == "postgresql":  # the VALUES list served only the 3 rows
        assert compiled.values is not None and set(compiled.values.sql) == {3}
        assert compiled.columns is not None and "unnest(" in compiled.columns.sql
    else:
        assert compiled.values is None and compiled.columns is None


def test_only_a_plain_insert_goes_as_one_statement(db: Database) -> None:
    """The one-statement forms are for ``INSERT INTO t (columns) VALUES (their parameters)``,
    a literal in ``values()`` included (it is a parameter too); an INSERT with more (an
    expression around a value, ON CONFLICT) runs as an executemany. Each stores every row."""
    link = cast(Table, HL7Link.__table__)
    rows = [
        {"sender": "S", "value": str(i), "appointment_id": "a", "last_sent_at": WHEN}
        for i in range(40)
    ]
    filler = Direct(insert(link).inline().values(kind="filler"))
    placer = Direct(insert(link).inline().values(kind="placer", last_sent_at=func.now()))
    with db.write() as conn:
        assert filler.run(conn, rows[:2]).rowcount == 2  # VALUES list
        assert filler.run(conn, rows[2:]).rowcount == 38  # arrays
        assert placer.run(conn, rows[:3]).rowcount == 3
        if db.dialect == "postgresql":
            again = Direct(pg_insert(link).on_conflict_do_nothing())
            assert again.run(conn, [{**r, "kind": "filler"} for r in rows[:3]]).rowcount == 0
    with db.read() as conn:
        stored = conn.execute(select(link.c.kind, link.c.value, link.c.last_sent_at)).all()
    assert sorted((k, v) for k, v, _ in stored) == sorted(
        [("filler", r["value"]) for r in rows] + [("placer", r["value"]) for r in rows[:3]]
    )
    assert all(t is not None for _, _, t in stored)
    (plain,) = filler._compiled.values()
    (expression,) = placer._compiled.values()
    assert (plain.values is not None) == (db.dialect == "postgresql") == (plain.columns is not None)
    assert expression.values is None and expression.columns is None


def test_pipelined_statements_all_run_and_their_cursors_answer_after_the_block(
    db: Database,
) -> None:
    advance = Direct(
        update(R)
        .where(R.c.res_id == bindparam("b_id"), R.c.version == bindparam("old"))
        .values(version=bindparam("version"))
    )
    with db.write() as conn:
        with pipelined(conn):
            seq = Direct(insert(R).returning(R.c.seq)).run(conn, _head("piped-1"))
            Direct(insert(R)).run(conn, [_head("piped-2"), _head("piped-3")])
            moved = advance.run(conn, [{"b_id": "piped-2", "old": 1, "version": 2}])
            missed = advance.run(conn, [{"b_id": "piped-3", "old": 7, "version": 8}])
            read = Direct(select(R.c.res_id, R.c.version).where(R.c.res_id == bindparam("rid")))
            sent = read.send(conn, {"rid": "piped-2"})  # queued after the update
        assert int(seq.fetchone()[0]) > 0
        assert (moved.rowcount, missed.rowcount) == (1, 0)
        assert [(row.res_id, row.version) for row in sent()] == [("piped-2", 2)]
    with db.read() as conn:
        versions = dict(conn.execute(select(R.c.res_id, R.c.version)).all())
    assert versions == {"piped-1": 1, "piped-2": 2, "piped-3": 1}


def test_a_statement_failing_in_a_pipeline_fails_as_sqlalchemy_would(db: Database) -> None:
    def twice() -> None:
        with db.write() as conn, pipelined(conn):
            Direct(insert(R)).run(conn, _head("twice"))
            Direct(insert(R)).run(conn, _head("twice"))
            Direct(insert(R)).run(conn, _head("after"))

    with pytest.raises(IntegrityError):
        twice()
    with db.read() as conn:  # the transaction rolled back: nothing of it stays
        assert conn.execute(select(R.c.res_id)).all() == []


def test_sqlalchemy_refuses_to_run_a_statement_inside_a_pipeline(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("SQLite has no pipeline: its statements run as they come")

    def mixed() -> None:
        with db.write() as conn, pipelined(conn):
            Direct(insert(R)).run(conn, _head("first"))  # the block's pipeline opens here
            conn.execute(select(R.c.seq).where(R.c.res_id == "anything"))

    with pytest.raises(RuntimeError, match="inside a pipeline"):
        mixed()


def test_a_pipeline_opens_only_once_a_statement_is_sent(db: Database) -> None:
    """A block whose statements were all kept (``deferring``) opens no pipeline, so it costs
    no round trip, and a statement through SQLAlchemy may still run in it."""
    with db.write() as conn, deferring(conn):
        with pipelined(conn):
            KEEP.run(conn, _head("kept"))
            assert not _in_pipeline(conn)
        link = cast(Table, HL7Link.__table__)
        row = {"sender": "S", "kind": "filler", "value": "1", "appointment_id": "a"}
        with pipelined(conn):  # a table with nothing kept: sent in this block's pipeline
            Direct(insert(link).inline()).run(conn, {**row, "last_sent_at": None})
            assert _in_pipeline(conn) == (db.dialect == "postgresql")
        with pipelined(conn):  # SQLAlchemy's statement first sends what was kept, then runs
            count = conn.execute(select(func.count()).select_from(R)).scalar_one()
        assert count == 1


def _in_pipeline(conn: Connection) -> bool:
    dbapi = conn.connection.dbapi_connection
    return bool(getattr(getattr(dbapi, "pgconn", None), "pipeline_status", 0))


@pytest.mark.parametrize("plan_per_run", [False, True])
def test_plan_per_run_statements_are_never_prepared(db: Database, plan_per_run: bool) -> None:
    """psycopg prepares a statement on its fifth run; one planned per run stays unprepared
    (and runs the same on SQLite, which has no such thing)."""
    label = f"planned_{plan_per_run}".lower()  # its own text: the pool may keep a connection
    query = Direct(
        select(R.c.res_id.label(label)).where(R.c.res_id == bindparam("rid")),
        plan_per_run=plan_per_run,
    )
    with db.write() as conn:
        Direct(insert(R)).run(conn, _head("planned"))
        for _ in range(8):
            assert query.rows(conn, {"rid": "planned"}) == [("planned",)]
        if db.engine.dialect.name != "postgresql":
            return
        prepared = conn.execute(
            select(func.count())
            .select_from(text("pg_prepared_statements"))
            .where(func.strpos(text("statement"), f"AS {label}") > 0)
        ).scalar()
    assert prepared == (0 if plan_per_run else 1)


KEEP = Direct(insert(R).inline(), deferrable=True)
VERSIONS = Direct(select(R.c.res_id, R.c.version).order_by(R.c.seq))


def test_deferred_rows_are_written_together_when_the_block_ends(db: Database) -> None:
    """Inside ``deferring`` a deferrable INSERT keeps its rows: a duplicate fails only when
    the block ends, which writes every kept row, in the order they were run."""
    reached: list[str] = []

    def duplicate() -> None:
        with db.write() as conn, deferring(conn):
            assert KEEP.run(conn, _head("twice")).rowcount == 1
            KEEP.run(conn, [_head("twice"), _head("third")])  # not sent yet: no error here
            reached.append("end of block")

    with pytest.raises(IntegrityError):
        duplicate()
    assert reached == ["end of block"]
    rows = [_head(f"d{i}", version=i % 5 + 1) for i in range(503)]
    with db.write() as conn, deferring(conn):
        KEEP.run(conn, rows[:2])
        KEEP.run(conn, rows[2])
        KEEP.run(conn, rows[3:])
    with db.read() as conn:
        stored = [tuple(r) for r in VERSIONS.rows(conn, {})]
    assert stored == [(r["res_id"], r["version"]) for r in rows]  # all, in order


def test_reads_inside_the_block_see_the_rows_kept(db: Database) -> None:
    """A ``Direct`` statement on a table with kept rows sends them first, and so does any
    statement run through SQLAlchemy; one on other tables leaves them kept."""
    other = Direct(select(HL7Link.__table__.c.value))
    with db.write() as conn, deferring(conn):
        KEEP.run(conn, _head("seen-by-direct"))
        assert other.rows(conn, {}) == []
        with pytest.raises(TypeError):  # nothing was sent: no rows to read
            KEEP.run(conn, _head("kept")).fetchone()
        assert [r.res_id for r in VERSIONS.rows(conn, {})] == ["seen-by-direct", "kept"]
        KEEP.run(conn, _head("seen-by-sqlalchemy"))
        assert conn.execute(select(func.count()).select_from(R)).scalar_one() == 3
        KEEP.run(conn, _head("late"))
        flush(conn)
        assert len(VERSIONS.rows(conn, {})) == 4


def test_a_raw_statement_sees_every_kept_row_and_fails_as_sqlalchemy_would(db: Database) -> None:
    """PostgreSQL's ``$n`` statements on the driver: the rows kept so far go first (in its
    round trip inside ``pipelined``), whatever tables it names; a driver error is SQLAlchemy's."""
    if db.is_sqlite:
        with db.write() as conn, pytest.raises(ValueError, match="PostgreSQL"):
            raw(conn, "SELECT 1", [])
        return
    count = "SELECT count(*) FROM resource WHERE res_id LIKE $1"
    with db.write() as conn, deferring(conn):
        KEEP.run(conn, _head("raw-1"))
        with pipelined(conn):
            KEEP.run(conn, _head("raw-2"))
            seen = raw(conn, count, ["raw-%"])
        assert seen.fetchone()[0] == 2
        KEEP.run(conn, _head("raw-3"))
        assert raw(conn, count, ["raw-%"]).fetchone()[0] == 3  # outside a pipeline: at once
    with db.write() as conn, pytest.raises(IntegrityError), pipelined(conn):
        raw(
            conn,
            "INSERT INTO resource (res_type, res_id, version, last_updated, deleted) "
            "VALUES ('Patient', $1, 1, now(), false)",
            ["raw-1"],
        )


def test_an_error_in_the_block_drops_what_it_kept(db: Database) -> None:
    def give_up(conn: Connection) -> None:
        with deferring(conn):
            KEEP.run(conn, _head("dropped"))
            raise RuntimeError("given up")

    with db.write() as conn:
        with pytest.raises(RuntimeError, match="given up"):
            give_up(conn)
        Direct(insert(R)).run(conn, _head("written"))
        with deferring(conn):  # the connection defers again
            KEEP.run(conn, _head("deferred"))
    with db.read() as conn:
        assert [r.res_id for r in VERSIONS.rows(conn, {})] == ["written", "deferred"]


def test_only_inserts_that_return_nothing_are_deferred(db: Database) -> None:
    with pytest.raises(ValueError, match="only an INSERT"):
        Direct(select(R.c.seq), deferrable=True)
    returning = Direct(insert(R).returning(R.c.seq), deferrable=True)
    with db.write() as conn, deferring(conn):
        with pytest.raises(ValueError, match="may not return rows"):
            returning.run(conn, _head("r"))
        with pytest.raises(RuntimeError, match="already deferring"), deferring(conn):
            pass


ROOT = Path(__file__).resolve().parents[2]
MODULE = "resources.sql.direct"


def test_callers_outside_resources_sql_use_only_the_public_names() -> None:
    """The rest of the code reaches the module through ``__all__`` alone (an import of one of
    its names, or an attribute of the module imported whole), so that what is private to
    resources/sql may change without them."""
    assert sorted(direct.__all__) == ["Direct", "deferring", "flush", "pipelined", "raw"]
    sources = [
        path
        for package in ("fhir_server", "scheduling", "hl7_bridge", "security", "resources")
        for path in sorted((ROOT / package).rglob("*.py"))
        if not path.is_relative_to(ROOT / "resources" / "sql")
    ]
    assert len(sources) > 50
    reached = [f"{path.relative_to(ROOT)}: {name}" for path in sources for name in _reached(path)]
    assert reached == []
    assert _reached_in("from resources.sql.direct import Direct, _Pending\n") == ["_Pending"]
    assert _reached_in("from resources.sql import direct as d\nd._bound(1, 2)\n") == ["_bound"]


def _reached(path: Path) -> list[str]:
    package = ".".join(path.relative_to(ROOT).parent.parts)
    return _reached_in(path.read_text(encoding="utf-8"), package)


def _reached_in(source: str, package: str = "fhir_server") -> list[str]:
    """The names of resources.sql.direct that ``source`` reaches and ``__all__`` leaves out."""
    tree = ast.parse(source)
    names: list[str] = []
    aliases: set[str] = set()  # the dotted names the module itself is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            if module == MODULE:
                names += [a.name for a in node.names if a.name != "*"]
            elif module == MODULE.rpartition(".")[0]:
                aliases |= {a.asname or a.name for a in node.names if a.name == "direct"}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name == MODULE}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _dotted(node.value) in aliases:
            names.append(node.attr)
    return [name for name in names if name not in direct.__all__]


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None
