"""The ledgers: what ran (table ``runs``, and ``run_prices``) and what was sent in batches
(tables ``batches`` and ``batch_requests``).

A run's counts, tokens and cost in ``runs`` are filled from its committed results when it
finishes, so they count only what really reached the file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import orjson

from ..errors import StoreError
from ..job import Job
from ..records import RowResult
from ..redact import redact, safe_url
from ._db import Database
from .results import count_results, insert_results, read_json_lines, read_result_lines
from .schema import ROW_RESULTS

if TYPE_CHECKING:
    from ..job.pricing import Price

__all__ = ["BatchLedger", "RunLedger", "RunRecord"]

_Rows: TypeAlias = list[dict[str, Any]]  # (the ledgers' own `list` methods shadow the builtin)

# runs column <- key of count_results(), for finish / update(refresh_counts=True)
_RUN_COUNT_COLUMNS: Final = (
    ("rows_ok", "ok"),
    ("rows_failed", "failed"),
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cost_usd", "cost_usd"),
)
_NULL: Final = object()  # "set this column to NULL" in update

_STATE_RE: Final = re.compile(r"running|completed|(stopped|failed): .+", re.DOTALL)
# A part's rows as ``record_part`` reads them from a file.
_PART_ROWS: Final = (
    '{"request_key": "VARCHAR", "row_id": "VARCHAR", "source": "VARCHAR", "line": "BIGINT", '
    '"ordinal": "INTEGER"}'
)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as ``store.runs.start`` records it. Never put an API key in any field.

    ``started_at`` is unix seconds (``None``: now). ``manifest`` is anything JSON can hold (or
    a JSON string); it is stored as text. ``base_url`` is stored without user, password, query
    or fragment, and ``job_text`` and ``manifest`` with URL passwords, ``?api_key=``-style
    parameters, keys and registered secrets replaced by ``[REDACTED]`` (:mod:`pipeline.redact`):
    a best effort, not a licence.
    """

    run_id: str
    job: str
    provider: str | None = None
    model: str | None = None
    mode: str = "online"
    job_path: str | None = None
    job_hash: str | None = None
    job_text: str | None = None
    prompt_hash: str | None = None
    base_url: str | None = None
    state: str = "running"
    started_at: float | None = None
    rows_total: int | None = None
    price_source: str | None = None
    manifest: Mapping[str, Any] | str | None = None

    @classmethod
    def for_job(
        cls,
        job: Job,
        *,
        run_id: str,
        mode: str = "online",
        prompt_hash: str | None = None,
        price_source: str | None = None,
        manifest: Mapping[str, Any] | str | None = None,
        base_url: str | None = None,
    ) -> RunRecord:
        """The record of a run of ``job`` (base URL: ``job.resolved_base_url()`` unless given)."""
        return cls(
            run_id=run_id,
            job=job.name,
            provider=job.request.provider,
            model=job.request.model,
            mode=mode,
            job_path=job.path,
            job_hash=job.job_hash,
            job_text=job.text,
            prompt_hash=prompt_hash,
            base_url=base_url if base_url is not None else job.resolved_base_url(),
            price_source=price_source,
            manifest=manifest,
        )


def _check_state(state: str) -> None:
    if not _STATE_RE.fullmatch(state):
        raise ValueError(
            f"bad run state {state!r}; use 'running', 'completed', 'stopped: <why>' "
            "or 'failed: <why>'"
        )


def _redacted(text: str | None) -> str | None:
    return None if text is None else redact(text)


def _manifest_text(manifest: Mapping[str, Any] | str | None) -> str | None:
    if manifest is None or isinstance(manifest, str):
        return manifest
    try:
        return orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as exc:
        raise StoreError(f"cannot record the run: its manifest is not JSON ({exc})") from exc


