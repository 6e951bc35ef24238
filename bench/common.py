"""Shared benchmark plumbing: bulk seeding, server processes, percentiles, wrk."""

from __future__ import annotations

import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import insert, text

from resources.indexing import index_resource
from resources.sql.engine import Database, migrate
from resources.store import INDEX_TABLES, R, V, aad, format_instant
from security.crypto import KeyRing, load_keyring

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
PG_URL = os.environ.get(
    "FHIRSCHED_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def machine() -> dict[str, Any]:
    pg = "n/a"
    with suppress(OSError):
        pg = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": pg,
        "platform": platform.platform(),
    }


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "n": len(ordered)}


@contextmanager
def database(kind: str, workdir: Path) -> Iterator[tuple[str, Database]]:
    """A fresh migrated database: SQLite file or a new PostgreSQL schema (dropped after)."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir}/bench.db"
        db = Database(url)
        migrate(db)
        try:
            yield url, db
        finally:
            db.dispose()
        return
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = Database(PG_URL)
    with admin.engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    joiner = "&" if "?" in PG_URL else "?"  # a socket URL carries ?host=/var/run/postgresql
    # the application name lets backend_cpu find this run's server processes
    url = f"{PG_URL}{joiner}options=-csearch_path%3D{schema}&application_name={schema}"
    db = Database(url)
    migrate(db)
    try:
        yield url, db
    finally:
        db.dispose()
        with admin.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def backend_cpu(url: str) -> float:
    """Seconds of CPU used so far by the PostgreSQL server processes serving ``url``'s
    connections (those with its ``application_name``; read from ``/proc``, so PostgreSQL must
    run on this machine). 0 for SQLite. Take the difference around a measurement: the pools
    keep their connections, so the same processes are counted at both ends."""
    from sqlalchemy.engine import make_url

    name = make_url(url).query.get("application_name")
    if not name:
        return 0.0
    admin = Database(PG_URL)
    try:
        with admin.engine.connect() as conn:
            pids = conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE application_name = :n"), {"n": name}
            ).scalars()
            ticks = 0
            for pid in pids:
                with suppress(OSError):
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    ticks += int(fields[11]) + int(fields[12])  # utime + stime
    finally:
        admin.dispose()
    return ticks / os.sysconf("SC_CLK_TCK")


def bulk_load(db: Database, keys: KeyRing, resources: list[dict[str, Any]], base_url: str) -> None:
    """Write resources (with ids) straight into the tables, sealed and indexed, in one go.

    The same rows the Store writes, without per-resource round trips: for seeding only.
    """
    when = datetime.now(UTC)
    stamp = format_instant(when)
    with db.write() as conn:
        heads = [
            {
                "res_type": r["resourceType"],
                "res_id": r["id"],
                "version": 1,
                "last_updated": when,
                "deleted": False,
            }
            for r in resources
        ]
        seqs = (
            conn.execute(insert(R).returning(R.c.seq, sort_by_parameter_order=True), heads)
            .scalars()
            .all()
        )
        versions = []
        index: dict[str, list[dict[str, Any]]] = {k: [] for k in INDEX_TABLES}
        for seq, r in zip(seqs, resources, strict=True):
            r["meta"] = {"versionId": "1", "lastUpdated": stamp}
            sealed = keys.seal(orjson.dumps(r), aad=aad(r["resourceType"], r["id"], 1))
            versions.append(
                {
                    "res_type": r["resourceType"],
                    "res_id": r["id"],
                    "version": 1,
                    "last_updated": when,
                    "method": "POST",
                    "deleted": False,
                    "kek_id": sealed.kek_id,
                    "wrapped_key": sealed.wrapped_key,
                    "nonce": sealed.nonce,
                    "ciphertext": sealed.ciphertext,
                }
            )
            rows = index_resource(r, seq=seq, keys=keys, base_url=base_url)
            for kind in INDEX_TABLES:
                index[kind].extend(getattr(rows, kind))
        conn.execute(insert(V), versions)
        for kind, table in INDEX_TABLES.items():
            if index[kind]:
                conn.execute(insert(table), index[kind])


def keyring(workdir: Path) -> KeyRing:
    return load_keyring(key_file=workdir / "keys.json", keys_json=None)


@contextmanager
def serve(
    workdir: Path, database_url: str, port: int, env: dict[str, str] | None = None
) -> Iterator[str]:
    env = {
        **os.environ,
        "FHIRSCHED_DATABASE_URL": database_url,
        "FHIRSCHED_KEY_FILE": str(workdir / "keys.json"),
        "FHIRSCHED_PORT": str(port),
        "FHIRSCHED_LOG_LEVEL": "warning",
        **(env or {}),
    }
    with (workdir / f"server-{port}.log").open("w") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "fhir-sched"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield wait_up(f"http://127.0.0.1:{port}", "/fhir/metadata", proc)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@contextmanager
def serve_bare(port: int) -> Iterator[str]:
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "uvicorn"),
            "bench.bare_app:app",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        yield wait_up(f"http://127.0.0.1:{port}", "/fhir/Patient/x", proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def machine_speed(port: int, seconds: int = 5) -> float:
    """Requests/s of the bare FastAPI app (``bench/bare_app.py``, 8 connections): a yardstick
    for this machine's speed at the time of a run, which moves by half between hours here."""
    with serve_bare(port) as base:
        return wrk(f"{base}/fhir/Patient/x", script=None, seconds=seconds, connections=8)["rps"]


