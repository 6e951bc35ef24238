"""Fixed statements run straight on the driver, inside the caller's SQLAlchemy transaction.

SQLAlchemy spends about 15-20 µs of Python on every ``Connection.execute`` (an execution
context, parameter processing, a result object) and a few more per row of an executemany; the
driver call itself is a few µs on SQLite. The statements every resource write issues (a version
row, its index rows, the head row) are the same few, so each is compiled once per dialect and
set of parameter names, and then run on the connection's DB-API cursor with SQLAlchemy's own
bind processors applied (values are stored exactly as ``Connection.execute`` stores them).
Driver errors are raised as SQLAlchemy's (``IntegrityError`` and so on), so callers and
:meth:`Database.write` handle them as before. Statements with anything SQLAlchemy computes at
execution time (expanding ``IN`` lists, Python-side column defaults) stay on ``execute``.
A query's rows come from ``rows``, with SQLAlchemy's result processors applied (a SQLite
timestamp's text read as a ``datetime``, 0/1 as a bool), by column name: the reads every write
makes (a resource's head, its current version, an HL7 message's key) take a quarter to a third
of the time they take through ``execute`` and its ``Row`` on SQLite (5-14 µs against 21-51),
and some 50-60 µs less of a PostgreSQL round trip's 150.

On PostgreSQL, several rows for a plain ``INSERT`` (no ``RETURNING``, implicit ones included:
build it with ``.inline()``) go as one statement, whatever their number: psycopg's
executemany runs a pipeline per call, about 0.1 ms of Python more than one statement for the
handful of index rows a write inserts. A few rows go as a ``VALUES`` list; more (a group of
HL7 messages' rows) as an array per column (``unnest``), one statement text however many rows,
where a ``VALUES`` list would be a new statement for each number, too long for psycopg to
keep (SQLite's executemany steps one prepared statement per row, which is cheaper still).
SQLAlchemy builds both from the INSERT's table and columns (a multi-row ``values()``; an
``INSERT … SELECT * FROM unnest(…)``), in ``%s`` placeholders, once for each set of parameter
names (the ``VALUES`` list once for each number of rows), and only for a plain INSERT, each
column's value its own bind parameter: any other (``ON CONFLICT``, an expression around a
value) runs as an executemany.

On PostgreSQL each statement is also a round trip to the server (0.1-0.2 ms here, and some
50 µs of the driver's CPU for each wait). Statements run inside :func:`pipelined` go together
in one psycopg pipeline, one round trip for all of them; their cursors hold their results
(rowcount, rows) once the block has ended, and a driver error inside it is raised, as
SQLAlchemy's, when it ends. Only ``Direct`` statements may run inside: SQLAlchemy's
``Connection.execute`` reads its result at once, which a pipeline does not have yet (the engine
refuses it there). SQLite runs the statements as they come.

Inside :func:`deferring`, the rows of ``deferrable`` INSERTs (no ``RETURNING``: nothing reads
them back) are kept instead of sent, and go when the block ends (or before, see below) as one
statement per INSERT for all of them, in one round trip: a group of HL7 messages writes its
version, index, link and message rows with a handful of statements instead of a handful each.
Reads stay exact: any other ``Direct`` statement on a table with rows still kept sends them
first, and so does every statement run through SQLAlchemy (``Connection.execute``), whatever
its tables. An error in the block drops what was kept (the caller's transaction rolls back).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from psycopg import RawCursor
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Select,
    Table,
    bindparam,
    event,
    func,
    insert,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.type_api import TypeEngine
from sqlalchemy.sql.util import find_tables

__all__ = ["Direct", "deferring", "flush", "pipelined", "raw"]

_PENDING = "direct.pending"  # Connection.info key: the rows ``deferring`` keeps
_PIPELINES = "direct.pipelines"  # Connection.info key: the ``pipelined`` blocks open


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the bind parameters, in the order the driver takes them
    fixed: dict[str, Any]  # values written into the statement (``kind == "filler"``)
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]  # (position, SQLAlchemy's processor)
    positional: bool
    values: _ValuesList | None = None  # PostgreSQL INSERTs: a few rows in one statement
    columns: _Columns | None = None  # PostgreSQL INSERTs: more rows in one statement
    result: _Result | None = None  # a SELECT's (or RETURNING's) columns, for ``rows``


# up to this many values a VALUES list is cheaper than arrays: psycopg keeps its conversion
# (it caches statements of up to 50 parameters) and dumps each value in C, where an array is
# dumped in Python (2-8 index rows: 68-96 µs of CPU against 101-122; 30 rows: 357 against 220)
_VALUES_MAX = 50


@dataclass(frozen=True, slots=True)
class _Result:
    """What SQLAlchemy does to a driver's row: each column's result processor (a SQLite
    timestamp's text to a ``datetime``, 0/1 to a bool), and the names to reach it by."""

    row: type[tuple[Any, ...]]  # a named tuple: ``row.version`` as on SQLAlchemy's Row
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]

    def make(self, values: Sequence[Any]) -> tuple[Any, ...]:
        if not self.processors:
            return self.row._make(values)  # type: ignore[attr-defined,no-any-return]
        out = list(values)
        for position, processor in self.processors:
            out[position] = processor(out[position])
        return self.row._make(out)  # type: ignore[attr-defined,no-any-return]