class RunLedger:
    """``store.runs``: the ``runs`` table (one row per run) and the prices each run charged."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _no_run(self, run_id: str) -> StoreError:
        return StoreError(f"no run {run_id!r} in results database {self._db.path}")

    def start(self, run: RunRecord) -> None:
        """Record a new run (state ``running`` unless the record says otherwise)."""
        _check_state(run.state)
        started = time.time() if run.started_at is None else run.started_at
        with self._db.transaction(f"record run {run.run_id!r}") as cur:
            cur.execute(
                """
                INSERT INTO runs (run_id, job, job_path, job_hash, job_text, prompt_hash,
                                  provider, model, mode, base_url, state, started_at,
                                  rows_total, price_source, manifest)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(?), ?, ?, ?)
                """,
                [
                    run.run_id,
                    run.job,
                    run.job_path,
                    run.job_hash,
                    _redacted(run.job_text),
                    run.prompt_hash,
                    run.provider,
                    run.model,
                    run.mode,
                    None if run.base_url is None else safe_url(run.base_url),
                    run.state,
                    started,
                    run.rows_total,
                    run.price_source,
                    _redacted(_manifest_text(run.manifest)),
                ],
            )

    def reopen(self, run_id: str) -> None:
        """Mark a stopped or dead run ``running`` again (``pipeline resume``)."""
        with self._db.transaction(f"reopen run {run_id!r}") as cur:
            found = cur.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()
            if found is None or found[0] == 0:
                raise self._no_run(run_id)
            cur.execute(
                "UPDATE runs SET state = 'running', finished_at = NULL WHERE run_id = ?", [run_id]
            )

    def update(
        self,
        run_id: str,
        *,
        state: str | None = None,
        rows_total: int | None = None,
        rows_ok: int | None = None,
        rows_failed: int | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cost_usd: float | None = None,
        price_source: str | None = None,
        manifest: Mapping[str, Any] | str | None = None,
        finished_at: float | None = None,
        refresh_counts: bool = False,
    ) -> None:
        """Change the given fields of a run; ``None`` leaves a field as it is.

        ``refresh_counts=True`` fills ``rows_ok``, ``rows_failed`` (every row not ok),
        ``input_tokens``, ``output_tokens`` and ``cost_usd`` from the run's committed results,
        except those given explicitly. ``finished_at`` is unix seconds.
        """
        if state is not None:
            _check_state(state)
        given: dict[str, Any] = {
            "state": state,
            "rows_total": rows_total,
            "rows_ok": rows_ok,
            "rows_failed": rows_failed,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": cost_usd,
            "price_source": price_source,
            "manifest": None if manifest is None else _redacted(_manifest_text(manifest)),
        }
        with self._db.transaction(f"update run {run_id!r}") as cur:
            found = cur.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()
            if found is None or found[0] == 0:
                raise self._no_run(run_id)
            if refresh_counts:
                counts = count_results(cur, run_id)
                for column, key in _RUN_COUNT_COLUMNS:
                    if given[column] is None:
                        given[column] = counts[key]
                        if counts[key] is None:  # cost of a run with no priced row: NULL
                            given[column] = _NULL
            sets = [f"{column} = ?" for column, value in given.items() if value is not None]
            params = [None if v is _NULL else v for v in given.values() if v is not None]
            if finished_at is not None:
                sets.append("finished_at = to_timestamp(?)")
                params.append(finished_at)
            if sets:
                cur.execute(
                    f"UPDATE runs SET {', '.join(sets)} WHERE run_id = ?", [*params, run_id]
                )

    def finish(
        self,
        run_id: str,
        state: str,
        *,
        rows_total: int | None = None,
        rows_ok: int | None = None,
        rows_failed: int | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cost_usd: float | None = None,
        finished_at: float | None = None,
    ) -> None:
        """Mark a run finished: ``completed``, ``stopped: <why>`` or ``failed: <why>``.

        Sets ``finished_at`` (unix seconds; default now). Counts, tokens and cost not given are
        computed from the run's committed results, which is the safer choice: they count only
        what really reached the file, and the cost stays NULL when no row had a known price.
        ``rows_total`` is the number of input rows the run saw, if known.
        """
        self.update(
            run_id,
            state=state,
            rows_total=rows_total,
            rows_ok=rows_ok,
            rows_failed=rows_failed,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
            finished_at=time.time() if finished_at is None else finished_at,
            refresh_counts=True,
        )

    def get(self, run_id: str) -> dict[str, Any] | None:
        """The ``runs`` row of ``run_id`` as a dict (times as unix seconds), or None."""
        rows = self._db.query(
            "SELECT * EXCLUDE (started_at, finished_at), epoch(started_at) AS started_at, "
            "epoch(finished_at) AS finished_at FROM runs WHERE run_id = ?",
            [run_id],
        )
        return rows[0] if rows else None

    def list(self, *, limit: int = 20) -> _Rows:
        """The latest runs, newest first, with counts and cost from their committed results."""
        return self._db.query(
            """
            SELECT r.run_id, r.job, r.model, r.mode, r.state, epoch(r.started_at) AS started_at,
                   epoch(r.finished_at) AS finished_at,
                   count(x.status) FILTER (WHERE x.status = 'ok') AS rows_ok,
                   count(x.status) FILTER (WHERE x.status <> 'ok') AS rows_failed,
                   sum(x.cost_usd) AS cost_usd
            FROM runs r LEFT JOIN row_results x USING (run_id)
            GROUP BY r.run_id, r.job, r.model, r.mode, r.state, r.started_at, r.finished_at
            ORDER BY r.started_at DESC LIMIT ?
            """,
            [limit],
        )

    def record_prices(self, run_id: str, prices: Mapping[str, Price | None]) -> None:
        """Record the prices a run charges, by mode (``online``, ``batch``); a ``None`` price
        (unknown) is left out. Replaces what the run recorded before (a resume records again).
        The view ``cache_savings`` and the reports' cache figures read them."""
        with self._db.transaction(f"record the prices of run {run_id!r}") as cur:
            cur.execute("DELETE FROM run_prices WHERE run_id = ?", [run_id])
            for mode, price in prices.items():
                if price is None:
                    continue
                cur.execute(
                    "INSERT INTO run_prices (run_id, mode, input_mtok, output_mtok, "
                    "cache_read_mtok, cache_write_mtok, source) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        run_id,
                        mode,
                        price.input_mtok,
                        price.output_mtok,
                        price.cache_read_mtok,
                        price.cache_write_mtok,
                        price.source,
                    ],
                )


