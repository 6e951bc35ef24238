"""The booking agent in a real `fhir-sched serve` (uvicorn) on each database: conversations at
once through the chat API, each turn calling the same server over HTTP for `$find` and
`$book` (the agent's own threads, so no turn waits on the request threads it needs), racing
for the same times; and a text through the SMS webhook, answered into the outbox."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Barrier

import httpx
from twilio.request_validator import RequestValidator

from fhir_server.demo import DEMO_CLINIC, load_demo
from fhir_server.settings import Settings
from tests.integration.server import EXE, running_server, server_env

TOKEN = "twilio-test-token"
AT_ONCE = 6


def _converse(root: str, n: int, barrier: Barrier) -> list[str]:
    """One patient booking a new-patient visit next week; follows whatever is offered."""
    with httpx.Client(base_url=f"{root}/agent", timeout=60) as c:
        cid = c.post("/conversations", json={}).json()["id"]
        barrier.wait()
        said: list[str] = []
        script = [
            "I'd like a new patient visit next week please",
            f"Pat Racer{chr(ord('a') + n)}, born 01/0{n + 1}/1980",
        ]
        for text in script:
            said += c.post(f"/conversations/{cid}/messages", json={"text": text}).json()["replies"]
        for _ in range(2 * AT_ONCE):  # pick an offer and confirm, until booked
            last = said[-1]
            if last.startswith("Done"):
                break
            answer = "yes" if "Please confirm" in last else "ABC"[n % 3]
            r = c.post(f"/conversations/{cid}/messages", json={"text": answer})
            assert r.status_code == 200, r.text
            said += r.json()["replies"]
        return said


def test_conversations_at_once_book_distinct_times(tmp_path: Path, database_url: str) -> None:
    env = server_env(
        tmp_path,
        database_url,
        FHIRSCHED_CLINIC_FILE=str(DEMO_CLINIC),
        FHIRSCHED_TWILIO_AUTH_TOKEN=TOKEN,
    )
    load_demo(
        Settings(database_url=database_url, key_file=tmp_path / "keys.json"),
        weeks=3,
    )
    with running_server(tmp_path, env) as server:
        barrier = Barrier(AT_ONCE)
        with ThreadPoolExecutor(AT_ONCE) as pool:
            talks = list(pool.map(lambda n: _converse(server.root, n, barrier), range(AT_ONCE)))
        assert all(t[-1].startswith("Done") for t in talks), [t[-1] for t in talks]
        with httpx.Client(base_url=server.base, headers=server.headers, timeout=30) as c:
            booked = c.get("/Appointment", params={"status": "booked", "_count": "100"}).json()
        starts = [
            (e["resource"]["start"], e["resource"]["participant"][0]["actor"]["reference"])
            for e in booked.get("entry", [])
        ]
        assert len(starts) == AT_ONCE and len(set(starts)) == AT_ONCE  # never double-booked

        # a text, signed as Twilio signs it, is stored, acknowledged and answered by SMS
        url = f"{server.root}/agent/sms"
        params = {"From": "555-0177", "To": "+14135550100", "Body": "are you a bot?"}
        signature = RequestValidator(TOKEN).compute_signature(url, params)
        r = httpx.post(url, data=params, headers={"X-Twilio-Signature": signature}, timeout=30)
        assert r.status_code == 200 and "<Response>" in r.text
        deadline = time.monotonic() + 30
        while True:
            shown = server.cli("agent", "outbox", "--to", "555-0177")
            assert shown.returncode == 0, shown.stderr
            if "automated assistant (offline rules" in shown.stdout:
                break
            assert time.monotonic() < deadline, shown.stdout
            time.sleep(0.3)

        # the terminal conversation: the same agent, over the same HTTP
        chat = subprocess.run(
            [str(EXE), "agent", "chat"],
            env=server.env,
            input="are you a bot?\n",
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert chat.returncode == 0, chat.stderr
        assert "answering: offline rules" in chat.stdout
        assert "I'm an automated assistant" in chat.stdout
