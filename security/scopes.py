"""SMART on FHIR scopes: the v1 and v2 grammar, and what a set of granted scopes permits.

Grammar (SMART App Launch 2.x, "Scopes for requesting FHIR resources")::

    <patient|user|system> "/" <ResourceType|*> "." <permissions> ["?" <param>=<value>[&...]]

v2 permissions are a non-empty, ordered subset of ``c r u d s`` (create, read, update, delete,
search): ``rs``, ``cud``, ``cruds``. The v1 forms are accepted as their v2 equivalents:
``read`` = ``rs``, ``write`` = ``cud``, ``*`` = ``cruds``. Anything else after the dot
(``.sr``, ``.rr``, ``.x``, ``.readwrite``) is malformed and refused, not ignored.

A granular scope (``patient/Appointment.rs?status=booked``) permits only resources matching
its search parameters; :meth:`Grants.filters` gives them to the search layer.

The scheduling operations have scopes of their own (a fhir-sched extension of the grammar, so
a client can be allowed to book through the rules without being allowed to write Appointments
directly): ``<context>/Appointment.$find``, ``.$hold`` and ``.$book``. Full access to a type
(``cruds`` or v1 ``*``) includes its operations.

Scopes that are not about resources (``openid``, ``fhirUser``, ``launch``, ``launch/patient``,
``offline_access``, ``online_access``) are kept as they are.

The audit log is granted only where it is named: a wildcard (``system/*.cruds``,
``user/*.rs``, v1 ``*.read``) in a registration or a role neither covers AuditEvent nor
grants a request for it, and a wildcard asked for is not narrowed to it (:data:`NAMED_ONLY`):
the request, the registration and the role must all name AuditEvent.

>>> g = Grants.parse("patient/Appointment.rs?status=booked user/Slot.read openid")
>>> g.permits("patient", "Appointment", "s"), g.permits("patient", "Appointment", "c")
(True, False)
>>> g.filters("patient", "Appointment", "s")
[(('status', 'booked'),)]
>>> g.permits("user", "Slot", "s"), "openid" in g.other
(True, True)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

__all__ = [
    "CONTEXTS",
    "NAMED_ONLY",
    "OPERATIONS",
    "PERMISSIONS",
    "VERBS",
    "Grants",
    "Scope",
    "ScopeError",
    "parse_scope",
]

CONTEXTS = ("patient", "user", "system")
PERMISSIONS = "cruds"
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
VERBS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
OPERATIONS = {"Appointment": ("$find", "$hold", "$book")}  # operation scopes, by type
FULL = frozenset(PERMISSIONS)
# Types a wildcard does not reach: a client registered (or a role bound) for "every type" was
# set up to work with the clinic's records, not to read who looked at them, so the audit log
# needs a registration and a role that name it.
NAMED_ONLY = frozenset({"AuditEvent"})
NON_RESOURCE = re.compile(
    r"^(openid|fhirUser|profile|launch(/[a-zA-Z]+)?|offline_access|online_access)$"
)
_RESOURCE = re.compile(
    r"^(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perms>[^?]+)(\?(?P<query>.*))?$"
)


class ScopeError(ValueError):
    """A resource scope that does not follow the grammar."""


@dataclass(frozen=True, slots=True)
class Scope:
    """One resource scope, v1 normalised to v2 permissions."""

    context: str
    resource_type: str  # a type or "*"
    permissions: frozenset[str]
    query: tuple[tuple[str, str], ...] = ()

    def covers(self, context: str, resource_type: str, permission: str) -> bool:
        return (
            self.context == context
            and _reaches(self.resource_type, resource_type)
            and _includes(self.permissions, permission)
        )

    def contains(self, other: Scope) -> bool:
        """Whether this scope grants everything ``other`` asks for."""
        return (
            self.context == other.context
            and _reaches(self.resource_type, other.resource_type)
            and all(_includes(self.permissions, p) for p in other.permissions)
            and (not self.query or self.query == other.query)
        )

    def intersect(self, allowed: Scope) -> Scope | None:
        """What this scope, asked for, gets of ``allowed`` (``patient/*.rs`` asked,
        ``patient/Slot.cruds`` allowed: Slot.rs). A wildcard on either side gives no
        AuditEvent scope: the asked one may itself be what a wildcard registration let
        through on its way to the role's narrowing."""
        if self.context != allowed.context:
            return None
        asked, given = self.resource_type, allowed.resource_type
        if not (_reaches(asked, given) or _reaches(given, asked)):
            return None
        rtype = allowed.resource_type if self.resource_type == "*" else self.resource_type
        perms = frozenset(
            p
            for p in self.permissions | allowed.permissions
            if _includes(self.permissions, p) and _includes(allowed.permissions, p)
        )
        if self.query and allowed.query and self.query != allowed.query:
            return None
        if not perms or (rtype == "*" and (self.query or allowed.query)):
            return None
        return Scope(self.context, rtype, perms, self.query or allowed.query)

    def __str__(self) -> str:
        perms = "".join(sorted(self.permissions)) if self.operation else ""
        perms = perms or "".join(p for p in PERMISSIONS if p in self.permissions)
        text = f"{self.context}/{self.resource_type}.{perms}"
        if self.query:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.query)
        return text

    @property
    def operation(self) -> bool:
        return any(p.startswith("$") for p in self.permissions)


def _reaches(granted: str, resource_type: str) -> bool:
    """Whether a scope for type ``granted`` (a type or ``*``) reaches ``resource_type``."""
    if granted == "*":
        return resource_type not in NAMED_ONLY
    return granted == resource_type


def _includes(granted: frozenset[str], permission: str) -> bool:
    if permission in granted:
        return True
    return permission.startswith("$") and granted == FULL


def _permissions(raw: str, resource_type: str) -> frozenset[str]:
    if raw.startswith("$"):
        if raw not in OPERATIONS.get(resource_type, ()):
            known = ", ".join(f"{t}.{op}" for t, ops in OPERATIONS.items() for op in ops)
            raise ScopeError(f"{raw!r} is not an operation of {resource_type} (known: {known})")
        return frozenset([raw])
    if raw in V1:
        return frozenset(V1[raw])
    # v2: a non-empty ordered subset of "cruds", each letter at most once
    if not raw or not re.fullmatch("c?r?u?d?s?", raw):
        raise ScopeError(
            f"permissions {raw!r} are neither v1 (read, write, *) nor v2 (an ordered subset of "
            "c, r, u, d, s such as rs or cud)"
        )
    return frozenset(raw)


def parse_scope(text: str) -> Scope | None:
    """A resource scope, None for a non-resource scope; :class:`ScopeError` if malformed."""
    if NON_RESOURCE.match(text):
        return None
    m = _RESOURCE.match(text)
    if m is None:
        raise ScopeError(f"{text!r} is not a SMART scope")
    query: tuple[tuple[str, str], ...] = ()
    if m.group("query") is not None:
        pairs = parse_qsl(m.group("query"), keep_blank_values=True, strict_parsing=False)
        if not pairs or any(not k or not v for k, v in pairs):
            raise ScopeError(f"{text!r}: a granular scope needs param=value pairs after '?'")
        if m.group("type") == "*":
            raise ScopeError(f"{text!r}: search parameters need a resource type, not '*'")
        query = tuple(pairs)
    rtype = m.group("type")
    return Scope(m.group("context"), rtype, _permissions(m.group("perms"), rtype), query)


@dataclass(frozen=True)
class Grants:
    """The scopes of one token: resource scopes and the others (``openid``, ``launch``…)."""

    scopes: tuple[Scope, ...] = ()
    other: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, text: str) -> Grants:
        """Parse a space-separated scope string; :class:`ScopeError` names the first bad one.
        (Grants are immutable, so every request with the same scope string shares one.)"""
        return _parse(text)

    @classmethod
    def _build(cls, text: str) -> Grants:
        scopes: list[Scope] = []
        other: set[str] = set()
        for item in text.split():
            scope = parse_scope(item)
            if scope is None:
                other.add(item)
            elif scope not in scopes:
                scopes.append(scope)
        return cls(tuple(scopes), frozenset(other))

    def permits(self, context: str, resource_type: str, permission: str) -> bool:
        """Whether any scope allows ``permission`` on the type in this context."""
        return any(s.covers(context, resource_type, permission) for s in self.scopes)

    def filters(
        self, context: str, resource_type: str, permission: str
    ) -> list[tuple[tuple[str, str], ...]]:
        """The search restrictions that apply: one entry per granting scope, ``()`` meaning
        none (then everything is permitted). A resource is allowed if it matches any entry."""
        out = [s.query for s in self.scopes if s.covers(context, resource_type, permission)]
        return [()] if () in out else out

    def narrowed(self, requested: Grants) -> Grants:
        """What of ``requested`` these grants allow: each requested scope that one of them
        contains, else its intersection with each (a request never gets wider than either)."""
        kept: list[Scope] = []
        for s in requested.scopes:
            if any(g.contains(s) for g in self.scopes):
                parts = [s]
            else:
                parts = [p for g in self.scopes if (p := s.intersect(g)) is not None]
            kept.extend(p for p in parts if p not in kept)
        return Grants(tuple(kept), requested.other & self.other)

    @property
    def contexts(self) -> frozenset[str]:
        return frozenset(s.context for s in self.scopes)

    def __str__(self) -> str:
        return " ".join([*(str(s) for s in self.scopes), *sorted(self.other)])


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> Grants:
    return Grants._build(text)
