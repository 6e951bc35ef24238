"""A bounded soak: booking, cancelling and rescheduling from many clients, HL7 SIU over MLLP
beside them, and a ``kill -9`` of the server in the middle; then the books are checked.

    .venv/bin/python -m bench.soak --db sqlite --seconds 600 --clients 16   # and --db postgresql

Starts the real ``fhir-sched serve`` (one worker, the HL7 listener inside it:
``FHIRSCHED_HL7_LISTEN=true``) on a clinic of 8 practitioners, weekdays 08:00-18:00 in
America/New_York, 15-minute Slots over 4 weeks, 30-minute visits, no rules but the default
notice; each client owns a patient and the appointments it booked, and loops over:

* ``$find`` (one practitioner, one day of the next two weeks, ``_count=6``) then ``$book`` of
  one of the first three options (45 %, or whenever it holds none; at most 12 held),
* cancel (``$book`` of its Appointment with ``status: cancelled``, 20 %),
* reschedule (``$find``, then ``$book`` with ``cancelled-appointment-id``, 20 %),
* move in place (``$find``, then ``$book`` of its Appointment with the new time, 15 %).

Clients race for the same times, so 409s are expected and counted. An HL7 sender (one MLLP
connection, ``--hl7-rate`` messages/s) books S12s on the same practitioners, moves them (S14
with a new time) and cancels them (S15); where it collides with a booking made here the
bridge records its appointment as a conflict, as it should.

At ``--kills`` evenly spaced moments the server gets SIGKILL and is started again on the same
database and ports. Clients and the sender retry: a request refused at connect was never
sent; one whose answer never came is *unknown*, and is sent again with the same
``Idempotency-Key`` (HL7: the same message, same MSH-10), whose answer is then the first
result if the first attempt had committed. Every acknowledged write (a 2xx with its resource,
an AA) goes into a ledger with the state it acknowledged (``bench.soak_check``).

When the time is up the load stops, the whole database is read back through the API (every
Appointment and Slot) and ``busy_time`` in SQL, the server is stopped and ``fhir-sched audit
verify`` is run; ``bench.soak_check.check`` then looks for overlapping busy time, booked
Appointments with free Slots, busy time and Slots that no booking explains, acknowledged
writes missing or in another state, Appointments that a refused request created, and a
broken audit chain. Prints a JSON report (operations by kind and outcome, throughput,
latencies, restarts, the machine's load, each check) and exits 1 on any violation or on any
answer outside 2xx and 409 (a 5xx above all).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import yaml
from sqlalchemy import text

from bench.common import (
    RESULTS,
    VENV_BIN,
    BackendToken,
    database,
    machine,
    machine_speed,
    percentiles,
    save,
)
from bench.soak_check import CREATED_BY, BusyRow, Ledger, Snapshot, State, check, state_of, utc
from hl7_bridge.ack import read_ack
from hl7_bridge.mllp import FrameReader, frame
from resources.sql.engine import Database

TZ = ZoneInfo("America/New_York")
DOCTORS = [f"d{n:02d}" for n in range(8)]
WEEKS = 4
DAYS_AHEAD = (3, 17)  # bookings fall on weekdays this many days ahead (notice is 24 h)
MAX_OWN = 12  # appointments a client holds before it only cancels, moves and reschedules
PATIENCE = 120.0  # seconds a request is retried while the server is away
FHIR = {"content-type": "application/fhir+json"}
EXPECTED = {200, 201, 409}  # any other answer fails the run


def clinic() -> dict[str, Any]:
    return {
        "name": "Soak clinic",
        "timezone": "America/New_York",
        "slot_minutes": 15,
        "horizon_weeks": WEEKS,
        "locations": [{"id": "main", "name": "Main"}],
        "practitioners": [{"id": d, "family": f"Doctor{d}"} for d in DOCTORS],
        "visit_types": [{"code": "visit", "display": "Visit", "minutes": 30}],
        "hours": [
            {
                "practitioner": d,
                "location": "main",
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "start": "08:00",
                "end": "18:00",
            }
            for d in DOCTORS
        ],
    }


def weekdays(today: date) -> list[date]:
    first, last = DAYS_AHEAD
    days = [today + timedelta(days=k) for k in range(first, last + 1)]
    return [d for d in days if d.weekday() < 5]


class Stats:
    """Each operation's final outcome by kind (an HTTP status, an ACK code, or ``no answer``),
    the attempts that failed on the way (``refused`` at connect, or ``unanswered``: sent, and
    the connection lost before an answer), the final outcomes of the operations that had an
    unanswered attempt (resolved by sending the same request again), and latencies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        self.attempts: dict[str, Counter[str]] = defaultdict(Counter)
        self.after_unanswered: dict[str, Counter[str]] = defaultdict(Counter)
        self.latency_ms: dict[str, list[float]] = defaultdict(list)
        self.unexpected: list[str] = []

    def answered(
        self, kind: str, outcome: str, ms: float, *, unsure: bool, expected: bool, why: str = ""
    ) -> None:
        with self._lock:
            self.outcomes[kind][outcome] += 1
            self.latency_ms[kind].append(ms)
            if unsure:
                self.after_unanswered[kind][outcome] += 1
            if not expected and len(self.unexpected) < 50:
                self.unexpected.append(f"{kind} {outcome} {why}"[:400])

    def attempt_failed(self, kind: str, sent: bool) -> None:
        with self._lock:
            self.attempts[kind]["unanswered" if sent else "refused"] += 1

    def gave_up(self, kind: str) -> None:
        with self._lock:
            self.outcomes[kind]["no answer"] += 1
            self.unexpected.append(f"{kind}: no answer within {PATIENCE:.0f} s")

    def unexpected_count(self) -> int:
        with self._lock:
            return sum(
                n
                for c in self.outcomes.values()
                for outcome, n in c.items()
                if outcome not in ("200", "201", "409", "AA")
            )


