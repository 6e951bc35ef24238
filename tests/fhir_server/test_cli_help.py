"""Every command's --help reads as plain text: no reStructuredText or Markdown markup left
from the docstrings it is made of (click rewraps them, it does not render markup)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from fhir_server.cli import main

RAW = re.compile(r"``|:(func|class|data|mod|meth|attr):|\*\*|\x08|\\b")


def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _commands(sub, (*path, name))


@pytest.mark.parametrize("path", list(_commands(main)), ids=lambda p: " ".join(p) or "main")
def test_help_has_no_raw_markup(path: tuple[str, ...]) -> None:
    shown = CliRunner().invoke(main, [*path, "--help"])
    assert shown.exit_code == 0, shown.output
    assert not RAW.search(shown.output), shown.output


def test_launch_help_shows_its_example_as_written() -> None:
    shown = CliRunner().invoke(main, ["launch", "--help"]).output
    assert "as its launch parameter (SMART EHR launch)" in shown
    assert "\n  Example:\n    fhir-sched launch --patient pat-1\n" in shown
