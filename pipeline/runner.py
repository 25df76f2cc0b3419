"""The online job runner: wires sources → render → limits → providers → store.

Shape of a run (every task lives in a task group; nothing is detached)::

    reader ──(bounded stream)──▶ N workers ──(bounded stream)──▶ writer ──▶ DuckDB
    reads a chunk in a thread,   acquire budget, send,           batches of ≤ 1,000 rows,
    renders, drops rows already  retry transient errors,         one transaction each,
    done for this request        record the final outcome        final flush shielded

The reader never runs more than one chunk plus the stream buffer ahead of the workers, so memory
does not grow with the input. A row counts as done only once its result is committed; a run
that dies leaves every uncommitted row to be sent again by the next run of the same job, and
every committed ``ok`` row is skipped by it.

A fatal provider error (bad key, no quota) cancels the run at once. ``request_stop()`` (the CLI
calls it on SIGINT/SIGTERM) stops launching new requests, lets those in flight finish for a short
grace period, then flushes and returns.

A job with an answer schema (``[request].schema``) has every answer checked
(``pipeline.extract``): an invalid one gets up to ``invalid_retries`` follow-up turns saying what
was wrong, then the row is recorded ``invalid``; a truncated one is recorded ``invalid`` at once.
When the job's stable prompt prefix is long enough to be cached (``Renderer.warm_cache``), the
first request is sent alone, so that the others read the provider's prompt cache instead of all
writing it at the same time.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from .config import Job
from .cost import Price, cost_usd
from .errors import FatalProviderError, InputError, PipelineError, ProviderError, RateLimitError
from .extract import Extractor, Verdict, followup_prompt
from .limits import RateBudget
from .manifest import write_manifest
from .providers import Provider
from .records import BadRow, Request, Row, RowResult, Usage
from .render import MESSAGE_OVERHEAD_TOKENS, Renderer, estimate_tokens, request_key
from .retry import backoff_s
from .sources import iter_row_chunks
from .store import RunRecord, Store

__all__ = ["RowFilter", "RunOutcome", "RunStats", "Runner", "new_run_id"]

log = structlog.get_logger("pipeline.runner")

# A kill -9 loses (and a resume pays again for) what was answered but not yet committed: at most
# the requests in flight, the results buffer and one batch. Small batches keep that small.
WRITE_BATCH = 256
WRITE_INTERVAL_S = 0.25
RESULTS_BUFFER = 256
READ_CHUNK = 4096  # rows read, rendered and checked against the store at a time
MANIFEST_INTERVAL_S = 2.0
_NO_USAGE = Usage()


def _first_pipeline_error(group: BaseExceptionGroup[BaseException]) -> PipelineError | None:
    for exc in group.exceptions:
        if isinstance(exc, PipelineError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_pipeline_error(exc)
            if found is not None:
                return found
    return None


def new_run_id() -> str:
    """Sortable and unique: UTC start time plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass(frozen=True, slots=True)
class RowFilter:
    """Only these rows are sent (``pipeline rerun --failed``): request keys that failed, and
    the (source, line) of input errors, whose keys change once the input is fixed."""

    keys: frozenset[str] = frozenset()
    lines: frozenset[tuple[str, int]] = frozenset()

    def admits(self, key: str, source: str, line: int) -> bool:
        return key in self.keys or (source, line) in self.lines


@dataclass(slots=True)
class RunStats:
    """Live counters of a run; the progress display reads them, the summary prints them."""

    rows_read: int = 0
    rows_skipped: int = 0  # already done (or, for a rerun, not selected)
    rows_ok: int = 0
    rows_failed: int = 0
    rows_input_error: int = 0
    rows_invalid: int = 0  # answers that did not match the job's schema
    rows_committed: int = 0
    requests_sent: int = 0
    retries: int = 0
    rate_limited: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def counts(self) -> dict[str, int]:
        """The row and request counters, as a run's manifest records them."""
        return {
            "read": self.rows_read,
            "skipped": self.rows_skipped,
            "ok": self.rows_ok,
            "failed": self.rows_failed,
            "input_error": self.rows_input_error,
            "invalid": self.rows_invalid,
            "committed": self.rows_committed,
            "requests": self.requests_sent,
            "rate_limited": self.rate_limited,
        }

    @property
    def rows_done(self) -> int:
        return self.rows_ok + self.rows_failed + self.rows_input_error + self.rows_invalid

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True, slots=True)
class RunOutcome:
    run_id: str
    state: str  # 'completed' | 'stopped: signal' | 'stopped: budget' | 'failed: <why>'
    stats: RunStats
    message: str | None = None


