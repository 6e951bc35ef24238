"""``/console``: the staff console, a SMART app of this server served from the package.

The console is static files (``fhir_server/static/console/``: an HTML shell, plain ES modules
and the vendored FullCalendar); it signs the user in through ``/auth/authorize`` as the public
client ``console`` (``fhir_server/console_client.py``) and then calls only the FHIR API and the
other documented endpoints with the user's token, so every call it makes is authorised and
audited as any other client's. Nothing here reads the database: the files hold no PHI.

The page's policy lets it load its own files only: no inline script, and inline style only for
FullCalendar's empty ``<style data-fullcalendar>`` element (allowed by the hash of the empty
string), which FullCalendar fills through the CSSOM. See docs/console.md.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from base.errors import NotFound

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC", "router"]

router = APIRouter()

STATIC = Path(__file__).parents[1] / "static" / "console"  # package data (pyproject)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# sha256 of "": the empty <style data-fullcalendar> the page carries (FullCalendar fills it
# with insertRule, which CSP does not govern; it never sets inline text)
_EMPTY_STYLE = "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; "
    f"style-src 'self' {_EMPTY_STYLE}; img-src 'self' data:; font-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the address holds the sign-in's code and state
}


def _file(relative: str) -> Path:
    """The packaged file at ``relative``; nothing outside the console's folder, no dot files."""
    parts = relative.split("/")
    if not relative or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        raise NotFound("no such console file")
    path = STATIC.joinpath(*parts)
    if path.suffix not in _TYPES or not path.is_file():
        raise NotFound("no such console file")
    return path


def _send(path: Path, cache: str) -> Response:
    # no-cache: kept, but revalidated (ETag) on every load, so a new release is picked up
    return FileResponse(
        path,
        media_type=_TYPES[path.suffix],
        headers={**_HEADERS, "Cache-Control": cache},
    )


@router.get("/console", include_in_schema=False)
async def console_root() -> Response:
    return RedirectResponse("console/", status_code=308)


@router.get("/console/", include_in_schema=False)
async def console_page() -> Response:
    return _send(STATIC / "index.html", "no-cache")


@router.get("/console/{relative:path}", include_in_schema=False)
async def console_file(relative: str) -> Response:
    return _send(_file(relative), "no-cache")
