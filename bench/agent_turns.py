"""The booking agent's own time per turn, with many conversations at once, over real HTTP.

    .venv/bin/python -m bench.agent_turns --db sqlite        # and --db postgresql
    .venv/bin/python -m bench.agent_turns --conversations 50 --rounds 2 --think 3

The target (the agent's own time per turn, excluding the model's: p95 <= 100 ms with 50
conversations at once) is about ``Turn.agent_ms`` (``agent/engine.py``): from the stored
conversation being read to the reply being saved, less the time spent waiting for the model.
It holds the tools (``agent/tools.py``: their ``$find`` and ``$book`` calls over HTTP, the
token), the engine's own work and the save of the conversation (sealed).

Loads the demo clinic (``fhir_server.demo.load_demo``: the clinic file's Slots for ``--weeks``,
its patients, clients and the agent's client, its key beside the key file) into a fresh
database, starts the real server (``fhir-sched serve``, one uvicorn worker, the demo clinic
file), and in this process builds the agent as the server builds it
(``fhir_server.agent_runtime.build_agent``: the same settings, key ring and clinic; its FHIR
client a real ``httpx.Client`` with the default pool, to the server's URL) with the offline
model (``agent/offline.py``). Then ``--rounds`` times, ``--conversations`` web-chat
conversations (one thread each) start together at a barrier. Each is a scripted patient with a
name and birth date of their own who asks for a new-patient visit or a physical therapy
evaluation (next week, or a day of the next four weeks, some with a part of the day, a time or
a clinician), gives their name and birth date, picks option A, B or C and says yes to the
read-back; about a sixth then cancel it and a sixth move it a week later (therapy evaluations
only: ``$find`` cannot say which booking is being moved, so a new patient holding their
new-patient visit is offered no other). Conversations that pick the same time collide as
patients do (409: "taken", new options); the patient then picks any of the new options, and
follows the agent (another day, then "the soonest", when nothing is open) until the flow is
done, refused, handed over or out of messages. ``--think S``: patients take S seconds on
average to answer (default 0: every conversation is always mid-turn, the harshest reading of
"at once"). ``--agent-threads N``: at most N turns at once, as the server's pool allows
(``FHIRSCHED_AGENT_THREADS``, 16 by default); the wait for a place is reported apart.

Every turn's ``agent_ms`` is kept, with the wall time of ``Agent.receive`` (which also stores
the patient's message first, and waits for the model) and its thread's CPU less the model's.
Seams handed to ``build_agent``, not patches, split the agent's time: the HTTP client's
transport times each request (``$find``, ``$book``, the token) and tags it with an
``X-Request-Id`` under which the server (logging at info) records its own time, so each call
splits into the server's app and what lies outside it; the ``Database`` times each unit of work
on the agent's tables; the model is wrapped to time its replies (wall, and this thread's CPU).
Around each round: the CPU of this process, of the server and (PostgreSQL) of this run's
backends, and what those backends were doing (``pg_stat_activity`` every 20 ms, the server's
and the agent's apart).

What differs from the agent inside the server: here it runs in a process of its own, so the
server's event loop does not share its interpreter lock (in the server it does), while the
offline model's CPU does (a remote model's waiting would not: its share is printed); and on
SQLite two processes write one file, so the agent's writes and the server's wait for each
other in SQLite's busy handler (sleeps of up to 100 ms) instead of queueing on the one writer
lock of a single process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

from agent.engine import Agent
from agent.offline import OfflineModel
from bench.common import PG_URL, backend_cpu, database, machine_speed, percentiles, save, serve
from fhir_server.agent_runtime import agent_config, build_agent, directory_of
from fhir_server.demo import DEMO_CLINIC, load_demo
from fhir_server.keyring import open_keys
from fhir_server.settings import Settings
from resources.sql.engine import Database
from scheduling.config import ClinicConfig, load_clinic_config

TARGET_P95_MS = 100.0
MAX_MESSAGES = 16  # a patient who has not got there by then gives up (counted as incomplete)
GIVEN = [
    "Alma", "Bruno", "Clara", "Dmitri", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas",
    "Kira", "Leon", "Mira", "Nils", "Olga", "Pavel", "Rosa", "Stefan", "Tilda", "Viktor",
]  # fmt: skip
FAMILY = [
    "Abbott", "Barnes", "Castillo", "Dalton", "Eklund", "Fischer", "Gallo", "Hartmann", "Ivers",
    "Jansen", "Keller", "Lindgren", "Moreau", "Novak", "Ortega", "Petrov", "Quinn", "Rossi",
    "Sandoval", "Thorne",
]  # fmt: skip
NEW, PT = "new patient visit", "physical therapy evaluation"
DAYS = {NEW: (0, 1, 2, 3), PT: (0, 2, 4)}  # weekdays the visit has clinicians (the demo clinic)
DONE = re.compile(r"on \w+day, (\w+ \d{1,2}, \d{4}) at")


# -- what the agent spends its time on: seams handed to build_agent ---------------------------


class Probe(threading.local):
    """This thread's timings since :meth:`reset` (one conversation per thread)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.http: list[tuple[str, int, float, str]] = []  # (operation, status, ms, request id)
        self.store: list[tuple[str, float]] = []  # (read | write, ms), in order
        self.model: list[tuple[float, float]] = []  # (wall ms, this thread's CPU ms)