class Server:
    """``fhir-sched serve`` in a subprocess that can be killed and started again."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.root = f"http://127.0.0.1:{env['FHIRSCHED_PORT']}"
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "fhir-sched"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
        )

    def start(self) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "fhir-sched"), "serve"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited during start-up; see {self.log}")
            try:
                if httpx.get(f"{self.root}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the server did not come up; see {self.log}")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Tokens:
    """One backend token shared by the clients, renewed before it runs out (thread-safe)."""

    def __init__(self, token: BackendToken) -> None:
        self._token = token
        self._lock = threading.Lock()

    def headers(self, force: bool = False) -> dict[str, str]:
        with self._lock:
            if force:
                self._token.forget()
            return self._token.headers(60)


class Api:
    """One client's HTTP calls, retried while the server is away (see the module docstring)."""

    def __init__(self, root: str, tokens: Tokens, stats: Stats) -> None:
        self.http = httpx.Client(base_url=f"{root}/fhir", timeout=60)
        self.tokens = tokens
        self.stats = stats

    def request(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        key: str | None = None,
    ) -> tuple[httpx.Response | None, bool]:
        """The answer (None if none came within ``PATIENCE``) and whether an attempt went
        unanswered (the request may have been applied without an answer)."""
        unsure = False
        force = False
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            sent = False
            try:
                headers = self.tokens.headers(force)
                force = False
                if key:
                    headers = {**headers, **FHIR, "Idempotency-Key": key}
                sent = True
                began = time.perf_counter()
                r = self.http.request(method, path, json=json_body, params=params, headers=headers)
            except httpx.TransportError as exc:
                never = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) or not sent
                self.stats.attempt_failed(kind, sent=not never)
                unsure = unsure or not never
                time.sleep(0.2)
                continue
            ms = (time.perf_counter() - began) * 1000
            ok = r.status_code in EXPECTED
            why = "" if ok else r.text[:300]
            self.stats.answered(kind, str(r.status_code), ms, unsure=unsure, expected=ok, why=why)
            if r.status_code == 401:  # counted as unexpected; renew and go on
                force = True
                continue
            return r, unsure
        self.stats.gave_up(kind)
        return None, unsure


