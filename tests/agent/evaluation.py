"""The booking agent's evaluation: every conversation of ``tests/agent/conversations/`` run
through the real agent against the real server, graded on the end state and the audit trail
(``tests/agent/grading.py``), and summed up in a few figures.

Two model paths answer the same conversations:

* ``offline``: the offline model (``agent/offline.py``) called directly;
* ``claude-standin``: the real ``anthropic`` client (``agent.model.ClaudeModel``) against the
  stand-in Messages API (``tests/agent/standin.py``), whose brain is that same offline model
  reading each request the SDK sends. What differs is everything between the agent and a
  model: the SDK's request building and parsing, the wire format, the tool ids.

One world (server, database, agent) per path. Conversations run one after another in it: each
starts from its own virtual time, and whatever it booked (and its setup booked) is cancelled
by the front desk once it is graded, so the next one finds the calendar as it was.

    .venv/bin/python -m bench.agent_eval          # both paths, SQLite, prints the table

In pytest: ``tests/agent/test_evaluation.py``.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.model import ClaudeModel, Model
from agent.offline import OfflineModel
from agent.sms import normalize_phone
from resources.sql.engine import Database, migrate
from resources.store import Store
from security.crypto import KeyRing, generate_key_material
from tests.agent.grading import Check, Run, TurnRecord, grade
from tests.agent.harness import FHIR_JSON, World, agent_world, existing_patient, staff_book
from tests.agent.scenarios import Conversation, load, render
from tests.agent.standin import StandIn
from tests.smart import backend_token

__all__ = [
    "PATHS",
    "Evaluator",
    "Metrics",
    "Result",
    "evaluate",
    "evaluate_on_sqlite",
    "failures",
    "metrics",
    "model_path",
    "run_conversation",
    "table",
    "transcript",
]

PATHS = ("offline", "claude-standin")
ModelFactory = Callable[[OfflineModel], Model]
_CODE = re.compile(r"your code is (\d{4,8})")


@dataclass
class Result:
    conversation: Conversation
    run: Run
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self, name: str) -> bool:
        return any(c.name == name and not c.ok for c in self.checks)

    def failures(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)


@dataclass
class Metrics:
    """The figures of one path over the suite (None where nothing was there to count)."""

    path: str
    conversations: int
    passed: int  # conversations whose every check passed
    slot_accuracy: float | None  # of those expecting a booking or move: the right one(s)
    escalation_precision: float | None  # of those handed over: expected to be
    escalation_recall: float | None  # of those expected to be handed over: handed over
    tool_calls_per_booking: float | None  # tool calls in conversations that booked / bookings
    agent_ms_p50: float  # Turn.agent_ms: the agent's own time per turn, without the model's
    agent_ms_p95: float
    seconds: float = 0.0  # wall time of the whole path (world, conversations, grading)

    @property
    def completion(self) -> float:
        return self.passed / self.conversations if self.conversations else 0.0


@dataclass
class Evaluator:
    """Runs conversations in one world and reads back what they did."""

    world: World
    audit_token: str = ""
    made_existing: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.audit_token = backend_token(
            self.world.client, self.world.db, "system/AuditEvent.rs", registered=True
        )
        self.existing("pat-3")  # the patient who takes a time in the race hooks

    def existing(self, patient: str) -> None:
        if patient not in self.made_existing:
            existing_patient(self.world, patient)
            self.made_existing.add(patient)

    # -- reading the server ----------------------------------------------------------------

    def booked(self) -> dict[str, dict[str, Any]]:
        return {a["id"]: a for a in self.world.search("Appointment", {"status": "booked"})}

    def appointment(self, appointment_id: str) -> dict[str, Any]:
        r = self.world.client.get(f"/fhir/Appointment/{appointment_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def patients(self, who: dict[str, str] | None) -> list[dict[str, Any]]:
        if who is None:
            return []
        return self.world.search("Patient", {"family": who["family"], "birthdate": who["birth"]})

    def audit(self, cid: str) -> list[dict[str, Any]]:
        r = self.world.client.get(
            "/fhir/AuditEvent",
            params={"entity:identifier": f"urn:fhir-sched:conversation|{cid}", "_count": "500"},
            headers={"Authorization": f"Bearer {self.audit_token}"},
        )
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry", [])]

    def cancel(self, appointment_id: str) -> None:
        """The front desk cancels a booking (to leave the calendar as it found it)."""
        r = self.world.client.post(
            "/fhir/Appointment/$book",
            json={
                "resourceType": "Parameters",
                "parameter": [
                    {
                        "name": "appointment-resource",
                        "resource": {
                            "resourceType": "Appointment",
                            "id": appointment_id,
                            "status": "cancelled",
                        },
                    }
                ],
            },
            headers=FHIR_JSON,
        )
        assert r.status_code == 200, r.text

    # -- hooks ---------------------------------------------------------------------------

    def take(self, cid: str) -> str:
        """Someone else (pat-3, at the front desk) books the time just read back (or option
        A) between the agent's ``$find`` and its ``$book``."""
        facts = self.world.agent.conversation(cid).facts  # type: ignore[union-attr]
        label = facts.get("read_back") or "A"
        proposal = facts["options"][label]["proposal"]
        clinician = next(
            p["actor"]["reference"].split("/", 1)[1]
            for p in proposal["participant"]
            if str(p.get("actor", {}).get("reference", "")).startswith("Practitioner/")
        )
        visit = "pt-follow-up" if clinician == "pt-nguyen" else "follow-up"
        start = datetime.fromisoformat(proposal["start"])
        return str(staff_book(self.world, "pat-3", start, visit=visit, clinician=clinician)["id"])

    def code(self, phone: str) -> str:
        """The newest one-time code texted to ``phone`` (the local outbox provider)."""
        texts = self.world.agent.store.outbox(to=normalize_phone(phone))
        found = [m.group(1) for line in texts if (m := _CODE.search(line.body))]
        assert found, "no code was texted"
        return found[-1]

    # -- one conversation -----------------------------------------------------------------

    def run(self, conv: Conversation) -> Run:
        """Set the clock and the setup bookings, hold the conversation, read back what it
        left, then cancel whatever was booked during it."""
        world = self.world
        day, at = conv.now
        world.clock.now = world.at(day.on(world.monday, world.dst_day), at.hour, at.minute)
        for patient in [*conv.existing, *(s.patient for s in conv.setup)]:
            self.existing(patient)
        before = self.booked()
        setup = {
            s.name: str(
                staff_book(
                    world,
                    s.patient,
                    world.at(s.day.on(world.monday, world.dst_day), s.time.hour, s.time.minute),
                    visit=s.visit,
                    clinician=s.clinician,
                )["id"]
            )
            for s in conv.setup
        }
        patients_before = len(self.patients(conv.patient))
        row, _hello = world.agent.start(conv.channel, address=conv.phone)
        turns, errors = self.talk(row.id, conv, set(setup.values()))
        ids = {a for t in turns for a in t.booked} | set(setup.values())
        final = world.agent.conversation(row.id)
        assert final is not None
        run = Run(
            conversation=conv,
            cid=row.id,
            monday=world.monday,
            dst_day=world.dst_day,
            turns=turns,
            setup=setup,
            appointments={a: self.appointment(a) for a in ids},
            state=final.state,
            facts=final.facts,
            transcript=world.agent.transcript(row.id),
            audit=self.audit(row.id),
            patients_before=patients_before,
            patients_after=self.patients(conv.patient),
            errors=errors,
        )
        for appointment_id in set(self.booked()) - set(before):  # leave the calendar as it was
            self.cancel(appointment_id)
        return run

    def talk(
        self, cid: str, conv: Conversation, external: set[str]
    ) -> tuple[list[TurnRecord], list[str]]:
        """Send each message, noting which Appointments each turn booked or ended (those
        booked by the setup and the hooks, ``external``, are not the agent's)."""
        world = self.world
        booked = self.booked()
        turns: list[TurnRecord] = []
        code: str | None = None
        errors: list[str] = []
        for step in conv.turns:
            world.clock.now += timedelta(minutes=step.advance)
            try:
                text = render(step.say, world.monday, world.dst_day, code)
            except ValueError as exc:  # nothing to type: the conversation cannot go on
                errors.append(f"turn {len(turns) + 1}: {exc}")
                break
            turn = world.agent.receive(cid, text)
            now_booked = self.booked()
            record = TurnRecord(
                text, turn.replies, list(turn.tool_calls), turn.agent_ms, world.clock.now
            )
            record.booked = [a for a in now_booked if a not in booked and a not in external]
            record.cancelled = [a for a in booked if a not in now_booked]
            turns.append(record)
            booked = now_booked
            try:
                if step.after == "take":
                    external.add(self.take(cid))
                    booked = self.booked()
                elif step.after == "code":
                    assert step.code_to is not None
                    code = self.code(step.code_to)
            except (AssertionError, KeyError) as exc:  # graded as a failure; the rest goes on
                errors.append(f"hook {step.after} after turn {len(turns)}: {exc!r}")
        return turns, errors


