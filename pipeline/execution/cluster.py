"""The Ray engine: one online run's planned requests sent by workers on a Ray cluster.

::

    driver (RunSession)                                   Ray
      Planner ─▶ feed ─▶ RayExecutor.run(requests)
                           route: crc32(request key) % workers ──▶ slot i ── push ──▶ ShardWorker i
                           results ◀── take (batches, ≤ 256) ─────────────────────── (shard.py)
                           ResultSink: journal, then DuckDB      budget actor (BudgetService) ◀─┘

The driver plans every row (it alone reads the input) and is the only writer of the database;
workers get rendered requests through Ray and give back ``RowResult``\\ s, which go into the run's
own ``ResultSink`` (journal first, then DuckDB), ``mode = 'online'`` with the worker's name in
``worker``. One budget actor holds the job's rates, its 429 pauses and its dollars
(``pipeline.limits._shared``); each worker has ``concurrency / workers`` of the concurrency cap.

Faults. The driver keeps, per slot, the requests pushed to its worker and not yet answered
(``pending``; bounded by the worker's inbox and its concurrency). A worker that dies (its process
killed, its node lost) is replaced by a new worker in the same slot, which is sent the pending
requests first: nothing is lost, and what is paid twice is at most what the dead worker had in
flight plus the answers it had not shipped yet. Its dollars stay counted (``BudgetService.lost``).
A slot whose worker dies ``MAX_REPLACEMENTS`` times ends the run ``failed``; ``pipeline resume``
finishes it. Stopping (Ctrl-C, the budget) stops every worker: they launch nothing more, finish
what is in flight and ship it; after the session's grace the driver kills them. The driver
killed takes its workers with it (Ray ends the actors of a driver that is gone); the journal and
``pipeline resume`` do the rest, as for a local run.

Ray is imported only here and only when a run uses it: a job without ``[cluster]`` never loads it.
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Callable
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream

from ..errors import ConfigError, FatalProviderError
from ..job import ClusterSpec, Job
from ..job.pricing import Price
from ..limits import BudgetService, Grant, Report, RunBudget
from ..records import Request, ResultBuilder
from .shard import ShardSpec, ShardWorker, Shipment
from .sink import ResultSink
from .stats import RunStats

__all__ = ["MAX_REPLACEMENTS", "NAMESPACE", "BudgetActor", "RayEngine", "RayExecutor"]

log = structlog.get_logger("pipeline.cluster")

NAMESPACE = "llm-batch-pipeline"  # the Ray namespace of the actors (named by run and slot)
MAX_REPLACEMENTS = 3  # a slot's worker is replaced this many times, then the run fails
PUSH_CHUNK = 256  # requests per push at most
TAKE_WAIT_S = 1.0
# A local Ray holds only requests and results in flight (a few chunks a worker): a small object
# store, instead of Ray's default of 30% of the memory, mapped and filled at start.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024


class RayEngine:
    """Where a session's online requests go when ``[cluster] engine = "ray"``: it makes one
    ``RayExecutor`` per online pass. ``fake_key``: the built-in fake provider's key (the only
    key ever passed to a worker; real keys come from the workers' environment)."""

    def __init__(
        self,
        cluster: ClusterSpec,
        *,
        fake_key: str | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.fake_key = fake_key
        self.notice = notice or (lambda message: None)

    def executor(
        self,
        *,
        job: Job,
        results: ResultBuilder,
        sink: ResultSink,
        stats: RunStats,
        price: Price | None,
        budget: RunBudget,
        url: str,
        warm_cache: bool,
        on_stop: Callable[[str], None],
    ) -> RayExecutor:
        return RayExecutor(
            engine=self,
            job=job,
            results=results,
            sink=sink,
            stats=stats,
            price=price,
            budget=budget,
            url=url,
            warm_cache=warm_cache,
            on_stop=on_stop,
        )


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "engine 'ray' needs Ray, which is not installed; install it with "
            "pip install 'llm-batch-pipeline[ray]', or run with --engine local",
            key="cluster.engine",
        ) from None
    return ray


