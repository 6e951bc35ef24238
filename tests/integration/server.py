"""Run the real `fhir-sched serve` (uvicorn) in a subprocess for integration tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from resources.sql.engine import Database
from tests.smart import FULL_ACCESS, backend_form, register_backend

EXE = Path(sys.executable).with_name("fhir-sched")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    base: str
    env: dict[str, str]
    log_path: Path
    pid: int = 0  # the `fhir-sched serve` process
    _token: tuple[float, str] | None = None

    @property
    def root(self) -> str:
        return self.base.removesuffix("/fhir")

    def token(self, scope: str = FULL_ACCESS) -> str:
        """A backend token from the server's real token endpoint (client registered here)."""
        db = Database(self.env["FHIRSCHED_DATABASE_URL"])
        try:
            client_id = register_backend(db, client_id=f"it-{uuid.uuid4().hex[:8]}")
        finally:
            db.dispose()
        form = backend_form(client_id, f"{self.root}/auth/token", scope)
        resp = httpx.post(f"{self.root}/auth/token", data=form, timeout=30)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["access_token"])

    @property
    def headers(self) -> dict[str, str]:
        """Authorization for a full-access backend client (renewed before its 300 s expire)."""
        if self._token is None or self._token[0] < time.monotonic():
            self._token = (time.monotonic() + 200, self.token())
        return {"Authorization": f"Bearer {self._token[1]}"}

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run another `fhir-sched` command against the same database and keys."""
        return subprocess.run(
            [str(EXE), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )


def server_env(tmp_path: Path, database_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "FHIRSCHED_DATABASE_URL": database_url,
        "FHIRSCHED_KEY_FILE": str(tmp_path / "keys.json"),
        **extra,
    }


@contextmanager
def running_server(
    tmp_path: Path,
    env: dict[str, str],
    *,
    command: tuple[str, ...] = ("serve",),
    start_within: float = 60,
) -> Iterator[Server]:
    """``fhir-sched <command>`` (``serve``, or ``demo …``) on a free port (FHIRSCHED_PORT),
    once it answers ``/metadata``; stopped at the end."""
    port = free_port()
    env = {**env, "FHIRSCHED_PORT": str(port)}
    log_path = tmp_path / f"server-{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(EXE), *command], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        base = f"http://127.0.0.1:{port}/fhir"
        try:
            deadline = time.monotonic() + start_within
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
            yield Server(base, env, log_path, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
