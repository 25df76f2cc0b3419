"""Batch mode: the same job through the providers' batch endpoints, at half the price.

Shape of a batch run::

    read + render rows ──▶ part files (≤ max requests, ≤ max bytes) ──▶ record part + its rows
        ──▶ submit ──▶ commit batch id ──▶ poll (backing off) ──▶ stream results ──▶ commit rows

Never submit twice: a part and its rows are committed before it is submitted, and its batch id
right after, so a run killed while waiting resumes polling the same batches (``pipeline
resume``), and a rerun skips rows a batch already returned. A part left with no batch id (killed
during the create, or the create's answer lost) is looked for at the provider
(``find_submitted``) before it is submitted again. What a batch did not answer
(expired, cancelled, errored) is sent online by the same run when ``on_unfinished = "online"``,
or recorded as failed with ``"record"``. A part the provider rejects as a whole (failed
validation) is recorded row by row with the provider's line-numbered errors.

With an answer schema, every answer a batch returns is checked as online (``pipeline.extract``);
one that does not match is recorded ``invalid`` at once (a batch cannot hold a conversation's
follow-up turn; ``pipeline rerun RUN --failed`` sends such rows again).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import structlog

from .batch import PartWriter
from .config import Job
from .cost import Price, cost_usd
from .errors import InputError, ProviderError
from .extract import Extractor
from .manifest import write_manifest
from .providers._batch import BatchLine, BatchPart, BatchProvider, BatchState
from .records import BadRow, RowResult
from .render import Renderer, request_key
from .runner import RowFilter, RunOutcome, RunStats
from .sources import iter_row_chunks
from .store import RunRecord, Store

__all__ = ["BatchRunner"]

log = structlog.get_logger("pipeline.batch")

READ_CHUNK = 4096
FIRST_POLL_S = 1.0

OnlinePass = Callable[[RowFilter], Awaitable[RunOutcome]]


class BatchRunner:
    """Runs one job in batch mode. ``online`` runs given rows online under the same run id."""

    def __init__(
        self,
        job: Job,
        *,
        store: Store,
        provider: BatchProvider,
        price: Price | None,
        base_url: str,
        run_id: str,
        parts_dir: Path,
        online: OnlinePass | None = None,
        resume: bool = False,
        wait: bool = True,
        manifest_path: Path | None = None,
        manifest: Mapping[str, Any] | None = None,
        context_window: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.job = job
        self.store = store
        self.provider = provider
        self.price = price
        self.base_url = base_url
        self.run_id = run_id
        self.parts_dir = parts_dir
        self.online = online
        self.resume = resume
        self.wait = wait
        self.manifest_path = manifest_path
        self._manifest_base = dict(manifest or {})
        self.context_window = context_window
        self.stats = RunStats()
        self._clock = clock
        self._renderer = Renderer(job.request)
        schema = job.request.schema
        self._extractor = None if schema is None else Extractor(schema)
        self._stopping = False
        self._log = log.bind(job=job.name, run_id=run_id, provider=job.request.provider)

    @property
    def prompt_hash(self) -> str:
        return self._renderer.prompt_hash

    def request_stop(self, reason: str = "signal") -> None:
        """Stop submitting and waiting; submitted batches stay recorded for ``resume``."""
        self._stopping = True

    def cancel_now(self) -> None:
        self._stopping = True

    async def run(self) -> RunOutcome:
        job = self.job
        if self.resume:
            self.store.runs.reopen(self.run_id)
        else:
            self.store.runs.start(
                RunRecord.for_job(
                    job,
                    run_id=self.run_id,
                    mode="batch",
                    prompt_hash=self.prompt_hash,
                    price_source=self.price.source if self.price else None,
                    manifest=self._manifest("running"),
                    base_url=self.base_url,
                )
            )
        if self._extractor is not None:
            self.store.queries.create_extract_view(job.name, self._extractor.columns)
        # Before anything is submitted: 'pipeline resume' finds a killed run by its manifest.
        await anyio.to_thread.run_sync(self._write_manifest, "running")
        state = "completed"
        message = None
        try:
            await self._prepare_and_submit()
            if self._stopping:
                state = "stopped: signal"
            elif not self.wait:
                state = "stopped: batches submitted; pipeline resume collects them"
            else:
                await self._wait_and_collect()
                if self._stopping:
                    state = "stopped: signal"
                else:
                    outcome = await self._unfinished()
                    if outcome is not None and outcome.state != "completed":
                        state, message = outcome.state, outcome.message
        except ProviderError as exc:
            # Fatal or transient (a create whose answer was lost, a poll that timed out), the
            # run ends here; what it recorded stays for 'pipeline resume', part files included.
            state, message = f"failed: {exc}", str(exc)
        except BaseException:
            state = "failed: interrupted"  # never 'completed': that deletes the part files
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._finish, state)
        return RunOutcome(self.run_id, state, self.stats, message)

    # -- submit ---------------------------------------------------------------------------------

    async def _prepare_and_submit(self) -> None:
        """Submit parts left prepared by a killed run, then every row not yet in a batch."""
        parts = await anyio.to_thread.run_sync(self.store.batches.parts, self.run_id)
        known = {part["batch_id"] for part in parts if part["batch_id"] is not None}
        for part in parts:
            if part["batch_id"] is None:
                batch_id = await self._find_or_submit(part, known)
                if batch_id is not None:
                    known.add(batch_id)
        next_index = max((p["part"] for p in parts), default=0) + 1
        writer = PartWriter(
            self.parts_dir,
            max_requests=self.provider.max_requests,
            max_bytes=self.provider.max_bytes,
            first_index=next_index,
        )
        chunks = iter_row_chunks(self.job.input, chunk_size=READ_CHUNK)
        ph = self.prompt_hash
        while not self._stopping:
            chunk = await anyio.to_thread.run_sync(next, chunks, None)
            if chunk is None:
                break
            self.stats.rows_read += len(chunk)
            errors: list[RowResult] = []
            lines: list[tuple[str, str, str, int, bytes]] = []
            for item in chunk:
                if isinstance(item, BadRow):
                    key = request_key(item.row_id, ph)
                    errors.append(
                        self._row(
                            key,
                            item.row_id,
                            item.source,
                            item.line,
                            "input_error",
                            item.error_type,
                            item.error,
                        )
                    )
                    continue
                try:
                    request = self._renderer.render(item)
                    if self.context_window and request.est_total_tokens > self.context_window:
                        raise InputError(
                            f"{item.source} line {item.line} (row {item.row_id}): about "
                            f"{request.est_total_tokens:,} tokens with max_tokens, more than "
                            f"the model's context of {self.context_window:,}",
                            error_type="context_exceeded",
                        )
                except InputError as exc:
                    key = request_key(item.row_id, ph)
                    errors.append(
                        self._row(
                            key,
                            item.row_id,
                            item.source,
                            item.line,
                            "input_error",
                            exc.error_type,
                            str(exc),
                        )
                    )
                    continue
                lines.append(
                    (
                        request.request_key,
                        request.row_id,
                        request.source,
                        request.line,
                        self.provider.line(request),
                    )
                )
            keys = [e.request_key for e in errors] + [k for k, *_ in lines]
            done = await anyio.to_thread.run_sync(self._already, keys)
            errors = [e for e in errors if e.request_key not in done]
            if errors:
                self.stats.rows_input_error += len(errors)
                await anyio.to_thread.run_sync(self.store.results.write, errors)
            for key, row_id, source, line, data in lines:
                if key in done:
                    self.stats.rows_skipped += 1
                    continue
                try:
                    closed = writer.add(key, row_id, source, line, data)
                except InputError as exc:
                    self.stats.rows_input_error += 1
                    await anyio.to_thread.run_sync(
                        self.store.results.write,
                        [
                            self._row(
                                key, row_id, source, line, "input_error", exc.error_type, str(exc)
                            )
                        ],
                    )
                    continue
                if closed is not None:
                    await self._record_and_submit(*closed)
        closed = writer.close()
        if closed is not None and not self._stopping:
            await self._record_and_submit(*closed)

    def _already(self, keys: list[str]) -> set[str]:
        """Keys done (ok anywhere, or recorded by this run) or already in this run's batches."""
        done = self.store.results.done_keys(keys, run_id=self.run_id)
        return done | self.store.batches.submitted_keys(keys, run_id=self.run_id)

    async def _record_and_submit(
        self, part: BatchPart, rows: list[tuple[str, str, str, int]]
    ) -> None:
        await anyio.to_thread.run_sync(
            lambda: self.store.batches.record_part(
                self.run_id, part.index, self.provider.name, nbytes=part.bytes, requests=rows
            )
        )
        await self._submit(part)

    async def _find_or_submit(self, part: Mapping[str, Any], known: set[str]) -> str | None:
        """A part recorded by an earlier run without a batch id: the create may have reached
        the provider with its answer lost. Record the batch the provider holds for the part,
        if any (``batch_found``); else submit the part, if its file is still there. Returns
        the part's batch id, or None when it has none."""
        index = part["part"]
        rows = await anyio.to_thread.run_sync(self.store.batches.requests, self.run_id, index)
        by_ordinal = sorted(rows, key=lambda key: rows[key][3])
        prepared = BatchPart(
            index,
            self.parts_dir / f"part-{index:04d}.jsonl",
            part["requests"],
            part["bytes"],
            first_key=by_ordinal[0] if by_ordinal else "",
            last_key=by_ordinal[-1] if by_ordinal else "",
        )
        found = await self.provider.find_submitted(
            prepared, metadata=self._metadata(index), since=part["created_at"], known=known
        )
        if found is None:
            if not prepared.path.exists():
                return None
            return await self._submit(prepared)
        await anyio.to_thread.run_sync(
            self.store.batches.mark_submitted,
            self.run_id,
            index,
            found.batch_id,
            found.input_file_id,
        )
        self._log.info(
            "batch_found", part=index, batch_id=found.batch_id, requests=part["requests"]
        )
        self._write_manifest("running")
        return found.batch_id

    def _metadata(self, index: int) -> dict[str, str]:
        """What a part's batch carries (OpenAI keeps it; ``find_submitted`` matches on it)."""
        return {"run_id": self.run_id, "part": str(index), "job": self.job.name}

    async def _submit(self, part: BatchPart) -> str:
        submitted = await self.provider.submit(part, metadata=self._metadata(part.index))
        await anyio.to_thread.run_sync(
            self.store.batches.mark_submitted,
            self.run_id,
            part.index,
            submitted.batch_id,
            submitted.input_file_id,
        )
        self._log.info(
            "batch_submitted",
            part=part.index,
            batch_id=submitted.batch_id,
            requests=part.count,
            bytes=part.bytes,
        )
        self._write_manifest("running")
        return submitted.batch_id

    # -- wait and collect -----------------------------------------------------------------------

    async def _wait_and_collect(self) -> None:
        delay = FIRST_POLL_S
        while not self._stopping:
            parts = await anyio.to_thread.run_sync(self.store.batches.parts, self.run_id)
            open_parts = [p for p in parts if p["batch_id"] and not p["collected"]]
            if not open_parts:
                return
            for part in open_parts:
                state = await self.provider.poll(part["batch_id"])
                await anyio.to_thread.run_sync(self._record_state, part["part"], state)
                if state.ended:
                    await self._collect(part["part"], state)
            self._write_manifest("running")
            await anyio.sleep(delay)
            delay = min(delay * 1.5, self.job.batch.poll_interval_s)

    def _record_state(self, part: int, state: BatchState) -> None:
        self.store.batches.update(
            self.run_id,
            part,
            status=state.status,
            succeeded=state.succeeded,
            errored=state.errored,
        )

    async def _collect(self, part: int, state: BatchState) -> None:
        rows = await anyio.to_thread.run_sync(self.store.batches.requests, self.run_id, part)
        record_unfinished = self.job.batch.on_unfinished == "record" or self.online is None
        results: list[RowResult] = []
        if state.failed:
            by_line = {e.line: e for e in state.errors if e.line is not None}
            general = "; ".join(e.message for e in state.errors if e.line is None) or (
                "the provider rejected the batch"
            )
            for key, (row_id, source, line, ordinal) in rows.items():
                err = by_line.get(ordinal)
                text = (
                    f"batch {state.batch_id} line {ordinal}: {err.message}"
                    if err
                    else f"batch {state.batch_id} failed validation: {general}"
                )
                results.append(
                    self._row(key, row_id, source, line, "failed", "batch_invalid", text)
                )
            self._log.warning(
                "batch_failed",
                batch_id=state.batch_id,
                errors=[f"line {e.line}: {e.message}" for e in state.errors][:20],
            )
        else:
            async for answer in self.provider.results(state):
                meta = rows.get(answer.custom_id)
                if meta is None:
                    self._log.warning("unknown_custom_id", custom_id=answer.custom_id)
                    continue
                result = self._answer(answer, meta, record_unfinished)
                if result is not None:
                    results.append(result)
        await anyio.to_thread.run_sync(self.store.batches.collect, self.run_id, part, results)
        for r in results:
            if r.status in ("ok", "invalid"):
                self.stats.input_tokens += r.input_tokens
                self.stats.output_tokens += r.output_tokens
                self.stats.cost_usd += r.cost_usd or 0.0
            if r.status == "ok":
                self.stats.rows_ok += 1
            elif r.status == "invalid":
                self.stats.rows_invalid += 1
            else:
                self.stats.rows_failed += 1
        self.stats.rows_committed += len(results)
        self._log.info(
            "batch_collected",
            part=part,
            batch_id=state.batch_id,
            status=state.status,
            rows=len(results),
        )

    def _answer(
        self, answer: BatchLine, meta: tuple[str, str, int, int], record_unfinished: bool
    ) -> RowResult | None:
        row_id, source, line, _ = meta
        if answer.reply is None:
            if not record_unfinished:
                return None  # left for the online pass
            return self._row(
                answer.custom_id,
                row_id,
                source,
                line,
                "failed",
                answer.error_type or "batch_error",
                answer.error or "",
            )
        usage = answer.reply.usage
        status, error_type, error, output_json = "ok", None, None, None
        if self._extractor is not None:
            verdict = self._extractor.check(answer.reply.text, answer.reply.finish_reason)
            output_json, error_type, error = verdict.value_json, verdict.error_type, verdict.error
            status = "ok" if verdict.ok else "invalid"
        return RowResult(
            job=self.job.name,
            run_id=self.run_id,
            row_id=row_id,
            request_key=answer.custom_id,
            prompt_hash=self.prompt_hash,
            status=status,
            provider=self.job.request.provider,
            model=self.job.request.model,
            mode="batch",
            output_text=answer.reply.text,
            finish_reason=answer.reply.finish_reason,
            error_type=error_type,
            error=error,
            attempts=1,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_usd=cost_usd(self.price, usage),
            latency_ms=None,
            finished_at=self._clock(),
            source=source,
            line=line,
            output_json=output_json,
        )

    async def _unfinished(self) -> RunOutcome | None:
        """Rows the batches did not answer: online, or recorded as failed."""
        keys = await anyio.to_thread.run_sync(self.store.batches.unanswered_keys, self.run_id)
        if not keys:
            return None
        self._log.info("batch_unfinished", rows=len(keys), action=self.job.batch.on_unfinished)
        if self.online is None or self.job.batch.on_unfinished == "record":
            return None  # already recorded at collection
        outcome = await self.online(RowFilter(frozenset(keys)))
        s, o = self.stats, outcome.stats
        s.rows_ok += o.rows_ok
        s.rows_failed += o.rows_failed
        s.rows_invalid += o.rows_invalid
        s.input_tokens += o.input_tokens
        s.output_tokens += o.output_tokens
        s.cost_usd += o.cost_usd
        s.requests_sent += o.requests_sent
        s.rate_limited += o.rate_limited
        return outcome

    # -- records --------------------------------------------------------------------------------

    def _row(
        self,
        key: str,
        row_id: str,
        source: str,
        line: int,
        status: str,
        error_type: str,
        error: str,
    ) -> RowResult:
        return RowResult.unanswered(
            job=self.job.name,
            run_id=self.run_id,
            row_id=row_id,
            request_key=key,
            prompt_hash=self.prompt_hash,
            status=status,
            provider=self.job.request.provider,
            model=self.job.request.model,
            mode="batch",
            error_type=error_type,
            error=error,
            attempts=0 if status == "input_error" else 1,
            finished_at=self._clock(),
            source=source,
            line=line,
        )

    def _manifest(self, state: str) -> dict[str, Any]:
        s = self.stats
        return {
            **self._manifest_base,
            "run_id": self.run_id,
            "mode": "batch",
            "state": state,
            "pid": os.getpid(),  # 'pipeline status' tells a live run from a killed one by it
            "updated_at": self._clock(),
            "prompt_hash": self.prompt_hash,
            "counts": s.counts(),
            "tokens": {"input": s.input_tokens, "output": s.output_tokens},
            "cost_usd": s.cost_usd,
            "batches": [
                {k: p[k] for k in ("part", "batch_id", "input_file_id", "status", "requests")}
                for p in self.store.batches.parts(self.run_id)
            ],
        }

    def _write_manifest(self, state: str) -> None:
        if self.manifest_path is not None:
            write_manifest(self.manifest_path, self._manifest(state))

    def _finish(self, state: str) -> None:
        self._write_manifest(state)
        self.store.runs.finish(self.run_id, state, finished_at=self._clock())
        self.store.runs.update(self.run_id, manifest=self._manifest(state))
        if state == "completed":
            shutil.rmtree(self.parts_dir, ignore_errors=True)
