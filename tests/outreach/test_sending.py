"""outreach/sending.py: a text claimed before it is sent, sent once, recorded with its
Communication and AuditEvent; opted-out numbers skipped; a crash mid-send never resent."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, text, update

from outreach.sending import Outreach
from resources.sql.engine import Database
from resources.sql.tables import OutreachMessage
from resources.store import Store
from security.crypto import KeyRing

T = OutreachMessage.__table__


class Recording:
    name = "recording"

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, str]] = []
        self.fail = fail

    def send(self, to: str, body: str) -> str:
        if self.fail:
            raise OSError("unreachable")
        self.sent.append((to, body))
        return f"SM{len(self.sent)}"


def _outreach(db: Database, store: Store, keys: KeyRing, sender: Recording) -> Outreach:
    return Outreach(db=db, store=store, keys=keys, sender=sender, server="http://test/fhir")


def _send(o: Outreach, dedupe: str = "reminder:a1:t:48") -> object:
    return o.send_once(
        kind="reminder",
        dedupe=dedupe,
        to="+1 555 0101",
        body="Reminder: Dr. Smith, Tue Dec 8, 2:30 pm. Reply YES to confirm or CANCEL to cancel",
        appointment_id="a1",
        patient_id="p1",
    )


def test_a_text_is_sent_once_and_recorded_with_its_communication(
    db: Database, store: Store, keys: KeyRing
) -> None:
    sender = Recording()
    o = _outreach(db, store, keys, sender)
    first = _send(o)
    again = _send(o)
    assert first.state == "sent" and first.provider_id == "SM1"  # type: ignore[attr-defined]
    assert again.state == "duplicate"  # type: ignore[attr-defined]
    assert sender.sent == [("+15550101", sender.sent[0][1])]
    with db.read() as conn:
        comm = store.read(conn, "Communication", first.communication_id)  # type: ignore[attr-defined]
        assert comm is not None
        body = comm.resource()
        assert body["about"] == [{"reference": "Appointment/a1"}]
        assert body["recipient"] == [{"reference": "Patient/p1"}]
        assert body["identifier"][0]["value"] == "SM1"
        stored = conn.execute(select(T.c.ciphertext, T.c.state)).one()
        assert b"5550101" not in stored.ciphertext and stored.state == "sent"
        events = conn.execute(text("SELECT count(*) FROM audit_log")).scalar()
        assert events and events >= 1
    last = o.last_sent_to("+15550101")
    assert last is not None and last.appointment_id == "a1" and last.to == "+15550101"


def test_an_opted_out_number_is_skipped_and_start_lets_it_through(
    db: Database, store: Store, keys: KeyRing
) -> None:
    sender = Recording()
    o = _outreach(db, store, keys, sender)
    o.set_opt_out("+15550101", True)
    assert _send(o, "k1").state == "skipped"  # type: ignore[attr-defined]
    o.set_opt_out("555 0101".join(["+1 ", ""]), False)
    assert _send(o, "k2").state == "sent"  # type: ignore[attr-defined]
    assert len(sender.sent) == 1


def test_a_refused_text_is_failed_not_retried(db: Database, store: Store, keys: KeyRing) -> None:
    o = _outreach(db, store, keys, Recording(fail=True))
    assert _send(o).state == "failed"  # type: ignore[attr-defined]
    ok = Recording()
    assert _send(_outreach(db, store, keys, ok)).state == "duplicate"  # type: ignore[attr-defined]
    assert ok.sent == []


def test_a_crash_between_sending_and_recording_is_never_resent(
    db: Database, store: Store, keys: KeyRing
) -> None:
    sender = Recording()
    o = _outreach(db, store, keys, sender)
    with db.write() as conn:  # claimed, then the process died before recording
        assert o.claim(
            conn, kind="reminder", dedupe="k", to="+15550101", body="x", appointment_id="a1"
        )
        conn.execute(update(T).values(created=o.clock() - timedelta(hours=1)))
    assert _send(o, "k").state == "duplicate"  # type: ignore[attr-defined]
    assert o.settle() == 1
    assert [m.state for m in o.messages()] == ["unknown"]
    assert sender.sent == []