def wait_up(base: str, path: str, proc: subprocess.Popen[Any]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited during start-up")
        try:
            if httpx.get(base + path, timeout=2).status_code == 200:
                return base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{base} did not come up")


def token_form(token_url: str, database_url: str, scope: str = "system/*.cruds") -> dict[str, str]:
    """What a backend client sends to the token endpoint (SMART Backend Services): a client
    registered in the database, then a JWT assertion (ES384) for ``token_url``."""
    import uuid

    from joserfc import jwt
    from joserfc.jwk import ECKey

    from resources.sql.engine import Database
    from security.smart.registry import add_client

    key = ECKey.generate_key("P-384", parameters={"kid": "bench"})
    client_id = f"bench-{uuid.uuid4().hex[:8]}"
    db = Database(database_url)
    try:
        with db.write() as conn:
            jwks = {"keys": [key.as_dict(private=False)]}
            add_client(
                conn,
                name="bench",
                kind="asymmetric",
                scope=scope,
                jwks=jwks,
                client_id=client_id,
            )
    finally:
        db.dispose()
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + 240,
        "jti": uuid.uuid4().hex,
    }
    assertion = jwt.encode({"alg": "ES384", "kid": "bench"}, claims, key, algorithms=["ES384"])
    return {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }


def bench_auth(root: str, database_url: str, scope: str = "system/*.cruds") -> dict[str, str]:
    """A full-access backend token, as any client gets one (:func:`token_form`). Lasts 300 s."""
    form = token_form(f"{root}/auth/token", database_url, scope)
    token = httpx.post(f"{root}/auth/token", data=form, timeout=30).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def patients(count: int) -> list[dict[str, Any]]:
    """``count`` Patients ``p0``, ``p1``…, as the read benchmarks seed them."""
    return [
        {
            "resourceType": "Patient",
            "id": f"p{n}",
            "gender": "other",
            "name": [{"family": f"Family{n}", "given": ["Given"]}],
            "birthDate": "1970-01-01",
            "telecom": [{"system": "phone", "value": f"555-01{n:04d}"}],
        }
        for n in range(count)
    ]


def wrk(
    url: str,
    *,
    script: Path | None,
    seconds: int,
    connections: int,
    headers: dict[str, str] | None = None,
) -> dict[str, float]:
    """Run wrk (one thread: the other core is the server's) and parse its report."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def lat(label: str) -> float:
        m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result = {
        "rps": rps,
        "p50_ms": lat("50"),
        "p99_ms": lat("99"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
    }
    p95 = re.search(r"p95_us=([\d.]+)", out)  # printed by a script's done() (see WRK_P95)
    if p95:
        result["p95_ms"] = float(p95.group(1)) / 1000
    return result


# Append to a wrk Lua script so that wrk() can report p95 too.
WRK_P95 = """
done = function(summary, latency, requests)
  io.write(string.format("p95_us=%d\\n", latency:percentile(95.0)))
end
"""


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=str))
    return path
