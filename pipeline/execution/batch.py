"""The batch executor: the same requests through the providers' batch endpoints, at half price.

::

    requests ──▶ part files (≤ max requests, ≤ max bytes) ──▶ record part + its rows ──▶ submit
        ──▶ record batch id ──▶ poll (backing off) ──▶ stream results ──▶ collect (one transaction)

It takes the requests to send, a batch provider, the run's batch ledger (``BatchBook``: the parts
and their rows, in the store) and a result sink, and nothing else.

Never submit twice: a part and its rows are committed before it is submitted, and its batch id
right after, so a run killed while waiting polls the same batches instead of submitting again;
a part recorded but never given a batch id (its create's answer was lost) is looked for at the
provider before it is submitted again (``BatchProvider.find_submitted``). A part the provider
refuses at creation (400, 413, 422) has its rows recorded ``failed`` with the provider's
message, and the run ends ``failed``; a batch rejected later (failed validation) has its rows
recorded with the provider's line-numbered errors, and the rest of the job goes on.

With an answer schema every answer is checked as online (``pipeline.extract``); one that does
not match is recorded ``invalid`` at once (a batch cannot hold a follow-up turn; ``pipeline rerun
RUN --failed`` sends such rows again). What a batch did not answer (expired, cancelled, errored)
is left without a result for the session to send online, or recorded ``failed`` when
``record_unfinished``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import anyio
import orjson
import structlog
from anyio.abc import ObjectReceiveStream

from ..errors import FatalProviderError, InputError, ProviderError, RowRejectedError
from ..extract import Extractor
from ..job.pricing import Price, cost_usd
from ..limits.retry import backoff_s
from ..providers import BatchProvider
from ..providers._batch import BatchLine, BatchPart, BatchState, Submitted
from ..records import Request, ResultBuilder, RowResult, Status
from .parts import PartRows, PartWriter
from .sink import ResultSink
from .stats import RunStats

__all__ = ["BatchBook", "BatchExecutor", "BatchRefused"]

log = structlog.get_logger("pipeline.batch")

FIRST_POLL_S = 1.0
_COUNTED = (
    "rows_ok",
    "rows_failed",
    "rows_input_error",
    "rows_invalid",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)  # what RunStats.count moves
# Answers a file at most when a part is collected (about 1 MB: DuckDB holds the file it reads
# in memory beside the transaction's rows, under the database's 32 MB limit).
COLLECT_FILE_LINES = 2048
PartRow = tuple[str, str, str, int]  # request key, row id, source, line


class BatchRefused(Exception):
    """The provider refused to create a batch for a part (not raised past the executor)."""


class BatchBook(Protocol):
    """The run's batch parts, as the store keeps them (``Store.batches``)."""

    def record_part(
        self,
        run_id: str,
        part: int,
        provider: str,
        *,
        nbytes: int,
        requests: Iterable[PartRow] | Path,
    ) -> None: ...

    def mark_submitted(
        self, run_id: str, part: int, batch_id: str, input_file_id: str | None
    ) -> None: ...

    def update(
        self,
        run_id: str,
        part: int,
        *,
        status: str,
        succeeded: int | None = None,
        errored: int | None = None,
        error: str | None = None,
    ) -> None: ...

    def collect(self, run_id: str, part: int, results: Sequence[RowResult]) -> None: ...

    def collect_lines(self, run_id: str, part: int, paths: Sequence[Path]) -> int: ...

    def part_keys(self, run_id: str, part: int) -> set[str]: ...

    def parts(self, run_id: str) -> list[dict[str, Any]]: ...

    def requests(self, run_id: str, part: int) -> dict[str, tuple[str, str, int, int]]: ...

    def drop_part(self, run_id: str, part: int) -> None: ...


