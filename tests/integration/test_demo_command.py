"""Quick-start command one, minus the virtualenv: `fhir-sched demo` serves the demo clinic."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

README = Path(__file__).parents[2] / "README.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_demo_command_serves_and_prints_base_url(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "FHIRSCHED_DATABASE_URL": f"sqlite:///{tmp_path}/demo.db",
        "FHIRSCHED_KEY_FILE": str(tmp_path / "keys.json"),
    }
    exe = Path(sys.executable).with_name("fhir-sched")
    proc = subprocess.Popen(
        [str(exe), "demo", "--port", str(port), "--weeks", "1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/fhir"
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"{base}/metadata", timeout=1).status_code == 200
            except httpx.TransportError:
                ready = False
            if ready:
                break
            time.sleep(0.2)
        assert ready, "demo server did not come up"
        assert httpx.get(f"{base}/Practitioner", timeout=5).status_code == 401
        token = httpx.post(
            f"http://127.0.0.1:{port}/auth/token",
            data={"grant_type": "client_credentials", "scope": "system/*.rs"},
            auth=("demo-backend", "demo-backend-secret"),
            timeout=5,
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        bundle = httpx.get(f"{base}/Practitioner", headers=auth, timeout=5).json()
        assert bundle["total"] == 3
        slots = httpx.get(
            f"{base}/Slot", params={"_summary": "count"}, headers=auth, timeout=5
        ).json()
        assert slots["total"] > 0
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert f"FHIR base URL: {base}" in err
    hint = next(line.strip() for line in err.splitlines() if "curl -u demo-backend" in line)
    # as the README's: a scope that can book, quoted so no shell expands its glob
    assert "-d 'scope=system/*.cruds' " in hint
    assert "-d 'scope=system/*.cruds' http://127.0.0.1:8080/auth/token" in README.read_text()
    assert "scope=system/*.cruds" in shlex.split(hint)
