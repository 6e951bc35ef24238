"""outreach/waitlist.py: a cancellation through the API frees time; the waitlisted patients who
fit it by $find's rules are offered it under one hold, oldest request first; the first YES
books it, later ones are told it is gone; nobody is offered the same time twice."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from fhir_server.app import create_app
from fhir_server.settings import Settings
from outreach.sending import Message, Outreach
from outreach.waitlist import GONE, KEPT, Waitlist
from resources.sql.engine import Database
from resources.sql.tables import AuditLog, BusyTime, WaitlistFreed, WaitlistOffered
from resources.store import Store
from scheduling.clinic import VISIT_TYPE_SYSTEM, load_clinic
from scheduling.config import ClinicConfig, parse_clinic_config
from security.audit import open_event
from security.crypto import KeyRing
from tests.builders import FHIR_JSON, create, make_patient
from tests.outreach.test_sending import Recording
from tests.scheduling.test_booking import op
from tests.scheduling.test_find import MONDAY, clinic_data, find, local
from tests.smart import backend_token

BT = BusyTime.__table__


class World:
    def __init__(
        self, client: TestClient, cfg: ClinicConfig, db: Database, store: Store, keys: KeyRing
    ) -> None:
        self.client, self.cfg, self.db, self.store = client, cfg, db, store
        self.sender = Recording()
        self.outreach = Outreach(
            db=db, store=store, keys=keys, sender=self.sender, server="http://testserver/fhir"
        )
        self.waitlist = Waitlist(self.outreach, db, store, cfg)

    def patient(self, family: str, phone: str | None) -> str:
        """An existing patient (seen here before), so follow-ups are offered to them."""
        p = create(self.client, make_patient(family, ["Pat"], phone=phone))
        create(
            self.client,
            {
                "resourceType": "Appointment",
                "status": "fulfilled",
                "participant": [
                    {"actor": {"reference": f"Patient/{p['id']}"}, "status": "accepted"}
                ],
            },
        )
        return str(p["id"])

    def entry(
        self,
        patient: str,
        *,
        created: datetime,
        visit: str = "follow-up",
        day: date = MONDAY,
        practitioner: str | None = None,
    ) -> Any:
        participants = [{"actor": {"reference": f"Patient/{patient}"}, "status": "needs-action"}]
        if practitioner:
            participants.append(
                {"actor": {"reference": f"Practitioner/{practitioner}"}, "status": "needs-action"}
            )
        body = {
            "resourceType": "Appointment",
            "status": "waitlist",
            "created": created.isoformat(),
            "serviceType": [{"coding": [{"system": VISIT_TYPE_SYSTEM, "code": visit}]}],
            "requestedPeriod": [
                {
                    "start": local(self.cfg, day, 0).isoformat(),
                    "end": local(self.cfg, day + timedelta(days=1), 0).isoformat(),
                }
            ],
            "participant": participants,
        }
        return self.client.post("/fhir/Appointment", json=body, headers=FHIR_JSON)

    def book_first(self, patient: str) -> dict[str, Any]:
        b = find(self.client, self.cfg, MONDAY, "follow-up", **{"patient-reference": patient})
        proposal = b.json()["entry"][0]["resource"]
        booked = op(self.client, "book", appointment_resource=proposal)
        assert booked.status_code == 201, booked.text
        return dict(booked.json())

    def cancel(self, appointment_id: str) -> None:
        r = op(
            self.client,
            "book",
            appointment_resource={
                "resourceType": "Appointment",
                "id": appointment_id,
                "status": "cancelled",
            },
        )
        assert r.status_code == 200, r.text

    def holds(self) -> int:
        with self.db.read() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(BT).where(BT.c.kind == "held")
                ).scalar_one()
            )

    def offers(self) -> dict[str, Message]:
        """The offer texts sent, by phone number."""
        return {m.to: m for m in self.outreach.messages(kinds=("offer",)) if m.state == "sent"}

    def booked_at(self, start: str) -> list[dict[str, Any]]:
        r = self.client.get("/fhir/Appointment", params={"status": "booked", "date": start})
        return [e["resource"] for e in r.json().get("entry", [])]


def _world(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path, **policy: Any
) -> Iterator[World]:
    data = clinic_data()
    data["waitlist"] = {"enabled": True, "offer_batch": 3, "offer_minutes": 30, **policy}
    cfg = parse_clinic_config(data)
    path = tmp_path / "clinic.yaml"
    path.write_text(yaml.safe_dump(data))
    with db.write() as conn:
        load_clinic(conn, store=store, config=cfg, today=MONDAY, weeks=1)
    settings = Settings(
        database_url="sqlite://",
        key_file=tmp_path / "k.json",
        base_url="http://testserver/fhir",
        clinic_file=path,
        waitlist_seconds=0,  # the test runs the job itself
    )
    app = create_app(settings, keys=keys, db=db)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.headers["Authorization"] = f"Bearer {backend_token(c, db)}"
        assert app.state.waitlist is not None  # the server's own, for the replies router
        yield World(c, cfg, db, store, keys)


@pytest.fixture
def world(db: Database, keys: KeyRing, store: Store, tmp_path: Path) -> Iterator[World]:
    yield from _world(db, keys, store, tmp_path)


@pytest.fixture
def one_at_a_time(db: Database, keys: KeyRing, store: Store, tmp_path: Path) -> Iterator[World]:
    yield from _world(db, keys, store, tmp_path, offer_batch=1)


AGO = datetime.now(UTC) - timedelta(days=30)


def _setup(w: World) -> tuple[dict[str, Any], list[str]]:
    """A booked follow-up, cancelled through $book; four waitlisted patients, the first three
    fitting (oldest first), the fourth asking for another week, a fifth for another visit."""
    owner = w.patient("Owner", "+15550100")
    booked = w.book_first(owner)
    phones = ["+15550101", "+15550102", "+15550103", "+15550104", "+15550105"]
    ids = [w.patient(f"Wait{i}", phone) for i, phone in enumerate(phones)]
    for i, pid in enumerate(ids[:3]):
        assert w.entry(pid, created=AGO + timedelta(hours=i)).status_code == 201
    later = w.entry(ids[3], created=AGO - timedelta(days=1), day=MONDAY + timedelta(days=7))
    assert later.status_code == 201
    other = w.entry(ids[4], created=AGO - timedelta(days=1), visit="procedure")
    assert other.status_code == 201
    w.cancel(booked["id"])
    return booked, phones


def test_freed_time_is_offered_held_once_and_booked_by_the_first_yes(world: World) -> None:
    w = world
    booked, phones = _setup(w)
    with w.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(WaitlistFreed.__table__)).scalar() == 1
    now = datetime.now(UTC)
    report = w.waitlist.run(now)
    assert (report.offers, report.sent) == (1, 3)
    offers = w.offers()
    assert set(offers) == set(phones[:3])  # not the other week's, nor the other visit's
    assert "Reply YES to take it" in offers[phones[0]].body
    assert w.holds() == 1
    # held: nobody else's $find sees the time, nor can $book take it
    stranger = w.patient("Stranger", None)
    b = find(w.client, w.cfg, MONDAY, "follow-up", **{"patient-reference": stranger}).json()
    seen = {
        (e["resource"]["participant"][0]["actor"]["reference"], e["resource"]["start"])
        for e in b.get("entry", [])
        if e["search"]["mode"] == "match"
    }
    mine = (booked["participant"][0]["actor"]["reference"], booked["start"])
    assert mine not in seen
    # two patients answer YES: the first books, the second is told it is gone
    second, first = offers[phones[1]], offers[phones[0]]
    assert w.waitlist.answer(second, True).startswith("You're booked")
    assert w.waitlist.answer(first, True) == GONE
    assert w.waitlist.answer(offers[phones[2]], False) == KEPT
    assert w.waitlist.answer(second, True).startswith("You're booked")  # a repeat: no harm
    now_booked = w.booked_at(booked["start"])
    assert len(now_booked) == 1
    winner = now_booked[0]
    patients = [p["actor"]["reference"] for p in winner["participant"]]
    entry_ref = winner["supportingInformation"][0]["reference"]
    assert any(ref.startswith("Patient/") for ref in patients)
    for slot in winner["slot"]:
        assert w.client.get(f"/fhir/{slot['reference']}").json()["status"] == "busy"
    assert w.holds() == 0
    with w.db.read() as conn:
        rows = conn.execute(select(BT.c.kind).where(BT.c.appointment_id == winner["id"])).all()
    assert [r.kind for r in rows] == ["booked"]
    entry = w.client.get(f"/fhir/{entry_ref}").json()
    assert entry["status"] == "cancelled"
    assert entry["cancelationReason"]["coding"][0]["code"] == "waitlist-booked"
    left = w.client.get("/fhir/Appointment", params={"status": "waitlist"}).json()
    assert left["total"] == 4  # the other two who fitted, and the two who did not
    # the job again: nothing is offered twice, nothing more is held
    sent_before = len(w.sender.sent)
    again = w.waitlist.run(now + timedelta(minutes=1))
    assert again.offers == 0 and len(w.sender.sent) == sent_before and w.holds() == 0
    with w.db.read() as conn:
        offered = conn.execute(select(WaitlistOffered.__table__.c.waitlist_id)).scalars().all()
    assert len(offered) == len(set(offered)) == 3
    with w.db.read() as conn:
        rows = conn.execute(select(AuditLog).order_by(AuditLog.seq)).all()
    events = [open_event(w.store.keys, r) for r in rows]
    acted = [e for e in events if e["subtype"][-1]["code"] == "waitlist-book"]
    assert len(acted) == 1  # outreach-acted:waitlist-book
    sent = [e for e in events if e["subtype"][-1]["code"] == "offer"]
    assert len(sent) == 3


def test_an_unanswered_offer_expires_and_the_next_patient_is_offered(
    one_at_a_time: World,
) -> None:
    w = one_at_a_time
    booked, phones = _setup(w)
    now = datetime.now(UTC)
    assert w.waitlist.run(now).offers == 1
    assert set(w.offers()) == {phones[0]} and w.holds() == 1
    assert w.waitlist.run(now + timedelta(minutes=10)).offers == 0  # still standing
    later = w.waitlist.run(now + timedelta(minutes=31))
    assert (later.expired, later.offers) == (1, 1)
    assert set(w.offers()) == set(phones[:2]) and w.holds() == 1
    assert w.waitlist.answer(w.offers()[phones[0]], True) == GONE  # too late
    w.waitlist.clock = lambda: now + timedelta(minutes=40)
    assert w.waitlist.answer(w.offers()[phones[1]], True).startswith("You're booked")
    assert len(w.booked_at(booked["start"])) == 1 and w.holds() == 0


def test_two_yeses_at_once_book_one(world: World) -> None:
    w = world
    booked, phones = _setup(w)
    w.waitlist.run(datetime.now(UTC))
    offers = w.offers()
    barrier = threading.Barrier(3)
    answers: list[str] = []

    def reply(phone: str) -> None:
        barrier.wait()
        answers.append(w.waitlist.answer(offers[phone], True))

    threads = [threading.Thread(target=reply, args=(p,)) for p in phones[:3]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(a.startswith("You're booked") for a in answers) == [False, False, True]
    assert len(w.booked_at(booked["start"])) == 1 and w.holds() == 0


BAD_ENTRIES = [
    ("no-period", lambda e: e.pop("requestedPeriod")),
    ("slot", lambda e: e.update(slot=[{"reference": "Slot/x"}])),
    (
        "unknown-visit",
        lambda e: e.update(serviceType=[{"coding": [{"system": VISIT_TYPE_SYSTEM, "code": "x"}]}]),
    ),
    ("no-patient", lambda e: e.update(participant=[])),
]


@pytest.mark.parametrize(("case", "spoil"), BAD_ENTRIES, ids=[c for c, _ in BAD_ENTRIES])
def test_a_waitlist_entry_that_cannot_be_offered_is_refused(
    world: World, case: str, spoil: Any
) -> None:
    pid = world.patient("Solo", "+15550199")
    body = {
        "resourceType": "Appointment",
        "status": "waitlist",
        "serviceType": [{"coding": [{"system": VISIT_TYPE_SYSTEM, "code": "follow-up"}]}],
        "requestedPeriod": [
            {
                "start": local(world.cfg, MONDAY, 0).isoformat(),
                "end": local(world.cfg, MONDAY, 23).isoformat(),
            }
        ],
        "participant": [{"actor": {"reference": f"Patient/{pid}"}, "status": "needs-action"}],
    }
    spoil(body)
    r = world.client.post("/fhir/Appointment", json=body, headers=FHIR_JSON)
    assert r.status_code == 422, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_book_puts_a_described_patient_on_the_waitlist_without_claiming_time(
    world: World,
) -> None:
    w = world
    entry = {
        "resourceType": "Appointment",
        "status": "waitlist",
        "serviceType": [{"coding": [{"system": VISIT_TYPE_SYSTEM, "code": "follow-up"}]}],
        "requestedPeriod": [
            {
                "start": local(w.cfg, MONDAY, 0).isoformat(),
                "end": local(w.cfg, MONDAY, 23).isoformat(),
            }
        ],
        "contained": [{**make_patient("Described", ["Dee"], phone="+15550177"), "id": "patient"}],
        "participant": [
            {"actor": {"reference": "#patient"}, "status": "needs-action"},
            {"actor": {"reference": "Practitioner/evans"}, "status": "needs-action"},
        ],
    }
    other = w.patient("Other", None)

    def total() -> int:
        found = find(w.client, w.cfg, MONDAY, "follow-up", **{"patient-reference": other})
        return int(found.json()["total"])

    before = total()
    r = op(w.client, "book", appointment_resource=entry)
    assert r.status_code == 201, r.text
    stored = r.json()
    assert stored["status"] == "waitlist" and "contained" not in stored and stored["created"]
    with w.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(BT)).scalar() == 0
    assert total() == before > 0  # the entry blocks nothing
