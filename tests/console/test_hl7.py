"""The HL7 messages screen: the EMR team (role interface) sees the failed inbound messages with
their reason, opens one (what `fhir-sched hl7 show` gives) and replays it; the front desk sees
the list only, and the server refuses it the message and the replay."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Page, expect

from fhir_server.demo import DEMO_CLINIC
from tests.console.conftest import SignedIn
from tests.console.keys import press
from tests.integration.server import EXE, Server, free_port
from tests.integration.test_hl7_command import _message, _send

T = TypeVar("T")


def _in_thread(work: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end on a thread of its own (Playwright's sync API keeps an event
    loop on the test's thread)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work).result()


@pytest.fixture(scope="module")
def failed(console_server: Server) -> dict[str, str]:
    """A message sent over MLLP to `fhir-sched hl7 listen` on the console server's database: a
    booking with no length and a visit type the demo clinic lacks, so it fails (ACK AE) and
    fails again when replayed."""
    port = free_port()
    env = {**console_server.env, "FHIRSCHED_HL7_PORT": str(port)}
    env["FHIRSCHED_CLINIC_FILE"] = str(DEMO_CLINIC)
    tag = uuid.uuid4().hex[:6].upper()
    broken = f"X{tag}"
    proc = subprocess.Popen([str(EXE), "hl7", "listen"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        acks: list[tuple[str, str]] = []
        while not acks:
            try:
                acks = _in_thread(
                    _send(
                        port,
                        _message(broken, "Confirmed", 10, minutes=""),
                    )
                )
            except OSError:
                assert time.monotonic() < deadline, "the MLLP listener did not start"
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert acks == [("AE", broken)]
    return {"broken": broken}


def test_the_emr_team_opens_and_replays_a_failed_message(
    signed_in: SignedIn, failed: dict[str, str], check_a11y: Callable[[Page], None]
) -> None:
    page = signed_in("interface", screen="hl7")
    expect(page.get_by_role("heading", name="HL7 messages", level=1)).to_be_visible()
    rows = page.locator("tbody tr")
    broken = rows.filter(has_text=failed["broken"])
    expect(broken).to_contain_text("Failed")
    expect(broken).to_contain_text("101 Required field missing; ACK AE")
    check_a11y(page)

    press(page, broken.get_by_role("button", name="Open"))
    detail = page.locator("#hl7-detail")
    expect(page.locator("#hl7-detail-title")).to_be_focused()
    expect(page.locator("#hl7-reason")).to_contain_text("AIS-3 'consult' is no visit type")
    expect(detail.locator("pre.hl7").first).to_contain_text(f"SCH|P{failed['broken']}")
    press(page, detail.get_by_role("button", name="Replay"))
    expect(page.locator("#hl7-replay-result")).to_contain_text("Still failed")
    expect(page.locator("#hl7-replay-result")).to_contain_text("consult")
    check_a11y(page)


def test_front_desk_sees_the_list_but_the_server_keeps_the_message(
    signed_in: SignedIn, console_server: Server, failed: dict[str, str]
) -> None:
    page = signed_in("frontdesk", screen="hl7")
    nav = page.get_by_role("navigation", name="Screens")
    expect(nav.get_by_role("link", name="HL7 messages")).to_be_visible()
    row = page.locator("tbody tr").filter(has_text=failed["broken"])
    expect(row).to_contain_text("Failed")
    message_id = row.get_attribute("data-message")
    row.get_by_role("button", name="Open").click()
    refused = page.locator("#hl7-refused")
    expect(refused).to_contain_text("open to signed-in users with the role interface")
    expect(page.locator("#hl7-detail pre")).to_have_count(0)
    # the server refuses, not only the page: the front desk's own token at both doors
    token = page.evaluate("JSON.parse(sessionStorage.getItem('console.session')).accessToken")
    auth = {"Authorization": f"Bearer {token}"}
    door = f"{console_server.root}/hl7/messages/{message_id}"
    shown = httpx.get(door, headers=auth, timeout=30)
    assert shown.status_code == 403 and "SCH|" not in shown.text
    replayed = httpx.post(f"{door}/replay", headers=auth, timeout=30)
    assert replayed.status_code == 403
    assert replayed.json()["resourceType"] == "OperationOutcome"


def test_compliance_has_no_hl7_screen(signed_in: SignedIn) -> None:
    page = signed_in("compliance")
    nav = page.get_by_role("navigation", name="Screens")
    expect(nav.get_by_role("link", name="Audit")).to_be_visible()
    expect(nav.get_by_role("link", name="HL7 messages")).to_have_count(0)
