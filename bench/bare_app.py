"""The baseline: the fastest trivial FastAPI endpoint, an ``async def`` returning a constant
body (a small Patient).

``async def`` so that it runs on the event loop, as the server's own reads do: a sync ``def``
would send every request through the thread pool and back, and halve the yardstick. No path
parameter, so nothing is parsed or validated per request.
"""

from __future__ import annotations

from fastapi import FastAPI, Response

BODY = (
    b'{"resourceType":"Patient","id":"bench","meta":{"versionId":"1","lastUpdated":'
    b'"2026-11-22T00:00:00.000Z"},"name":[{"family":"Bench","given":["Mark"]}],'
    b'"gender":"other","birthDate":"1970-01-01"}'
)
PATH = "/fhir/Patient/x"

app = FastAPI()


@app.get(PATH)
async def read() -> Response:
    return Response(BODY, media_type="application/fhir+json")
