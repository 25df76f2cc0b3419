"""A session is one run, from its first row to its last commit.

::

    RunSession.run()
      1. open       the run in the ledger (or reopened), its prices, its schema view; the
                    journals killed processes left next to the database replayed first
      2. batches    rows in open batches of earlier runs of this job (``takeover.py``): adopted
                    (batch mode), or collected when finished and never sent again (online)
      3. execute    planner ─▶ online executor, or batch executor (then the rows no batch
                    answered, online) ─▶ sink (journal, then DuckDB); executors from
                    ``executors.py``
      4. finish     state, counts and cost in the ledger; the manifest; the journal removed

``pipeline.run`` makes the session (the store, the providers, the engine, the source of rows)
and drives it; the session owns the run's policy: the manifest (``Manifest``, rewritten every
2 s for ``pipeline status``), the batch to online pass, and stopping (``request_stop``: stop
launching, give requests in flight ``grace_s``, then cancel them; ``cancel_now``: at once).
Executors never touch the ledger or the manifest; the session never touches HTTP.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import anyio
import structlog

from ..errors import PipelineError, first_pipeline_error, io_error
from ..job import Job
from ..job.pricing import Price, price_for
from ..limits import RateBudget
from ..plan import Planner, RowFilter
from ..records import Mode, Request, RowResult, RunState
from ..render import Renderer
from ..sources import Fingerprint, RowSource
from ..store import RunRecord, Store
from .cluster import RayEngine
from .executors import Endpoints, Executors
from .feed import feed
from .journal import Journal, replay_journals
from .manifest import ClusterRecord, JobRecord, Manifest, manifest_path, runs_dir, write_manifest
from .outcome import RunOutcome
from .sink import ResultSink
from .stats import RunStats, new_run_id
from .takeover import Takeover

__all__ = ["MANIFEST_INTERVAL_S", "RunSession"]

log = structlog.get_logger("pipeline.session")

MANIFEST_INTERVAL_S = 2.0


class RunSession:
    """One run of a job (see the module docstring); ``await run()`` once.

    ``source``: the rows (the job's files, or rows from Python); ``inputs``: their
    fingerprints, as the run's survey found them. ``resumed``: the manifest of the run being
    resumed (its run id is this run's). ``only``: send only the rows it admits (a rerun).
    ``wait``: in batch mode, wait for the batches and collect them (else submit and return).
    ``fake``: the requests go to the built-in fake provider (the manifest says so).
    ``remember_keys``: keep every row's key for ``RunOutcome.results()`` (rows that cannot be
    read again). ``notice`` hears one-line messages meant for the person running the job.
    """

    def __init__(
        self,
        job: Job,
        *,
        store: Store,
        endpoints: Endpoints,
        source: RowSource,
        inputs: Sequence[Fingerprint] = (),
        run_id: str | None = None,
        resumed: Manifest | None = None,
        only: RowFilter | None = None,
        wait: bool = True,
        fake: bool = False,
        engine: RayEngine | None = None,
        rate: RateBudget | None = None,
        grace_s: float = 10.0,
        remember_keys: bool = False,
        notice: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.job = job
        self.mode = Mode(job.request.mode)
        if self.mode is Mode.ONLINE and endpoints.online is None and engine is None:
            raise ValueError("an online run needs an online provider")
        if self.mode is Mode.BATCH and endpoints.batch is None:
            raise ValueError("a batch run needs the batch endpoints")
        self.store = store
        self.endpoints = endpoints
        self.source = source
        self.inputs = tuple(inputs)
        self.resumed = resumed
        self.run_id = resumed.run_id if resumed is not None else run_id or new_run_id()
        self.only = only
        self.wait = wait
        self.fake = fake
        self.engine = engine
        self.grace_s = grace_s
        self._notice = notice or (lambda message: None)
        self._clock = clock
        self.price: Price | None = price_for(job)
        self.batch_price: Price | None = price_for(job, batch=True)
        self.renderer = Renderer(job.request)
        self.db = str(Path(job.output.db).resolve())
        self.runs_dir = runs_dir(job.output.db)
        self.manifest_path = manifest_path(job.output.db, self.run_id)
        self.stats = RunStats()
        self.spent_before = 0.0  # what earlier processes of this run spent
        self.keys: list[tuple[str, str, int]] | None = [] if remember_keys else None
        self._stop_reason: str | None = None
        self._stop_event = anyio.Event()
        self._work_scope: anyio.CancelScope | None = None
        self._failure: str | None = None
        self._batches_left_open = False
        self._planner_now: Planner | None = None
        self._planners: list[Planner] = []  # for the documents and pages sent (manifest)
        self._base: Manifest | None = None
        self._takeover: Takeover | None = None
        self._final_cost: float | None = None  # what the database holds when the run ends
        # The journal opens its first segment with the first answer, after _open_run replayed
        # what killed processes left (its numbering goes on from theirs).
        self.journal = Journal(self.runs_dir, run_id=self.run_id, db=self.db)
        self.sink = ResultSink(
            store.results.write_lines,
            stats=self.stats,
            journal=self.journal,
            on_commit=self._committed,
        )
        self.executors = Executors(
            job,
            run_id=self.run_id,
            renderer=self.renderer,
            endpoints=endpoints,
            store=store,
            sink=self.sink,
            stats=self.stats,
            price=self.price,
            batch_price=self.batch_price,
            parts_dir=self.runs_dir / f"{self.run_id}.parts",
            on_stop=self.request_stop,
            notice=self._notice,
            engine=engine,
            rate=rate,
            clock=clock,
        )
        self._log = log.bind(
            job=job.name, run_id=self.run_id, provider=job.request.provider, model=job.request.model
        )

    @property
    def prompt_hash(self) -> str:
        return self.renderer.prompt_hash

    @property
    def resume_command(self) -> str:
        return f"pipeline resume {self.run_id} --db {self.db}"

    # -- stopping ------------------------------------------------------------------------------

    def request_stop(self, reason: str = "signal") -> None:
        """Stop launching requests; in-flight ones get ``grace_s`` to finish, then the run ends
        ``stopped: <reason>``."""
        if self._stop_reason is not None:
            return
        self._stop_reason = reason
        self.executors.stop()
        self._stop_event.set()
        self._log.warning("stop_requested", reason=reason, grace_s=self.grace_s)

    def cancel_now(self) -> None:
        """Abandon in-flight requests at once (a second Ctrl-C). Committed rows stay committed."""
        if self._stop_reason is None:
            self._stop_reason = "signal"
        self.executors.stop()
        if self._work_scope is not None:
            self._work_scope.cancel()

    def _stopping(self) -> bool:
        return self._stop_reason is not None or self.executors.stopping

    # -- the run -------------------------------------------------------------------------------

    async def run(self) -> RunOutcome:
        """Run the job; the outcome says how it ended. A ``PipelineError`` (the database
        refused a write, say) ends the run ``failed`` and is raised."""
        await anyio.to_thread.run_sync(self._open_run)
        state, why, message = RunState.COMPLETED, None, None
        journal = self.journal
        sink = self.sink
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(sink.run)
                try:
                    with anyio.CancelScope() as scope:
                        self._work_scope = scope
                        async with anyio.create_task_group() as watch:
                            watch.start_soon(self._grace_watch, scope)
                            watch.start_soon(self._manifest_loop)
                            await self._execute()
                            watch.cancel_scope.cancel()
                finally:
                    sink.close()
        except BaseExceptionGroup as group:
            # A task failed (e.g. DuckDB refused a write): one clear error, not a traceback.
            error = first_pipeline_error(group)
            state, why = RunState.FAILED, str(error) if error else "interrupted"
            if error is None:
                raise
            raise error from group
        except PipelineError as error:
            state, why = RunState.FAILED, str(error)
            raise
        except OSError as exc:  # a full disk under the journal or the manifest
            io = io_error(exc)
            state, why = RunState.FAILED, str(io)
            raise io from exc
        except BaseException:
            state, why = RunState.FAILED, "interrupted"
            raise
        finally:
            fatal = self.executors.fatal()
            if fatal is not None:
                state, why, message = RunState.FAILED, str(fatal), str(fatal)
            elif self._failure is not None:
                state, why, message = RunState.FAILED, self._failure, self._failure
            elif state is RunState.COMPLETED and self._stop_reason is not None:
                state, why = RunState.STOPPED, self._stop_reason
            elif state is RunState.COMPLETED and self._batches_left_open:
                state, why = RunState.STOPPED, "batches submitted; pipeline resume collects them"
            self.stats.end()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._finish_run, state, why)
            journal.close(remove=sink.committed_all)
            if state is RunState.COMPLETED:
                shutil.rmtree(self.executors.parts_dir, ignore_errors=True)
        self._log.info(
            "run_finished",
            state=state.value,
            reason=why,
            rows_ok=self.stats.rows_ok,
            rows_failed=self.stats.rows_failed + self.stats.rows_input_error,
            rows_invalid=self.stats.rows_invalid,
            cost_usd=round(self.stats.cost_usd, 6),
        )
        return RunOutcome(
            run_id=self.run_id,
            state=state,
            reason=why,
            stats=self.stats,
            message=message,
            cost_usd=self._final_cost,
            db=Path(self.db),
            manifest_path=self.manifest_path,
            job=self.job,
            source=self.source if self.source.reiterable else None,
            keys=self.keys,
        )

    async def _execute(self) -> None:
        assert self._takeover is not None
        await self._takeover.run(self._collect_taken)
        if self.mode is Mode.BATCH:
            await self._run_batch()
        else:
            await self._run_online(self.only)

    async def _collect_taken(self) -> None:
        """An online run collects the finished batches it took over."""
        await self.executors.batch(self.executors.results(Mode.BATCH)).collect()

    def _planner(self, mode: Mode, only: RowFilter | None, resend_batched: bool) -> Planner:
        fallback = self.executors.fallback() if mode is Mode.ONLINE else None
        planner = Planner(
            self.renderer,
            self.executors.results(mode),
            lookup=self.store.results,
            only=only,
            resend_batched=resend_batched,
            context_window=self.job.request.context_tokens,
            look_up_first=self.resumed is not None
            or only is not None
            or self.store.results.has_results(self.prompt_hash),
            overflow=None if fallback is None else fallback.overflow,
        )
        self._planners.append(planner)
        self._planner_now = planner
        return planner

    async def _feed(self, planner: Planner, send: anyio.abc.ObjectSendStream[Request]) -> None:
        await feed(
            planner,
            self.source,
            send,  # type: ignore[arg-type]
            sink=self.sink,
            stats=self.stats,
            stopping=self._stopping,
            keys=self.keys,
        )

    async def _run_online(self, only: RowFilter | None, *, resend_batched: bool = False) -> None:
        planner = self._planner(Mode.ONLINE, only, resend_batched)
        executor = self.executors.online(
            planner.results, spent_usd=self.spent_before + self.stats.cost_usd
        )
        concurrency = self.job.limits.concurrency
        send, receive = anyio.create_memory_object_stream[Request](max(16, concurrency))
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._feed, planner, send)
            await executor.run(receive)
            tg.cancel_scope.cancel()

    async def _run_batch(self) -> None:
        planner = self._planner(Mode.BATCH, self.only, False)
        executor = self.executors.batch(planner.results, planner.forget_rows)
        await executor.submit_prepared()
        send, receive = anyio.create_memory_object_stream[Request](64)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._feed, planner, send)
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
        job = self.job
        if self._stopping() or job.batch.on_unfinished == "record" or self.endpoints.online is None:
            return
        keys = await anyio.to_thread.run_sync(self.store.batches.unanswered_keys, self.run_id)
        if keys:
            self._log.info("batch_unfinished", rows=len(keys), action="online")
            self._notice(f"{len(keys):,} rows no batch answered: sending them online")
            await self._run_online(RowFilter(frozenset(keys)), resend_batched=True)

    def _committed(self, results: Sequence[RowResult]) -> None:
        if self._planner_now is not None:
            self._planner_now.forget(results)

    # -- ledger and manifest -------------------------------------------------------------------

    def _open_run(self) -> None:
        """The run in the ledger, after what killed processes left behind is recorded."""
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
        if self.resumed is not None:
            self.store.runs.reopen(self.run_id)
            self.spent_before = self.store.results.counts(self.run_id)["cost_usd"] or 0.0
        self._base = self._static_manifest()
        if self.resumed is None:
            self.store.runs.start(
                RunRecord.for_job(
                    job,
                    run_id=self.run_id,
                    mode=self.mode,
                    prompt_hash=self.prompt_hash,
                    price_source=self.price.source if self.price else None,
                    manifest=self.manifest().to_dict(),
                    base_url=self.endpoints.base_url,
                )
            )
        open_parts = self.store.batches.open_parts(
            job=job.name, prompt_hash=self.prompt_hash, exclude_run=self.run_id
        )
        self._takeover = Takeover(
            run_id=self.run_id,
            mode=self.mode,
            store=self.store,
            db=self.db,
            runs_dir=self.runs_dir,
            parts=open_parts,
            provider=self.endpoints.batch,
            notice=self._notice,
        )
        prices = {"online": self.price}
        if self.mode is Mode.BATCH or open_parts:
            prices["batch"] = self.batch_price
        self.store.runs.record_prices(self.run_id, prices)
        extractor = self.executors.extractor
        if extractor is not None:
            self.store.queries.create_extract_view(job.name, extractor.columns)
        self._log.info(
            "run_started",
            input=self.source.path,
            db=job.output.db,
            prompt_hash=self.prompt_hash,
            resume=self.resumed is not None,
        )
        write_manifest(self.manifest_path, self.manifest())

    def _static_manifest(self) -> Manifest:
        if self.resumed is not None:
            return replace(self.resumed, resumed_at=(*self.resumed.resumed_at, self._clock()))
        job = self.job
        cluster = None
        if self.engine is not None:
            spec = job.cluster
            cluster = ClusterRecord(engine="ray", workers=spec.workers, address=spec.address)
        return Manifest(
            run_id=self.run_id,
            job=JobRecord(
                name=job.name,
                path=job.path,
                hash=job.job_hash,
                text=job.text,
                format=job.text_format,
            ),
            provider=job.request.provider,
            model=job.request.model,
            mode=str(self.mode),
            db=self.db,
            input_path=self.source.path,
            resume_command=f"pipeline resume {self.run_id} --db {self.db}",
            started_at=self._clock(),
            base_url=None if self.fake else self.endpoints.base_url,
            inputs=self.inputs,
            price_source=self.price.source if self.price else None,
            fake=self.fake,
            rerun_of=None if self.only is None else "failed rows",
            cluster=cluster,
        )

    def manifest(self, state: RunState = RunState.RUNNING, reason: str | None = None) -> Manifest:
        """The run's manifest now: its static part plus live figures."""
        assert self._base is not None
        s = self.stats
        fallback = self.job.request.fallback
        batches = self._base.batches
        if self.mode is Mode.BATCH or batches:
            batches = tuple(
                {k: p[k] for k in ("part", "batch_id", "input_file_id", "status", "requests")}
                for p in self.store.batches.parts(self.run_id)
            )
        return self._base.live(
            state=state,
            reason=reason,
            pid=os.getpid(),
            updated_at=self._clock(),
            prompt_hash=self.prompt_hash,
            budget_usd=self.job.limits.budget_usd,
            counts=s.counts(),
            tokens={"input": s.input_tokens, "output": s.output_tokens},
            cost_usd=self.spent_before + s.cost_usd,
            fallback=None
            if fallback is None
            else {
                "provider": fallback.provider,
                "model": fallback.model,
                "when": list(fallback.when),
                "rows": s.rows_fallback,
                "switches": list(s.fallback_switches),
            },
            documents=self._documents(),
            batches=batches,
        )

    def _documents(self) -> dict[str, int] | None:
        """Rows sent with attachments and their pages (an image is a page), this process's
        and, for a resumed run, the earlier ones'; None for a run that sent no file."""
        before = self.resumed.documents if self.resumed is not None else None
        rows = sum(p.attached_rows for p in self._planners)
        pages = sum(p.attached_pages for p in self._planners)
        if before:
            rows += int(before.get("rows", 0))
            pages += int(before.get("pages", 0))
        return {"rows": rows, "pages": pages} if rows else None

    async def _manifest_loop(self) -> None:
        """Keep the manifest file current, for ``pipeline status`` in another terminal."""
        while True:
            await anyio.sleep(MANIFEST_INTERVAL_S)
            await anyio.to_thread.run_sync(
                lambda: write_manifest(self.manifest_path, self.manifest())
            )

    async def _grace_watch(self, scope: anyio.CancelScope) -> None:
        """Once a stop is requested, give in-flight requests ``grace_s``, then cancel them."""
        await self._stop_event.wait()
        await anyio.sleep(self.grace_s)
        scope.cancel()

    def _finish_run(self, state: RunState, reason: str | None) -> None:
        """The run's end in the manifest and the ledger, as far as the disk lets it be written:
        a failure here (a full disk) is logged, and the error that ended the run stays the
        one reported."""
        manifest = self.manifest(state, reason)
        try:
            write_manifest(self.manifest_path, manifest)
        except OSError as exc:
            self._log.error("manifest_not_written", path=str(self.manifest_path), error=str(exc))
        try:
            # Counts and cost come from what was committed: a NULL-priced run stays NULL.
            self.store.runs.finish(self.run_id, manifest.status, finished_at=self._clock())
            self.store.runs.update(self.run_id, manifest=manifest.to_dict())
            self._final_cost = self.store.results.counts(self.run_id)["cost_usd"]
        except PipelineError as exc:
            self._log.error("run_end_not_recorded", error=str(exc))
