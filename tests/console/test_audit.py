"""The audit viewer: the compliance officer finds who read a patient's record in a date range,
sees the chain intact and exports the result as NDJSON; a clinician is refused by the server."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
from playwright.sync_api import Page, expect

from tests.console.conftest import SignedIn
from tests.console.keys import press, tab_to
from tests.integration.server import Server


def test_compliance_finds_who_read_a_patient_and_exports_it(
    signed_in: SignedIn,
    console_server: Server,
    check_a11y: Callable[[Page], None],
    screenshot: Callable[[Page, str], None],
) -> None:
    patients = httpx.get(
        f"{console_server.base}/Patient",
        params={"_count": 1},
        headers=console_server.headers,
        timeout=30,
    ).json()
    patient = patients["entry"][0]["resource"]["id"]
    # the front desk reads the patient's record, with its own token
    desk = signed_in("frontdesk")
    token = desk.evaluate("JSON.parse(sessionStorage.getItem('console.session')).accessToken")
    read = httpx.get(
        f"{console_server.base}/Patient/{patient}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert read.status_code == 200

    page = signed_in("compliance", screen="audit")
    expect(page.get_by_role("heading", name="Audit log", level=1)).to_be_visible()
    expect(page.locator("#audit-chain")).to_contain_text("Audit chain intact through record")
    today = datetime.now(UTC).date()
    # by keyboard: the fields, then Search
    page.get_by_label("Patient").focus()
    page.keyboard.type(patient)
    page.get_by_label("From").fill((today - timedelta(days=30)).isoformat())
    page.get_by_label("To (inclusive)").fill(today.isoformat())
    page.get_by_label("Action").select_option("R")
    press(page, page.get_by_role("button", name="Search"))
    rows = page.locator("#audit-form ~ .scroll tbody tr")
    first = rows.filter(has_text="PractitionerRole/front-desk").first
    expect(first).to_contain_text(f"Patient: Patient/{patient}")
    expect(first).to_contain_text("Read · Restful Operation")
    expect(first).to_contain_text("via console")
    expect(first).to_contain_text("127.0.0.1")
    expect(first).to_contain_text("Success")
    expect(page.locator("#audit-summary")).to_contain_text("newest first")
    check_a11y(page)
    screenshot(page, "console-audit")

    tab_to(page, page.get_by_role("button", name="Export NDJSON"))
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    lines = download.value.path().read_text().splitlines()
    assert download.value.suggested_filename.endswith(".ndjson")
    events = [json.loads(line) for line in lines]
    assert events and all(e["resourceType"] == "AuditEvent" for e in events)
    assert all(e["action"] == "R" for e in events)
    assert all(
        any(x.get("what", {}).get("reference") == f"Patient/{patient}" for x in e["entity"])
        for e in events
    )
    assert any(
        any(a["who"].get("reference") == "PractitionerRole/front-desk" for a in e["agent"])
        for e in events
    )
    expect(page.locator("#audit-exported")).to_contain_text(f"{len(events)} event(s) exported")


def test_paging_and_the_conversation_of_an_event(
    signed_in: SignedIn, console_server: Server
) -> None:
    with httpx.Client(headers=console_server.headers, timeout=30) as client:
        for _ in range(45):  # more than two pages of events
            assert client.get(f"{console_server.base}/Location").status_code == 200
    started = httpx.post(f"{console_server.root}/agent/conversations", json={}, timeout=30)
    cid = started.json()["id"]
    httpx.post(
        f"{console_server.root}/agent/conversations/{cid}/messages",
        json={"text": "hello, I need a person"},
        timeout=60,
    )
    page = signed_in("compliance", screen="audit")
    expect(page.locator("#audit-summary")).to_contain_text("Events 1 to 20 of")
    page.get_by_role("button", name="Older events").click()
    expect(page.locator("#audit-summary")).to_contain_text("Events 21 to 40 of")
    page.get_by_role("button", name="Newer events").click()
    expect(page.locator("#audit-summary")).to_contain_text("Events 1 to 20 of")
    page.get_by_label("Conversation", exact=True).fill(cid)
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#audit-summary")).to_contain_text("Events 1 to")
    row = page.locator("tbody tr").filter(has_text="via agent-web").first
    expect(row).to_contain_text(f"conversation {cid}")
    row.get_by_role("button", name="Read the conversation").click()
    conversation = page.locator("#audit-conversation")
    expect(conversation).to_contain_text("hello, I need a person")
    expect(page.locator("#audit-conversation-title")).to_be_focused()


def test_a_clinician_is_refused_the_audit_log_by_the_server(signed_in: SignedIn) -> None:
    page = signed_in("drsmith", screen="audit")
    nav = page.get_by_role("navigation", name="Screens")
    expect(nav.get_by_role("link", name="Audit")).to_have_count(0)
    expect(page.get_by_role("alert")).to_contain_text(
        "the audit log is open to compliance officers"
    )
    expect(page.locator("#audit-chain")).to_have_text("The audit chain could not be checked.")
