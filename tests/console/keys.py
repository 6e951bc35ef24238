"""Keyboard helpers for the console's browser tests: reach a control by Tab and press it."""

from __future__ import annotations

from playwright.sync_api import Locator, Page

MAX_TABS = 80


def tab_to(page: Page, target: Locator) -> None:
    """Press Tab (from where the focus is) until ``target`` has the focus; fails if it never
    does within MAX_TABS presses, i.e. when the keyboard cannot reach it."""
    handle = target.element_handle()
    assert handle is not None
    for _ in range(MAX_TABS):
        page.keyboard.press("Tab")
        if page.evaluate("(el) => document.activeElement === el", handle):
            return
    raise AssertionError(f"Tab never reached {target}")


def press(page: Page, target: Locator, key: str = "Enter") -> None:
    """Reach ``target`` by Tab, then press ``key`` (Enter by default) on it."""
    tab_to(page, target)
    page.keyboard.press(key)