class RayExecutor:
    """An online executor whose workers are Ray actors (see the module docstring); used by the
    session like ``OnlineExecutor``: ``run(requests)``, ``stop()``, ``stopping``, ``fatal``."""

    def __init__(
        self,
        *,
        engine: RayEngine,
        job: Job,
        results: ResultBuilder,
        sink: ResultSink,
        stats: RunStats,
        price: Price | None,
        budget: RunBudget,
        url: str,
        warm_cache: bool,
        on_stop: Callable[[str], None],
    ) -> None:
        self.engine = engine
        self.job = job
        self.results = results
        self.sink = sink
        self.stats = stats
        self.price = price
        self.budget = budget
        self.url = url
        self.warm_cache = warm_cache
        self._on_stop = on_stop
        workers = engine.cluster.workers
        cap = budget.concurrency
        # Each worker's share of the concurrency cap; together exactly the cap.
        self.shares = [cap // workers + (1 if i < cap % workers else 0) for i in range(workers)]
        self.stopping = False
        self.fatal: FatalProviderError | None = None
        self.replaced = 0
        self._slots: list[_Slot] = []
        self._ray: Any = None
        self._host: _RayHost | None = None  # the Ray this run started (or joined), if any
        self._budget_actor: Any = None
        self._worker_class: Any = None
        self._log = log.bind(run_id=results.run_id, workers=workers)

    def stop(self) -> None:
        """Launch nothing more, on every worker; what is in flight finishes and is shipped."""
        self.stopping = True
        for slot in self._slots:
            slot.stop()

    def _fail(self, error: FatalProviderError) -> None:
        if self.fatal is None:
            self.fatal = error
            self._log.error("run_aborted", error_type=error.error_type, error=str(error))
        self.stop()

    async def run(self, work: MemoryObjectReceiveStream[Request]) -> None:
        """Start (or join) Ray, start the budget actor and the workers, route ``work`` to
        them until it ends, and put every result in the sink; Ray's actors are gone when this
        returns, however it ends."""
        try:
            await anyio.to_thread.run_sync(self._connect)
            self._start_budget()
            self._slots = [_Slot(self, i) for i in range(len(self.shares))]
            if self.stopping:
                self.stop()
            async with anyio.create_task_group() as tg:
                for slot in self._slots:
                    tg.start_soon(slot.run)
                await self._route(work)
        finally:
            with anyio.CancelScope(shield=True):
                await self._tear_down()

    # -- Ray -----------------------------------------------------------------------------------

    def _connect(self) -> None:
        ray = _import_ray()
        self._ray = ray
        if ray.is_initialized():
            return  # a Ray this process already runs (a library caller's, the tests')
        address = self.engine.cluster.address
        options: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "namespace": NAMESPACE,
        }
        if address is None:
            options["num_cpus"] = max(os.cpu_count() or 1, 2)
            options["object_store_memory"] = LOCAL_OBJECT_STORE_BYTES
        else:
            options["address"] = address
        host = _RayHost(ray, options)
        try:
            host.start()
        except Exception as exc:  # Ray's own errors: no cluster there, a version mismatch ...
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise ConfigError(
                f"cannot start {where}: {exc}; check [cluster] address (or --address)",
                key="cluster.address",
            ) from exc
        self._host = host
        self._log.info("ray_started", address=address or "local")

    def _start_budget(self) -> None:
        ray = self._ray
        limits = self.job.limits
        actor = ray.remote(num_cpus=0, max_restarts=0)(BudgetActor)
        self._budget_actor = actor.options(
            name=f"{self.results.run_id}-budget", namespace=NAMESPACE
        ).remote(
            {
                "requests_per_minute": limits.requests_per_minute,
                "tokens_per_minute": limits.tokens_per_minute,
                "budget_usd": self.budget.budget_usd,
                "spent_usd": self.budget.spent_usd,
            }
        )
        self._worker_class = ray.remote(num_cpus=0, max_restarts=0)(ShardWorker)

    def spawn(self, slot: _Slot) -> tuple[Any, ShardSpec]:
        """A new worker actor for ``slot`` (its next generation)."""
        spec = ShardSpec(
            job=self.job,
            results=self.results,
            slot=slot.index,
            generation=slot.generation,
            workers=len(self.shares),
            concurrency=self.shares[slot.index],
            base_url=self.url,
            price=self.price,
            dollars=self.budget.budget_usd is not None,
            warm_cache=self.warm_cache,
            fake_key=self.engine.fake_key,
        )
        actor = self._worker_class.options(
            name=f"{self.results.run_id}-worker-{slot.index}.{slot.generation}",
            namespace=NAMESPACE,
            scheduling_strategy="SPREAD",
        ).remote(spec, self._budget_actor)
        return actor, spec

    async def _tear_down(self) -> None:
        ray = self._ray
        if ray is None:
            return
        for slot in self._slots:
            if slot.actor is not None:
                ray.kill(slot.actor)
        if self._budget_actor is not None:
            try:
                with anyio.fail_after(5):
                    state = await self._budget_actor.state.remote()
                self._log.info("budget_state", **state)
            except Exception:  # the budget actor is gone: nothing to report
                pass
            ray.kill(self._budget_actor)
        if self._host is not None:
            await anyio.to_thread.run_sync(self._host.stop)

    # -- the work ------------------------------------------------------------------------------

    async def _route(self, work: MemoryObjectReceiveStream[Request]) -> None:
        """Each request to the slot its request key hashes to, in input order per slot."""
        slots = self._slots
        try:
            async with work:
                async for request in work:
                    if self.stopping:
                        break  # not launched: the next run sends it
                    slot = slots[zlib.crc32(request.request_key.encode()) % len(slots)]
                    try:
                        await slot.inbox_send.send(request)
                    except anyio.BrokenResourceError:
                        continue  # the slot ended (the run is failing): left unfinished
        finally:
            for slot in slots:
                slot.inbox_send.close()

    async def received(self, shipment: Shipment) -> None:
        """A worker's results into the run's sink (journal, then DuckDB), its counters into
        the run's, and what it says about the run."""
        for result in shipment.results:
            await self.sink.put(result)
        self.stats.requests_sent += shipment.requests_sent
        self.stats.retries += shipment.retries
        self.stats.rate_limited += shipment.rate_limited
        if shipment.stop_reason is not None and not self.stopping:
            self._on_stop(shipment.stop_reason)
        if shipment.fatal is not None:
            message, error_type = shipment.fatal
            self._fail(FatalProviderError(message, error_type=error_type))
        elif shipment.error is not None:
            self._fail(FatalProviderError(shipment.error, error_type="worker_failed"))

    def died(self, slot: _Slot, error: BaseException) -> bool:
        """``slot``'s worker died: its dollars stay counted; True when it gets a successor."""
        self.replaced += 1
        if self._budget_actor is not None:
            self._budget_actor.lost.remote(slot.spec_id)
        self._log.warning(
            "worker_lost",
            worker=slot.name,
            unfinished=len(slot.pending),
            error=str(error).splitlines()[0][:200],
        )
        if self.stopping:
            return False  # its unfinished rows are left for 'pipeline resume'
        if slot.generation >= MAX_REPLACEMENTS:
            self._fail(
                FatalProviderError(
                    f"Ray worker {slot.index} died {slot.generation + 1} times; the rows not "
                    "done yet are left for 'pipeline resume'",
                    error_type="worker_lost",
                )
            )
            return False
        self.engine.notice(
            f"Ray worker {slot.name} was lost; a new one takes over its "
            f"{len(slot.pending):,} unfinished requests"
        )
        return True

    def actor_errors(self) -> tuple[type[BaseException], ...]:
        errors = self._ray.exceptions
        return (errors.RayActorError, errors.ActorUnavailableError)


