"""What a principal may do: the scope check every interaction, bundle entry and operation
makes before it touches data, and the patient compartment a ``patient/`` token is confined to.

A permission is one of SMART's ``c r u d s`` or an operation (``$find``, ``$hold``, ``$book``).
``system/`` and ``user/`` scopes act on everything their type and filters allow; a
``patient/`` scope acts only inside the launch patient's compartment: the Patient itself, the
Appointments that have it as a participant and the Communications (texts from the clinic and
replies) that have it as subject, recipient or sender. Types outside any patient compartment (Slot,
Schedule, Practitioner, Location…) are readable under ``patient/`` scopes as they are: they say
nothing about any patient.

See https://build.fhir.org/ig/HL7/smart-app-launch/scopes-and-launch-context.html
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from base.errors import Forbidden, Unauthorized
from security.principal import Principal
from security.scopes import VERBS

__all__ = ["Access", "in_compartment", "require"]

# how a search is confined to one Patient's compartment, per type
# (a Communication's search is confined by its subject, which the clinic's texts always name)
COMPARTMENT_SEARCH = {"Patient": "_id", "Appointment": "patient", "Communication": "subject"}


@dataclass(frozen=True, slots=True)
class Access:
    """What one permission check allowed: ``patient`` is the compartment it is confined to
    (None: not confined); ``filters`` the granular-scope alternatives (``[()]``: none)."""

    rtype: str
    patient: str | None
    filters: list[tuple[tuple[str, str], ...]]

    @property
    def unrestricted(self) -> bool:
        return self.patient is None and self.filters == [()]

    def search_params(self, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The search confined to what this access allows (added as AND conditions)."""
        extra: list[tuple[str, str]] = []
        if self.patient is not None:
            name = COMPARTMENT_SEARCH[self.rtype]
            value = self.patient if name == "_id" else f"Patient/{self.patient}"
            extra.append((name, value))
        if self.filters != [()]:
            asked = set(params)
            chosen = next((f for f in self.filters if set(f) <= asked), None)
            if chosen is None and len(self.filters) == 1:
                chosen = self.filters[0]
            if chosen is None:
                options = " or ".join("&".join(f"{k}={v}" for k, v in f) for f in self.filters)
                raise Forbidden(
                    f"this token may search {self.rtype} only with {options}; add one to the query"
                )
            extra.extend(p for p in chosen if p not in asked)
        return [*params, *extra]

    def check(self, resource: dict[str, Any]) -> None:
        """Refuse a resource outside the compartment (filters are checked by the caller)."""
        if self.patient is not None and not in_compartment(self.rtype, resource, self.patient):
            raise Forbidden(
                f"this token acts for one patient only; this {self.rtype} is not theirs"
            )


def require(principal: Principal | None, rtype: str, permission: str) -> Access:
    """The access ``principal`` has for ``permission`` on ``rtype``; 401 without a principal,
    403 when no scope allows it."""
    if principal is None:
        raise Unauthorized("this request needs a bearer token", error=None)
    grants = principal.grants
    for context in ("system", "user"):
        if grants.permits(context, rtype, permission):
            return Access(rtype, None, grants.filters(context, rtype, permission))
    if grants.permits("patient", rtype, permission):
        if principal.patient is None:
            raise Forbidden("patient/ scopes need a patient in the launch context")
        confined = principal.patient if rtype in COMPARTMENT_SEARCH else None
        return Access(rtype, confined, grants.filters("patient", rtype, permission))
    what = VERBS.get(permission, permission)
    example = f"{rtype}.{permission}"
    raise Forbidden(
        f"the token's scopes do not allow {what} on {rtype} (a scope such as "
        f"user/{example} or system/{example} would)"
    )


def _refs(resource: dict[str, Any]) -> list[str]:
    if resource.get("resourceType") == "Communication":
        return _communication_refs(resource)
    out = []
    for participant in resource.get("participant") or []:
        if isinstance(participant, dict):
            ref = (participant.get("actor") or {}).get("reference")
            if isinstance(ref, str):
                out.append(ref)
    return out


def _communication_refs(resource: dict[str, Any]) -> list[str]:
    """A Communication's subject, recipients and sender (R4's patient compartment)."""
    found: list[Any] = [resource.get("subject"), resource.get("sender")]
    found += resource.get("recipient") or []
    return [
        r["reference"] for r in found if isinstance(r, dict) and isinstance(r.get("reference"), str)
    ]


def in_compartment(rtype: str, resource: dict[str, Any], patient: str) -> bool:
    """Whether ``resource`` belongs to Patient ``patient``'s compartment (types without one:
    yes). An Appointment belongs to every patient among its participants, a Communication to
    its subject's, recipients' and sender's."""
    if rtype == "Patient":
        return resource.get("id") == patient
    if rtype in ("Appointment", "Communication"):
        target = f"Patient/{patient}"
        return any(ref == target or ref.endswith(f"/{target}") for ref in _refs(resource))
    return True


def patients_in(resource: dict[str, Any]) -> set[str]:
    """The Patient ids an Appointment's participants (or a Communication's subject,
    recipients and sender) name."""
    out = set()
    for ref in _refs(resource):
        parts = ref.split("/")
        if len(parts) >= 2 and parts[-2] == "Patient":
            out.add(parts[-1])
    return out