@dataclass(frozen=True, slots=True)
class _ValuesList:
    """A PostgreSQL ``INSERT``'s rows as one ``VALUES`` list for a few rows:
    ``INSERT INTO t (a, b) VALUES (%s::BIGINT, %s::VARCHAR), (%s::BIGINT, %s::VARCHAR)``.
    Positional placeholders, not psycopg's named ones: the values go as one flat list, with
    no dict to build and look up per row."""

    table: Table
    row: tuple[tuple[Column[Any], TypeEngine[Any]], ...]  # each value's column and bind type
    names: tuple[str, ...]  # the bind parameter whose value each column takes
    dialect: Dialect  # the connection's, in the "format" paramstyle: ``%s`` placeholders
    sql: dict[int, str] = field(default_factory=dict)  # by number of rows

    def statement(self, values: list[dict[str, Any]]) -> tuple[str, list[Any]]:
        sql = self.sql.get(len(values))
        if sql is None:
            sql = self.sql[len(values)] = self._compile(len(values))
        return sql, [row[name] for row in values for name in self.names]

    def _compile(self, rows: int) -> str:
        # SQLAlchemy's multi-row VALUES; its placeholders take the values row by row, each
        # row's in the order of ``row`` (the bind names only need to differ)
        values = [
            {
                column: bindparam(f"r{i}_{j}", type_=type_)
                for j, (column, type_) in enumerate(self.row)
            }
            for i in range(rows)
        ]
        return str(insert(self.table).values(values).compile(dialect=self.dialect))


@dataclass(frozen=True, slots=True)
class _Columns:
    """A PostgreSQL ``INSERT``'s rows as one array per column, for any number of rows:
    ``INSERT INTO t (a, b) SELECT * FROM unnest(%s::BIGINT[], %s::VARCHAR(64)[])``. One text per
    statement, so psycopg converts it once and PostgreSQL plans it once (prepared), where a
    ``VALUES`` list is a new statement for each number of rows, parsed and planned each time."""

    sql: str
    names: tuple[str, ...]  # the bind parameter each array holds, in order

    @classmethod
    def of(
        cls, table: Table, columns: Sequence[Column[Any]], names: tuple[str, ...], dialect: Dialect
    ) -> _Columns:
        # each array is cast to its column's type (``VARCHAR(64)[]``), so unnest's columns
        # have the table's types whatever psycopg makes of a list (one of NULLs has none)
        arrays = [bindparam(f"c{j}", type_=ARRAY(c.type)) for j, c in enumerate(columns)]
        rows: Select[Any] = select(literal_column("*")).select_from(func.unnest(*arrays))
        # include_defaults=False: the columns are all the single-row INSERT's, defaults
        # included (see _many_rows); SQLAlchemy is to add none
        statement = insert(table).from_select(columns, rows, include_defaults=False)
        return cls(str(statement.compile(dialect=dialect)), names)


