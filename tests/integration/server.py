"""Run the real `fhir-sched serve` (uvicorn) in a subprocess for integration tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

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
def running_server(tmp_path: Path, env: dict[str, str]) -> Iterator[Server]:
    port = free_port()
    env = {**env, "FHIRSCHED_PORT": str(port)}
    log_path = tmp_path / f"server-{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(EXE), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        base = f"http://127.0.0.1:{port}/fhir"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
            yield Server(base, env, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
