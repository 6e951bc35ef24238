"""No byte of PHI on disk in plaintext: the raw SQLite file (and its WAL) and a pg_dump.

A patient with distinctive values is written through the HTTP API, searched (so every index
is populated) and updated (so there are two versions); then the storage is read as an attacker
with the disk but not the key file would read it.  Positive controls prove the dump is real and
searched in the right encoding: a non-PHI Practitioner name (indexed in plain text by design)
and the bytes of a stored nonce must both be found.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from resources.sql.engine import Database
from resources.store import Store, V, aad
from security.crypto import DecryptionError, Sealed
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
PHI = [
    "Zyxwquartz",
    "Ottoline",
    "MRN-778899",
    "778899",
    "+1-617-555-0199",
    "617-555-0199",
    "6175550199",
    "16175550199",
    "1966-04-17",
    "19660417",
    "1966-04",
    "Quillfeather",
    "Wexbridge",
]
PLAIN_MARKER = "Plainmarkerov"  # a Practitioner family: not PHI, indexed in plain text


def _variants(value: str) -> set[str]:
    """The value as written and as an index would normalise it."""
    return {value, value.lower(), value.upper(), value.casefold()}


def _encodings(text: str) -> set[bytes]:
    """Byte forms a value could take in a file or dump (pg_dump prints bytea as hex)."""
    utf8 = text.encode()
    return {
        utf8,
        text.encode("utf-16-le"),
        text.encode("utf-16-be"),
        utf8.hex().encode(),
        utf8.hex().upper().encode(),
    }


NEEDLES = {v: _encodings(v) for value in PHI for v in _variants(value)}


def _found(raw: bytes, text: str) -> bool:
    return any(form in raw for form in _encodings(text))


def _search_total(client: TestClient, **params: str) -> int:
    r = client.get("/fhir/Patient", params=params)
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def _seed(client: TestClient) -> str:
    p = create(client, SECRET_PATIENT)
    create(client, {"resourceType": "Practitioner", "name": [{"family": PLAIN_MARKER}]})
    hits = {
        "name=zyx": _search_total(client, name="zyx"),
        "name=ZYXWQ": _search_total(client, name="ZYXWQ"),
        "given=Otto": _search_total(client, given="Otto"),
        "name:exact=Zyxwquartz": _search_total(client, **{"name:exact": "Zyxwquartz"}),
        "phone=6175550199": _search_total(client, phone="6175550199"),
        "birthdate=1966-04": _search_total(client, birthdate="1966-04"),
        "identifier": _search_total(client, identifier="urn:mrn|MRN-778899"),
        "address=42 quill": _search_total(client, address="42 quill"),
        "address-city=wexb": _search_total(client, **{"address-city": "wexb"}),
    }
    assert hits == dict.fromkeys(hits, 1)
    misses = {  # starts-with, not substring; :exact is case-sensitive
        "name=quartz": _search_total(client, name="quartz"),
        "name:exact=zyxwquartz": _search_total(client, **{"name:exact": "zyxwquartz"}),
        "birthdate=1966-05": _search_total(client, birthdate="1966-05"),
    }
    assert misses == dict.fromkeys(misses, 0)
    r = client.put(
        f"/fhir/Patient/{p['id']}",
        json={**SECRET_PATIENT, "id": p["id"], "gender": "female"},
        headers=FHIR_JSON,
    )
    assert r.status_code == 200, r.text
    return str(p["id"])


def _sqlite_bytes(db: Database) -> bytes:
    """The database file and its WAL, read while the server's connections are open and after."""
    path = Path(str(make_url(db.url).database))
    siblings = [path, Path(f"{path}-wal"), Path(f"{path}-journal")]
    live = b"".join(p.read_bytes() for p in siblings if p.exists())
    assert Path(f"{path}-wal").exists()  # WAL mode: recent pages are only in the WAL
    db.engine.dispose()  # the last close checkpoints the WAL into the file
    return live + b"".join(p.read_bytes() for p in siblings if p.exists())


