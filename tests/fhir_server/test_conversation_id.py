"""``X-Conversation-Id``: checked, recorded on the request's AuditEvents, and searchable with
``AuditEvent?entity:identifier=urn:fhir-sched:conversation|<id>``; on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from resources.sql.engine import Database
from security.audit import verify
from security.crypto import KeyRing
from tests.builders import FHIR_JSON, create, make_patient
from tests.smart import backend_token

CONVERSATION = "urn:fhir-sched:conversation"


def _audit(client: TestClient, db: Database, **params: str) -> Any:
    token = backend_token(client, db, "system/AuditEvent.rs", registered=True)
    return client.get(
        "/fhir/AuditEvent", params=params, headers={"Authorization": f"Bearer {token}"}
    )


def _conversations(event: dict[str, Any]) -> list[str]:
    return [
        e["what"]["identifier"]["value"]
        for e in event.get("entity", [])
        if e.get("what", {}).get("identifier", {}).get("system") == CONVERSATION
    ]


def test_each_audit_event_of_the_request_names_its_conversation(
    client: TestClient, db: Database, keys: KeyRing
) -> None:
    conv = {"X-Conversation-Id": "conv-2026.03_01"}
    made = client.post("/fhir/Patient", json=make_patient("Talk"), headers={**FHIR_JSON, **conv})
    assert made.status_code == 201, made.text
    read = client.get(f"/fhir/Patient/{made.json()['id']}", headers=conv)
    assert read.status_code == 200
    missing = client.get("/fhir/Patient/nope", headers=conv)  # a failure is recorded too
    assert missing.status_code == 404
    create(client, make_patient("Other"))  # another request, no conversation
    found = _audit(client, db, **{"entity:identifier": f"{CONVERSATION}|conv-2026.03_01"})
    assert found.status_code == 200, found.text
    events = [e["resource"] for e in found.json()["entry"]]
    assert sorted(e["subtype"][0]["code"] for e in events) == ["create", "read", "read"]
    assert all(_conversations(e) == ["conv-2026.03_01"] for e in events)
    assert sorted(e["outcome"] for e in events) == ["0", "0", "4"]
    other = _audit(client, db, **{"entity:identifier": f"{CONVERSATION}|conv-other"})
    assert other.json()["total"] == 0
    with db.read() as conn:  # the conversation's index rows are the ones verify rebuilds
        assert verify(conn, keys).intact


@pytest.mark.parametrize(
    "value",
    ["", "x" * 65, "has space", "semi;colon", "slash/", "plus+"],
    ids=["empty", "too-long", "space", "semicolon", "slash", "plus"],
)
def test_a_malformed_conversation_id_is_400(client: TestClient, value: str) -> None:
    r = client.get("/fhir/Patient", headers={"X-Conversation-Id": value.encode().decode("latin-1")})
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "X-Conversation-Id" in r.json()["issue"][0]["diagnostics"]


def test_entity_identifier_searches_conversations_only(client: TestClient, db: Database) -> None:
    r = _audit(client, db, **{"entity:identifier": "urn:other|x"})
    assert r.status_code == 400
