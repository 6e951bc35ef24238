"""Blind-index digests for PHI search values.

What the index reveals (documented in README): for each PHI parameter, which resources share a
value or a value prefix (equality only, never the value), how many prefixes a value has (so its
normalised length), and for birth dates which patients share a year, month or day.  Digests are
keyed per resource type and parameter (HKDF from the index secret), so equal values under two
parameters do not link.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from conformance.declaration import SearchParam
from resources.fhirdate import DateRange
from resources.normalize import norm_string
from security.crypto import KeyRing

__all__ = [
    "MAX_PREFIX",
    "date_cover_tokens",
    "date_digests",
    "date_token",
    "exact_digest",
    "prefix_digest",
    "string_digests",
    "token_digests",
    "token_query_digest",
]

MAX_PREFIX = 64


def _purpose(rtype: str, param: SearchParam) -> str:
    return f"{rtype}.{param.name}"


def prefix_digest(keys: KeyRing, rtype: str, param: SearchParam, text: str) -> bytes:
    return keys.blind(_purpose(rtype, param), "p:" + norm_string(text)[:MAX_PREFIX])


def exact_digest(keys: KeyRing, rtype: str, param: SearchParam, text: str) -> bytes:
    return keys.blind(_purpose(rtype, param), "x:" + text)


def string_digests(keys: KeyRing, rtype: str, param: SearchParam, text: str) -> set[bytes]:
    """Every prefix of the normalised value (FHIR starts-with) plus the exact value."""
    normal = norm_string(text)[:MAX_PREFIX]
    purpose = _purpose(rtype, param)
    out = {keys.blind(purpose, "p:" + normal[:n]) for n in range(1, len(normal) + 1)}
    out.add(keys.blind(purpose, "x:" + text))
    return out


def token_digests(
    keys: KeyRing, rtype: str, param: SearchParam, system: str | None, code: str
) -> set[bytes]:
    purpose = _purpose(rtype, param)
    out = {keys.blind(purpose, f"c:{code}"), keys.blind(purpose, f"sc:{system or ''}|{code}")}
    if system:
        out.add(keys.blind(purpose, f"s:{system}"))
    return out


def token_query_digest(
    keys: KeyRing, rtype: str, param: SearchParam, system: str | None, code: str | None
) -> bytes:
    """Digest matching ``code``, ``system|code``, ``|code`` or ``system|``."""
    purpose = _purpose(rtype, param)
    if system is None:
        return keys.blind(purpose, f"c:{code}")
    if code is None:
        return keys.blind(purpose, f"s:{system}")
    return keys.blind(purpose, f"sc:{system}|{code}")


def date_token(precision: str, day: date) -> str:
    if precision == "year":
        return f"y:{day.year:04d}"
    if precision == "month":
        return f"m:{day.year:04d}-{day.month:02d}"
    return f"d:{day.isoformat()}"


def date_digests(keys: KeyRing, rtype: str, param: SearchParam, value: DateRange) -> set[bytes]:
    """A birth date is indexed at its own precision and every coarser one."""
    purpose = _purpose(rtype, param)
    day = value.low.date()
    levels = {"year": ("year",), "month": ("year", "month")}.get(
        value.precision, ("year", "month", "day")
    )
    return {keys.blind(purpose, date_token(level, day)) for level in levels}


def date_cover_tokens(low: date, high: date) -> list[str]:
    """Fewest year/month/day tokens whose ranges exactly tile ``[low, high)``.

    >>> date_cover_tokens(date(1979, 12, 30), date(1981, 2, 2))[:3]
    ['d:1979-12-30', 'd:1979-12-31', 'y:1980']
    """
    out: list[str] = []
    cur = low
    while cur < high:
        if cur.month == 1 and cur.day == 1 and date(cur.year + 1, 1, 1) <= high:
            out.append(date_token("year", cur))
            cur = date(cur.year + 1, 1, 1)
            continue
        nxt_month = date(cur.year + (cur.month == 12), cur.month % 12 + 1, 1)
        if cur.day == 1 and nxt_month <= high:
            out.append(date_token("month", cur))
            cur = nxt_month
            continue
        out.append(date_token("day", cur))
        cur = cur + timedelta(days=1)
    return out


def utc_day(value: datetime) -> date:
    return value.astimezone(UTC).date()
