"""The one declaration of what this server serves: types, interactions, search parameters.

Routing, query parsing, indexing and ``/metadata`` all read this module; nothing else lists
resource types or search parameters.  Parameters follow the R4 definitions
(https://hl7.org/fhir/R4/searchparameter-registry.html); ``phi=True`` marks values that are
stored only as keyed blind-index digests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "APPOINTMENT_RISK",
    "COMMON_PARAMS",
    "CUSTOM_SEARCH_PARAMETERS",
    "NO_SHOW_RISK_URL",
    "RESOURCE_TYPES",
    "ParamType",
    "ResourceDecl",
    "SearchParam",
    "resource_decl",
    "search_param",
]

ParamType = Literal["string", "token", "date", "reference", "uri", "number", "special"]
R4_SP = "http://hl7.org/fhir/SearchParameter/"
CUSTOM_SP_BASE = "urn:fhir-sched:SearchParameter/"
TYPE_INTERACTIONS: tuple[str, ...] = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)


@dataclass(frozen=True, slots=True)
class SearchParam:
    """One search parameter: where its values live and how they are indexed."""

    name: str
    type: ParamType
    paths: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    phi: bool = False
    where: tuple[str, str] | None = None  # keep only elements with this (key, value)
    point: bool = False  # an instant: compared as a point in time (sargable on ``low``)
    url: str = ""
    description: str = ""

    @property
    def definition(self) -> str:
        return self.url

    @property
    def index_table(self) -> str:
        """Which index its rows go to (an ``IndexRows`` field, an ``idx_*`` table): PHI only
        ever as blind digests."""
        return "blind" if self.phi else self.type


@dataclass(frozen=True, slots=True)
class ResourceDecl:
    """A served resource type, the interactions it supports and its search parameters."""

    type: str
    params: dict[str, SearchParam] = field(default_factory=dict)
    interactions: tuple[str, ...] = TYPE_INTERACTIONS
    profile: str = ""
    conditional_create: bool = True
    conditional_update: bool = True
    conditional_delete: str = "not-supported"

    def param(self, name: str) -> SearchParam | None:
        return self.params.get(name) or COMMON_PARAMS.get(name)


def _sp(
    rtype: str,
    name: str,
    ptype: ParamType,
    *paths: str,
    targets: tuple[str, ...] = (),
    phi: bool = False,
    where: tuple[str, str] | None = None,
    point: bool = False,
    url: str | None = None,
    doc: str = "",
) -> SearchParam:
    return SearchParam(
        name=name,
        type=ptype,
        paths=paths,
        targets=targets,
        phi=phi,
        where=where,
        point=point,
        url=url or f"{R4_SP}{rtype}-{name}",
        description=doc or f"{rtype} {name}",
    )


def _params(*items: SearchParam) -> dict[str, SearchParam]:
    return {p.name: p for p in items}


COMMON_PARAMS: dict[str, SearchParam] = _params(
    SearchParam("_id", "token", (), url=f"{R4_SP}Resource-id", description="Logical id"),
    SearchParam(
        "_lastUpdated",
        "date",
        (),
        point=True,
        url=f"{R4_SP}Resource-lastUpdated",
        description="When the resource last changed",
    ),
)

_ANY_REF = ("Patient", "Practitioner", "PractitionerRole", "Location", "HealthcareService")


def _patient() -> ResourceDecl:
    t = "Patient"
    return ResourceDecl(
        t,
        _params(
            _sp(t, "identifier", "token", "identifier", phi=True, url=f"{R4_SP}Patient-identifier"),
            _sp(t, "name", "string", "name", phi=True, url=f"{R4_SP}Patient-name"),
            _sp(t, "family", "string", "name.family", phi=True, url=f"{R4_SP}individual-family"),
            _sp(t, "given", "string", "name.given", phi=True, url=f"{R4_SP}individual-given"),
            _sp(t, "birthdate", "date", "birthDate", phi=True, url=f"{R4_SP}individual-birthdate"),
            _sp(t, "gender", "token", "gender", url=f"{R4_SP}individual-gender"),
            _sp(t, "telecom", "token", "telecom", phi=True, url=f"{R4_SP}individual-telecom"),
            _sp(
                t,
                "phone",
                "token",
                "telecom",
                phi=True,
                where=("system", "phone"),
                url=f"{R4_SP}individual-phone",
            ),
            _sp(
                t,
                "email",
                "token",
                "telecom",
                phi=True,
                where=("system", "email"),
                url=f"{R4_SP}individual-email",
            ),
            _sp(t, "address", "string", "address", phi=True, url=f"{R4_SP}individual-address"),
            _sp(
                t,
                "address-postalcode",
                "string",
                "address.postalCode",
                phi=True,
                url=f"{R4_SP}individual-address-postalcode",
            ),
            _sp(t, "active", "token", "active"),
            _sp(
                t,
                "general-practitioner",
                "reference",
                "generalPractitioner",
                targets=("Practitioner", "PractitionerRole", "Organization"),
            ),
            _sp(t, "organization", "reference", "managingOrganization", targets=("Organization",)),
            _sp(
                t,
                "_tag",
                "token",
                "meta.tag",
                url=f"{R4_SP}Resource-tag",
                doc="Tags, e.g. urn:fhir-sched:patient-status|existing (an existing patient "
                "whatever their visits here; see the clinic file's existing_patient)",
            ),
        ),
    )


def _practitioner() -> ResourceDecl:
    t = "Practitioner"
    return ResourceDecl(
        t,
        _params(
            _sp(t, "identifier", "token", "identifier"),
            _sp(t, "name", "string", "name"),
            _sp(t, "family", "string", "name.family", url=f"{R4_SP}individual-family"),
            _sp(t, "given", "string", "name.given", url=f"{R4_SP}individual-given"),
            _sp(t, "active", "token", "active"),
            _sp(t, "telecom", "token", "telecom", url=f"{R4_SP}individual-telecom"),
            _sp(t, "gender", "token", "gender", url=f"{R4_SP}individual-gender"),
        ),
    )


def _practitioner_role() -> ResourceDecl:
    t = "PractitionerRole"
    return ResourceDecl(
        t,
        _params(
            _sp(t, "identifier", "token", "identifier"),
            _sp(t, "practitioner", "reference", "practitioner", targets=("Practitioner",)),
            _sp(t, "organization", "reference", "organization", targets=("Organization",)),
            _sp(t, "location", "reference", "location", targets=("Location",)),
            _sp(t, "service", "reference", "healthcareService", targets=("HealthcareService",)),
            _sp(t, "role", "token", "code"),
            _sp(t, "specialty", "token", "specialty"),
            _sp(t, "active", "token", "active"),
            _sp(t, "date", "date", "period"),
        ),
    )


def _location() -> ResourceDecl:
    t = "Location"
    return ResourceDecl(
        t,
        _params(
            _sp(t, "identifier", "token", "identifier"),
            _sp(t, "name", "string", "name", "alias"),
            _sp(t, "address", "string", "address"),
            _sp(t, "address-city", "string", "address.city"),
            _sp(t, "address-postalcode", "string", "address.postalCode"),
            _sp(t, "status", "token", "status"),
            _sp(t, "type", "token", "type"),
            _sp(t, "organization", "reference", "managingOrganization", targets=("Organization",)),
            _sp(t, "partof", "reference", "partOf", targets=("Location",)),
        ),
    )


def _healthcare_service() -> ResourceDecl:
    t = "HealthcareService"
    return ResourceDecl(
        t,
        _params(
            _sp(t, "identifier", "token", "identifier"),
            _sp(t, "name", "string", "name"),
            _sp(t, "active", "token", "active"),
            _sp(t, "location", "reference", "location", targets=("Location",)),
            _sp(t, "organization", "reference", "providedBy", targets=("Organization",)),
            _sp(t, "service-type", "token", "type"),
            _sp(t, "service-category", "token", "category"),
            _sp(t, "specialty", "token", "specialty"),
        ),
    )


def _schedule() -> ResourceDecl:
    t = "Schedule"
    return ResourceDecl(
        t,
        _params(
            _sp(t, "identifier", "token", "identifier"),
            _sp(t, "actor", "reference", "actor", targets=(*_ANY_REF, "Device", "RelatedPerson")),
            _sp(t, "active", "token", "active"),
            _sp(t, "date", "date", "planningHorizon"),
            _sp(t, "service-type", "token", "serviceType"),
            _sp(t, "service-category", "token", "serviceCategory"),
            _sp(t, "specialty", "token", "specialty"),
        ),
    )


SLOT_END = SearchParam(
    "end",
    "date",
    ("end",),
    point=True,
    url=f"{CUSTOM_SP_BASE}Slot-end",
    description="Slot.end: when the slot ends (custom; R4 defines only Slot start)",
)


def _slot() -> ResourceDecl:
    t = "Slot"
    return ResourceDecl(
        t,
        _params(
            _sp(t, "identifier", "token", "identifier"),
            _sp(t, "schedule", "reference", "schedule", targets=("Schedule",)),
            _sp(t, "status", "token", "status"),
            _sp(t, "start", "date", "start", point=True),
            SLOT_END,
            _sp(t, "service-type", "token", "serviceType"),
            _sp(t, "service-category", "token", "serviceCategory"),
            _sp(t, "specialty", "token", "specialty"),
            _sp(t, "appointment-type", "token", "appointmentType"),
        ),
    )


# The no-show risk the server writes on booked Appointments (``scheduling/risk.py``): an
# extension whose ``score`` sub-extension holds a decimal from 0 to 1.
NO_SHOW_RISK_URL = "urn:fhir-sched:StructureDefinition/no-show-risk"
APPOINTMENT_RISK = SearchParam(
    "risk",
    "number",
    (f"extension.where(url='{NO_SHOW_RISK_URL}').extension.where(url='score').value",),
    url=f"{CUSTOM_SP_BASE}Appointment-risk",
    description="The no-show risk score (0 to 1) the server computed for a booked Appointment "
    "(custom), e.g. risk=ge0.5",
)


def _appointment() -> ResourceDecl:
    t = "Appointment"
    return ResourceDecl(
        t,
        _params(
            _sp(t, "identifier", "token", "identifier"),
            _sp(t, "patient", "reference", "participant.actor", targets=("Patient",)),
            _sp(
                t,
                "actor",
                "reference",
                "participant.actor",
                targets=(*_ANY_REF, "Device", "RelatedPerson"),
            ),
            _sp(t, "practitioner", "reference", "participant.actor", targets=("Practitioner",)),
            _sp(t, "location", "reference", "participant.actor", targets=("Location",)),
            _sp(t, "date", "date", "start", point=True),
            _sp(t, "status", "token", "status"),
            _sp(t, "slot", "reference", "slot", targets=("Slot",)),
            _sp(t, "service-type", "token", "serviceType"),
            _sp(t, "service-category", "token", "serviceCategory"),
            _sp(t, "specialty", "token", "specialty"),
            _sp(t, "appointment-type", "token", "appointmentType"),
            _sp(t, "reason-code", "token", "reasonCode"),
            _sp(t, "part-status", "token", "participant.status"),
            _sp(t, "based-on", "reference", "basedOn", targets=("ServiceRequest",)),
            APPOINTMENT_RISK,
            _sp(
                t,
                "_tag",
                "token",
                "meta.tag",
                url=f"{R4_SP}Resource-tag",
                doc="Tags, e.g. urn:fhir-sched:tags|hl7-conflict (an EMR booking over time taken "
                "here, for staff to resolve)",
            ),
        ),
    )


COMMUNICATION_ABOUT = SearchParam(
    "about",
    "reference",
    ("about",),
    targets=("Appointment", "Patient"),
    url=f"{CUSTOM_SP_BASE}Communication-about",
    description="Communication.about: what the message is about, e.g. the Appointment a "
    "reminder names (custom; R4 defines no search on about)",
)


def _communication() -> ResourceDecl:
    """The texts the clinic sends patients (reminders, waitlist offers) and their replies."""
    t = "Communication"
    return ResourceDecl(
        t,
        _params(
            _sp(t, "identifier", "token", "identifier"),
            _sp(t, "subject", "reference", "subject", targets=("Patient",)),
            _sp(t, "patient", "reference", "subject", targets=("Patient",)),
            _sp(t, "recipient", "reference", "recipient", targets=_ANY_REF),
            _sp(t, "sender", "reference", "sender", targets=_ANY_REF),
            _sp(t, "status", "token", "status"),
            _sp(t, "category", "token", "category"),
            _sp(t, "medium", "token", "medium"),
            _sp(t, "sent", "date", "sent", point=True),
            _sp(t, "received", "date", "received", point=True),
            COMMUNICATION_ABOUT,
        ),
    )


RESOURCE_TYPES: dict[str, ResourceDecl] = {
    d.type: d
    for d in (
        _patient(),
        _practitioner(),
        _practitioner_role(),
        _location(),
        _healthcare_service(),
        _schedule(),
        _slot(),
        _appointment(),
        _communication(),
    )
}

# Custom SearchParameter definitions served at /SearchParameter/{id} and cited by /metadata.
CUSTOM_SEARCH_PARAMETERS: dict[str, tuple[str, SearchParam]] = {
    "Slot-end": ("Slot", SLOT_END),
    "Communication-about": ("Communication", COMMUNICATION_ABOUT),
    "Appointment-risk": ("Appointment", APPOINTMENT_RISK),
}


def resource_decl(resource_type: str) -> ResourceDecl | None:
    return RESOURCE_TYPES.get(resource_type)


def search_param(resource_type: str, name: str) -> SearchParam | None:
    decl = RESOURCE_TYPES.get(resource_type)
    return decl.param(name) if decl else None
