"""agent/tools.py: an option shown more than ten minutes ago is looked up again with ``$find``
before it is booked, and booked if it is still open."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from agent.tools import STALE_AFTER
from resources.sql.engine import Database
from resources.store import Store
from security.crypto import KeyRing
from tests.agent.harness import agent_world, existing_patient


def test_an_option_shown_hours_ago_days_ahead_is_still_booked(
    db: Database, keys: KeyRing, store: Store, tmp_path: Path
) -> None:
    """$find answers the earliest times first: looked up again from now, three days of
    earlier times filled its page and the Thursday option was no longer seen."""
    with agent_world(db, keys, store, tmp_path) as world:
        existing_patient(world, "pat-2")
        agent = world.agent
        row, _ = agent.start("web")
        agent.receive(row.id, "Follow-up on Thursday afternoon? Maria Rivera 03/14/1988")
        shown = agent.receive(row.id, "B").replies[0]
        world.clock.now += 3 * STALE_AFTER + timedelta(hours=2)

        turn = agent.receive(row.id, "yes")

        assert turn.tool_calls == ["book"]
        assert turn.replies[0].startswith("Done: you're booked for")
        assert shown.removeprefix("Please confirm: ").split(". Shall")[0] in turn.replies[0]
        [booked] = world.search("Appointment", {"patient": "Patient/pat-2", "status": "booked"})
        assert booked["start"].startswith(str(world.monday + timedelta(days=3)))
