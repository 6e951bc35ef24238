"""``/docs``: Swagger UI over ``/openapi.json``, from files this server serves itself.

Swagger UI 5's script, style sheet and icon come from the ``fastapi-swagger`` package
(FastAPI's own page loads them from a CDN, so it was blank offline), and the page names nothing
beyond this server. "Authorize" offers the document's schemes: SMART's authorization code flow
(with PKCE, and ``aud`` set to the FHIR base, as this server requires) for a client registered
with the redirect ``<public root>/docs/oauth2-redirect``, client credentials (the demo's
``demo-backend``), or a token pasted in; "Try it out" then sends it as ``Authorization: Bearer``.

See https://swagger.io/docs/open-source-tools/swagger-ui/usage/oauth2/.
"""

from __future__ import annotations

from importlib import resources as package_files
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse

from base.errors import NotFound
from fhir_server.http import ServicesDep

__all__ = ["ASSETS", "router"]

router = APIRouter()

# The files the page loads, by the name it loads them under; nothing else is served from there.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
_PACKAGED = Path(str(package_files.files("fastapi_swagger") / "resources"))
_ASSETS_PATH = "/docs/assets"
REDIRECT = "/docs/oauth2-redirect"


@router.get("/docs", include_in_schema=False)
async def docs(request: Request, services: ServicesDep) -> Response:
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title="fhir-sched API",
        swagger_js_url=f"{root}{_ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{_ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{_ASSETS_PATH}/favicon-32x32.png",
        oauth2_redirect_url=f"{root}{REDIRECT}",
        init_oauth={
            "usePkceWithAuthorizationCodeGrant": True,  # the server takes S256 only
            "additionalQueryStringParams": {"aud": services.settings.fhir_base},
            "scopeSeparator": " ",
        },
        swagger_ui_parameters={
            "deepLinking": True,
            "displayRequestDuration": True,
            "validatorUrl": None,  # no badge fetched from the validator's site
        },
    )
    page.headers["Cache-Control"] = "no-cache"
    return page


@router.get(REDIRECT, include_in_schema=False)
async def oauth2_redirect() -> Response:
    """Where the authorization code flow returns: hands the code to the page that opened it."""
    return get_swagger_ui_oauth2_redirect_html()


@router.get(f"{_ASSETS_PATH}/{{name}}", include_in_schema=False)
async def asset(name: str) -> Response:
    media = ASSETS.get(name)
    if media is None:
        raise NotFound("no such Swagger UI file")
    return FileResponse(
        _PACKAGED / name,
        media_type=media,
        headers={"Cache-Control": "public, max-age=86400"},
    )
