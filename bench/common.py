"""Shared benchmark plumbing: bulk seeding, server processes, percentiles, wrk."""

from __future__ import annotations

import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Container, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import insert, text

from bench import bare_app
from resources.indexing import index_resource
from resources.sql.engine import Database, migrate
from resources.store import INDEX_TABLES, R, V, aad, format_instant
from security.crypto import KeyRing, load_keyring

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
BARE_PATH = bare_app.PATH  # the bare app's one route
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
def database(
    kind: str, workdir: Path, *, synchronous: str = "full"
) -> Iterator[tuple[str, Database]]:
    """A fresh migrated database: SQLite file (committing with ``synchronous``, full or
    normal) or a new PostgreSQL schema (dropped after)."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir}/bench.db"
        if synchronous != "full":
            url += f"?synchronous={synchronous}"
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
        yield wait_up(f"http://127.0.0.1:{port}", BARE_PATH, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def machine_speed(port: int, seconds: int = 5) -> float:
    """Requests/s of the bare FastAPI app (``bench/bare_app.py``, 8 connections): a yardstick
    for this machine's speed at the time of a run, which moves by half between hours here."""
    with serve_bare(port) as base:
        return wrk(f"{base}{BARE_PATH}", script=None, seconds=seconds, connections=8)["rps"]


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


class BackendToken:
    """A backend client's access token (SMART Backend Services), renewed before it runs out.

    System tokens last 300 s and have no refresh token, so a run longer than that must ask
    again. The client is registered in the database once; each renewal signs a new assertion
    (ES384) and posts it to ``{root}/auth/token``. Ask :meth:`headers` (or :meth:`arenew` for
    an app called in-process) before each part of a run, with how long that part may last:
    a token that would expire inside it is replaced first, and a part longer than a token's
    whole life is refused rather than half measured with 401s.
    """

    MARGIN = 15.0  # seconds kept in hand: a request sent just before expiry is still answered

    def __init__(self, root: str, database_url: str, scope: str = "system/*.cruds") -> None:
        from joserfc.jwk import ECKey

        from security.smart.registry import add_client

        self.url = f"{root}/auth/token"
        self.scope = scope
        self._key = ECKey.generate_key("P-384", parameters={"kid": "bench"})
        self._client_id = f"bench-{uuid.uuid4().hex[:8]}"
        db = Database(database_url)
        try:
            with db.write() as conn:
                add_client(
                    conn,
                    name="bench",
                    kind="asymmetric",
                    scope=scope,
                    jwks={"keys": [self._key.as_dict(private=False)]},
                    client_id=self._client_id,
                )
        finally:
            db.dispose()
        self._token = ""
        self._until = 0.0  # time.monotonic() at which the token expires
        self.renewals = 0

    def form(self) -> dict[str, str]:
        """What the client posts to the token endpoint: a fresh assertion for ``self.url``."""
        from joserfc import jwt

        now = int(time.time())
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self.url,
            "exp": now + 240,
            "jti": uuid.uuid4().hex,
        }
        assertion = jwt.encode(
            {"alg": "ES384", "kid": "bench"}, claims, self._key, algorithms=["ES384"]
        )
        return {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }

    def due(self, seconds: float = 0.0) -> bool:
        """Whether the token would run out within the next ``seconds`` (and the margin)."""
        return time.monotonic() + seconds + self.MARGIN >= self._until

    def headers(self, seconds: float = 0.0) -> dict[str, str]:
        """The Authorization header, valid for at least the next ``seconds``."""
        if self.due(seconds):
            asked = time.monotonic()
            answer = httpx.post(self.url, data=self.form(), timeout=30)
            self._accept(answer.status_code, answer.text, asked, seconds)
        return {"Authorization": f"Bearer {self._token}"}

    async def arenew(self, client: httpx.AsyncClient, seconds: float = 0.0) -> None:
        """:meth:`headers` for an app called in-process (``client`` posts to it); the token is
        then :meth:`current`."""
        if self.due(seconds):
            asked = time.monotonic()
            answer = await client.post(self.url, data=self.form())
            self._accept(answer.status_code, answer.text, asked, seconds)

    def current(self) -> str:
        return self._token

    def forget(self) -> None:
        """Drop the token (the server refused it): the next :meth:`headers` asks for another."""
        self._until = 0.0

    def _accept(self, status: int, body: str, asked: float, seconds: float) -> None:
        if status != 200:
            raise SystemExit(f"bench: the token endpoint answered {status}: {body[:300]}")
        data = orjson.loads(body)
        self._token = data["access_token"]
        self._until = asked + float(data["expires_in"])
        self.renewals += 1
        if self.due(seconds):
            raise SystemExit(
                f"bench: a part of a run lasting {seconds:.0f} s outlasts a token "
                f"({data['expires_in']} s): measure it in shorter parts"
            )


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


