"""Rate budgets: how fast requests may go out, and how that slows down when a provider says so.

A requests-per-minute bucket (``aiolimiter``) and a tokens-per-minute bucket charged with an
estimate before sending (prompt estimate + ``max_tokens``) and settled with the real usage
afterwards. (The concurrency cap and the USD budget sit one level up, in ``RunBudget``.)

Both buckets are kept *shallow*: they let through at most ``burst_s`` seconds' worth of requests
at once (a quarter of a second by default). A provider's own bucket is usually deeper, so
running at exactly the provider's rate leaves its bucket with slack that absorbs network jitter
instead of answering 429.

Providers talk back. ``observe()`` takes the rate-limit headers of every answer: the limits the
provider states (``x-ratelimit-limit-requests``/``-tokens``, ``anthropic-ratelimit-*-limit``)
cap the configured rates from the first answer on, so a job configured above its real limit
runs at that limit instead of finding it by 429s; when the provider reports fewer tokens left
than our bucket holds, the bucket drops to match, and when it reports no requests left, every
sender waits for the reset. ``penalize()`` takes a 429: the
whole run (not just one request) waits for the provider's ``retry-after``, and the request rate
is cut multiplicatively, then grows back slowly while answers come back clean (AIMD). One 429
therefore slows everybody instead of starting a storm.

Executors only see the ``RateBudget`` protocol (through ``RunBudget``), so a job split into
shards on several workers can share one budget by passing in an implementation backed by a
shared service: ``SharedRateBudget`` (``_shared``), drawing blocks from a ``BudgetService``
that holds one ``LocalRateBudget`` for the whole job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import anyio
from aiolimiter import AsyncLimiter

from ..records import RateLimitInfo

__all__ = ["LocalRateBudget", "RateBudget", "TokenBucket"]


class RateBudget(Protocol):
    """What the runner needs from a rate limiter. Every method but ``acquire`` is synchronous."""

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of ``tokens`` (estimated, worst case) may be sent."""

    def settle(self, reserved: int, used: int) -> None:
        """Correct the token charge of a finished request: ``reserved`` estimated, ``used`` real."""

    def observe(self, info: RateLimitInfo) -> None:
        """Take what the provider's rate-limit headers said."""

    def penalize(self, retry_after: float | None) -> None:
        """The provider answered 429: slow the whole run down."""

    def reward(self) -> None:
        """A request succeeded: let a reduced rate grow back."""

    def pause(self, seconds: float) -> None:
        """Let nothing out for ``seconds`` (a provider that cannot be reached, say)."""


