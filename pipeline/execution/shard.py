"""A shard worker: the online executor on a Ray worker, fed and drained by the run's driver.

::

    driver ── push(requests) ──▶ inbox ─▶ OnlineExecutor ─▶ outbox ◀── take() ── driver
                                             │  ShardBudget: its share of the concurrency,
                                             │  dollars allotted by the job's budget
                                             └─ SharedRateBudget ◀─ blocks ─▶ budget actor

``ShardWorker`` is the body of a Ray actor (``pipeline.execution.cluster`` makes it one), with
nothing of Ray in it: every method is a coroutine the driver calls remotely. ``run()`` lasts as
long as the worker works; ``push()`` hands it planned requests and waits while its inbox is full
(backpressure, so a worker never holds more than a few chunks); ``take()`` hands back the
results so far, each stamped with the worker's name, and the counters since the last take.
The worker never reads the input and never writes the database: the driver does both.

The provider's key is read here, from this worker's own environment (a local Ray's workers
inherit the driver's; a cluster's nodes need it exported before ``ray start``), so it is never
an argument Ray records or shows. Only the fake provider's key, which is no secret, is passed in.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import ConfigError
from ..extract import Extractor
from ..job import Job
from ..job.pricing import Price
from ..limits import Grant, Report, ShardBudget, SharedRateBudget
from ..records import Request, ResultBuilder, RowResult
from .online import OnlineExecutor
from .stats import RunStats

__all__ = ["SHIP_ROWS", "ShardSpec", "ShardWorker", "Shipment"]

SHIP_ROWS = 256  # results a take() returns at once at most, as the sink commits them
LINGER_S = 0.05  # a take() with some results waits this long for more, to ship fewer batches


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """What a worker is told when it starts (no secret: Ray keeps actor arguments)."""

    job: Job
    results: ResultBuilder
    slot: int
    generation: int
    workers: int
    concurrency: int  # this worker's share of [limits] concurrency
    base_url: str
    price: Price | None
    dollars: bool  # the job has a budget_usd: draw dollars from the budget actor
    warm_cache: bool
    fake_key: str | None = None  # the built-in fake provider's key, the only one passed in

    @property
    def budget_id(self) -> str:
        """This worker's name at the budget actor: each generation of a slot is a new one."""
        return f"{self.slot}.{self.generation}"


@dataclass(frozen=True, slots=True)
class Shipment:
    """What one ``take()`` brings back: results, counters since the last take, and whether the
    worker is done (then nothing more will come)."""

    results: list[RowResult]
    requests_sent: int = 0
    retries: int = 0
    rate_limited: int = 0
    done: bool = False
    stop_reason: str | None = None  # the worker stopped launching ("budget")
    fatal: tuple[str, str] | None = None  # (message, error_type): no request can succeed
    error: str | None = None  # the worker itself failed (no key, say)


