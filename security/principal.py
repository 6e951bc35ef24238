"""The principal a request acts as, built from its bearer token.

Every FHIR interaction, bundle entry and operation is checked against it
(``fhir_server/authz.py``); the HL7 bridge acts as :data:`SYSTEM`, a principal with full
system scopes that no token can carry.
"""

from __future__ import annotations

from dataclasses import dataclass

from security.scopes import Grants

__all__ = ["SYSTEM", "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking: the client, the user (if one signed in), the granted scopes and the
    launch context. ``jti`` names the token in logs and AuditEvents (never the token)."""

    client_id: str
    grants: Grants
    patient: str | None = None  # launch context: the Patient a patient/ scope is confined to
    user_id: str | None = None
    fhir_user: str | None = None
    jti: str | None = None
    expires_at: float | None = None  # epoch seconds, for caches
    # the signed-in user's role (``security.smart.registry.ROLES``) as registered when the token
    # was last checked: what the doors outside FHIR (``/hl7``) decide on; None without a user
    role: str | None = None


SYSTEM = Principal(client_id="fhir-sched", grants=Grants.parse("system/*.cruds"))
