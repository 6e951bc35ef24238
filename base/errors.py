"""One exception tree for every FHIR error, each rendered as an OperationOutcome.

Each subclass carries its HTTP status, the OperationOutcome ``issue.code`` and a stable message
id (``FS-0xxx``) that appears in the response and in the log.
See https://hl7.org/fhir/R4/operationoutcome.html and https://hl7.org/fhir/R4/http.html.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BadRequest",
    "BusinessRule",
    "Conflict",
    "FHIRError",
    "Forbidden",
    "Gone",
    "InvalidResource",
    "MethodNotAllowed",
    "NotFound",
    "NotSupported",
    "PayloadTooLarge",
    "PreconditionFailed",
    "ServiceUnavailable",
    "Unauthorized",
    "Unprocessable",
    "UnsupportedMediaType",
    "operation_outcome",
]


def operation_outcome(
    *,
    severity: str,
    code: str,
    diagnostics: str,
    expression: list[str] | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    """Build an R4 OperationOutcome with one issue as a plain dict."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if message_id:
        issue["details"] = {
            "coding": [{"system": "urn:fhir-sched:message-id", "code": message_id}],
            "text": message_id,
        }
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class FHIRError(Exception):
    """Base of every error a client sees. Subclasses fix status, code and message id."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "exception"
    message_id: ClassVar[str] = "FS-0500"
    severity: ClassVar[str] = "error"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.expression = expression
        self.headers = headers or {}

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(
            severity=self.severity,
            code=self.code,
            diagnostics=self.diagnostics,
            expression=self.expression,
            message_id=self.message_id,
        )


class BadRequest(FHIRError):
    status = 400
    code = "invalid"
    message_id = "FS-0400"


class InvalidResource(BadRequest):
    """The body is not a valid FHIR R4 resource; ``expression`` names the element."""

    code = "structure"
    message_id = "FS-0401"


class NotSupported(BadRequest):
    code = "not-supported"
    message_id = "FS-0402"


class Unauthorized(FHIRError):
    """No usable bearer token (RFC 6750 §3: the challenge goes in WWW-Authenticate)."""

    status = 401
    code = "login"
    message_id = "FS-0401"

    def __init__(self, diagnostics: str, *, error: str | None = "invalid_token") -> None:
        challenge = 'Bearer realm="fhir-sched"'
        if error:
            challenge += f', error="{error}"'
        super().__init__(diagnostics, headers={"WWW-Authenticate": challenge})


class Forbidden(FHIRError):
    """The token is good but its scopes (or its patient) do not allow this."""

    status = 403
    code = "forbidden"
    message_id = "FS-0403"


class NotFound(FHIRError):
    status = 404
    code = "not-found"
    message_id = "FS-0404"


class MethodNotAllowed(FHIRError):
    status = 405
    code = "not-supported"
    message_id = "FS-0405"


class Conflict(FHIRError):
    status = 409
    code = "conflict"
    message_id = "FS-0409"


class Gone(FHIRError):
    status = 410
    code = "deleted"
    message_id = "FS-0410"


class PreconditionFailed(FHIRError):
    status = 412
    code = "conflict"
    message_id = "FS-0412"


class PayloadTooLarge(FHIRError):
    """A request body over the server's limit (``FHIRSCHED_MAX_BODY_BYTES``, and
    ``FHIRSCHED_MAX_BUNDLE_BYTES`` for a transaction or batch); nothing of it was read past
    the limit, nothing stored."""

    status = 413
    code = "too-costly"
    message_id = "FS-0413"


class UnsupportedMediaType(FHIRError):
    status = 415
    code = "not-supported"
    message_id = "FS-0415"


class Unprocessable(FHIRError):
    status = 422
    code = "processing"
    message_id = "FS-0422"


class BusinessRule(Unprocessable):
    """A clinic rule refuses the request (e.g. a cancellation inside the notice period)."""

    code = "business-rule"
    message_id = "FS-0423"


class ServiceUnavailable(FHIRError):
    status = 503
    code = "transient"
    message_id = "FS-0503"
