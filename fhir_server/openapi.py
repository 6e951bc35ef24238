"""The OpenAPI document at ``/openapi.json``: what FastAPI derives from the routes, plus what a
FHIR route cannot say through its signature (it reads its own body and query, so FastAPI sees
neither).

Routes declare their bodies, parameters and answers with the helpers here (``openapi_extra=``,
``responses=``); :func:`install` adds the shared schemas, the security schemes (SMART's OAuth 2
flows, with this server's endpoints and scopes, or a bearer token got elsewhere) on every
route that takes a token (found from its dependencies, never listed by hand) and replaces
FastAPI's 422 ``HTTPValidationError``, which this server never sends: every FHIR error is an
OperationOutcome (``base/errors.py``), documented as each FHIR route's ``default`` answer.
The scheduling operations' parameters, and the Parameters resource each one's POST takes (a
component per operation, ``AppointmentFindParameters``, …), are derived from
``conformance/operations.py``.

See https://spec.openapis.org/oas/v3.1.0 and https://hl7.org/fhir/R4/http.html.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import FastAPI, Path
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from conformance.declaration import RESOURCE_TYPES
from security.smart.consent import describe

__all__ = [
    "CHAIN_STATUS",
    "CODING",
    "ERRORS",
    "FHIR_JSON",
    "HL7_LIST",
    "HL7_OPENED",
    "ID_SCHEMA",
    "REFERENCE",
    "RESOURCE_ID",
    "RESOURCE_TYPE",
    "VERSION_ID",
    "answers",
    "body",
    "install",
    "json_answer",
    "parameters",
    "token_door",
]

FHIR_JSON = "application/fhir+json"
ID_SCHEMA = {"type": "string", "pattern": r"^[A-Za-z0-9\-.]{1,64}$"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


CODING = {
    "type": "object",
    "properties": {"system": {"type": "string"}, "code": {"type": "string"}},
}
REFERENCE = {"type": "object", "properties": {"reference": {"type": "string"}}}
SCHEMAS: dict[str, Any] = {
    "OperationOutcome": {
        "type": "object",
        "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"const": "OperationOutcome"},
            "issue": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["severity", "code"],
                    "properties": {
                        "severity": {"enum": ["fatal", "error", "warning", "information"]},
                        "code": {"type": "string"},
                        "diagnostics": {"type": "string"},
                        "details": {"type": "object"},
                        "expression": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    },
    "Resource": {
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"type": "string"},
            "id": ID_SCHEMA,
            "meta": {"type": "object"},
        },
    },
    "Bundle": {
        "type": "object",
        "required": ["resourceType", "type"],
        "properties": {
            "resourceType": {"const": "Bundle"},
            "type": {"enum": ["searchset", "history", "transaction-response", "batch-response"]},
            "total": {"type": "integer", "minimum": 0},
            "link": {"type": "array", "items": {"type": "object"}},
            "entry": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "fullUrl": {"type": "string"},
                        "resource": _ref("Resource"),
                        "search": {"type": "object"},
                        "response": {"type": "object"},
                    },
                },
            },
        },
    },
    "NewResource": {
        "type": "object",
        "required": ["resourceType"],
        "properties": {
            "resourceType": {"enum": sorted(RESOURCE_TYPES)},
            "id": ID_SCHEMA,
            "meta": {"type": "object"},
        },
    },
    "TransactionBundle": {
        "type": "object",
        "required": ["resourceType", "type"],
        "properties": {
            "resourceType": {"const": "Bundle"},
            "type": {"enum": ["transaction", "batch"]},
            "entry": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["request"],
                    "properties": {
                        "fullUrl": {"type": "string"},
                        "resource": _ref("NewResource"),
                        "request": {
                            "type": "object",
                            "required": ["method", "url"],
                            "properties": {
                                "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
                                "url": {"type": "string"},
                                "ifMatch": {"type": "string"},
                                "ifNoneExist": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
    "JsonPatch": {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["op", "path"],
            "properties": {
                "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]},
                "path": {"type": "string"},
                "from": {"type": "string"},
                "value": {},
            },
        },
    },
}

RESOURCE_TYPE = Annotated[
    str,
    Path(
        description="a served resource type (AuditEvent has routes of its own)",
        json_schema_extra={"enum": sorted(RESOURCE_TYPES)},
    ),
]
RESOURCE_ID = Annotated[str, Path(description="a FHIR id", json_schema_extra=ID_SCHEMA)]
VERSION_ID = Annotated[
    str, Path(description="a version number", json_schema_extra={"pattern": "^[0-9]+$"})
]

# Every error a FHIR route answers: the status says which (base/errors.py).
ERRORS: dict[int | str, dict[str, Any]] = {
    "default": {
        "description": "An error (4xx, or 5xx with an error id to quote), as an OperationOutcome",
        "content": {FHIR_JSON: {"schema": _ref("OperationOutcome")}},
    }
}


def answers(schema: str, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route answering ``statuses`` with a ``schema`` body."""
    content = {FHIR_JSON: {"schema": _ref(schema)}}
    return {status: {"description": schema, "content": content} for status in statuses}


