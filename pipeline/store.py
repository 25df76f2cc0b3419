"""The result database: every row's outcome, token usage and cost, in one DuckDB file.

This is the only module that imports duckdb. Every duckdb (and pyarrow) error is raised as
:class:`~pipeline.errors.StoreError` naming the database file.

Querying results
================

The public interface for analysis is the view ``results``: one row per input row and run.
Open the file with the DuckDB CLI (``duckdb -readonly data/results.duckdb``) and ask, e.g.::

    SELECT model, status, count(*), sum(cost_usd) FROM results GROUP BY ALL;

Columns of ``results``:

=====================  ===========  ================================================================
column                 type         meaning
=====================  ===========  ================================================================
job                    VARCHAR      the job's ``name``
run_id                 VARCHAR      the run that wrote the row (see table ``runs``)
row_id                 VARCHAR      the row's id (the ``[input] id`` column, or a hash of the row)
status                 VARCHAR      ``ok`` | ``failed`` | ``input_error`` | ``invalid``
provider, model, mode  VARCHAR      ``openai``/``anthropic``, the model name, ``online``/``batch``
output_text            VARCHAR      the model's answer (NULL unless ok)
finish_reason          VARCHAR      as the provider said (``stop``, ``end_turn``, ``length``, ...)
error_type, error      VARCHAR      why the row failed (NULL when ok)
attempts               INTEGER      requests sent for the row, retries included
input_tokens           BIGINT       every prompt token, cache reads and writes included
output_tokens          BIGINT       every output token, reasoning included
cache_read_tokens      BIGINT       the part of input_tokens read from the prompt cache
cache_write_tokens     BIGINT       the part of input_tokens written to the prompt cache
reasoning_tokens       BIGINT       the part of output_tokens spent on reasoning
total_tokens           BIGINT       input_tokens + output_tokens
cost_usd               DOUBLE       US dollars; NULL when the model's price is unknown (never 0)
latency_ms             DOUBLE       time of the successful attempt
prompt_hash            VARCHAR      the request version (template, system prompt, model, params)
request_key            VARCHAR      this row under that version; a rerun skips keys already ok
finished_at            TIMESTAMPTZ  when the row's outcome was decided
source, line           VARCHAR/INT  the input file and its 1-based line (or Parquet row number)
output_json            JSON         a schema job's answer, parsed and valid (NULL otherwise)
=====================  ===========  ================================================================

``invalid`` rows are answers of a job with ``[request].schema`` that did not match it (or were
cut off: ``error_type`` ``truncated``); ``output_text`` keeps the raw answer and ``error`` says
what was wrong. Each such job also gets a view ``extract_<job>`` (``create_extract_view``): the
latest ``ok`` answer per ``row_id``, one typed column per top-level property of the schema.

Schema version 2 added ``output_json`` and the status ``invalid``. DuckDB cannot change a CHECK
constraint in place, so a version-1 file is migrated when it is first opened for writing: the
table ``row_results`` is rebuilt with the new CHECK and column, in one transaction.

A row that failed in one run and succeeded in a rerun appears once per run: ``sum(cost_usd)``
is what was paid. Table ``runs`` holds one row per run (job file, hashes, state, counts, cost,
price source, manifest); ``schema_version`` holds the schema's version.

Views for the usual questions
=============================

Opening the file for writing (any run) also creates these views over ``results``
(``CREATE OR REPLACE``, so they follow the code). Sums over no priced row are NULL, never 0.

``cost_by_job``
    job, rows, rows_ok, rows_failed (every status but ok), input_tokens, output_tokens,
    cost_usd, unpriced_rows (rows that used tokens at an unknown price)::

        SELECT * FROM cost_by_job ORDER BY cost_usd DESC;

``cost_by_model``
    provider, model, rows, rows_ok, rows_failed, input_tokens, output_tokens, cost_usd,
    cost_per_1k_rows (``1000 * cost_usd / rows``), unpriced_rows.

``cost_by_day``
    day (the UTC date of ``finished_at``), job, model, mode, rows, input_tokens, output_tokens,
    total_tokens, cost_usd::

        SELECT day, sum(cost_usd) FROM cost_by_day GROUP BY day ORDER BY day;

``cost_by_prompt_version``
    job, prompt_hash, provider, model, runs, rows, rows_ok, input_tokens, output_tokens,
    cost_usd, cost_per_1k_rows: what a change of prompt did to the bill.

``token_ratio``
    job, provider, model, rows (ok rows only), input_tokens, output_tokens,
    avg_input_tokens, avg_output_tokens, input_per_output (``input_tokens / output_tokens``).

``cache_savings``
    job, provider, model, input_tokens, cache_read_tokens, cache_write_tokens, hit_rate
    (``cache_read_tokens / input_tokens``), read_saved_usd (cache reads at the cache-read rate
    instead of the input rate), saved_usd (the same minus what cache writes cost above the input
    rate: the net saving against paying the full input price for every prompt token) and
    unpriced_rows (rows with cache tokens but no recorded price). SQL cannot know prices, so
    each run records the prices it charged in table ``run_prices`` (run_id, mode, input_mtok,
    output_mtok, cache_read_mtok, cache_write_mtok, source; one row per mode, written by
    ``pipeline run``/``resume``/``rerun``); rows of runs without one have a NULL saving.

``failures_by_type``
    job, status, error_type, rows, example_error, over the rows that are not ok::

        SELECT * FROM failures_by_type ORDER BY rows DESC;

``latency_percentiles``
    provider, model, mode, rows, p50_ms, p95_ms, p99_ms, over ok online rows (a batch row has
    no latency of its own).

Concurrency
===========

DuckDB lets one process write a file; while it does, no other process can open it, not even
read-only. Within the process a ``Store`` holds one DuckDB connection and gives every call a
short-lived cursor of its own (``connection.cursor()``, a few µs), so ``write_results`` may run
in a worker thread while other threads read: reads see the last committed batch. Writes are
serialised by a lock; ``close()`` waits for a write in progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import duckdb
import orjson
import pyarrow as pa

from .config import Job
from .errors import StoreError
from .records import RowResult
from .redact import redact, safe_url

if TYPE_CHECKING:
    from .cost import Price

__all__ = [
    "ANALYSIS_VIEWS",
    "RUN_STATES",
    "SCHEMA_VERSION",
    "ModelGroup",
    "Report",
    "RunRecord",
    "RunSummary",
    "Store",
    "Totals",
]

SCHEMA_VERSION: Final = 2

RUN_STATES: Final = ("running", "completed", "stopped: <why>", "failed: <why>")
"""What ``runs.state`` may hold; ``<why>`` is e.g. ``budget`` or ``signal``."""

# Rows per INSERT inside one write_results transaction; bounds the Arrow memory of a big batch.
_INSERT_CHUNK = 10_000

_RESULT_FIELDS: Final = tuple(f.name for f in dataclasses.fields(RowResult))

_ARROW_TYPES: Final[dict[str, pa.DataType]] = {
    "attempts": pa.int32(),
    "input_tokens": pa.int64(),
    "output_tokens": pa.int64(),
    "cache_read_tokens": pa.int64(),
    "cache_write_tokens": pa.int64(),
    "reasoning_tokens": pa.int64(),
    "cost_usd": pa.float64(),
    "latency_ms": pa.float64(),
    "finished_at": pa.float64(),  # unix seconds; to_timestamp() in the INSERT
    "line": pa.int64(),
}
_ARROW_SCHEMA: Final = pa.schema(
    [(name, _ARROW_TYPES.get(name, pa.string())) for name in _RESULT_FIELDS]
)
_get_result_fields = operator.attrgetter(*_RESULT_FIELDS)

_SCHEMA_SQL: Final = (
    """
    CREATE TABLE IF NOT EXISTS schema_version (
        version    INTEGER NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS runs (
        run_id        VARCHAR PRIMARY KEY,
        job           VARCHAR NOT NULL,
        job_path      VARCHAR,
        job_hash      VARCHAR,
        job_text      VARCHAR,
        prompt_hash   VARCHAR,
        provider      VARCHAR,
        model         VARCHAR,
        mode          VARCHAR,
        base_url      VARCHAR,
        state         VARCHAR NOT NULL CHECK (
                          state IN ('running', 'completed')
                          OR (state LIKE 'stopped: _%') OR (state LIKE 'failed: _%')),
        started_at    TIMESTAMPTZ NOT NULL,
        finished_at   TIMESTAMPTZ,
        rows_total    BIGINT,
        rows_ok       BIGINT,
        rows_failed   BIGINT,
        input_tokens  BIGINT,
        output_tokens BIGINT,
        cost_usd      DOUBLE,
        price_source  VARCHAR,
        manifest      VARCHAR
    )
    """,
    # No primary key or unique index: index upkeep slows bulk inserts and costs memory.
    """
    CREATE TABLE IF NOT EXISTS row_results (
        job                VARCHAR NOT NULL,
        run_id             VARCHAR NOT NULL,
        row_id             VARCHAR NOT NULL,
        request_key        VARCHAR NOT NULL,
        prompt_hash        VARCHAR,
        status             VARCHAR NOT NULL
                           CHECK (status IN ('ok', 'failed', 'input_error', 'invalid')),
        provider           VARCHAR,
        model              VARCHAR,
        mode               VARCHAR,
        output_text        VARCHAR,
        finish_reason      VARCHAR,
        error_type         VARCHAR,
        error              VARCHAR,
        attempts           INTEGER,
        input_tokens       BIGINT,
        output_tokens      BIGINT,
        cache_read_tokens  BIGINT,
        cache_write_tokens BIGINT,
        reasoning_tokens   BIGINT,
        cost_usd           DOUBLE,
        latency_ms         DOUBLE,
        finished_at        TIMESTAMPTZ NOT NULL,
        source             VARCHAR,
        line               BIGINT,
        output_json        JSON
    )
    """,
)

_BATCH_SCHEMA_SQL: Final = (
    # One row per part of a batch-mode run. A part is recorded (with its requests) before it is
    # submitted, and its batch id is committed before the runner waits on it.
    """
    CREATE TABLE IF NOT EXISTS batches (
        run_id        VARCHAR NOT NULL,
        part          INTEGER NOT NULL,
        provider      VARCHAR NOT NULL,
        batch_id      VARCHAR,
        input_file_id VARCHAR,
        status        VARCHAR NOT NULL,
        requests      BIGINT NOT NULL,
        bytes         BIGINT NOT NULL,
        succeeded     BIGINT,
        errored       BIGINT,
        created_at    TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
        submitted_at  TIMESTAMPTZ,
        updated_at    TIMESTAMPTZ,
        collected_at  TIMESTAMPTZ,
        error         VARCHAR
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS batch_requests (
        run_id      VARCHAR NOT NULL,
        part        INTEGER NOT NULL,
        ordinal     INTEGER NOT NULL,
        request_key VARCHAR NOT NULL,
        row_id      VARCHAR NOT NULL,
        source      VARCHAR,
        line        BIGINT
    )
    """,
)

_RESULTS_VIEW_SQL: Final = """
    CREATE OR REPLACE VIEW results AS
    SELECT job, run_id, row_id, status, provider, model, mode, output_text, finish_reason,
           error_type, error, attempts, input_tokens, output_tokens, cache_read_tokens,
           cache_write_tokens, reasoning_tokens, input_tokens + output_tokens AS total_tokens,
           cost_usd, latency_ms, prompt_hash, request_key, finished_at, source, line,
           output_json
    FROM row_results
"""

_INSERT_SQL: Final = (
    f"INSERT INTO row_results ({', '.join(_RESULT_FIELDS)}) SELECT "
    + ", ".join(
        "to_timestamp(finished_at)" if name == "finished_at" else name for name in _RESULT_FIELDS
    )
    + " FROM arrow_table"
)

# "tokens were used but the price is unknown": NULL cost on a row that consumed tokens.
_UNPRICED = "cost_usd IS NULL AND coalesce(input_tokens, 0) + coalesce(output_tokens, 0) > 0"

_FILTER = "($job::VARCHAR IS NULL OR job = $job) AND ($run_id::VARCHAR IS NULL OR run_id = $run_id)"

_PRICE_SCHEMA_SQL: Final = (
    # The prices a run charged, one row per mode (a batch run may finish rows online), so that
    # SQL can tell what the prompt cache saved (view cache_savings). USD per million tokens.
    """
    CREATE TABLE IF NOT EXISTS run_prices (
        run_id           VARCHAR NOT NULL,
        mode             VARCHAR NOT NULL,
        input_mtok       DOUBLE NOT NULL,
        output_mtok      DOUBLE NOT NULL,
        cache_read_mtok  DOUBLE,
        cache_write_mtok DOUBLE,
        source           VARCHAR,
        recorded_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
    )
    """,
)

# Analysis views over `results`, documented in the module docstring and README.md.
_ANALYSIS_VIEWS_SQL: Final = (
    f"""
    CREATE OR REPLACE VIEW cost_by_job AS
    SELECT job,
           count(*) AS rows,
           count(*) FILTER (WHERE status = 'ok') AS rows_ok,
           count(*) FILTER (WHERE status <> 'ok') AS rows_failed,
           coalesce(sum(input_tokens), 0) AS input_tokens,
           coalesce(sum(output_tokens), 0) AS output_tokens,
           sum(cost_usd) AS cost_usd,
           count(*) FILTER (WHERE {_UNPRICED}) AS unpriced_rows
    FROM results GROUP BY job
    """,
    f"""
    CREATE OR REPLACE VIEW cost_by_model AS
    SELECT provider, model,
           count(*) AS rows,
           count(*) FILTER (WHERE status = 'ok') AS rows_ok,
           count(*) FILTER (WHERE status <> 'ok') AS rows_failed,
           coalesce(sum(input_tokens), 0) AS input_tokens,
           coalesce(sum(output_tokens), 0) AS output_tokens,
           sum(cost_usd) AS cost_usd,
           1000 * sum(cost_usd) / count(*) AS cost_per_1k_rows,
           count(*) FILTER (WHERE {_UNPRICED}) AS unpriced_rows
    FROM results GROUP BY provider, model
    """,
    """
    CREATE OR REPLACE VIEW cost_by_day AS
    SELECT CAST(timezone('UTC', finished_at) AS DATE) AS day, job, model, mode,
           count(*) AS rows,
           coalesce(sum(input_tokens), 0) AS input_tokens,
           coalesce(sum(output_tokens), 0) AS output_tokens,
           coalesce(sum(total_tokens), 0) AS total_tokens,
           sum(cost_usd) AS cost_usd
    FROM results GROUP BY ALL
    """,
    """
    CREATE OR REPLACE VIEW cost_by_prompt_version AS
    SELECT job, prompt_hash, provider, model,
           count(DISTINCT run_id) AS runs,
           count(*) AS rows,
           count(*) FILTER (WHERE status = 'ok') AS rows_ok,
           coalesce(sum(input_tokens), 0) AS input_tokens,
           coalesce(sum(output_tokens), 0) AS output_tokens,
           sum(cost_usd) AS cost_usd,
           1000 * sum(cost_usd) / count(*) AS cost_per_1k_rows
    FROM results GROUP BY job, prompt_hash, provider, model
    """,
    """
    CREATE OR REPLACE VIEW token_ratio AS
    SELECT job, provider, model,
           count(*) AS rows,
           coalesce(sum(input_tokens), 0) AS input_tokens,
           coalesce(sum(output_tokens), 0) AS output_tokens,
           avg(input_tokens) AS avg_input_tokens,
           avg(output_tokens) AS avg_output_tokens,
           sum(input_tokens) / nullif(sum(output_tokens), 0) AS input_per_output
    FROM results WHERE status = 'ok' GROUP BY job, provider, model
    """,
    """
    CREATE OR REPLACE VIEW cache_savings AS
    SELECT r.job, r.provider, r.model,
           coalesce(sum(r.input_tokens), 0) AS input_tokens,
           coalesce(sum(r.cache_read_tokens), 0) AS cache_read_tokens,
           coalesce(sum(r.cache_write_tokens), 0) AS cache_write_tokens,
           sum(r.cache_read_tokens) / nullif(sum(r.input_tokens), 0) AS hit_rate,
           sum(r.cache_read_tokens
               * (p.input_mtok - coalesce(p.cache_read_mtok, p.input_mtok))) / 1e6
               AS read_saved_usd,
           sum(r.cache_read_tokens
               * (p.input_mtok - coalesce(p.cache_read_mtok, p.input_mtok))
               + r.cache_write_tokens
               * (p.input_mtok - coalesce(p.cache_write_mtok, p.input_mtok))) / 1e6
               AS saved_usd,
           count(*) FILTER (WHERE p.run_id IS NULL
                            AND r.cache_read_tokens + r.cache_write_tokens > 0) AS unpriced_rows
    FROM results r LEFT JOIN run_prices p ON p.run_id = r.run_id AND p.mode = r.mode
    GROUP BY r.job, r.provider, r.model
    """,
    """
    CREATE OR REPLACE VIEW failures_by_type AS
    SELECT job, status, error_type, count(*) AS rows, min(error) AS example_error
    FROM results WHERE status <> 'ok' GROUP BY job, status, error_type
    """,
    """
    CREATE OR REPLACE VIEW latency_percentiles AS
    SELECT provider, model, mode,
           count(*) AS rows,
           quantile_cont(latency_ms, 0.5) AS p50_ms,
           quantile_cont(latency_ms, 0.95) AS p95_ms,
           quantile_cont(latency_ms, 0.99) AS p99_ms
    FROM results
    WHERE status = 'ok' AND mode = 'online' AND latency_ms IS NOT NULL
    GROUP BY provider, model, mode
    """,
)
ANALYSIS_VIEWS: Final = (
    "cost_by_job",
    "cost_by_model",
    "cost_by_day",
    "cost_by_prompt_version",
    "token_ratio",
    "cache_savings",
    "failures_by_type",
    "latency_percentiles",
)
"""The analysis views every writable open creates (see the module docstring)."""

# runs column <- key of Store._counts(), for finish_run / update_run(refresh_counts=True)
_RUN_COUNT_COLUMNS: Final = (
    ("rows_ok", "ok"),
    ("rows_failed", "failed"),
    ("input_tokens", "input_tokens"),
    ("output_tokens", "output_tokens"),
    ("cost_usd", "cost_usd"),
)
_NULL: Final = object()  # "set this column to NULL" in update_run

_STATE_RE = re.compile(r"running|completed|(stopped|failed): .+", re.DOTALL)
_LOCK_PID_RE = re.compile(r"\(PID (\d+)\)")


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as ``start_run`` records it. Never put an API key in any field.

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


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over the selected results. ``failed`` is every row not ``ok`` (input errors too).

    ``cost_usd`` is ``None`` when no row had a known price; ``unpriced_rows`` counts rows that
    used tokens at an unknown price (their cost is missing from ``cost_usd``).
    """

    rows: int
    ok: int
    failed: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cost_usd: float | None
    unpriced_rows: int


@dataclass(frozen=True, slots=True)
class ModelGroup:
    """Results of one (provider, model, status). Latency percentiles are over ``ok`` rows only,
    so they are ``None`` on the other statuses' groups."""

    provider: str | None
    model: str | None
    status: str
    rows: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    unpriced_rows: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None


@dataclass(frozen=True, slots=True)
class RunSummary:
    """One run in a report. Row counts and cost come from the committed results, so a run that
    is still going (or died) shows what it has written so far."""

    run_id: str
    job: str
    provider: str | None
    model: str | None
    mode: str | None
    state: str
    started_at: datetime
    finished_at: datetime | None
    rows_ok: int
    rows_failed: int
    cost_usd: float | None


@dataclass(frozen=True, slots=True)
class Report:
    """Everything ``pipeline.report.render_report`` prints, as plain data."""

    job: str | None
    run_id: str | None
    totals: Totals
    groups: tuple[ModelGroup, ...]
    runs: tuple[RunSummary, ...]
    cache_saved_usd: float | None = None
    """What cache reads and writes saved against the full input price (``cache_savings``'s
    ``saved_usd``); ``None`` when no run of the selection recorded its prices."""


# --------------------------------------------------------------------------------------------
# Helpers


def _config(read_only: bool) -> dict[str, Any]:
    """DuckDB settings. A job's writer does small inserts and key look-ups while the rest of
    the process does the work, so it gets one thread and a small cache: by default DuckDB keeps
    written blocks cached up to 80% of RAM, and a job's memory grew with its row count (346 MB
    at a million rows, measured). Readers (reports, SQL) keep DuckDB's defaults."""
    return {} if read_only else {"memory_limit": "32MB", "threads": 1}


def _redacted(text: str | None) -> str | None:
    return None if text is None else redact(text)


def _check_state(state: str) -> None:
    if not _STATE_RE.fullmatch(state):
        raise ValueError(
            f"bad run state {state!r}; use 'running', 'completed', 'stopped: <why>' "
            "or 'failed: <why>'"
        )


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)


def _results_table(results: Sequence[RowResult]) -> pa.Table:
    """Build the Arrow table column by column (fast: one ``pa.array`` per column)."""
    columns = zip(*map(_get_result_fields, results), strict=True)
    arrays = []
    for column, field in zip(columns, _ARROW_SCHEMA, strict=True):
        try:
            arrays.append(pa.array(column, type=field.type))
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            bad = _first_bad(column, field.type)
            raise StoreError(
                f"cannot write results: column {field.name!r} holds {bad!r}, "
                f"which is not {field.type} ({exc})"
            ) from exc
    return pa.Table.from_arrays(arrays, schema=_ARROW_SCHEMA)


def _first_bad(column: Sequence[Any], kind: pa.DataType) -> Any:
    for value in column:
        try:
            pa.array([value], type=kind)
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            return value
    return "?"  # pragma: no cover - only reached if the whole column fails but no single value


def _manifest_text(manifest: Mapping[str, Any] | str | None) -> str | None:
    if manifest is None or isinstance(manifest, str):
        return manifest
    try:
        return orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as exc:
        raise StoreError(f"cannot record the run: its manifest is not JSON ({exc})") from exc


def _migrate_row_results(cur: duckdb.DuckDBPyConnection) -> bool:
    """Rebuild a schema-version-1 ``row_results`` (no ``output_json``, a CHECK without
    ``invalid``) in the current shape, keeping every row; True when it did. DuckDB cannot alter a
    CHECK constraint, so the table is renamed, created anew, copied and dropped, inside the
    caller's transaction."""
    found = cur.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE schema_name = 'main' "
        "AND table_name = 'row_results' AND column_name = 'output_json'"
    ).fetchone()
    if found is not None and found[0]:
        return False
    create = next(sql for sql in _SCHEMA_SQL if "TABLE IF NOT EXISTS row_results" in sql)
    old_columns = ", ".join(name for name in _RESULT_FIELDS if name != "output_json")
    cur.execute("ALTER TABLE row_results RENAME TO row_results_v1")
    cur.execute(create)
    cur.execute(f"INSERT INTO row_results ({old_columns}) SELECT {old_columns} FROM row_results_v1")
    cur.execute("DROP TABLE row_results_v1")
    return True


