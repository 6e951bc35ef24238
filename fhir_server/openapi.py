"""The OpenAPI document at ``/openapi.json``: what FastAPI derives from the routes, plus what a
FHIR route cannot say through its signature (it reads its own body and query, so FastAPI sees
neither).

Routes declare their bodies, parameters and answers with the helpers here (``openapi_extra=``,
``responses=``); :func:`install` adds the shared schemas, the bearer security scheme on every
route that takes a token (found from its dependencies, never listed by hand) and replaces
FastAPI's 422 ``HTTPValidationError``, which this server never sends: every FHIR error is an
OperationOutcome (``base/errors.py``), documented as each FHIR route's ``default`` answer.
The scheduling operations' parameters are derived from ``conformance/operations.py``.

See https://spec.openapis.org/oas/v3.1.0 and https://hl7.org/fhir/R4/http.html.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from conformance.declaration import RESOURCE_TYPES
from conformance.operations import OPERATIONS, OpParam

__all__ = [
    "ERRORS",
    "RESOURCE_ID",
    "RESOURCE_TYPE",
    "VERSION_ID",
    "answers",
    "body",
    "install",
    "operation_body",
    "operation_query",
    "parameters",
]

FHIR_JSON = "application/fhir+json"
_ID = {"type": "string", "pattern": r"^[A-Za-z0-9\-.]{1,64}$"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_CODING = {
    "type": "object",
    "properties": {"system": {"type": "string"}, "code": {"type": "string"}},
}
_REFERENCE = {"type": "object", "properties": {"reference": {"type": "string"}}}
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
        "properties": {"resourceType": {"type": "string"}, "id": _ID, "meta": {"type": "object"}},
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
            "id": _ID,
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
RESOURCE_ID = Annotated[str, Path(description="a FHIR id", json_schema_extra=_ID)]
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


_VALUE_TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    "dateTime": ("valueDateTime", {"type": "string", "format": "date-time"}),
    "string": ("valueString", {"type": "string"}),
    "integer": ("valueInteger", {"type": "integer"}),
    "id": ("valueId", _ID),
    "Coding": ("valueCoding", _CODING),
    "CodeableConcept": (
        "valueCodeableConcept",
        {
            "type": "object",
            "properties": {
                "coding": {"type": "array", "items": _CODING},
                "text": {"type": "string"},
            },
        },
    ),
    "Reference": ("valueReference", _REFERENCE),
}


def _parameter(p: OpParam) -> dict[str, Any]:
    key, schema = _VALUE_TYPES.get(p.type) or (
        "resource",
        {
            "type": "object",
            "required": ["resourceType"],
            "properties": {"resourceType": {"const": p.type}},
        },
    )
    return {
        "type": "object",
        "required": ["name", key],
        "properties": {"name": {"enum": [p.name, *p.aliases]}, key: schema},
        "description": p.doc,
    }


def operation_body(op_id: str) -> dict[str, Any]:
    """``openapi_extra=`` for POST of ``OPERATIONS[op_id]``: a Parameters resource whose
    parameters are those the operation declares (by name or alias)."""
    op = OPERATIONS[op_id]
    return body(
        {
            "type": "object",
            "required": ["resourceType"],
            "properties": {
                "resourceType": {"const": "Parameters"},
                "parameter": {
                    "type": "array",
                    "items": {"anyOf": [_parameter(p) for p in op.parameters]},
                },
            },
        }
    )


def operation_query(op_id: str) -> dict[str, Any]:
    """``openapi_extra=`` for GET of ``OPERATIONS[op_id]``: its declared parameters (other
    than resources) in the query string. The aliases are accepted too."""
    schemas = {
        "integer": {"type": "integer"},
        "dateTime": {"type": "string", "format": "date-time"},
    }
    return {
        "parameters": [
            {
                "name": p.name,
                "in": "query",
                "required": p.min > 0,
                "schema": schemas.get(p.type, {"type": "string"}),
                "description": p.doc or p.type,
            }
            for p in OPERATIONS[op_id].parameters
            if p.type in _VALUE_TYPES
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


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` the document described above (built once, on first use)."""

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
        components["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A SMART on FHIR access token from /auth/token "
                "(see /.well-known/smart-configuration)",
            }
        }
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
                    operation["security"] = [{"bearer": []}]
        _search_by_type(doc["paths"])
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