def body(schema: dict[str, Any] | str, media_type: str = FHIR_JSON) -> dict[str, Any]:
    """``openapi_extra=`` for a route that reads a body of ``schema`` (a component's name or a
    schema) itself."""
    resolved = _ref(schema) if isinstance(schema, str) else schema
    return {"requestBody": {"required": True, "content": {media_type: {"schema": resolved}}}}


FORM = "application/x-www-form-urlencoded"
_TEXT: dict[str, Any] = {"type": "string"}


def oauth_form(*names: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``openapi_extra=`` for an OAuth endpoint that reads these form fields itself."""
    schema = {
        "type": "object",
        "properties": dict.fromkeys(names, _TEXT),
        "required": list(required),
    }
    return body(schema, FORM)


def parameters(location: str, names: dict[str, dict[str, Any] | str]) -> dict[str, Any]:
    """``openapi_extra=`` for optional parameters a route reads itself: name → schema, or a
    description for a string."""
    return {
        "parameters": [
            {
                "name": name,
                "in": location,
                "required": False,
                "schema": spec if isinstance(spec, dict) else {"type": "string"},
                **({"description": spec} if isinstance(spec, str) else {}),
            }
            for name, spec in names.items()
        ]
    }


def _search_by_type(paths: dict[str, Any]) -> None:
    """Search, one path per served type with the parameters it declares
    (``conformance/declaration.py``), in place of ``GET /fhir/{rtype}``, whose parameters
    differ by type. See https://hl7.org/fhir/R4/search.html."""
    generic = paths["/fhir/{rtype}"].pop("get")
    controls = [p for p in generic["parameters"] if p["name"] != "rtype"]
    for rtype, decl in sorted(RESOURCE_TYPES.items()):
        declared = [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": f"{param.type}: {param.description or ', '.join(param.paths)}",
            }
            for name, param in sorted(decl.params.items())
            if not any(c["name"] == name for c in controls)
        ]
        paths.setdefault(f"/fhir/{rtype}", {})["get"] = {
            **generic,
            "summary": f"Search {rtype}",
            "operationId": f"search_{rtype}",
            "parameters": controls + declared,
        }


def _takes_token(dependant: Dependant) -> bool:
    from fhir_server.http import get_principal

    return any(d.call is get_principal or _takes_token(d) for d in dependant.dependencies)


# Scopes "Try it out" offers beside those the SMART configuration lists (read and search): the
# wildcard with every permission, for each context.
_WRITE_SCOPES = ("patient/*.cruds", "user/*.cruds", "system/*.cruds")


def security_schemes(smart: dict[str, Any]) -> dict[str, Any]:
    """The two ways to send a token: ``smart``, the OAuth 2 flows of this server's SMART
    authorization server (``smart`` is its ``/.well-known/smart-configuration``), so a client
    generated from the document, or Swagger UI, can get one; and ``bearer``, a token got
    elsewhere (``fhir-sched`` prints how). See
    https://hl7.org/fhir/smart-app-launch/app-launch.html and
    https://spec.openapis.org/oas/v3.1.0#oauth-flows-object."""
    scopes = list(dict.fromkeys([*smart["scopes_supported"], *_WRITE_SCOPES]))
    token = smart["token_endpoint"]
    return {
        "smart": {
            "type": "oauth2",
            "description": "SMART on FHIR. Apps and users: the authorization code flow with "
            "PKCE (S256 only; `code_challenge` is required) and `aud` set to the FHIR base "
            f"URL, {smart['issuer']}. Backend services: client credentials, with "
            "client_secret_basic or a private_key_jwt assertion (SMART Backend Services). "
            "The scopes needed are SMART's: `<patient|user|system>/<Type>.<cruds>`, and "
            "`<context>/Appointment.$find`, `.$hold`, `.$book` for the scheduling operations.",
            "flows": {
                "authorizationCode": {
                    "authorizationUrl": smart["authorization_endpoint"],
                    "tokenUrl": token,
                    "refreshUrl": token,
                    "scopes": {s: describe(s) for s in scopes if not s.startswith("system/")},
                },
                "clientCredentials": {
                    "tokenUrl": token,
                    "scopes": {s: describe(s) for s in scopes if s.startswith("system/")},
                },
            },
        },
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A SMART on FHIR access token from /auth/token "
            "(see /.well-known/smart-configuration)",
        },
    }


