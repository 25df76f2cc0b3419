"""The result sink: rows' outcomes into ``row_results``, and which rows are done.

Results are inserted as Arrow tables built column by column from
:class:`~pipeline.records.RowResult` (one ``pa.array`` per column of
:data:`~pipeline.store.schema.ROW_RESULTS`), in chunks, inside one transaction per call: a
batch is committed whole or not at all.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Final

import duckdb
import pyarrow as pa

from ..errors import StoreError
from ..plan import Seen
from ..records import RowResult
from ._db import Database
from .schema import ROW_RESULTS, ROW_RESULTS_ARROW, UNPRICED

__all__ = ["ResultTable", "count_results", "insert_results"]

# Rows per INSERT inside one transaction; bounds the Arrow memory of a big batch.
_INSERT_CHUNK = 10_000

_get_result_fields = operator.attrgetter(*(c.name for c in ROW_RESULTS))

_INSERT_SQL: Final = (
    f"INSERT INTO row_results ({', '.join(c.name for c in ROW_RESULTS)}) "
    f"SELECT {', '.join(c.insert_expr for c in ROW_RESULTS)} FROM arrow_table"
)

# Rows of a journal the table does not hold yet; DuckDB's INSERT answers with the count.
_INSERT_MISSING_SQL: Final = (
    f"INSERT INTO row_results ({', '.join(c.name for c in ROW_RESULTS)}) "
    f"SELECT {', '.join(c.insert_expr for c in ROW_RESULTS)} FROM arrow_table a "
    "WHERE NOT EXISTS (SELECT 1 FROM row_results r WHERE r.run_id = a.run_id "
    "AND r.request_key = a.request_key AND r.source IS NOT DISTINCT FROM a.source "
    "AND r.line IS NOT DISTINCT FROM a.line)"
)

# What is known of some keys: ok results of any run, and every result of run $run_id ...
_SEEN_RESULTS_SQL: Final = (
    "SELECT request_key, CASE WHEN status = 'ok' THEN 'ok' ELSE 'recorded' END, run_id, "
    "source, line, NULL, NULL FROM row_results "
    "WHERE (status = 'ok' OR run_id = $run_id) "
    "AND request_key IN (SELECT unnest($keys::VARCHAR[]))"
)
# ... and the batch parts holding them without an answer: any run's open parts, and this run's
# own (whose unanswered rows its online pass sends).
_SEEN_BATCHED_SQL: Final = (
    "SELECT q.request_key, 'batched', q.run_id, q.source, q.line, b.batch_id, b.status "
    "FROM batch_requests q JOIN batches b ON b.run_id = q.run_id AND b.part = q.part "
    "WHERE q.request_key IN (SELECT unnest($keys::VARCHAR[])) "
    "AND (b.collected_at IS NULL OR q.run_id = $run_id) "
    "AND NOT EXISTS (SELECT 1 FROM row_results r "
    "WHERE r.run_id = q.run_id AND r.request_key = q.request_key)"
)

_COUNT_KEYS: Final = (
    "rows",
    "ok",
    "failed",
    "input_errors",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_rows",
)


def insert_results(cur: duckdb.DuckDBPyConnection, results: Sequence[RowResult]) -> None:
    """Insert ``results`` on ``cur``, inside the caller's transaction, in chunks."""
    for start in range(0, len(results), _INSERT_CHUNK):
        # DuckDB finds `arrow_table` by name (a replacement scan of this frame's locals);
        # cheaper than register()/unregister(), which cost two more statements.
        arrow_table = _results_table(results[start : start + _INSERT_CHUNK])
        cur.execute(_INSERT_SQL)
        del arrow_table


