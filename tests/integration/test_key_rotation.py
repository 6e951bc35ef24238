"""`fhir-sched keys rotate` while a real server takes reads and writes: nothing fails."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.integration.server import running_server, server_env

HEADERS = {"content-type": "application/fhir+json"}


def _patient(n: int) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": f"Rotate{n}"}], "gender": "other"}


def _seed(base: str, count: int) -> list[str]:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _patient(n), "request": {"method": "POST", "url": "Patient"}}
            for n in range(count)
        ],
    }
    r = httpx.post(base, json=bundle, headers=HEADERS, timeout=60)
    assert r.status_code == 200, r.text
    return [e["response"]["location"].split("/")[-3] for e in r.json()["entry"]]


def _load(base: str, ids: list[str], stop: threading.Event, out: dict[str, Any]) -> None:
    rnd = random.Random(threading.get_ident())
    with httpx.Client(timeout=30) as client:
        n = 0
        while not stop.is_set() and n < 5000:
            n += 1
            try:
                kind = rnd.random()
                if kind < 0.6:
                    r = client.get(f"{base}/Patient/{rnd.choice(ids)}")
                    ok = r.status_code == 200
                elif kind < 0.8:
                    r = client.post(f"{base}/Patient", json=_patient(n), headers=HEADERS)
                    ok = r.status_code == 201
                    if ok:
                        ids.append(r.json()["id"])
                else:
                    rid = rnd.choice(ids)
                    r = client.put(
                        f"{base}/Patient/{rid}", json={**_patient(n), "id": rid}, headers=HEADERS
                    )
                    ok = r.status_code in (200, 409)  # 409: a concurrent update won the race
                with out["lock"]:
                    out["requests"] += 1
                    if not ok:
                        out["failures"].append((r.request.method, r.status_code, r.text[:200]))
            except httpx.HTTPError as exc:
                with out["lock"]:
                    out["failures"].append(("transport", 0, repr(exc)))


def test_rotate_under_load(tmp_path: Path, database_url: str) -> None:
    env = server_env(tmp_path, database_url)
    with running_server(tmp_path, env) as server:
        ids = _seed(server.base, 300)
        old_key = json.loads((tmp_path / "keys.json").read_text())["active"]
        stop = threading.Event()
        out: dict[str, Any] = {"requests": 0, "failures": [], "lock": threading.Lock()}
        workers = [
            threading.Thread(target=_load, args=(server.base, ids, stop, out)) for _ in range(4)
        ]
        for w in workers:
            w.start()
        time.sleep(0.5)
        rotated = server.cli("keys", "rotate", "--batch", "50")
        time.sleep(0.5)
        stop.set()
        for w in workers:
            w.join(timeout=60)
        assert rotated.returncode == 0, rotated.stderr
        report = json.loads(rotated.stdout)
        new_key = report["active"]
        assert new_key != old_key
        assert report["rewrapped"] >= 300
        assert out["failures"] == []
        assert out["requests"] > 50

        status = json.loads(server.cli("keys", "status").stdout)
        assert list(status["rows_by_key"]) == [new_key]

        refused = server.cli("keys", "retire", new_key)
        assert refused.returncode != 0
        retired = server.cli("keys", "retire", old_key)
        assert retired.returncode == 0, retired.stderr
        assert old_key not in json.loads((tmp_path / "keys.json").read_text())["keks"]

        with httpx.Client(timeout=30) as client:
            for rid in ids:
                assert client.get(f"{server.base}/Patient/{rid}").status_code == 200
            history = client.get(f"{server.base}/Patient/_history", params={"_count": 500})
            assert history.status_code == 200
