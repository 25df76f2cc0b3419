"""A run's budget: how many requests may be in flight, how fast they may go, what they may cost.

One ``RunBudget`` holds every limit of a run, so that the executors hold none of their own:

- the concurrency cap (requests in flight at most);
- the request and token rates (a ``RateBudget``: ``LocalRateBudget`` by default);
- the US dollar budget (``budget_usd``): what was spent plus the worst case of what is in flight
  never passes it.

An executor asks for a ``Lease`` before it sends a row's request and gives it back when the row
is finished::

    lease = await budget.acquire(tokens=request.est_total_tokens, worst_usd=worst)
    if lease is None:                  # the USD budget cannot take this row: stop launching
        ...
    try:
        reply = await provider.send(request)      # (``await lease.retry()`` before another try)
        lease.settle(reply.usage.total_tokens)    # the token charge, corrected
    finally:
        lease.release(cost_usd)                   # the slot and the worst case, given back

A lease holds one concurrency slot and the row's worst-case cost until it is released; each
attempt is charged to the rate buckets (``acquire`` charges the first, ``retry`` each further
one). Because the policy lives here and not in a runner, one budget can be shared by many
workers without each spending the whole of it.
"""

from __future__ import annotations

import anyio

from ..records import RateLimitInfo
from ._rate import RateBudget

__all__ = ["Lease", "RunBudget"]


class Lease:
    """What one row holds of a ``RunBudget`` while it is being sent. See the module docstring."""

    __slots__ = ("_budget", "_released", "tokens", "worst_usd")

    def __init__(self, budget: RunBudget, tokens: int, worst_usd: float) -> None:
        self._budget = budget
        self.tokens = tokens
        self.worst_usd = worst_usd
        self._released = False

    async def retry(self) -> None:
        """Wait until another attempt of the same request may be sent, and charge it."""
        await self._budget.rate.acquire(self.tokens)

    def settle(self, used_tokens: int) -> None:
        """The last attempt was answered with ``used_tokens``: correct its token charge."""
        self._budget.rate.settle(self.tokens, used_tokens)

    def unanswered(self) -> None:
        """The last attempt got no answer (an error): it used no tokens."""
        self._budget.rate.settle(self.tokens, 0)

    def grow(self, tokens: int, worst_usd: float) -> bool:
        """Take on a follow-up request (``tokens`` estimated, ``worst_usd`` more at most) if the
        USD budget allows it; False (and nothing changed) if it does not."""
        budget = self._budget
        if not budget.allows(worst_usd):
            return False
        budget.in_flight_usd += worst_usd
        self.worst_usd += worst_usd
        self.tokens = tokens
        return True

    def release(self, cost_usd: float | None = None) -> None:
        """The row is finished: give back the slot and the worst case; ``cost_usd`` is what it
        really cost (``None``: nothing, or an unknown price). Safe to call twice."""
        if self._released:
            return
        self._released = True
        budget = self._budget
        budget.in_flight_usd -= self.worst_usd
        if cost_usd:
            budget.spent_usd += cost_usd
        budget.slots.release()


class RunBudget:
    """Every limit of one run: concurrency, request and token rates, US dollars.

    ``spent_usd`` starts at what earlier parts of the run already cost (a resumed run).
    """

    def __init__(
        self,
        *,
        rate: RateBudget,
        concurrency: int,
        budget_usd: float | None = None,
        spent_usd: float = 0.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.rate = rate
        self.concurrency = concurrency
        # fast_acquire: an uncontended slot is taken without a trip through the event loop.
        self.slots = anyio.Semaphore(concurrency, fast_acquire=True)
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd
        self.in_flight_usd = 0.0

    def allows(self, worst_usd: float) -> bool:
        """Whether ``worst_usd`` more in flight keeps the run within its USD budget."""
        if self.budget_usd is None:
            return True
        return self.spent_usd + self.in_flight_usd + worst_usd <= self.budget_usd

    async def acquire(self, *, tokens: int, worst_usd: float = 0.0) -> Lease | None:
        """A slot, the row's worst case and its first attempt's rate; None when the USD budget
        cannot take the row (then nothing is held)."""
        try:
            self.slots.acquire_nowait()  # a free slot: no checkpoint, no trip through the loop
        except anyio.WouldBlock:
            await self.slots.acquire()
        if not self.allows(worst_usd) and not await self.widen(worst_usd):
            self.slots.release()
            return None
        self.in_flight_usd += worst_usd
        lease = Lease(self, tokens, worst_usd)
        try:
            await self.rate.acquire(tokens)
        except BaseException:
            lease.release()
            raise
        return lease

    async def widen(self, worst_usd: float) -> bool:
        """The USD budget cannot take ``worst_usd`` more: try to make room. A run's own budget
        cannot (False); a worker's share of a job's budget asks the job for more dollars
        (``ShardBudget``)."""
        return False

    # -- what providers say, passed on to the rate buckets -----------------------------------

    def observe(self, info: RateLimitInfo) -> None:
        self.rate.observe(info)

    def penalize(self, retry_after: float | None) -> None:
        self.rate.penalize(retry_after)

    def reward(self) -> None:
        self.rate.reward()

    def pause(self, seconds: float) -> None:
        self.rate.pause(seconds)
