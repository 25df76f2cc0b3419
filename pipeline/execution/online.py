"""The online executor: planned requests in, one outcome per row out, under the run's budget.

::

    requests ──▶ N workers: lease (slot, rate, worst-case $) ─▶ send ─▶ retry ─▶ outcome ─▶ sink

It takes the requests to send, a ``RunBudget``, a provider and a ``ResultSink``, and nothing
else: it never reads the input, the run ledger or a manifest.

Retries: transient errors (429, 5xx, 529, timeouts, dropped connections, malformed bodies) are
tried again with exponential backoff and full jitter, honouring ``retry-after``, up to
``max_attempts``; other 4xx fail the row; a fatal error (bad key, no quota, unknown model or
URL) cancels the run at once. A 429 slows the whole run (``RunBudget.penalize``).

A provider that cannot be reached at all (connection refused, unknown host, connect timeout) is
the run's problem, not the row's (``Reachability``): while nothing has ever been answered, a few
seconds of nothing but failed connections end the run with one message naming the URL, and no
row is recorded for it; once answers have come back, an outage pauses the whole run, backing off,
without using up any row's attempts, and ends it only if it lasts ``outage_limit_s``.

A job with an answer schema has every answer checked (``pipeline.extract``): an invalid one gets
up to ``invalid_retries`` follow-up turns saying what was wrong, then the row is ``invalid``; a
truncated one is ``invalid`` at once. When the job's stable prompt prefix is long enough to be
cached, the first request is sent alone, so that the others read the provider's prompt cache
instead of all writing it at the same time.

With ``fallback`` (``[request.fallback]``, see ``fallback.py``), a row whose attempts end in an
error the fallback takes, or that arrives while its switch is over, is sent to the fallback
model instead of being recorded ``failed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from ..errors import (
    FatalProviderError,
    InputError,
    ProviderError,
    RateLimitError,
    UnreachableError,
)
from ..extract import Extractor, Verdict, followup_prompt
from ..job.pricing import Price, cost_usd
from ..limits import Lease, RunBudget
from ..limits.retry import backoff_s
from ..providers import Provider
from ..records import Request, ResultBuilder, RowResult, Status, Usage
from ..render import MESSAGE_OVERHEAD_TOKENS, estimate_tokens
from .fallback import Fallback
from .sink import Outcomes
from .stats import RunStats

__all__ = ["OnlineExecutor", "Reachability"]

log = structlog.get_logger("pipeline.online")


class Reachability:
    """Whether the provider can be reached at all, for the whole run.

    ``failed()`` is told of every connection that could not be made and says how long the run
    should pause before trying again, or raises ``FatalProviderError`` when it is time to give
    up: ``first_window_s`` of nothing but failures before any answer (a wrong host or port, no
    network), or ``outage_limit_s`` of them later. ``answered()`` is told of every answer, an
    error answer included: whatever came back over a connection proves the way is open.
    """

    def __init__(
        self,
        url: str,
        *,
        first_window_s: float = 2.0,
        first_failures: int = 3,
        outage_limit_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.first_window_s = first_window_s
        self.first_failures = first_failures
        self.outage_limit_s = outage_limit_s
        self._clock = clock
        self.ever_answered = False
        self.down_since: float | None = None
        self._failures = 0

    def answered(self) -> None:
        if self.down_since is not None:
            log.warning(
                "provider_reachable_again",
                url=self.url,
                after_s=round(self._clock() - self.down_since, 1),
            )
        self.ever_answered = True
        self.down_since = None
        self._failures = 0

    def failed(self, error: UnreachableError) -> float:
        now = self._clock()
        if self.down_since is None:
            self.down_since = now
            log.warning("provider_unreachable", url=self.url, error=str(error))
        self._failures += 1
        down = now - self.down_since
        if not self.ever_answered:
            if down >= self.first_window_s and self._failures >= self.first_failures:
                raise FatalProviderError(
                    f"cannot reach the provider at {self.url}: {error}; check "
                    "[request].base_url (or --base-url, OPENAI_BASE_URL / ANTHROPIC_BASE_URL) "
                    "and the network",
                    error_type="unreachable",
                ) from error
        elif down >= self.outage_limit_s:
            raise FatalProviderError(
                f"the provider at {self.url} could not be reached for {down / 60:.0f} minutes "
                f"({error}); the rows not done yet are left for 'pipeline resume'",
                error_type="unreachable",
            ) from error
        # Back off with the length of the outage, not the number of failures: every worker
        # fails at once, and the run pauses as one; when a pause ends, the first request out
        # probes, and its failure pauses the others again.
        return min(0.25 + down / 2, 30.0)


class OnlineExecutor:
    """Sends planned requests, ``concurrency`` at a time, and puts every outcome in the sink."""

    def __init__(
        self,
        *,
        provider: Provider,
        budget: RunBudget,
        sink: Outcomes,
        results: ResultBuilder,
        stats: RunStats,
        price: Price | None,
        max_attempts: int,
        url: str,
        extractor: Extractor | None = None,
        invalid_retries: int = 0,
        context_window: int | None = None,
        warm_cache: bool = False,
        reachability: Reachability | None = None,
        on_stop: Callable[[str], None] | None = None,
        fallback: Fallback | None = None,
    ) -> None:
        self.fallback = fallback
        self.provider = provider
        self.budget = budget
        self.sink = sink
        self.results = results
        self.stats = stats
        self.price = price
        self.max_attempts = max_attempts
        self.extractor = extractor
        self.invalid_retries = invalid_retries
        self.context_window = context_window
        self.reachability = reachability or Reachability(url)
        self._on_stop = on_stop
        # Set once the first request of a run whose prefix can be cached has been answered.
        self._warm: anyio.Event | None = anyio.Event() if warm_cache else None
        self._warm_leader = False
        self.stopping = False
        self.fatal: FatalProviderError | None = None
        self._scope: anyio.CancelScope | None = None
        self._log = log.bind(run_id=results.run_id, provider=results.provider)

    def stop(self) -> None:
        """Launch nothing more; requests in flight finish (or are cancelled by the caller)."""
        self.stopping = True

    async def run(self, work: MemoryObjectReceiveStream[Request]) -> None:
        """Work until ``work`` is exhausted, the run stops, or a fatal error cancels it.

        Workers are started as requests arrive, one a request, up to the concurrency cap:
        never more tasks than requests (a cap of 10,000 with five rows starts five). Each then
        takes its next request from ``work`` itself."""
        cap = self.budget.concurrency
        with anyio.CancelScope() as scope:
            self._scope = scope
            async with anyio.create_task_group() as tg, work:
                started = 0
                while started < cap and not self.stopping:
                    try:
                        request = await work.receive()
                    except anyio.EndOfStream:
                        break
                    started += 1
                    tg.start_soon(self._worker, request, work.clone())

    async def _worker(self, first: Request, work: MemoryObjectReceiveStream[Request]) -> None:
        async with work:
            request = first
            while await self._serve(request):
                # The next request without a trip through the event loop while the feed has
                # some waiting (a receive() that finds one still yields to the loop first).
                try:
                    request = work.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        request = await work.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return

    async def _serve(self, request: Request) -> bool:
        """One request, from its lease to its outcome in the sink; False: this worker stops
        (the run is stopping, over its budget, or failed)."""
        if self.stopping:
            return False  # not launched: the next run sends it
        lease = await self.budget.acquire(
            tokens=request.est_total_tokens, worst_usd=self._worst_cost(request)
        )
        if lease is None:
            self._request_stop("budget")
            return False
        result: RowResult | None = None
        try:
            if self._warm is None:
                result = await self._process(request, lease)
            else:
                result = await self._first_alone(request, lease)
        finally:
            lease.release(None if result is None else result.cost_usd)
        if result is None:
            return False
        await self.sink.put(result)
        return True

    def _request_stop(self, reason: str) -> None:
        self.stopping = True
        if self._on_stop is not None:
            self._on_stop(reason)

    def _worst_cost(self, request: Request) -> float:
        if self.budget.budget_usd is None:
            return 0.0
        usage = Usage(input_tokens=request.est_input_tokens, output_tokens=request.max_tokens)
        return cost_usd(self.price, usage) or 0.0

    async def _first_alone(self, request: Request, lease: Lease) -> RowResult | None:
        """Send the run's first request alone and hold the others until it is answered: it
        writes the prompt cache, and they read it (at a tenth of the price) instead of all
        writing it at once (at a premium)."""
        gate = self._warm
        assert gate is not None
        if self._warm_leader:
            await gate.wait()
            return await self._process(request, lease)
        self._warm_leader = True
        try:
            return await self._process(request, lease)
        finally:
            gate.set()
            self._warm = None

    async def process(self, request: Request, lease: Lease) -> RowResult | None:
        """One row under ``lease``, as a worker sends it (a fallback's executor is driven by
        the primary's workers through this)."""
        return await self._process(request, lease)

    async def _to_fallback(
        self, request: Request, lease: Lease, attempts: int, paid: Usage, paid_cost: float | None
    ) -> RowResult | None:
        fallback = self.fallback
        assert fallback is not None
        result = await fallback.send(
            request, lease, attempts=attempts, paid=paid, paid_cost=paid_cost
        )
        if result is None:
            if fallback.fatal is not None:
                self._on_fatal(fallback.fatal)
            elif fallback.over_budget:
                self._request_stop("budget")
        return result

    async def _process(self, request: Request, lease: Lease) -> RowResult | None:
        """Send one request until it succeeds, fails for good, or attempts run out; None when
        the row is left unfinished (the run is stopping or failed).

        With an answer schema, an invalid answer is followed up (``_followup``) and the usage
        and cost recorded for the row add up every answer paid for.
        """
        attempt = 0  # requests sent for the row
        tries = 0  # attempts of the current request; a follow-up starts again
        paid = _NO_USAGE  # answers already paid for (invalid ones that were followed up)
        paid_cost: float | None = None
        first = True
        fallback = self.fallback
        if fallback is not None and fallback.first(request):
            return await self._to_fallback(request, lease, 0, paid, paid_cost)
        while True:
            if not first:
                if fallback is not None and fallback.breaker.tripped:
                    return await self._to_fallback(request, lease, attempt, paid, paid_cost)
                await lease.retry()
            first = False
            attempt += 1
            tries += 1
            started = time.perf_counter()
            try:
                reply = await self.provider.send(request)
            except ProviderError as exc:
                error = exc
                if not isinstance(exc, UnreachableError):
                    self.stats.requests_sent += 1  # counted once it went out
            except InputError as exc:  # an attached file could not be read: nothing was sent
                lease.unanswered()
                return self.results.unanswered(
                    *_where(request),
                    Status.INPUT_ERROR,
                    exc.error_type,
                    str(exc),
                    attempts=attempt - 1,
                    usage=paid,
                    cost=paid_cost,
                )
            else:
                self.stats.requests_sent += 1
                latency_ms = (time.perf_counter() - started) * 1000
                usage = reply.usage
                lease.settle(usage.total_tokens)
                if reply.rate_limit is not None:
                    self.budget.observe(reply.rate_limit)
                self.budget.reward()
                self.reachability.answered()
                if fallback is not None:
                    fallback.answered()
                cost = cost_usd(self.price, usage)
                if attempt > 1:
                    usage = _add_usage(paid, usage)
                    cost = _add_cost(paid_cost, cost)
                if self.extractor is None:
                    return self.results.answered(
                        *_where(request),
                        reply,
                        attempts=attempt,
                        usage=usage,
                        cost=cost,
                        latency_ms=latency_ms,
                    )
                verdict = self.extractor.check(reply.text, reply.finish_reason)
                followup = None
                if not verdict.ok:
                    followup = self._followup(request, reply.text, verdict, lease)
                if followup is not None:
                    request, paid, paid_cost = followup, usage, cost
                    tries = 0
                    continue
                if not verdict.ok:
                    self._log.warning(
                        "row_invalid",
                        row_id=request.row_id,
                        error_type=verdict.error_type,
                        attempts=attempt,
                        error=verdict.error,
                    )
                return self.results.answered(
                    *_where(request),
                    reply,
                    attempts=attempt,
                    usage=usage,
                    cost=cost,
                    latency_ms=latency_ms,
                    status=Status.OK if verdict.ok else Status.INVALID,
                    error_type=verdict.error_type,
                    error=verdict.error,
                    output_json=verdict.value_json,
                )
            lease.unanswered()
            if not isinstance(error, UnreachableError):
                self.reachability.answered()  # an error, but from the other end of a connection
            if fallback is not None:
                fallback.failed(error)
            if error.fatal:
                self._on_fatal(error)
                return None
            if isinstance(error, UnreachableError):
                # Not the row's fault, and not sent: it costs the row no attempt.
                attempt -= 1
                tries -= 1
                try:
                    pause = self.reachability.failed(error)
                except FatalProviderError as fatal:
                    self._on_fatal(fatal)
                    return None
                self.budget.pause(pause)
                if self.stopping:
                    return None
                continue
            if isinstance(error, RateLimitError):
                self.stats.rate_limited += 1
                self.budget.penalize(error.retry_after)
            if not error.transient or tries >= self.max_attempts:
                if fallback is not None and fallback.takes(error):
                    return await self._to_fallback(request, lease, attempt, paid, paid_cost)
                self._log.warning(
                    "row_failed",
                    row_id=request.row_id,
                    error_type=error.error_type,
                    status_code=error.status_code,
                    attempts=attempt,
                    error=str(error),
                )
                return self.results.unanswered(
                    *_where(request),
                    Status.FAILED,
                    error.error_type,
                    str(error),
                    attempts=attempt,
                    usage=paid,
                    cost=paid_cost,
                )
            self.stats.retries += 1
            wait = backoff_s(attempt, retry_after=error.retry_after)
            self._log.info(
                "retrying",
                row_id=request.row_id,
                error_type=error.error_type,
                status_code=error.status_code,
                attempt=attempt,
                wait_s=round(wait, 3),
            )
            await anyio.sleep(wait)
            if self.stopping:
                return None  # not finished: left for the next run

    def _followup(
        self, request: Request, answer: str, verdict: Verdict, lease: Lease
    ) -> Request | None:
        """The request again, with the invalid answer and what was wrong with it as two more
        turns; None when it is not worth sending (truncated, follow-ups used up, stopping, or
        over the budget or the context window)."""
        done = len(request.followups)
        if not verdict.retryable or done >= self.invalid_retries or self.stopping:
            return None
        reply = followup_prompt(verdict)
        extra = estimate_tokens(answer) + estimate_tokens(reply) + 2 * MESSAGE_OVERHEAD_TOKENS
        again = replace(
            request,
            followups=(*request.followups, (answer, reply)),
            est_input_tokens=request.est_input_tokens + extra,
        )
        if self.context_window and again.est_total_tokens > self.context_window:
            return None
        if not lease.grow(again.est_total_tokens, self._worst_cost(again)):
            self._request_stop("budget")
            return None
        self._log.info(
            "answer_invalid",
            row_id=request.row_id,
            error_type=verdict.error_type,
            followup=done + 1,
            error=verdict.error,
        )
        return again

    def _on_fatal(self, error: ProviderError) -> None:
        if self.fatal is None:
            assert isinstance(error, FatalProviderError)
            self.fatal = error
            self._log.error(
                "run_aborted",
                error_type=error.error_type,
                status_code=error.status_code,
                error=str(error),
            )
        self.stopping = True
        if self._scope is not None:
            self._scope.cancel()


_NO_USAGE = Usage()


def _where(request: Request) -> tuple[str, str, str, int]:
    return request.request_key, request.row_id, request.source, request.line


def _add_usage(a: Usage, b: Usage) -> Usage:
    return Usage(
        input_tokens=a.input_tokens + b.input_tokens,
        output_tokens=a.output_tokens + b.output_tokens,
        cache_read_tokens=a.cache_read_tokens + b.cache_read_tokens,
        cache_write_tokens=a.cache_write_tokens + b.cache_write_tokens,
        reasoning_tokens=a.reasoning_tokens + b.reasoning_tokens,
    )


def _add_cost(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else a + b
