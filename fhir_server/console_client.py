"""The staff console's registration: the public SMART client ``console``.

The console (``/console``, ``fhir_server/routes/console.py``) signs users in with the
authorization code flow and PKCE S256, as a public client whose redirect URI and
post-logout redirect URI are both ``{public root}/console/``. It asks for every scope a staff
screen uses; the server grants only what the registration and the signed-in user's role both
allow (``security/smart/registry.py``, ``ROLE_SCOPES``), so the role decides what the console
can do. It asks for no ``patient/`` scope: a patient who signs in is granted nothing and the
server refuses the sign-in (``access_denied``).

``fhir-sched demo`` registers it; other deployments run ``fhir-sched console register``.
Both are idempotent: run again (say behind another address), they add the redirect URI the
client lacks and change nothing else.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import Connection

from security.smart.registry import add_client, add_redirect_uris, get_client

__all__ = ["CLIENT_ID", "SCOPE", "redirect_uri", "register_console"]

CLIENT_ID = "console"
SCOPE = (
    "openid fhirUser offline_access user/*.cruds "
    "user/Appointment.$find user/Appointment.$hold user/Appointment.$book "
    "user/AuditEvent.rs"  # named: a wildcard does not reach the audit log
)


def redirect_uri(public_root: str) -> str:
    """Where the console lives and where the server sends the browser back (sign-in and
    sign-out)."""
    return f"{public_root.rstrip('/')}/console/"


def register_console(
    conn: Connection, public_root: str
) -> Literal["registered", "updated", "unchanged"]:
    """Register the console client for ``public_root``, or add that root's redirect URI."""
    uri = redirect_uri(public_root)
    if get_client(conn, CLIENT_ID) is None:
        add_client(
            conn,
            client_id=CLIENT_ID,
            name="fhir-sched staff console",
            kind="public",
            scope=SCOPE,
            redirect_uris=[uri],
        )
        return "registered"
    return "updated" if add_redirect_uris(conn, CLIENT_ID, [uri]) else "unchanged"
