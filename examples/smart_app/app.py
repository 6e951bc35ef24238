"""A sample SMART app for the fhir-sched demo: sign in, see what was granted, list and book
appointments.

    ./dev demo                                    # one terminal: the server, on port 8080
    .venv/bin/python examples/smart_app/app.py    # another: this app, on port 9000
    # open http://127.0.0.1:9000/; sign in as peter / peter-demo-1 or frontdesk / frontdesk-demo

It is a public client (PKCE, no secret) doing what any SMART app does: discovery
(``.well-known/smart-configuration``), the authorization code flow with PKCE S256, the token
exchange, an id_token checked against the server's JWKS, and FHIR calls with the access
token. The server's sign-in is two form posts: user name and password, then "Allow" (a user
who acts for several patients picks one in between). A patient books for themselves; staff
pick the patient.

Options: ``--port`` (9000), ``--fhir-base`` (http://127.0.0.1:8080/fhir) and ``--client-id``
(demo-app). The redirect URI, ``http://<the host you opened>:<port>/callback``, must be
registered for the client: demo-app has http://127.0.0.1:9000/callback and
http://localhost:9000/callback.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import secrets
from datetime import date, timedelta
from html import escape
from typing import Any
from urllib.parse import urlencode

import httpx
import uvicorn
from joserfc import jwt
from joserfc.jwk import KeySet
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

# patient/ scopes are granted to a patient, user/ ones to staff: each gets what their role allows
SCOPE = (
    "openid fhirUser launch/patient "
    "patient/*.rs patient/Appointment.$find patient/Appointment.$book "
    "user/*.rs user/Appointment.$find user/Appointment.$book"
)
FHIR_JSON = "application/fhir+json"


def build_app(fhir_base: str, client_id: str) -> Starlette:
    sessions: dict[str, dict[str, Any]] = {}  # one per browser, by its "sid" cookie

    def session(request: Request) -> dict[str, Any]:
        return sessions.get(request.cookies.get("sid", ""), {})

    async def login(request: Request) -> Response:
        """Send the browser to the server's authorization endpoint."""
        async with httpx.AsyncClient(timeout=30) as http:
            smart = (await http.get(f"{fhir_base}/.well-known/smart-configuration")).json()
        verifier = secrets.token_urlsafe(48)
        sid = secrets.token_urlsafe(24)
        sessions[sid] = s = {
            "smart": smart,
            "verifier": verifier,
            "state": secrets.token_urlsafe(16),
            "nonce": secrets.token_urlsafe(16),
            "redirect_uri": str(request.url_for("callback")),
        }
        query = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": s["redirect_uri"],
            "scope": SCOPE,
            "state": s["state"],
            "nonce": s["nonce"],
            "aud": fhir_base,
            "code_challenge": _s256(verifier),
            "code_challenge_method": "S256",
        }
        response = RedirectResponse(f"{smart['authorization_endpoint']}?{urlencode(query)}", 302)
        response.set_cookie("sid", sid, httponly=True, samesite="lax")
        return response

    async def callback(request: Request) -> Response:
        """Where the server sends the browser back: exchange the code for tokens."""
        s, query = session(request), request.query_params
        if not s.get("state") or query.get("state") != s.pop("state"):
            return _page("Sign-in failed", "<p>This sign-in was not started here.</p>", 400)
        if "error" in query:
            text = f"{query['error']}: {query.get('error_description', '')}"
            return _page("Sign-in failed", f"<p>{escape(text)}</p><p>{_SIGN_IN}</p>", 400)
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.post(
                s["smart"]["token_endpoint"],
                data={
                    "grant_type": "authorization_code",
                    "code": query.get("code", ""),
                    "redirect_uri": s["redirect_uri"],
                    "client_id": client_id,
                    "code_verifier": s["verifier"],
                },
            )
            if answer.status_code != 200:
                return _page("Sign-in failed", f"<p>{escape(answer.text)}</p>", 400)
            keys = KeySet.import_key_set((await http.get(s["smart"]["jwks_uri"])).json())
        s["token"] = token = answer.json()
        s["claims"] = _verified(
            token["id_token"], keys, s["smart"]["issuer"], client_id, s["nonce"]
        )
        return RedirectResponse("/", 303)

    async def fhir(s: dict[str, Any], method: str, path: str, **kw: Any) -> httpx.Response:
        auth = {"Authorization": f"Bearer {s['token']['access_token']}", "Accept": FHIR_JSON}
        async with httpx.AsyncClient(base_url=fhir_base, headers=auth, timeout=30) as http:
            return await http.request(method, path, **kw)

    async def home(request: Request, message: str = "") -> Response:
        s = session(request)
        if "token" not in s:
            body = (
                f"<p>Signs in to <code>{escape(fhir_base)}</code> as <code>{escape(client_id)}"
                f"</code>, asking for <code>{escape(SCOPE)}</code>.</p><p>{_SIGN_IN}</p>"
            )
            return _page("Sample SMART app", body)
        token, claims = s["token"], s["claims"]
        me = claims.get("fhirUser", "")
        params = {"_sort": "date", "_count": "20"}  # the patient's, the doctor's or the desk's
        if token.get("patient"):
            params["patient"] = f"Patient/{token['patient']}"
        elif "/Practitioner/" in me:
            params["practitioner"] = me.removeprefix(f"{fhir_base}/")
        else:  # the front desk: the clinic's next appointments
            params["date"] = f"ge{date.today()}"
        found = await fhir(s, "GET", "/Appointment", params=params)
        services = await fhir(s, "GET", "/HealthcareService", params={"_count": "50"})
        patients = None
        if not token.get("patient"):
            patients = await fhir(s, "GET", "/Patient", params={"_count": "50"})
        body = f"<p><strong>{escape(message)}</strong></p>" if message else ""
        body += f"<p>fhirUser, from the verified id_token: <code>{escape(me or 'none')}</code>"
        if token.get("patient"):
            body += f"<br>Patient in context: <code>{escape(token['patient'])}</code>"
        body += "</p><p>Granted scopes:</p><ul>"
        body += "".join(f"<li><code>{escape(x)}</code></li>" for x in token["scope"].split())
        body += f"</ul><h2>Appointments</h2>{_appointments(found)}"
        body += f"<h2>Book</h2>{_book_form(services, patients)}<p>{_SIGN_IN} again</p>"
        return _page("Signed in", body)

    async def book(request: Request) -> Response:
        """$find the first free time that day, then $book it."""
        s, form = session(request), await request.form()
        if "token" not in s:
            return RedirectResponse("/", 303)
        patient = s["token"].get("patient") or str(form.get("patient", ""))
        day = str(form.get("date", ""))
        found = await fhir(
            s,
            "GET",
            "/Appointment/$find",
            params={
                "start": f"{day}T00:00:00Z",  # the day in UTC: the demo clinic's whole day
                "end": f"{day}T23:59:59Z",
                "visit-type": str(form.get("visit-type", "")),
                "patient-reference": f"Patient/{patient}",
                "_count": "1",
            },
        )
        entries = _entries(found)
        offers = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Appointment"]
        if found.status_code != 200 or not offers:
            return await home(request, f"Nothing found that day. {_outcome(found, entries)}")
        parameters = {
            "resourceType": "Parameters",
            "parameter": [{"name": "appointment-resource", "resource": offers[0]}],
        }
        booked = await fhir(
            s, "POST", "/Appointment/$book", json=parameters, headers={"Content-Type": FHIR_JSON}
        )
        if booked.status_code not in (200, 201):
            return await home(request, f"Not booked. {_outcome(booked, [])}")
        done = booked.json()
        return await home(request, f"Booked Appointment/{done['id']} at {done['start']}.")

    return Starlette(
        routes=[
            Route("/", home),
            Route("/login", login),
            Route("/callback", callback, name="callback"),
            Route("/book", book, methods=["POST"]),
        ]
    )


