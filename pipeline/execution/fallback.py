"""``[request.fallback]``: a second model for the rows the primary fails, and a switch that stops
asking a primary that keeps failing.

::

    row ──▶ primary (retries as usual) ──failed with an error in ``when``──▶ fallback ──▶ sink
     └──── the switch is on "fallback" (or the row is too long for the primary) ──┘

A row goes to the fallback when its primary attempts end in one of the error types ``when``
names (``overloaded``, ``timeout``, ``server_error`` by default), or at once when the switch
has gone over, or when its prompt is longer than the primary's context and ``when`` has
``context_exceeded``. It is rendered for the fallback's provider (``Renderer.retarget``), keeps
the job's request key and version, and is recorded once, with the fallback's provider and model
and ``fallback_from`` = the primary model. Its ``attempts``, tokens and cost add up the primary's
and the fallback's: an error is not paid, so no row is paid twice.

The switch (``Breaker``) watches every request the primary answers or fails::

    primary ──20 requests in a row fail with a `when` error, or at least half of the requests
              of the last 30 s (20 or more of them)──▶ fallback
    fallback ──cooldown_s later, the next row is a probe, sent to the primary──▶ probing
    probing ──an answer──▶ primary          probing ──a `when` error──▶ fallback (again cooldown_s)

While it is on "fallback", new rows go straight to the fallback, and rows waiting to retry on
the primary go there too instead of retrying. Each switch is logged (``fallback_switched``),
kept in ``RunStats.fallback_switches`` and so in the manifest and the summary. Errors outside
``when`` (a 400, say) neither trip the switch nor send a row to the fallback.

The fallback has its own provider (and key), its own rate budget (the job's ``[limits]``) and
its own price; the job's USD budget covers both (the row's lease grows by the fallback's worst
case before it is sent).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

import structlog

from ..errors import FatalProviderError, ProviderError
from ..job import FallbackSpec
from ..job.pricing import Price, cost_usd
from ..limits import Lease, RunBudget
from ..records import Request, RowResult, Usage
from ..render import Renderer

__all__ = ["Breaker", "Fallback", "Switch"]

log = structlog.get_logger("pipeline.fallback")

CONSECUTIVE = 20
WINDOW_S = 30.0
WINDOW_MIN = 20
WINDOW_SHARE = 0.5

Route = Literal["primary", "fallback"]


@dataclass(frozen=True, slots=True)
class Switch:
    """The switch went ``to`` one side at ``at`` (unix seconds), because of ``why``."""

    at: float
    to: Route
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "to": self.to, "why": self.why}


class Breaker:
    """Which model new rows go to (see the module docstring). Synchronous; the clocks are
    passed in (``clock`` for durations, ``wall`` for the times a switch is stamped with)."""

    def __init__(
        self,
        *,
        cooldown_s: float,
        consecutive: int = CONSECUTIVE,
        window_s: float = WINDOW_S,
        window_min: int = WINDOW_MIN,
        share: float = WINDOW_SHARE,
        on_switch: Callable[[Switch], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cooldown_s = cooldown_s
        self.consecutive = consecutive
        self.window_s = window_s
        self.window_min = window_min
        self.share = share
        self._on_switch = on_switch
        self._clock = clock
        self._wall = wall
        self.state: Literal["primary", "fallback", "probing"] = "primary"
        self.switches: list[Switch] = []
        self._failures_in_a_row = 0
        self._until = 0.0  # while on "fallback": when to probe
        self._probe_at = 0.0  # while "probing": when the probe was sent
        # Requests of the last window_s, in one-second buckets: [second, answered, failed].
        self._buckets: deque[list[int]] = deque()

    def route(self) -> Route:
        """Where the next row goes. On "fallback" once ``cooldown_s`` has passed, this one row
        goes to the primary as a probe; if the probe says nothing for ``cooldown_s`` (stopped,
        or it failed in a way that does not count), another one goes."""
        if self.state == "primary":
            return "primary"
        now = self._clock()
        if self.state == "fallback" and now >= self._until:
            self.state = "probing"
            self._probe_at = now
            return "primary"
        if self.state == "probing" and now - self._probe_at >= self.cooldown_s:
            self._probe_at = now
            return "primary"
        return "fallback"

    @property
    def tripped(self) -> bool:
        """Whether the primary is being left alone (rows waiting to retry on it move over)."""
        return self.state == "fallback"

    def answered(self) -> None:
        """The primary answered a request."""
        self._failures_in_a_row = 0
        self._count(failed=False)
        if self.state == "probing":
            self._switch("primary", "the primary answered a probe")

    def failed(self, error_type: str) -> None:
        """The primary failed a request with an error in ``when``."""
        self._failures_in_a_row += 1
        answered, failed = self._count(failed=True)
        if self.state == "probing":
            self._until = self._clock() + self.cooldown_s
            self._switch("fallback", f"a probe of the primary failed: {error_type}")
        elif self.state == "primary":
            total = answered + failed
            if self._failures_in_a_row >= self.consecutive:
                why = f"{self._failures_in_a_row} requests in a row failed: {error_type}"
            elif total >= self.window_min and failed >= self.share * total:
                why = (
                    f"{failed} of {total} requests in the last {self.window_s:g} s failed, "
                    f"the last with {error_type}"
                )
            else:
                return
            self._until = self._clock() + self.cooldown_s
            self._switch("fallback", why)

    def _count(self, *, failed: bool) -> tuple[int, int]:
        """Count one request; the window's (answered, failed) afterwards."""
        now = self._clock()
        second = int(now)
        buckets = self._buckets
        while buckets and buckets[0][0] <= now - self.window_s:
            buckets.popleft()
        if not buckets or buckets[-1][0] != second:
            buckets.append([second, 0, 0])
        buckets[-1][2 if failed else 1] += 1
        return sum(b[1] for b in buckets), sum(b[2] for b in buckets)

    def _switch(self, to: Route, why: str) -> None:
        self.state = to
        self._failures_in_a_row = 0
        if to == "primary":
            self._buckets.clear()
        switch = Switch(self._wall(), to, why)
        self.switches.append(switch)
        if self._on_switch is not None:
            self._on_switch(switch)


