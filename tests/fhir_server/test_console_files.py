"""The console's files: the vendored FullCalendar is the release VENDORED.md names, and the
page has no inline script (the policy would refuse it)."""

from __future__ import annotations

import hashlib
import re

from fhir_server.routes.console import STATIC

VENDOR = STATIC / "vendor" / "fullcalendar"


def test_fullcalendar_is_the_release_named() -> None:
    named = (VENDOR / "VENDORED.md").read_text()
    digest = hashlib.sha256((VENDOR / "index.global.min.js").read_bytes()).hexdigest()
    assert digest == "65f927f1802cb35428b9c5e2a8d2276633880a89ee5ea5f9a7727f79892786ea"
    assert digest in named
    assert "FullCalendar Standard Bundle v6.1.22" in (VENDOR / "index.global.min.js").read_text()
    assert "6.1.22" in named
    assert (VENDOR / "LICENSE.md").read_text().startswith("MIT License")


def test_the_page_has_no_inline_script_or_style_text() -> None:
    page = (STATIC / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page) == []
    assert re.findall(r"<style[^>]*>([^<]*)</style>", page) == [""]  # the empty FullCalendar one
    assert "style=" not in page