PROBE = Probe()


def _operation(url: httpx.URL) -> str:
    path = url.path
    if path.endswith("/auth/token"):
        return "token"
    return path.rsplit("/", 1)[-1]  # $find, $book


class TimedTransport(httpx.BaseTransport):
    """The default HTTP transport, timing each request until its body is read."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()  # what httpx.Client() makes: the default pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # the server logs each request's own time under this id (event http.request)
        request_id = request.headers["X-Request-Id"] = f"bench-{uuid.uuid4().hex}"
        started = time.perf_counter()
        status = 0
        try:
            response = self._inner.handle_request(request)
            status = response.status_code
            response.read()
            return response
        finally:
            took = (time.perf_counter() - started) * 1000
            PROBE.http.append((_operation(request.url), status, took, request_id))

    def close(self) -> None:
        self._inner.close()


class TimedDatabase(Database):
    """The agent's database, timing each unit of work (waiting for the writer included)."""

    @contextlib.contextmanager
    def read(self) -> Iterator[Any]:
        started = time.perf_counter()
        try:
            with super().read() as conn:
                yield conn
        finally:
            PROBE.store.append(("read", (time.perf_counter() - started) * 1000))

    @contextlib.contextmanager
    def write(self) -> Iterator[Any]:
        started = time.perf_counter()
        try:
            with super().write() as conn:
                yield conn
        finally:
            PROBE.store.append(("write", (time.perf_counter() - started) * 1000))


