"""The calendar screen as the front desk uses it, in chromium against the real demo server:
find a time with $find, book it, move it, cancel it (all through $book, checked through the
API afterwards), a time taken meanwhile shown as a clear message, by keyboard, and with no
WCAG 2.1 AA violation found by axe."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from playwright.sync_api import Page, expect

from tests.console.conftest import CLINIC_ZONE, TABLET, SignedIn
from tests.integration.server import Server

TZ = ZoneInfo(CLINIC_ZONE)
SMITH = "Practitioner/dr-smith"


def _find(server: Server, day: date, patient: str, count: int = 12) -> list[dict[str, Any]]:
    start = datetime.combine(day, time(0), tzinfo=TZ)
    params = {
        "start": start.isoformat(),
        "end": (start + timedelta(days=1)).isoformat(),
        "visit-type": "follow-up",
        "patient-reference": patient,
        "practitioner": SMITH,
        "_count": str(count),
    }
    answer = httpx.get(
        f"{server.base}/Appointment/$find", params=params, headers=server.headers, timeout=30
    )
    assert answer.status_code == 200, answer.text
    entries = answer.json().get("entry", [])
    return [e["resource"] for e in entries if e.get("search", {}).get("mode") != "outcome"]


def _a_day_with_times(server: Server, patient: str, skip: int = 0) -> date:
    """A day at least three days ahead (moves need the clinic's notice) with free follow-up
    times for ``patient`` with Dr. Smith; ``skip`` such days are passed over."""
    day = datetime.now(TZ).date() + timedelta(days=3)
    for _ in range(12):
        if len(_find(server, day, patient)) >= 4:
            if skip == 0:
                return day
            skip -= 1
        day += timedelta(days=1)
    raise AssertionError("no day with free follow-up times in the demo's two weeks")


def _appointments(server: Server, patient: str, day: date) -> dict[str, str]:
    start = datetime.combine(day, time(0), tzinfo=TZ)
    params = [
        ("patient", patient),
        ("date", f"ge{start.isoformat()}"),
        ("date", f"lt{(start + timedelta(days=1)).isoformat()}"),
    ]
    answer = httpx.get(
        f"{server.base}/Appointment", params=params, headers=server.headers, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return {e["resource"]["start"]: e["resource"]["status"] for e in answer.json().get("entry", [])}


def _open_finder(page: Page, day: date, search: str, match: str) -> None:
    page.get_by_label("Whose calendar").select_option(SMITH)
    page.get_by_label("Patient: name, birth date").fill(search)
    page.get_by_role("button", name="Search patients").click()
    page.get_by_role("button", name=match).click()
    page.get_by_label("Visit type").select_option("follow-up")
    page.get_by_label("Day").fill(day.isoformat())
    page.get_by_role("button", name="Find free times").click()


def test_front_desk_books_moves_and_cancels(
    signed_in: SignedIn,
    console_server: Server,
    screenshot: Callable[[Page, str], None],
) -> None:
    day = _a_day_with_times(console_server, "Patient/pat-1")
    page = signed_in("frontdesk", screen="calendar")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    _open_finder(page, day, "Chalmers", "Peter James Chalmers, born 1974-12-25")
    options = page.locator("#find-options button")
    expect(options.first).to_contain_text("Book")
    options.first.click()
    notice = page.get_by_role("alert")
    expect(notice).to_contain_text("Booked: Peter James Chalmers")
    booked = _appointments(console_server, "Patient/pat-1", day)
    assert list(booked.values()) == ["booked"]

    # the calendar went to that day and shows it, confirmed or not
    event = page.locator(".fc-event", has_text="Peter James Chalmers")
    expect(event).to_have_count(1)
    screenshot(page, "console-calendar")
    event.click()
    detail = page.locator("#appt-detail")
    expect(detail).to_contain_text("Follow-up")
    expect(detail).to_contain_text("Patient confirmed")
    page.get_by_role("button", name="Move").click()
    expect(
        page.get_by_role("heading", name="Move Peter James Chalmers's appointment")
    ).to_be_visible()
    page.get_by_role("button", name="Find free times").click()
    page.locator("#find-options button").nth(1).click()
    expect(notice).to_contain_text("Moved: Peter James Chalmers")
    moved = _appointments(console_server, "Patient/pat-1", day)
    assert sorted(moved.values()) == ["booked", "cancelled"]

    page.locator(".fc-event", has_text="Peter James Chalmers").click()
    page.get_by_role("button", name="Cancel appointment").click()
    page.get_by_role("button", name="Yes, cancel it").click()
    expect(notice).to_contain_text("Cancelled: Peter James Chalmers")
    expect(page.locator(".fc-event", has_text="Peter James Chalmers")).to_have_count(0)
    assert sorted(_appointments(console_server, "Patient/pat-1", day).values()) == [
        "cancelled",
        "cancelled",
    ]
    assert errors == []  # nothing refused by the page's policy, no script error


def test_a_time_taken_meanwhile_is_said_clearly(
    signed_in: SignedIn, console_server: Server
) -> None:
    day = _a_day_with_times(console_server, "Patient/pat-2", skip=1)
    page = signed_in("frontdesk", screen="calendar")
    _open_finder(page, day, "1988-03-14", "Maria Rivera, born 1988-03-14")
    first = page.locator("#find-options button").first
    expect(first).to_contain_text("Book")
    # someone else books that very time, through the API, before the front desk clicks
    proposal = _find(console_server, day, "Patient/pat-2", count=1)[0]
    taken = httpx.post(
        f"{console_server.base}/Appointment/$book",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "appointment-resource", "resource": proposal}],
        },
        headers=console_server.headers,
        timeout=30,
    )
    assert taken.status_code in (200, 201), taken.text
    first.click()
    notice = page.get_by_role("alert")
    expect(notice).to_contain_text("That time was taken by another booking a moment ago.")
    expect(notice).to_contain_text("choose again")
    # the list was refreshed: the taken time is no longer offered
    when = datetime.fromisoformat(proposal["start"]).astimezone(TZ)
    label = f"{when:%-I}:{when:%M}"
    expect(page.locator("#find-options button").first).not_to_contain_text(label)


def test_the_calendar_by_keyboard_and_axe(
    signed_in: SignedIn, console_server: Server, check_a11y: Callable[[Page], None]
) -> None:
    """Search, choose the patient, find and book with Tab and Enter only; then axe on a
    tablet-sized calendar showing that booking."""
    day = _a_day_with_times(console_server, "Patient/pat-1", skip=2)
    page = signed_in("frontdesk", screen="calendar", viewport=TABLET)
    page.get_by_label("Whose calendar").select_option(SMITH)
    page.get_by_label("Visit type").select_option("follow-up")
    page.get_by_label("Day").fill(day.isoformat())
    field = page.get_by_label("Patient: name, birth date")
    field.focus()
    page.keyboard.type("555-0101")  # Peter's phone
    page.keyboard.press("Enter")  # submits the search; focus moves to the first match
    expect(page.get_by_role("button", name="Peter James Chalmers, born 1974-12-25")).to_be_focused()
    page.keyboard.press("Enter")  # chooses him; focus moves to "Find free times"
    expect(page.get_by_role("button", name="Find free times")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#find-options button").first).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("Booked: Peter James Chalmers")
    event = page.locator(".fc-event", has_text="Peter James Chalmers")
    event.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Move")).to_be_focused()
    check_a11y(page)


def test_a_booking_shows_its_no_show_risk_with_its_reasons(
    signed_in: SignedIn, console_server: Server
) -> None:
    """The server's risk job scores a new booking within seconds; the calendar shows the score
    on the event and, in its detail, the reasons the score gives."""
    day = _a_day_with_times(console_server, "Patient/pat-1", skip=3)
    page = signed_in("frontdesk", screen="calendar")
    _open_finder(page, day, "Chalmers", "Peter James Chalmers, born 1974-12-25")
    page.locator("#find-options button").first.click()
    expect(page.get_by_role("alert")).to_contain_text("Booked: Peter James Chalmers")
    start = datetime.combine(day, time(0), tzinfo=TZ)
    params = [
        ("patient", "Patient/pat-1"),
        ("status", "booked"),
        ("date", f"ge{start.isoformat()}"),
        ("date", f"lt{(start + timedelta(days=1)).isoformat()}"),
    ]
    deadline = datetime.now() + timedelta(seconds=60)
    scored: dict[str, Any] = {}
    while not scored:  # the job runs every 3 seconds here (FHIRSCHED_RISK_REFRESH_SECONDS)
        found = httpx.get(
            f"{console_server.base}/Appointment",
            params=params,
            headers=console_server.headers,
            timeout=30,
        ).json()
        for entry in found.get("entry", []):
            if any(
                e["url"].endswith("/no-show-risk") for e in entry["resource"].get("extension", [])
            ):
                scored = entry["resource"]
        assert scored or datetime.now() < deadline, "the booking was never scored"
    (ext,) = [e for e in scored["extension"] if e["url"].endswith("/no-show-risk")]
    score = next(x["valueDecimal"] for x in ext["extension"] if x["url"] == "score")
    reasons = [x["valueString"] for x in ext["extension"] if x["url"] == "reason"]
    page.get_by_role("button", name="Week").click()  # another range: the calendar reads again
    event = page.locator(".fc-event", has_text="Peter James Chalmers")
    expect(event).to_contain_text(f"⚠ {round(score * 100)}%")
    event.click()
    detail = page.locator("#appt-detail")
    expect(detail).to_contain_text(f"No-show risk{round(score * 100)}%")
    for reason in reasons:
        expect(detail).to_contain_text(reason)
    page.get_by_role("button", name="Cancel appointment").click()  # leave the day as it was
    page.get_by_role("button", name="Yes, cancel it").click()
    expect(page.get_by_role("alert")).to_contain_text("Cancelled: Peter James Chalmers")