class BatchLedger:
    """``store.batches``: the parts of batch-mode runs (``batches``) and the requests in each
    (``batch_requests``). A part is recorded with its requests before it is submitted, and its
    batch id is committed before the runner waits on it."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record_part(
        self,
        run_id: str,
        part: int,
        provider: str,
        *,
        nbytes: int,
        requests: Iterable[tuple[str, str, str, int]] | Path,
    ) -> None:
        """Record a part about to be submitted: its requests as (request_key, row_id, source,
        line), in file order, or a file of them (one JSON object a line with those keys and
        ``ordinal``, 1-based in file order), which DuckDB reads itself. One transaction."""
        path = requests if isinstance(requests, Path) else self._rows_file(requests)
        with self._db.transaction(f"record batch part {part} of run {run_id!r}") as cur:
            row = cur.execute(
                "INSERT INTO batch_requests SELECT $run_id, $part, ordinal, request_key, row_id, "
                f"source, line FROM {read_json_lines(_PART_ROWS)} ORDER BY ordinal",
                {"run_id": run_id, "part": part, "path": str(path)},
            ).fetchone()
            cur.execute(
                "INSERT INTO batches (run_id, part, provider, status, requests, bytes) "
                "VALUES (?, ?, ?, 'preparing', ?, ?)",
                [run_id, part, provider, int(row[0]) if row else 0, nbytes],
            )

    def _rows_file(self, requests: Iterable[tuple[str, str, str, int]]) -> Path:
        """``requests`` written to the scratch file as ``record_part`` reads a file of them
        (under the write lock: the caller's transaction follows)."""
        scratch = self._db.scratch
        with scratch.open("wb") as handle:
            for ordinal, (key, row_id, source, line) in enumerate(requests, 1):
                handle.write(
                    orjson.dumps(
                        {
                            "request_key": key,
                            "row_id": row_id,
                            "source": source,
                            "line": line,
                            "ordinal": ordinal,
                        }
                    )
                    + b"\n"
                )
        return scratch

    def mark_submitted(
        self, run_id: str, part: int, batch_id: str, input_file_id: str | None
    ) -> None:
        """Record the provider's batch id (and input file id) of a part just submitted."""
        with self._db.transaction(f"record batch {batch_id!r}") as cur:
            cur.execute(
                "UPDATE batches SET batch_id = ?, input_file_id = ?, status = 'submitted', "
                "submitted_at = current_timestamp, updated_at = current_timestamp "
                "WHERE run_id = ? AND part = ?",
                [batch_id, input_file_id, run_id, part],
            )

    def update(
        self,
        run_id: str,
        part: int,
        *,
        status: str,
        succeeded: int | None = None,
        errored: int | None = None,
        error: str | None = None,
    ) -> None:
        """Set a part's status as the provider reports it; ``None`` leaves a count or the error
        as it is."""
        with self._db.transaction(f"update batch part {part} of run {run_id!r}") as cur:
            cur.execute(
                "UPDATE batches SET status = ?, succeeded = coalesce(?, succeeded), "
                "errored = coalesce(?, errored), error = coalesce(?, error), "
                "updated_at = current_timestamp WHERE run_id = ? AND part = ?",
                [status, succeeded, errored, error, run_id, part],
            )

    def collect(self, run_id: str, part: int, results: Sequence[RowResult]) -> None:
        """Write an ended part's results and mark it collected, in one transaction."""
        with self._db.transaction(f"collect batch part {part} of run {run_id!r}") as cur:
            insert_results(cur, self._db.scratch, results)
            self._mark_collected(cur, run_id, part)

    def collect_lines(self, run_id: str, part: int, paths: Sequence[Path]) -> int:
        """Write an ended part's results from files of result lines (as the journal writes
        them) and mark the part collected, all in one transaction; returns the rows written.
        Each line is joined to the part's request by its ``request_key``: the row id, source
        and line recorded for the part are written, whatever the line says; a line whose key
        is not in the part is left out. (Several files of a MB or so, rather than one: DuckDB
        holds the whole of a file it reads in memory.)"""
        written = 0
        with self._db.transaction(f"collect batch part {part} of run {run_id!r}") as cur:
            columns = ", ".join(
                f"q.{c.name}"
                if c.name in ("row_id", "source", "line")
                else (c.insert or f"a.{c.name}")
                for c in ROW_RESULTS
            )
            names = ", ".join(c.name for c in ROW_RESULTS)
            for path in paths:
                row = cur.execute(
                    f"INSERT INTO row_results ({names}) SELECT {columns} FROM "
                    f"{read_result_lines(ignore_errors=False)} a JOIN batch_requests q "
                    "ON q.run_id = $run_id AND q.part = $part AND q.request_key = a.request_key",
                    {"run_id": run_id, "part": part, "path": str(path)},
                ).fetchone()
                written += int(row[0]) if row else 0
            self._mark_collected(cur, run_id, part)
        return written

    @staticmethod
    def _mark_collected(cur: Any, run_id: str, part: int) -> None:
        cur.execute(
            "UPDATE batches SET collected_at = current_timestamp, "
            "updated_at = current_timestamp WHERE run_id = ? AND part = ?",
            [run_id, part],
        )

    def part_keys(self, run_id: str, part: int) -> set[str]:
        """The request keys of one part."""
        keys: set[str] = set()
        with self._db.cursor(f"read batch part {part} of run {run_id!r}") as cur:
            cur.execute(
                "SELECT request_key FROM batch_requests WHERE run_id = ? AND part = ?",
                [run_id, part],
            )
            while rows := cur.fetchmany(8192):
                keys.update(key for (key,) in rows)
        return keys

    def parts(self, run_id: str) -> _Rows:
        """Every part of a run, in order, with ``collected`` (bool) and ``created_at`` (unix
        seconds when the part was recorded, before it was submitted)."""
        return self._db.query(
            "SELECT part, provider, batch_id, input_file_id, status, requests, bytes, "
            "collected_at IS NOT NULL AS collected, epoch(created_at) AS created_at "
            "FROM batches WHERE run_id = ? ORDER BY part",
            [run_id],
        )

    def open_parts(self, *, job: str, prompt_hash: str, exclude_run: str) -> _Rows:
        """The parts other runs of ``job`` under request version ``prompt_hash`` recorded and
        nobody collected: submitted and waiting, or prepared and never given a batch id. Each
        with ``run_id``, ``part``, ``batch_id``, ``input_file_id``, ``status``, ``requests``,
        ``bytes`` and ``created_at`` (unix seconds)."""
        return self._db.query(
            "SELECT b.run_id, b.part, b.provider, b.batch_id, b.input_file_id, b.status, "
            "b.requests, b.bytes, epoch(b.created_at) AS created_at "
            "FROM batches b JOIN runs r ON r.run_id = b.run_id "
            "WHERE r.job = $job AND r.prompt_hash = $prompt_hash AND b.run_id <> $exclude "
            "AND b.collected_at IS NULL ORDER BY b.run_id, b.part",
            {"job": job, "prompt_hash": prompt_hash, "exclude": exclude_run},
        )

    def adopt(self, from_run: str, part: int, to_run: str) -> int:
        """Move one part (and its requests) of ``from_run`` to ``to_run``, as its next part
        number, in one transaction; returns that number. A run takes over the batches of an
        earlier run it would otherwise submit again."""
        with self._db.transaction(f"take over batch part {part} of run {from_run!r}") as cur:
            row = cur.execute(
                "SELECT coalesce(max(part), 0) + 1 FROM batches WHERE run_id = ?", [to_run]
            ).fetchone()
            new = int(row[0]) if row else 1
            for table in ("batches", "batch_requests"):
                cur.execute(
                    f"UPDATE {table} SET run_id = ?, part = ? WHERE run_id = ? AND part = ?",
                    [to_run, new, from_run, part],
                )
        return new

    def drop_part(self, run_id: str, part: int) -> None:
        """Forget a part that was never submitted (its file is gone): its rows are planned
        again."""
        with self._db.transaction(f"drop batch part {part} of run {run_id!r}") as cur:
            for table in ("batch_requests", "batches"):
                cur.execute(f"DELETE FROM {table} WHERE run_id = ? AND part = ?", [run_id, part])

    def requests(self, run_id: str, part: int) -> dict[str, tuple[str, str, int, int]]:
        """request_key → (row_id, source, line, ordinal) for one part."""
        with self._db.cursor(f"read batch part {part} of run {run_id!r}") as cur:
            rows = cur.execute(
                "SELECT request_key, row_id, source, line, ordinal FROM batch_requests "
                "WHERE run_id = ? AND part = ?",
                [run_id, part],
            ).fetchall()
        return {key: (row_id, src, int(line), int(o)) for key, row_id, src, line, o in rows}

    def unanswered_keys(self, run_id: str) -> set[str]:
        """Keys this run put in a batch that have no result in this run yet."""
        with self._db.cursor(f"list unanswered rows of run {run_id!r}") as cur:
            rows = cur.execute(
                "SELECT request_key FROM batch_requests b WHERE run_id = $run_id "
                "AND NOT EXISTS (SELECT 1 FROM row_results r WHERE r.run_id = $run_id "
                "AND r.request_key = b.request_key)",
                {"run_id": run_id},
            ).fetchall()
        return {row[0] for row in rows}

    def list(self, *, run_id: str | None = None) -> _Rows:
        """Every part of every run (or of ``run_id``), newest run first, times as unix
        seconds."""
        return self._db.query(
            "SELECT run_id, part, provider, batch_id, status, requests, bytes, succeeded, "
            "errored, epoch(submitted_at) AS submitted_at, epoch(updated_at) AS updated_at, "
            "collected_at IS NOT NULL AS collected, error FROM batches "
            "WHERE $run_id::VARCHAR IS NULL OR run_id = $run_id "
            "ORDER BY run_id DESC, part",
            {"run_id": run_id},
        )
