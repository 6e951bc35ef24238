"""Key rotation's last row: a write sealed under the old key that commits late is still rewrapped.

The "server" here is a Store whose key ring follows the key file, as `fhir-sched serve` has;
the rotation runs in another thread with its own ring, as `fhir-sched keys rotate` does.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from resources.rotation import RotationReport, kek_usage, rotate_keys
from resources.sql.engine import Database
from resources.store import Store
from security.crypto import KeyRing, load_keyring, rotate_key_file
from tests.builders import make_patient


def _key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.json"
    load_keyring(key_file=path, keys_json=None)
    return path


def test_rotation_waits_for_a_write_sealed_under_the_old_key(db: Database, tmp_path: Path) -> None:
    path = _key_file(tmp_path)
    old = json.loads(path.read_text())["active"]
    server = Store(KeyRing.from_file(path))
    with db.write() as conn:
        for n in range(30):
            server.write(
                conn, resource={**make_patient(f"P{n}"), "id": f"p{n}"}, method="PUT", expected=None
            )

    waiting = threading.Event()  # set when the rotation waits on an older transaction
    result: list[RotationReport | BaseException] = []

    def pause(seconds: float) -> None:
        waiting.set()
        time.sleep(seconds)

    def rotation() -> None:
        try:
            result.append(
                rotate_keys(
                    database=db,
                    store=Store(KeyRing.from_file(path)),
                    key_file=path,
                    batch=7,
                    sleep=pause,
                )
            )
        except Exception as exc:  # noqa: BLE001 - handed to the test thread
            result.append(exc)

    rotator = threading.Thread(target=rotation)
    with db.write() as conn:
        # Sealed under the old key, as a server would just before the file is replaced ...
        server.write(
            conn, resource={**make_patient("Late"), "id": "late"}, method="PUT", expected=None
        )
        rotator.start()
        while json.loads(path.read_text())["active"] == old:
            rotator.join(0.01)
        # ... and committed only after the rotation replaced the file and (on PostgreSQL)
        # reached its wait, or (without one) finished.
        while not waiting.is_set() and not db.is_sqlite and rotator.is_alive():
            rotator.join(0.01)
    rotator.join()
    [report] = result
    assert isinstance(report, RotationReport), report
    assert report.active != old
    assert report.rows_by_key == {report.active: 31}
    with db.read() as conn:
        assert kek_usage(conn) == {report.active: 31}
        assert server.read(conn, "Patient", "late") is not None
    assert waiting.is_set() != db.is_sqlite  # SQLite orders writers by its lock instead


def test_a_ring_following_the_file_seals_under_the_new_key_at_once(tmp_path: Path) -> None:
    path = _key_file(tmp_path)
    ring = KeyRing.from_file(path)
    assert ring.seal(b"x", aad=b"a").kek_id == ring.active
    new = rotate_key_file(path)  # by another process, as far as this ring knows
    assert ring.seal(b"x", aad=b"a").kek_id == new
