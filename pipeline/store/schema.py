"""The schema of a results database, as data: tables, views and the numbered migrations.

Tables
======

``row_results``
    One row per input row and run; its columns are :data:`ROW_RESULTS`, the one table from which
    both its DDL and the Arrow schema results are inserted with are built. Read it through the
    view ``results`` (its columns are listed in :mod:`pipeline.store`).
``runs``
    One row per run: job file, hashes, state (:data:`RUN_STATES`), counts, cost, price source,
    manifest.
``batches``, ``batch_requests``
    The parts of a batch-mode run and the requests in each, in file order.
``run_prices``
    The prices a run charged, one row per mode (run_id, mode, input_mtok, output_mtok,
    cache_read_mtok, cache_write_mtok, source), written by ``pipeline run``/``resume``/``rerun``
    so that SQL can tell what the prompt cache saved.
``schema_version``
    One row per schema version the file was created at or migrated to.

Views for the usual questions
=============================

Opening the file for writing (any run) creates the view ``results`` and these views over it
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
    the saving is priced with table ``run_prices``; rows of runs without one have a NULL
    saving. The reports take their cache figures from the same expressions
    (:data:`CACHE_SAVINGS_MEASURES`), grouped by provider, model and mode.

``failures_by_type``
    job, status, error_type, rows, example_error, over the rows that are not ok::

        SELECT * FROM failures_by_type ORDER BY rows DESC;

``latency_percentiles``
    provider, model, mode, rows, p50_ms, p95_ms, p99_ms, over ok online rows (a batch row has
    no latency of its own).

Schema versions
===============

:data:`MIGRATIONS` is the numbered list of changes; :data:`SCHEMA_VERSION` is the last one's
number. A new file is created in the latest shape and records :data:`SCHEMA_VERSION`. A file at
an older version gets, when it is first opened for writing, every migration numbered above its
version, in order, each recording its number in ``schema_version``, all in the opening
transaction. A file newer than this code is refused. Tables added without a version of their
own (``batches``, ``batch_requests``, ``run_prices``) are created if missing on every writable
open.

Version 1 is the first schema. Version 2 added ``output_json`` and the status ``invalid``;
DuckDB cannot change a CHECK constraint in place, so the migration rebuilds ``row_results``.
Version 3 added ``fallback_from`` (the primary model of a row that ``[request.fallback]``
answered), a plain ``ADD COLUMN``. Version 4 added ``worker`` (the Ray worker that sent a
row of a ``[cluster] engine = "ray"`` run; NULL for rows sent by the run's own process), the same
way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import duckdb

__all__ = [
    "ANALYSIS_VIEWS",
    "CACHE_SAVINGS_MEASURES",
    "MIGRATIONS",
    "RESULTS_VIEW",
    "ROW_RESULTS",
    "ROW_RESULTS_DDL",
    "RUN_STATES",
    "SCHEMA_VERSION",
    "TABLES",
    "UNPRICED",
    "VIEWS",
    "Column",
    "Migration",
]


# --------------------------------------------------------------------------------------------
# row_results: one column table for the DDL and the insert


@dataclass(frozen=True, slots=True)
class Column:
    """One column of ``row_results`` (and field of :class:`~pipeline.records.RowResult`)."""

    name: str
    sql_type: str
    """The DuckDB type."""
    read_type: str
    """The type the value is read as when rows are inserted (``results.insert_results``)."""
    constraint: str = ""
    """``NOT NULL``, ``CHECK (...)``: what follows the type in the DDL."""
    insert: str = ""
    """The SQL that turns the value read into the column's (default: the value itself)."""

    @property
    def ddl(self) -> str:
        return " ".join(part for part in (self.name, self.sql_type, self.constraint) if part)

    @property
    def insert_expr(self) -> str:
        return self.insert or self.name


def _text(name: str, constraint: str = "") -> Column:
    return Column(name, "VARCHAR", "VARCHAR", constraint)


def _count(name: str) -> Column:
    return Column(name, "BIGINT", "BIGINT")


ROW_RESULTS: Final = (
    _text("job", "NOT NULL"),
    _text("run_id", "NOT NULL"),
    _text("row_id", "NOT NULL"),
    _text("request_key", "NOT NULL"),
    _text("prompt_hash"),
    _text("status", "NOT NULL CHECK (status IN ('ok', 'failed', 'input_error', 'invalid'))"),
    _text("provider"),
    _text("model"),
    _text("mode"),
    _text("output_text"),
    _text("finish_reason"),
    _text("error_type"),
    _text("error"),
    Column("attempts", "INTEGER", "INTEGER"),
    _count("input_tokens"),
    _count("output_tokens"),
    _count("cache_read_tokens"),
    _count("cache_write_tokens"),
    _count("reasoning_tokens"),
    Column("cost_usd", "DOUBLE", "DOUBLE"),
    Column("latency_ms", "DOUBLE", "DOUBLE"),
    # unix seconds in Python and as inserted; a timestamp in the file
    Column("finished_at", "TIMESTAMPTZ", "DOUBLE", "NOT NULL", "to_timestamp(finished_at)"),
    _text("source"),
    _count("line"),
    Column("output_json", "JSON", "VARCHAR"),
    _text("fallback_from"),
    _text("worker"),
)
"""The columns of ``row_results``, in table order; one per field of ``RowResult``."""