class RunFailed(SystemExit):
    """A load run that got answers it should not have: its rate is not a measurement. Ends the
    benchmark with exit status 1 and the message on stderr (it is a ``SystemExit``)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"bench: run failed: {message}")


def check_statuses(
    what: str, statuses: Mapping[Any, int], expected: Container[Any] = range(200, 300)
) -> None:
    """Fail the run (:class:`RunFailed`) if any answer's status (an HTTP status, or an HL7
    ACK code) is not in ``expected`` (any 2xx unless told): a throughput or a latency that
    counts failed answers is not reported."""
    bad = {code: n for code, n in statuses.items() if code not in expected}
    if bad:
        total, wrong = sum(statuses.values()), sum(bad.values())
        listed = ", ".join(f"{n:,} x {code}" for code, n in sorted(bad.items(), key=str))
        raise RunFailed(f"{what}: {wrong:,} of {total:,} answers not {_what(expected)}: {listed}")


def _what(expected: Container[Any]) -> str:
    if expected == range(200, 300):
        return "2xx"
    if isinstance(expected, Iterable):
        return " or ".join(str(code) for code in expected)
    return "expected"


# Appended to every wrk script: counts the answers by status (wrk itself counts only those of
# 400 and up, as "Non-2xx or 3xx responses") and prints them with p95 when the run is done.
WRK_REPORT = """
local bench_threads = {}
setup = function(thread) table.insert(bench_threads, thread) end
bench_statuses = {}
response = function(status, headers, body)
  bench_statuses[status] = (bench_statuses[status] or 0) + 1
end
done = function(summary, latency, requests)
  io.write(string.format("p95_us=%d\\n", latency:percentile(95.0)))
  for _, thread in ipairs(bench_threads) do
    for status, n in pairs(thread:get("bench_statuses")) do
      io.write(string.format("status=%d count=%d\\n", status, n))
    end
  end
end
"""


def wrk(
    url: str,
    *,
    script: Path | None,
    seconds: int,
    connections: int,
    headers: dict[str, str] | None = None,
    expected: Container[int] = range(200, 300),
) -> dict[str, Any]:
    """Run wrk (one thread: the other core is the server's) and parse its report.

    Every answer's status is counted (:data:`WRK_REPORT`); a run with any answer outside
    ``expected`` (any 2xx unless told), or any socket error, fails (:class:`RunFailed`)
    instead of reporting a rate. ``script``, if given, supplies the requests (its
    ``request`` function); it must not define ``setup``, ``response`` or ``done``.
    """
    lua = (script.read_text() if script else "") + WRK_REPORT
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    try:
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", f.name]
        for name, value in (headers or {}).items():
            cmd += ["-H", f"{name}: {value}"]
        out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    statuses = {int(c): int(n) for c, n in re.findall(r"status=(\d+) count=(\d+)", out)}
    check_statuses(f"wrk {url}", statuses, expected)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if sockets and any(int(n) for n in sockets.groups()):
        raise RunFailed(f"wrk {url}: {sockets.group(0)}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def lat(label: str) -> float:
        m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    if sum(statuses.values()) != requests:
        raise RunFailed(f"wrk {url}: {requests:.0f} answers, but statuses for {statuses}")
    return {
        "rps": rps,
        "p50_ms": lat("50"),
        "p95_ms": float(re.search(r"p95_us=(\d+)", out).group(1)) / 1000,  # type: ignore[union-attr]
        "p99_ms": lat("99"),
        "requests": requests,
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
    }


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=str))
    return path
