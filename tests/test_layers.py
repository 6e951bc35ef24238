"""The floors of pyproject.toml name every package and every module of ``security``: a
package or module left out would be checked by no layer (import-linter checks only what a
layer names)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _floors() -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["id"] == "floors")
    return [{m.strip() for m in floor.replace("|", ":").split(":")} for floor in contract["layers"]]


def test_every_package_is_on_a_floor() -> None:
    named = set().union(*_floors())
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    packages = {p.parent.name for p in ROOT.glob("*/*.py")} - {"tests", "bench"}
    assert packages == set(config["root_packages"])
    split = {name.split(".")[0] for name in named if "." in name}
    assert packages - split <= named, "a package is on no floor"


def test_every_security_module_is_on_a_floor() -> None:
    named = set().union(*_floors())
    modules = {
        f"security.{p.stem if p.is_file() else p.name}"
        for p in (ROOT / "security").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or any(p.glob("*.py"))
    }
    assert modules - named == set(), "name each module of security on a floor in pyproject.toml"