_V2_COLUMNS: Final = tuple(c for c in ROW_RESULTS if c.name not in ("fallback_from", "worker"))
"""``row_results`` as version 2 left it (migration 2 builds this shape, migration 3 adds on)."""

# No primary key or unique index: index upkeep slows bulk inserts and costs memory.
ROW_RESULTS_DDL: Final = (
    "CREATE TABLE IF NOT EXISTS row_results (\n    "
    + ",\n    ".join(c.ddl for c in ROW_RESULTS)
    + "\n)"
)


# --------------------------------------------------------------------------------------------
# The other tables

RUN_STATES: Final = ("running", "completed", "stopped: <why>", "failed: <why>")
"""What ``runs.state`` may hold; ``<why>`` is e.g. ``budget`` or ``signal``."""

_SCHEMA_VERSION_DDL: Final = """
    CREATE TABLE IF NOT EXISTS schema_version (
        version    INTEGER NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
    )
"""

_RUNS_DDL: Final = """
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
"""

# One row per part of a batch-mode run. A part is recorded (with its requests) before it is
# submitted, and its batch id is committed before the runner waits on it.
_BATCHES_DDL: Final = """
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
"""

_BATCH_REQUESTS_DDL: Final = """
    CREATE TABLE IF NOT EXISTS batch_requests (
        run_id      VARCHAR NOT NULL,
        part        INTEGER NOT NULL,
        ordinal     INTEGER NOT NULL,
        request_key VARCHAR NOT NULL,
        row_id      VARCHAR NOT NULL,
        source      VARCHAR,
        line        BIGINT
    )
"""

# The prices a run charged, one row per mode (a batch run may finish rows online), so that SQL
# can tell what the prompt cache saved (view cache_savings). USD per million tokens.
_RUN_PRICES_DDL: Final = """
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
"""

TABLES: Final = {
    "schema_version": _SCHEMA_VERSION_DDL,
    "runs": _RUNS_DDL,
    "row_results": ROW_RESULTS_DDL,
    "batches": _BATCHES_DDL,
    "batch_requests": _BATCH_REQUESTS_DDL,
    "run_prices": _RUN_PRICES_DDL,
}
"""Table name → ``CREATE TABLE IF NOT EXISTS`` in the latest shape, in creation order."""


# --------------------------------------------------------------------------------------------
# Views

RESULTS_VIEW: Final = """
    CREATE OR REPLACE VIEW results AS
    SELECT job, run_id, row_id, status, provider, model, mode, output_text, finish_reason,
           error_type, error, attempts, input_tokens, output_tokens, cache_read_tokens,
           cache_write_tokens, reasoning_tokens, input_tokens + output_tokens AS total_tokens,
           cost_usd, latency_ms, prompt_hash, request_key, finished_at, source, line,
           output_json, fallback_from, worker
    FROM row_results
"""
"""The public interface for analysis: ``row_results`` plus ``total_tokens``."""

UNPRICED: Final = "cost_usd IS NULL AND coalesce(input_tokens, 0) + coalesce(output_tokens, 0) > 0"
"""SQL condition: "tokens were used but the price is unknown" (a NULL cost on a row that
consumed tokens)."""

CACHE_SAVINGS_MEASURES: Final = """
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
"""
"""What the prompt cache saved, as aggregates over rows ``r`` (of ``results`` or
``row_results``) LEFT JOINed to their run's prices ``p`` (``run_prices`` on run_id and mode):
the measures of view ``cache_savings`` and of ``Queries.cache_savings``."""

CACHE_SAVINGS_JOIN: Final = "LEFT JOIN {prices} p ON p.run_id = r.run_id AND p.mode = r.mode"
"""How rows ``r`` meet their prices ``p``; ``{prices}`` is ``run_prices`` (or a stand-in)."""