_SIGN_IN = "<a href='/login'>Sign in</a>"


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _verified(
    id_token: str, keys: KeySet, issuer: str, client_id: str, nonce: str
) -> dict[str, Any]:
    """The id_token's claims, once its signature, issuer, audience, expiry and nonce hold."""
    claims = dict(jwt.decode(id_token, keys, algorithms=["RS256"]).claims)
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": client_id},
        exp={"essential": True},
        nonce={"essential": True, "value": nonce},
    ).validate(claims)
    return claims


def _outcome(response: httpx.Response, entries: list[dict[str, Any]]) -> str:
    """What an OperationOutcome (the answer, or an entry of a Bundle) says."""
    outcomes = [e["resource"] for e in entries if e["resource"]["resourceType"] != "Appointment"]
    if response.status_code != 200 and "json" in response.headers.get("content-type", ""):
        outcomes.append(response.json())
    issues = [i for o in outcomes for i in o.get("issue", [])]
    return " ".join(i.get("diagnostics") or i.get("details", {}).get("text", "") for i in issues)


def _appointments(found: httpx.Response) -> str:
    if found.status_code != 200:
        return f"<p>Cannot list them: {escape(_outcome(found, []))}</p>"
    rows = []
    for entry in _entries(found):
        a = entry["resource"]
        who = ", ".join(
            p["actor"].get("display") or p["actor"].get("reference", "")
            for p in a.get("participant", [])
        )
        what = (a.get("serviceType") or [{}])[0].get("text", "")
        cells = (a.get("start", ""), a["status"], what, who, f"Appointment/{a['id']}")
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table>{''.join(rows)}</table>" if rows else "<p>None.</p>"


def _book_form(services: httpx.Response, patients: httpx.Response | None) -> str:
    """A day and a visit type (the clinic's HealthcareServices); staff also pick a patient."""
    options = ""
    for entry in _entries(services):
        for coding in entry["resource"].get("type", [{}])[0].get("coding", []):
            name = entry["resource"].get("name", coding["code"])
            options += f"<option value='{escape(coding['code'])}'>{escape(name)}</option>"
    fields = f"<label>Visit <select name=visit-type>{options}</select></label> "
    if patients is not None:
        options = ""
        for entry in _entries(patients):
            name = (entry["resource"].get("name") or [{}])[0]
            text = " ".join([*name.get("given", []), name.get("family", "")])
            options += f"<option value='{escape(entry['resource']['id'])}'>{escape(text)}</option>"
        fields += f"<label>Patient <select name=patient>{options}</select></label> "
    tomorrow = date.today() + timedelta(days=1)
    return (
        f"<form method=post action='/book'>{fields}<label>Day <input type=date name=date "
        f"value='{tomorrow}' required></label> <button>Find and book</button></form>"
    )


def _entries(bundle: httpx.Response) -> list[dict[str, Any]]:
    return list(bundle.json().get("entry", [])) if bundle.status_code == 200 else []


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    style = (
        "body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto}td{padding:.2rem}"
    )
    return HTMLResponse(
        f"<!doctype html><html lang=en><meta charset=utf-8><title>{escape(title)}</title>"
        f"<style>{style}</style><h1>{escape(title)}</h1>{body}</html>",
        status,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A sample SMART app for the fhir-sched demo.")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--fhir-base", default="http://127.0.0.1:8080/fhir")
    parser.add_argument("--client-id", default="demo-app")
    args = parser.parse_args(argv)
    print(f"sample SMART app: open http://127.0.0.1:{args.port}/", flush=True)
    app = build_app(args.fhir_base.rstrip("/"), args.client_id)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