def count_results(cur: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """A run's committed results in numbers (see :meth:`ResultTable.counts`)."""
    row = cur.execute(
        f"""
        SELECT count(*),
               count(*) FILTER (WHERE status = 'ok'),
               count(*) FILTER (WHERE status <> 'ok'),
               count(*) FILTER (WHERE status = 'input_error'),
               coalesce(sum(input_tokens), 0),
               coalesce(sum(output_tokens), 0),
               coalesce(sum(cache_read_tokens), 0),
               coalesce(sum(cache_write_tokens), 0),
               coalesce(sum(reasoning_tokens), 0),
               sum(cost_usd),
               count(*) FILTER (WHERE {UNPRICED})
        FROM row_results WHERE run_id = ?
        """,
        [run_id],
    ).fetchone()
    assert row is not None  # an aggregate without GROUP BY always returns one row
    return dict(zip(_COUNT_KEYS, row, strict=True))


def _add_seen(found: dict[str, list[Seen]], rows: Sequence[tuple[Any, ...]]) -> None:
    for key, kind, run_id, source, line, batch_id, status in rows:
        found.setdefault(key, []).append(Seen(kind, run_id, source, int(line), batch_id, status))


def _results_table(results: Sequence[RowResult]) -> pa.Table:
    """Build the Arrow table column by column (fast: one ``pa.array`` per column)."""
    columns = zip(*map(_get_result_fields, results), strict=True)
    arrays = []
    for column, field in zip(columns, ROW_RESULTS_ARROW, strict=True):
        try:
            arrays.append(pa.array(column, type=field.type))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            bad = _first_bad(column, field.type)
            raise StoreError(
                f"cannot write results: column {field.name!r} holds {bad!r}, "
                f"which is not {field.type} ({exc})"
            ) from exc
    return pa.Table.from_arrays(arrays, schema=ROW_RESULTS_ARROW)


def _first_bad(column: Sequence[Any], kind: pa.DataType) -> Any:
    for value in column:
        try:
            pa.array([value], type=kind)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            return value
    return "?"  # pragma: no cover - only reached if the whole column fails but no single value


class ResultTable:
    """``store.results``: write rows' outcomes, and say what is known of rows (``seen``)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def write(self, results: Sequence[RowResult]) -> None:
        """Insert ``results`` in one transaction: all of them are committed, or none is.

        Raises StoreError (nothing written) if a value does not fit its column or the database
        refuses the batch. Blocking: call it from a worker thread in async code.
        """
        if not results:
            return
        with self._db.transaction(f"write {len(results)} results (none was written)") as cur:
            insert_results(cur, results)

    def write_missing(self, results: Sequence[RowResult]) -> int:
        """Insert those of ``results`` the table does not hold yet (the same run, request key,
        source and line), in one transaction; returns how many it inserted. Replaying a
        journal (``pipeline.execution.journal``) twice records nothing twice."""
        if not results:
            return 0
        inserted = 0
        with self._db.transaction(f"record {len(results)} results from a journal") as cur:
            for start in range(0, len(results), _INSERT_CHUNK):
                # DuckDB finds `arrow_table` by name, as in insert_results.
                arrow_table = _results_table(results[start : start + _INSERT_CHUNK])
                row = cur.execute(_INSERT_MISSING_SQL).fetchone()
                del arrow_table
                inserted += int(row[0]) if row else 0
        return inserted

    def seen(
        self,
        keys: Sequence[str],
        *,
        run_id: str,
        near: tuple[str, int, int] | None = None,
    ) -> dict[str, list[Seen]]:
        """What the database holds for ``keys`` (the planner's ``KeyLookup``): their ``ok``
        results in any run, every result ``run_id`` recorded, and the batch parts that hold
        them without a result: parts of any run not collected yet, and ``run_id``'s own.

        ``near`` = (source, first line, last line) of the keys' rows. Results are stored in
        roughly input order, so looking there first lets DuckDB skip every row group whose
        lines are elsewhere (its min/max statistics); only keys not found there are looked up
        in the whole table. A rerun of a finished million-row job is several times faster so.
        """
        found: dict[str, list[Seen]] = {}
        if not keys:
            return found
        rest = list(keys)
        with self._db.cursor("look up what is known of the rows") as cur:
            if near is not None:
                source, first, last = near
                params = {"keys": rest, "run_id": run_id, "source": source}
                rows = cur.execute(
                    _SEEN_RESULTS_SQL + " AND source = $source AND line BETWEEN $first AND $last",
                    {**params, "first": first, "last": last},
                ).fetchall()
                _add_seen(found, rows)
                rest = [k for k in rest if k not in found]
            if rest:
                rows = cur.execute(_SEEN_RESULTS_SQL, {"keys": rest, "run_id": run_id}).fetchall()
                _add_seen(found, rows)
            rows = cur.execute(_SEEN_BATCHED_SQL, {"keys": list(keys), "run_id": run_id}).fetchall()
            _add_seen(found, rows)
        return found

    def has_results(self, prompt_hash: str) -> bool:
        """Whether any result of this request version exists (if not, no row can be done)."""
        with self._db.cursor("look for earlier results") as cur:
            row = cur.execute(
                "SELECT EXISTS (SELECT 1 FROM row_results WHERE prompt_hash = ?)", [prompt_hash]
            ).fetchone()
        return bool(row and row[0])

    def not_ok_rows(self, run_id: str) -> tuple[set[str], set[tuple[str, int]]]:
        """What ``rerun --failed`` sends again: the request keys of the run's rows that are not
        ``ok`` (and have no ``ok`` result since), and the (source, line) of its input errors,
        which get new keys once the input is fixed."""
        with self._db.cursor(f"list the failed rows of run {run_id!r}") as cur:
            keys = cur.execute(
                "SELECT DISTINCT request_key FROM row_results r WHERE run_id = ? "
                "AND status IN ('failed', 'invalid') AND NOT EXISTS (SELECT 1 FROM row_results o "
                "WHERE o.request_key = r.request_key AND o.status = 'ok')",
                [run_id],
            ).fetchall()
            lines = cur.execute(
                "SELECT DISTINCT source, line FROM row_results "
                "WHERE run_id = ? AND status = 'input_error'",
                [run_id],
            ).fetchall()
        return {k for (k,) in keys}, {(src, int(line)) for src, line in lines}

    def counts(self, run_id: str) -> dict[str, Any]:
        """A run's committed results in numbers, for the final summary line.

        Keys: ``rows``, ``ok``, ``failed`` (every row not ok), ``input_errors``,
        ``input_tokens``, ``output_tokens``, ``cache_read_tokens``, ``cache_write_tokens``,
        ``reasoning_tokens`` (ints), ``cost_usd`` (float, ``None`` if no row had a known price)
        and ``unpriced_rows`` (rows that used tokens at an unknown price).
        """
        with self._db.cursor(f"count the results of run {run_id!r}") as cur:
            return count_results(cur, run_id)
