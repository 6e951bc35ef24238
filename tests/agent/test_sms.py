"""agent/sms.py against the twilio library itself: signatures computed by its RequestValidator,
sends through its REST Client to a stand-in for api.twilio.com (a twilio HttpClient that
records each request and answers with Twilio's JSON), and the webhook's fields as Twilio sends
them."""

from __future__ import annotations

import doctest
import json
import logging
from collections.abc import Mapping
from typing import Any

import pytest
import requests
import structlog
from starlette.datastructures import FormData
from twilio.http import HttpClient
from twilio.http.response import Response
from twilio.request_validator import RequestValidator

import agent.sms
from agent.sms import (
    EMPTY_TWIML,
    MAX_BODY,
    InboundSms,
    SmsProvider,
    SmsSendError,
    TwilioSms,
    inbound,
    mask_phone,
    normalize_phone,
    signature_valid,
    split_body,
)

ACCOUNT = "AC" + "0" * 31 + "1"
TOKEN = "12345678901234567890123456789012"
CLINIC_NUMBER = "+15550199"
PATIENT_NUMBER = "+15550101"
MESSAGES_URL = f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
WEBHOOK_URL = "https://clinic.example/agent/sms"

# Every field of a real incoming-SMS webhook (https://www.twilio.com/docs/messaging/guides/
# webhook-request), numbers from the 555-01xx fictional range.
WEBHOOK = {
    "ToCountry": "US",
    "ToState": "NY",
    "SmsMessageSid": "SM" + "a" * 32,
    "NumMedia": "0",
    "ToCity": "",
    "FromZip": "",
    "SmsSid": "SM" + "a" * 32,
    "FromState": "NY",
    "SmsStatus": "received",
    "FromCity": "",
    "Body": "Can I see Dr. Smith on Monday morning?",
    "FromCountry": "US",
    "To": CLINIC_NUMBER,
    "MessagingServiceSid": "MG" + "b" * 32,
    "ToZip": "",
    "NumSegments": "1",
    "MessageSid": "SM" + "a" * 32,
    "AccountSid": ACCOUNT,
    "From": PATIENT_NUMBER,
    "ApiVersion": "2010-04-01",
}

INVALID_TO = {  # what Twilio answers for a bad To; its message quotes the number
    "code": 21211,
    "message": f"The 'To' number {PATIENT_NUMBER} is not a valid phone number.",
    "more_info": "https://www.twilio.com/docs/errors/21211",
    "status": 400,
}

Answer = tuple[int, dict[str, Any]] | Exception