class _RayHost:
    """A thread that starts (or joins) Ray and lives until Ray is shut down, in that thread.

    A local Ray's processes are started with ``PR_SET_PDEATHSIG``, which the kernel fires when
    the *thread* that forked them ends: started from a pooled worker thread, they would be
    killed the moment the pool retired it. Nor is the main thread used: there Ray would take
    SIGTERM over from the run's own handling (stop, grace, resume command)."""

    def __init__(self, ray: Any, options: dict[str, Any]) -> None:
        self._ray = ray
        self._options = options
        self._ready = threading.Event()
        self._finish = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="ray-host", daemon=True)

    def start(self) -> None:
        """Start Ray; blocks until it is up (or raises what stopped it)."""
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Shut Ray down (in its thread); blocks until it is."""
        self._finish.set()
        self._thread.join()

    def _main(self) -> None:
        try:
            self._ray.init(**self._options)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._finish.wait()
        self._ray.shutdown()


class BudgetActor:
    """The body of the budget actor: the job's ``BudgetService``, made on the actor's event
    loop at the first call, every method a coroutine so that all run on that one loop."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._service: BudgetService | None = None

    def _get(self) -> BudgetService:
        if self._service is None:
            self._service = BudgetService(**self._options)
        return self._service

    async def grant(self, worker: str, report: Report, requests: int, tokens: int) -> Grant:
        return await self._get().grant(worker, report, requests, tokens)

    async def penalize(self, worker: str, retry_after: float | None) -> None:
        self._get().penalize(worker, retry_after)

    async def pause(self, seconds: float) -> None:
        self._get().pause(seconds)

    async def allot(self, worker: str, usd: float) -> float:
        return self._get().allot(worker, usd)

    async def done(self, worker: str, spent_usd: float) -> None:
        self._get().done(worker, spent_usd)

    async def lost(self, worker: str) -> None:
        self._get().lost(worker)

    async def state(self) -> dict[str, Any]:
        return self._get().state()