# The analysis views over `results`, documented in this module's docstring and README.md.
_ANALYSIS_VIEWS_SQL: Final = {
    "cost_by_job": f"""
        SELECT job,
               count(*) AS rows,
               count(*) FILTER (WHERE status = 'ok') AS rows_ok,
               count(*) FILTER (WHERE status <> 'ok') AS rows_failed,
               coalesce(sum(input_tokens), 0) AS input_tokens,
               coalesce(sum(output_tokens), 0) AS output_tokens,
               sum(cost_usd) AS cost_usd,
               count(*) FILTER (WHERE {UNPRICED}) AS unpriced_rows
        FROM results GROUP BY job
    """,
    "cost_by_model": f"""
        SELECT provider, model,
               count(*) AS rows,
               count(*) FILTER (WHERE status = 'ok') AS rows_ok,
               count(*) FILTER (WHERE status <> 'ok') AS rows_failed,
               coalesce(sum(input_tokens), 0) AS input_tokens,
               coalesce(sum(output_tokens), 0) AS output_tokens,
               sum(cost_usd) AS cost_usd,
               1000 * sum(cost_usd) / count(*) AS cost_per_1k_rows,
               count(*) FILTER (WHERE {UNPRICED}) AS unpriced_rows
        FROM results GROUP BY provider, model
    """,
    "cost_by_day": """
        SELECT CAST(timezone('UTC', finished_at) AS DATE) AS day, job, model, mode,
               count(*) AS rows,
               coalesce(sum(input_tokens), 0) AS input_tokens,
               coalesce(sum(output_tokens), 0) AS output_tokens,
               coalesce(sum(total_tokens), 0) AS total_tokens,
               sum(cost_usd) AS cost_usd
        FROM results GROUP BY ALL
    """,
    "cost_by_prompt_version": """
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
    "token_ratio": """
        SELECT job, provider, model,
               count(*) AS rows,
               coalesce(sum(input_tokens), 0) AS input_tokens,
               coalesce(sum(output_tokens), 0) AS output_tokens,
               avg(input_tokens) AS avg_input_tokens,
               avg(output_tokens) AS avg_output_tokens,
               sum(input_tokens) / nullif(sum(output_tokens), 0) AS input_per_output
        FROM results WHERE status = 'ok' GROUP BY job, provider, model
    """,
    "cache_savings": f"""
        SELECT r.job, r.provider, r.model, {CACHE_SAVINGS_MEASURES}
        FROM results r {CACHE_SAVINGS_JOIN.format(prices="run_prices")}
        GROUP BY r.job, r.provider, r.model
    """,
    "failures_by_type": """
        SELECT job, status, error_type, count(*) AS rows, min(error) AS example_error
        FROM results WHERE status <> 'ok' GROUP BY job, status, error_type
    """,
    "latency_percentiles": """
        SELECT provider, model, mode,
               count(*) AS rows,
               quantile_cont(latency_ms, 0.5) AS p50_ms,
               quantile_cont(latency_ms, 0.95) AS p95_ms,
               quantile_cont(latency_ms, 0.99) AS p99_ms
        FROM results
        WHERE status = 'ok' AND mode = 'online' AND latency_ms IS NOT NULL
        GROUP BY provider, model, mode
    """,
}

ANALYSIS_VIEWS: Final = tuple(_ANALYSIS_VIEWS_SQL)
"""The analysis views every writable open creates (see the module docstring)."""

VIEWS: Final = (
    RESULTS_VIEW,
    *(f"CREATE OR REPLACE VIEW {name} AS {sql}" for name, sql in _ANALYSIS_VIEWS_SQL.items()),
)
"""Every view, ``results`` first (the others read it)."""


# --------------------------------------------------------------------------------------------
# Migrations


@dataclass(frozen=True, slots=True)
class Migration:
    """The change that brings a file from ``version - 1`` to ``version``: SQL statements, or a
    function of the cursor of the opening transaction."""

    version: int
    does: str
    apply: tuple[str, ...] | Callable[[duckdb.DuckDBPyConnection], None]

    def run(self, cur: duckdb.DuckDBPyConnection) -> None:
        if callable(self.apply):
            self.apply(cur)
        else:
            for statement in self.apply:
                cur.execute(statement)


def _rebuild_row_results(cur: duckdb.DuckDBPyConnection) -> None:
    """Version 1 → 2: rebuild ``row_results`` with the status ``invalid`` in its CHECK and the
    column ``output_json``, keeping every row. DuckDB cannot alter a CHECK constraint, so the
    table is renamed, created anew in version 2's shape, copied and dropped."""
    old_columns = ", ".join(c.name for c in _V2_COLUMNS if c.name != "output_json")
    cur.execute("ALTER TABLE row_results RENAME TO row_results_v1")
    cur.execute(
        "CREATE TABLE row_results (\n    " + ",\n    ".join(c.ddl for c in _V2_COLUMNS) + "\n)"
    )
    cur.execute(f"INSERT INTO row_results ({old_columns}) SELECT {old_columns} FROM row_results_v1")
    cur.execute("DROP TABLE row_results_v1")


MIGRATIONS: Final = (
    Migration(
        2, "row_results: the status 'invalid' and the column output_json", _rebuild_row_results
    ),
    Migration(
        3,
        "row_results: the column fallback_from (rows [request.fallback] answered)",
        ("ALTER TABLE row_results ADD COLUMN fallback_from VARCHAR",),
    ),
    Migration(
        4,
        "row_results: the column worker (the Ray worker that sent the row)",
        ("ALTER TABLE row_results ADD COLUMN worker VARCHAR",),
    ),
)
"""Every schema change after version 1, in order (see "Schema versions" above)."""

SCHEMA_VERSION: Final = MIGRATIONS[-1].version
"""The version this code creates and reads and writes."""
