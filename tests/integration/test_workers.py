"""`fhir-sched serve --workers N`: several server processes on one PostgreSQL.

They share nothing but the database, so what must hold across processes is shown across them:
one booking of a contested time, one unbroken audit chain written by both, and metrics that
count both whichever of them is scraped."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from fhir_server.settings import Settings
from fhir_server.worker import worker_env
from tests.fhir_server.test_metrics import samples, value
from tests.integration.server import EXE
from tests.integration.test_booking_race import CALLERS, CLINIC, clinic_server, race_for_one_time

METRICS_TOKEN = "workers-scrape-token-0123456789"


def _workers(pid: int) -> list[int]:
    """The server's worker processes (uvicorn spawns them as fresh interpreters)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    out = []
    for child in map(int, children):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"spawn_main" in cmdline:
            out.append(child)
    return out


def test_two_workers_book_a_contested_time_once_keep_one_audit_chain_and_count_both(
    tmp_path: Path, database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("several workers need PostgreSQL (SQLite is refused: the next test)")
    with clinic_server(
        tmp_path,
        database_url,
        CLINIC,
        FHIRSCHED_WORKERS="2",
        FHIRSCHED_METRICS_TOKEN=METRICS_TOKEN,
    ) as server:
        assert len(_workers(server.pid)) == 2
        race_for_one_time(server)
        verified = server.cli("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        report = json.loads(verified.stdout)
        # the race alone: 50 $book and their reads, from two processes into one chain
        assert report["intact"] is True and report["records"] >= 50
        # each scrape lands on either worker and counts the race's $book of both
        for _ in range(4):
            scraped = httpx.get(
                f"{server.root}/metrics",
                headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
                timeout=30,
            )
            assert scraped.status_code == 200, scraped.text
            counted = samples(scraped.text)
            book = "fhirsched_book_outcomes_total"
            assert value(counted, book, outcome="booked") == 1
            assert value(counted, book, outcome="conflict") == CALLERS - 1


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EXE), "serve", "--workers", "2"],
        env={**os.environ, "FHIRSCHED_KEY_FILE": str(tmp_path / "keys.json"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_several_workers_on_sqlite_or_with_the_bridge_are_refused(tmp_path: Path) -> None:
    sqlite = _serve(tmp_path, FHIRSCHED_DATABASE_URL=f"sqlite:///{tmp_path}/one.db")
    assert sqlite.returncode != 0
    assert "2 workers need PostgreSQL" in sqlite.stderr
    assert not (tmp_path / "one.db").exists()  # refused before anything was touched
    bridge = _serve(
        tmp_path,
        FHIRSCHED_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none",
        FHIRSCHED_HL7_LISTEN="true",
    )
    assert bridge.returncode != 0
    assert "fhir-sched hl7 listen" in bridge.stderr


def _apply(monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None]) -> None:
    """What ``hand_over`` does, undone after the test."""
    for name, text in env.items():
        if text is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, text)


def test_the_workers_get_the_settings_the_command_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FHIRSCHED_DATABASE_URL", "postgresql+psycopg://x@127.0.0.1/db")
    for name in ("PORT", "WORKERS", "CLINIC_FILE", "CORS_ORIGINS"):
        monkeypatch.delenv(f"FHIRSCHED_{name}", raising=False)
    (tmp_path / "clinic.yaml").touch()  # Settings refuses a clinic file that is not there
    given = Settings(  # as `serve --port 9123 --workers 3`, and a clinic `demo` fills in
        port=9123,
        workers=3,
        clinic_file=tmp_path / "clinic.yaml",
        cors_origins=["https://app.example"],
    )
    env = worker_env(given)
    assert set(env) == {
        f"FHIRSCHED_{n}" for n in ("PORT", "WORKERS", "CLINIC_FILE", "CORS_ORIGINS")
    }
    _apply(monkeypatch, env)
    seen = Settings()  # what a worker reads
    assert seen.port == 9123 and seen.workers == 3
    assert seen.clinic_file == tmp_path / "clinic.yaml"
    assert seen.cors_origins == ["https://app.example"]
    assert seen == given
    # a setting the environment gives but the command cleared
    monkeypatch.setenv("FHIRSCHED_BASE_URL", "https://old.example/fhir")
    _apply(monkeypatch, worker_env(Settings(base_url=None)))
    assert Settings().base_url is None
