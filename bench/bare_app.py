"""The baseline: a bare FastAPI endpoint returning a constant body (a small Patient)."""

from __future__ import annotations

from fastapi import FastAPI, Response

BODY = (
    b'{"resourceType":"Patient","id":"bench","meta":{"versionId":"1","lastUpdated":'
    b'"2026-11-22T00:00:00.000Z"},"name":[{"family":"Bench","given":["Mark"]}],'
    b'"gender":"other","birthDate":"1970-01-01"}'
)

app = FastAPI()


@app.get("/fhir/Patient/{rid}")
def read(rid: str) -> Response:
    return Response(BODY, media_type="application/fhir+json")
