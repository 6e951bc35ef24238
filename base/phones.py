"""Phone numbers: the form they are compared in, and the masked form logs and prompts see.

Numbers are PHI: nothing here puts one in an error's text.
"""

from __future__ import annotations

import re

import phonenumbers

__all__ = ["mask_phone", "normalize_phone"]

_SEPARATORS = re.compile(r"[\s\-().]")


def mask_phone(number: str) -> str:
    """``number`` with all but its last two digits hidden, for logs and for the model: enough
    to tell a patient which of their numbers is meant, too little to identify them.

    >>> mask_phone("+1 555 0101"), mask_phone("whatsapp:+15550142"), mask_phone("")
    ('***-**01', '***-**42', '***-****')
    """
    digits = "".join(c for c in number if c.isascii() and c.isdigit())
    return "***-**" + digits[-2:].rjust(2, "*")


def normalize_phone(number: str, region: str | None = None) -> str:
    """``number`` as digits, with the leading ``+`` kept if it had one: the form numbers are
    compared in. Spaces, dashes, dots and parentheses are dropped; anything else is refused
    (the error does not quote the number).

    Which country a national number belongs to is the clinic's to say: with ``region`` (ISO
    3166 alpha-2, the clinic file's ``phone_region``), a national number that is a possible
    number there becomes E.164, as SMS providers send and expect numbers; without it, or for a
    number that is not possible there (a short demo number), no country code is added.

    >>> normalize_phone("+1 (555) 010-1"), normalize_phone("555-0101")
    ('+15550101', '5550101')
    >>> normalize_phone("(413) 555-0101", "US"), normalize_phone("+1 413 555 0101", "US")
    ('+14135550101', '+14135550101')
    >>> normalize_phone("555-0101", "US")
    '5550101'
    """
    if region and not number.strip().startswith("+"):
        try:
            parsed = phonenumbers.parse(number, region)
        except phonenumbers.NumberParseException:
            parsed = None
        possible = phonenumbers.ValidationResult.IS_POSSIBLE
        if parsed is not None and phonenumbers.is_possible_number_with_reason(parsed) == possible:
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    text = number.strip()
    plus = text.startswith("+")
    digits = _SEPARATORS.sub("", text[1:] if plus else text)
    if not digits or not (digits.isascii() and digits.isdigit()):
        raise ValueError(
            "not a phone number: only digits, spaces, dashes, dots, parentheses and a "
            "leading + are allowed"
        )
    return ("+" if plus else "") + digits
