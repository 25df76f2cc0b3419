"""What every provider's answer parser checks in the values it takes from a body.

An answer is data from the network: a count may be negative, a float, a string, ``1e400`` or
twenty digits long; a text may be a number or an object. Each such value either is what the
field means or the answer is malformed: a ``TransientError`` (``bad_response``), like a body
that is not JSON at all, never a ``TypeError``, an ``OverflowError`` or a negative cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ..errors import TransientError

__all__ = ["MAX_TOKEN_COUNT", "bad_answer", "count", "finish", "text"]

MAX_TOKEN_COUNT: Final = 1_000_000_000
"""More tokens than any model's context (the largest are a few million): a count above it is a
malformed answer, not a bill."""


def bad_answer(provider: str, what: str) -> TransientError:
    return TransientError(f"{provider}: {what}", error_type="bad_response")


def count(
    provider: str,
    usage: Mapping[str, Any],
    key: str,
    *,
    required: bool = False,
    strings: bool = False,
) -> int:
    """A token count of ``usage``: a whole number from 0 to ``MAX_TOKEN_COUNT`` (a float with
    no fraction counts; with ``strings``, digits in a JSON string too: protobuf's JSON form of
    an int64). Missing or null: 0, or a malformed answer when ``required``."""
    value = usage.get(key)
    if value is None:
        if required:
            raise bad_answer(provider, f"answer lacks usage {key!r}")
        return 0
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif strings and isinstance(value, str) and value.isascii() and value.isdigit():
        number = int(value) if len(value) <= 12 else MAX_TOKEN_COUNT + 1
    if number is None or not 0 <= number <= MAX_TOKEN_COUNT:
        shown = repr(value)
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        raise bad_answer(
            provider, f"usage {key!r} is {shown}, not a token count from 0 to {MAX_TOKEN_COUNT:,}"
        )
    return number


def text(provider: str, value: Any, where: str) -> str:
    """An answer's text: a string (missing or null: empty); anything else is malformed."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise bad_answer(provider, f"{where} is a JSON {type(value).__name__}, not a string")
    return value


def finish(provider: str, value: Any, where: str) -> str | None:
    """A finish or stop reason: a string or null; anything else is malformed."""
    if value is None or isinstance(value, str):
        return value
    raise bad_answer(provider, f"{where} is a JSON {type(value).__name__}, not a string")