class Fallback:
    """Sends rows to the fallback model for an ``OnlineExecutor`` (its ``fallback=``).

    ``executor`` is a second ``OnlineExecutor`` on the fallback's provider (its results name
    the fallback's provider and model and ``fallback_from``), ``budget`` its rate budget (no
    USD budget of its own: the primary row's lease carries it, when ``budget_usd``),
    ``renderer`` the fallback's renderer and ``primary`` the job's.
    """

    def __init__(
        self,
        *,
        spec: FallbackSpec,
        executor: Any,  # OnlineExecutor (online.py imports this module)
        budget: RunBudget,
        renderer: Renderer,
        primary: Renderer,
        primary_window: int | None,
        price: Price | None,
        breaker: Breaker,
        budget_usd: bool = False,
    ) -> None:
        self.spec = spec
        self.budget_usd = budget_usd
        self.when = frozenset(spec.when)
        self.executor = executor
        self.budget = budget
        self.renderer = renderer
        self.primary = primary
        self.primary_window = primary_window
        self.price = price
        self.breaker = breaker
        self.fatal: FatalProviderError | None = None
        self.over_budget = False
        self.rows = 0

    # -- what the primary executor asks ----------------------------------------------------

    def first(self, request: Request) -> bool:
        """Whether ``request`` goes to the fallback without trying the primary: the switch is
        over, or it is longer than the primary's context (``context_exceeded`` in ``when``)."""
        if (
            self.primary_window
            and request.est_total_tokens > self.primary_window
            and "context_exceeded" in self.when
        ):
            return True
        return self.breaker.route() == "fallback"

    def overflow(self, request: Request) -> bool:
        """For the planner: whether a request too long for the primary fits the fallback."""
        if "context_exceeded" not in self.when:
            return False
        again = self.renderer.retarget(request, self.primary)
        return again.est_total_tokens <= self.spec.context_tokens

    def takes(self, error: ProviderError) -> bool:
        """Whether a row whose primary attempts ended in ``error`` goes to the fallback."""
        return error.error_type in self.when

    def answered(self) -> None:
        self.breaker.answered()

    def failed(self, error: ProviderError) -> None:
        if error.error_type in self.when:
            self.breaker.failed(error.error_type)

    # -- sending ----------------------------------------------------------------------------

    async def send(
        self,
        request: Request,
        lease: Lease,
        *,
        attempts: int,
        paid: Usage,
        paid_cost: float | None,
    ) -> RowResult | None:
        """The row's result from the fallback, counting the primary's ``attempts`` and what
        was ``paid`` on it; None when the row is left unfinished (stopping, a fatal error of
        the fallback: ``fatal``, or the USD budget: ``over_budget``)."""
        again = self.renderer.retarget(request, self.primary)
        worst = 0.0
        if self.budget_usd:
            usage = Usage(input_tokens=again.est_input_tokens, output_tokens=again.max_tokens)
            worst = cost_usd(self.price, usage) or 0.0
        if not lease.grow(lease.tokens, worst):
            self.over_budget = True
            return None
        own = await self.budget.acquire(tokens=again.est_total_tokens)
        assert own is not None  # no USD budget of its own
        result: RowResult | None = None
        try:
            result = await self.executor.process(again, own)
        finally:
            own.release(None if result is None else result.cost_usd)
        if result is None:
            self.fatal = self.executor.fatal
            return None
        self.rows += 1
        self.executor.stats.rows_fallback += 1
        if attempts or paid.total_tokens:
            result = replace(
                result,
                attempts=result.attempts + attempts,
                input_tokens=result.input_tokens + paid.input_tokens,
                output_tokens=result.output_tokens + paid.output_tokens,
                cache_read_tokens=result.cache_read_tokens + paid.cache_read_tokens,
                cache_write_tokens=result.cache_write_tokens + paid.cache_write_tokens,
                reasoning_tokens=result.reasoning_tokens + paid.reasoning_tokens,
                cost_usd=_add(result.cost_usd, paid_cost),
            )
        return result


def _add(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else a + b


def log_switch(switch: Switch, *, primary: str, fallback: str) -> None:
    """Log one switch (``fallback_switched``)."""
    log.warning(
        "fallback_switched",
        to=switch.to,
        model=fallback if switch.to == "fallback" else primary,
        why=switch.why,
    )