def _parameters(resource: dict[str, Any], old: str | None = None) -> dict[str, Any]:
    p: list[dict[str, Any]] = [{"name": "appointment-resource", "resource": resource}]
    if old:
        p.append({"name": "cancelled-appointment-id", "valueId": old})
    return {"resourceType": "Parameters", "parameter": p}


@dataclass
class Client:
    """One of the clients: a patient, the appointments it booked, and its loop."""

    n: int
    run: str
    patient: str
    api: Api
    ledger: Ledger
    days: list[date]
    rng: random.Random
    mine: dict[str, dict[str, Any]] = field(default_factory=dict)
    ops: int = 0

    def op_id(self) -> str:
        self.ops += 1
        return f"{self.run}-c{self.n}-{self.ops}"

    def loop(self, stop: threading.Event) -> None:
        with self.api.http:
            while not stop.is_set():
                roll = self.rng.random()
                if not self.mine or (roll < 0.45 and len(self.mine) < MAX_OWN):
                    self.book()
                elif roll < 0.65:
                    self.cancel()
                elif roll < 0.85:
                    self.reschedule()
                else:
                    self.move()

    def find(self) -> dict[str, Any] | None:
        day = datetime.combine(self.rng.choice(self.days), clock(0), tzinfo=TZ)
        params = {
            "start": day.isoformat(),
            "end": (day + timedelta(days=1)).isoformat(),
            "visit-type": "visit",
            "practitioner": f"Practitioner/{self.rng.choice(DOCTORS)}",
            "patient-reference": f"Patient/{self.patient}",
            "_count": "6",
        }
        r, _ = self.api.request("find", "GET", "/Appointment/$find", params=params)
        if r is None or r.status_code != 200:
            return None
        options = [
            e["resource"]
            for e in r.json().get("entry", [])
            if e.get("resource", {}).get("resourceType") == "Appointment"
        ]
        return self.rng.choice(options[:3]) if options else None

    def _new(self, kind: str, option: dict[str, Any], old: str | None = None) -> None:
        op = self.op_id()
        appt = {**option, "identifier": [{"system": CREATED_BY, "value": op}]}
        r, unsure = self.api.request(
            kind, "POST", "/Appointment/$book", json_body=_parameters(appt, old), key=op
        )
        before = self.mine.get(old or "")
        if r is not None and r.status_code == 201:
            body = r.json()
            self.ledger.created(op, "acked")
            self.ledger.ack(f"fhir:{body['id']}", state_of(body))
            self.mine[str(body["id"])] = body
            if old and before is not None:
                self.ledger.ack(f"fhir:{old}", self._cancelled(before))
                del self.mine[old]
        elif r is None:
            self.ledger.created(op, "unknown" if unsure else "unsent")
            if old and before is not None and unsure:
                self.ledger.unknown(f"fhir:{old}", self._cancelled(before))
                del self.mine[old]  # its state is not known: leave it alone from now on
        else:
            self.ledger.created(op, "refused")  # a reschedule refused leaves the old one booked

    @staticmethod
    def _cancelled(body: dict[str, Any]) -> State:
        was = state_of(body)
        version = was.version + 1 if was.version else None
        return State("cancelled", was.start, was.end, was.practitioner, version, was.slots)

    def book(self) -> None:
        option = self.find()
        if option is not None:
            self._new("book", option)

    def reschedule(self) -> None:
        old = self.rng.choice(sorted(self.mine))
        option = self.find()
        if option is not None:
            self._new("reschedule", option, old)

    def cancel(self) -> None:
        aid = self.rng.choice(sorted(self.mine))
        body = self.mine[aid]
        r, unsure = self.api.request(
            "cancel",
            "POST",
            "/Appointment/$book",
            json_body=_parameters({**body, "status": "cancelled"}),
            key=self.op_id(),
        )
        self._changed(aid, r, unsure, 200, self._cancelled(body))

    def move(self) -> None:
        aid = self.rng.choice(sorted(self.mine))
        body = self.mine[aid]
        option = self.find()
        if option is None:
            return
        moved = {**body, **{f: option[f] for f in ("start", "end", "slot", "participant")}}
        r, unsure = self.api.request(
            "move", "POST", "/Appointment/$book", json_body=_parameters(moved), key=self.op_id()
        )
        was = state_of(body)
        version = was.version + 1 if was.version else None
        self._changed(aid, r, unsure, 200, state_of({**moved, "meta": {"versionId": version}}))

    def _changed(
        self, aid: str, r: httpx.Response | None, unsure: bool, ok: int, would: State
    ) -> None:
        if r is not None and r.status_code == ok:
            body = r.json()
            self.ledger.ack(f"fhir:{aid}", state_of(body))
            if body.get("status") == "booked":
                self.mine[aid] = body
            else:
                del self.mine[aid]
        elif r is None and unsure:
            self.ledger.unknown(f"fhir:{aid}", would)
            del self.mine[aid]
        # a refusal (409) changes nothing: the acknowledged state stands, and is checked


