"""constraints.txt pins every distribution fhir-sched installs, its dependencies' dependencies
too, so `pip install -c constraints.txt .` (./dev, the Dockerfile) installs what was tested
and nothing newer that a later release of some package would pull in."""

from __future__ import annotations

from importlib.metadata import distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

ROOT = Path(__file__).parents[1]


def pinned(text: str) -> dict[NormalizedName, str]:
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    return {
        canonicalize_name(name): version
        for name, version in (line.split("==") for line in lines if line)
    }


def needed(name: str, extras: frozenset[str], seen: set[NormalizedName]) -> set[NormalizedName]:
    """Every distribution ``name`` with ``extras`` requires, as installed here, transitively."""
    for line in distribution(name).requires or []:
        req = Requirement(line)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            continue
        key = canonicalize_name(req.name)
        if key not in seen:
            seen.add(key)
            needed(req.name, frozenset(req.extras), seen)
    return seen


def test_constraints_pin_every_distribution_installed() -> None:
    pins = pinned((ROOT / "constraints.txt").read_text())
    wanted = needed("fhir-sched", frozenset({"test"}), set())
    assert sorted(wanted - pins.keys()) == []
    for name in wanted:  # and the pin is what was tested
        assert distribution(name).version == pins[name], name


def test_the_check_sees_an_unpinned_dependency() -> None:
    pins = pinned("fastapi==0.135.4\n# a comment\n")
    assert canonicalize_name("starlette") in needed("fastapi", frozenset(), set()) - pins.keys()
