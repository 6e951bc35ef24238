"""The handovers screen: the front desk answers a conversation the booking agent handed over,
by keyboard, through the agent's staff API, and a new handover appears without a reload."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from playwright.sync_api import Page, expect

from tests.console.conftest import SignedIn
from tests.console.keys import press
from tests.integration.server import Server


def _handover(server: Server, text: str = "I want to talk to a real person please") -> str:
    """A web chat conversation whose patient asks for a person: the agent hands it over."""
    started = httpx.post(f"{server.root}/agent/conversations", json={}, timeout=30)
    assert started.status_code == 201, started.text
    cid = str(started.json()["id"])
    said = httpx.post(
        f"{server.root}/agent/conversations/{cid}/messages", json={"text": text}, timeout=60
    )
    assert said.status_code == 200 and said.json()["handed_over"], said.text
    return cid


def test_front_desk_answers_a_handover_and_hands_it_back(
    signed_in: SignedIn, console_server: Server, check_a11y: Callable[[Page], None]
) -> None:
    cid = _handover(console_server)
    page = signed_in("frontdesk", screen="handovers")
    expect(page.get_by_role("heading", name="Handovers", level=1)).to_be_visible()
    nav = page.get_by_role("navigation", name="Screens")
    expect(nav.get_by_role("link", name="Handovers")).to_have_attribute("aria-current", "page")
    row = page.locator(f'tr[data-conversation="{cid}"]')
    expect(row).to_contain_text("Asked for a person")
    expect(row).to_contain_text("Web chat")
    expect(row).to_contain_text("Nobody yet")

    # by keyboard: open it, take it, answer, hand it back
    press(page, row.get_by_role("button", name="Open"))
    detail = page.locator("#handovers-detail")
    expect(detail.locator(".transcript")).to_contain_text("I want to talk to a real person please")
    expect(page.locator("#handovers-conv-title")).to_be_focused()
    press(page, detail.get_by_role("button", name="Take"))
    expect(page.locator("#notice")).to_contain_text("You hold this conversation")
    expect(page.locator("#handovers-holder")).to_have_text("PractitionerRole/front-desk")
    expect(row).to_contain_text("PractitionerRole/front-desk")
    check_a11y(page)

    reply = page.get_by_label("Reply to the patient")
    reply.focus()
    page.keyboard.type("Hello, this is the front desk. How can I help?")
    press(page, detail.get_by_role("button", name="Send reply"))
    expect(page.locator("#notice")).to_contain_text("Reply sent to the patient.")
    expect(detail.locator(".line-staff")).to_contain_text("this is the front desk")
    expect(reply).to_have_value("")
    # the patient's chat gets it
    replies = httpx.get(f"{console_server.root}/agent/conversations/{cid}/replies", timeout=30)
    assert "Hello, this is the front desk. How can I help?" in replies.json()["replies"]

    press(page, detail.get_by_role("button", name="Hand back to the agent"))
    expect(page.locator("#notice")).to_contain_text("Handed back to the agent.")
    expect(row).to_have_count(0)
    back = httpx.get(f"{console_server.root}/agent/conversations/{cid}/replies", timeout=30)
    assert back.json()["handed_over"] is False


def test_a_new_handover_appears_without_reloading(
    signed_in: SignedIn, console_server: Server
) -> None:
    page = signed_in("frontdesk", screen="handovers")
    expect(page.get_by_role("heading", name="Handovers", level=1)).to_be_visible()
    expect(page.locator("#handovers-count")).not_to_be_empty()
    page.evaluate("window.notReloaded = true")
    cid = _handover(console_server, "can I speak to someone at the front desk")
    row = page.locator(f'tr[data-conversation="{cid}"]')
    expect(row).to_be_visible(timeout=15_000)  # the screen polls every few seconds
    expect(page.locator("#handovers-live")).to_contain_text("New handover: Asked for a person")
    assert page.evaluate("window.notReloaded") is True
    # leaving the screen stops the polling
    page.get_by_role("link", name="Calendar").click()
    expect(page.get_by_role("heading", name="Calendar", level=1)).to_be_visible()
    page.wait_for_timeout(500)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/agent/queue" in r.url else None)
    page.wait_for_timeout(9_000)
    assert asked == []


def test_the_queue_is_refused_to_a_role_without_communication(
    signed_in: SignedIn, console_server: Server
) -> None:
    """The interface role reads no Communication: no menu entry, and the server's refusal when
    the screen is opened by its address."""
    page = signed_in("interface", screen="handovers")
    nav = page.get_by_role("navigation", name="Screens")
    expect(nav.get_by_role("link", name="HL7 messages")).to_be_visible()
    expect(nav.get_by_role("link", name="Handovers")).to_have_count(0)
    expect(page.locator("#notice")).to_contain_text("the booking agent's queue is for staff")
