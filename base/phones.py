"""Phone numbers: the form they are compared in, and the masked form logs and prompts see.

Numbers are PHI: nothing here puts one in an error's text.
"""

from __future__ import annotations

import re

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


def normalize_phone(number: str) -> str:
    """``number`` as digits, with the leading ``+`` kept if it had one: the form numbers are
    compared in. Spaces, dashes, dots and parentheses are dropped; anything else is refused
    (the error does not quote the number).

    No country code is added: ``"555-0101"`` and ``"+15550101"`` stay different, since which
    country a local number belongs to is the clinic's to say.

    >>> normalize_phone("+1 (555) 010-1"), normalize_phone("555-0101")
    ('+15550101', '5550101')
    """
    text = number.strip()
    plus = text.startswith("+")
    digits = _SEPARATORS.sub("", text[1:] if plus else text)
    if not digits or not (digits.isascii() and digits.isdigit()):
        raise ValueError(
            "not a phone number: only digits, spaces, dashes, dots, parentheses and a "
            "leading + are allowed"
        )
    return ("+" if plus else "") + digits
