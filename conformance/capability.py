"""Generate the CapabilityStatement (``/metadata``) from the declaration, never by hand.

See https://hl7.org/fhir/R4/capabilitystatement.html.
"""

from __future__ import annotations

from typing import Any

from conformance.declaration import (
    COMMON_PARAMS,
    CUSTOM_SEARCH_PARAMETERS,
    RESOURCE_TYPES,
    SearchParam,
)
from conformance.operations import OPERATIONS

__all__ = ["capability_statement", "search_parameter_resource"]

SOFTWARE_VERSION = "0.1.0"


def _param(p: SearchParam) -> dict[str, Any]:
    return {"name": p.name, "definition": p.url, "type": p.type, "documentation": p.description}


def capability_statement(*, base_url: str, released: str) -> dict[str, Any]:
    resources = []
    for decl in RESOURCE_TYPES.values():
        params = [*COMMON_PARAMS.values(), *decl.params.values()]
        references = [p for p in decl.params.values() if p.type == "reference"]
        incoming = [
            f"{other.type}:{p.name}"
            for other in RESOURCE_TYPES.values()
            for p in other.params.values()
            if p.type == "reference" and decl.type in p.targets
        ]
        resources.append(
            {
                "type": decl.type,
                "profile": f"http://hl7.org/fhir/StructureDefinition/{decl.type}",
                "interaction": [{"code": code} for code in decl.interactions],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": decl.conditional_create,
                "conditionalRead": "not-supported",
                "conditionalUpdate": decl.conditional_update,
                "conditionalDelete": decl.conditional_delete,
                "searchInclude": [f"{decl.type}:{p.name}" for p in references] + [f"{decl.type}:*"],
                "searchRevInclude": incoming,
                "searchParam": [_param(p) for p in params],
                **(
                    {"operation": ops}
                    if (
                        ops := [
                            {"name": op.code, "definition": op.url}
                            for op in OPERATIONS.values()
                            if op.resource == decl.type
                        ]
                    )
                    else {}
                ),
            }
        )
    resources.append(_audit_event())
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": released,
        "publisher": "fhir-sched",
        "kind": "instance",
        "software": {"name": "fhir-sched", "version": SOFTWARE_VERSION},
        "implementation": {"description": "fhir-sched FHIR scheduling server", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "security": _security(base_url),
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }


def _audit_event() -> dict[str, Any]:
    """The audit log: read and search only (fhir_server/routes/audit.py), never written."""
    params = [
        ("date", "date", "AuditEvent-date"),
        ("patient", "reference", "clinical-patient"),
        ("agent", "reference", "AuditEvent-agent"),
        ("entity", "reference", "AuditEvent-entity"),
        ("type", "token", "AuditEvent-type"),
        ("subtype", "token", "AuditEvent-subtype"),
        ("action", "token", "AuditEvent-action"),
        ("outcome", "token", "AuditEvent-outcome"),
        ("source", "reference", "AuditEvent-source"),
    ]
    return {
        "type": "AuditEvent",
        "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
        "documentation": "Compliance officers (user/AuditEvent.rs) and audit clients "
        "(system/AuditEvent.rs) only; _sort=-date, _count paging, Bundle.total",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [
            {
                "name": name,
                "type": kind,
                "definition": f"http://hl7.org/fhir/SearchParameter/{sp}",
            }
            for name, kind, sp in params
        ],
    }


def _security(base_url: str) -> dict[str, Any]:
    """SMART on FHIR, as a client discovers it from /metadata (with the OAuth URIs extension
    that SMART 1 clients still read; SMART 2 clients use .well-known/smart-configuration)."""
    root = base_url.removesuffix("/fhir")
    uris = {
        "authorize": "/auth/authorize",
        "token": "/auth/token",
        "revoke": "/auth/revoke",
        "introspect": "/auth/introspect",
    }
    return {
        "cors": True,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ]
            }
        ],
        "description": "Every interaction needs a bearer token from this server's SMART "
        "authorization server. Scopes: SMART v1 and v2; $find, $hold and $book need "
        "<context>/Appointment.$find, .$hold or .$book (or full Appointment access).",
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": name, "valueUri": f"{root}{path}"} for name, path in uris.items()
                ],
            }
        ],
    }


def search_parameter_resource(sp_id: str) -> dict[str, Any] | None:
    """The SearchParameter resource for a custom parameter this server defines."""
    found = CUSTOM_SEARCH_PARAMETERS.get(sp_id)
    if found is None:
        return None
    base, p = found
    return {
        "resourceType": "SearchParameter",
        "id": sp_id,
        "url": p.url,
        "name": f"{base}{p.name.title()}",
        "status": "active",
        "description": p.description,
        "code": p.name,
        "base": [base],
        "type": p.type,
        "expression": f"{base}.{'.'.join(p.paths)}",
        "xpathUsage": "normal",
        "comparator": ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"],
    }
