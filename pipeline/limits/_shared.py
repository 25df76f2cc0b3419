"""One budget for a job whose requests several workers send: rates, a 429's pause, US dollars.

::

    BudgetService (one per job; in a Ray actor)          each worker (a process of its own)
      one LocalRateBudget: rpm/tpm buckets,   ◀── grant(report, n, tokens) ──  SharedRateBudget
      AIMD, pauses, the provider's limits     ──▶ n requests, their tokens       (a RateBudget)
      dollars: what each worker was allotted  ◀── allot(usd) ───────────────  ShardBudget
                                              ◀── penalize(retry_after) ────  (a 429, at once)

**Rates.** The service holds the same ``LocalRateBudget`` a one-process run uses, so the policy is
the same: shallow buckets, the provider's headers capping the rates, a 429 pausing everybody and
cutting the rate, AIMD growing it back. Workers never ask per request: a worker's
``SharedRateBudget`` keeps a small stock of credit (``block_s`` of its share of the rate, a tenth
of a second) and refills it from one task (``run``) with one remote call per block, which also
carries what the worker learnt since the last one (``Report``: token corrections, successes,
the latest rate-limit headers). A 429 is sent at once (``penalize``), drops the worker's stock and
pauses it; the others hear of the pause with their next grant, a block later at most. Credit
granted is never given back: a worker that dies loses its stock, and a live one only ever holds
one block, so the job never goes faster than the service's buckets let it.

**Dollars.** With ``budget_usd``, each worker's ``ShardBudget`` is a ``RunBudget`` whose own USD
budget is what the service allotted it; when a row's worst case does not fit, it asks for more
(``widen``): a block of twice its concurrency's worst case, or less when the job's budget has
less left. The service counts every dollar allotted as held (spent, in flight, or reserve), so
the workers together never hold more than the job's budget. A worker that finishes hands back
what it did not spend (``done``); a worker that dies hands back nothing (``lost``): what it held
may have been paid, so it stays counted.

Nothing here knows Ray: ``BudgetLink`` is the seam (a Ray actor handle behind it, in
``pipeline.execution.cluster``; the service itself in tests).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from ..records import RateLimitInfo
from ._budget import RunBudget
from ._rate import LocalRateBudget

__all__ = [
    "BLOCK_S",
    "BudgetLink",
    "BudgetService",
    "Grant",
    "Report",
    "ShardBudget",
    "SharedRateBudget",
]

BLOCK_S = 0.1  # a worker holds at most this many seconds of its share of the rate
SYNC_S = 0.25  # a worker that needs nothing still reports this often
GRANT_WAIT_S = 0.5  # a grant waits this long at most for credit, then answers with what it has


@dataclass(frozen=True, slots=True)
class Report:
    """What a worker learnt since its last grant."""

    give_back_tokens: int = 0  # token estimates minus tokens used (negative: used more)
    rewards: int = 0  # requests answered cleanly
    info: RateLimitInfo | None = None  # the latest rate-limit headers


@dataclass(frozen=True, slots=True)
class Grant:
    """Credit for ``requests`` requests and ``tokens`` tokens, and the job's rates now."""

    requests: int = 0
    tokens: int = 0
    request_rate: float | None = None  # requests/s for the whole job (None: no limit)
    token_rate: float | None = None  # tokens/s for the whole job (None: no limit)
    pause_s: float = 0.0  # every worker waits this long before sending


class BudgetLink(Protocol):
    """How a worker reaches the job's ``BudgetService``."""

    async def grant(self, worker: str, report: Report, requests: int, tokens: int) -> Grant: ...

    def penalize(self, worker: str, retry_after: float | None) -> None:
        """A 429: sent without waiting for an answer."""

    def pause(self, seconds: float) -> None:
        """Nothing may go out for ``seconds`` (the provider cannot be reached)."""

    async def allot(self, worker: str, usd: float) -> float:
        """Up to ``usd`` more US dollars for ``worker`` to hold; what was allotted."""
        ...

    async def done(self, worker: str, spent_usd: float) -> None:
        """``worker`` finished, having spent ``spent_usd``: the rest of its dollars go back."""


