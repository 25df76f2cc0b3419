"""Token buckets and the rate-limit headers built from them. Pure: the caller passes the clock.

Each provider API gets a ``RateLimits``: a request bucket and a token bucket, each refilled
continuously at its rate and holding ``rate * burst_s`` (at least one request's worth of
requests). A request is let through only when both buckets can pay for it; a refused request pays
nothing. The headers report the buckets the way the real APIs report theirs:

- ``*-limit-*`` is the per-minute rate (RPM / TPM), as the real APIs advertise it;
- ``*-remaining-*`` is what the bucket holds now (what could be sent at once);
- ``*-reset-*`` is when the bucket will be full again: a Go duration for OpenAI (``1s``,
  ``6m0s``, ``12ms``), an RFC 3339 time for Anthropic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "RateLimits",
    "Refusal",
    "TokenBucket",
    "go_duration",
    "rfc3339_after",
]


class TokenBucket:
    """A bucket refilled continuously at ``rate`` per second up to ``capacity``."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            level = self.level + elapsed * self.rate
            self.level = level if level < self.capacity else self.capacity
            self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (after ``refill``); 0 when it is now."""
        missing = amount - self.level
        return missing / self.rate if missing > 0 else 0.0

    def time_to_full(self) -> float:
        return (self.capacity - self.level) / self.rate


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused and how long until it could pass."""

    kind: Literal["requests", "tokens"]
    retry_after_s: float
    limit_per_minute: int
    requested: int
    remaining: int  # what the refusing bucket holds now
    too_large: bool  # the request costs more than the bucket can ever hold


class RateLimits:
    """The request and token buckets of one provider API (either may be absent)."""

    __slots__ = ("requests", "tokens")

    def __init__(
        self,
        requests_per_second: float | None,
        tokens_per_second: float | None,
        burst_s: float,
        now: float,
    ) -> None:
        self.requests = (
            TokenBucket(requests_per_second, max(requests_per_second * burst_s, 1.0), now)
            if requests_per_second is not None
            else None
        )
        self.tokens = (
            TokenBucket(tokens_per_second, max(tokens_per_second * burst_s, 1.0), now)
            if tokens_per_second is not None
            else None
        )

    @property
    def active(self) -> bool:
        return self.requests is not None or self.tokens is not None

    def acquire(self, token_cost: int, now: float) -> Refusal | None:
        """Take one request and ``token_cost`` tokens, or say why not (taking nothing)."""
        requests, tokens = self.requests, self.tokens
        if requests is not None:
            requests.refill(now)
            wait = requests.wait_for(1.0)
            if wait > 0:
                return Refusal(
                    "requests", wait, _per_minute(requests), 1, int(requests.level), False
                )
        if tokens is not None:
            tokens.refill(now)
            if token_cost > tokens.capacity:
                return Refusal(
                    "tokens",
                    tokens.time_to_full(),
                    _per_minute(tokens),
                    token_cost,
                    int(tokens.level),
                    True,
                )
            wait = tokens.wait_for(token_cost)
            if wait > 0:
                return Refusal(
                    "tokens", wait, _per_minute(tokens), token_cost, int(tokens.level), False
                )
            tokens.level -= token_cost
        if requests is not None:
            requests.level -= 1.0
        return None

    def openai_headers(self) -> dict[str, str]:
        """``x-ratelimit-*`` headers describing the buckets as they are now."""
        headers: dict[str, str] = {}
        if self.requests is not None:
            bucket = self.requests
            headers["x-ratelimit-limit-requests"] = str(_per_minute(bucket))
            headers["x-ratelimit-remaining-requests"] = str(max(int(bucket.level), 0))
            headers["x-ratelimit-reset-requests"] = go_duration(bucket.time_to_full())
        if self.tokens is not None:
            bucket = self.tokens
            headers["x-ratelimit-limit-tokens"] = str(_per_minute(bucket))
            headers["x-ratelimit-remaining-tokens"] = str(max(int(bucket.level), 0))
            headers["x-ratelimit-reset-tokens"] = go_duration(bucket.time_to_full())
        return headers

    def anthropic_headers(self, wall_now: float) -> dict[str, str]:
        """``anthropic-ratelimit-*`` headers; ``wall_now`` is ``time.time()``."""
        headers: dict[str, str] = {}
        if self.requests is not None:
            bucket = self.requests
            headers["anthropic-ratelimit-requests-limit"] = str(_per_minute(bucket))
            headers["anthropic-ratelimit-requests-remaining"] = str(max(int(bucket.level), 0))
            headers["anthropic-ratelimit-requests-reset"] = rfc3339_after(
                wall_now, bucket.time_to_full()
            )
        if self.tokens is not None:
            bucket = self.tokens
            headers["anthropic-ratelimit-tokens-limit"] = str(_per_minute(bucket))
            headers["anthropic-ratelimit-tokens-remaining"] = str(max(int(bucket.level), 0))
            headers["anthropic-ratelimit-tokens-reset"] = rfc3339_after(
                wall_now, bucket.time_to_full()
            )
        return headers


def _per_minute(bucket: TokenBucket) -> int:
    return max(round(bucket.rate * 60), 1)


def go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String()``, to the millisecond: ``12ms``, ``1.5s``,
    ``6m0s``, ``1h2m3s``."""
    millis = math.ceil(seconds * 1000 - 1e-6) if seconds > 0 else 0
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    secs = f"{whole}.{fraction:03d}".rstrip("0") if fraction else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def rfc3339_after(wall_now: float, seconds: float) -> str:
    """The RFC 3339 UTC time ``seconds`` after ``wall_now``, rounded up to the second."""
    moment = datetime.fromtimestamp(math.ceil(wall_now + max(seconds, 0.0)), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
