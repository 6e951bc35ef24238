"""A consistent copy of a running database, and putting one back.

SQLite: the online backup API (``sqlite3.Connection.backup``, all pages in one step), which
reads one snapshot while writers go on (WAL readers never block a writer). See
https://www.sqlite.org/backup.html. Restoring writes the copy beside the database file and
renames it over the file, after removing any ``-wal`` and ``-shm`` left by the old one (an
old WAL would otherwise be applied to the new file).

PostgreSQL: ``pg_dump --format=custom --schema=<the configured schema>`` on a snapshot
exported by a REPEATABLE READ transaction, which reads the audit head and the schema
revision in that same snapshot. Restoring runs ``pg_restore``'s script through ``psql
--single-transaction``: the configured schema is emptied, filled and renamed in one
transaction, so a failure leaves it as it was. The dump names every object with its schema
and pg_restore cannot rename it, so the transaction restores under the backed-up schema's
name and renames it to the configured one at the end, parking a live schema of that name
under another name meanwhile (other sessions see none of it before the commit). See
https://www.postgresql.org/docs/15/app-pgdump.html.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from resources.sql.engine import Database, private_sqlite_file

__all__ = [
    "CopyFailed",
    "Snapshot",
    "copy_out",
    "is_empty",
    "restore_postgresql",
    "restore_sqlite",
    "sqlite_file",
]


class CopyFailed(Exception):
    """The copy or the restore did not happen; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a copy holds: its database kind, the audit chain's head and the schema revision
    it was taken at, and (PostgreSQL) the schema it came from."""

    kind: str
    audit_head: int
    revision: str | None
    schema: str | None = None


Sink = Callable[[IO[bytes]], None]


def copy_out(url: str, sink: Sink) -> Snapshot:
    """Take a consistent copy of the database at ``url`` while it may be in use, and hand its
    bytes to ``sink`` as a stream (a SQLite file, or a pg_dump custom archive)."""
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_out(sqlite_file(url), sink)
    return _pg_out(url, sink)


def is_empty(url: str) -> bool:
    """Whether the database at ``url`` holds nothing of ours (or anyone's) yet."""
    if make_url(url).get_backend_name() == "sqlite":
        path = sqlite_file(url)
        if not path.exists() or path.stat().st_size == 0:
            return True
        with closing(sqlite3.connect(path)) as conn:
            return not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    database = Database(url, pool_size=1)
    try:
        with database.read() as conn:
            return _pg_objects(conn, _target_schema(conn)) == 0
    finally:
        database.dispose()


# -- SQLite -----------------------------------------------------------------------------------


def sqlite_file(url: str) -> Path:
    name = make_url(url).database
    if name in (None, "", ":memory:"):
        raise CopyFailed("an in-memory SQLite database cannot be backed up or restored")
    return Path(str(name))


def _sqlite_out(path: Path, sink: Sink) -> Snapshot:
    if not path.exists():
        raise CopyFailed(f"no database at {path}")
    with tempfile.TemporaryDirectory(prefix="fhir-sched-backup-") as work:  # made 0700
        copy = Path(work) / "copy.db"
        private_sqlite_file(copy)
        with (
            closing(sqlite3.connect(path, timeout=30)) as src,
            closing(sqlite3.connect(copy)) as dst,
        ):
            src.backup(dst)  # pages=-1: every page in one step, one read snapshot
            head, revision = _sqlite_marks(dst)
        with copy.open("rb") as fh:
            sink(fh)
    return Snapshot("sqlite", head, revision)


def _sqlite_marks(conn: sqlite3.Connection) -> tuple[int, str | None]:
    head = revision = None
    with suppress(sqlite3.OperationalError):  # a database never migrated has neither table
        head = conn.execute("SELECT seq FROM audit_head WHERE id = 1").fetchone()
    with suppress(sqlite3.OperationalError):
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return (int(head[0]) if head else 0), (str(revision[0]) if revision else None)


def restore_sqlite(url: str, opened: Path) -> None:
    """Put the copy ``opened`` (a file in the database file's own directory) in place of the
    database at ``url``, in one rename."""
    path = sqlite_file(url)
    if opened.parent.resolve() != path.parent.resolve():
        raise ValueError("the copy must sit beside the database file to be renamed over it")
    with closing(sqlite3.connect(opened)) as conn:
        if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise CopyFailed("the backed-up database does not pass SQLite's quick_check")
    for stale in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    os.replace(opened, path)


# -- PostgreSQL -------------------------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise CopyFailed(
            f"{name} is not on PATH: install the PostgreSQL client tools (the server's major "
            "version or newer)"
        )
    return found


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """The URL as libpq reads it, and the environment carrying its password (never on a
    command line, where `ps` shows it)."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def _failure(tool: str, stderr: IO[bytes]) -> CopyFailed:
    stderr.seek(0)
    lines = [ln for ln in stderr.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "error:" in ln] or lines
    return CopyFailed(errors[0].strip() if errors else f"{tool} failed")


def _pg_out(url: str, sink: Sink) -> Snapshot:
    pg_dump = _tool("pg_dump")
    dsn, env = _libpq(url)
    database = Database(url, pool_size=1)
    try:
        with database.engine.connect() as conn:
            conn = conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            with conn.begin():
                # the dump reads this snapshot, so the head and revision are the dump's own
                snapshot = str(conn.execute(text("SELECT pg_export_snapshot()")).scalar_one())
                schema = str(conn.execute(text("SELECT current_schema()")).scalar_one())
                head = conn.execute(text("SELECT seq FROM audit_head WHERE id = 1")).scalar()
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                command = [
                    pg_dump, "--format=custom", f"--snapshot={snapshot}", f"--schema={schema}",
                    f"--dbname={dsn}",
                ]  # fmt: skip
                with tempfile.TemporaryFile() as stderr:
                    proc = subprocess.Popen(  # noqa: S603 - our own arguments
                        command, stdout=subprocess.PIPE, stderr=stderr, env=env
                    )
                    assert proc.stdout is not None
                    try:
                        sink(proc.stdout)
                    finally:
                        proc.stdout.close()
                        code = proc.wait()
                    if code:
                        raise _failure("pg_dump", stderr)
    finally:
        database.dispose()
    return Snapshot("postgresql", int(head or 0), revision and str(revision), schema)


_NON_EXTENSION = """NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass
    AND d.objid = {alias}.oid AND d.deptype = 'e')"""
_OBJECTS = f"""
SELECT (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid
            AND {_NON_EXTENSION.format(catalog="pg_class", alias="c")})
     + (SELECT count(*) FROM pg_proc p WHERE p.pronamespace = n.oid
            AND {_NON_EXTENSION.format(catalog="pg_proc", alias="p")})
     + (SELECT count(*) FROM pg_type t WHERE t.typnamespace = n.oid AND t.typtype IN ('e', 'd')
            AND {_NON_EXTENSION.format(catalog="pg_type", alias="t")})