def run_conversation(evaluator: Evaluator, conv: Conversation) -> Result:
    run = evaluator.run(conv)
    return Result(conv, run, grade(run, evaluator.world.cfg))


def standin_claude(
    api: StandIn, offline: OfflineModel, *, timeout: float = 10.0, retries: int = 0
) -> ClaudeModel:
    """The real ``anthropic`` client (:class:`ClaudeModel`) against the stand-in ``api``,
    whose brain answers each request with ``offline``'s rules."""

    def brain(request: dict[str, Any]) -> dict[str, Any]:
        reply = offline.reply(
            system=request["system"], messages=request["messages"], tools=request["tools"]
        )
        return {"content": reply.content, "stop_reason": reply.stop_reason}

    api.brain = brain
    config = AgentConfig(
        fhir_base="http://unused/fhir",
        token_url="http://unused/auth/token",
        client_id="unused",
        key_file=Path("unused"),
        directory=offline.directory,
        api_key="test",
        base_url=api.url,
        model_timeout=timeout,
        model_retries=retries,
    )
    return ClaudeModel(config)


@contextlib.contextmanager
def model_path(path: str) -> Iterator[ModelFactory | None]:
    """What answers for ``path``: None for the offline model as the harness builds it, or a
    factory of the real SDK client pointed at a stand-in whose brain is that offline model."""
    if path == "offline":
        yield None
        return
    if path != "claude-standin":
        raise ValueError(f"unknown model path {path!r}; one of {PATHS}")
    with StandIn() as api:

        def build(offline: OfflineModel) -> Model:
            return standin_claude(api, offline)

        yield build
        if api.errors:
            raise api.errors[0]