class _Slot:
    """One of the run's worker places: the requests routed to it, the worker serving it (a
    new one after a death), and what that worker has not answered yet."""

    def __init__(self, executor: RayExecutor, index: int) -> None:
        self.executor = executor
        self.index = index
        self.inbox_send, self.inbox = anyio.create_memory_object_stream[Request](PUSH_CHUNK)
        self.pending: dict[str, Request] = {}  # pushed to the worker, no result yet
        self.generation = -1
        self.actor: Any = None
        self.spec_id = ""
        self.name = f"ray-{index}"
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True
        if self.actor is not None:
            self.actor.stop.remote()

    async def run(self) -> None:
        executor = self.executor
        try:
            while True:
                self.generation += 1
                self.actor, spec = executor.spawn(self)
                self.spec_id = spec.budget_id
                if self._stopped:
                    self.actor.stop.remote()
                error = await self._serve(self.actor)
                if error is None or not executor.died(self, error):
                    return
        finally:
            self.inbox.close()  # the router sends this slot nothing more

    async def _serve(self, actor: Any) -> BaseException | None:
        """Feed ``actor`` and drain it until it is done; the error if it died."""
        died: list[BaseException] = []
        errors = self.executor.actor_errors()

        async def guarded(part: Callable[[Any], Any], scope: anyio.CancelScope, last: bool) -> None:
            try:
                await part(actor)
            except errors as exc:
                died.append(exc)
                scope.cancel()
            if last:
                scope.cancel()  # the worker is done: stop feeding it

        actor.run.remote()
        async with anyio.create_task_group() as tg:
            tg.start_soon(guarded, self._send, tg.cancel_scope, False)
            tg.start_soon(guarded, self._receive, tg.cancel_scope, True)
        return died[0] if died else None

    async def _send(self, actor: Any) -> None:
        if self.pending:  # a successor: first what the dead worker left unfinished
            left = list(self.pending.values())
            for start in range(0, len(left), PUSH_CHUNK):
                if not await actor.push.remote(left[start : start + PUSH_CHUNK]):
                    return
        inbox = self.inbox
        while True:
            try:
                chunk = [await inbox.receive()]
            except anyio.EndOfStream:
                break
            while len(chunk) < PUSH_CHUNK:
                try:
                    chunk.append(inbox.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            for request in chunk:
                self.pending[request.request_key] = request
            if not await actor.push.remote(chunk):
                return  # the worker stopped: these stay unfinished
        await actor.close.remote()

    async def _receive(self, actor: Any) -> None:
        while True:
            shipment: Shipment = await actor.take.remote(TAKE_WAIT_S)
            for result in shipment.results:
                self.pending.pop(result.request_key, None)
            if shipment.results:
                self.name = shipment.results[0].worker or self.name
            await self.executor.received(shipment)
            if shipment.done:
                return
