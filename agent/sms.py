"""SMS for the booking agent: sending through a provider, and reading Twilio's incoming-message
webhook.

The webhook only acknowledges, with :data:`EMPTY_TWIML`; the agent's replies go out through
:meth:`SmsProvider.send`. A slow model answer then never holds Twilio's webhook request open
past its timeout, and a reply that fails to send can be retried on its own.

Phone numbers and message bodies are PHI: nothing here logs them or puts them in an exception's
text. Logs and the model see :func:`mask_phone`'s form; stored numbers are compared in
:func:`normalize_phone`'s.

>>> signature_valid("token", "https://clinic.example/sms", {"Body": "hi"}, None)
False
>>> inbound({"From": "+15550101", "To": "+15550199", "Body": "", "NumMedia": "1"}).media
1
>>> mask_phone("+1 555 0101"), normalize_phone("+1 (555) 010-1")
('***-**01', '+15550101')

See https://www.twilio.com/docs/messaging/guides/webhook-request (the webhook's parameters) and
https://www.twilio.com/docs/usage/webhooks/webhooks-security (its signature).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog
from twilio.base.exceptions import TwilioException
from twilio.http import HttpClient
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from base.phones import mask_phone, normalize_phone

__all__ = [
    "EMPTY_TWIML",
    "MAX_BODY",
    "InboundSms",
    "OutboxSms",
    "SmsProvider",
    "SmsSendError",
    "TwilioSms",
    "inbound",
    "mask_phone",
    "normalize_phone",
    "signature_valid",
    "split_body",
]

log = structlog.get_logger("agent.sms")

# The webhook's whole answer: Twilio sends nothing back to the patient for it.
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'

# Twilio refuses a longer Body (error 21617). It counts UTF-16 code units, so an emoji counts
# twice; :func:`split_body` measures the same way.
MAX_BODY = 1600

# The Client reads TWILIO_REGION and TWILIO_EDGE from os.environ when handed an empty (falsy)
# environment. Where messages are processed is configuration, passed in, never picked up from
# the process's environment; so the Client gets a non-empty mapping that names neither.
_NO_ENVIRONMENT: Mapping[str, str] = {"TWILIO_REGION": "", "TWILIO_EDGE": ""}

# a sentence's end (closing quotes and brackets included; \u2026 is an ellipsis, \u2019 and
# \u201d closing curly quotes), or a line break
_SENTENCE_END = re.compile(r"[.!?\u2026][\"'\u2019\u201d)\]]*\s+|\n\s*")
_SPACE = re.compile(r"\s+")


class SmsProvider(Protocol):
    """What the agent sends SMS through: Twilio in production, a recording fake in tests."""

    name: str

    def send(self, to: str, body: str) -> str:
        """Send ``body`` to ``to`` (E.164) and return the provider's message id; raise
        :class:`SmsSendError` when it was not accepted."""
        ...


class SmsSendError(Exception):
    """The provider did not accept a message.

    The text names the provider's status and error code only: Twilio's own messages quote the
    number (error 21211: "The 'To' number +1... is not a valid phone number").
    ``sent`` holds the ids of the parts of a long body that were accepted before the failure,
    so a retry can tell the patient has already received them.
    """

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        code: int | None = None,
        sent: tuple[str, ...] = (),
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.sent = sent


class TwilioSms:
    """Sends SMS through Twilio's Messages resource, from ``from_number``: one
    ``POST /2010-04-01/Accounts/{account_sid}/Messages.json`` per part of the body.

    >>> sms = TwilioSms(account_sid="AC...", auth_token="...", from_number="+15550199")
    >>> sms.send("+15550101", "Your appointment is booked for Monday at 9:00.")  # doctest: +SKIP
    'SM...'

    ``http_client`` is the seam for tests (any ``twilio.http.HttpClient``); by default a
    ``TwilioHttpClient`` with ``timeout`` seconds (unused when ``http_client`` is given), since
    its own default waits forever. Its
    logger (``twilio.http_client``) writes the request URL, which names the account, and
    headers other than Authorization, never the form fields: the number and body stay out.
    A failed request is not retried here: Twilio may have queued the message even when the
    answer was lost, and a resend would text the patient twice.
    """

    name: str = "twilio"

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str,
        http_client: HttpClient | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.from_number = from_number
        self._client = Client(
            account_sid,
            auth_token,
            http_client=http_client or TwilioHttpClient(timeout=timeout),
            environment=_NO_ENVIRONMENT,
        )

    def send(self, to: str, body: str) -> str:
        """Send ``body``, in several messages when it is longer than :data:`MAX_BODY`; return
        the message SIDs joined by ``","``.

        Up to :data:`MAX_BODY` Twilio segments the text itself and the phone shows one message.
        """
        if not body.strip():
            raise ValueError("an SMS needs a body: Twilio refuses an empty one (error 21602)")
        sids: list[str] = []
        parts = split_body(body)
        for part in parts:
            try:
                message = self._client.messages.create(to=to, from_=self.from_number, body=part)
            except (TwilioException, OSError) as exc:
                # TwilioException: TwilioRestException (a 4xx or 5xx answer) and
                # TwilioServiceException (the same, in RFC 9457 form). OSError: requests'
                # ConnectionError, Timeout and SSLError, and socket errors of any HttpClient.
                raise self._failed(exc, sent=sids, parts=len(parts)) from exc
            sid = message.sid
            if not isinstance(sid, str) or not sid:
                raise SmsSendError("Twilio accepted the message but sent no SID", sent=tuple(sids))
            sids.append(sid)
        log.info("sms.sent", provider=self.name, message_sids=sids)
        return ",".join(sids)

    def _failed(self, exc: Exception, *, sent: list[str], parts: int) -> SmsSendError:
        """The error for ``exc``, and its log event: status and code only (see SmsSendError)."""
        status = getattr(exc, "status", None)
        code = getattr(exc, "code", None)
        status = status if isinstance(status, int) else None
        code = code if isinstance(code, int) else None
        log.warning(
            "sms.send_failed",
            provider=self.name,
            error_type=type(exc).__name__,
            status=status,
            code=code,
            sent=len(sent),
            parts=parts,
        )
        if isinstance(exc, OSError):
            reason = f"Twilio could not be reached ({type(exc).__name__})"
        else:
            reason = f"Twilio refused the message (HTTP {status}, error {code})"
        return SmsSendError(reason, status=status, code=code, sent=tuple(sent))


class Outbox(Protocol):
    def outbox_add(self, to: str, body: str) -> str: ...


class OutboxSms:
    """The local provider: each text is kept, sealed, in the agent's outbox table instead of
    being sent (the demo and the tests; ``fhir-sched agent outbox`` shows them)."""

    name = "outbox"

    def __init__(self, store: Outbox) -> None:
        self._store = store

    def send(self, to: str, body: str) -> str:
        if not body:
            raise SmsSendError("empty body")
        return self._store.outbox_add(to, body)


def split_body(body: str, limit: int = MAX_BODY) -> list[str]:
    """``body`` in parts of at most ``limit`` UTF-16 code units, cut after a sentence (or at a
    line break) when one ends in the second half of the part, else between words, else (one
    word longer than ``limit``) wherever the limit falls. Whitespace at a cut is dropped.

    >>> split_body("One. Two. Three.", limit=10)
    ['One. Two.', 'Three.']
    """
    if limit < 2:
        raise ValueError("limit must leave room for one character of any kind (2 code units)")
    parts: list[str] = []
    rest = body.strip()
    while _units(rest) > limit:
        fits = _fitting_prefix(rest, limit)
        window = rest[:fits]
        cut = _last_end(_SENTENCE_END, window, fits // 2) or _last_end(_SPACE, window, 1) or fits
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _fitting_prefix(text: str, limit: int) -> int:
    """The length of the longest prefix of ``text`` within ``limit`` UTF-16 code units."""
    used = 0
    for index, char in enumerate(text):
        used += 2 if ord(char) > 0xFFFF else 1
        if used > limit:
            return index
    return len(text)


def _last_end(pattern: re.Pattern[str], window: str, earliest: int) -> int:
    """Where the last match of ``pattern`` in ``window`` ends, if past ``earliest``; else 0."""
    ends = [m.end() for m in pattern.finditer(window) if m.start() >= earliest]
    return ends[-1] if ends else 0


def signature_valid(
    auth_token: str, url: str, params: Mapping[str, str], signature: str | None
) -> bool:
    """Whether ``signature`` (the ``X-Twilio-Signature`` header) is Twilio's HMAC-SHA1, keyed
    with ``auth_token``, of ``url`` followed by the POST parameters sorted by name.

    ``url`` must be the exact URL Twilio called, as configured in Twilio's console: scheme,
    host, port, path and query string, byte for byte. Behind a TLS-terminating proxy the URL the
    application sees (``http://10.0.0.5:8080/...``) is not it; pass the configured public URL
    instead of rebuilding it from the request. ``params`` must be every form field received,
    unfiltered and untrimmed: Twilio adds fields without notice. A multi-dict with ``getlist``
    (Starlette's ``FormData``) has every value of a repeated field signed, as Twilio does.

    The port: Twilio signs some requests with the default port written out
    (``https://host:443/sms``) and some without. ``RequestValidator.validate`` (twilio 9.13.0,
    ``twilio/request_validator.py``) accepts both: it checks the URL with every explicit port
    removed and with the scheme's default port added when none is written, so either form may
    be passed here.

    A missing or empty header, or an empty token (a configuration gap that would make the key
    public), is refused. Webhooks signed with a Webhooks Rule's SharedKey (header
    ``X-Twilio-Webhooks-Signature-Settings``) are not checked here and fail.
    """
    if not signature or not auth_token:
        return False
    return RequestValidator(auth_token).validate(url, params, signature) is True


@dataclass(frozen=True, slots=True)
class InboundSms:
    """An incoming message as Twilio's webhook describes it. ``body`` is ``""`` for a message
    that only carries media (``media`` > 0); the media itself is not fetched."""

    from_number: str
    to_number: str
    body: str
    message_sid: str
    media: int = 0


def inbound(params: Mapping[str, str]) -> InboundSms:
    """Read Twilio's incoming-message webhook (its form fields, after :func:`signature_valid`).

    ``From`` and ``Body`` must be present; ``Body`` may be empty. Twilio sends ``Body`` only
    when it calls with POST, so a ``ValueError`` here usually means the number's webhook is set
    to GET. The error texts name fields, never their values.
    """
    missing = [name for name in ("From", "Body") if name not in params]
    if missing:
        raise ValueError(
            f"not a Twilio incoming-message webhook: no {' or '.join(missing)} field "
            "(is the number's messaging webhook set to HTTP POST?)"
        )
    if not params["From"].strip():
        raise ValueError("not a Twilio incoming-message webhook: From is empty")
    raw_media = params.get("NumMedia", "0").strip() or "0"
    if not (raw_media.isascii() and raw_media.isdigit()):
        raise ValueError("NumMedia is not a whole number")
    return InboundSms(
        from_number=params["From"],
        to_number=params.get("To", ""),
        body=params["Body"],
        # SmsSid is the deprecated name Twilio still sends alongside
        message_sid=params.get("MessageSid") or params.get("SmsSid", ""),
        media=int(raw_media),
    )
