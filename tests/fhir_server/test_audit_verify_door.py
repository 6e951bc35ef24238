"""``GET /audit/verify``: the chain's status for the compliance screen, open to the tokens that
may read the audit log and refused (403 OperationOutcome) to every other; each request, the
refusals too, leaves an AuditEvent ``audit verify``."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from resources.sql.engine import Database
from security.crypto import KeyRing
from tests.builders import make_patient
from tests.fhir_server.test_authz import _patient_token, bearer
from tests.fhir_server.test_hl7_doors import audit, signed_in
from tests.smart import backend_token


def test_the_compliance_officer_sees_the_chain_intact(
    anonymous: TestClient, db: Database, keys: KeyRing
) -> None:
    officer = signed_in(anonymous, db, keys, "compliance")
    resp = anonymous.get("/audit/verify", headers=officer)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["intact"] is True
    assert body["mode"] == "full"
    assert body["verified_through"]["seq"] >= 1  # the sign-in's records at least
    assert body["broken_at"] is None and body["findings"] == []
    assert set(body) == {
        "intact", "verified_through", "verified_at", "full_verified_at", "mode", "broken_at",
        "reason", "findings", "finding_count", "checkpoints", "last_checkpoint",
    }  # fmt: skip
    again = anonymous.get("/audit/verify", headers=officer).json()
    assert again["mode"] == "incremental"
    assert again["verified_through"]["seq"] > body["verified_through"]["seq"]  # its own record
    [*_, event] = audit(db, keys, "audit verify")
    assert event["type"]["code"] == "110101" and event["outcome"] == "0"


@pytest.mark.parametrize(
    ("who", "status"),
    [
        ("audit-client", 200),
        ("front-desk", 403),
        ("clinician", 403),
        ("interface", 403),
        ("patient", 403),
        ("backend", 403),
        (None, 401),
    ],
    ids=["audit-client", "front-desk", "clinician", "interface", "patient", "backend", "none"],
)
def test_only_the_audit_log_readers_see_it(
    anonymous: TestClient, db: Database, keys: KeyRing, who: str | None, status: int
) -> None:
    if who == "audit-client":
        headers = bearer(backend_token(anonymous, db, "system/AuditEvent.rs", registered=True))
    elif who == "backend":
        headers = bearer(backend_token(anonymous, db))  # system/*.cruds does not reach the log
    elif who == "patient":
        admin = bearer(backend_token(anonymous, db))
        pid = anonymous.post("/fhir/Patient", json=make_patient("Doe"), headers=admin).json()["id"]
        headers = bearer(_patient_token(anonymous, db, keys, pid, "openid patient/*.rs"))
    elif who is None:
        headers = {}
    else:
        headers = signed_in(anonymous, db, keys, who)
    resp = anonymous.get("/audit/verify", headers=headers)
    assert resp.status_code == status, resp.text
    if status != 200:
        assert resp.json()["resourceType"] == "OperationOutcome"
    [*_, event] = audit(db, keys, "audit verify")
    assert event["outcome"] == ("0" if status == 200 else "4")