class ActorLink:
    """A ``BudgetLink`` over the budget actor's handle."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor

    async def grant(self, worker: str, report: Report, requests: int, tokens: int) -> Grant:
        grant: Grant = await self._actor.grant.remote(worker, report, requests, tokens)
        return grant

    def penalize(self, worker: str, retry_after: float | None) -> None:
        self._actor.penalize.remote(worker, retry_after)

    def pause(self, seconds: float) -> None:
        self._actor.pause.remote(seconds)

    async def allot(self, worker: str, usd: float) -> float:
        got: float = await self._actor.allot.remote(worker, usd)
        return got

    async def done(self, worker: str, spent_usd: float) -> None:
        await self._actor.done.remote(worker, spent_usd)


class _Outbox:
    """The executor's sink on a worker: results wait in the worker for the driver's take()."""

    def __init__(self, worker: ShardWorker) -> None:
        self._worker = worker

    async def put(self, result: RowResult) -> None:
        self._worker.ship(result)


class ShardWorker:
    """The body of one Ray worker actor (see the module docstring)."""

    def __init__(self, spec: ShardSpec, budget: Any) -> None:
        self.spec = spec
        self._budget = budget
        self.name = f"ray-{spec.slot}"
        self.stats = RunStats()
        self._outbox: list[RowResult] = []
        self._streams: (
            tuple[MemoryObjectSendStream[Request], MemoryObjectReceiveStream[Request]] | None
        ) = None
        self._some: anyio.Event | None = None
        self._full: anyio.Event | None = None
        self._executor: OnlineExecutor | None = None
        self._stopped = False
        self._done = False
        self._stop_reason: str | None = None
        self._fatal: tuple[str, str] | None = None
        self._error: str | None = None
        self._shipped = (0, 0, 0)

    # -- what the driver calls -----------------------------------------------------------------

    async def run(self) -> None:
        """Send what is pushed until the inbox is closed (or the worker stops); never raises:
        a failure is reported by the next take()."""
        self._setup()
        try:
            await self._run()
        except Exception as exc:
            self._error = (
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, ConfigError) else str(exc)
            )
        finally:
            self._done = True
            self._wake(full=True)

    async def push(self, requests: list[Request]) -> bool:
        """Queue ``requests``, waiting while the inbox is full; False once the worker takes no
        more (it stopped): the driver keeps them as unfinished."""
        send, _ = self._setup()
        try:
            for request in requests:
                await send.send(request)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        return True

    async def close(self) -> None:
        """Nothing more will be pushed: finish what is queued, then ``run()`` returns."""
        send, _ = self._setup()
        send.close()

    async def stop(self) -> None:
        """Launch nothing more; requests in flight finish and are shipped."""
        self._stopped = True
        if self._executor is not None:
            self._executor.stop()
        send, _ = self._setup()
        send.close()

    async def take(self, wait_s: float = 1.0) -> Shipment:
        """The results so far (at most ``SHIP_ROWS``; waits ``wait_s`` at most for a first
        one, then ``LINGER_S`` for more) and the counters since the last take."""
        self._setup()
        assert self._some is not None and self._full is not None
        some, full = self._some, self._full
        if not self._outbox and not self._done:
            with anyio.move_on_after(wait_s):
                await some.wait()
        if len(self._outbox) < SHIP_ROWS and not self._done:
            with anyio.move_on_after(LINGER_S):
                await full.wait()
        results = self._outbox[:SHIP_ROWS]
        del self._outbox[:SHIP_ROWS]
        if not self._outbox:
            self._some, self._full = anyio.Event(), anyio.Event()
        s = self.stats
        counters = (s.requests_sent, s.retries, s.rate_limited)
        sent, retries, limited = (
            now - before for now, before in zip(counters, self._shipped, strict=True)
        )
        self._shipped = counters
        return Shipment(
            results,
            requests_sent=sent,
            retries=retries,
            rate_limited=limited,
            done=self._done and not self._outbox,
            stop_reason=self._stop_reason,
            fatal=self._fatal,
            error=self._error,
        )

    async def pid(self) -> int:
        """This worker's process id (for tests that kill it)."""
        return os.getpid()

    # -- inside --------------------------------------------------------------------------------

    def _setup(self) -> tuple[MemoryObjectSendStream[Request], MemoryObjectReceiveStream[Request]]:
        """Streams and events are made on the worker's event loop, on first use."""
        if self._streams is None:
            buffer = max(2 * self.spec.concurrency, 64)
            self._streams = anyio.create_memory_object_stream[Request](buffer)
            self._some, self._full = anyio.Event(), anyio.Event()
        return self._streams

    def ship(self, result: RowResult) -> None:
        self._outbox.append(replace(result, worker=self.name))
        self._wake(full=len(self._outbox) >= SHIP_ROWS)

    def _wake(self, *, full: bool) -> None:
        if self._some is not None:
            self._some.set()
        if full and self._full is not None:
            self._full.set()

    def _on_stop(self, reason: str) -> None:
        self._stop_reason = self._stop_reason or reason

    async def _run(self) -> None:
        from ..logs import configure_logging, register_secret
        from ..providers import api_key_from_env, make_provider

        spec = self.spec
        job = spec.job
        self.name = f"ray-{spec.slot}@{socket.gethostname()}"  # the results' worker column
        configure_logging(log_file=None)  # warnings and errors to stderr: Ray's worker logs
        key = spec.fake_key
        if key is None:
            try:
                key = api_key_from_env(job.request.provider)
            except ConfigError as exc:
                raise ConfigError(
                    f"on Ray worker {self.name}: {exc} (a Ray cluster's workers read the key "
                    "from their own environment: export it on every node before 'ray start')"
                ) from None
            register_secret(key)
        shard_job = replace(job, limits=replace(job.limits, concurrency=spec.concurrency))
        provider = make_provider(shard_job, api_key=key, base_url=spec.base_url)
        link = ActorLink(self._budget)
        rate = SharedRateBudget(link, worker=spec.budget_id, share=1 / spec.workers)
        budget = ShardBudget(
            rate=rate, concurrency=spec.concurrency, link=link, dollars=spec.dollars
        )
        schema = job.request.schema
        executor = OnlineExecutor(
            provider=provider,
            budget=budget,
            sink=_Outbox(self),
            results=spec.results,
            stats=self.stats,
            price=spec.price,
            max_attempts=job.limits.max_attempts,
            url=spec.base_url,
            extractor=None if schema is None else Extractor(schema),
            invalid_retries=job.request.invalid_retries,
            context_window=job.request.context_tokens,
            warm_cache=spec.warm_cache,
            on_stop=self._on_stop,
        )
        self._executor = executor
        if self._stopped:
            executor.stop()
        _, inbox = self._setup()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(rate.run)
                await executor.run(inbox)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await budget.done()
                await provider.aclose()
        if executor.fatal is not None:
            self._fatal = (str(executor.fatal), executor.fatal.error_type)