_EXTRACT_TYPES: Final = frozenset({"VARCHAR", "BIGINT", "DOUBLE", "BOOLEAN", "JSON"})


def _ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _extract_select(columns: Sequence[tuple[str, str]]) -> list[str]:
    """The typed select list of an extract view: one expression per (property, type), named
    after the property (made unique: DuckDB names ignore case)."""
    taken = {"row_id", "run_id"}
    out = ["row_id", "run_id"]
    for prop, sql_type in columns:
        if sql_type not in _EXTRACT_TYPES:
            raise ValueError(f"extract column {prop!r}: unknown type {sql_type!r}")
        path = _literal("$." + orjson.dumps(prop).decode())
        if sql_type == "JSON":
            expr = f"output_json -> {path}"
        elif sql_type == "VARCHAR":
            expr = f"output_json ->> {path}"
        else:
            expr = f"TRY_CAST(output_json ->> {path} AS {sql_type})"
        name, n = prop, 1
        while name.lower() in taken:
            n += 1
            name = f"{prop}_{n}"
        taken.add(name.lower())
        out.append(f"{expr} AS {_ident(name)}")
    return out


# --------------------------------------------------------------------------------------------
# The store


class Store:
    """A DuckDB result database. Use as a context manager, or call ``close()``.

    Opening creates the file, its directory and the schema if needed (idempotent), and
    re-creates the ``results`` view so it follows the code. ``read_only=True`` opens an
    existing file without changing it (the view is the one stored in the file).
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.Lock()  # guards self._con: cursor creation and close
        self._write_lock = threading.Lock()  # one write transaction at a time
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the directory of results database {self.path}: {exc}"
                ) from exc
        try:
            con = duckdb.connect(str(self.path), read_only=read_only, config=_config(read_only))
        except duckdb.Error as exc:
            raise self._open_error(exc) from exc
        self._con: duckdb.DuckDBPyConnection | None = con
        try:
            if read_only:
                self._check_schema()
            else:
                self._create_schema()
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, path: str | Path, *, read_only: bool = False) -> Store:
        """Same as ``Store(path, read_only=...)``."""
        return cls(path, read_only=read_only)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        state = "closed" if self._con is None else "open"
        return f"<Store {str(self.path)!r} {mode} {state}>"

    def close(self) -> None:
        """Close the database. Safe to call twice.

        Waits for a write in progress; call it once no other thread is reading any more.
        """
        with self._write_lock, self._lock:
            con, self._con = self._con, None
            if con is not None:
                with contextlib.suppress(duckdb.Error):
                    con.close()

    # -- plumbing ------------------------------------------------------------------------------

    def _open_error(self, exc: duckdb.Error) -> StoreError:
        text = str(exc)
        if "Could not set lock" in text:
            pid = _LOCK_PID_RE.search(text)
            who = f" (PID {pid.group(1)})" if pid else ""
            return StoreError(
                f"results database {self.path} is in use: another pipeline process{who} is "
                "writing it, and DuckDB lets no other process open the file meanwhile, not even "
                "to read. Wait for that run to finish (or stop it), then read the results with "
                f"`duckdb -readonly {self.path}` or Store(path, read_only=True); or give this "
                "run its own file with --db."
            )
        if self.read_only and "does not exist" in text:
            return StoreError(
                f"no results database at {self.path}; run a job first, or check the path"
            )
        return StoreError(f"cannot open results database {self.path}: {text}")

    @contextlib.contextmanager
    def _cursor(self, doing: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of this thread's own; duckdb errors become StoreError naming the file."""
        with self._lock:
            if self._con is None:
                raise StoreError(f"cannot {doing}: results database {self.path} is closed")
            try:
                cur = self._con.cursor()
            except duckdb.Error as exc:
                raise StoreError(f"cannot {doing} in results database {self.path}: {exc}") from exc
        try:
            yield cur
        except duckdb.Error as exc:
            raise StoreError(f"cannot {doing} in results database {self.path}: {exc}") from exc
        finally:
            with contextlib.suppress(duckdb.Error):
                cur.close()

    @contextlib.contextmanager
    def _transaction(self, doing: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """BEGIN ... COMMIT on a cursor; ROLLBACK and raise StoreError on any error."""
        if self.read_only:
            raise StoreError(f"cannot {doing}: results database {self.path} was opened read-only")
        with self._write_lock, self._cursor(doing) as cur:
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
                raise

    def _create_schema(self) -> None:
        with self._transaction("create the schema") as cur:
            for statement in (*_SCHEMA_SQL, *_BATCH_SCHEMA_SQL, *_PRICE_SCHEMA_SQL):
                cur.execute(statement)
            migrated = _migrate_row_results(cur)
            row = cur.execute("SELECT max(version) FROM schema_version").fetchone()
            found = None if row is None else row[0]
            if found is None or (migrated and found < SCHEMA_VERSION):
                cur.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION])
            elif found > SCHEMA_VERSION:
                raise StoreError(
                    f"results database {self.path} has schema version {found}, newer than this "
                    f"pipeline's ({SCHEMA_VERSION}); upgrade the pipeline or use another --db"
                )
            cur.execute(_RESULTS_VIEW_SQL)
            for view in _ANALYSIS_VIEWS_SQL:
                cur.execute(view)

    def _check_schema(self) -> None:
        with self._cursor("read the schema version") as cur:
            found = cur.execute(
                "SELECT count(*) FROM duckdb_tables() "
                "WHERE table_name IN ('schema_version', 'runs', 'row_results')"
            ).fetchone()
        if found is None or found[0] != 3:
            raise StoreError(
                f"{self.path} is not a pipeline results database (tables schema_version, runs "
                "and row_results are missing)"
            )

    # -- runs ----------------------------------------------------------------------------------

    def start_run(self, run: RunRecord) -> None:
        """Record a new run (state ``running`` unless the record says otherwise)."""
        _check_state(run.state)
        started = time.time() if run.started_at is None else run.started_at
        with self._transaction(f"record run {run.run_id!r}") as cur:
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

    def update_run(
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
        with self._transaction(f"update run {run_id!r}") as cur:
            found = cur.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()
            if found is None or found[0] == 0:
                raise StoreError(f"no run {run_id!r} in results database {self.path}")
            if refresh_counts:
                counts = self._counts(cur, run_id)
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

    def finish_run(
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
        self.update_run(
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

    # -- results -------------------------------------------------------------------------------

    def write_results(self, results: Sequence[RowResult]) -> None:
        """Insert ``results`` in one transaction: all of them are committed, or none is.

        Raises StoreError (nothing written) if a value does not fit its column or the database
        refuses the batch. Blocking: call it from a worker thread in async code.
        """
        if not results:
            return
        with self._transaction(f"write {len(results)} results (none was written)") as cur:
            for start in range(0, len(results), _INSERT_CHUNK):
                # DuckDB finds `arrow_table` by name (a replacement scan of this frame's locals);
                # cheaper than register()/unregister(), which cost two more statements.
                arrow_table = _results_table(results[start : start + _INSERT_CHUNK])
                cur.execute(_INSERT_SQL)
                del arrow_table

    def done_request_keys(
        self,
        keys: Sequence[str],
        *,
        run_id: str | None = None,
        near: tuple[str, int, int] | None = None,
    ) -> set[str]:
        """The subset of ``keys`` a run must not send again.

        That is every key with an ``ok`` result in any run (a new run skips those) and, when
        resuming ``run_id``, every key that run has already recorded in any status (a resumed
        run finishes what is missing; it does not retry what already failed).

        ``near`` = (source, first line, last line) of the keys' rows. Results are stored in
        roughly input order, so looking there first lets DuckDB skip every row group whose
        lines are elsewhere (its min/max statistics); only keys not found there are looked up
        in the whole table. A rerun of a finished million-row job is several times faster so.
        """
        if not keys:
            return set()
        sql = (
            "SELECT DISTINCT request_key FROM row_results "
            "WHERE (status = 'ok' OR run_id = $run_id) "
            "AND request_key IN (SELECT unnest($keys::VARCHAR[]))"
        )
        found: set[str] = set()
        rest = list(keys)
        with self._cursor("look up finished rows") as cur:
            if near is not None:
                source, first, last = near
                rows = cur.execute(
                    sql + " AND source = $source AND line BETWEEN $first AND $last",
                    {
                        "keys": rest,
                        "run_id": run_id,
                        "source": source,
                        "first": first,
                        "last": last,
                    },
                ).fetchall()
                found = {row[0] for row in rows}
                rest = [k for k in rest if k not in found]
            if rest:
                rows = cur.execute(sql, {"keys": rest, "run_id": run_id}).fetchall()
                found.update(row[0] for row in rows)
        return found

    def has_results(self, prompt_hash: str) -> bool:
        """Whether any result of this request version exists (if not, no row can be done)."""
        with self._cursor("look for earlier results") as cur:
            row = cur.execute(
                "SELECT EXISTS (SELECT 1 FROM row_results WHERE prompt_hash = ?)", [prompt_hash]
            ).fetchone()
        return bool(row and row[0])

    def not_ok_rows(self, run_id: str) -> tuple[set[str], set[tuple[str, int]]]:
        """What ``rerun --failed`` sends again: the request keys of the run's rows that are not
        ``ok`` (and have no ``ok`` result since), and the (source, line) of its input errors,
        which get new keys once the input is fixed."""
        with self._cursor(f"list the failed rows of run {run_id!r}") as cur:
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

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The ``runs`` row of ``run_id`` as a dict (times as unix seconds), or None."""
        rows = self.query(
            "SELECT * EXCLUDE (started_at, finished_at), epoch(started_at) AS started_at, "
            "epoch(finished_at) AS finished_at FROM runs WHERE run_id = ?",
            [run_id],
        )
        return rows[0] if rows else None

    def list_runs(self, *, limit: int = 20) -> list[dict[str, Any]]:
        """The latest runs, newest first, with counts and cost from their committed results."""
        return self.query(
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

    def reopen_run(self, run_id: str) -> None:
        """Mark a stopped or dead run ``running`` again (``pipeline resume``)."""
        with self._transaction(f"reopen run {run_id!r}") as cur:
            found = cur.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()
            if found is None or found[0] == 0:
                raise StoreError(f"no run {run_id!r} in results database {self.path}")
            cur.execute(
                "UPDATE runs SET state = 'running', finished_at = NULL WHERE run_id = ?", [run_id]
            )

    # -- batches -----------------------------------------------------------------------------

    def record_batch_part(
        self,
        run_id: str,
        part: int,
        provider: str,
        *,
        nbytes: int,
        requests: Sequence[tuple[str, str, str, int]],
    ) -> None:
        """Record a part about to be submitted: its requests as (request_key, row_id, source,
        line), in file order. One transaction."""
        keys, row_ids, sources, lines = (list(c) for c in zip(*requests, strict=True))
        batch_table = pa.table(
            {
                "run_id": pa.array([run_id] * len(keys), pa.string()),
                "part": pa.array([part] * len(keys), pa.int32()),
                "ordinal": pa.array(range(1, len(keys) + 1), pa.int32()),
                "request_key": pa.array(keys, pa.string()),
                "row_id": pa.array(row_ids, pa.string()),
                "source": pa.array(sources, pa.string()),
                "line": pa.array(lines, pa.int64()),
            }
        )
        with self._transaction(f"record batch part {part} of run {run_id!r}") as cur:
            cur.execute(
                "INSERT INTO batches (run_id, part, provider, status, requests, bytes) "
                "VALUES (?, ?, ?, 'preparing', ?, ?)",
                [run_id, part, provider, len(keys), nbytes],
            )
            cur.execute("INSERT INTO batch_requests SELECT * FROM batch_table")
            del batch_table

    def mark_batch_submitted(
        self, run_id: str, part: int, batch_id: str, input_file_id: str | None
    ) -> None:
        with self._transaction(f"record batch {batch_id!r}") as cur:
            cur.execute(
                "UPDATE batches SET batch_id = ?, input_file_id = ?, status = 'submitted', "
                "submitted_at = current_timestamp, updated_at = current_timestamp "
                "WHERE run_id = ? AND part = ?",
                [batch_id, input_file_id, run_id, part],
            )

    def update_batch(
        self,
        run_id: str,
        part: int,
        *,
        status: str,
        succeeded: int | None = None,
        errored: int | None = None,
        error: str | None = None,
    ) -> None:
        with self._transaction(f"update batch part {part} of run {run_id!r}") as cur:
            cur.execute(
                "UPDATE batches SET status = ?, succeeded = coalesce(?, succeeded), "
                "errored = coalesce(?, errored), error = coalesce(?, error), "
                "updated_at = current_timestamp WHERE run_id = ? AND part = ?",
                [status, succeeded, errored, error, run_id, part],
            )

    def collect_batch(self, run_id: str, part: int, results: Sequence[RowResult]) -> None:
        """Write an ended part's results and mark it collected, in one transaction."""
        with self._transaction(f"collect batch part {part} of run {run_id!r}") as cur:
            for start in range(0, len(results), _INSERT_CHUNK):
                arrow_table = _results_table(results[start : start + _INSERT_CHUNK])
                cur.execute(_INSERT_SQL)
                del arrow_table
            cur.execute(
                "UPDATE batches SET collected_at = current_timestamp, "
                "updated_at = current_timestamp WHERE run_id = ? AND part = ?",
                [run_id, part],
            )

    def batch_parts(self, run_id: str) -> list[dict[str, Any]]:
        """Every part of a run, in order, with ``collected`` (bool)."""
        return self.query(
            "SELECT part, provider, batch_id, input_file_id, status, requests, bytes, "
            "collected_at IS NOT NULL AS collected FROM batches WHERE run_id = ? ORDER BY part",
            [run_id],
        )

    def batch_requests(self, run_id: str, part: int) -> dict[str, tuple[str, str, int, int]]:
        """request_key → (row_id, source, line, ordinal) for one part."""
        with self._cursor(f"read batch part {part} of run {run_id!r}") as cur:
            rows = cur.execute(
                "SELECT request_key, row_id, source, line, ordinal FROM batch_requests "
                "WHERE run_id = ? AND part = ?",
                [run_id, part],
            ).fetchall()
        return {key: (row_id, src, int(line), int(o)) for key, row_id, src, line, o in rows}

    def submitted_keys(self, keys: Sequence[str], *, run_id: str) -> set[str]:
        """The subset of ``keys`` already in one of this run's batch parts."""
        if not keys:
            return set()
        with self._cursor("look up submitted rows") as cur:
            rows = cur.execute(
                "SELECT DISTINCT request_key FROM batch_requests WHERE run_id = $run_id "
                "AND request_key IN (SELECT unnest($keys::VARCHAR[]))",
                {"keys": list(keys), "run_id": run_id},
            ).fetchall()
        return {row[0] for row in rows}

    def unanswered_keys(self, run_id: str) -> set[str]:
        """Keys this run put in a batch that have no result in this run yet."""
        with self._cursor(f"list unanswered rows of run {run_id!r}") as cur:
            rows = cur.execute(
                "SELECT request_key FROM batch_requests b WHERE run_id = $run_id "
                "AND NOT EXISTS (SELECT 1 FROM row_results r WHERE r.run_id = $run_id "
                "AND r.request_key = b.request_key)",
                {"run_id": run_id},
            ).fetchall()
        return {row[0] for row in rows}

    def list_batches(self, *, run_id: str | None = None) -> list[dict[str, Any]]:
        return self.query(
            "SELECT run_id, part, provider, batch_id, status, requests, bytes, succeeded, "
            "errored, epoch(submitted_at) AS submitted_at, epoch(updated_at) AS updated_at, "
            "collected_at IS NOT NULL AS collected, error FROM batches "
            "WHERE $run_id::VARCHAR IS NULL OR run_id = $run_id "
            "ORDER BY run_id DESC, part",
            {"run_id": run_id},
        )

    # -- reading -------------------------------------------------------------------------------

    @staticmethod
    def _counts(cur: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
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
                   count(*) FILTER (WHERE {_UNPRICED})
            FROM row_results WHERE run_id = ?
            """,
            [run_id],
        ).fetchone()
        assert row is not None  # an aggregate without GROUP BY always returns one row
        keys = (
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
        return dict(zip(keys, row, strict=True))

    def run_counts(self, run_id: str) -> dict[str, Any]:
        """A run's committed results in numbers, for the final summary line.

        Keys: ``rows``, ``ok``, ``failed`` (every row not ok), ``input_errors``,
        ``input_tokens``, ``output_tokens``, ``cache_read_tokens``, ``cache_write_tokens``,
        ``reasoning_tokens`` (ints), ``cost_usd`` (float, ``None`` if no row had a known price)
        and ``unpriced_rows`` (rows that used tokens at an unknown price).
        """
        with self._cursor(f"count the results of run {run_id!r}") as cur:
            return self._counts(cur, run_id)

    def report(
        self, *, job: str | None = None, run_id: str | None = None, last_runs: int = 10
    ) -> Report:
        """Totals, per (provider, model, status) groups and the latest runs, optionally for
        one job and/or one run."""
        params = {"job": job, "run_id": run_id}
        with self._cursor("build the report") as cur:
            t = cur.execute(
                f"""
                SELECT count(*),
                       count(*) FILTER (WHERE status = 'ok'),
                       count(*) FILTER (WHERE status <> 'ok'),
                       coalesce(sum(input_tokens), 0),
                       coalesce(sum(output_tokens), 0),
                       coalesce(sum(cache_read_tokens), 0),
                       sum(cost_usd),
                       count(*) FILTER (WHERE {_UNPRICED})
                FROM row_results WHERE {_FILTER}
                """,
                params,
            ).fetchone()
            assert t is not None
            totals = Totals(*t)
            group_rows = cur.execute(
                f"""
                SELECT provider, model, status, count(*),
                       coalesce(sum(input_tokens), 0),
                       coalesce(sum(output_tokens), 0),
                       sum(cost_usd),
                       count(*) FILTER (WHERE {_UNPRICED}),
                       quantile_cont(latency_ms, 0.5) FILTER (WHERE status = 'ok'),
                       quantile_cont(latency_ms, 0.95) FILTER (WHERE status = 'ok')
                FROM row_results WHERE {_FILTER}
                GROUP BY provider, model, status
                ORDER BY provider, model, status
                """,
                params,
            ).fetchall()
            run_rows = cur.execute(
                f"""
                WITH latest AS (
                    SELECT run_id, job, provider, model, mode, state,
                           epoch(started_at) AS started, epoch(finished_at) AS finished
                    FROM runs WHERE {_FILTER}
                    ORDER BY started_at DESC, run_id
                    LIMIT $limit
                ), counts AS (
                    SELECT run_id,
                           count(*) FILTER (WHERE status = 'ok') AS ok,
                           count(*) FILTER (WHERE status <> 'ok') AS failed,
                           sum(cost_usd) AS cost
                    FROM row_results
                    WHERE run_id IN (SELECT run_id FROM latest)
                    GROUP BY run_id
                )
                SELECT l.run_id, l.job, l.provider, l.model, l.mode, l.state, l.started,
                       l.finished, coalesce(c.ok, 0), coalesce(c.failed, 0), c.cost
                FROM latest l LEFT JOIN counts c USING (run_id)
                ORDER BY l.started DESC, l.run_id
                """,
                {**params, "limit": last_runs},
            ).fetchall()
        runs = tuple(
            RunSummary(
                run_id=r[0],
                job=r[1],
                provider=r[2],
                model=r[3],
                mode=r[4],
                state=r[5],
                started_at=datetime.fromtimestamp(r[6], tz=UTC),
                finished_at=_ts(r[7]),
                rows_ok=r[8],
                rows_failed=r[9],
                cost_usd=r[10],
            )
            for r in run_rows
        )
        return Report(
            job=job,
            run_id=run_id,
            totals=totals,
            groups=tuple(ModelGroup(*g) for g in group_rows),
            runs=runs,
            cache_saved_usd=self._cache_saved_usd(params) if totals.cache_read_tokens else None,
        )

    def _cache_saved_usd(self, params: Mapping[str, Any]) -> float | None:
        """Net USD the prompt cache saved over the selection, at each run's recorded prices."""
        with self._cursor("sum the cache savings") as cur:
            exists = cur.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'run_prices'"
            ).fetchone()
            if not exists or not exists[0]:  # a file no pipeline of this version has written
                return None
            row = cur.execute(
                """
                SELECT sum(r.cache_read_tokens
                           * (p.input_mtok - coalesce(p.cache_read_mtok, p.input_mtok))
                           + r.cache_write_tokens
                           * (p.input_mtok - coalesce(p.cache_write_mtok, p.input_mtok))) / 1e6
                FROM row_results r JOIN run_prices p ON p.run_id = r.run_id AND p.mode = r.mode
                WHERE ($job::VARCHAR IS NULL OR r.job = $job)
                  AND ($run_id::VARCHAR IS NULL OR r.run_id = $run_id)
                """,
                dict(params),
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def record_run_prices(self, run_id: str, prices: Mapping[str, Price | None]) -> None:
        """Record the prices a run charges, by mode (``online``, ``batch``); a ``None`` price
        (unknown) is left out. Replaces what the run recorded before (a resume records again).
        The view ``cache_savings`` reads them."""
        with self._transaction(f"record the prices of run {run_id!r}") as cur:
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

    def ok_history(self, *, job: str, model: str, prompt_hash: str | None = None) -> dict[str, Any]:
        """What earlier ``ok`` results of ``job`` with ``model`` (and ``prompt_hash``, if given)
        looked like, for estimates: ``rows``, ``avg_output_tokens`` and ``p50_latency_ms`` (over
        online rows); the averages are ``None`` when there is no such row."""
        with self._cursor("summarise earlier results") as cur:
            row = cur.execute(
                """
                SELECT count(*), avg(output_tokens),
                       quantile_cont(latency_ms, 0.5) FILTER (WHERE mode = 'online')
                FROM row_results
                WHERE status = 'ok' AND job = $job AND model = $model
                  AND ($prompt_hash::VARCHAR IS NULL OR prompt_hash = $prompt_hash)
                """,
                {"job": job, "model": model, "prompt_hash": prompt_hash},
            ).fetchone()
        assert row is not None  # an aggregate without GROUP BY always returns one row
        return {"rows": row[0], "avg_output_tokens": row[1], "p50_latency_ms": row[2]}

    # -- structured answers, export ------------------------------------------------------------

    def create_extract_view(self, job: str, columns: Sequence[tuple[str, str]]) -> str:
        """Create or replace the view ``extract_<job>`` and return its name (see
        ``pipeline.extract.extract_view_name``).

        One row per ``row_id`` of the job: its latest ``ok`` result that has an ``output_json``,
        as ``row_id``, ``run_id`` and one column per ``(property, type)`` of ``columns`` (type
        VARCHAR, BIGINT, DOUBLE, BOOLEAN or JSON), read from ``output_json``; a value that does
        not fit its type is NULL.
        """
        from .extract import extract_view_name

        name = extract_view_name(job)
        select = ",\n               ".join(_extract_select(columns))
        sql = f"""
            CREATE OR REPLACE VIEW {_ident(name)} AS
            SELECT {select}
            FROM row_results
            WHERE job = {_literal(job)} AND status = 'ok' AND output_json IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY row_id ORDER BY finished_at DESC, run_id DESC)
                    = 1
        """
        with self._transaction(f"create view {name}") as cur:
            cur.execute(sql)
        return name

    def export_parquet(self, run_id: str, path: str | Path) -> int:
        """Write every column of the run's rows of ``results`` to a Parquet file at ``path``
        (DuckDB's COPY), in input order; returns the number of rows written."""
        query = (
            f"SELECT * FROM results WHERE run_id = {_literal(run_id)} ORDER BY source, line, row_id"
        )
        with self._cursor(f"export run {run_id!r} to {path}") as cur:
            row = cur.execute(
                f"COPY ({query}) TO {_literal(str(path))} (FORMAT parquet)"
            ).fetchone()
        return int(row[0]) if row else 0

    def iter_results(self, run_id: str, *, chunk: int = 1000) -> Iterator[list[dict[str, Any]]]:
        """The run's rows of ``results`` as dicts, in input order, ``chunk`` at a time;
        ``finished_at`` is unix seconds."""
        with self._cursor(f"read the results of run {run_id!r}") as cur:
            rel = cur.execute(
                "SELECT * EXCLUDE (finished_at), epoch(finished_at) AS finished_at FROM results "
                "WHERE run_id = ? ORDER BY source, line, row_id",
                [run_id],
            )
            names = [d[0] for d in rel.description or ()]
            while rows := rel.fetchmany(chunk):
                yield [dict(zip(names, row, strict=True)) for row in rows]

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Run one SQL statement and return its rows as dicts (for ``SELECT ... FROM results``).

        Fetching a TIMESTAMPTZ column (``finished_at``) in Python needs the ``pytz`` package;
        select ``epoch(finished_at)`` to get unix seconds instead.
        """
        with self._cursor("run the query") as cur:
            rel = cur.execute(sql, params)
            if rel.description is None:
                return []
            names = [d[0] for d in rel.description]
            return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]

    # -- charts (pipeline report --html) -------------------------------------------------------

    def chart_data(
        self, *, job: str | None = None, run_id: str | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """The numbers behind the charts of ``pipeline report --html``, as rows (dicts).

        * ``cost_by_day``: ``day`` (days since 1970-01-01, UTC), ``provider``, ``model``,
          ``rows``, ``cost_usd`` (``None``: no row had a known price), ``unpriced_rows``.
        * ``failures``: rows that are not ok by ``status`` and ``error_type``: ``rows`` and
          one ``example`` error message; most frequent first.
        * ``cache``: ``provider``, ``model``, ``mode``, ``input_tokens``,
          ``cache_read_tokens``, ``cache_write_tokens``.
        * ``latency``: one row over the ok rows' latencies: ``rows``, ``min_ms``, ``p50_ms``,
          ``p95_ms``, ``p99_ms``, ``max_ms`` (``None`` when there are none).
        """
        params = {"job": job, "run_id": run_id}
        return {
            "cost_by_day": self.query(
                f"""
                SELECT floor(epoch(finished_at) / 86400)::BIGINT AS day, provider, model,
                       count(*) AS rows, sum(cost_usd) AS cost_usd,
                       count(*) FILTER (WHERE {_UNPRICED}) AS unpriced_rows
                FROM row_results WHERE {_FILTER}
                GROUP BY ALL ORDER BY day, provider, model
                """,
                params,
            ),
            "failures": self.query(
                f"""
                SELECT status, coalesce(error_type, 'unknown') AS error_type,
                       count(*) AS rows, min(error) AS example
                FROM row_results WHERE status <> 'ok' AND {_FILTER}
                GROUP BY ALL ORDER BY rows DESC, status, error_type
                """,
                params,
            ),
            "cache": self.query(
                f"""
                SELECT provider, model, mode,
                       coalesce(sum(input_tokens), 0) AS input_tokens,
                       coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,
                       coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens
                FROM row_results WHERE {_FILTER}
                GROUP BY ALL ORDER BY provider, model, mode
                """,
                params,
            ),
            "latency": self.query(
                f"""
                SELECT count(latency_ms) AS rows, min(latency_ms) AS min_ms,
                       quantile_cont(latency_ms, 0.5) AS p50_ms,
                       quantile_cont(latency_ms, 0.95) AS p95_ms,
                       quantile_cont(latency_ms, 0.99) AS p99_ms, max(latency_ms) AS max_ms
                FROM row_results WHERE status = 'ok' AND {_FILTER}
                """,
                params,
            ),
        }

    def latency_histogram(
        self,
        *,
        start_ms: float,
        width_ms: float,
        bins: int,
        job: str | None = None,
        run_id: str | None = None,
    ) -> list[int]:
        """How many ok rows took ``[start_ms + i * width_ms, start_ms + (i + 1) * width_ms)``,
        for ``i`` in ``range(bins)``, then how many took longer: ``bins + 1`` counts."""
        rows = self.query(
            f"""
            SELECT least(greatest(floor((latency_ms - $start) / $width), 0), $bins)::BIGINT
                       AS bin,
                   count(*) AS rows
            FROM row_results
            WHERE status = 'ok' AND latency_ms IS NOT NULL AND {_FILTER}
            GROUP BY bin
            """,
            {"job": job, "run_id": run_id, "start": start_ms, "width": width_ms, "bins": bins},
        )
        counts = [0] * (bins + 1)
        for r in rows:
            counts[r["bin"]] = r["rows"]
        return counts
