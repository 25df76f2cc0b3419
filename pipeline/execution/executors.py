"""Where a run's executors are made: one place for everything they share.

A run has up to four: the online executor (this process's, or Ray's when the job runs on a
cluster), the fallback's own online executor (``[request.fallback]``), and the batch executor
(batch mode, and collecting the batches of earlier runs). They share the job's limits, the run's
stats and sink, the answer schema, the prices and the way to stop the run; :class:`Executors`
holds those once and makes each executor from them, and keeps every executor it made so that
the session can stop them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from ..extract import Extractor
from ..job import Job
from ..job.pricing import Price, fallback_price_for
from ..limits import LocalRateBudget, RateBudget, RunBudget
from ..providers import BatchProvider, Provider
from ..records import Mode, ResultBuilder
from ..render import Renderer
from ..store import Store
from .batch import BatchExecutor, PartRow
from .cluster import RayEngine, RayExecutor
from .fallback import Breaker, Fallback, Switch, log_switch
from .online import OnlineExecutor
from .sink import ResultSink
from .stats import RunStats

__all__ = ["Endpoints", "Executor", "Executors"]

log = structlog.get_logger("pipeline.executors")

Executor = OnlineExecutor | BatchExecutor | RayExecutor


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Who sends a run's requests, and where to.

    ``online`` sends online (needed for an online run; a batch run sends the rows no batch
    answered with it); ``batch`` holds the batch endpoints (needed in batch mode; an online run
    uses them to collect finished batches of earlier runs). ``fallback`` sends the rows that go
    to ``[request.fallback]``, at ``fallback_url``."""

    base_url: str
    online: Provider | None = None
    batch: BatchProvider | None = None
    fallback: Provider | None = None
    fallback_url: str | None = None