def _many_rows(
    statement: ClauseElement, keys: tuple[str, ...], compiled: Any, dialect: Dialect
) -> tuple[_ValuesList, _Columns] | None:
    """The two many-row forms of a PostgreSQL ``INSERT``, built from its table, its columns
    and the compiled statement's bind parameters. Only for a plain one, ``INSERT INTO t
    (columns) VALUES (each column's bind parameter)``, which both forms write alike; None for
    any other statement, which runs as an executemany."""
    if dialect.name != "postgresql" or dialect.positional or not isinstance(statement, Insert):
        return None  # (a positional paramstyle's rows come as tuples: psycopg's is named)
    table = statement.table
    positional = _format_dialect(type(dialect))
    # the parameters the statement's VALUES take, in order: SQLAlchemy's positional compile
    # lists them (``compiled.binds`` may hold more, such as the anonymous parameter of a
    # literal in ``.values()``, renamed after its column)
    names = tuple(statement.compile(dialect=positional, column_keys=list(keys)).positiontup or ())
    if not isinstance(table, Table) or not all(name in table.c for name in names):
        return None  # a parameter that is not a column's own value (one inside an expression)
    columns = [table.c[name] for name in names]
    types = [compiled.binds[name].type for name in names]  # each placeholder's ::cast
    # Anything else the statement has (RETURNING, an implicit one included; ON CONFLICT; a
    # CTE; an expression around a value) would be lost in the forms. Rather than looking into
    # each of the Insert's parts, build the plain INSERT of these columns and parameters and
    # take the statement only if SQLAlchemy compiles it the same. (inline(): no implicit
    # RETURNING in the plain one.)
    params = {c: bindparam(n, type_=t) for c, n, t in zip(columns, names, types, strict=True)}
    plain = insert(table).inline().values(params)
    if str(plain.compile(dialect=dialect)) != compiled.string:
        return None
    # A column left out with a Python default has its bind parameter among ``names``, but a
    # SQL default (a sequence's nextval, now()) is written into the VALUES of both statements
    # compared above and would be missing from the arrays' INSERT.
    if any(c.default is not None for c in table.c if c.key not in names):
        return None
    values = _ValuesList(table, tuple(zip(columns, types, strict=True)), names, positional)
    return values, _Columns.of(table, columns, names, positional)


_FORMAT_DIALECTS: dict[type[Dialect], DefaultDialect] = {}


def _format_dialect(kind: type[Dialect]) -> Dialect:
    """A dialect of this kind rendering ``%s`` placeholders, for compiling only: the "format"
    paramstyle, which psycopg takes as well as the "pyformat" (``%(name)s``) it is set to."""
    dialect = _FORMAT_DIALECTS.get(kind)
    if dialect is None:
        dialect = _FORMAT_DIALECTS[kind] = cast(type[DefaultDialect], kind)(paramstyle="format")
    return dialect