# Each protected operation takes a token by either scheme (one requirement or the other).
SECURITY: list[dict[str, list[str]]] = [{"smart": []}, {"bearer": []}]


def install(app: FastAPI, *, smart: dict[str, Any]) -> None:
    """Make ``app.openapi()`` the document described above (built once, on first use);
    ``smart`` is the server's SMART configuration, whose endpoints and scopes the OAuth 2
    scheme names."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = doc.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas.update(SCHEMAS)
        components["securitySchemes"] = security_schemes(smart)
        secured = {
            (route.path, method.lower())
            for route in app.routes
            if isinstance(route, APIRoute) and _takes_token(route.dependant)
            for method in route.methods
        }
        for path, operations in doc["paths"].items():
            for method, operation in operations.items():
                if "HTTPValidationError" in str(operation["responses"].get("422")):
                    del operation["responses"]["422"]  # answered as 400 (app.py)
                if (path, method) in secured:
                    operation["security"] = [dict(r) for r in SECURITY]
        _search_by_type(doc["paths"])
        # imported here: the operations' module builds on this one's helpers
        from fhir_server.openapi_operations import add_operation_inputs

        add_operation_inputs(doc, datetime.now(UTC).date() + timedelta(days=1))
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


# -- the staff console's doors outside FHIR (routes/hl7.py, routes/chain.py) ----------------
_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
HL7_SUMMARY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": _STR,
        "seq": {"type": "integer"},
        "created": _STR,
        "direction": {"enum": ["in", "out"]},
        "peer": _STR,
        "control_id": _STR,
        "event": _STR,
        "status": _STR,
        "ack_code": _NSTR,
        "error": _NSTR,
        "warnings": {"type": "array", "items": _STR},
        "appointment_id": _NSTR,
        "attempts": {"type": "integer"},
        "next_attempt": _NSTR,
    },
}
HL7_OPENED: dict[str, Any] = {
    "type": "object",
    "properties": {
        **HL7_SUMMARY["properties"],
        "address": _NSTR,
        "reason": _NSTR,
        "warning_texts": {"type": "array", "items": _STR},
        "message": _STR,
        "ack": _NSTR,
    },
}
HL7_LIST: dict[str, Any] = {
    "type": "object",
    "properties": {
        "messages": {"type": "array", "items": HL7_SUMMARY},
        "next_before": {"type": ["integer", "null"]},
    },
}
CHAIN_STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "intact": {"type": "boolean"},
        "verified_through": {
            "type": "object",
            "properties": {"seq": {"type": "integer"}, "recorded": _NSTR},
        },
        "verified_at": _NSTR,
        "full_verified_at": _NSTR,
        "mode": {"enum": ["full", "incremental", "cached"]},
        "broken_at": {"type": ["integer", "null"]},
        "reason": _NSTR,
        "findings": {"type": "array", "items": {"type": "object"}},
        "finding_count": {"type": "integer"},
        "checkpoints": {"type": "integer"},
        "last_checkpoint": {"type": ["object", "null"]},
    },
}


def json_answer(schema: dict[str, Any], description: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a JSON door outside FHIR: its 200 body, and errors as
    OperationOutcomes."""
    ok = {"description": description, "content": {"application/json": {"schema": schema}}}
    return {200: ok, **ERRORS}


def token_door(**extra: Any) -> dict[str, Any]:
    """``openapi_extra=`` for a door that checks the token itself (to audit a refusal), so
    FastAPI does not see it take one: it takes a token by either scheme."""
    return {"security": [dict(r) for r in SECURITY], **extra}
