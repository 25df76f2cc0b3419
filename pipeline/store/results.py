"""The result sink: rows' outcomes into ``row_results``, and which rows are done.

Results reach the table as newline-delimited JSON, one object a row whose keys are the columns
of :data:`~pipeline.store.schema.ROW_RESULTS` (a ``RowResult`` as orjson writes it): the very
lines of a run's journal, which DuckDB reads and types itself (``read_json_lines``) and inserts
straight from the file (``write_lines``), so a result is encoded once on its way to the database.
``write`` encodes records the same way into a scratch file first. Each call is one transaction:
a batch is committed whole or not at all. (An Arrow table would do it without the file, but
pyarrow adds 25 MB to every run, more than a JSONL job's whole working set; measured in README,
"Performance".)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import duckdb
import orjson

from ..plan import Seen
from ..records import RowResult
from ._db import Database
from .schema import ROW_RESULTS, UNPRICED

__all__ = [
    "ResultTable",
    "count_results",
    "insert_lines",
    "insert_results",
    "read_json_lines",
    "read_result_lines",
]

# Results per scratch file inside one transaction (``write``): DuckDB holds the file it reads
# in memory, beside the transaction's rows, under the database's 32 MB limit.
_INSERT_CHUNK = 2048

_NAMES: Final = ", ".join(c.name for c in ROW_RESULTS)
_EXPRS: Final = ", ".join(c.insert_expr for c in ROW_RESULTS)
# The columns as json_transform reads a result line into a row.
_STRUCTURE: Final = "{" + ", ".join(f'"{c.name}": "{c.read_type}"' for c in ROW_RESULTS) + "}"
# Each line of a file whole, as one text value: orjson writes control characters escaped, so
# the byte 0x01 (the field delimiter here) never occurs in a line, and nothing is quoted.
_LINES: Final = (
    "read_csv($path, columns = {'j': 'VARCHAR'}, delim = '\x01', quote = '', escape = '', "
    "header = false, auto_detect = false, parallel = false, max_line_size = 4194304)"
)


def read_json_lines(structure: str, *, ignore_errors: bool = False, skip: str = "") -> str:
    """DuckDB reading the file ``$path`` of JSON objects, one a line, into rows of the columns
    ``structure`` names (``{"name": "TYPE", ...}``).

    Each line is read whole as text (``read_csv``, its buffer as large as the file, at most 64
    MB) and turned into a row by ``json_transform``: DuckDB's own JSON reader would do the same
    but sets aside a 32 MiB buffer for any file, counted against the small memory limit a
    job's database runs under. A missing key or a value that does not fit its column fails the
    read, unless ``ignore_errors``, which also skips a line cut short (a journal's last, after
    a crash of the machine). Lines skipped (those that begin with ``skip``, and the ones cut
    short) are read as rows of NULLs."""
    # Lines left out become rows of NULLs: DuckDB may transform a line before it filters.
    keep = [f"NOT starts_with(j, '{skip}')"] if skip else []
    if ignore_errors:
        keep.append("json_valid(j)")
    line = f"CASE WHEN {' AND '.join(keep)} THEN j END" if keep else "j"
    transform = "json_transform" if ignore_errors else "json_transform_strict"
    return f"(SELECT unnest({transform}({line}, '{structure}')) FROM {_LINES})"


def read_result_lines(*, ignore_errors: bool) -> str:
    """``read_json_lines`` of result lines (one ``RowResult`` a line, as the journal writes
    them), typed as the table's columns; a journal's first line, which names its run
    (``{"journal": ...``), is left out."""
    rows = read_json_lines(_STRUCTURE, ignore_errors=ignore_errors, skip='{"journal":')
    return f"(SELECT * FROM {rows} WHERE request_key IS NOT NULL)"


_INSERT_SQL: Final = (
    f"INSERT INTO row_results ({_NAMES}) "
    f"SELECT {_EXPRS} FROM {read_result_lines(ignore_errors=False)}"
)

# Rows of a journal the table does not hold yet; DuckDB's INSERT answers with the count.
_INSERT_MISSING_SQL: Final = (
    f"INSERT INTO row_results ({_NAMES}) "
    f"SELECT {_EXPRS} FROM {read_result_lines(ignore_errors=True)} a "
    "WHERE NOT EXISTS (SELECT 1 FROM row_results r WHERE r.run_id = a.run_id "
    "AND r.request_key = a.request_key AND r.source IS NOT DISTINCT FROM a.source "
    "AND r.line IS NOT DISTINCT FROM a.line)"
)

# What is known of some keys: ok results of any run, and every result of run $run_id ...
_SEEN_COLUMNS: Final = (
    "SELECT request_key, CASE WHEN status = 'ok' THEN 'ok' ELSE 'recorded' END, run_id, "
    "source, line, NULL, NULL FROM row_results WHERE (status = 'ok' OR run_id = $run_id) "
)
_SEEN_RESULTS_SQL: Final = _SEEN_COLUMNS + "AND request_key IN (SELECT unnest($keys::VARCHAR[]))"
# The rows of one stretch of one input file: their keys are picked out in Python, which is about
# three times faster than joining DuckDB's own list of them.
_SEEN_NEAR_SQL: Final = _SEEN_COLUMNS + "AND source = $source AND line BETWEEN $first AND $last"
# Whether any batch part can hold rows without an answer (a part table holds a few rows a run).
_ANY_OPEN_PART_SQL: Final = (
    "SELECT EXISTS (SELECT 1 FROM batches WHERE collected_at IS NULL OR run_id = $run_id)"
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


def insert_lines(cur: duckdb.DuckDBPyConnection, path: Path, *, missing_only: bool = False) -> int:
    """Insert the result lines of the file at ``path`` on ``cur``, inside the caller's
    transaction; returns the rows inserted (``missing_only``: only those the table does not
    hold yet, same run, request key, source and line; lines cut short are skipped)."""
    sql = _INSERT_MISSING_SQL if missing_only else _INSERT_SQL
    row = cur.execute(sql, {"path": str(path)}).fetchone()
    return int(row[0]) if row else 0


def insert_results(
    cur: duckdb.DuckDBPyConnection, scratch: Path, results: Sequence[RowResult]
) -> int:
    """Insert ``results`` on ``cur``, inside the caller's transaction, in chunks, through the
    scratch file ``scratch`` (one JSON line each, as the journal writes them); returns the rows
    inserted."""
    inserted = 0
    dumps = orjson.dumps
    for start in range(0, len(results), _INSERT_CHUNK):
        chunk = results[start : start + _INSERT_CHUNK]
        scratch.write_bytes(b"\n".join([dumps(r) for r in chunk]) + b"\n")
        inserted += insert_lines(cur, scratch)
    return inserted


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
            insert_results(cur, self._db.scratch, results)

    def write_lines(self, path: Path) -> int:
        """Insert the results of a file of result lines (a journal segment: one JSON object a
        line, as orjson writes a ``RowResult``; lines without a ``request_key`` are left out)
        in one transaction, all or none; returns how many it inserted. Raises StoreError
        (nothing written) if a value does not fit its column. Blocking."""
        with self._db.transaction(f"write the results in {path.name} (none was written)") as cur:
            return insert_lines(cur, path)

    def write_missing(self, path: Path) -> int:
        """Insert those results of a file of result lines (a journal left by a killed process)
        that the table does not hold yet (the same run, request key, source and line), in one
        transaction; a line cut short by a crash is skipped. Returns how many it inserted.
        Replaying a journal (``pipeline.execution.journal``) twice records nothing twice."""
        with self._db.transaction(f"record the results of journal {path.name}") as cur:
            return insert_lines(cur, path, missing_only=True)

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
                wanted = set(keys)
                rows = cur.execute(
                    _SEEN_NEAR_SQL,
                    {"run_id": run_id, "source": source, "first": first, "last": last},
                ).fetchall()
                _add_seen(found, [r for r in rows if r[0] in wanted])
                rest = [k for k in rest if k not in found]
            if rest:
                rows = cur.execute(_SEEN_RESULTS_SQL, {"keys": rest, "run_id": run_id}).fetchall()
                _add_seen(found, rows)
            open_parts = cur.execute(_ANY_OPEN_PART_SQL, {"run_id": run_id}).fetchone()
            if open_parts is not None and open_parts[0]:
                batched = {"keys": list(keys), "run_id": run_id}
                _add_seen(found, cur.execute(_SEEN_BATCHED_SQL, batched).fetchall())
        return found

    def has_results(self, prompt_hash: str) -> bool:
        """Whether anything of this request version is recorded: a result, or a row in a batch
        part not collected yet (if not, no row can be done or pending, and a new run need not
        look its rows up)."""
        with self._db.cursor("look for earlier results") as cur:
            row = cur.execute(
                "SELECT EXISTS (SELECT 1 FROM row_results WHERE prompt_hash = $ph) "
                "OR EXISTS (SELECT 1 FROM batches b JOIN runs r ON r.run_id = b.run_id "
                "WHERE r.prompt_hash = $ph AND b.collected_at IS NULL)",
                {"ph": prompt_hash},
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
