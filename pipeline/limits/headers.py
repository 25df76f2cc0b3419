"""Read what a provider's response headers say about its rate limits.

OpenAI sends ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` with resets as Go
durations (``6m0s``, ``12ms``). Anthropic sends ``anthropic-ratelimit-{requests,tokens}-*`` with
resets as RFC 3339 times; when only the separate ``input-tokens`` / ``output-tokens`` families are
present, the tighter of the two stands for "tokens". Both may send ``retry-after``.

``parse_rate_limit_headers`` folds all of that into one ``RateLimitInfo`` (durations in seconds
from receipt) that the rate limiter can act on without knowing which provider spoke.
``rate_limit_parser(provider)`` picks the reader of one provider's headers once, for a client
that reads every answer's.

Headers may be ``httpx.Headers`` (case-insensitive) or a dict with lower-case names: only
``.get()`` with lower-case names is used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache

from ..records import RateLimitInfo
from .retry import retry_after_seconds

__all__ = [
    "RateLimitParser",
    "parse_go_duration",
    "parse_rate_limit_headers",
    "parse_reset_rfc3339",
    "rate_limit_parser",
]

_UNIT_SECONDS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 MICRO SIGN
    "μs": 1e-6,  # U+03BC GREEK SMALL LETTER MU
    "ns": 1e-9,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"(?:ns|us|µs|μs|ms|s|m|h)"
_DURATION = re.compile(rf"\+?(?:{_NUMBER}{_UNIT})+")
_PART = re.compile(rf"({_NUMBER})({_UNIT})")
_BARE = re.compile(rf"\+?{_NUMBER}")


def parse_go_duration(s: str) -> float | None:
    """Seconds in a Go ``time.Duration`` string: ``1s``, ``6m0s``, ``12ms``, ``2m59.56s``, ``1h2m``.

    Units are ``h m s ms us µs ns``. A bare number is taken as seconds (``0`` is Go's own
    spelling of zero). Negative, empty or malformed values give None.
    """
    return _go_duration(s.strip())


@lru_cache(maxsize=4096)
def _go_duration(s: str) -> float | None:
    # Providers repeat the same few strings ("1s", "6ms"), so the cache answers most calls.
    if _DURATION.fullmatch(s):
        return sum(float(num) * _UNIT_SECONDS[unit] for num, unit in _PART.findall(s))
    if _BARE.fullmatch(s):
        return float(s)
    return None


def parse_reset_rfc3339(s: str, now: datetime) -> float | None:
    """Seconds from ``now`` until the RFC 3339 time ``s`` (0 if it has passed); None if malformed.

    A time or ``now`` without an offset is taken as UTC.
    """
    try:
        when = datetime.fromisoformat(s.strip().upper())
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


RateLimitParser = Callable[[Mapping[str, str]], "RateLimitInfo | None"]
"""Reads one answer's headers (received now): its ``RateLimitInfo``, or None."""


def rate_limit_parser(provider: str) -> RateLimitParser:
    """The reader of ``provider``'s rate-limit headers (see ``parse_rate_limit_headers``)."""
    if provider == "openai":
        return _openai_info
    if provider == "anthropic":
        return _anthropic_info
    return _any_info


def parse_rate_limit_headers(
    provider: str, headers: Mapping[str, str], now: datetime | None = None
) -> RateLimitInfo | None:
    """The rate-limit state a response reports, or None if it reports none.

    ``now`` is when the response arrived (default: the current time); Anthropic's reset times
    are measured from it. An unknown (OpenAI-compatible or proxy) provider: whichever family
    of headers is present.
    """
    if provider == "openai":
        info = _openai(headers)
    elif provider == "anthropic":
        info = _anthropic(headers, now)
    else:
        info = _openai(headers) or _anthropic(headers, now)
    return _info(info, headers, now)


def _info(
    info: _Fields | None, headers: Mapping[str, str], now: datetime | None
) -> RateLimitInfo | None:
    retry_after = retry_after_seconds(headers, now=now)
    if info is None:
        return None if retry_after is None else RateLimitInfo(retry_after_s=retry_after)
    return RateLimitInfo(*info, retry_after_s=retry_after)


def _openai_info(headers: Mapping[str, str]) -> RateLimitInfo | None:
    return _info(_openai(headers), headers, None)


def _anthropic_info(headers: Mapping[str, str]) -> RateLimitInfo | None:
    return _info(_anthropic(headers, None), headers, None)


def _any_info(headers: Mapping[str, str]) -> RateLimitInfo | None:
    return _info(_openai(headers) or _anthropic(headers, None), headers, None)


# -- internals -------------------------------------------------------------------------------

_Getter = Callable[[str], "str | None"]
_Fields = tuple[int | None, int | None, float | None, int | None, int | None, float | None]


def _openai(headers: Mapping[str, str]) -> _Fields | None:
    get = headers.get
    fields = (
        _count(get("x-ratelimit-limit-requests")),
        _count(get("x-ratelimit-remaining-requests")),
        _duration(get("x-ratelimit-reset-requests")),
        _count(get("x-ratelimit-limit-tokens")),
        _count(get("x-ratelimit-remaining-tokens")),
        _duration(get("x-ratelimit-reset-tokens")),
    )
    return None if fields == _NOTHING else fields


def _anthropic(headers: Mapping[str, str], now: datetime | None) -> _Fields | None:
    get = headers.get
    at = now or datetime.now(UTC)
    requests = _anthropic_family(get, "requests", at)
    tokens = _anthropic_family(get, "tokens", at)
    if tokens is None:
        tokens = _tighter(
            _anthropic_family(get, "input-tokens", at),
            _anthropic_family(get, "output-tokens", at),
        )
    if requests is None and tokens is None:
        return None
    return (*(requests or _NONE3), *(tokens or _NONE3))


_Family = tuple[int | None, int | None, float | None]
_NONE3: _Family = (None, None, None)
_NOTHING = (None, None, None, None, None, None)


def _anthropic_family(get: _Getter, name: str, now: datetime) -> _Family | None:
    prefix = f"anthropic-ratelimit-{name}-"
    reset = get(prefix + "reset")
    family = (
        _count(get(prefix + "limit")),
        _count(get(prefix + "remaining")),
        None if reset is None else parse_reset_rfc3339(reset, now),
    )
    return None if family == _NONE3 else family


def _tighter(a: _Family | None, b: _Family | None) -> _Family | None:
    """The family with fewer tokens remaining (else the lower limit); the other if one is None."""
    if a is None or b is None:
        return a or b

    def key(f: _Family) -> tuple[float, float]:
        remaining, limit = f[1], f[0]
        return (
            float("inf") if remaining is None else remaining,
            float("inf") if limit is None else limit,
        )

    return a if key(a) <= key(b) else b


def _count(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        try:
            number = int(float(value))
        except (ValueError, OverflowError):
            return None
    return number if number >= 0 else None


def _duration(value: str | None) -> float | None:
    return None if value is None else parse_go_duration(value)