class Executors:
    """Makes the executors of one run (see the module docstring)."""

    def __init__(
        self,
        job: Job,
        *,
        run_id: str,
        renderer: Renderer,
        endpoints: Endpoints,
        store: Store,
        sink: ResultSink,
        stats: RunStats,
        price: Price | None,
        batch_price: Price | None,
        parts_dir: Path,
        on_stop: Callable[[str], None],
        notice: Callable[[str], None],
        engine: RayEngine | None = None,
        rate: RateBudget | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.job = job
        self.run_id = run_id
        self.renderer = renderer
        self.endpoints = endpoints
        self.store = store
        self.sink = sink
        self.stats = stats
        self.price = price
        self.batch_price = batch_price
        self.parts_dir = parts_dir
        self.engine = engine
        self._on_stop = on_stop
        self._notice = notice
        self._clock = clock
        limits = job.limits
        self.rate = rate or LocalRateBudget(
            requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute,
        )
        schema = job.request.schema
        self.extractor = None if schema is None else Extractor(schema)
        self.made: list[Executor] = []
        self._fallback: Fallback | None = None
        self._stopped = False

    def stop(self) -> None:
        """Stop every executor made, and every one made from now on."""
        self._stopped = True
        for executor in self.made:
            executor.stop()

    @property
    def stopping(self) -> bool:
        return self._stopped or any(e.stopping for e in self.made)

    def _keep(self, executor: Executor) -> None:
        self.made.append(executor)
        if self._stopped:
            executor.stop()

    def results(self, mode: Mode) -> ResultBuilder:
        request = self.job.request
        return ResultBuilder(
            job=self.job.name,
            run_id=self.run_id,
            prompt_hash=self.renderer.prompt_hash,
            provider=request.provider,
            model=request.model,
            mode=mode,
            clock=self._clock,
        )

    def online(self, results: ResultBuilder, *, spent_usd: float) -> OnlineExecutor | RayExecutor:
        """The online executor of one online pass, under a fresh budget: the job's concurrency
        and dollars (``spent_usd`` of them gone already), the run's rate budget. On a Ray
        cluster, Ray's executor instead (workers send; the fallback is not there)."""
        job = self.job
        budget = RunBudget(
            rate=self.rate,
            concurrency=job.limits.concurrency,
            budget_usd=job.limits.budget_usd,
            spent_usd=spent_usd,
        )
        executor: OnlineExecutor | RayExecutor
        if self.engine is not None:
            executor = self.engine.executor(
                job=job,
                results=results,
                sink=self.sink,
                stats=self.stats,
                price=self.price,
                budget=budget,
                url=self.endpoints.base_url,
                warm_cache=self.renderer.warm_cache,
                on_stop=self._on_stop,
            )
        else:
            provider = self.endpoints.online
            assert provider is not None, "an online pass needs an online provider"
            executor = OnlineExecutor(
                provider=provider,
                budget=budget,
                sink=self.sink,
                results=results,
                stats=self.stats,
                price=self.price,
                max_attempts=job.limits.max_attempts,
                url=self.endpoints.base_url,
                extractor=self.extractor,
                invalid_retries=job.request.invalid_retries,
                context_window=job.request.context_tokens,
                warm_cache=self.renderer.warm_cache,
                on_stop=self._on_stop,
                fallback=self.fallback(),
            )
        self._keep(executor)
        return executor

    def fallback(self) -> Fallback | None:
        """The job's ``[request.fallback]``, made once per run: a second online executor on the
        fallback's provider, with its own rate budget and price; None without one (or when no
        provider was given for it, or on Ray)."""
        spec = self.job.request.fallback
        provider = self.endpoints.fallback
        if spec is None or provider is None or self.engine is not None:
            return None
        if self._fallback is not None:
            return self._fallback
        job = self.job
        request = replace(job.request, provider=spec.provider, model=spec.model)
        results = ResultBuilder(
            job=job.name,
            run_id=self.run_id,
            prompt_hash=self.renderer.prompt_hash,
            provider=spec.provider,
            model=spec.model,
            mode=Mode.ONLINE,
            clock=self._clock,
            fallback_from=job.request.model,
        )
        limits = job.limits
        budget = RunBudget(
            rate=LocalRateBudget(
                requests_per_minute=limits.requests_per_minute,
                tokens_per_minute=limits.tokens_per_minute,
            ),
            concurrency=limits.concurrency,
        )
        price = fallback_price_for(job)
        executor = OnlineExecutor(
            provider=provider,
            budget=budget,
            sink=self.sink,
            results=results,
            stats=self.stats,
            price=price,
            max_attempts=limits.max_attempts,
            url=self.endpoints.fallback_url or self.endpoints.base_url,
            extractor=self.extractor,
            invalid_retries=request.invalid_retries,
            context_window=spec.context_tokens,
            on_stop=self._on_stop,
        )
        self._keep(executor)
        stats = self.stats

        def switched(switch: Switch) -> None:
            after_s = round(time.monotonic() - stats.started, 2)
            stats.fallback_switches.append({**switch.as_dict(), "after_s": after_s})
            log_switch(switch, primary=job.request.model, fallback=spec.model)
            to = f"fallback {spec.model}" if switch.to == "fallback" else job.request.model
            self._notice(f"new rows go to {to}: {switch.why}")

        self._fallback = Fallback(
            spec=spec,
            executor=executor,
            budget=budget,
            renderer=Renderer(request),
            primary=self.renderer,
            primary_window=job.request.context_tokens,
            price=price,
            breaker=Breaker(cooldown_s=spec.cooldown_s, on_switch=switched),
            budget_usd=limits.budget_usd is not None,
        )
        return self._fallback

    def batch(
        self,
        results: ResultBuilder,
        on_recorded: Callable[[Iterable[PartRow]], None] | None = None,
    ) -> BatchExecutor:
        """The batch executor: ``results`` builds its rows' results (batch mode's)."""
        provider = self.endpoints.batch
        assert provider is not None, "a batch executor needs the batch endpoints"
        job = self.job
        record_unfinished = job.batch.on_unfinished == "record" or self.endpoints.online is None
        executor = BatchExecutor(
            provider=provider,
            book=self.store.batches,
            sink=self.sink,
            results=results,
            stats=self.stats,
            price=self.batch_price,
            parts_dir=self.parts_dir,
            metadata={"run_id": self.run_id, "job": job.name},
            poll_interval_s=job.batch.poll_interval_s,
            record_unfinished=record_unfinished,
            max_attempts=job.limits.max_attempts,
            extractor=self.extractor,
            on_recorded=on_recorded,
            clock=self._clock,
        )
        self._keep(executor)
        return executor

    def fatal(self) -> BaseException | None:
        """The error that ended the run for every request (a bad key, no quota, ...), if any."""
        for executor in self.made:
            if isinstance(executor, OnlineExecutor | RayExecutor) and executor.fatal:
                return executor.fatal
        return None
