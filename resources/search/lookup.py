"""Which live resources match each of a few searches on PHI parameters: their ids, and nothing
else, in one round trip.

Matching the patient a message or a request describes is such a lookup (an identifier; else a
family name and a birth date), made for every HL7 message with a PID the bridge has not seen
and for every ``$find`` and ``$book`` with a ``patient-resource``. Through the search engine
each try costs about a millisecond of Python (a plan, SQL built and compiled, a count, the
matches opened) and a round trip of its own. Here each try is a fixed statement per shape over
``idx_blind``, with the digests the search engine itself would look for
(:meth:`ConditionBuilder.blind_digests`), so a try matches exactly what the same search would,
and all tries go to PostgreSQL together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, bindparam, false, select

from conformance.declaration import search_param
from resources.search.conditions import ConditionBuilder
from resources.sql.direct import Direct, pipelined
from resources.store import INDEX_TABLES, R
from security.crypto import KeyRing

__all__ = ["blind_match", "send_blind_match"]

B = INDEX_TABLES["blind"]


@lru_cache(maxsize=64)
def _statement(digests: tuple[int, ...], limit: int) -> Direct:
    """Live resources of ``rtype`` with, for each term ``i``, one of its ``digests[i]`` digests
    (bound as ``p{i}`` for the parameter and ``d{i}_{k}``), in ``seq`` order as the search
    engine returns them."""
    terms = [
        R.c.seq.in_(
            select(B.c.seq).where(
                B.c.res_type == bindparam("rtype"),
                B.c.param == bindparam(f"p{i}"),
                B.c.digest.in_([bindparam(f"d{i}_{k}") for k in range(count)]),
            )
        )
        for i, count in enumerate(digests)
    ]
    return Direct(
        select(R.c.res_id)
        .where(R.c.res_type == bindparam("rtype"), R.c.deleted == false(), *terms)
        .order_by(R.c.seq)
        .limit(limit),
        plan_per_run=True,  # a search's best plan depends on how many rows its values match
    )


def blind_match(
    conn: Connection,
    keys: KeyRing,
    rtype: str,
    searches: Sequence[Sequence[tuple[str, str]]],
    *,
    limit: int = 2,
) -> list[list[str]]:
    """For each search (its terms ANDed), the ids of at most ``limit`` live ``rtype``
    resources it matches. A term is ``(name[:modifier], value)`` on a PHI parameter; the value
    is taken as it is (no commas splitting it, no escapes). A term that is not on a PHI
    parameter is a programming error (``ValueError``): use the search engine for it. A search
    with no terms matches nothing here."""
    with pipelined(conn):
        read = send_blind_match(conn, keys, rtype, searches, limit=limit)
    return read()


def send_blind_match(
    conn: Connection,
    keys: KeyRing,
    rtype: str,
    searches: Sequence[Sequence[tuple[str, str]]],
    *,
    limit: int = 2,
) -> Callable[[], list[list[str]]]:
    """:func:`blind_match`'s queries, sent now (call inside ``pipelined``, with others); the
    returned function reads their answers."""
    builder = ConditionBuilder(keys, "")
    readers: list[Callable[[], list[Any]]] = []
    for search in searches:
        params: dict[str, object] = {"rtype": rtype}
        counts: list[int] = []
        for i, (name, value) in enumerate(search):
            base, _, modifier = name.partition(":")
            param = search_param(rtype, base)
            if param is None or not param.phi:
                raise ValueError(f"{rtype}.{base} is not a PHI search parameter")
            digests = builder.blind_digests(rtype, param, modifier or None, value)
            params[f"p{i}"] = param.name
            params.update({f"d{i}_{k}": d for k, d in enumerate(digests)})
            counts.append(len(digests))
        if not search or 0 in counts:  # a term that matches nothing
            readers.append(list)
            continue
        readers.append(_statement(tuple(counts), limit).send(conn, params))
    return lambda: [[row.res_id for row in read()] for read in readers]
