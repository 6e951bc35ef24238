"""Every screen at a tablet's width (820 by 1180, portrait): nothing wider than the screen (no
sideways scrolling), the menu and the screen's own heading in view, and no WCAG 2.1 AA
violation found by axe. The calendar's own tablet test books by keyboard
(test_calendar.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect

from tests.console.conftest import TABLET, SignedIn

SCREENS = [
    ("frontdesk", "calendar", "Calendar"),
    ("frontdesk", "handovers", "Handovers"),
    ("interface", "hl7", "HL7 messages"),
    ("compliance", "audit", "Audit log"),
]


@pytest.mark.parametrize(("login", "screen", "heading"), SCREENS, ids=[s[1] for s in SCREENS])
def test_each_screen_fits_a_tablet(
    signed_in: SignedIn,
    check_a11y: Callable[[Page], None],
    login: str,
    screen: str,
    heading: str,
) -> None:
    page = signed_in(login, screen=screen, viewport=TABLET)
    title = page.get_by_role("heading", name=heading, level=1)
    expect(title).to_be_in_viewport()
    expect(page.get_by_role("navigation", name="Screens")).to_be_in_viewport()
    page.wait_for_load_state("networkidle")
    wide = page.evaluate("document.documentElement.scrollWidth")
    assert wide <= TABLET["width"], f"{screen} is {wide} px wide on an {TABLET['width']} px tablet"
    check_a11y(page)
