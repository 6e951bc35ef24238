"""The agent's real ``anthropic`` client against a stand-in Messages API server: what reaches
the model (the minimum: no phone numbers, identifiers or server ids), the cached system
prompt, at most five tool calls per patient message, and 429/529/timeouts retried and then
handed to staff."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.model import ClaudeModel
from agent.offline import OfflineModel
from resources.sql.engine import Database
from resources.store import Store
from security.crypto import KeyRing
from tests.agent.evaluation import standin_claude
from tests.agent.harness import World, agent_world, existing_patient
from tests.agent.standin import StandIn
from tests.smart import backend_token

pytestmark = pytest.mark.parametrize("db", ["sqlite"], indirect=True)


@pytest.fixture
def api() -> Iterator[StandIn]:
    with StandIn() as standin:
        yield standin


def _claude(api: StandIn, *, timeout: float = 5.0, retries: int = 2) -> Any:
    def make(offline: OfflineModel) -> ClaudeModel:
        return standin_claude(api, offline, timeout=timeout, retries=retries)

    return make


@pytest.fixture
def world(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path, api: StandIn
) -> Iterator[World]:
    with agent_world(db, keys, store, tmp_path, model=_claude(api)) as w:
        yield w


def _talk(world: World, texts: list[str], channel: str = "web", **kw: Any) -> tuple[str, Any]:
    row, _ = world.agent.start(channel, **kw)
    turn = None
    for text in texts:
        turn = world.agent.receive(row.id, text)
    return row.id, turn


def test_the_model_sees_only_what_the_task_needs(world: World, api: StandIn) -> None:
    existing_patient(world, "pat-2")
    cid, turn = _talk(
        world,
        [
            "Hi, follow-up with Dr. Evans next Tuesday morning please. Call me on 555-0102",
            "Maria Rivera, born 03/14/1988, MRN-1002",
            "A",
            "yes",
        ],
        channel="sms",
        address="555-0102",
    )
    assert "Done" in turn.replies[0]
    assert api.requests, "the model was asked"
    sent = json.dumps([r["json"] for r in api.requests])
    booked = world.search("Appointment", {"status": "booked"})[0]
    slots = [s["reference"].split("/")[1] for s in booked["slot"]]
    for secret in ("555-0102", "5550102", "pat-2", "MRN-1002", booked["id"], cid, *slots):
        assert secret not in sent, secret
    assert "Patient/" not in sent and "Slot/" not in sent and "Practitioner/" not in sent
    undated = re.sub(r"\d{4}-\d{2}-\d{2}", "", sent)  # a birth date the patient gave is needed
    assert not re.search(r"\d{3}[-. ]?\d{4}", undated)  # no phone number, in any form
    assert "[phone-1]" in sent  # masked, kept for the agent


def test_the_system_prompt_is_cached(world: World, api: StandIn) -> None:
    _talk(world, ["hello", "are you a bot?"])
    first, *rest = api.requests
    system = first["json"]["system"]
    assert system[0]["cache_control"] == {"type": "ephemeral"}
    assert all(r["json"]["system"][0] == system[0] for r in rest)
    assert len(api.requests) >= 2


def test_at_most_five_tool_calls_per_patient_message(world: World, api: StandIn) -> None:
    calls = {"n": 0}

    def greedy(req: dict[str, Any]) -> dict[str, Any]:  # a model that never stops looking
        last = req["messages"][-1]["content"]
        answered = isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)
        if answered and calls["n"] >= 8:
            return {"content": [{"type": "text", "text": "Sorry."}]}
        calls["n"] += 1
        return {
            "content": [
                {
                    "type": "tool_use",
                    "name": "find_options",
                    "input": {
                        "visit_type": "follow-up",
                        "when": "next week",
                        "given_name": "Ann",
                        "family_name": "Greedy",
                        "birth_date": "1980-01-01",
                    },
                }
            ]
        }

    api.brain = greedy
    cid, turn = _talk(world, ["book me anything"])
    assert turn.tool_calls.count("find_options") == 5
    token = backend_token(world.client, world.db, "system/AuditEvent.rs", registered=True)
    r = world.client.get(
        "/fhir/AuditEvent",
        params={"entity:identifier": f"urn:fhir-sched:conversation|{cid}", "_count": "100"},
        headers={"Authorization": f"Bearer {token}"},
    )
    finds = [
        e for e in r.json().get("entry", []) if "ITI-115" in json.dumps(e["resource"]["subtype"])
    ]
    assert len(finds) == 5  # the sixth call never reached the server


def test_overloaded_and_rate_limited_then_handed_over(world: World, api: StandIn) -> None:
    api.fail_next(529, count=1)
    _, turn = _talk(world, ["are you a bot?"])
    assert turn.state == "agent" and "automated" in turn.replies[0]  # retried, answered
    api.fail_next(429, count=20)
    cid, turn = _talk(world, ["hello"])
    assert turn.handed_over and turn.state == "queued"
    assert "staff" in turn.replies[0]
    assert world.agent.conversation(cid).facts["handover"]["reason"] == "model_unavailable"
    lines = world.agent.transcript(cid)
    assert [x.sender for x in lines] == ["agent", "patient", "agent"]  # nothing dropped


def test_a_model_that_times_out_is_handed_over(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path, api: StandIn
) -> None:
    with agent_world(db, keys, store, tmp_path, model=_claude(api, timeout=0.3, retries=1)) as w:
        api.delay_next(2.0, count=5)
        cid, turn = _talk(w, ["hello"])
        assert turn.handed_over
        assert w.agent.conversation(cid).facts["handover"]["reason"] == "model_unavailable"
        assert len(api.requests) == 2  # the first try and one retry
