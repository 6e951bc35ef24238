"""The authorization pages a person sees: sign in, choose a patient, approve scopes.

Plain HTML forms (no scripts, no cookies): every page carries the original authorization
request in hidden fields, and after sign-in a short-lived signed ticket instead of the password.
Everything shown is escaped.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "consent_page",
    "error_page",
    "patient_page",
    "signin_page",
]

# The request parameters each page carries forward.
CARRIED = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "launch",
    "nonce",
    "code_challenge",
    "code_challenge_method",
)

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}"
    "label{display:block;margin:.6rem 0}input[type=text],input[type=password]{width:100%;"
    "padding:.4rem}button{padding:.5rem 1rem;margin:.8rem .5rem 0 0}.error{color:#a00}"
)


# The pages' policy: nothing loads from anywhere, no script runs, only their own inline style
# (named by its hash) applies, and no site may frame them. form-action is left out on purpose:
# browsers apply it to the redirect that follows a form post, which goes to the app.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; "
    f"style-src 'sha256-{base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()}'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>"
    )


def _hidden(params: dict[str, str], **extra: str) -> str:
    fields = {k: params[k] for k in CARRIED if params.get(k)} | extra
    return "".join(
        f"<input type=hidden name='{escape(k)}' value='{escape(v, quote=True)}'>"
        for k, v in fields.items()
    )


def signin_page(params: dict[str, str], client_name: str, error: str | None = None) -> str:
    message = f"<p class=error>{escape(error)}</p>" if error else ""
    return _page(
        "Sign in",
        f"<p><strong>{escape(client_name)}</strong> asks to use your clinic records.</p>"
        f"{message}<form method=post action='/auth/authorize/decide'>"
        f"{_hidden(params, step='signin')}"
        "<label>User name <input type=text name=username autocomplete=username required></label>"
        "<label>Password <input type=password name=password autocomplete=current-password "
        "required></label><button type=submit>Sign in</button></form>",
    )


def patient_page(params: dict[str, str], ticket: str, patients: list[tuple[str, str]]) -> str:
    choices = "".join(
        f"<label><input type=radio name=patient value='{escape(pid, quote=True)}' required> "
        f"{escape(label)}</label>"
        for pid, label in patients
    )
    return _page(
        "Choose a patient",
        "<p>Whose records should the app use?</p><form method=post "
        f"action='/auth/authorize/decide'>{_hidden(params, step='patient', ticket=ticket)}"
        f"{choices}<button type=submit>Continue</button></form>",
    )


def consent_page(
    params: dict[str, str],
    ticket: str,
    client_name: str,
    scopes: list[tuple[str, str]],
    patient: str | None,
) -> str:
    boxes = "".join(
        f"<label><input type=checkbox name=grant value='{escape(s, quote=True)}' checked> "
        f"{escape(text)} <code>{escape(s)}</code></label>"
        for s, text in scopes
    )
    extra = {"step": "consent", "ticket": ticket}
    if patient:
        extra["patient"] = patient
    return _page(
        "Allow access?",
        f"<p><strong>{escape(client_name)}</strong> asks for the access below. Untick what you "
        "do not want to give.</p><form method=post action='/auth/authorize/decide'>"
        f"{_hidden(params, **extra)}{boxes}"
        "<button type=submit name=decision value=allow>Allow</button>"
        "<button type=submit name=decision value=deny>Deny</button></form>",
    )


def error_page(message: str) -> str:
    return _page("This sign-in cannot continue", f"<p class=error>{escape(message)}</p>")
