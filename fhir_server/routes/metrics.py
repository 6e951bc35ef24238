"""``GET /metrics``: the Prometheus exposition (``fhir_server/metrics.py``), off the FHIR base.

Served only when ``FHIRSCHED_METRICS_TOKEN`` is set (otherwise 404, as for any path nothing is
served at), and only to a scraper sending it as ``Authorization: Bearer <token>``: the
counts say how busy the clinic is and how its sign-ins fail, which is the operator's business.
A scrape reads no patient data and is not audited (docs/architecture.md, "Observability").
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from base.errors import Unauthorized
from fhir_server.http import ServicesDep, run_sync
from fhir_server.metrics import hl7_message_counts

__all__ = ["router"]

router = APIRouter()


def _authorized(header: str | None, token: str) -> bool:
    scheme, _, credential = (header or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credential.strip().encode(), token.encode()
    )


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, services: ServicesDep) -> Response:
    token = services.settings.metrics_token
    assert token is not None  # the route is served only with a token set (app.py)
    if not _authorized(request.headers.get("authorization"), token.get_secret_value()):
        raise Unauthorized(
            "scraping /metrics needs Authorization: Bearer <the FHIRSCHED_METRICS_TOKEN value>"
        )

    def scrape() -> tuple[bytes, str]:
        with services.db.read() as conn:
            hl7 = hl7_message_counts(conn)
        return services.metrics.render([hl7], request.headers.get("accept"))

    body, content_type = await run_sync(scrape)
    return Response(body, headers={"Cache-Control": "no-store"}, media_type=content_type)