def _pg_dump(schema: str) -> bytes:
    url = make_url(PG_URL)
    out = subprocess.run(
        [
            "/usr/bin/pg_dump",
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
    assert b"COPY " in out.stdout
    return out.stdout


def test_no_phi_on_disk(client: TestClient, db: Database, request: pytest.FixtureRequest) -> None:
    pid = _seed(client)
    with db.read() as conn:
        nonce = conn.execute(select(V.c.nonce).where(V.c.res_id == pid, V.c.version == 2)).one()
    dump: Callable[[], bytes] = (
        (lambda: _sqlite_bytes(db))
        if db.is_sqlite
        else (lambda: _pg_dump(request.getfixturevalue("pg_schema")))
    )
    raw = dump()
    assert _found(raw, PLAIN_MARKER)  # control: plain index values are visible
    assert any(form in raw for form in (nonce[0], nonce[0].hex().encode()))  # control: bytea
    leaked = sorted({text for text, forms in NEEDLES.items() if any(f in raw for f in forms)})
    assert leaked == []


def _copy_sealed(db: Database, *, src: tuple[str, int], dst: tuple[str, int]) -> None:
    cols = (V.c.kek_id, V.c.wrapped_key, V.c.nonce, V.c.ciphertext)
    with db.write() as conn:
        row = conn.execute(select(*cols).where(V.c.res_id == src[0], V.c.version == src[1])).one()
        conn.execute(
            update(V).where(V.c.res_id == dst[0], V.c.version == dst[1]).values(**row._asdict())
        )


@pytest.mark.parametrize("target", ["other resource", "older version"])
def test_ciphertext_copied_to_another_row_fails(
    client: TestClient, db: Database, store: Store, target: str
) -> None:
    a = create(client, {"resourceType": "Patient", "name": [{"family": "Alpha"}]})
    b = create(client, {"resourceType": "Patient", "name": [{"family": "Beta"}]})
    client.put(f"/fhir/Patient/{a['id']}", json={**a, "gender": "male"}, headers=FHIR_JSON)
    if target == "other resource":
        _copy_sealed(db, src=(a["id"], 1), dst=(b["id"], 1))
        victim, version = b["id"], 1
    else:  # version 2's body replayed as version 1 of the same resource
        _copy_sealed(db, src=(a["id"], 2), dst=(a["id"], 1))
        victim, version = a["id"], 1
    with db.read() as conn:
        assert store.vread(conn, "Patient", a["id"], 2) is not None  # the source still opens
        with pytest.raises(DecryptionError):
            store.vread(conn, "Patient", victim, version)
    assert client.get(f"/fhir/Patient/{victim}/_history/{version}").status_code == 500


def test_two_seals_of_one_resource_differ(client: TestClient, db: Database, store: Store) -> None:
    p = create(client, {"resourceType": "Patient", "name": [{"family": "Same"}]})
    for _ in range(5):
        client.put(f"/fhir/Patient/{p['id']}", json={**p, "gender": "other"}, headers=FHIR_JSON)
    with db.read() as conn:
        rows = conn.execute(select(V).where(V.c.res_id == p["id"])).all()
        first = store.vread(conn, "Patient", p["id"], 1)
    assert len(rows) == 6
    assert len({r.nonce for r in rows}) == 6
    assert len({r.wrapped_key for r in rows}) == 6
    # The same plaintext sealed again for the same row: nothing repeats, both open.
    assert first is not None and first.body is not None
    row = next(r for r in rows if r.version == 1)
    again = store.keys.seal(first.body, aad=aad("Patient", p["id"], 1))
    assert again.nonce != row.nonce
    assert again.wrapped_key != row.wrapped_key
    assert again.ciphertext != row.ciphertext
    stored = Sealed(row.kek_id, row.wrapped_key, row.nonce, row.ciphertext)
    assert store.keys.open(stored, aad=aad("Patient", p["id"], 1)) == first.body
    assert store.keys.open(again, aad=aad("Patient", p["id"], 1)) == first.body