class TokenBucket:
    """A token bucket that may go into debt, for budgets charged by estimate and settled later.

    ``rate`` tokens are added per second up to ``capacity``. ``acquire(n)`` waits until the bucket
    holds ``min(n, capacity)`` and then takes ``n`` (a request bigger than the bucket is let
    through on a full bucket and leaves it in debt). Waiters are served first come, first served,
    so large requests are not starved by small ones.
    """

    def __init__(
        self, rate: float, capacity: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0 or capacity <= 0:
            raise ValueError("rate and capacity must be positive")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._level = capacity
        self._stamp = clock()
        self._lock = anyio.Lock(fast_acquire=True)

    @property
    def level(self) -> float:
        self._refill()
        return self._level

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._stamp
        if elapsed > 0:
            self._level = min(self.capacity, self._level + elapsed * self.rate)
        self._stamp = now

    def try_take(self, amount: float) -> bool:
        """Take ``amount`` now if the bucket holds enough; never waits."""
        self._refill()
        if self._level >= min(amount, self.capacity):
            self._level -= amount
            return True
        return False

    async def acquire(self, amount: float) -> None:
        # Fast path without the lock when nobody is queued.
        if not self._lock.locked() and self.try_take(amount):
            return
        async with self._lock:
            while not self.try_take(amount):
                need = min(amount, self.capacity) - self._level
                await anyio.sleep(max(need / self.rate, 0.001))

    def give_back(self, amount: float) -> None:
        """Return (or, with a negative amount, charge) tokens after the fact."""
        self._refill()
        self._level = min(self.capacity, self._level + amount)

    def retune(self, rate: float, capacity: float) -> None:
        """A new rate and capacity, from now on (what was earned so far is kept, up to it)."""
        self._refill()
        self.rate = rate
        self.capacity = capacity
        self._level = min(self._level, capacity)

    def cap_level(self, at_most: float) -> None:
        """Never hold more than ``at_most`` (what the provider says is left)."""
        self._refill()
        self._level = min(self._level, at_most)


class LocalRateBudget:
    """A rate budget for one process: the default for every job."""

    def __init__(
        self,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        burst_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._burst_s = burst_s
        self._configured_rps = None if requests_per_minute is None else requests_per_minute / 60
        self._requests: AsyncLimiter | None = None
        self._rps: float | None = None
        if self._configured_rps is not None:
            self._set_request_rate(self._configured_rps)
        self._tokens: TokenBucket | None = None
        if tokens_per_minute is not None:
            tps = tokens_per_minute / 60
            self._tokens = TokenBucket(tps, max(tps * burst_s, 1.0), clock=clock)
        self._paused_until = 0.0
        self._last_cut = -math.inf
        self._observed_limit_rps: float | None = None
        self.rate_limited = 0  # 429s seen, for the summary

    # -- the request rate -------------------------------------------------------------------

    @property
    def request_rate(self) -> float | None:
        """Requests per second currently allowed (None: unlimited)."""
        return self._rps

    @property
    def token_rate(self) -> float | None:
        """Tokens per second currently allowed (None: unlimited)."""
        return None if self._tokens is None else self._tokens.rate

    @property
    def limited(self) -> bool:
        """Whether a request or token rate is known (configured, or stated by the provider)."""
        return self._requests is not None or self._tokens is not None

    def paused_for(self) -> float:
        """Seconds left of a pause (a 429's ``retry-after``, say); 0 when not paused."""
        return max(0.0, self._paused_until - self._clock())

    def _set_request_rate(self, rps: float) -> None:
        self._rps = rps
        period = max(self._burst_s, 1.0 / rps)
        if self._requests is None:
            self._requests = AsyncLimiter(rps * period, period)
        else:
            # Retune in place so tasks already waiting on the limiter see the new rate.
            limiter = self._requests
            limiter.max_rate = rps * period
            limiter.time_period = period
            limiter._rate_per_sec = rps

    # -- RateBudget ---------------------------------------------------------------------------

    async def acquire(self, tokens: int) -> None:
        while True:
            wait = self._paused_until - self._clock()
            if wait <= 0:
                break
            await anyio.sleep(wait)
        if self._requests is not None:
            await self._requests.acquire()
        if self._tokens is not None:
            await self._tokens.acquire(tokens)

    async def acquire_now(self, tokens: int) -> bool:
        """One request of ``tokens`` if the buckets hold it now; never waits (False: they do
        not, and nothing was taken). For handing out what is there in one go (``_shared``)."""
        if self._paused_until > self._clock():
            return False
        if self._requests is not None and not self._requests.has_capacity():
            return False
        if self._tokens is not None and not self._tokens.try_take(tokens):
            return False
        if self._requests is not None:
            await self._requests.acquire()  # it has the capacity: this does not wait
        return True

    def settle(self, reserved: int, used: int) -> None:
        if self._tokens is not None and reserved != used:
            self._tokens.give_back(reserved - used)

    def observe(self, info: RateLimitInfo) -> None:
        if info.limit_requests:
            # Providers state per-minute limits: never go faster than the provider allows, from
            # the first answer on (a 429 would only find the same limit, one storm later).
            limit_rps = info.limit_requests / 60
            if limit_rps != self._observed_limit_rps:
                self._observed_limit_rps = limit_rps
                if self._rps is None or self._rps > limit_rps:
                    self._set_request_rate(limit_rps)
        if info.limit_tokens:
            limit_tps = info.limit_tokens / 60
            if self._tokens is None:
                self._tokens = TokenBucket(
                    limit_tps, max(limit_tps * self._burst_s, 1.0), clock=self._clock
                )
            elif self._tokens.rate > limit_tps:
                self._tokens.retune(limit_tps, max(limit_tps * self._burst_s, 1.0))
        if self._tokens is not None and info.remaining_tokens is not None:
            self._tokens.cap_level(info.remaining_tokens)
        if info.remaining_requests == 0 and info.reset_requests_s:
            # Out of requests: wait for one request's worth of refill, at most the full reset.
            per_request = info.reset_requests_s
            if info.limit_requests:
                per_request = min(per_request, 60 / info.limit_requests)
            self._pause(per_request)
        if info.remaining_tokens == 0 and info.reset_tokens_s:
            self._pause(min(info.reset_tokens_s, 60.0))

    def penalize(self, retry_after: float | None) -> None:
        self.rate_limited += 1
        self._pause(min(retry_after, 120.0) if retry_after else 0.25)
        now = self._clock()
        if now - self._last_cut < 1.0:
            return  # one cut per second: a burst of 429s answers one overshoot
        self._last_cut = now
        current = self._rps or self._observed_limit_rps
        if current is None:
            return  # nothing known to cut from; the pause alone must do
        self._set_request_rate(max(current * 0.7, 0.1))

    def reward(self) -> None:
        if self._rps is None:
            return
        ceiling = _lowest(self._configured_rps, self._observed_limit_rps)
        if ceiling is None or self._rps >= ceiling:
            return
        if self._clock() - self._last_cut < 2.0:
            return
        # Additive increase: back to the ceiling in roughly 50 clean seconds at full speed.
        self._set_request_rate(min(ceiling, self._rps + ceiling / (50 * max(self._rps, 1.0))))

    def pause(self, seconds: float) -> None:
        self._pause(seconds)

    def _pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)


def _lowest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)