class TimedModel:
    """The offline model, timing each reply (wall, and this thread's CPU)."""

    def __init__(self, inner: OfflineModel) -> None:
        self.inner = inner
        self.label = inner.label

    def reply(self, **request: Any) -> Any:
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return self.inner.reply(**request)
        finally:
            PROBE.model.append(
                ((time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000)
            )


# Agent.receive = accept (read, write: the patient's message) + answer (read, then the turn):
# the agent's own time starts after these three units of work.
BEFORE_THE_TURN = 3


# -- the patients ---------------------------------------------------------------------------


@dataclass
class Patient:
    n: int
    given: str
    family: str
    born: str  # as they write it
    visit: str
    opening: str
    flow: str  # book | cancel | move
    letter: str  # their first pick among the options
    other_day: str  # where they look next when nothing is open
    rnd: random.Random  # their later picks

    @property
    def identity(self) -> str:
        return f"{self.given} {self.family}, born {self.born}"


def spoken(day: date) -> str:
    return f"{day:%B} {day.day}"


def patients(count: int, first: int, today: date, rnd: random.Random) -> list[Patient]:
    """``count`` scripted patients, numbered from ``first`` (distinct names and birth dates),
    asking for days spread over the next four weeks."""
    out = []
    ahead = [today + timedelta(days=k) for k in range(1, 29)]
    for n in range(first, first + count):
        given = GIVEN[n % len(GIVEN)]
        family = FAMILY[(n // len(GIVEN)) % len(FAMILY)]
        if n >= len(GIVEN) * len(FAMILY):
            family += f"-{FAMILY[(n // (len(GIVEN) * len(FAMILY))) % len(FAMILY)]}"
        birth = date(1950, 1, 1) + timedelta(days=97 * n % 20000)
        born = birth.strftime("%m/%d/%Y") if n % 2 else birth.isoformat()
        visit = PT if n % 3 == 1 else NEW
        days = [d for d in ahead if d.weekday() in DAYS[visit]]
        day, other = rnd.choice(days), rnd.choice(days[len(days) // 2 :])
        hour = rnd.randrange(10, 15)
        opening = [
            f"I'd like a {visit} next week",
            f"Can I book a {visit} on {spoken(day)}?",
            f"I need a {visit} on {spoken(day)} {rnd.choice(['morning', 'afternoon'])} please",
            f"Hi, do you have a {visit} on {spoken(day)} at {hour % 12 or 12}"
            f"{'am' if hour < 12 else 'pm'}?",
            f"A {visit} on {spoken(day)} would be great"
            + (" with Dr. Evans" if visit == NEW else ""),
        ][n % 5]
        # moves only of therapy evaluations: $find has no way to say which booking is being
        # moved, so a new patient holding their new-patient visit is offered no other
        flow = rnd.choices(
            ["book", "cancel", "move"], weights=[2, 1, 3] if visit == PT else [4, 1, 0]
        )[0]
        letter = rnd.choice("ABC")
        out.append(
            Patient(
                n, given, family, born, visit, opening, flow, letter, spoken(other),
                random.Random(rnd.random()),
            )
        )  # fmt: skip
    return out


@dataclass
class TurnRecord:
    round: int
    conversation: int
    said: str  # what kind of message the patient sent
    tools: list[str]
    agent_ms: float
    wall_ms: float
    queued_ms: float  # waiting for a place among --agent-threads
    model_ms: float
    model_cpu_ms: float
    cpu_ms: float  # this thread's CPU in Agent.receive, less the model's (the agent's own)
    http: list[tuple[str, int, float, str]]
    store_ms: float  # the agent's tables, inside agent_ms
    before_ms: float  # the patient's message stored and the conversation read, before it


@dataclass
class Outcome:
    done: str | None = None  # booked | cancelled | moved, when the flow got there
    why: str = ""  # otherwise: refused, handed over, no open times, out of messages, ...
    bookings: int = 0
    collisions: int = 0  # a booking refused as taken (409), new options offered
    asked_again: int = 0  # the agent asked again for the visit or the patient's details
    looked_elsewhere: int = 0  # nothing open: the patient named another day, then "soonest"
    nothing_open: int = 0  # times in a row (this booking or move)
    turns: list[TurnRecord] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)  # the agent's, in order


def respond(patient: Patient, reply: str, out: Outcome) -> tuple[str, str] | None:
    """The patient's next message and its kind, or None when the conversation is over (then
    ``out.done`` or ``out.why`` says how)."""
    if reply.startswith("Done: you're booked"):
        out.bookings += 1
        if patient.flow == "book":
            out.done = "booked"
            return None
        if patient.flow == "cancel":
            return "Please cancel my appointment", "cancel"
        m = DONE.search(reply)  # a week later: the same weekday, so the same clinician works
        booked = datetime.strptime(m.group(1), "%B %d, %Y").date() if m else None
        out.nothing_open = 0
        return (
            f"Can I move it to {spoken(booked + timedelta(days=7)) if booked else 'next week'}?",
            "move",
        )
    if reply.startswith("Done: you're moved"):
        out.bookings += 1
        out.done = "moved"
        return None
    if " is cancelled" in reply:
        out.done = "cancelled"
        return None
    if "Please confirm" in reply:
        return "yes", "yes"
    if "Which would you like?" in reply:
        if not out.collisions:
            return patient.letter, "option"
        letters = re.findall(r"\b([A-F])\) ", reply)  # after a collision: any of those offered
        return patient.rnd.choice(letters or ["A"]), "option"
    if "couldn't find any open times" in reply:
        out.nothing_open += 1
        if out.nothing_open <= 2:
            out.looked_elsewhere += 1
        if out.nothing_open == 1:
            return f"What about {patient.other_day}?", "elsewhere"
        if out.nothing_open == 2:
            return "The soonest available then", "elsewhere"
        out.why = "no open times"
        return None
    if "What kind of visit is it" in reply:  # its context no longer holds the first message
        out.asked_again += 1
        return f"A {patient.visit}, please. {patient.identity}", "asked again"
    if "full name and date of birth" in reply:
        if out.turns and out.turns[-1].said != "opening":
            out.asked_again += 1
        return patient.identity, "identity"
    if "couldn't cancel it" in reply and "notice" in reply:
        out.why = "cancel refused: less than the clinic's notice"
        return None
    if "first read back the option" in reply:
        # the model's yes named another option than the one read back (two at the same time)
        out.why = "booking refused: read-back of another option"
        return None
    out.why = f"unexpected reply: {reply[:200]}"
    return None


def converse(
    agent: Agent,
    patient: Patient,
    cid: str,
    rnd_round: int,
    barrier: threading.Barrier,
    slots: threading.Semaphore | None,
    think: float,
) -> Outcome:
    """One scripted patient, from the opening message to the flow's end."""
    out = Outcome()
    barrier.wait()
    next_message: tuple[str, str] | None = (patient.opening, "opening")
    while next_message is not None:
        if len(out.turns) == MAX_MESSAGES:
            out.why = "out of messages"
            break
        if think and out.turns:  # reading the reply and typing (uniform, mean ``think``)
            time.sleep(patient.rnd.uniform(0, 2 * think))
        message, said = next_message
        queued = time.perf_counter()
        with slots or contextlib.nullcontext():
            started, cpu = time.perf_counter(), time.thread_time()
            PROBE.reset()
            turn = agent.receive(cid, message)
            wall = (time.perf_counter() - started) * 1000
            cpu = (time.thread_time() - cpu) * 1000
        store = [took for _, took in PROBE.store]
        out.turns.append(
            TurnRecord(
                rnd_round,
                patient.n,
                said,
                turn.tool_calls,
                turn.agent_ms,
                wall,
                (started - queued) * 1000,
                sum(m for m, _ in PROBE.model),
                sum(c for _, c in PROBE.model),
                cpu - sum(c for _, c in PROBE.model),
                list(PROBE.http),
                sum(store[BEFORE_THE_TURN:]),
                sum(store[:BEFORE_THE_TURN]),
            )
        )
        if turn.tool_calls[1:2] == ["find_options"] and turn.tool_calls[0] in (
            "book",
            "reschedule",
        ):
            out.collisions += 1
        reply = " ".join(turn.replies)
        out.replies.append(reply)
        if turn.handed_over:
            out.why = "handed over"
            break
        next_message = respond(patient, reply, out)
    return out


def guarded(agent: Agent, patient: Patient, *args: Any) -> Outcome:
    """:func:`converse`, its failure counted as the conversation's outcome."""
    try:
        return converse(agent, patient, *args)
    except Exception as exc:  # noqa: BLE001 - a benchmark thread: reported, not lost
        return Outcome(why=f"failed: {type(exc).__name__}")


# -- CPU around a round -----------------------------------------------------------------------


def _ticks(pid: int) -> int:
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    return 0


def children_cpu() -> float:
    """CPU seconds of this process's children (the server), from ``/proc``."""
    me, ticks = os.getpid(), 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if ppid == me:
                    ticks += _ticks(int(entry.name))
    return ticks / os.sysconf("SC_CLK_TCK")


class PgWaits(threading.Thread):
    """Samples what this run's PostgreSQL backends are doing (``pg_stat_activity``) every
    20 ms: the server's and the agent's (their ``application_name``) apart."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.name_ = make_url(url).query.get("application_name")
        self.seen: Counter[tuple[str, str]] = Counter()
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        if not self.name_:
            return
        admin = Database(PG_URL)
        query = text(
            "SELECT application_name, state, wait_event_type, wait_event FROM pg_stat_activity "
            "WHERE application_name LIKE :n AND pid <> pg_backend_pid()"
        )
        try:
            with admin.engine.connect() as conn:
                while not self._done.wait(0.02):
                    self.samples += 1
                    for who, state, kind, event in conn.execute(query, {"n": f"{self.name_}%"}):
                        if state == "idle":
                            continue  # in the pool
                        doing = f"{state}: {kind}:{event}" if kind else f"{state}: on CPU"
                        self.seen["agent" if who.endswith("-agent") else "server", doing] += 1
                    conn.rollback()
        finally:
            admin.dispose()

    def stop(self) -> dict[str, dict[str, float]]:
        """Per backend owner: what its non-idle backends were doing, as a share of samples
        (the average number of backends in that state)."""
        self._done.set()
        self.join()
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for (who, doing), n in self.seen.most_common():
            out[who][doing] = round(n / max(1, self.samples), 2)
        return dict(out)


def run_round(
    agent: Agent,
    group: list[Patient],
    rnd_round: int,
    slots: threading.Semaphore | None,
    url: str,
    think: float,
) -> tuple[list[Outcome], dict[str, float]]:
    """The conversations of ``group`` at once, each in a thread of its own, from a barrier."""
    cids = [agent.start("web")[0].id for _ in group]
    barrier = threading.Barrier(len(group) + 1)
    results: list[Outcome] = []
    threads = [
        threading.Thread(
            target=lambda p=p, c=c: results.append(
                guarded(agent, p, c, rnd_round, barrier, slots, think)
            )
        )
        for p, c in zip(group, cids, strict=True)
    ]
    for t in threads:
        t.start()
    load = os.getloadavg()[0]
    cpu, server = time.process_time(), children_cpu()
    pg = backend_cpu(url) + backend_cpu(agent_url(url))
    waits = PgWaits(url)
    waits.start()
    barrier.wait()
    wall = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall
    return results, {
        "wall_s": wall,
        "bench_cpu_s": time.process_time() - cpu,
        "server_cpu_s": children_cpu() - server,
        "postgresql_cpu_s": backend_cpu(url) + backend_cpu(agent_url(url)) - pg,
        "postgresql_backends": waits.stop(),  # type: ignore[dict-item]
        "load_1min_before": load,
        "load_1min_after": os.getloadavg()[0],
    }


def agent_url(url: str) -> str:
    """PostgreSQL: the agent's connections under an application name of their own."""
    name = make_url(url).query.get("application_name")
    return (
        url.replace(f"application_name={name}", f"application_name={name}-agent") if name else url
    )


# -- the run ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


WARM_UP = (
    "I'd like a physical therapy evaluation next week",
    "Zora Wendt, 1940-02-02",
    "C",
    "yes",
    "Please cancel my appointment",
)


def warm_up(agent: Agent) -> None:
    """One conversation alone, not counted: the token, dateparser's first parse, the pool."""
    cid = agent.start("web")[0].id
    for message in WARM_UP:
        agent.receive(cid, message)


def ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    p = percentiles(values)
    return {**{k: round(v, 1) for k, v in p.items()}, "max": round(max(values), 1)}


def server_times(log: Path) -> dict[str, float]:
    """The server's own time per request id (``http.request`` events: from the app's first
    middleware receiving the request to its answer sent)."""
    out = {}
    for raw in log.read_text().splitlines():
        if '"http.request"' not in raw:
            continue
        with contextlib.suppress(ValueError):
            event = json.loads(raw)
            if str(event.get("request_id", "")).startswith("bench-"):
                out[event["request_id"]] = float(event["duration_ms"])
    return out


def summarise(
    outcomes: list[Outcome],
    rounds: list[dict[str, float]],
    args: argparse.Namespace,
    in_server: dict[str, float],
) -> dict[str, Any]:
    turns = [t for o in outcomes for t in o.turns]
    agent = [t.agent_ms for t in turns]
    http: dict[str, list[float]] = defaultdict(list)
    app: dict[str, list[float]] = defaultdict(list)
    outside: dict[str, list[float]] = defaultdict(list)
    statuses: Counter[str] = Counter()
    for t in turns:
        for op, status, took, request_id in t.http:
            http[op].append(took)
            statuses[f"{op} {status}"] += 1
            if request_id in in_server:
                app[op].append(in_server[request_id])
                outside[op].append(took - in_server[request_id])

    def calls(t: TurnRecord, op: str) -> bool:
        return any(each[0] == op for each in t.http)

    kinds = {
        "with $find (and no $book)": [
            t.agent_ms for t in turns if calls(t, "$find") and not calls(t, "$book")
        ],
        "with $book": [t.agent_ms for t in turns if calls(t, "$book")],
        "no server call": [t.agent_ms for t in turns if not t.http],
    }
    total_agent = sum(agent)
    total_http = sum(each[2] for t in turns for each in t.http)
    total_store = sum(t.store_ms for t in turns)
    total_wall = sum(t.wall_ms for t in turns)
    total_model = sum(t.model_ms for t in turns)
    done = Counter(o.done for o in outcomes if o.done)
    why = Counter(o.why.split(":")[0] for o in outcomes if not o.done)
    p95 = ms(agent)["p95"]
    return {
        "conversations": len(outcomes),
        "at_once": args.conversations,
        "rounds": args.rounds,
        "agent_threads": args.agent_threads or args.conversations,
        "think_s": args.think,
        "turns": len(turns),
        "completed": dict(done),
        "completed_total": sum(done.values()),
        "incomplete": dict(why),
        "incomplete_replies": [o.why for o in outcomes if o.why.startswith("unexpected")][:5],
        "asked_again": sum(o.asked_again for o in outcomes),
        "looked_elsewhere": sum(o.looked_elsewhere for o in outcomes),
        "bookings": sum(o.bookings for o in outcomes),
        "collisions": sum(o.collisions for o in outcomes),
        "agent_ms": ms(agent),
        "target_p95_ms": TARGET_P95_MS,
        "target_met": p95 <= TARGET_P95_MS,
        "agent_ms_by_kind": {k: ms(v) for k, v in kinds.items()},
        "agent_ms_by_message": {
            said: ms([t.agent_ms for t in turns if t.said == said])
            for said in dict.fromkeys(t.said for t in turns)
        },
        "agent_ms_per_round": [
            ms([t.agent_ms for t in turns if t.round == r]) for r in range(args.rounds)
        ],
        "wall_ms": ms([t.wall_ms for t in turns]),
        "queued_ms": ms([t.queued_ms for t in turns]),
        "model_ms": ms([t.model_ms for t in turns]),
        "model_cpu_ms": ms([t.model_cpu_ms for t in turns]),
        "model_cpu_ms_mean": round(sum(t.model_cpu_ms for t in turns) / len(turns), 2),
        "agent_cpu_ms": ms([t.cpu_ms for t in turns]),
        "agent_cpu_ms_mean": round(sum(t.cpu_ms for t in turns) / len(turns), 2),
        "model_share_of_wall": round(total_model / total_wall, 3) if total_wall else 0,
        "http_ms": {op: ms(v) for op, v in sorted(http.items())},
        "http_in_server_app_ms": {op: ms(v) for op, v in sorted(app.items())},
        "http_outside_app_ms": {op: ms(v) for op, v in sorted(outside.items())},
        "http_statuses": dict(sorted(statuses.items())),
        "store_in_turn_ms": ms([t.store_ms for t in turns]),
        "store_before_turn_ms": ms([t.before_ms for t in turns]),
        "agent_time_split": {
            "http": round(total_http / total_agent, 3) if total_agent else 0,
            "store": round(total_store / total_agent, 3) if total_agent else 0,
            "rest": round(1 - (total_http + total_store) / total_agent, 3) if total_agent else 0,
        },
        "cpu_per_round": rounds,
    }


def report(s: dict[str, Any], db: str, bare: float | None) -> None:
    think = (
        f"patients answer after {s['think_s']:.1f} s on average"
        if s["think_s"]
        else ("patients answer at once")
    )
    print(
        f"booking agent, {s['at_once']} conversations at once x {s['rounds']} round(s) on {db} "
        f"(offline model; {think}; {s['agent_threads']} turns at most at once):"
    )
    print(
        "  bare FastAPI app (same run): "
        + (f"{bare:,.0f} req/s" if bare else "not measured (wrk is not installed)")
    )
    print(
        f"  conversations {s['conversations']}: completed {s['completed_total']} "
        f"{s['completed']}, incomplete {s['incomplete'] or 0}; bookings {s['bookings']}, "
        f"collisions (409, new options) {s['collisions']}; turns {s['turns']:,}"
    )
    print(
        f"  the agent asked again for what the patient had said {s['asked_again']} times; "
        f"nothing open, the patient looked elsewhere {s['looked_elsewhere']} times"
    )
    for why in s["incomplete_replies"]:
        print(f"    {why}")
    a = s["agent_ms"]
    met = "met" if s["target_met"] else "NOT met"
    print(
        f"  agent's own time per turn (Turn.agent_ms): p50 {a['p50']:.1f}  p95 {a['p95']:.1f}  "
        f"p99 {a['p99']:.1f}  max {a['max']:.1f} ms  target p95 <= {TARGET_P95_MS:.0f} ms: {met}"
    )
    for r, p in enumerate(s["agent_ms_per_round"]):
        c = s["cpu_per_round"][r]
        busy = (c["bench_cpu_s"] + c["server_cpu_s"] + c["postgresql_cpu_s"]) / c["wall_s"]
        print(
            f"    round {r + 1}: p50 {p['p50']:.1f}  p95 {p['p95']:.1f}  max {p['max']:.1f} ms "
            f"over {p['n']} turns in {c['wall_s']:.1f} s; CPU s: this process "
            f"{c['bench_cpu_s']:.1f}, server {c['server_cpu_s']:.1f}, PostgreSQL "
            f"{c['postgresql_cpu_s']:.1f} ({busy:.2f} cores busy); load "
            f"{c['load_1min_before']:.1f} -> {c['load_1min_after']:.1f}"
        )
        for who, doing in c.get("postgresql_backends", {}).items():
            top = ", ".join(f"{what} {n:.2f}" for what, n in list(doing.items())[:5])
            print(f"      PostgreSQL backends of the {who}, on average: {top}")
    for kind, values in s["agent_ms_by_kind"].items():
        if values["n"]:
            print(
                f"    turns {kind}: p50 {values['p50']:.1f}  p95 {values['p95']:.1f}  "
                f"max {values['max']:.1f} ms ({values['n']})"
            )
    print(
        "    by the patient's message: "
        + ", ".join(
            f"{said} p50 {v['p50']:.0f} p95 {v['p95']:.0f} ({v['n']})"
            for said, v in s["agent_ms_by_message"].items()
        )
    )
    split = s["agent_time_split"]
    print(
        f"  inside the agent's time: HTTP to the server {split['http']:.0%}, its own tables "
        f"{split['store']:.0%}, the rest (its code, waiting for the interpreter) "
        f"{split['rest']:.0%}"
    )
    for op, values in s["http_ms"].items():
        print(
            f"    {op}: p50 {values['p50']:.1f}  p95 {values['p95']:.1f}  max "
            f"{values['max']:.1f} ms ({values['n']})"
        )
        inside, beyond = s["http_in_server_app_ms"].get(op), s["http_outside_app_ms"].get(op)
        if inside and beyond:
            print(
                f"      in the server's app p50 {inside['p50']:.1f}  p95 {inside['p95']:.1f} ms; "
                f"outside it (sockets, uvicorn, the event loop, httpx) p50 {beyond['p50']:.1f}  "
                f"p95 {beyond['p95']:.1f} ms"
            )
    st = s["store_in_turn_ms"]
    print(
        f"    its tables (save): p50 {st['p50']:.1f}  p95 {st['p95']:.1f}  max {st['max']:.1f} ms"
    )
    print(f"    answers: {s['http_statuses']}")
    c = s["agent_cpu_ms"]
    print(
        f"  the agent's CPU per turn (its thread, in Agent.receive, less the model's): mean "
        f"{s['agent_cpu_ms_mean']:.1f}  p50 {c['p50']:.1f}  p95 {c['p95']:.1f} ms; the model's "
        f"mean {s['model_cpu_ms_mean']:.1f} ms"
    )
    w = s["wall_ms"]
    print(
        f"  wall time per turn (Agent.receive): p50 {w['p50']:.1f}  p95 {w['p95']:.1f}  "
        f"p99 {w['p99']:.1f}  max {w['max']:.1f} ms"
    )
    m, mc = s["model_ms"], s["model_cpu_ms"]
    print(
        f"  the model's share of the wall time: {s['model_share_of_wall']:.0%} (per turn p50 "
        f"{m['p50']:.1f}  p95 {m['p95']:.1f} ms; its CPU p50 {mc['p50']:.1f}  p95 "
        f"{mc['p95']:.1f} ms)"
    )
    if s["queued_ms"]["n"] and s["agent_threads"] < s["at_once"]:
        q = s["queued_ms"]
        print(f"  waiting for a turn's place: p50 {q['p50']:.1f}  p95 {q['p95']:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--conversations", type=int, default=50, help="conversations at once")
    ap.add_argument("--rounds", type=int, default=2, help="times the conversations start anew")
    ap.add_argument(
        "--agent-threads",
        type=int,
        default=0,
        help="turns answered at once, as the server's pool (default: every conversation's)",
    )
    ap.add_argument(
        "--think",
        type=float,
        default=0.0,
        help="mean seconds a patient takes to answer (default 0: at once, every conversation "
        "always mid-turn)",
    )
    ap.add_argument("--weeks", type=int, default=5, help="weeks of the demo clinic's Slots")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    port = free_port()
    clinic: ClinicConfig = load_clinic_config(DEMO_CLINIC)
    today = datetime.now(clinic.tz).date()
    started = time.perf_counter()
    bare = machine_speed(free_port()) if shutil.which("wrk") else None
    with tempfile.TemporaryDirectory() as tmp, database(args.db, Path(tmp)) as (url, fresh):
        work = Path(tmp)
        # SQLite: making a Database opens and closes the file (private_sqlite_file), and closing
        # any descriptor of a file drops every POSIX lock this process holds on it, SQLite's
        # included: a connection of this process still open then reads without its lock while
        # the server writes (seen here as "file is not a database" and conversations not
        # found). So no connection of this process is open when load_demo and the agent's
        # Database are made.
        fresh.dispose()
        settings = Settings(
            database_url=url, key_file=work / "keys.json", port=port, clinic_file=DEMO_CLINIC
        )
        demo, loaded = load_demo(settings, weeks=args.weeks)
        print(
            f"demo clinic: {demo.slots_created:,} Slots over {args.weeks} weeks, "
            f"{loaded['Patient']} patients, agent registered",
            file=sys.stderr,
        )
        # info: the server logs each request's own time (ids and times only, no data)
        env = {"FHIRSCHED_CLINIC_FILE": str(DEMO_CLINIC), "FHIRSCHED_LOG_LEVEL": "info"}
        with serve(work, url, port, env):
            db = TimedDatabase(agent_url(url))
            config = agent_config(settings, clinic)
            http = httpx.Client(timeout=config.http_timeout, transport=TimedTransport())
            model = TimedModel(OfflineModel(directory_of(clinic)))
            agent = build_agent(
                settings,
                db=db,
                keys=open_keys(settings, db),
                clinic=clinic,
                http=http,
                model=model,
            )
            if agent is None:
                raise SystemExit("bench: the agent was not built (its client not registered?)")
            try:
                warm_up(agent)
                slots = threading.Semaphore(args.agent_threads) if args.agent_threads else None
                outcomes: list[Outcome] = []
                cpu: list[dict[str, float]] = []
                for r in range(args.rounds):
                    group = patients(args.conversations, r * args.conversations, today, rnd)
                    done, used = run_round(agent, group, r, slots, url, args.think)
                    outcomes += done
                    cpu.append(used)
                    print(
                        f"\rround {r + 1}/{args.rounds}: {used['wall_s']:.1f} s",
                        end="\n" if r + 1 == args.rounds else "",
                        file=sys.stderr,
                        flush=True,
                    )
            finally:
                agent.fhir.close()
                db.dispose()
        in_server = server_times(work / f"server-{port}.log")
    summary = summarise(outcomes, cpu, args, in_server)
    report(summary, args.db, bare)
    print(f"  ({time.perf_counter() - started:.0f} s in all)", file=sys.stderr)
    save(
        f"agent_turns_{args.db}",
        {**summary, "bare_app_rps": bare, "args": vars(args), "date": str(today)},
    )


if __name__ == "__main__":
    main()
