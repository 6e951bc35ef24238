"""`fhir-sched backup` while a real server takes writes, then `fhir-sched restore` elsewhere.

Writer threads create Patients and book Appointments over HTTP while the backup runs as
another process. The copy is restored into a fresh directory (or a fresh PostgreSQL schema,
beside the live one) with a fresh key file path, and a server started on it: every write
acknowledged before the backup began reads back identical, a write acknowledged during it is
either absent or identical, and the audit chain verifies against its checkpoints. The backup
directory holds no key and no patient name in plain sight.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select

from fhir_server.cli import main
from resources.sql.engine import Database
from resources.sql.tables import AuditLog
from security.audit import open_event
from security.crypto import KeyRing
from tests.integration.conftest import empty_database
from tests.integration.server import EXE, Server, running_server, server_env
from tests.integration.test_booking_race import CLINIC, clinic_server, find_options

PASSPHRASE = "correct horse battery staple"
FAMILY = "Quillfeather-Zebedee"  # the patient data the backup must not show
H = {"content-type": "application/fhir+json"}


@pytest.fixture
def restore_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second, empty database of the same kind: a file elsewhere or a schema of its own."""
    kind = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    with empty_database(kind, tmp_path / "restored" / "server.db") as url:
        yield url


def fhir_sched(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@dataclass
class Writes:
    """Every write the server acknowledged, with when (monotonic) the answer arrived."""

    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def add(self, r: httpx.Response) -> None:
        with self.lock:
            if r.status_code == 201:
                self.acked.append((time.monotonic(), r.json()))
            elif r.status_code != 409:  # a lost race for a Slot is an answer, not a fault
                self.failures.append(f"{r.request.url.path} {r.status_code}")

    def between(self, start: float, end: float) -> list[dict[str, Any]]:
        with self.lock:
            return [res for at, res in self.acked if start <= at < end]


def _create_patients(server: Server, writes: Writes) -> None:
    with httpx.Client(base_url=server.base, headers={**H, **server.headers}, timeout=30) as c:
        n = 0
        while not writes.stop.is_set():
            n += 1
            body = {"resourceType": "Patient", "name": [{"family": FAMILY, "given": [f"G{n}"]}]}
            writes.add(c.post("/Patient", json=body))
            time.sleep(0.01)  # leave the backup some of the machine's two cores


def _book(server: Server, writes: Writes, options: list[dict[str, Any]]) -> None:
    with httpx.Client(base_url=server.base, headers={**H, **server.headers}, timeout=30) as c:
        for option in options:
            if writes.stop.is_set():
                return
            params = [{"name": "appointment-resource", "resource": option}]
            body = {"resourceType": "Parameters", "parameter": params}
            writes.add(c.post("/Appointment/$book", json=body))


def _key_material(*files: Path) -> list[bytes]:
    """The secrets of the key file and the signing key, raw and as written in the files."""
    keys = json.loads(files[0].read_text())
    secrets = [*keys["keks"].values(), keys["index_secret"]]
    out = [s.encode() for s in secrets] + [base64.b64decode(s) for s in secrets]
    for extra in files[1:]:
        jwk = json.loads(extra.read_text())
        out += [jwk[p].encode() for p in ("d", "p", "q")]
    return out


def _check_sealed(directory: Path, secrets: list[bytes]) -> None:
    assert directory.stat().st_mode & 0o777 == 0o700
    files = sorted(directory.iterdir())
    assert {f.name for f in files} >= {"manifest.json", "keys.json.sealed"}
    for f in files:
        assert f.stat().st_mode & 0o777 == 0o600, f
        content = f.read_bytes()
        assert FAMILY.encode() not in content and FAMILY.lower().encode() not in content, f
        for secret in secrets:
            assert secret not in content, f


def _check_restored(
    restored: Server, before: list[dict[str, Any]], during: list[dict[str, Any]]
) -> None:
    with httpx.Client(base_url=restored.base, headers=restored.headers, timeout=30) as c:
        for resource in before:
            r = c.get(f"/{resource['resourceType']}/{resource['id']}")
            assert r.status_code == 200, (resource["resourceType"], r.status_code)
            assert r.json() == resource
        for resource in during[:: max(1, len(during) // 40)]:  # a sample: reads are audited
            r = c.get(f"/{resource['resourceType']}/{resource['id']}")
            assert r.status_code == 404 or r.json() == resource


def test_backup_under_writes_restores_every_acknowledged_write(
    tmp_path: Path, database_url: str, restore_url: str
) -> None:
    live_dir, backup_dir = tmp_path / "live", tmp_path / "backup"
    live_dir.mkdir()
    writes = Writes()
    with clinic_server(live_dir, database_url, CLINIC) as server:
        options = find_options(server, 5, 100)
        threads = [
            threading.Thread(target=_create_patients, args=(server, writes)),
            threading.Thread(target=_create_patients, args=(server, writes)),
            threading.Thread(target=_book, args=(server, writes, options)),
        ]
        for t in threads:
            t.start()
        try:
            while len(writes.between(0, time.monotonic())) < 30:
                time.sleep(0.05)
            started = time.monotonic()
            env = {**server.env, "FHIRSCHED_BACKUP_PASSPHRASE": PASSPHRASE}
            done = fhir_sched(env, "backup", str(backup_dir))
            finished = time.monotonic()
        finally:
            writes.stop.set()
            for t in threads:
                t.join(timeout=60)
        assert done.returncode == 0, done.stderr
        secrets = _key_material(live_dir / "keys.json", live_dir / "signing-key.json")
    assert not writes.failures
    before, during = writes.between(0, started), writes.between(started, finished)
    assert {r["resourceType"] for r in before} == {"Patient", "Appointment"}
    assert during, "the writers stopped while the backup ran"
    summary = json.loads(done.stdout)
    assert summary["database"] in database_url
    _check_sealed(backup_dir, secrets)

    target = tmp_path / "restored"
    env = server_env(target, restore_url, FHIRSCHED_BACKUP_PASSPHRASE=PASSPHRASE)
    restored_run = fhir_sched(env, "restore", str(backup_dir))
    assert restored_run.returncode == 0, restored_run.stderr
    report = json.loads(restored_run.stdout)
    assert report["audit_head_seq"] > report["backup_audit_head_seq"] >= 1
    assert (target / "keys.json").read_bytes() == (live_dir / "keys.json").read_bytes()
    with running_server(target, env) as restored:
        _check_restored(restored, before, during)
        verified = restored.cli("audit", "verify")
        assert verified.returncode == 0, verified.stdout
        verdict = json.loads(verified.stdout)
        assert verdict["intact"] and verdict["checkpoints"] >= 2, verdict
    assert _commands_audited(restore_url, target / "keys.json") == ["backup", "restore"]


def _commands_audited(url: str, key_file: Path) -> list[str]:
    """The backup and restore AuditEvents in the chain, oldest first."""
    database, ring = Database(url), KeyRing.from_file(key_file)
    try:
        with database.read() as conn:
            events = [open_event(ring, row) for row in conn.execute(select(AuditLog))]
    finally:
        database.dispose()
    subtypes = [e["subtype"][0] for e in events]
    return [s["code"] for s in subtypes if s["code"] in ("backup", "restore")]


def test_restore_refuses_a_wrong_passphrase_and_to_overwrite_without_force(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in server_env(tmp_path, database_url).items():
        if name.startswith("FHIRSCHED_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("FHIRSCHED_BACKUP_PASSPHRASE", PASSPHRASE)
    backup_dir = str(tmp_path / "backup")
    made = CliRunner().invoke(main, ["backup", backup_dir])
    assert made.exit_code == 0, made.output
    again = CliRunner().invoke(main, ["backup", backup_dir])
    assert again.exit_code == 1 and "not empty" in again.stderr

    monkeypatch.setenv("FHIRSCHED_BACKUP_PASSPHRASE", "not it")
    wrong = CliRunner().invoke(main, ["restore", backup_dir, "--force"])
    assert (wrong.exit_code, wrong.stderr) == (1, "Error: wrong passphrase for this backup\n")

    monkeypatch.setenv("FHIRSCHED_BACKUP_PASSPHRASE", PASSPHRASE)
    refused = CliRunner().invoke(main, ["restore", backup_dir])
    assert refused.exit_code == 1
    assert refused.stderr == (
        "Error: the configured database is not empty; pass --force to replace it; "
        "nothing was restored\n"
    )
    forced = CliRunner().invoke(main, ["restore", backup_dir, "--force"])
    assert forced.exit_code == 0, forced.output
    verified = CliRunner().invoke(main, ["audit", "verify"])
    assert json.loads(verified.stdout)["intact"], verified.output
