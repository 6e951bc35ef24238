"""The documentation's promises and shell examples stay true: no GNU-only `date -d` (the
quick start runs on Linux and macOS), no promise of work an issue number stands for, and the
README's date line gives next Monday; a LICENSE and a CHANGELOG in the forms their
tools read."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from datetime import date, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PROMISE = re.compile(r"\b(will|once|arrives|to come|later|planned|until)\b", re.IGNORECASE)
DOCS = sorted([*ROOT.glob("*.md"), *(ROOT / "docs").glob("*.md")])


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_gnu_only_date_and_no_promised_issues(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    shell = "\n".join(re.findall(r"^```\w*\n(.*?)^```", text, re.MULTILINE | re.DOTALL))
    assert not re.search(r"\bdate\s+(-d|--date)\b", shell), "date -d is GNU date's alone"
    for sentence in re.split(r"(?<=[.!?])\s+", text):  # an issue cited as a source is fine
        if re.search(r"\bissue \d+\b", sentence, re.IGNORECASE):
            assert not PROMISE.search(sentence), f"a promise, or a stale one: {sentence!r}"


def test_the_readme_date_line_gives_next_monday() -> None:
    line = next(
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("MONDAY=")
    )
    code = re.fullmatch(r"MONDAY=\$\(python3 -c '([^']+)'\)", line)
    assert code is not None, line
    out = subprocess.run(
        [sys.executable, "-c", code.group(1)], capture_output=True, text=True, check=True
    ).stdout.strip()
    monday = date.fromisoformat(out)
    assert monday.weekday() == 0
    assert timedelta(days=1) <= monday - date.today() <= timedelta(days=7)


def test_the_license_is_apache_2_and_said_so_everywhere() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "Copyright 2026 the fhir-sched authors" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]


def test_the_changelog_keeps_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    assert "https://keepachangelog.com/en/1.1.0/" in text
    assert re.findall(r"^## (.+)$", text, re.MULTILINE)[0] == "[Unreleased]"
    kinds = set(re.findall(r"^### (.+)$", text, re.MULTILINE))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds
