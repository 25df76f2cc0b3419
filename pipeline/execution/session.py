"""A session owns one run: plan, execute, record.

::

    RunSession.run()
      1. ledger     start the run (or reopen it), record its prices, its schema view
      2. recover    replay the journals killed processes left next to the database
      3. batches    rows in open batches of earlier runs of this job: adopt them (batch mode),
                    or collect the finished ones and never send the rest (online)
      4. execute    planner ─▶ online executor, or batch executor (then the rows no batch
                    answered, online) ─▶ sink (journal, then DuckDB)
      5. finish     state, counts and cost in the ledger; manifest; journal removed

The session is what ``pipeline run``, ``resume`` and ``rerun`` drive, and what a library caller
uses the same way: give it the job, an open ``Store`` and the providers; ``await run()``.
It holds the run's policy: the USD budget (kept while the run goes; ``check_budget``, before
the database is even opened, refuses a run whose worst case is already over it), the
manifest (rewritten every 2 s for ``pipeline status``), the batch to online fallback, the
fallback model (``[request.fallback]``: its provider, rate budget and price, wired into the
online executor), and stopping (``request_stop``: stop launching, give requests in flight
``grace_s``, then cancel them; ``cancel_now``: at once).

Executors never touch the ledger or the manifest; the session never touches HTTP.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import anyio
import structlog

from ..errors import ConfigError, FatalProviderError, PipelineError, first_pipeline_error
from ..extract import Extractor
from ..job import Job
from ..job.pricing import Price, fallback_price_for, price_for
from ..limits import LocalRateBudget, RateBudget, RunBudget
from ..plan import Planner, RowFilter
from ..providers import BatchProvider, Provider
from ..records import Mode, Request, ResultBuilder, RowResult, run_state
from ..render import Renderer
from ..sources import input_files
from ..store import RunRecord, Store
from .batch import BatchExecutor, PartRow
from .cluster import RayEngine, RayExecutor
from .fallback import Breaker, Fallback, Switch, log_switch
from .feed import feed
from .journal import Journal, replay_journals
from .manifest import fingerprints, manifest_path, resume_command, runs_dir, write_manifest
from .online import OnlineExecutor
from .sink import ResultSink
from .stats import RunOutcome, RunStats, new_run_id

__all__ = ["MANIFEST_INTERVAL_S", "RunSession", "check_budget"]

log = structlog.get_logger("pipeline.session")

MANIFEST_INTERVAL_S = 2.0
JOB_PRICE: Literal["job"] = "job"


class RunSession:
    """One run of a job, from the first row to the last commit (see the module docstring).

    ``provider`` sends online; ``batch_provider`` is needed for batch mode, and lets an online
    run collect finished batches of earlier runs. ``fallback_provider`` sends the rows that go
    to the job's ``[request.fallback]`` at ``fallback_url`` (without it, the job runs without
    its fallback).
    ``rate`` defaults to the job's
    ``[limits]``; ``price`` / ``batch_price`` to the job's price (``cost.price_for``).
    ``resume``: continue ``run_id``. ``only``: send only the rows it admits (a rerun).
    ``wait``: in batch mode, wait for the batches and collect them (else submit and return).
    ``manifest``: the manifest of the run being resumed, or fields to add to a new one.
    ``notice`` hears one-line messages meant for the person running the job.
    """

    def __init__(
        self,
        job: Job,
        *,
        store: Store,
        base_url: str,
        provider: Provider | None = None,
        batch_provider: BatchProvider | None = None,
        rate: RateBudget | None = None,
        price: Price | Literal["job"] | None = JOB_PRICE,
        batch_price: Price | Literal["job"] | None = JOB_PRICE,
        run_id: str | None = None,
        resume: bool = False,
        only: RowFilter | None = None,
        wait: bool = True,
        manifest: Mapping[str, Any] | None = None,
        grace_s: float = 10.0,
        notice: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        fallback_provider: Provider | None = None,
        fallback_url: str | None = None,
        engine: RayEngine | None = None,
    ) -> None:
        self.job = job
        self.engine = engine  # None: this process sends; else Ray workers (online passes)
        self.fallback_url = fallback_url
        self.fallback_provider = fallback_provider if job.request.fallback else None
        self._fallback: Fallback | None = None
        self.mode = Mode(job.request.mode)
        if self.mode is Mode.ONLINE and provider is None:
            raise ValueError("an online run needs a provider")
        if self.mode is Mode.BATCH and batch_provider is None:
            raise ValueError("a batch run needs a batch_provider")
        self.store = store
        self.base_url = base_url
        self.provider = provider
        self.batch_provider = batch_provider
        self.run_id = run_id or new_run_id()
        self.resume = resume
        self.only = only
        self.wait = wait
        self.grace_s = grace_s
        self._notice = notice or (lambda message: None)
        self._clock = clock
        self.price = price_for(job) if price == JOB_PRICE else price
        self.batch_price = price_for(job, batch=True) if batch_price == JOB_PRICE else batch_price
        limits = job.limits
        self.rate = rate or LocalRateBudget(
            requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute,
        )
        self.renderer = Renderer(job.request)
        schema = job.request.schema
        self.extractor = None if schema is None else Extractor(schema)
        self.db = str(Path(job.output.db).resolve())
        self.runs_dir = runs_dir(job.output.db)
        self.manifest_path = manifest_path(job.output.db, self.run_id)
        self.parts_dir = self.runs_dir / f"{self.run_id}.parts"
        self.stats = RunStats()
        self.spent_before = 0.0  # what earlier processes of this run spent
        self._given_manifest = dict(manifest or {})
        self._manifest_base: dict[str, Any] = {}
        self._stop_reason: str | None = None
        self._stop_event = anyio.Event()
        self._work_scope: anyio.CancelScope | None = None
        self._executors: list[OnlineExecutor | BatchExecutor | RayExecutor] = []
        self._failure: str | None = None
        self._batches_left_open = False
        self._planner_now: Planner | None = None
        self._planners: list[Planner] = []  # for the documents and pages sent (manifest)
        self._open_parts: list[dict[str, Any]] = []
        self._log = log.bind(
            job=job.name, run_id=self.run_id, provider=job.request.provider, model=job.request.model
        )

    @property
    def prompt_hash(self) -> str:
        return self.renderer.prompt_hash

    # -- stopping ------------------------------------------------------------------------------

    def request_stop(self, reason: str = "signal") -> None:
        """Stop launching requests; in-flight ones get ``grace_s`` to finish, then the run ends
        ``stopped: <reason>``."""
        if self._stop_reason is not None:
            return
        self._stop_reason = reason
        for executor in self._executors:
            executor.stop()
        self._stop_event.set()
        self._log.warning("stop_requested", reason=reason, grace_s=self.grace_s)

    def cancel_now(self) -> None:
        """Abandon in-flight requests at once (a second Ctrl-C). Committed rows stay committed."""
        if self._stop_reason is None:
            self._stop_reason = "signal"
        for executor in self._executors:
            executor.stop()
        if self._work_scope is not None:
            self._work_scope.cancel()

    def _stopping(self) -> bool:
        return self._stop_reason is not None or any(e.stopping for e in self._executors)

    # -- the run -------------------------------------------------------------------------------

    async def run(self) -> RunOutcome:
        """Run the job; the outcome says how it ended. A ``PipelineError`` (the database
        refused a write, say) ends the run ``failed`` and is raised."""
        files = input_files(self.job.input.path)  # a missing input fails before anything else
        await anyio.to_thread.run_sync(self._open_run, files)
        ending: Literal["completed", "stopped", "failed"] = "completed"
        why: str | None = None
        message: str | None = None
        journal = Journal(self.runs_dir, run_id=self.run_id, db=self.db)
        sink = ResultSink(
            self.store.results.write_lines,
            stats=self.stats,
            journal=journal,
            on_commit=self._committed,
        )
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(sink.run)
                try:
                    with anyio.CancelScope() as scope:
                        self._work_scope = scope
                        async with anyio.create_task_group() as watch:
                            watch.start_soon(self._grace_watch, scope)
                            watch.start_soon(self._manifest_loop)
                            await self._execute(sink)
                            watch.cancel_scope.cancel()
                finally:
                    sink.close()
        except BaseExceptionGroup as group:
            # A task failed (e.g. DuckDB refused a write): one clear error, not a traceback.
            error = first_pipeline_error(group)
            ending, why = "failed", str(error) if error else "interrupted"
            if error is None:
                raise
            raise error from group
        except PipelineError as error:
            ending, why = "failed", str(error)
            raise
        except BaseException:
            ending, why = "failed", "interrupted"
            raise
        finally:
            fatal = self._fatal()
            if fatal is not None:
                ending, why, message = "failed", str(fatal), str(fatal)
            elif self._failure is not None:
                ending, why, message = "failed", self._failure, self._failure
            elif ending == "completed" and self._stop_reason is not None:
                ending, why = "stopped", self._stop_reason
            elif ending == "completed" and self._batches_left_open:
                ending, why = "stopped", "batches submitted; pipeline resume collects them"
            state = run_state(ending, why)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._finish_run, state)
            journal.close(remove=sink.committed_all)
            if state == "completed":
                shutil.rmtree(self.parts_dir, ignore_errors=True)
        self._log.info(
            "run_finished",
            state=state,
            rows_ok=self.stats.rows_ok,
            rows_failed=self.stats.rows_failed + self.stats.rows_input_error,
            rows_invalid=self.stats.rows_invalid,
            cost_usd=round(self.stats.cost_usd, 6),
        )
        return RunOutcome(self.run_id, state, self.stats, message)

    async def _execute(self, sink: ResultSink) -> None:
        await self._take_over_batches(sink)
        if self.mode is Mode.BATCH:
            await self._run_batch(sink)
        else:
            await self._run_online(sink, self.only)

    def _planner(
        self,
        mode: Mode,
        only: RowFilter | None,
        resend_batched: bool,
        overflow: Callable[[Request], bool] | None = None,
    ) -> Planner:
        planner = Planner(
            self.renderer,
            self._results(mode),
            lookup=self.store.results,
            only=only,
            resend_batched=resend_batched,
            context_window=self.job.request.context_tokens,
            look_up_first=self.resume
            or only is not None
            or self.store.results.has_results(self.prompt_hash),
            overflow=overflow,
        )
        self._planners.append(planner)
        return planner

    def _results(self, mode: Mode) -> ResultBuilder:
        request = self.job.request
        return ResultBuilder(
            job=self.job.name,
            run_id=self.run_id,
            prompt_hash=self.prompt_hash,
            provider=request.provider,
            model=request.model,
            mode=mode,
            clock=self._clock,
        )

    async def _run_online(
        self, sink: ResultSink, only: RowFilter | None, *, resend_batched: bool = False
    ) -> None:
        assert self.provider is not None
        job = self.job
        fallback = self._online_fallback(sink)
        overflow = None if fallback is None else fallback.overflow
        planner = self._planner(Mode.ONLINE, only, resend_batched, overflow)
        self._planner_now = planner
        budget = RunBudget(
            rate=self.rate,
            concurrency=job.limits.concurrency,
            budget_usd=job.limits.budget_usd,
            spent_usd=self.spent_before + self.stats.cost_usd,
        )
        executor: OnlineExecutor | RayExecutor = OnlineExecutor(
            provider=self.provider,
            budget=budget,
            sink=sink,
            results=planner.results,
            stats=self.stats,
            price=self.price,
            max_attempts=job.limits.max_attempts,
            url=self.base_url,
            extractor=self.extractor,
            invalid_retries=job.request.invalid_retries,
            context_window=job.request.context_tokens,
            warm_cache=self.renderer.warm_cache,
            on_stop=self.request_stop,
            fallback=fallback,
        )
        if self.engine is not None:  # [cluster] engine = "ray": the same requests, on workers
            executor = self.engine.executor(
                job=job,
                results=planner.results,
                sink=sink,
                stats=self.stats,
                price=self.price,
                budget=budget,
                url=self.base_url,
                warm_cache=self.renderer.warm_cache,
                on_stop=self.request_stop,
            )
        self._executors.append(executor)
        if self._stop_reason is not None:
            executor.stop()
        send, receive = anyio.create_memory_object_stream[Request](max(16, job.limits.concurrency))
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: feed(
                    planner, job.input, send, sink=sink, stats=self.stats, stopping=self._stopping
                )
            )
            await executor.run(receive)
            tg.cancel_scope.cancel()

    def _online_fallback(self, sink: ResultSink) -> Fallback | None:
        """The job's ``[request.fallback]``, made once per run: a second online executor on the
        fallback's provider, with its own rate budget and price."""
        spec = self.job.request.fallback
        if spec is None or self.fallback_provider is None:
            return None
        if self._fallback is not None:
            return self._fallback
        job = self.job
        request = replace(job.request, provider=spec.provider, model=spec.model)
        renderer = Renderer(request)
        results = ResultBuilder(
            job=job.name,
            run_id=self.run_id,
            prompt_hash=self.prompt_hash,
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
            provider=self.fallback_provider,
            budget=budget,
            sink=sink,
            results=results,
            stats=self.stats,
            price=price,
            max_attempts=limits.max_attempts,
            url=self.fallback_url or self.base_url,
            extractor=self.extractor,
            invalid_retries=request.invalid_retries,
            context_window=spec.context_tokens,
            on_stop=self.request_stop,
        )
        self._executors.append(executor)
        if self._stop_reason is not None:
            executor.stop()

        def switched(switch: Switch) -> None:
            after_s = round(time.monotonic() - self.stats.started, 2)
            self.stats.fallback_switches.append({**switch.as_dict(), "after_s": after_s})
            log_switch(switch, primary=job.request.model, fallback=spec.model)
            to = f"fallback {spec.model}" if switch.to == "fallback" else job.request.model
            self._notice(f"new rows go to {to}: {switch.why}")

        self._fallback = Fallback(
            spec=spec,
            executor=executor,
            budget=budget,
            renderer=renderer,
            primary=self.renderer,
            primary_window=job.request.context_tokens,
            price=price,
            breaker=Breaker(cooldown_s=spec.cooldown_s, on_switch=switched),
            budget_usd=limits.budget_usd is not None,
        )
        return self._fallback

    async def _run_batch(self, sink: ResultSink) -> None:
        assert self.batch_provider is not None
        job = self.job
        planner = self._planner(Mode.BATCH, self.only, False)
        self._planner_now = planner
        executor = self._batch_executor(sink, planner.results, planner.forget_rows)
        await executor.submit_prepared()
        send, receive = anyio.create_memory_object_stream[Request](64)
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: feed(
                    planner, job.input, send, sink=sink, stats=self.stats, stopping=self._stopping
                )
            )
            await executor.submit(receive)
            tg.cancel_scope.cancel()
        if executor.refused is not None:
            self._failure = executor.refused
            return
        if self._stopping():
            return
        if not self.wait:
            self._batches_left_open = True
            return
        await executor.collect()
        if self._stopping() or job.batch.on_unfinished == "record" or self.provider is None:
            return
        keys = await anyio.to_thread.run_sync(self.store.batches.unanswered_keys, self.run_id)
        if keys:
            self._log.info("batch_unfinished", rows=len(keys), action="online")
            self._notice(f"{len(keys):,} rows no batch answered: sending them online")
            await self._run_online(sink, RowFilter(frozenset(keys)), resend_batched=True)

    def _batch_executor(
        self,
        sink: ResultSink,
        results: ResultBuilder,
        on_recorded: Callable[[Iterable[PartRow]], None] | None = None,
    ) -> BatchExecutor:
        assert self.batch_provider is not None
        executor = BatchExecutor(
            provider=self.batch_provider,
            book=self.store.batches,
            sink=sink,
            results=results,
            stats=self.stats,
            price=self.batch_price,
            parts_dir=self.parts_dir,
            metadata={"run_id": self.run_id, "job": self.job.name},
            poll_interval_s=self.job.batch.poll_interval_s,
            record_unfinished=self.job.batch.on_unfinished == "record" or self.provider is None,
            max_attempts=self.job.limits.max_attempts,
            extractor=self.extractor,
            on_recorded=on_recorded,
            clock=self._clock,
        )
        self._executors.append(executor)
        if self._stop_reason is not None:
            executor.stop()
        return executor

    def _committed(self, results: Sequence[RowResult]) -> None:
        if self._planner_now is not None:
            self._planner_now.forget(results)

    # -- batches of earlier runs ---------------------------------------------------------------

    async def _take_over_batches(self, sink: ResultSink) -> None:
        """Rows in batches that earlier runs of this job submitted and nobody collected are
        never sent again. Batch mode takes the batches over and collects them with its own;
        an online run collects those that have ended and leaves the rest to be collected."""
        open_parts = self._open_parts
        if not open_parts:
            return
        if self.mode is Mode.ONLINE and self.batch_provider is None:
            for part in open_parts:
                self._notice(
                    _pending_line(
                        part, f"not sent again; 'pipeline resume {part['run_id']}' collects them"
                    )
                )
            return
        assert self.batch_provider is not None
        taken: list[dict[str, Any]] = []
        for part in open_parts:
            if self.mode is Mode.ONLINE:
                if part["batch_id"] is None:
                    self._notice(
                        _pending_line(
                            part,
                            f"never submitted; 'pipeline resume {part['run_id']}' submits them",
                        )
                    )
                    continue
                state = await self.batch_provider.poll(part["batch_id"])
                if not state.ended:
                    self._notice(
                        _pending_line(
                            {**part, "status": state.status},
                            f"not sent again; 'pipeline resume {part['run_id']}' collects them",
                        )
                    )
                    continue
            taken.append(part)
        for part in taken:
            new = await anyio.to_thread.run_sync(self._adopt, part)
            verb = "collecting it" if part["batch_id"] else "submitting it"
            self._notice(_pending_line(part, f"{verb} in this run (part {new})"))
        if taken and self.mode is Mode.ONLINE:
            await self._batch_executor(sink, self._results(Mode.BATCH)).collect()

    def _adopt(self, part: Mapping[str, Any]) -> int:
        """Move a part of a dead run into this one (file included); its run is marked."""
        old_run = part["run_id"]
        new = self.store.batches.adopt(old_run, part["part"], self.run_id)
        old_file = self.runs_dir / f"{old_run}.parts" / f"part-{part['part']:04d}.jsonl"
        if old_file.exists():
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            old_file.replace(self.parts_dir / f"part-{new:04d}.jsonl")
        state = f"stopped: its batches were taken over by run {self.run_id}"
        self.store.runs.update(old_run, state=state, refresh_counts=True)
        old_manifest = manifest_path(self.job.output.db, old_run)
        if old_manifest.exists():
            from .manifest import read_manifest

            write_manifest(old_manifest, {**read_manifest(old_manifest), "state": state})
        self._log.info("batch_taken_over", from_run=old_run, part=part["part"], new_part=new)
        return new

    # -- ledger and manifest -------------------------------------------------------------------

    def _open_run(self, files: list[Path]) -> None:
        """Steps 1 and 2: the run in the ledger, then what killed processes left behind."""
        recovered = replay_journals(
            self.runs_dir, db=self.db, write_missing=self.store.results.write_missing
        )
        for r in recovered:
            if r.inserted:
                self.stats.rows_recovered += r.inserted if r.run_id == self.run_id else 0
                self._notice(
                    f"recovered {r.inserted:,} answers of run {r.run_id} from its journal "
                    "(paid for, not yet committed when it stopped)"
                )
                if r.run_id != self.run_id and self.store.runs.get(r.run_id) is not None:
                    self.store.runs.update(r.run_id, refresh_counts=True)
        job = self.job
        if self.resume:
            self.store.runs.reopen(self.run_id)
            self.spent_before = self.store.results.counts(self.run_id)["cost_usd"] or 0.0
        self._manifest_base = self._static_manifest(files)
        if not self.resume:
            self.store.runs.start(
                RunRecord.for_job(
                    job,
                    run_id=self.run_id,
                    mode=self.mode,
                    prompt_hash=self.prompt_hash,
                    price_source=self.price.source if self.price else None,
                    manifest=self.manifest("running"),
                    base_url=self.base_url,
                )
            )
        self._open_parts = self.store.batches.open_parts(
            job=job.name, prompt_hash=self.prompt_hash, exclude_run=self.run_id
        )
        prices = {"online": self.price}
        if self.mode is Mode.BATCH or self._open_parts:
            prices["batch"] = self.batch_price
        self.store.runs.record_prices(self.run_id, prices)
        if self.extractor is not None:
            self.store.queries.create_extract_view(job.name, self.extractor.columns)
        self._log.info(
            "run_started",
            input=job.input.path,
            db=job.output.db,
            prompt_hash=self.prompt_hash,
            resume=self.resume,
        )
        write_manifest(self.manifest_path, self.manifest("running"))

    def _static_manifest(self, files: list[Path]) -> dict[str, Any]:
        job = self.job
        if self.resume and self._given_manifest:
            base = dict(self._given_manifest)
            base["resumed_at"] = [*base.get("resumed_at", []), self._clock()]
            return base
        return {
            "run_id": self.run_id,
            "job": {"name": job.name, "path": job.path, "hash": job.job_hash, "text": job.text},
            "provider": job.request.provider,
            "model": job.request.model,
            "mode": str(self.mode),
            "base_url": self.base_url,
            "db": self.db,
            "input_path": job.input.path,
            "inputs": fingerprints(files),
            "price_source": self.price.source if self.price else None,
            "started_at": self._clock(),
            "rerun_of": None if self.only is None else "failed rows",
            "resume_command": resume_command(self.run_id, self.db),
            "batches": [],
            **self._given_manifest,
        }

    def manifest(self, state: str) -> dict[str, Any]:
        """The run's manifest now: its static part plus live figures."""
        s = self.stats
        out = {
            **self._manifest_base,
            "run_id": self.run_id,
            "state": state,
            "pid": os.getpid(),  # 'pipeline status' tells a live run from a killed one by it
            "updated_at": self._clock(),
            "prompt_hash": self.prompt_hash,
            "budget_usd": self.job.limits.budget_usd,
            "counts": s.counts(),
            "tokens": {"input": s.input_tokens, "output": s.output_tokens},
            "cost_usd": self.spent_before + s.cost_usd,
        }
        fallback = self.job.request.fallback
        if fallback is not None:
            out["fallback"] = {
                "provider": fallback.provider,
                "model": fallback.model,
                "when": list(fallback.when),
                "rows": s.rows_fallback,
                "switches": list(s.fallback_switches),
            }
        documents = self._documents()
        if documents is not None:
            out["documents"] = documents
        if self.mode is Mode.BATCH or self._manifest_base.get("batches"):
            out["batches"] = [
                {k: p[k] for k in ("part", "batch_id", "input_file_id", "status", "requests")}
                for p in self.store.batches.parts(self.run_id)
            ]
        return out

    def _documents(self) -> dict[str, int] | None:
        """Rows sent with attachments and their pages (an image is a page), this process's
        and, for a resumed run, the earlier ones'; None for a run that sent no file."""
        before = self._manifest_base.get("documents") if self.resume else None
        rows = sum(p.attached_rows for p in self._planners)
        pages = sum(p.attached_pages for p in self._planners)
        if isinstance(before, dict):
            rows += int(before.get("rows", 0))
            pages += int(before.get("pages", 0))
        return {"rows": rows, "pages": pages} if rows else None

    async def _manifest_loop(self) -> None:
        """Keep the manifest file current, for ``pipeline status`` in another terminal."""
        while True:
            await anyio.sleep(MANIFEST_INTERVAL_S)
            await anyio.to_thread.run_sync(
                lambda: write_manifest(self.manifest_path, self.manifest("running"))
            )

    async def _grace_watch(self, scope: anyio.CancelScope) -> None:
        """Once a stop is requested, give in-flight requests ``grace_s``, then cancel them."""
        await self._stop_event.wait()
        await anyio.sleep(self.grace_s)
        scope.cancel()

    def _finish_run(self, state: str) -> None:
        manifest = self.manifest(state)
        write_manifest(self.manifest_path, manifest)
        # Counts and cost come from what was committed: a NULL-priced run stays NULL, not $0.
        self.store.runs.finish(self.run_id, state, finished_at=self._clock())
        self.store.runs.update(self.run_id, manifest=manifest)

    def _fatal(self) -> FatalProviderError | None:
        return next(
            (
                e.fatal
                for e in self._executors
                if isinstance(e, OnlineExecutor | RayExecutor) and e.fatal
            ),
            None,
        )


def check_budget(job: Job, *, price: Price | None, force: bool = False) -> None:
    """Refuse a run of ``job`` whose worst case already exceeds its ``budget_usd``
    (``ConfigError``), unless ``force``; a budget without a known ``price`` (the job's, in its
    mode) is refused either way. The worst case is ``pipeline estimate``'s, over the rows still
    to send; the job's database, if there is one, is only read."""
    from ..estimate import estimate_job
    from ..job.pricing import format_usd

    budget = job.limits.budget_usd
    if budget is None:
        return
    if price is None:
        raise ConfigError(
            f"budget_usd is set but no price is known for {job.request.provider} model "
            f"{job.request.model!r}, so the budget cannot be kept; add a [pricing] table "
            "(input_mtok, output_mtok) or remove budget_usd",
            path=job.path,
            key="limits.budget_usd",
        )
    if force:
        return
    worst = estimate_job(job).cost_worst
    if worst is not None and worst > budget:
        raise ConfigError(
            f"the worst case for the rows still to send is about {format_usd(worst)} (every "
            f"answer at max_tokens; see 'pipeline estimate'), over budget_usd "
            f"{format_usd(budget)}; raise the budget, or pass --force to run until the "
            "budget is spent",
            path=job.path,
            key="limits.budget_usd",
        )


def _pending_line(part: Mapping[str, Any], what: str) -> str:
    batch = part["batch_id"] or f"part {part['part']} (prepared)"
    return (
        f"{part['requests']:,} rows are in batch {batch} of run {part['run_id']}, "
        f"still {part['status']}: {what}"
    )