class HL7Sender:
    """An EMR over one MLLP connection: S12 books, S14 moves, S15 cancels its own
    appointments on the clinic's practitioners; each message waits for its ACK."""

    def __init__(
        self,
        port: int,
        run: str,
        stats: Stats,
        ledger: Ledger,
        days: list[date],
        rate: float,
        offgrid: float,
    ) -> None:
        self.port, self.run, self.stats, self.ledger = port, run, stats, ledger
        self.days, self.rate, self.offgrid = days, rate, offgrid
        self.rng = random.Random(f"hl7-{run}")
        self.sock: socket.socket | None = None
        self.frames = FrameReader()
        self.own: dict[str, tuple[datetime, datetime, str]] = {}  # filler → start, end, who
        self.count = 0

    def loop(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                began = time.monotonic()
                roll = self.rng.random()
                if not self.own or roll < 0.5:
                    self.count += 1
                    self.send("S12", f"F{self.run}{self.count}", *self._when(), "Booked")
                elif roll < 0.75:
                    self.send("S14", self.rng.choice(sorted(self.own)), *self._when(), "Booked")
                else:
                    filler = self.rng.choice(sorted(self.own))
                    self.send("S15", filler, *self.own[filler], "Cancelled")
                stop.wait(max(0.0, 1 / self.rate - (time.monotonic() - began)))
        finally:
            if self.sock is not None:
                self.sock.close()

    def _when(self) -> tuple[datetime, datetime, str]:
        """A 30-minute visit on the Slots' quarter hours, or (``offgrid`` of the time) a
        20-minute one at any five minutes, as EMRs with a finer grid book."""
        day = datetime.combine(self.rng.choice(self.days), clock(8), tzinfo=TZ)
        if self.rng.random() < self.offgrid:
            start = day + timedelta(minutes=5 * self.rng.randrange(116))
            return start, start + timedelta(minutes=20), self.rng.choice(DOCTORS)
        start = day + timedelta(minutes=15 * self.rng.randrange(38))
        return start, start + timedelta(minutes=30), self.rng.choice(DOCTORS)

    def send(
        self, event: str, filler: str, start: datetime, end: datetime, doctor: str, status: str
    ) -> None:
        self.count += 1
        control = f"{self.run}m{self.count}"
        raw = _siu(event, control, filler, (start, end), doctor, status, self.count % 20)
        state = State(status.lower(), start.astimezone(UTC), end.astimezone(UTC), doctor)
        code, unsure = self.exchange(f"hl7-{event}", raw, control)
        if code == "AA":
            self.ledger.ack(f"hl7:{filler}", state)
            if status == "Booked":
                self.own[filler] = (start, end, doctor)
            else:
                self.own.pop(filler, None)
        elif code is None and unsure:
            self.ledger.unknown(f"hl7:{filler}", state)
            self.own.pop(filler, None)

    def exchange(self, kind: str, raw: bytes, control: str) -> tuple[str | None, bool]:
        """Send until an ACK comes back (the same message again after a lost connection)."""
        unsure = False
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            sent = False
            try:
                if self.sock is None:
                    self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                    self.sock.settimeout(60)
                    self.frames = FrameReader()
                began = time.perf_counter()
                sent = True
                self.sock.sendall(frame(raw))
                acks: list[bytes] = []
                while not acks:
                    data = self.sock.recv(65536)
                    if not data:
                        raise ConnectionResetError("the listener closed the connection")
                    acks = self.frames.feed(data)
            except OSError:
                self.stats.attempt_failed(kind, sent)
                unsure = unsure or sent
                if self.sock is not None:
                    self.sock.close()
                    self.sock = None
                time.sleep(0.2)
                continue
            code, acked = read_ack(acks[0])
            ok = code == "AA" and acked == control
            ms = (time.perf_counter() - began) * 1000
            why = f"MSA-2 {acked!r}, sent {control!r}" if acked != control else ""
            if code != "AA":  # the ACK's ERR segment says why (synthetic data, no PHI)
                why += " ".join(
                    seg.decode("latin-1") for seg in acks[0].split(b"\r") if seg[:3] == b"ERR"
                )
            self.stats.answered(kind, code, ms, unsure=unsure, expected=ok, why=why)
            return code, unsure
        self.stats.gave_up(kind)
        return None, unsure


def _hl7_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S.%f")[:-2] + "+0000"


def _siu(
    event: str,
    control: str,
    filler: str,
    span: tuple[datetime, datetime],
    doctor: str,
    status: str,
    mrn: int,
) -> bytes:
    now = _hl7_time(datetime.now(UTC))  # MSH-7 orders the messages about one appointment
    start, end = span
    return "\r".join(
        [
            f"MSH|^~\\&|SOAKEMR|CLINIC|FHIRSCHED|CLINIC|{now}||SIU^{event}^SIU_S12|{control}|P|2.5.1",
            f"SCH|P{filler}^SOAKEMR|{filler}^SOAKEMR|||||^Visit|||||||||||||||||{status}",
            f"TQ1|1||||||{_hl7_time(start)}|{_hl7_time(end)}",
            f"PID|1||SOAK{mrn:03d}^^^CLINIC^MR||Patient{mrn}^Soak||19800101|F",
            "RGS|1",
            "AIS|1||visit^Visit",
            f"AIP|1||{doctor}^Doctor",
            "AIL|1||main",
        ]
    ).encode()


def _every(http: httpx.Client, path: str, headers: Callable[[], dict[str, str]]) -> list[Any]:
    """Every resource a search finds, following its next links."""
    out: list[Any] = []
    url: str | None = path
    while url:
        page = http.get(url, headers=headers())
        page.raise_for_status()
        bundle = page.json()
        out += [
            e["resource"]
            for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"
        ]
        url = next((ln["url"] for ln in bundle.get("link", []) if ln["relation"] == "next"), None)
    return out


def snapshot(server: Server, tokens: Tokens, database_url: str) -> Snapshot:
    """What the server holds, read through the API (and ``busy_time`` in SQL)."""
    with httpx.Client(base_url=f"{server.root}/fhir", timeout=120) as http:
        appointments = _every(http, "/Appointment?_count=500", tokens.headers)
        slots = _every(http, "/Slot?_count=500", tokens.headers)
    db = Database(database_url)
    try:
        with db.read() as conn:
            rows = conn.execute(
                text('SELECT schedule_id, start, "end", appointment_id, kind FROM busy_time')
            ).all()
    finally:
        db.dispose()
    busy = [BusyRow(r[0], utc(r[1]), utc(r[2]), str(r[3]), str(r[4])) for r in rows]
    return Snapshot(appointments, slots, busy, audit={})


def _hl7_statuses(database_url: str) -> dict[str, int]:
    db = Database(database_url)
    try:
        with db.read() as conn:
            rows = conn.execute(
                text("SELECT direction, status, count(*) FROM hl7_message GROUP BY 1, 2")
            ).all()
    finally:
        db.dispose()
    return {f"{r[0]} {r[1]}": int(r[2]) for r in rows}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _patients(root: str, tokens: Tokens, count: int) -> list[str]:
    ids = []
    with httpx.Client(base_url=f"{root}/fhir", timeout=60) as http:
        for n in range(count):
            r = http.post(
                "/Patient",
                json={
                    "resourceType": "Patient",
                    "name": [{"family": f"Soak{n}", "given": ["Client"]}],
                    "birthDate": "1975-05-05",
                },
                headers={**tokens.headers(), **FHIR},
            )
            r.raise_for_status()
            ids.append(str(r.json()["id"]))
    return ids


def run(
    *,
    database_url: str,
    workdir: Path,
    seconds: float,
    clients: int = 16,
    kills: int = 1,
    hl7_rate: float = 10.0,
    hl7_offgrid: float = 0.2,
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Run the soak against a fresh migrated-or-empty database; the report (``passed``)."""
    run_id = uuid.uuid4().hex[:6]
    path = workdir / "clinic.yaml"
    path.write_text(yaml.safe_dump(clinic()))
    hl7_port = _free_port()
    env = {
        **os.environ,
        "FHIRSCHED_DATABASE_URL": database_url,
        "FHIRSCHED_KEY_FILE": str(workdir / "keys.json"),
        "FHIRSCHED_PORT": str(_free_port()),
        "FHIRSCHED_CLINIC_FILE": str(path),
        "FHIRSCHED_HL7_LISTEN": "true",
        "FHIRSCHED_HL7_PORT": str(hl7_port),
        "FHIRSCHED_LOG_LEVEL": "warning",
        "FHIRSCHED_AUDIT_CHECKPOINT_SECONDS": "20",  # checkpoints before and after the kill
        "FHIRSCHED_CLINIC_REFRESH_SECONDS": "60",  # the horizon job runs under the load too
    }
    server = Server(env, workdir)
    for args in (("db", "upgrade"), ("clinic", "load", str(path), "--weeks", str(WEEKS))):
        done = server.cli(*args)
        if done.returncode != 0:
            raise RuntimeError(f"fhir-sched {' '.join(args)}: {done.stderr[-2000:]}")
    server.start()
    tokens = Tokens(BackendToken(server.root, database_url))
    patients = _patients(server.root, tokens, clients)
    today = datetime.now(TZ).date()
    days = weekdays(today)
    stats, ledger, stop = Stats(), Ledger(), threading.Event()
    actors: list[Client | HL7Sender] = [
        Client(
            n,
            run_id,
            patients[n],
            Api(server.root, tokens, stats),
            ledger,
            days,
            random.Random(f"{run_id}-{n}"),
        )
        for n in range(clients)
    ]
    actors.append(HL7Sender(hl7_port, run_id, stats, ledger, days, hl7_rate, hl7_offgrid))
    threads = [threading.Thread(target=a.loop, args=(stop,), daemon=True) for a in actors]
    loads = [os.getloadavg()[0]]
    began = time.monotonic()
    for t in threads:
        t.start()
    restarts = []
    moments = [began + seconds * (k + 1) / (kills + 1) for k in range(kills)]
    try:
        for moment in [*moments, began + seconds]:
            while time.monotonic() < moment:
                time.sleep(min(5.0, max(0.0, moment - time.monotonic())))
                loads.append(os.getloadavg()[0])
            if moment in moments:
                killed = time.monotonic()
                server.kill9()
                server.start()
                restarts.append(
                    {
                        "at_s": round(killed - began, 1),
                        "down_s": round(time.monotonic() - killed, 2),
                    }
                )
                progress(
                    f"killed (-9) at {killed - began:.0f} s, up again after "
                    f"{restarts[-1]['down_s']} s"
                )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=PATIENCE + 30)
    elapsed = time.monotonic() - began
    loads.append(os.getloadavg()[0])
    progress(f"load stopped after {elapsed:.0f} s; reading everything back")
    try:
        state = snapshot(server, tokens, database_url)
        hl7 = _hl7_statuses(database_url)
    finally:
        stopped = server.stop()
    verified = server.cli("audit", "verify")
    try:
        audit = json.loads(verified.stdout)
    except json.JSONDecodeError:
        audit = {"output": verified.stdout[-500:], "stderr": verified.stderr[-500:]}
    audit["returncode"] = verified.returncode
    state.audit = audit
    found = check(state, ledger)
    found_statuses = stats.unexpected_count()
    checks = {
        name: {"passed": not v, "found": len(v), "examples": [x.detail for x in v[:20]]}
        for name, v in found.items()
    }
    checks["expected_answers_only"] = {
        "passed": found_statuses == 0,
        "found": found_statuses,
        "examples": stats.unexpected[:20],
    }
    answered = sum(sum(c.values()) for c in stats.outcomes.values())
    acked = sum(
        n
        for kind, c in stats.outcomes.items()
        for outcome, n in c.items()
        if kind != "find" and outcome in ("200", "201", "AA")
    )
    return {
        "passed": all(c["passed"] for c in checks.values()),
        "db": "postgresql" if database_url.startswith("postgresql") else "sqlite",
        "seconds": round(elapsed, 1),
        "clients": clients,
        "hl7_rate": hl7_rate,
        "hl7_offgrid": hl7_offgrid,
        "restarts": restarts,
        "server_exit_status": stopped,
        "load_average_1m": {"min": round(min(loads), 2), "max": round(max(loads), 2)},
        "ops": {k: dict(sorted(c.items())) for k, c in sorted(stats.outcomes.items())},
        "failed_attempts": {k: dict(c) for k, c in sorted(stats.attempts.items())},
        "after_unanswered": {k: dict(c) for k, c in sorted(stats.after_unanswered.items())},
        "operations_per_s": round(answered / elapsed, 1),
        "acknowledged_writes_per_s": round(acked / elapsed, 1),
        "latency_ms": {
            k: {q: round(v, 1) for q, v in percentiles(ms).items() if q != "n"}
            for k, ms in sorted(stats.latency_ms.items())
            if ms
        },
        "appointments": Counter(str(a.get("status")) for a in state.appointments),
        "appointments_tracked": ledger.acknowledged(),
        "hl7_messages": hl7,
        "audit": {k: audit.get(k) for k in ("records", "intact", "checkpoints", "returncode")},
        "checks": checks,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--kills", type=int, default=1, help="kill -9 and restarts, evenly spaced")
    ap.add_argument("--hl7-rate", type=float, default=10.0, help="HL7 messages per second")
    ap.add_argument(
        "--hl7-offgrid",
        type=float,
        default=0.2,
        help="share of HL7 visits off the Slot grid (20 minutes at any five minutes)",
    )
    args = ap.parse_args()
    bare = machine_speed(_free_port())  # this machine's speed at the time (wrk, 5 s)
    with (
        tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp,
        database(args.db, Path(tmp)) as (url, _),
    ):
        report = run(
            database_url=url,
            workdir=Path(tmp),
            seconds=args.seconds,
            clients=args.clients,
            kills=args.kills,
            hl7_rate=args.hl7_rate,
            hl7_offgrid=args.hl7_offgrid,
            progress=lambda line: print(f"soak: {line}", file=sys.stderr, flush=True),
        )
        if not report["passed"]:  # the server's log outlives the run's directory
            RESULTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(tmp) / "server.log", RESULTS / f"soak_{args.db}_server.log")
    report["command"] = (
        f"python -m bench.soak --db {args.db} --seconds {args.seconds:g} "
        f"--clients {args.clients} --kills {args.kills} --hl7-rate {args.hl7_rate:g} "
        f"--hl7-offgrid {args.hl7_offgrid:g}"
    )
    report["bare_app_rps"] = round(bare)
    report["machine"] = machine()
    print(json.dumps(report, indent=2, default=str))
    save(f"soak_{args.db}", report)
    if not report["passed"]:
        failed = [name for name, c in report["checks"].items() if not c["passed"]]
        raise SystemExit(f"bench: soak failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
