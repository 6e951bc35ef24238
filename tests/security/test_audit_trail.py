"""Every access leaves a BALP AuditEvent: reads, searches (one per patient), writes (in the
write's transaction), bundle entries, denials, token events; if the audit log refuses, the
request fails with 503 and nothing it would have changed survives."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, insert, select, text

from resources.sql.engine import Database
from resources.sql.guards import audit_guard_drop
from resources.sql.tables import AuditIndex, AuditLog
from security.audit import digest, open_event, verify
from security.crypto import KeyRing
from tests.builders import make_patient
from tests.conftest import audit_writes_refused
from tests.smart import TOKEN_URL, backend_form, register_backend

FHIR = {"content-type": "application/fhir+json"}


def _events(db: Database, keys: KeyRing) -> list[dict[str, Any]]:
    with db.read() as conn:
        rows = conn.execute(select(AuditLog).order_by(AuditLog.seq)).all()
    return [open_event(keys, r) for r in rows]


def _subtype(event: dict[str, Any]) -> str:
    return str(event["subtype"][-1]["code"])


def _patients(event: dict[str, Any]) -> list[str]:
    return [
        e["what"]["reference"]
        for e in event.get("entity", [])
        if e.get("role", {}).get("code") == "1"
    ]


@pytest.fixture
def token(anonymous: TestClient, db: Database) -> str:
    cid = register_backend(db, client_id="audited")
    r = anonymous.post("/auth/token", data=backend_form(cid, TOKEN_URL, "system/Patient.cruds"))
    return str(r.json()["access_token"])


def test_reads_writes_and_searches_are_recorded(
    anonymous: TestClient, db: Database, keys: KeyRing, token: str
) -> None:
    auth = {"Authorization": f"Bearer {token}", **FHIR}
    a = anonymous.post("/fhir/Patient", json=make_patient("Alpha"), headers=auth).json()["id"]
    b = anonymous.post("/fhir/Patient", json=make_patient("Beta"), headers=auth).json()["id"]
    assert anonymous.get(f"/fhir/Patient/{a}", headers=auth).status_code == 200
    assert (
        anonymous.get("/fhir/Patient", params={"_count": "10"}, headers=auth).json()["total"] == 2
    )
    assert anonymous.get("/fhir/Appointment", headers=auth).status_code == 403
    events = _events(db, keys)
    kinds = [(_subtype(e), e["action"], e["outcome"]) for e in events]
    assert kinds[0] == ("token-issued", "E", "0")
    assert kinds[1:] == [
        ("create", "C", "0"),
        ("create", "C", "0"),
        ("read", "R", "0"),
        ("search-type", "E", "0"),  # one per patient in the answer
        ("search-type", "E", "0"),
        ("search-type", "E", "4"),  # refused: recorded as a minor failure
    ]
    assert _patients(events[1]) == [f"Patient/{a}"] and _patients(events[3]) == [f"Patient/{a}"]
    assert sorted(p for e in events[4:6] for p in _patients(e)) == sorted(
        [f"Patient/{a}", f"Patient/{b}"]
    )
    query = next(e for e in events[4]["entity"] if e["role"]["code"] == "24")["query"]
    assert base64.b64decode(query).decode().startswith("Patient?")
    for event in events[1:]:
        client = event["agent"][0]
        assert client["who"]["identifier"]["value"] == "audited"
        assert client["network"]["address"]
        assert event["source"]["site"] == "http://testserver/fhir"
    assert "outcomeDesc" in events[-1]
    raw = b"".join(orjson.dumps(e) for e in events)
    assert token.encode() not in raw  # tokens never, only their jti
    with db.read() as conn:
        assert verify(conn, keys).intact


def test_unauthenticated_requests_are_recorded(
    anonymous: TestClient, db: Database, keys: KeyRing
) -> None:
    assert anonymous.get("/fhir/Patient/x").status_code == 401
    (event,) = _events(db, keys)
    assert _subtype(event) == "read" and event["outcome"] == "4"
    assert event["agent"][0]["who"]["identifier"]["value"] == "anonymous"


def test_replayed_assertion_is_a_security_alert(
    anonymous: TestClient, db: Database, keys: KeyRing
) -> None:
    cid = register_backend(db, client_id="replayer")
    form = backend_form(cid, TOKEN_URL)
    assert anonymous.post("/auth/token", data=form).status_code == 200
    assert anonymous.post("/auth/token", data=form).status_code in (400, 401)
    events = _events(db, keys)
    assert [(e["type"]["code"], e["outcome"]) for e in events] == [
        ("110114", "0"),
        ("110114", "4"),
        ("110113", "8"),
    ]


def test_no_access_without_its_record(
    anonymous: TestClient, db: Database, keys: KeyRing, token: str
) -> None:
    auth = {"Authorization": f"Bearer {token}", **FHIR}
    existing = anonymous.post("/fhir/Patient", json=make_patient("Kept"), headers=auth).json()
    with audit_writes_refused(db):
        created = anonymous.post("/fhir/Patient", json=make_patient("Lost"), headers=auth)
        assert created.status_code == 503
        assert created.json()["issue"][0]["code"] == "transient"
        read = anonymous.get(f"/fhir/Patient/{existing['id']}", headers=auth)
        assert read.status_code == 503 and "Kept" not in read.text
    found = anonymous.get("/fhir/Patient", params={"family": "Lost"}, headers=auth).json()
    assert found["total"] == 0  # the write rolled back with its record


def _bearer(anonymous: TestClient, db: Database, scope: str) -> dict[str, str]:
    from tests.smart import backend_token

    token = backend_token(anonymous, db, scope=scope, registered=True)
    return {"Authorization": f"Bearer {token}", **FHIR}


def test_compliance_queries(anonymous: TestClient, db: Database, keys: KeyRing) -> None:
    writer = _bearer(anonymous, db, "system/Patient.cruds")
    a = anonymous.post("/fhir/Patient", json=make_patient("Alpha"), headers=writer).json()["id"]
    b = anonymous.post("/fhir/Patient", json=make_patient("Beta"), headers=writer).json()["id"]
    for _ in range(3):
        anonymous.get(f"/fhir/Patient/{a}", headers=writer)
    anonymous.get(f"/fhir/Patient/{b}", headers=writer)
    auditor = _bearer(anonymous, db, "system/AuditEvent.rs")
    about_a = anonymous.get(
        "/fhir/AuditEvent",
        params={"patient": f"Patient/{a}", "date": "ge2000-01-01", "_sort": "-date"},
        headers=auditor,
    ).json()
    assert about_a["total"] == 4  # created once, read three times
    entries = [e["resource"] for e in about_a["entry"]]
    assert [e["action"] for e in entries] == ["R", "R", "R", "C"]  # newest first
    assert entries[0]["recorded"] >= entries[-1]["recorded"]
    page = anonymous.get(
        "/fhir/AuditEvent", params={"action": "R", "_count": "2"}, headers=auditor
    ).json()
    assert page["total"] == 4 and len(page["entry"]) == 2
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    rest = anonymous.get(nxt.removeprefix("http://testserver"), headers=auditor).json()
    seen = {e["resource"]["id"] for e in page["entry"] + rest["entry"]}
    assert len(seen) == 4
    assert [link["relation"] for link in rest["link"]] == ["self"]  # no empty page after it
    future = anonymous.get("/fhir/AuditEvent", params={"date": "ge2999"}, headers=auditor)
    assert future.json()["total"] == 0
    one = entries[0]["id"]
    assert anonymous.get(f"/fhir/AuditEvent/{one}", headers=auditor).json()["id"] == one
    by_client = anonymous.get(
        "/fhir/AuditEvent", params={"agent": "nobody", "outcome": "0"}, headers=auditor
    )
    assert by_client.json()["total"] == 0
    # a Patient entity is indexed once (as the patient) and found by either parameter
    as_entity = anonymous.get(
        "/fhir/AuditEvent", params={"entity": f"Patient/{b}"}, headers=auditor
    ).json()
    assert as_entity["total"] == 2  # created and read once
    either = anonymous.get(
        "/fhir/AuditEvent", params={"entity": f"Patient/{a},Patient/{b}"}, headers=auditor
    ).json()
    assert either["total"] == 6


@pytest.mark.parametrize(
    ("name", "value"),
    [("_count", "²"), ("_cursor", "²"), ("_cursor", str(2**64))],
    ids=["count-superscript", "cursor-superscript", "cursor-past-int8"],
)
def test_bad_paging_of_the_audit_log_is_400(
    anonymous: TestClient, db: Database, name: str, value: str
) -> None:
    """Each was a 500: isdigit() admits "²", which int() refuses; SQLite's driver overflows
    past 8 bytes."""
    auditor = _bearer(anonymous, db, "system/AuditEvent.rs")
    r = anonymous.get("/fhir/AuditEvent", params={name: value}, headers=auditor)
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_only_compliance_may_query(anonymous: TestClient, db: Database) -> None:
    for scope in ("system/*.rs", "system/*.cruds", "system/Patient.rs"):
        r = anonymous.get("/fhir/AuditEvent", headers=_bearer(anonymous, db, scope))
        assert r.status_code == 403, scope


@pytest.mark.parametrize(
    ("registered", "asked"),
    [
        ("system/*.cruds", "system/AuditEvent.rs"),
        ("system/*.*", "system/AuditEvent.read"),
        ("system/*.read", "system/AuditEvent.read"),
        ("system/*.rs", "system/AuditEvent.rs"),
    ],
)
def test_a_wildcard_client_is_not_granted_the_audit_log(
    anonymous: TestClient, db: Database, registered: str, asked: str
) -> None:
    """A client registered for a wildcard asks for the audit log by name: the token endpoint
    grants none of it, and the log stays closed to it."""
    cid = register_backend(db, client_id="wildcard", scope=registered)
    alone = anonymous.post("/auth/token", data=backend_form(cid, TOKEN_URL, asked))
    assert alone.status_code == 400 and alone.json()["error"] == "invalid_scope", alone.text
    mixed = anonymous.post(
        "/auth/token", data=backend_form(cid, TOKEN_URL, f"{asked} system/Patient.rs")
    )
    assert mixed.status_code == 200 and mixed.json()["scope"] == "system/Patient.rs"
    bearer = {"Authorization": f"Bearer {mixed.json()['access_token']}"}
    assert anonymous.get("/fhir/AuditEvent", headers=bearer).status_code == 403


def test_stripping_the_audit_index_is_found(
    anonymous: TestClient, db: Database, keys: KeyRing
) -> None:
    """The attack: with the guard lifted, delete a patient's rows from ``audit_index``, and the
    compliance query no longer finds the records about them; add one, and a record about
    someone else shows under them. ``verify`` rebuilds the index from the records and reports
    every missing and extra row."""
    writer = _bearer(anonymous, db, "system/Patient.cruds")
    a = anonymous.post("/fhir/Patient", json=make_patient("Alpha"), headers=writer).json()["id"]
    b = anonymous.post("/fhir/Patient", json=make_patient("Beta"), headers=writer).json()["id"]
    anonymous.get(f"/fhir/Patient/{a}", headers=writer)
    auditor = _bearer(anonymous, db, "system/AuditEvent.rs")

    def about(patient: str) -> int:
        params = {"patient": f"Patient/{patient}"}
        found = anonymous.get("/fhir/AuditEvent", params=params, headers=auditor)
        return int(found.json()["total"])

    assert about(a) == 2
    with db.read() as conn:
        assert verify(conn, keys).intact
    rows_for = select(AuditIndex.seq).where(AuditIndex.param == "patient")
    with db.write() as conn:
        for statement in audit_guard_drop(db.dialect):
            conn.execute(text(statement))
        of_a = conn.execute(rows_for.filter_by(digest=_patient(keys, a))).scalars().all()
        b_created = min(conn.execute(rows_for.filter_by(digest=_patient(keys, b))).scalars())
        conn.execute(delete(AuditIndex).filter_by(param="patient", digest=_patient(keys, a)))
    assert about(a) == 0  # hidden
    with db.read() as conn:
        report = verify(conn, keys)
    assert not report.intact
    assert {(f.kind, f.seq) for f in report.findings} == {("index-missing", s) for s in of_a}
    with db.write() as conn:
        conn.execute(
            insert(AuditIndex).values(seq=b_created, param="patient", digest=_patient(keys, a))
        )
    assert about(a) == 1  # a record about B shows under A
    with db.read() as conn:
        found = {(f.kind, f.seq) for f in verify(conn, keys).findings}
    assert found == {("index-missing", s) for s in of_a} | {("index-extra", b_created)}


def _patient(keys: KeyRing, patient: str) -> bytes:
    return digest(keys, "patient", f"Patient/{patient}")


def test_audit_log_cannot_be_changed_through_the_api(anonymous: TestClient, db: Database) -> None:
    auditor = _bearer(anonymous, db, "system/AuditEvent.rs system/*.cruds")
    event = {"resourceType": "AuditEvent", "id": "x"}
    for method, path in [
        ("POST", "/fhir/AuditEvent"),
        ("PUT", "/fhir/AuditEvent/x"),
        ("PATCH", "/fhir/AuditEvent/x"),
        ("DELETE", "/fhir/AuditEvent/x"),
    ]:
        for headers in (auditor, FHIR):
            r = anonymous.request(method, path, json=event, headers=headers)
            assert r.status_code == 405, (method, path, r.text)
    meta = anonymous.get("/fhir/metadata").json()
    audit = next(r for r in meta["rest"][0]["resource"] if r["type"] == "AuditEvent")
    assert [i["code"] for i in audit["interaction"]] == ["read", "search-type"]


def test_bundle_entries_are_recorded_one_by_one(
    anonymous: TestClient, db: Database, keys: KeyRing
) -> None:
    auth = _bearer(anonymous, db, "system/Patient.cruds")
    pid = anonymous.post("/fhir/Patient", json=make_patient("Entry"), headers=auth).json()["id"]
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Patient/{pid}"}},
            {"request": {"method": "GET", "url": "Appointment/nope"}},
            {"request": {"method": "POST", "url": "Patient"}, "resource": make_patient("Two")},
        ],
    }
    r = anonymous.post("/fhir", json=batch, headers=auth)
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["200", "403", "201"]
    events = _events(db, keys)[-3:]
    assert [(_subtype(e), e["outcome"]) for e in events] == [
        ("read", "0"),
        ("read", "4"),
        ("create", "0"),
    ]
    urn = "urn:uuid:0b3c8a4e-3f1c-4c57-9a5f-1d2e3f4a5b6c"
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": urn, "request": {"method": "POST", "url": "Patient"},
             "resource": make_patient("Linked")},
        ],
    }  # fmt: skip
    reader = _bearer(anonymous, db, "system/Patient.rs")
    assert anonymous.post("/fhir", json=transaction, headers=reader).status_code == 403