def evaluate(
    db: Database,
    keys: KeyRing,
    store: Store,
    tmp_path: Path,
    *,
    path: str = "offline",
    model: ModelFactory | None = None,
    agent_extra: dict[str, Any] | None = None,
    prepare: Callable[[World], None] | None = None,
    conversations: Sequence[Conversation] | None = None,
    label: str | None = None,
) -> tuple[list[Result], Metrics]:
    """Run every conversation through one world; ``model`` replaces the path's model (the
    negative controls), ``prepare`` sees the world before the first conversation, ``label``
    names the figures' row (the path by default)."""
    convs = list(conversations if conversations is not None else load())
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        factory = model or stack.enter_context(model_path(path))
        world = stack.enter_context(
            agent_world(db, keys, store, tmp_path, model=factory, agent_extra=agent_extra)
        )
        if prepare is not None:
            prepare(world)
        evaluator = Evaluator(world)
        results = [run_conversation(evaluator, c) for c in convs]
    found = metrics(label or path, results)
    found.seconds = time.perf_counter() - started
    return results, found


def evaluate_on_sqlite(
    workdir: Path, *, path: str, conversations: Sequence[Conversation] | None = None
) -> tuple[list[Result], Metrics]:
    """:func:`evaluate` outside pytest: a migrated SQLite file and fresh keys in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    db = Database(f"sqlite:///{workdir}/fhir.db")
    try:
        migrate(db)
        keys = KeyRing.from_document(generate_key_material())
        store = Store(keys, base_url="http://testserver/fhir")
        return evaluate(db, keys, store, workdir, path=path, conversations=conversations)
    finally:
        db.dispose()


def transcript(result: Result) -> str:
    """A conversation as it went: each message, the replies, the tools called, what was
    booked, and what failed."""
    lines = [f"{result.conversation.id} ({'passed' if result.passed else 'FAILED'})"]
    for turn in result.run.turns:
        lines.append(f"  patient: {turn.text}")
        lines += [f"  agent:   {r}" for r in turn.replies]
        if turn.tool_calls or turn.booked or turn.cancelled:
            lines.append(
                f"           tools {turn.tool_calls}, booked {len(turn.booked)}, "
                f"no longer booked {len(turn.cancelled)}"
            )
    if not result.passed:
        lines.append(f"  failed: {result.failures()}")
    return "\n".join(lines)


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def metrics(path: str, results: Sequence[Result]) -> Metrics:
    expecting = [r for r in results if r.conversation.expects_booking]
    slot_ok = sum(1 for r in expecting if not r.failed("bookings"))
    expected_handover = {r.conversation.id for r in results if r.conversation.expect.handover}
    actual_handover = {r.conversation.id for r in results if r.run.handed_over}
    both = len(expected_handover & actual_handover)
    made = sum(len(r.run.own) for r in results)
    calls = sum(len(t.tool_calls) for r in results if r.run.own for t in r.run.turns)
    times = [t.agent_ms for r in results for t in r.run.turns]
    return Metrics(
        path=path,
        conversations=len(results),
        passed=sum(1 for r in results if r.passed),
        slot_accuracy=_ratio(slot_ok, len(expecting)),
        escalation_precision=_ratio(both, len(actual_handover)),
        escalation_recall=_ratio(both, len(expected_handover)),
        tool_calls_per_booking=calls / made if made else None,
        agent_ms_p50=_percentile(times, 0.50),
        agent_ms_p95=_percentile(times, 0.95),
    )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f} %"


def table(rows: Sequence[Metrics]) -> str:
    """The figures of each path, one line each."""
    head = (
        "path",
        "convs",
        "passed",
        "completion",
        "slot acc.",
        "esc. precision",
        "esc. recall",
        "tools/booking",
        "agent ms p50",
        "p95",
        "wall s",
    )
    lines = [head]
    for m in rows:
        lines.append(
            (
                m.path,
                str(m.conversations),
                str(m.passed),
                _pct(m.completion),
                _pct(m.slot_accuracy),
                _pct(m.escalation_precision),
                _pct(m.escalation_recall),
                "-" if m.tool_calls_per_booking is None else f"{m.tool_calls_per_booking:.2f}",
                f"{m.agent_ms_p50:.1f}",
                f"{m.agent_ms_p95:.1f}",
                f"{m.seconds:.1f}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def failures(results: Sequence[Result]) -> str:
    """The conversations that failed, each with what failed."""
    return "\n".join(f"{r.conversation.id}: {r.failures()}" for r in results if not r.passed)