class Runner:
    """Runs one job once. Create it with the collaborators; ``await run()``."""

    def __init__(
        self,
        job: Job,
        *,
        store: Store,
        provider: Provider,
        budget: RateBudget,
        price: Price | None,
        base_url: str,
        run_id: str | None = None,
        resume: bool = False,
        only: RowFilter | None = None,
        budget_usd: float | None = None,
        spent_usd: float = 0.0,
        manifest_path: Path | None = None,
        manifest: Mapping[str, Any] | None = None,
        context_window: int | None = None,
        grace_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``resume``: continue ``run_id`` (its recorded rows are not sent again). ``only``:
        send only the rows it admits. ``budget_usd``: stop launching before the cost committed
        (``spent_usd`` of it from earlier parts of the run) plus the worst case of what is in
        flight would pass it. ``manifest``: the static part of the run's manifest, rewritten
        with live counts at ``manifest_path``."""
        self.job = job
        self.store = store
        self.provider = provider
        self.budget = budget
        self.price = price
        self.base_url = base_url
        self.run_id = run_id or new_run_id()
        self.grace_s = grace_s
        self.resume = resume
        self.only = only
        self.budget_usd = budget_usd
        self.spent_usd = spent_usd
        self.manifest_path = manifest_path
        self._manifest_base = dict(manifest or {})
        self.context_window = context_window
        self.stats = RunStats()
        self._inflight_worst_usd = 0.0
        self._stop_reason = "signal"
        self._look_up = True  # whether rows may be done already (see _reader)
        self._clock = clock
        self._renderer = Renderer(job.request)
        schema = job.request.schema
        self._extractor = None if schema is None else Extractor(schema)
        # Set once the first request of a run whose prefix can be cached has been answered.
        self._warm: anyio.Event | None = anyio.Event() if self._renderer.warm_cache else None
        self._warm_leader = False
        self._stopping = False
        self._fatal: FatalProviderError | None = None
        self._work_scope: anyio.CancelScope | None = None
        self._stop_event = anyio.Event()
        self._log = log.bind(
            job=job.name, run_id=self.run_id, provider=job.request.provider, model=job.request.model
        )

    @property
    def prompt_hash(self) -> str:
        return self._renderer.prompt_hash

    def request_stop(self, reason: str = "signal") -> None:
        """Stop launching requests; in-flight ones get ``grace_s`` to finish, then the run ends."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_reason = reason
        self._stop_event.set()
        self._log.warning("stop_requested", reason=reason, grace_s=self.grace_s)

    def cancel_now(self) -> None:
        """Abandon in-flight requests at once (a second Ctrl-C). Committed rows stay committed."""
        self._stopping = True
        if self._work_scope is not None:
            self._work_scope.cancel()

    async def run(self) -> RunOutcome:
        job = self.job
        if self.resume:
            self.store.runs.reopen(self.run_id)
        else:
            self.store.runs.start(
                RunRecord(
                    run_id=self.run_id,
                    job=job.name,
                    job_path=job.path,
                    job_hash=job.job_hash,
                    job_text=job.text,
                    prompt_hash=self.prompt_hash,
                    provider=job.request.provider,
                    model=job.request.model,
                    mode="online",
                    base_url=self.base_url,
                    state="running",
                    started_at=self._clock(),
                    price_source=self.price.source if self.price else None,
                    manifest=self.manifest("running"),
                )
            )
        if self._extractor is not None:
            self.store.queries.create_extract_view(job.name, self._extractor.columns)
        self._log.info(
            "run_started",
            input=job.input.path,
            db=job.output.db,
            prompt_hash=self.prompt_hash,
            resume=self.resume,
        )
        send_work, receive_work = anyio.create_memory_object_stream[Request](
            max(16, job.limits.concurrency)
        )
        send_results, receive_results = anyio.create_memory_object_stream[RowResult](RESULTS_BUFFER)
        state = "completed"
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self._writer, receive_results)
                async with send_results:
                    with anyio.CancelScope() as scope:
                        self._work_scope = scope
                        async with anyio.create_task_group() as watch:
                            watch.start_soon(self._grace_watch, scope)
                            watch.start_soon(self._manifest_loop)
                            async with anyio.create_task_group() as tg:
                                tg.start_soon(self._reader, send_work, send_results.clone())
                                for _ in range(job.limits.concurrency):
                                    tg.start_soon(
                                        self._worker, receive_work.clone(), send_results.clone()
                                    )
                                receive_work.close()
                            watch.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # A task failed (e.g. DuckDB refused a write): one clear error, not a traceback.
            error = _first_pipeline_error(group)
            state = f"failed: {error}" if error else "failed: interrupted"
            if error is None:
                raise
            raise error from group
        except BaseException:
            state = "failed: interrupted"
            raise
        finally:
            if self._fatal is not None:
                state = f"failed: {self._fatal}"
            elif self._stopping and state == "completed":
                state = f"stopped: {self._stop_reason}"
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._finish_run, state)
        self._log.info(
            "run_finished",
            state=state,
            rows_ok=self.stats.rows_ok,
            rows_failed=self.stats.rows_failed + self.stats.rows_input_error,
            rows_invalid=self.stats.rows_invalid,
            cost_usd=round(self.stats.cost_usd, 6),
        )
        return RunOutcome(self.run_id, state, self.stats, str(self._fatal) if self._fatal else None)

    def manifest(self, state: str) -> dict[str, Any]:
        """The run's manifest now: the static part given at construction plus live figures."""
        s = self.stats
        return {
            **self._manifest_base,
            "run_id": self.run_id,
            "state": state,
            "pid": os.getpid(),
            "updated_at": self._clock(),
            "prompt_hash": self.prompt_hash,
            "budget_usd": self.budget_usd,
            "counts": s.counts(),
            "tokens": {"input": s.input_tokens, "output": s.output_tokens},
            "cost_usd": self.spent_usd + s.cost_usd,
        }

    def _write_manifest(self, state: str) -> None:
        if self.manifest_path is not None:
            write_manifest(self.manifest_path, self.manifest(state))

    async def _manifest_loop(self) -> None:
        """Keep the manifest file current, for ``pipeline status`` in another terminal."""
        while True:
            await anyio.to_thread.run_sync(self._write_manifest, "running")
            await anyio.sleep(MANIFEST_INTERVAL_S)

    def _finish_run(self, state: str) -> None:
        self._write_manifest(state)
        # Counts and cost come from what was committed: a NULL-priced run stays NULL, not $0.
        self.store.runs.finish(self.run_id, state, finished_at=self._clock())
        self.store.runs.update(self.run_id, manifest=self.manifest(state))

    # -- tasks ----------------------------------------------------------------------------------

    async def _grace_watch(self, scope: anyio.CancelScope) -> None:
        """Once a stop is requested, give in-flight requests ``grace_s``, then cancel them."""
        await self._stop_event.wait()
        await anyio.sleep(self.grace_s)
        scope.cancel()

    async def _reader(
        self, work: ObjectSendStream[Request], results: ObjectSendStream[RowResult]
    ) -> None:
        # Reading the next chunk (Python, in one thread) overlaps with looking up the current
        # one's finished rows (DuckDB, which releases the GIL, in another).
        send_chunks, receive_chunks = anyio.create_memory_object_stream[list[Row | BadRow]](1)
        self._look_up = self.resume or await anyio.to_thread.run_sync(
            self.store.results.has_results, self.prompt_hash
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read_chunks, send_chunks)
            async with work, results, receive_chunks:
                async for chunk in receive_chunks:
                    await self._dispatch(chunk, work, results)
                    if self._stopping:
                        break
            tg.cancel_scope.cancel()
        if self._stopping:
            self._log.info("reader_stopped", rows_read=self.stats.rows_read)

    async def _read_chunks(self, chunks_out: ObjectSendStream[list[Row | BadRow]]) -> None:
        chunks: Iterator[list[Row | BadRow]] = iter_row_chunks(
            self.job.input, chunk_size=READ_CHUNK
        )
        async with chunks_out:
            while not self._stopping:
                chunk = await anyio.to_thread.run_sync(next, chunks, None)
                if chunk is None:
                    return
                await chunks_out.send(chunk)

    async def _dispatch(
        self,
        chunk: list[Row | BadRow],
        work: ObjectSendStream[Request],
        results: ObjectSendStream[RowResult],
    ) -> None:
        """Render a chunk, drop what is done, send requests to the workers and input errors
        to the writer, in input order."""
        ph = self.prompt_hash
        self.stats.rows_read += len(chunk)
        keyed: list[tuple[str, Request | RowResult]] = []
        for item in chunk:
            if isinstance(item, BadRow):
                key = request_key(item.row_id, ph)
                keyed.append(
                    (
                        key,
                        self._input_error(
                            key, item.row_id, item.error_type, item.error, item.source, item.line
                        ),
                    )
                )
                continue
            try:
                request = self._renderer.render(item)
            except InputError as exc:
                key = request_key(item.row_id, ph)
                keyed.append(
                    (
                        key,
                        self._input_error(
                            key, item.row_id, exc.error_type, str(exc), item.source, item.line
                        ),
                    )
                )
                continue
            if self.context_window and request.est_total_tokens > self.context_window:
                keyed.append((request.request_key, self._too_long(request)))
                continue
            keyed.append((request.request_key, request))
        done: set[str] = set()
        if self._look_up and keyed:
            done = await anyio.to_thread.run_sync(self._done_keys, chunk, keyed)
        for key, thing in keyed:
            if key in done or (
                self.only is not None and not self.only.admits(key, thing.source, thing.line)
            ):
                self.stats.rows_skipped += 1
                continue
            if self._stopping:
                return
            if isinstance(thing, Request):
                await work.send(thing)
            else:
                self.stats.rows_input_error += 1
                await results.send(thing)

    async def _worker(
        self, work: ObjectReceiveStream[Request], results: ObjectSendStream[RowResult]
    ) -> None:
        async with work, results:
            async for request in work:
                if self._stopping:
                    break  # not launched: the next run sends it
                worst = self._worst_cost(request)
                if not self._within_budget(worst):
                    self.request_stop("budget")
                    break
                self._inflight_worst_usd += worst
                try:
                    if self._warm is None:
                        result = await self._process(request)
                    else:
                        result = await self._first_alone(request)
                finally:
                    self._inflight_worst_usd -= worst
                if result is None:
                    return
                await results.send(result)

    def _done_keys(
        self, chunk: list[Row | BadRow], keyed: list[tuple[str, Request | RowResult]]
    ) -> set[str]:
        first, last = chunk[0], chunk[-1]
        near = (first.source, first.line, last.line) if first.source == last.source else None
        return self.store.results.done_keys([k for k, _ in keyed], run_id=self.run_id, near=near)

    def _worst_cost(self, request: Request) -> float:
        if self.budget_usd is None:
            return 0.0
        usage = Usage(input_tokens=request.est_input_tokens, output_tokens=request.max_tokens)
        return cost_usd(self.price, usage) or 0.0

    def _within_budget(self, worst: float) -> bool:
        """Would launching a request with this worst-case cost keep the run within budget?"""
        if self.budget_usd is None:
            return True
        spent = self.spent_usd + self.stats.cost_usd
        return spent + self._inflight_worst_usd + worst <= self.budget_usd

    async def _first_alone(self, request: Request) -> RowResult | None:
        """Send the run's first request alone and hold the others until it is answered: it
        writes the prompt cache, and they read it (at a tenth of the price) instead of all
        writing it at once (at a premium)."""
        gate = self._warm
        assert gate is not None
        if self._warm_leader:
            await gate.wait()
            return await self._process(request)
        self._warm_leader = True
        try:
            return await self._process(request)
        finally:
            gate.set()
            self._warm = None

    async def _process(self, request: Request) -> RowResult | None:
        """Send one request until it succeeds, fails for good, or attempts run out.

        With an answer schema, an invalid answer is followed up (``_followup``) and the usage
        and cost recorded for the row add up every answer paid for.
        """
        limits = self.job.limits
        reserve = request.est_total_tokens
        attempt = 0  # requests sent for the row
        tries = 0  # attempts of the current request; a follow-up starts again
        paid = _NO_USAGE  # answers already paid for (invalid ones that were followed up)
        paid_cost: float | None = None
        while True:
            attempt += 1
            tries += 1
            await self.budget.acquire(reserve)
            self.stats.requests_sent += 1
            started = time.perf_counter()
            error: ProviderError
            try:
                # The HTTP client bounds every attempt (timeout_s): a hang is a transient error.
                reply = await self.provider.send(request)
            except ProviderError as exc:
                error = exc
            else:
                latency_ms = (time.perf_counter() - started) * 1000
                usage = reply.usage
                self.budget.settle(reserve, usage.total_tokens)
                if reply.rate_limit is not None:
                    self.budget.observe(reply.rate_limit)
                self.budget.reward()
                cost = cost_usd(self.price, usage)
                s = self.stats
                s.input_tokens += usage.input_tokens
                s.output_tokens += usage.output_tokens
                if cost is not None:
                    s.cost_usd += cost
                if self._extractor is not None:
                    if attempt > 1:
                        usage = _add_usage(paid, usage)
                        cost = _add_cost(paid_cost, cost)
                    verdict = self._extractor.check(reply.text, reply.finish_reason)
                    followup = None if verdict.ok else self._followup(request, reply.text, verdict)
                    if followup is not None:
                        request, paid, paid_cost = followup, usage, cost
                        reserve = request.est_total_tokens
                        tries = 0
                        continue
                    if verdict.ok:
                        s.rows_ok += 1
                    else:
                        s.rows_invalid += 1
                        self._log.warning(
                            "row_invalid",
                            row_id=request.row_id,
                            error_type=verdict.error_type,
                            attempts=attempt,
                            error=verdict.error,
                        )
                    return self._result(
                        request,
                        "ok" if verdict.ok else "invalid",
                        attempt,
                        output_text=reply.text,
                        finish_reason=reply.finish_reason,
                        error_type=verdict.error_type,
                        error=verdict.error,
                        usage_tokens=_tokens(usage),
                        cost=cost,
                        latency_ms=latency_ms,
                        output_json=verdict.value_json,
                    )
                s.rows_ok += 1
                return self._result(
                    request,
                    "ok",
                    attempt,
                    output_text=reply.text,
                    finish_reason=reply.finish_reason,
                    usage_tokens=(
                        usage.input_tokens,
                        usage.output_tokens,
                        usage.cache_read_tokens,
                        usage.cache_write_tokens,
                        usage.reasoning_tokens,
                    ),
                    cost=cost,
                    latency_ms=latency_ms,
                )
            self.budget.settle(reserve, 0)
            if error.fatal:
                self._on_fatal(error)
                return None
            if isinstance(error, RateLimitError):
                self.stats.rate_limited += 1
                self.budget.penalize(error.retry_after)
            if not error.transient or tries >= limits.max_attempts:
                self.stats.rows_failed += 1
                self._log.warning(
                    "row_failed",
                    row_id=request.row_id,
                    error_type=error.error_type,
                    status_code=error.status_code,
                    attempts=attempt,
                    error=str(error),
                )
                return self._result(
                    request,
                    "failed",
                    attempt,
                    error_type=error.error_type,
                    error=str(error),
                    usage_tokens=_tokens(paid),
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
            if self._stopping:
                return None  # not finished: left for the next run

    def _followup(self, request: Request, answer: str, verdict: Verdict) -> Request | None:
        """The request again, with the invalid answer and what was wrong with it as two more
        turns; None when it is not worth sending (truncated, follow-ups used up, stopping, or
        over the budget or the context window)."""
        done = len(request.followups)
        if not verdict.retryable or done >= self.job.request.invalid_retries or self._stopping:
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
        if not self._within_budget(self._worst_cost(again)):
            self.request_stop("budget")
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
        if self._fatal is None:
            assert isinstance(error, FatalProviderError)
            self._fatal = error
            self._log.error(
                "run_aborted",
                error_type=error.error_type,
                status_code=error.status_code,
                error=str(error),
            )
        if self._work_scope is not None:
            self._work_scope.cancel()

    async def _writer(self, results: ObjectReceiveStream[RowResult]) -> None:
        """Commit results in batches, each one transaction; the last flush is shielded."""
        batch: list[RowResult] = []
        async with results:
            while True:
                closed = False
                with anyio.move_on_after(WRITE_INTERVAL_S):
                    try:
                        while len(batch) < WRITE_BATCH:
                            batch.append(await results.receive())
                    except anyio.EndOfStream:
                        closed = True
                if batch:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(self.store.results.write, batch)
                    self.stats.rows_committed += len(batch)
                    batch = []
                if closed:
                    return

    # -- results --------------------------------------------------------------------------------

    def _input_error(
        self, key: str, row_id: str, error_type: str, error: str, source: str, line: int
    ) -> RowResult:
        return RowResult.unanswered(
            job=self.job.name,
            run_id=self.run_id,
            row_id=row_id,
            request_key=key,
            prompt_hash=self.prompt_hash,
            status="input_error",
            provider=self.job.request.provider,
            model=self.job.request.model,
            mode="online",
            error_type=error_type,
            error=error,
            attempts=0,
            finished_at=self._clock(),
            source=source,
            line=line,
        )

    def _too_long(self, request: Request) -> RowResult:
        return self._input_error(
            request.request_key,
            request.row_id,
            "context_exceeded",
            f"{request.source} line {request.line} (row {request.row_id}): the prompt is about "
            f"{request.est_input_tokens:,} tokens and max_tokens is {request.max_tokens:,}, "
            f"more than the model's context of {self.context_window:,}; shorten the row or "
            "the template, or lower [request].max_tokens",
            request.source,
            request.line,
        )

    def _result(
        self,
        request: Request,
        status: str,
        attempts: int,
        *,
        output_text: str | None = None,
        finish_reason: str | None = None,
        error_type: str | None = None,
        error: str | None = None,
        usage_tokens: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0),
        cost: float | None = None,
        latency_ms: float | None = None,
        output_json: str | None = None,
    ) -> RowResult:
        inp, out, cache_read, cache_write, reasoning = usage_tokens
        return RowResult(
            job=self.job.name,
            run_id=self.run_id,
            row_id=request.row_id,
            request_key=request.request_key,
            prompt_hash=request.prompt_hash,
            status=status,
            provider=request.provider,
            model=request.model,
            mode="online",
            output_text=output_text,
            finish_reason=finish_reason,
            error_type=error_type,
            error=error,
            attempts=attempts,
            input_tokens=inp,
            output_tokens=out,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
            reasoning_tokens=reasoning,
            cost_usd=cost,
            latency_ms=latency_ms,
            finished_at=self._clock(),
            source=request.source,
            line=request.line,
            output_json=output_json,
        )


def _tokens(usage: Usage) -> tuple[int, int, int, int, int]:
    return (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    )


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