class Direct:
    """``Direct(stmt).run(conn, params)``: ``conn.execute(stmt, params)`` without the per-call
    machinery. ``params`` is one dict (execute) or a list of dicts with the same keys
    (executemany); returns the DB-API cursor (rowcount, fetchone/fetchall).

    ``plan_per_run=True``: never prepared on PostgreSQL, so each run is planned for its values,
    as ``PLAN_PER_RUN`` does for ``Connection.execute`` (for a lookup whose best plan depends
    on how many rows its values match; see ``resources.sql.engine``)."""

    def __init__(
        self, statement: ClauseElement, *, plan_per_run: bool = False, deferrable: bool = False
    ) -> None:
        """``deferrable``: an INSERT whose rows may wait for the end of a :func:`deferring`
        block (it must return nothing)."""
        if deferrable and not getattr(statement, "is_insert", False):
            raise ValueError("only an INSERT is deferrable")
        self.statement = statement
        self.plan_per_run = plan_per_run
        self.deferrable = deferrable
        self.tables = frozenset(t.name for t in find_tables(statement, include_crud=True))
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}

    def run(self, conn: Connection, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Any:
        many = not isinstance(params, Mapping)
        rows: Sequence[Mapping[str, Any]] = params if many else [params]  # type: ignore[assignment,list-item]
        pending: _Pending | None = conn.info.get(_PENDING)
        if pending is not None:
            if self.deferrable:
                return pending.keep(conn, self, rows)
            if not self.tables.isdisjoint(pending.tables):
                # this statement sees (or changes) what was kept: those rows go first, in the
                # same round trip
                with pipelined(conn):
                    pending.write(conn)
                    return self._execute(conn, rows, many)
        return self._execute(conn, rows, many)

    def _compiled_for(self, conn: Connection, keys: tuple[str, ...]) -> _Compiled:
        dialect = conn.dialect
        compiled = self._compiled.get((dialect.name, keys))
        if compiled is None:
            compiled = self._compiled[(dialect.name, keys)] = self._compile(conn, keys)
        return compiled

    def _execute(self, conn: Connection, rows: Sequence[Mapping[str, Any]], many: bool) -> Any:
        dialect = conn.dialect
        compiled = self._compiled_for(conn, tuple(rows[0]))
        values = [_bound(compiled, row) for row in rows]
        _open_pipeline(conn)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            small = len(values) * len(compiled.names) <= _VALUES_MAX
            if many and compiled.values is not None and len(values) > 1 and small:
                cursor.execute(*compiled.values.statement(values))
            elif many and compiled.columns is not None and len(values) > 1:
                arrays = [[row[name] for row in values] for name in compiled.columns.names]
                cursor.execute(compiled.columns.sql, arrays)
            elif len(values) > 1:
                cursor.executemany(compiled.sql, values)
            elif self.plan_per_run and dialect.name == "postgresql":
                cursor.execute(compiled.sql, values[0], prepare=False)  # type: ignore[call-arg]
            else:  # one row: psycopg's executemany costs more than execute (SQLite's: the same)
                cursor.execute(compiled.sql, values[0])
        except dialect.loaded_dbapi.Error as exc:
            error = dialect.loaded_dbapi.Error
            raise DBAPIError.instance(compiled.sql, values[0], exc, error) from exc
        return cursor

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Every row of a query, as ``conn.execute(stmt, params).all()`` gives them: the same
        values, reached by column name (a named tuple, not SQLAlchemy's Row)."""
        return self.send(conn, params)()

    def send(self, conn: Connection, params: Mapping[str, Any]) -> Callable[[], list[Any]]:
        """Send a query now and read its rows (as :meth:`rows` gives them) from the function
        returned: inside :func:`pipelined`, call it once the block has ended."""
        cursor = self.run(conn, params)
        result = self._compiled[(conn.dialect.name, tuple(params))].result
        if result is None:
            raise ValueError("the statement returns no rows")
        return lambda: [result.make(row) for row in cursor.fetchall()]

    def _compile(self, conn: Connection, keys: tuple[str, ...]) -> _Compiled:
        dialect = conn.dialect
        compiled: Any = self.statement.compile(dialect=dialect, column_keys=list(keys))
        names = tuple(compiled.positiontup) if dialect.positional else tuple(compiled.binds)
        fixed = {
            name: bind.effective_value
            for name, bind in compiled.binds.items()
            if name not in keys and not bind.required
        }
        missing = [n for n in names if n not in keys and n not in fixed]
        if missing or compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError(f"not a fixed statement for {keys}: {missing or 'expanding'}")
        processors = []
        for position, name in enumerate(names):
            bound = compiled.binds[name].type
            processor = bound.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors.append((position, processor))
        values, columns = _many_rows(self.statement, keys, compiled, dialect) or (None, None)
        return _Compiled(
            compiled.string,
            names,
            fixed,
            tuple(processors),
            dialect.positional,
            values,
            columns,
            _result(compiled, dialect),
        )


@dataclass(slots=True)
class _Kept:
    """What a deferred INSERT's ``run`` returns: the rows it will write."""

    rowcount: int

    def fetchone(self) -> Any:
        raise TypeError("a deferred INSERT has no rows to read")

    fetchall = fetchone


@dataclass(slots=True)
class _Pending:
    """The rows kept in a :func:`deferring` block, by statement (and parameter names), in the
    order each statement was first run."""

    batches: dict[tuple[int, tuple[str, ...]], tuple[Direct, list[Mapping[str, Any]]]] = field(
        default_factory=dict
    )
    tables: set[str] = field(default_factory=set)

    def keep(self, conn: Connection, direct: Direct, rows: Sequence[Mapping[str, Any]]) -> _Kept:
        keys = tuple(rows[0])
        if direct._compiled_for(conn, keys).result is not None:
            raise ValueError("a deferred INSERT may not return rows")
        batch = self.batches.get((id(direct), keys))
        if batch is None:
            batch = self.batches[(id(direct), keys)] = (direct, [])
            self.tables |= direct.tables
        batch[1].extend(rows)
        return _Kept(len(rows))

    def flush(self, conn: Connection) -> None:
        """Write every kept row: one statement per batch, all in one round trip on
        PostgreSQL."""
        with pipelined(conn):
            self.write(conn)

    def write(self, conn: Connection) -> None:
        """:meth:`flush`'s statements, in the caller's ``pipelined`` block."""
        batches = list(self.batches.values())
        self.batches.clear()
        self.tables.clear()
        for direct, rows in batches:
            direct._execute(conn, rows, len(rows) > 1)


@contextmanager
def deferring(conn: Connection) -> Iterator[None]:
    """Deferrable INSERTs run in this block write their rows together when it ends (see the
    module doc); an error in it drops them. Blocks do not nest."""
    if _PENDING in conn.info:
        raise RuntimeError("already deferring on this connection")
    pending = conn.info[_PENDING] = _Pending()
    try:
        yield
        pending.flush(conn)
    finally:
        del conn.info[_PENDING]


def flush(conn: Connection) -> None:
    """Write what a :func:`deferring` block has kept so far (nothing outside one)."""
    pending: _Pending | None = conn.info.get(_PENDING)
    if pending is not None:
        pending.flush(conn)


@event.listens_for(Engine, "before_cursor_execute")
def _flush_before_sqlalchemy(conn: Connection, *_: Any) -> None:
    """A statement run through SQLAlchemy sees every kept row: its tables are not looked at."""
    pending: _Pending | None = conn.info.get(_PENDING)
    if pending is not None and pending.batches:
        pending.flush(conn)


@dataclass(slots=True)
class _Pipeline:
    """A :func:`pipelined` block: psycopg's pipeline, once a statement has run in it."""

    opened: Any = None  # the psycopg pipeline's context manager, entered


@contextmanager
def pipelined(conn: Connection) -> Iterator[None]:
    """``Direct`` statements run in this block go to PostgreSQL in one round trip; read their
    cursors after it. The pipeline opens at the block's first statement: a block whose
    statements were all kept (``deferring``) costs no round trip. A no-op on SQLite."""
    if conn.dialect.name != "postgresql":
        yield
        return
    blocks: list[_Pipeline] = conn.info.setdefault(_PIPELINES, [])
    block = _Pipeline()
    blocks.append(block)
    error = conn.dialect.loaded_dbapi.Error
    try:
        try:
            yield
        except BaseException as exc:
            if block.opened is not None:
                block.opened.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if block.opened is not None:
            block.opened.__exit__(None, None, None)
    except error as exc:
        raise DBAPIError.instance("pipelined statements", None, exc, error) from exc
    finally:
        blocks.pop()


def raw(conn: Connection, sql: str, params: Sequence[Any]) -> Any:
    """PostgreSQL only: a statement in the server's own ``$n`` placeholders, run on the driver
    (one whose shape SQLAlchemy cannot express, or that changes with its number of rows:
    ``security.audit``'s one-statement append). Rows a :func:`deferring` block keeps go first,
    whatever their tables. Inside :func:`pipelined` it goes in the block's round trip (read the
    cursor after the block, whose end raises a driver error as SQLAlchemy's); outside, now."""
    if conn.dialect.name != "postgresql":
        raise ValueError("raw statements are PostgreSQL's")
    pending: _Pending | None = conn.info.get(_PENDING)
    if pending is not None and pending.batches:
        pending.write(conn)
    _open_pipeline(conn)
    cursor = RawCursor(conn.connection.dbapi_connection)  # type: ignore[call-overload]
    try:
        cursor.execute(sql, params)
    except conn.dialect.loaded_dbapi.Error as exc:
        error = conn.dialect.loaded_dbapi.Error
        raise DBAPIError.instance(sql, params, exc, error) from exc
    return cursor


def _open_pipeline(conn: Connection) -> None:
    """Open psycopg's pipeline for the innermost :func:`pipelined` block, if it has none yet."""
    blocks: list[_Pipeline] | None = conn.info.get(_PIPELINES)
    if blocks and blocks[-1].opened is None:
        opened = conn.connection.dbapi_connection.pipeline()  # type: ignore[union-attr]
        opened.__enter__()
        blocks[-1].opened = opened


def _result(compiled: Any, dialect: Any) -> _Result | None:
    columns = compiled._result_columns  # SQLAlchemy's own list: (key, name, objects, type)
    if not columns:
        return None
    processors = []
    for position, column in enumerate(columns):
        processor = column[3].dialect_impl(dialect).result_processor(dialect, None)
        if processor is not None:
            processors.append((position, processor))
    row = namedtuple("Row", [column[0] for column in columns], rename=True)  # type: ignore[misc]
    return _Result(row, tuple(processors))


def _bound(compiled: _Compiled, row: Mapping[str, Any]) -> Any:
    values = [row[name] if name in row else compiled.fixed[name] for name in compiled.names]
    for position, processor in compiled.processors:
        values[position] = processor(values[position])
    if compiled.positional:
        return tuple(values)
    return dict(zip(compiled.names, values, strict=True))