class BatchExecutor:
    """Writes, submits, polls and collects one run's batch parts (see the module docstring)."""

    def __init__(
        self,
        *,
        provider: BatchProvider,
        book: BatchBook,
        sink: ResultSink,
        results: ResultBuilder,
        stats: RunStats,
        price: Price | None,
        parts_dir: Path,
        metadata: Mapping[str, str],
        poll_interval_s: float,
        record_unfinished: bool,
        max_attempts: int = 6,
        extractor: Extractor | None = None,
        on_recorded: Callable[[Iterable[PartRow]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provider = provider
        self.book = book
        self.sink = sink
        self.results = results
        self.run_id = results.run_id
        self.stats = stats
        self.price = price
        self.parts_dir = parts_dir
        self.metadata = dict(metadata)
        self.poll_interval_s = poll_interval_s
        self.record_unfinished = record_unfinished
        self.max_attempts = max_attempts
        self.extractor = extractor
        self._on_recorded = on_recorded
        self._clock = clock
        self.stopping = False
        self.refused: str | None = None  # why a part was refused at creation
        self._log = log.bind(run_id=self.run_id, provider=provider.name)

    def stop(self) -> None:
        """Submit and wait no more; what was submitted stays recorded for a resume."""
        self.stopping = True

    # -- submit -------------------------------------------------------------------------------

    async def submit_prepared(self) -> None:
        """Parts recorded (by a killed run, or taken over from one) but never given a batch id:
        the create may have reached the provider with its answer lost, so the provider is asked
        first (``find_submitted``); a batch it holds for the part is recorded (``batch_found``),
        else the part is submitted, if its file is still there."""
        parts = await anyio.to_thread.run_sync(self.book.parts, self.run_id)
        known = {p["batch_id"] for p in parts if p["batch_id"]}
        for part in parts:
            if part["batch_id"] is not None or part["collected"] or self.stopping:
                continue
            index = part["part"]
            rows = await anyio.to_thread.run_sync(self.book.requests, self.run_id, index)
            ordered = sorted(rows, key=lambda key: rows[key][3])
            prepared = BatchPart(
                index,
                self.parts_dir / f"part-{index:04d}.jsonl",
                part["requests"],
                part["bytes"],
                first_key=ordered[0] if ordered else "",
                last_key=ordered[-1] if ordered else "",
            )
            found = await self._find(prepared, since=part["created_at"], known=known)
            if found is None:
                if prepared.path.exists():
                    await self._submit(prepared)
                else:
                    # Never sent and its file gone: forget the part, so its rows are planned
                    # into a new one.
                    await anyio.to_thread.run_sync(self.book.drop_part, self.run_id, index)
                    self._log.warning("batch_part_dropped", part=index, path=str(prepared.path))
                continue
            known.add(found.batch_id)
            await anyio.to_thread.run_sync(
                self.book.mark_submitted,
                self.run_id,
                index,
                found.batch_id,
                found.input_file_id,
            )
            self._log.info("batch_found", part=index, batch_id=found.batch_id)

    def _metadata(self, index: int) -> dict[str, str]:
        """What a part's batch carries (OpenAI keeps it; ``find_submitted`` matches on it)."""
        return {**self.metadata, "part": str(index)}

    async def submit(self, work: ObjectReceiveStream[Request]) -> None:
        """Write every request into part files, record each part, and submit it."""
        parts = await anyio.to_thread.run_sync(self.book.parts, self.run_id)
        writer = PartWriter(
            self.parts_dir,
            max_requests=self.provider.max_requests,
            max_bytes=self.provider.max_bytes,
            first_index=max((p["part"] for p in parts), default=0) + 1,
        )
        async with work:
            async for request in work:
                if self.stopping:
                    break
                key, row_id, source, line = (
                    request.request_key,
                    request.row_id,
                    request.source,
                    request.line,
                )
                try:
                    if request.attachments:  # files are read and encoded now, off the loop
                        data = await anyio.to_thread.run_sync(self.provider.line, request)
                    else:
                        data = self.provider.line(request)
                    closed = writer.add(key, row_id, source, line, data)
                except InputError as exc:
                    await self.sink.put(
                        self.results.input_error(
                            key, row_id, source, line, exc.error_type, str(exc)
                        )
                    )
                    continue
                if closed is not None:
                    await self._record_and_submit(*closed)
        closed = writer.close()
        if closed is not None and not self.stopping:
            await self._record_and_submit(*closed)

    async def _record_and_submit(self, part: BatchPart, rows: PartRows) -> None:
        await anyio.to_thread.run_sync(
            lambda: self.book.record_part(
                self.run_id, part.index, self.provider.name, nbytes=part.bytes, requests=rows.path
            )
        )
        if self._on_recorded is not None:
            await anyio.to_thread.run_sync(self._on_recorded, rows)
        rows.path.unlink(missing_ok=True)  # the ledger has them now
        await self._submit(part)

    async def _submit(self, part: BatchPart) -> None:
        """Create the part's batch and record its id. A transient failure (the answer lost
        in a timeout or a dropped connection) is waited out and the provider asked whether the
        batch exists after all (``find_submitted``) before the part is sent again: a part is
        never paid for twice."""
        if self.stopping:
            return
        attempt = 0
        while True:
            attempt += 1
            try:
                submitted = await self.provider.submit(part, metadata=self._metadata(part.index))
                break
            except RowRejectedError as exc:
                await self._refused(part, exc)
                return
            except ProviderError as exc:
                if not exc.transient or attempt >= self.max_attempts:
                    raise
                wait = backoff_s(attempt, retry_after=exc.retry_after)
                self._log.warning(
                    "batch_submit_failed", part=part.index, attempt=attempt, error=str(exc)
                )
                await anyio.sleep(wait)
                found = await self._find(part)
                if found is not None:
                    submitted = found
                    self._log.info("batch_found", part=part.index, batch_id=found.batch_id)
                    break
        await anyio.to_thread.run_sync(
            self.book.mark_submitted,
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

    async def _find(
        self, part: BatchPart, *, since: float | None = None, known: set[str] | None = None
    ) -> Submitted | None:
        """``find_submitted``, asked again while it fails transiently (it never answers None
        when it could not look). ``since``/``known`` default to the part's recorded time and
        the run's other batch ids."""
        if since is None or known is None:
            parts = await anyio.to_thread.run_sync(self.book.parts, self.run_id)
            since = next(p["created_at"] for p in parts if p["part"] == part.index)
            known = {p["batch_id"] for p in parts if p["batch_id"]}
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.provider.find_submitted(
                    part, metadata=self._metadata(part.index), since=since, known=known
                )
            except ProviderError as exc:
                if not exc.transient or attempt >= self.max_attempts:
                    raise
                await anyio.sleep(backoff_s(attempt, retry_after=exc.retry_after))

    async def _refused(self, part: BatchPart, exc: ProviderError) -> None:
        """The provider would not create the batch: its rows are recorded with the provider's
        message, and nothing more is submitted."""
        why = f"batch part {part.index} ({part.count:,} requests) was refused: {exc}"
        rows = await anyio.to_thread.run_sync(self.book.requests, self.run_id, part.index)
        results = [
            self.results.unanswered(
                key, row_id, source, line, Status.FAILED, "batch_rejected", why, attempts=1
            )
            for key, (row_id, source, line, _) in rows.items()
        ]
        await anyio.to_thread.run_sync(
            lambda: self.book.update(self.run_id, part.index, status="rejected", error=str(exc))
        )
        await anyio.to_thread.run_sync(self.book.collect, self.run_id, part.index, results)
        for result in results:
            self.stats.count(result)
        self.stats.rows_committed += len(results)
        self._log.error(
            "batch_refused", part=part.index, status_code=exc.status_code, error=str(exc)
        )
        self.refused = why
        self.stopping = True

    # -- wait and collect -----------------------------------------------------------------------

    async def collect(self, *, once: bool = False) -> None:
        """Poll the run's open batches, backing off, and collect each as it ends; return when
        none is open (or after one round, with ``once``). Transient errors while polling are
        waited out; a fatal one is raised."""
        delay = FIRST_POLL_S
        while not self.stopping:
            parts = await anyio.to_thread.run_sync(self.book.parts, self.run_id)
            open_parts = [p for p in parts if p["batch_id"] and not p["collected"]]
            if not open_parts:
                return
            for part in open_parts:
                if self.stopping:
                    return
                try:
                    state = await self.provider.poll(part["batch_id"])
                    await anyio.to_thread.run_sync(self._record_state, part["part"], state)
                    if state.ended:
                        await self._collect(part["part"], state)
                except FatalProviderError:
                    raise
                except ProviderError as exc:
                    if not exc.transient:
                        raise
                    self._log.warning(
                        "batch_poll_failed", batch_id=part["batch_id"], error=str(exc)
                    )
            if once:
                return
            await anyio.sleep(delay)
            delay = min(delay * 1.5, self.poll_interval_s)

    def _record_state(self, part: int, state: BatchState) -> None:
        self.book.update(
            self.run_id,
            part,
            status=state.status,
            succeeded=state.succeeded,
            errored=state.errored,
        )

    async def _collect(self, part: int, state: BatchState) -> None:
        if state.failed:
            await self._collect_failed(part, state)
            return
        # The answers stream into files of result lines, which the ledger inserts joined to
        # the part's rows: a part of 50,000 rows is never held in memory, only its keys.
        keys = await anyio.to_thread.run_sync(self.book.part_keys, self.run_id, part)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        collected = 0
        counted = RunStats()  # added to the run's once the part is committed
        out: IO[bytes] | None = None
        try:
            async for answer in self.provider.results(state):
                if answer.custom_id not in keys:  # not the part's, or answered twice
                    self._log.warning("unknown_custom_id", custom_id=answer.custom_id)
                    continue
                keys.discard(answer.custom_id)
                result = self._answer(answer)
                if result is None:
                    continue
                if out is None or collected % COLLECT_FILE_LINES == 0:
                    if out is not None:
                        out.close()
                    paths.append(self.parts_dir / f"part-{part:04d}.results-{len(paths)}.jsonl")
                    out = paths[-1].open("wb")
                out.write(orjson.dumps(result) + b"\n")
                counted.count(result)
                collected += 1
            if out is not None:
                out.close()
            del keys
            written = await anyio.to_thread.run_sync(
                self.book.collect_lines, self.run_id, part, paths
            )
        finally:
            if out is not None:
                out.close()
            for path in paths:
                path.unlink(missing_ok=True)
        for name in _COUNTED:
            setattr(self.stats, name, getattr(self.stats, name) + getattr(counted, name))
        if written != collected:  # cannot be: every line written has a key of the part
            self._log.error("batch_collect_mismatch", part=part, written=written, lines=collected)
        self.stats.rows_committed += written
        self._log.info(
            "batch_collected",
            part=part,
            batch_id=state.batch_id,
            status=state.status,
            rows=written,
        )

    async def _collect_failed(self, part: int, state: BatchState) -> None:
        """A batch rejected as a whole: every row of the part recorded with its error."""
        rows = await anyio.to_thread.run_sync(self.book.requests, self.run_id, part)
        by_line = {e.line: e for e in state.errors if e.line is not None}
        general = "; ".join(e.message for e in state.errors if e.line is None) or (
            "the provider rejected the batch"
        )
        results: list[RowResult] = []
        for key, (row_id, source, line, ordinal) in rows.items():
            err = by_line.get(ordinal)
            text = (
                f"batch {state.batch_id} line {ordinal}: {err.message}"
                if err
                else f"batch {state.batch_id} failed validation: {general}"
            )
            results.append(
                self.results.unanswered(
                    key, row_id, source, line, Status.FAILED, "batch_invalid", text, attempts=1
                )
            )
        self._log.warning(
            "batch_failed",
            batch_id=state.batch_id,
            errors=[f"line {e.line}: {e.message}" for e in state.errors][:20],
        )
        await anyio.to_thread.run_sync(self.book.collect, self.run_id, part, results)
        for result in results:
            self.stats.count(result)
        self.stats.rows_committed += len(results)
        self._log.info(
            "batch_collected",
            part=part,
            batch_id=state.batch_id,
            status=state.status,
            rows=len(results),
        )

    def _answer(self, answer: BatchLine) -> RowResult | None:
        """The result of one answer of a part. Its row id, source and line are left blank:
        the ledger writes the part's own (``collect_lines`` joins them by request key)."""
        key, row_id, source, line = answer.custom_id, "", "", 0
        if answer.reply is None:
            if not self.record_unfinished:
                return None  # left for the online pass
            return self.results.unanswered(
                key,
                row_id,
                source,
                line,
                Status.FAILED,
                answer.error_type or "batch_error",
                answer.error or "",
                attempts=1,
            )
        reply = answer.reply
        status, error_type, error, output_json = Status.OK, None, None, None
        if self.extractor is not None:
            verdict = self.extractor.check(reply.text, reply.finish_reason)
            output_json, error_type, error = verdict.value_json, verdict.error_type, verdict.error
            status = Status.OK if verdict.ok else Status.INVALID
        return self.results.answered(
            key,
            row_id,
            source,
            line,
            reply,
            attempts=1,
            usage=reply.usage,
            cost=cost_usd(self.price, reply.usage),
            latency_ms=None,
            status=status,
            error_type=error_type,
            error=error,
            output_json=output_json,
        )
