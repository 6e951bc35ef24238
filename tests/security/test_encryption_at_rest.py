"""No byte of PHI on disk in plaintext: the raw SQLite file and a pg_dump are searched."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from resources.sql.engine import Database
from resources.store import Store, V
from security.crypto import DecryptionError
from tests.builders import FHIR_JSON, create
from tests.conftest import PG_URL

SECRET_PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:mrn", "value": "MRN-778899"}],
    "name": [{"family": "Zyxwquartz", "given": ["Ottoline"]}],
    "telecom": [{"system": "phone", "value": "+1-617-555-0199"}],
    "birthDate": "1966-04-17",
    "address": [{"line": ["42 Quillfeather Lane"], "city": "Wexbridge", "postalCode": "02139"}],
}
NEEDLES = [
    "Zyxwquartz",
    "zyxwquartz",
    "ZYXWQUARTZ",
    "Ottoline",
    "ottoline",
    "MRN-778899",
    "778899",
    "+1-617-555-0199",
    "6175550199",
    "617-555-0199",
    "1966-04-17",
    "19660417",
    "1966-04",
    "Quillfeather",
    "quillfeather",
    "Wexbridge",
    "wexbridge",
]


def _seed(client: TestClient) -> str:
    p = create(client, SECRET_PATIENT)
    # exercise the search index and a second version too
    for q in (
        {"name": "zyx"},
        {"phone": "6175550199"},
        {"birthdate": "1966-04-17"},
        {"identifier": "urn:mrn|MRN-778899"},
    ):
        assert client.get("/fhir/Patient", params=q).json()["total"] == 1, q
    client.put(
        f"/fhir/Patient/{p['id']}",
        json={**SECRET_PATIENT, "id": p["id"], "gender": "female"},
        headers=FHIR_JSON,
    )
    return str(p["id"])


def _dump(db: Database, request: pytest.FixtureRequest) -> bytes:
    if db.is_sqlite:
        path = Path(str(make_url(db.url).database))
        db.engine.dispose()  # let SQLite checkpoint; read the WAL too in case it did not
        data = path.read_bytes()
        for extra in (Path(f"{path}-wal"), Path(f"{path}-journal")):
            if extra.exists():
                data += extra.read_bytes()
        return data
    schema = request.getfixturevalue("pg_schema")
    url = make_url(PG_URL)
    out = subprocess.run(
        [
            "pg_dump",
            "-h",
            url.host or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "postgres",
            "-d",
            url.database or "test",
            "-n",
            schema,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert b"CREATE TABLE" in out.stdout
    return out.stdout


def test_no_phi_on_disk(client: TestClient, db: Database, request: pytest.FixtureRequest) -> None:
    _seed(client)
    raw = _dump(db, request)
    assert len(raw) > 10_000
    found = [n for n in NEEDLES if n.encode() in raw or n.encode("utf-16-le") in raw]
    assert found == []
    assert b"Patient" in raw  # the dump is real: resource types are plain by design


def test_ciphertext_copied_to_another_row_fails(
    client: TestClient, db: Database, store: Store
) -> None:
    a = create(client, {"resourceType": "Patient", "name": [{"family": "Alpha"}]})
    b = create(client, {"resourceType": "Patient", "name": [{"family": "Beta"}]})
    cols = (V.c.kek_id, V.c.wrapped_key, V.c.nonce, V.c.ciphertext)
    with db.engine.begin() as conn:
        row = conn.execute(select(*cols).where(V.c.res_id == a["id"])).one()
        conn.execute(
            update(V)
            .where(V.c.res_id == b["id"])
            .values(
                kek_id=row.kek_id,
                wrapped_key=row.wrapped_key,
                nonce=row.nonce,
                ciphertext=row.ciphertext,
            )
        )
    with db.read() as conn:
        assert store.read(conn, "Patient", a["id"]) is not None
        with pytest.raises(DecryptionError):
            store.read(conn, "Patient", b["id"])
    assert client.get(f"/fhir/Patient/{b['id']}").status_code == 500


def test_two_seals_of_one_resource_differ(client: TestClient, db: Database) -> None:
    p = create(client, {"resourceType": "Patient", "name": [{"family": "Same"}]})
    body = {**p, "meta": {}}
    client.put(f"/fhir/Patient/{p['id']}", json=body, headers=FHIR_JSON)
    with db.read() as conn:
        rows = conn.execute(
            select(V.c.nonce, V.c.ciphertext, V.c.wrapped_key).where(V.c.res_id == p["id"])
        ).all()
    assert len(rows) == 2
    assert rows[0].nonce != rows[1].nonce
    assert rows[0].ciphertext != rows[1].ciphertext
    assert rows[0].wrapped_key != rows[1].wrapped_key