FROM pg_namespace n WHERE n.nspname = :schema
"""  # noqa: S608 - fixed text
# what --force drops in the configured schema: everything but extensions' members (btree_gist
# lives in public, and dropping it would drop other schemas' constraints with it)
_DROPS = f"""
SELECT format('DROP TABLE IF EXISTS %I.%I CASCADE', n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = :schema AND c.relkind IN ('r', 'p', 'f')
   AND {_NON_EXTENSION.format(catalog="pg_class", alias="c")}
UNION ALL
SELECT format('DROP %s IF EXISTS %I.%I CASCADE',
              CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                             WHEN 'S' THEN 'SEQUENCE' ELSE 'TYPE' END, n.nspname, c.relname)
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = :schema AND c.relkind IN ('v', 'm', 'S', 'c')
   AND {_NON_EXTENSION.format(catalog="pg_class", alias="c")}
UNION ALL
SELECT format('DROP %s IF EXISTS %I.%I(%s) CASCADE',
              CASE p.prokind WHEN 'a' THEN 'AGGREGATE' ELSE 'ROUTINE' END,
              n.nspname, p.proname, pg_get_function_identity_arguments(p.oid))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = :schema AND {_NON_EXTENSION.format(catalog="pg_proc", alias="p")}
UNION ALL
SELECT format('DROP %s IF EXISTS %I.%I CASCADE',
              CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, n.nspname, t.typname)
  FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE n.nspname = :schema AND t.typtype IN ('e', 'd')
   AND {_NON_EXTENSION.format(catalog="pg_type", alias="t")}
"""  # noqa: S608 - fixed text


def _pg_objects(conn: Connection, schema: str) -> int:
    return int(conn.execute(text(_OBJECTS), {"schema": schema}).scalar() or 0)


def _target_schema(conn: Connection) -> str:
    """The schema the configured URL's objects go to: the first of its search_path, which
    need not exist yet (so not current_schema(), which skips missing ones)."""
    user = str(conn.execute(text("SELECT current_user")).scalar_one())
    for entry in str(conn.execute(text("SHOW search_path")).scalar_one()).split(","):
        name = entry.strip()
        if name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('""', '"')
        if name == "$user":
            if _schema_exists(conn, user):
                return user
            continue
        if name and not name.startswith("pg_"):
            return name
    raise CopyFailed("the configured search_path names no schema to restore into")


def _schema_exists(conn: Connection, name: str) -> bool:
    found = conn.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :n"), {"n": name})
    return found.scalar() is not None


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# pg_restore -l lines for the schema itself: the transaction creates or renames it instead
_SCHEMA_ENTRY = re.compile(r"^\d+; \d+ \d+ (?:SCHEMA|COMMENT - SCHEMA|ACL - SCHEMA) ")


@dataclass(frozen=True, slots=True)
class _Plan:
    before: list[str]
    after: list[str]


def _plan(conn: Connection, *, source: str, force: bool) -> _Plan:
    target = _target_schema(conn)
    exists = _schema_exists(conn, target)
    if exists and _pg_objects(conn, target) and not force:
        raise CopyFailed(f"schema {target} is not empty; pass --force to replace it")
    before = ["CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA public"]  # as 0002 does
    if exists:
        drops = conn.execute(text(_DROPS), {"schema": target}).scalars()
        before += [str(d) for d in drops]
    after: list[str] = []
    if source != target and _schema_exists(conn, source):
        parked = f"fhirsched_parked_{secrets.token_hex(6)}"
        before.append(f"ALTER SCHEMA {_ident(source)} RENAME TO {_ident(parked)}")
        after.append(f"ALTER SCHEMA {_ident(parked)} RENAME TO {_ident(source)}")
    if not exists:
        before.append(f"CREATE SCHEMA {_ident(source)}")
    elif source != target:
        before.append(f"ALTER SCHEMA {_ident(target)} RENAME TO {_ident(source)}")
    if source != target:
        after.insert(0, f"ALTER SCHEMA {_ident(source)} RENAME TO {_ident(target)}")
    return _Plan(before, after)


def restore_postgresql(url: str, dump: Path, *, source: str, force: bool) -> None:
    """Restore the custom archive ``dump`` (of schema ``source``) into the schema ``url``
    configures, in one transaction; an existing non-empty schema only with ``force``."""
    pg_restore, psql = _tool("pg_restore"), _tool("psql")
    dsn, env = _libpq(url)
    database = Database(url, pool_size=1)
    try:
        with database.read() as conn:
            plan = _plan(conn, source=source, force=force)
    finally:
        database.dispose()
    listing = subprocess.run(  # noqa: S603 - our own arguments
        [pg_restore, "--list", str(dump)], capture_output=True, env=env, check=False
    )
    if listing.returncode:
        raise CopyFailed("pg_restore cannot read the backed-up archive")
    keep = [ln for ln in listing.stdout.decode().splitlines() if not _SCHEMA_ENTRY.match(ln)]
    with (
        tempfile.NamedTemporaryFile("w", suffix=".list") as toc,
        tempfile.TemporaryFile() as restore_err,
        tempfile.TemporaryFile() as psql_err,
    ):
        toc.write("\n".join(keep) + "\n")
        toc.flush()
        script = [pg_restore, "--no-owner", "--no-privileges", "-L", toc.name, "-f", "-"]
        apply = [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-f", "-"]
        reader = subprocess.Popen(  # noqa: S603 - our own arguments
            [*script, str(dump)], stdout=subprocess.PIPE, stderr=restore_err, env=env
        )
        writer = subprocess.Popen(  # noqa: S603 - our own arguments
            [*apply, f"--dbname={dsn}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=psql_err,
            env=env,
        )
        assert reader.stdout is not None and writer.stdin is not None
        try:
            writer.stdin.write("".join(f"{s};\n" for s in plan.before).encode())
            shutil.copyfileobj(reader.stdout, writer.stdin)
            if reader.wait() == 0:
                writer.stdin.write("".join(f"{s};\n" for s in plan.after).encode())
            else:
                writer.kill()  # before psql reads the end of its input, the one thing it commits on
        except BrokenPipeError:
            pass  # psql stopped at an error: its exit code and message say which
        finally:
            with suppress(BrokenPipeError):
                writer.stdin.close()
            reader.stdout.close()
            applied, read = writer.wait(), reader.wait()
        if read:
            raise _failure("pg_restore", restore_err)
        if applied:
            raise _failure("psql", psql_err)
