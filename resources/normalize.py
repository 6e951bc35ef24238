"""Normalisation shared by indexing and search, so both sides agree byte for byte."""

from __future__ import annotations

import re
import unicodedata

__all__ = ["PHONE_SYSTEMS", "norm_phone", "norm_string", "norm_token_code", "phone_variants"]

_SPACE = re.compile(r"\s+")
PHONE_SYSTEMS = ("phone", "fax", "sms", "pager")


def norm_string(value: str) -> str:
    """Case- and accent-insensitive form used by FHIR string search (starts-with/contains).

    >>> norm_string("  Ça  Va ")
    'ca va'
    """
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _SPACE.sub(" ", stripped.casefold()).strip()


def norm_phone(value: str) -> str:
    """Digits only, so ``(555) 123-4567`` finds ``555-123-4567``.

    >>> norm_phone("+1 (617) 555-0199")
    '16175550199'
    """
    return re.sub(r"\D", "", value)


def phone_variants(value: str) -> set[str]:
    """What a stored number answers to: all its digits, and its last ten (national number),
    so ``+1-617-555-0199`` is found by ``617-555-0199`` too."""
    digits = norm_phone(value)
    return {digits, digits[-10:]} if len(digits) > 10 else {digits}


def norm_token_code(system: str | None, code: str) -> str:
    """Telecom values compare loosely: phone numbers by digits, emails case-insensitively."""
    if system in PHONE_SYSTEMS:
        return norm_phone(code)
    if system == "email":
        return code.strip().casefold()
    return code
