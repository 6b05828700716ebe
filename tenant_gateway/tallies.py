"""What a usage tally may hold, wherever it comes from.

Every value that enters a counter or the ledger (an increment, a restore from the ledger, a
snapshot, a row an operator imports) is an integer in ``0..MAX_TALLY`` under a field name the
ledger can index. Anything else is corrupt: left out and logged, never added to. The bound is far
above real traffic (a million calls a second for thirty years) and far below what Redis (signed
64 bits) or a Lua number (exact to 2**53) holds, so no sum of bounded values overflows either.
The Lua scripts (``redis/lua/tally.lua``) apply the same rule inside Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

__all__ = [
    "HYDRATED",
    "MAX_FIELD_BYTES",
    "MAX_ROUTES",
    "MAX_TALLY",
    "OTHER_ROUTES",
    "field_name",
    "sound_tallies",
    "tally_value",
]

logger = logging.getLogger("tenant_gateway.tallies")

MAX_TALLY = 10**15
HYDRATED = "hydrated"
"""The field a live usage hash holds once restored from the ledger (never a tally itself)."""
MAX_ROUTES = 500
"""Route fields a usage hash takes; further routes count under ``OTHER_ROUTES``."""
OTHER_ROUTES = "(other routes)"
MAX_FIELD_BYTES = 1024
"""The longest field name, in UTF-8 bytes (the ledger's primary key index holds ~2,700)."""
_MAX_DIGITS = len(str(MAX_TALLY))


def tally_value(value: object) -> int | None:
    """``value`` as a tally (an ``int``, or the ASCII digits Redis stores), else None."""
    if type(value) is int:
        number = value
    elif isinstance(value, bytes | str):
        if not (0 < len(value) <= _MAX_DIGITS and value.isascii() and value.isdigit()):
            return None
        number = int(value)
    else:  # bool, float, None, …: not a count
        return None
    return number if 0 <= number <= MAX_TALLY else None


def field_name(field: object) -> str | None:
    """``field`` as a tally's name (text without NUL, at most ``MAX_FIELD_BYTES``), else None."""
    if isinstance(field, bytes):
        try:
            field = field.decode()
        except UnicodeDecodeError:
            return None
    if not isinstance(field, str) or "\x00" in field:
        return None
    try:
        size = len(field.encode())
    except UnicodeEncodeError:  # a lone surrogate
        return None
    return field if 0 < size <= MAX_FIELD_BYTES else None


def sound_tallies(raw: Mapping[Any, object], where: str) -> dict[str, int]:
    """The tallies of ``raw`` a counter may hold; refunds never above calls (a refund is of an
    admitted call). What is left out is logged, naming ``where`` it was found."""
    sound: dict[str, int] = {}
    for field, value in raw.items():
        name, number = field_name(field), tally_value(value)
        if name is None or number is None:
            logger.warning("usage tally left out of %s: %.80r = %.40r", where, field, value)
            continue
        sound[name] = number
    if sound.get("refunded", 0) > sound.get("calls", 0):
        logger.warning(
            "usage tally left out of %s: refunded %d > calls %d",
            where,
            sound["refunded"],
            sound.get("calls", 0),
        )
        del sound["refunded"]
    return sound
