"""Configuration mistakes as one line each, for every ``fhir-sched`` command.

A wrong setting, a missing file or a database that cannot be reached is the operator's to fix,
not a fault in the program: the command answers as click answers a bad option (``Error: …``,
exit status 1), naming the variable, the value (never a secret one, never a password) and what
is accepted. ``FHIRSCHED_LOG_LEVEL=debug`` keeps the traceback. Anything else is not
translated: a traceback is then the right answer.

Examples::

    $ FHIRSCHED_PORT=abc fhir-sched serve
    Error: FHIRSCHED_PORT: 'abc' is not an integer
    $ FHIRSCHED_DATABASE_URL=postgresql+psycopg://app:pw@db:5432/fhir fhir-sched db upgrade
    Error: cannot reach the database at postgresql+psycopg://app@db:5432/fhir (password
    hidden): connection refused
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

from fhir_server.settings import Settings
from scheduling.config import ClinicConfigError

__all__ = ["config_error", "shows_tracebacks"]

_PREFIX = Settings.model_config.get("env_prefix", "FHIRSCHED_")


def shows_tracebacks() -> bool:
    """Whether the operator asked for tracebacks. Read from the environment when the error
    happens, since the error may be that the settings cannot be built."""
    return os.environ.get(f"{_PREFIX}LOG_LEVEL", "").strip().lower() == "debug"


def config_error(exc: BaseException) -> str | None:
    """The message for a configuration mistake, or None if ``exc`` is not one."""
    if isinstance(exc, ValidationError) and exc.title == Settings.__name__:
        return "\n".join(_setting_problem(error) for error in exc.errors())
    if isinstance(exc, SettingsError):
        field = re.search(r'field "(\w+)"', str(exc))
        name = _variable(field.group(1)) if field else "a setting"
        return f"{name}: not valid JSON (give a JSON list or object)"
    if isinstance(exc, ClinicConfigError):
        return f"{_variable('clinic_file')}: {exc}"
    if isinstance(exc, OperationalError) and exc.statement is None:  # while connecting
        return f"cannot reach the database at {_database()}: {_reason(exc.orig)}"
    return None


def _variable(field: str) -> str:
    return f"{_PREFIX}{field.upper()}"


def _setting_problem(error: Any) -> str:
    loc = [str(part) for part in error["loc"]]
    field = loc[0] if loc else ""
    where = _variable(field) + "".join(f"[{part}]" for part in loc[1:])
    value = error.get("input")
    hidden = _is_secret(field) or field == "database_url" or isinstance(value, dict | list)
    shown = "the value given" if hidden else repr(value)
    return f"{where}: {_problem(error['type'], shown, error)}"


def _problem(kind: str, shown: str, error: Any) -> str:
    ctx = error.get("ctx") or {}
    if kind == "value_error":  # our validators' own sentences
        return str(error["msg"]).removeprefix("Value error, ")
    simple = {
        "int_parsing": f"{shown} is not an integer",
        "int_from_float": f"{shown} is not a whole number",
        "float_parsing": f"{shown} is not a number",
        "bool_parsing": f"{shown} is not true or false",
        "path_not_file": f"{shown} is not a file; name an existing file",
        "path_type": f"{shown} is not a file path",
        "missing": "is required",
        "json_invalid": f"{shown} is not valid JSON",
        "extra_forbidden": "is not an accepted field",
    }
    if kind in simple:
        return simple[kind]
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "less_than_equal": ("at most", "le"),
        "greater_than": ("more than", "gt"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"{shown} is out of range; it must be {words} {ctx.get(key)}"
    return f"{shown} is not accepted: {str(error['msg']).lower()}"


def _is_secret(field: str) -> bool:
    info = Settings.model_fields.get(field)
    return info is not None and SecretStr in _types(info.annotation)


def _types(annotation: Any) -> set[Any]:
    args = getattr(annotation, "__args__", None)
    return {annotation} if not args else {t for arg in args for t in _types(arg)}


def _database() -> str:
    """The configured database URL, its password left out."""
    try:
        url = make_url(Settings().database_url)
    except (ValidationError, SettingsError, ArgumentError):
        return "the configured URL"
    if url.password is None:
        return url.render_as_string()
    shown = url._replace(password=None).render_as_string()
    return f"{shown} (password hidden)"


def _reason(orig: BaseException | None) -> str:
    """The driver's reason, without its preamble: ``connection refused``, ``database "x"
    does not exist``, ``password authentication failed for user "app"``."""
    first = str(orig).strip().splitlines()[0] if orig is not None and str(orig) else "no reason"
    reason = first.rsplit("failed: ", 1)[-1].strip()
    reason = re.sub(r"^(FATAL|ERROR):\s+", "", reason)
    return reason[:1].lower() + reason[1:]