class StandInTwilio(HttpClient):
    """api.twilio.com for the REST Client: records each request, answers a created Message
    (201) unless ``answers`` holds something else for that request's index (0-based)."""

    def __init__(self, answers: Mapping[int, Answer] | None = None) -> None:
        super().__init__(logging.getLogger("tests.stand_in_twilio"), is_async=False)
        self.requests: list[dict[str, Any]] = []
        self._answers = dict(answers or {})

    def request(
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        index = len(self.requests)
        self.requests.append({"method": method, "uri": uri, "data": dict(data or {}), "auth": auth})
        answer = self._answers.get(index)
        if isinstance(answer, Exception):
            raise answer
        status, payload = answer or (201, self._created(index, dict(data or {})))
        return Response(status, json.dumps(payload))

    @staticmethod
    def _created(index: int, data: dict[str, object]) -> dict[str, Any]:
        sid = f"SM{index:032x}"
        path = f"/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}"
        return {
            "account_sid": ACCOUNT,
            "api_version": "2010-04-01",
            "body": data["Body"],
            "date_created": "Mon, 16 Nov 2026 09:00:00 +0000",
            "date_sent": None,
            "date_updated": "Mon, 16 Nov 2026 09:00:00 +0000",
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": data["From"],
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {"media": f"{path}/Media.json"},
            "to": data["To"],
            "uri": f"{path}.json",
        }


def _sms(twilio: StandInTwilio) -> TwilioSms:
    return TwilioSms(
        account_sid=ACCOUNT, auth_token=TOKEN, from_number=CLINIC_NUMBER, http_client=twilio
    )


def _signed(url: str, params: Mapping[str, str], token: str = TOKEN) -> str:
    signature: str = RequestValidator(token).compute_signature(url, params)
    return signature


# --- the webhook's signature ---------------------------------------------------------------

SIGNATURE_CASES = [
    # (id, url checked, params checked, signature header, token checked, valid)
    ("valid", WEBHOOK_URL, WEBHOOK, _signed(WEBHOOK_URL, WEBHOOK), TOKEN, True),
    (
        "tampered-body",
        WEBHOOK_URL,
        {**WEBHOOK, "Body": "Cancel all my appointments"},
        _signed(WEBHOOK_URL, WEBHOOK),
        TOKEN,
        False,
    ),
    (
        "field-added",
        WEBHOOK_URL,
        {**WEBHOOK, "NumMedia": "1", "MediaUrl0": "https://example.invalid/x.jpg"},
        _signed(WEBHOOK_URL, WEBHOOK),
        TOKEN,
        False,
    ),
    (
        "field-dropped",
        WEBHOOK_URL,
        {k: v for k, v in WEBHOOK.items() if k != "FromCity"},
        _signed(WEBHOOK_URL, WEBHOOK),
        TOKEN,
        False,
    ),
    (
        "url-as-seen-behind-a-proxy",
        "http://10.0.0.5:8080/agent/sms",
        WEBHOOK,
        _signed(WEBHOOK_URL, WEBHOOK),
        TOKEN,
        False,
    ),
    (
        "other-path",
        "https://clinic.example/agent/sms/",
        WEBHOOK,
        _signed(WEBHOOK_URL, WEBHOOK),
        TOKEN,
        False,
    ),
    (
        "query-string-left-off",
        WEBHOOK_URL,
        WEBHOOK,
        _signed(WEBHOOK_URL + "?clinic=north", WEBHOOK),
        TOKEN,
        False,
    ),
    ("missing-header", WEBHOOK_URL, WEBHOOK, None, TOKEN, False),
    ("empty-header", WEBHOOK_URL, WEBHOOK, "", TOKEN, False),
    ("wrong-token", WEBHOOK_URL, WEBHOOK, _signed(WEBHOOK_URL, WEBHOOK), "0" * 32, False),
    ("empty-token", WEBHOOK_URL, WEBHOOK, _signed(WEBHOOK_URL, WEBHOOK, token=""), "", False),
    (
        "signed-with-default-port",
        WEBHOOK_URL,
        WEBHOOK,
        _signed("https://clinic.example:443/agent/sms", WEBHOOK),
        TOKEN,
        True,
    ),
    (
        "checked-with-default-port",
        "https://clinic.example:443/agent/sms",
        WEBHOOK,
        _signed(WEBHOOK_URL, WEBHOOK),
        TOKEN,
        True,
    ),
    (
        "non-default-port-kept",
        "https://clinic.example:8443/agent/sms",
        WEBHOOK,
        _signed("https://clinic.example:8443/agent/sms", WEBHOOK),
        TOKEN,
        True,
    ),
]


@pytest.mark.parametrize(
    ("url", "params", "signature", "token", "valid"),
    [case[1:] for case in SIGNATURE_CASES],
    ids=[case[0] for case in SIGNATURE_CASES],
)
def test_signature(
    url: str, params: Mapping[str, str], signature: str | None, token: str, valid: bool
) -> None:
    assert signature_valid(token, url, params, signature) is valid


def test_signature_over_starlette_form_data() -> None:
    """What the route will hand in: ``await request.form()``, a multi-dict."""
    fields = [*WEBHOOK.items(), ("MediaUrl0", "https://example.invalid/a.jpg")]
    signature = _signed(WEBHOOK_URL, dict(fields))
    assert signature_valid(TOKEN, WEBHOOK_URL, FormData(fields), signature)
    assert not signature_valid(TOKEN, WEBHOOK_URL, FormData(fields[:-1]), signature)


# --- sending -------------------------------------------------------------------------------


def test_send_posts_to_the_messages_resource() -> None:
    twilio = StandInTwilio()
    sms: SmsProvider = _sms(twilio)
    sid = sms.send(PATIENT_NUMBER, "Your visit is booked for Monday 16 November at 9:00.")
    assert sms.name == "twilio"
    assert sid == f"SM{0:032x}"
    [request] = twilio.requests
    assert request["method"] == "POST"
    assert request["uri"] == MESSAGES_URL
    assert request["auth"] == (ACCOUNT, TOKEN)
    assert request["data"] == {
        "To": PATIENT_NUMBER,
        "From": CLINIC_NUMBER,
        "Body": "Your visit is booked for Monday 16 November at 9:00.",
    }


def test_send_ignores_twilio_region_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where messages are processed is configuration passed in, not the process environment."""
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    twilio = StandInTwilio()
    _sms(twilio).send(PATIENT_NUMBER, "Hello")
    assert twilio.requests[0]["uri"] == MESSAGES_URL


def test_default_http_client_has_a_timeout() -> None:
    """twilio's own default client waits forever for an answer."""
    sms = TwilioSms(account_sid=ACCOUNT, auth_token=TOKEN, from_number=CLINIC_NUMBER)
    assert sms._client.http_client.timeout == 10.0


def _failure(sms: TwilioSms, body: str) -> tuple[SmsSendError, list[dict[str, Any]]]:
    with structlog.testing.capture_logs() as logs, pytest.raises(SmsSendError) as caught:
        sms.send(PATIENT_NUMBER, body)
    text = f"{caught.value!s} {caught.value!r} {logs!r}"
    assert PATIENT_NUMBER not in text and "5550101" not in text
    assert body[:20] not in text
    return caught.value, logs


def test_refused_message_is_an_sms_send_error_without_phi() -> None:
    twilio = StandInTwilio({0: (400, INVALID_TO)})
    error, logs = _failure(_sms(twilio), "Your visit is booked.")
    assert (error.status, error.code, error.sent) == (400, 21211, ())
    assert str(error) == "Twilio refused the message (HTTP 400, error 21211)"
    assert [e["event"] for e in logs] == ["sms.send_failed"]
    assert logs[0]["error_type"] == "TwilioRestException"


def test_refusal_in_rfc_9457_form() -> None:
    problem = {
        "type": "https://www.twilio.com/docs/errors/20429",
        "title": "Too Many Requests",
        "status": 429,
        "code": 20429,
        "detail": f"Too many requests to {PATIENT_NUMBER}",
    }
    error, logs = _failure(_sms(StandInTwilio({0: (429, problem)})), "Hello")
    assert (error.status, error.code) == (429, 20429)
    assert logs[0]["error_type"] == "TwilioServiceException"


@pytest.mark.parametrize(
    "exc",
    [requests.exceptions.ConnectTimeout(), requests.exceptions.ConnectionError(), TimeoutError()],
    ids=["connect-timeout", "connection-error", "socket-timeout"],
)
def test_unreachable_twilio_is_an_sms_send_error(exc: Exception) -> None:
    error, _ = _failure(_sms(StandInTwilio({0: exc})), "Hello")
    assert (error.status, error.code) == (None, None)
    assert error.__cause__ is exc
    assert str(error).startswith("Twilio could not be reached")


def test_empty_body_is_refused_before_sending() -> None:
    twilio = StandInTwilio()
    with pytest.raises(ValueError, match="needs a body"):
        _sms(twilio).send(PATIENT_NUMBER, " \n")
    assert twilio.requests == []


# --- long bodies ---------------------------------------------------------------------------

SENTENCES = [f"Sentence number {n} says something about your visit." for n in range(80)]
LONG_BODY = " ".join(SENTENCES)[:4000].rsplit(" ", 1)[0] + "."


def test_a_4000_character_body_goes_as_several_messages_cut_after_sentences() -> None:
    assert 3900 < len(LONG_BODY) <= 4000
    twilio = StandInTwilio()
    sids = _sms(twilio).send(PATIENT_NUMBER, LONG_BODY)
    bodies = [str(r["data"]["Body"]) for r in twilio.requests]
    assert len(bodies) == 3
    assert all(len(b) <= MAX_BODY for b in bodies)
    assert all(b.endswith("visit.") for b in bodies[:-1])
    assert " ".join(bodies) == LONG_BODY
    assert sids == ",".join(f"SM{i:032x}" for i in range(3))
    assert {r["data"]["To"] for r in twilio.requests} == {PATIENT_NUMBER}


def test_a_failed_part_says_which_parts_were_sent() -> None:
    twilio = StandInTwilio({1: (400, INVALID_TO)})
    error, logs = _failure(_sms(twilio), LONG_BODY)
    assert error.sent == (f"SM{0:032x}",)
    assert len(twilio.requests) == 2
    assert (logs[0]["sent"], logs[0]["parts"]) == (1, 3)


def test_split_without_sentences_cuts_between_words() -> None:
    words = [f"word{n}" for n in range(600)]
    parts = split_body(" ".join(words))
    assert all(len(p) <= MAX_BODY for p in parts)
    assert [w for p in parts for w in p.split(" ")] == words


def test_split_a_word_longer_than_the_limit_is_cut_where_the_limit_falls() -> None:
    assert [len(p) for p in split_body("x" * 4000)] == [1600, 1600, 800]


def test_split_prefers_a_line_break_and_ignores_an_early_sentence_end() -> None:
    first = "Hi. " + "a" * 1200
    assert split_body(first + "\n" + "b" * 1000) == [first, "b" * 1000]


def test_split_counts_utf16_units_as_twilio_does() -> None:
    parts = split_body("\N{GRINNING FACE}" * 1000)  # 2000 UTF-16 code units
    assert [len(p) for p in parts] == [800, 200]


def test_a_body_within_the_limit_is_one_part() -> None:
    body = "é" * MAX_BODY
    assert split_body(body) == [body]


# --- the incoming webhook ------------------------------------------------------------------


def test_inbound_reads_twilios_fields() -> None:
    assert inbound(WEBHOOK) == InboundSms(
        from_number=PATIENT_NUMBER,
        to_number=CLINIC_NUMBER,
        body="Can I see Dr. Smith on Monday morning?",
        message_sid="SM" + "a" * 32,
        media=0,
    )


def test_inbound_media_only_message_has_an_empty_body() -> None:
    params = {
        **WEBHOOK,
        "Body": "",
        "NumMedia": "2",
        "MediaUrl0": "https://api.twilio.com/x/Media/ME1",
        "MediaContentType0": "image/jpeg",
        "MediaUrl1": "https://api.twilio.com/x/Media/ME2",
        "MediaContentType1": "image/png",
    }
    message = inbound(params)
    assert (message.body, message.media) == ("", 2)


def test_inbound_falls_back_to_the_deprecated_sms_sid() -> None:
    params = {k: v for k, v in WEBHOOK.items() if k != "MessageSid"}
    assert inbound(params).message_sid == WEBHOOK["SmsSid"]


INBOUND_ERRORS = [
    ("no-from", {k: v for k, v in WEBHOOK.items() if k != "From"}, "no From field"),
    ("no-body", {k: v for k, v in WEBHOOK.items() if k != "Body"}, "no Body field"),
    ("neither", {"To": CLINIC_NUMBER}, "no From or Body field"),
    ("empty-from", {**WEBHOOK, "From": " "}, "From is empty"),
    ("bad-num-media", {**WEBHOOK, "NumMedia": "two"}, "NumMedia"),
    ("negative-num-media", {**WEBHOOK, "NumMedia": "-1"}, "NumMedia"),
]


@pytest.mark.parametrize(
    ("params", "message"),
    [case[1:] for case in INBOUND_ERRORS],
    ids=[case[0] for case in INBOUND_ERRORS],
)
def test_inbound_refuses_what_is_not_an_incoming_message(
    params: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        inbound(params)
    assert "5550" not in str(caught.value) and "Dr. Smith" not in str(caught.value)


def test_empty_twiml_is_an_empty_response() -> None:
    assert EMPTY_TWIML == '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


# --- numbers -------------------------------------------------------------------------------

MASKS = [
    ("+1 555 0101", "***-**01"),
    ("+15550142", "***-**42"),
    ("(555) 010-9", "***-**09"),
    ("whatsapp:+15550177", "***-**77"),
    ("7", "***-***7"),
    ("", "***-****"),
]


@pytest.mark.parametrize(("number", "masked"), MASKS, ids=[m[1] + "-" + m[0] for m in MASKS])
def test_mask_phone_keeps_the_last_two_digits(number: str, masked: str) -> None:
    assert mask_phone(number) == masked


NORMALIZED = [
    ("+1 (555) 010-1", "+15550101"),
    ("555-0101", "5550101"),
    (" +15550101 ", "+15550101"),
    ("555.010.1", "5550101"),
    ("+44 20 7946 0018", "+442079460018"),
]


@pytest.mark.parametrize(("number", "normal"), NORMALIZED, ids=[n[0] for n in NORMALIZED])
def test_normalize_phone(number: str, normal: str) -> None:
    assert normalize_phone(number) == normal


NOT_NUMBERS = [
    ("empty", ""),
    ("plus-only", "+"),
    ("words", "call me"),
    ("extension", "555-0101 ext 2"),
    ("inner-plus", "1+5550101"),
    ("two-plus", "++15550101"),
    ("fullwidth-digits", "\uff15\uff15\uff15\uff10\uff11\uff10\uff11"),  # isdigit() says yes
]


@pytest.mark.parametrize("number", [n[1] for n in NOT_NUMBERS], ids=[n[0] for n in NOT_NUMBERS])
def test_normalize_phone_refuses_what_is_not_a_number(number: str) -> None:
    with pytest.raises(ValueError, match="not a phone number") as caught:
        normalize_phone(number)
    assert str(caught.value) == (  # the same words for any input: none of it is quoted
        "not a phone number: only digits, spaces, dashes, dots, parentheses and a leading + "
        "are allowed"
    )


def test_module_examples() -> None:
    assert doctest.testmod(agent.sms).failed == 0
