"""Normalisation shared by indexing and search, so both sides agree byte for byte."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["norm_phone", "norm_string", "norm_token_code"]

_SPACE = re.compile(r"\s+")


def norm_string(value: str) -> str:
    """Case- and accent-insensitive form used by FHIR string search (starts-with/contains).

    >>> norm_string("  Ça  Va ")
    'ca va'
    """
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _SPACE.sub(" ", stripped.casefold()).strip()


def norm_phone(value: str) -> str:
    """Digits only (keeping a leading +), so ``(555) 123-4567`` finds ``555-123-4567``."""
    value = value.strip()
    digits = re.sub(r"\D", "", value)
    return ("+" + digits) if value.startswith("+") else digits


def norm_token_code(system: str | None, code: str) -> str:
    """Telecom values compare loosely: phone numbers by digits, emails case-insensitively."""
    if system in ("phone", "fax", "sms", "pager"):
        return norm_phone(code)
    if system == "email":
        return code.strip().casefold()
    return code