class BudgetService:
    """The budget of one job, shared by its workers (see the module docstring)."""

    def __init__(
        self,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        budget_usd: float | None = None,
        spent_usd: float = 0.0,
        grant_wait_s: float = GRANT_WAIT_S,
        fill_s: float = BLOCK_S / 2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.fill_s = fill_s
        self.rate = LocalRateBudget(
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            clock=clock,
        )
        self.budget_usd = budget_usd
        self.spent_before = spent_usd
        self.grant_wait_s = grant_wait_s
        self._allotted: dict[str, float] = {}
        self._lost_usd = 0.0
        self.grants = 0
        self.lost_workers: list[str] = []
        self._turn: anyio.Lock | None = None  # made in the service's own event loop

    async def grant(self, worker: str, report: Report, requests: int, tokens: int) -> Grant:
        """Take ``report``, then up to ``requests`` requests' credit (``tokens`` in all): the
        first as soon as the buckets allow (``grant_wait_s`` at most: then none), more as the
        buckets fill, for ``fill_s`` at most (half a block: the worker asks again when half
        its block is left, so its stock lasts while the next grant gathers)."""
        self.grants += 1
        self._take(report)
        granted = 0
        each = math.ceil(tokens / requests) if requests > 0 else 0
        if self.rate.limited and requests > 0:
            # One grant gathers at a time, in the order they came (anyio's lock is first come,
            # first served): gathering side by side, the worker that happened to wake first
            # after each refill took most of the credit and the other's shard fell behind.
            if self._turn is None:
                self._turn = anyio.Lock()
            async with self._turn:
                granted = await self._gather(requests, each)
        return Grant(
            requests=granted,
            tokens=granted * each,
            request_rate=self.rate.request_rate,
            token_rate=self.rate.token_rate,
            pause_s=self.rate.paused_for(),
        )

    async def _gather(self, requests: int, each: int) -> int:
        # Wait for the first (a pause, an empty bucket); then gather more for ``fill_s`` at most,
        # taking only what the buckets hold (nothing is half-taken on a timeout).
        granted = 0
        with anyio.move_on_after(self.grant_wait_s):
            await self.rate.acquire(each)
            granted = 1
        deadline = self._clock() + self.fill_s
        while granted and granted < requests:
            if await self.rate.acquire_now(each):
                granted += 1
                continue
            left = deadline - self._clock()
            if left <= 0:
                break
            await anyio.sleep(min(left, 0.005))
        return granted

    def _take(self, report: Report) -> None:
        give_back = report.give_back_tokens
        if give_back:
            self.rate.settle(max(give_back, 0), max(-give_back, 0))
        for _ in range(report.rewards):
            self.rate.reward()
        if report.info is not None:
            self.rate.observe(report.info)

    def penalize(self, worker: str, retry_after: float | None) -> None:
        self.rate.penalize(retry_after)

    def pause(self, seconds: float) -> None:
        self.rate.pause(seconds)

    # -- dollars -------------------------------------------------------------------------------

    @property
    def held_usd(self) -> float:
        """Dollars counted against the budget: spent before this process, allotted to the
        workers (spent, in flight or in reserve) and held by workers that died."""
        return self.spent_before + self._lost_usd + sum(self._allotted.values())

    def allot(self, worker: str, usd: float) -> float:
        if self.budget_usd is None:
            return usd
        got = max(0.0, min(usd, self.budget_usd - self.held_usd))
        self._allotted[worker] = self._allotted.get(worker, 0.0) + got
        return got

    def done(self, worker: str, spent_usd: float) -> None:
        if worker in self._allotted:
            self._allotted[worker] = spent_usd

    def lost(self, worker: str) -> None:
        """``worker`` died: what it held stays counted (it may have been paid)."""
        self.lost_workers.append(worker)
        self._lost_usd += self._allotted.pop(worker, 0.0)

    def state(self) -> dict[str, Any]:
        """For the run's log: the job's rates now, grants made, dollars held, 429s."""
        return {
            "request_rate": self.rate.request_rate,
            "token_rate": self.rate.token_rate,
            "grants": self.grants,
            "rate_limited": self.rate.rate_limited,
            "held_usd": round(self.held_usd, 6),
            "lost_usd": round(self._lost_usd, 6),
            "lost_workers": list(self.lost_workers),
        }


class SharedRateBudget:
    """A worker's ``RateBudget``: spends a stock of credit drawn in blocks from the job's
    ``BudgetService`` (see the module docstring). ``run()`` is the task that refills it; it
    must run while anything acquires. ``share``: this worker's part of the job's rate."""

    def __init__(
        self,
        link: BudgetLink,
        *,
        worker: str,
        share: float,
        block_s: float = BLOCK_S,
        sync_s: float = SYNC_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._link = link
        self.worker = worker
        self._share = share
        self._block_s = block_s
        self._sync_s = sync_s
        self._clock = clock
        self._known = False  # no grant yet: the job's rates are not known here
        self._request_rate: float | None = None
        self._token_rate: float | None = None
        self._requests = 0
        self._tokens = 0
        self._paused_until = 0.0
        self._give_back = 0
        self._rewards = 0
        self._info: RateLimitInfo | None = None
        self._need_tokens = 0
        self._avg_tokens = 0.0
        self._want = anyio.Event()  # a sender waits for credit, or the stock runs low
        self._granted = anyio.Event()  # replaced after every grant
        self.rate_limited = 0
        self.grants = 0

    @property
    def request_rate(self) -> float | None:
        return self._request_rate

    def _limited(self) -> bool:
        return self._request_rate is not None or self._token_rate is not None

    # -- RateBudget ------------------------------------------------------------------------------

    async def acquire(self, tokens: int) -> None:
        self._avg_tokens = tokens if not self._avg_tokens else 0.9 * self._avg_tokens + 0.1 * tokens
        while True:
            wait = self._paused_until - self._clock()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            if self._known and self._take(tokens):
                return
            self._need_tokens = max(self._need_tokens, tokens)
            self._want.set()
            await self._granted.wait()

    def _take(self, tokens: int) -> bool:
        if not self._limited():
            return True
        if self._request_rate is not None and self._requests < 1:
            return False
        if self._token_rate is not None and self._tokens < tokens:
            return False
        self._requests -= 1
        if self._token_rate is not None:
            self._tokens -= tokens
        if self._requests < self._block_requests() / 2:
            self._want.set()  # refill before the stock is gone
        return True

    def settle(self, reserved: int, used: int) -> None:
        self._give_back += reserved - used

    def observe(self, info: RateLimitInfo) -> None:
        self._info = info

    def penalize(self, retry_after: float | None) -> None:
        self.rate_limited += 1
        self._requests = self._tokens = 0  # the whole job waits: hold nothing meanwhile
        self._pause(min(retry_after, 120.0) if retry_after else 0.25)
        self._link.penalize(self.worker, retry_after)

    def reward(self) -> None:
        self._rewards += 1

    def pause(self, seconds: float) -> None:
        self._pause(seconds)
        self._link.pause(seconds)

    def _pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    # -- the refill task ---------------------------------------------------------------------

    async def run(self) -> None:
        """Refill the stock when it runs low, and report at least every ``sync_s``."""
        while True:
            with anyio.move_on_after(self._sync_s):
                await self._want.wait()
            self._want = anyio.Event()
            requests, tokens = self._wanted()
            report = Report(self._give_back, self._rewards, self._info)
            self._give_back = self._rewards = 0
            self._info = None
            grant = await self._link.grant(self.worker, report, requests, tokens)
            self._apply(grant)

    def _block_requests(self) -> int:
        """Requests in one block: ``block_s`` of this worker's share of the job's rate."""
        if self._request_rate is not None:
            per_s = self._request_rate
        elif self._token_rate is not None:
            per_s = self._token_rate / max(self._avg_tokens, 1.0)
        else:
            return 0
        return max(1, math.ceil(per_s * self._share * self._block_s))

    def _wanted(self) -> tuple[int, int]:
        if not self._known or not self._limited():
            return 0, 0
        requests = max(1, self._block_requests() - self._requests)
        each = max(self._avg_tokens, 1.0)
        tokens = max(math.ceil(each * requests), self._need_tokens - self._tokens)
        self._need_tokens = 0
        return requests, tokens

    def _apply(self, grant: Grant) -> None:
        self.grants += 1
        self._known = True
        self._request_rate = grant.request_rate
        self._token_rate = grant.token_rate
        self._requests += grant.requests
        self._tokens += grant.tokens
        if grant.pause_s > 0:
            self._pause(grant.pause_s)
        granted, self._granted = self._granted, anyio.Event()
        granted.set()


class ShardBudget(RunBudget):
    """A worker's ``RunBudget``: its share of the job's concurrency, a ``SharedRateBudget``,
    and (with ``dollars``) the US dollars the job's ``BudgetService`` allotted it."""

    def __init__(
        self,
        *,
        rate: SharedRateBudget,
        concurrency: int,
        link: BudgetLink,
        dollars: bool,
    ) -> None:
        super().__init__(rate=rate, concurrency=concurrency, budget_usd=0.0 if dollars else None)
        self._link = link
        self.worker = rate.worker
        self._widening = anyio.Lock()

    async def widen(self, worst_usd: float) -> bool:
        async with self._widening:
            if self.allows(worst_usd):
                return True  # another sender made room meanwhile
            assert self.budget_usd is not None
            short = self.spent_usd + self.in_flight_usd + worst_usd - self.budget_usd
            want = max(short, worst_usd * self.concurrency * 2)
            self.budget_usd += await self._link.allot(self.worker, want)
            return self.allows(worst_usd)

    async def done(self) -> None:
        """Tell the job what this worker spent; what it did not goes back."""
        if self.budget_usd is not None:
            await self._link.done(self.worker, self.spent_usd)
