"""`fhir-sched keys rotate` while a real server takes reads and writes: nothing fails.

A real `fhir-sched serve` (uvicorn) runs on each database; reader and writer threads hammer it
over loopback while `fhir-sched keys rotate` runs as another process.  Afterwards every stored
version opens under the new key alone, through the API and through a fresh Store; retiring the
old key is refused while the audit log's records still use it.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from resources.sql.engine import Database
from resources.store import Store, V
from security.crypto import KeyRing, rotate_key_file
from tests.integration.server import Server, running_server, server_env

HEADERS = {"content-type": "application/fhir+json"}
SEEDED = 200
MAX_REQUESTS_PER_THREAD = 3000


def _patient(n: int) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": f"Rotate{n}"}], "gender": "other"}


def _transaction(count: int, offset: int = 0) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _patient(offset + n), "request": {"method": "POST", "url": "Patient"}}
            for n in range(count)
        ],
    }


def _seed(base: str, count: int, auth: dict[str, str]) -> list[str]:
    r = httpx.post(base, json=_transaction(count), headers={**HEADERS, **auth}, timeout=60)
    assert r.status_code == 200, r.text
    ids = [e["response"]["location"].split("/")[-3] for e in r.json()["entry"]]
    for rid in ids[:50]:  # some history, so older versions are rewrapped too
        r = httpx.put(
            f"{base}/Patient/{rid}", json={**_patient(0), "id": rid}, headers={**HEADERS, **auth}
        )
        assert r.status_code == 200, r.text
    return ids


@dataclass
class Load:
    """What the client threads did: every response they saw that was not the expected one."""

    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    failures: list[tuple[str, int, str]] = field(default_factory=list)
    written_at: list[datetime] = field(default_factory=list)  # meta.lastUpdated of each write

    def record(self, r: httpx.Response | None, ok: bool, note: str = "") -> None:
        with self.lock:
            self.requests += 1
            if not ok:
                where = f"{r.request.method} {r.request.url.path}" if r is not None else "-"
                code = r.status_code if r is not None else 0
                self.failures.append((where, code, note or (r.text[:300] if r else "")))

    def wrote(self, resource: dict[str, Any]) -> None:
        stamp = datetime.fromisoformat(resource["meta"]["lastUpdated"].replace("Z", "+00:00"))
        with self.lock:
            self.written_at.append(stamp)


def _reader(base: str, ids: list[str], load: Load, seed: int, auth: dict[str, str]) -> None:
    rnd = random.Random(seed)
    with httpx.Client(base_url=base, timeout=30, headers=auth) as c:
        for _ in range(MAX_REQUESTS_PER_THREAD):
            if load.stop.is_set():
                return
            rid = rnd.choice(ids)
            try:
                kind = rnd.random()
                if kind < 0.6:
                    r = c.get(f"/Patient/{rid}")
                elif kind < 0.8:
                    r = c.get(f"/Patient/{rid}/_history/1")
                else:
                    r = c.get("/Patient", params={"family": "Rotate1", "_count": "50"})
                load.record(r, r.status_code == 200)
            except httpx.HTTPError as exc:
                load.record(None, False, repr(exc))


def _writer(base: str, load: Load, seed: int, auth: dict[str, str]) -> None:
    """Creates, updates its own patients (so no update races another) and small bundles."""
    rnd = random.Random(seed)
    mine: list[str] = []
    with httpx.Client(base_url=base, timeout=30, headers=auth) as c:
        for n in range(MAX_REQUESTS_PER_THREAD):
            if load.stop.is_set():
                return
            try:
                kind = rnd.random()
                if kind < 0.4 or not mine:
                    r = c.post("/Patient", json=_patient(n), headers=HEADERS)
                    ok = r.status_code == 201
                    if ok:
                        mine.append(r.json()["id"])
                        load.wrote(r.json())
                elif kind < 0.9:
                    rid = rnd.choice(mine)
                    body = {**_patient(n), "id": rid}
                    r = c.put(f"/Patient/{rid}", json=body, headers=HEADERS)
                    ok = r.status_code == 200
                    if ok:
                        load.wrote(r.json())
                else:
                    r = c.post(base, json=_transaction(5, n), headers=HEADERS)
                    ok = r.status_code == 200
                load.record(r, ok)
            except httpx.HTTPError as exc:
                load.record(None, False, repr(exc))


def _rotate_under_load(server: Server, ids: list[str]) -> tuple[dict[str, Any], Load, float]:
    load = Load()
    auth = server.headers
    threads = [
        threading.Thread(target=_reader, args=(server.base, ids, load, n, auth)) for n in (1, 2)
    ]
    threads += [threading.Thread(target=_writer, args=(server.base, load, n, auth)) for n in (3, 4)]
    for t in threads:
        t.start()
    while load.requests < 100 and any(t.is_alive() for t in threads):
        time.sleep(0.01)  # the load is under way before the rotation starts
    rotated = server.cli("keys", "rotate", "--batch", "20")
    rotate_done = time.time()
    seen = load.requests
    while load.requests < seen + 100 and any(t.is_alive() for t in threads):
        time.sleep(0.01)  # and goes on after it
    load.stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert rotated.returncode == 0, rotated.stderr
    return json.loads(rotated.stdout), load, rotate_done


def _open_every_row(database_url: str, key_file: Path, only: str) -> tuple[int, int]:
    """Open every stored version with a ring holding only the KEK ``only`` of the key file.
    Returns (opened, total)."""
    doc = json.loads(key_file.read_text())
    doc["keks"] = {only: doc["keks"][only]}
    db = Database(database_url)
    store = Store(KeyRing.from_document(doc))
    try:
        with db.read() as conn:
            rows = conn.execute(select(V)).all()
        opened = sum(1 for row in rows if store.open_row(row).body is not None)
    finally:
        db.dispose()
    return opened, len(rows)


def test_rotate_under_load(tmp_path: Path, database_url: str) -> None:
    key_file = tmp_path / "keys.json"
    with running_server(tmp_path, server_env(tmp_path, database_url)) as server:
        ids = _seed(server.base, SEEDED, server.headers)
        old_key = json.loads(key_file.read_text())["active"]
        refused_active = server.cli("keys", "retire", old_key)

        report, load, rotate_done = _rotate_under_load(server, ids)

        assert load.failures == []
        new_key = report["active"]
        assert new_key != old_key
        assert report["rows_by_key"] == {new_key: report["rows_by_key"][new_key]}
        assert report["rewrapped"] >= SEEDED + 50
        # The rotation overlapped the writes: some were sealed between the key file changing
        # and the rotation finishing, and by then every row was under the new key.
        replaced_at = key_file.stat().st_mtime
        during = [t for t in load.written_at if replaced_at <= t.timestamp() <= rotate_done]
        assert during, (replaced_at, rotate_done, len(load.written_at))

        status = json.loads(server.cli("keys", "status").stdout)
        assert status["active"] == new_key
        assert list(status["rows_by_key"]) == [new_key]

        assert refused_active.returncode != 0
        assert "active" in refused_active.stderr
        assert server.cli("keys", "retire", "k-no-such-key").returncode != 0
        # the audit records of those requests are sealed under the old key, and rotation
        # rewraps resource versions only: retiring it would make them unreadable
        kept = server.cli("keys", "retire", old_key)
        assert kept.returncode != 0
        assert "audit_log" in kept.stderr and "does not rewrap" in kept.stderr
        assert set(json.loads(key_file.read_text())["keks"]) == {old_key, new_key}

        opened, total = _open_every_row(database_url, key_file, new_key)
        assert opened == total == status["rows_by_key"][new_key]
        with httpx.Client(base_url=server.base, timeout=30, headers=server.headers) as c:
            for rid in ids:
                assert c.get(f"/Patient/{rid}").status_code == 200
                assert c.get(f"/Patient/{rid}/_history/1").status_code == 200
            after = c.post("/Patient", json=_patient(1), headers=HEADERS)
            assert after.status_code == 201
            assert c.get(f"/Patient/{after.json()['id']}").status_code == 200

        # A key that is no longer active but still wraps rows cannot be retired.
        rotate_key_file(key_file)
        still_used = server.cli("keys", "retire", new_key)
        assert still_used.returncode != 0
        assert "rows still use" in still_used.stderr
