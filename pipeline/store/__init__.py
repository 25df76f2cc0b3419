"""The result database: every row's outcome, token usage and cost, in one DuckDB file.

Only this package imports duckdb. Every duckdb (and pyarrow) error is raised as
:class:`~pipeline.errors.StoreError` naming the database file.

A :class:`Store` is one open file; its parts do one job each::

    with Store("data/results.duckdb") as store:
        store.runs.start(RunRecord(run_id="r1", job="reviews"))
        store.results.write(results)
        store.runs.finish("r1", "completed")
        print(store.queries.report(run_id="r1").totals)

==================  ===================================  ========================================
attribute           class (module)                       job
==================  ===================================  ========================================
``store.results``   ``ResultTable`` (``results``)        write results; which rows are done
``store.runs``      ``RunLedger`` (``ledger``)           table ``runs`` and each run's prices
``store.batches``   ``BatchLedger`` (``ledger``)         batch-mode parts and their requests
``store.queries``   ``Queries`` (``queries``)            reports, charts, extract views, export
==================  ===================================  ========================================

:mod:`~pipeline.store.schema` is the schema as data (tables, views, numbered migrations, and
the documentation of the analysis views); ``_db`` holds the connection, its cursors and
transactions, and turns low-level errors into ``StoreError``.

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
provider, model, mode  VARCHAR      who answered: ``openai``/``anthropic``/``gemini``, the model
                                    name, ``online``/``batch``
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
source                 VARCHAR      the input file
line                   BIGINT       the row's 1-based line in it (or Parquet row number)
output_json            JSON         a schema job's answer, parsed and valid (NULL otherwise)
fallback_from          VARCHAR      the job's model when ``[request.fallback]`` answered instead
worker                 VARCHAR      the Ray worker that sent the row (``ray-2@10.0.0.7``); NULL
                                    when the run's own process sent it (engine ``local``)
=====================  ===========  ================================================================

``invalid`` rows are answers of a job with ``[request].schema`` that did not match it (or were
cut off: ``error_type`` ``truncated``); ``output_text`` keeps the raw answer and ``error`` says
what was wrong. Each such job also gets a view ``extract_<job>``
(``store.queries.create_extract_view``): the latest ``ok`` answer per ``row_id``, one typed
column per top-level property of the schema.

A row that failed in one run and succeeded in a rerun appears once per run: ``sum(cost_usd)``
is what was paid. Table ``runs`` holds one row per run (job file, hashes, state, counts, cost,
price source, manifest); ``schema_version`` holds the schema's version. The analysis views
(``cost_by_job``, ``cache_savings``, ...) and the schema versions are described in
:mod:`pipeline.store.schema`.

Concurrency
===========

DuckDB lets one process write a file; while it does, no other process can open it, not even
read-only. Within the process a ``Store`` holds one DuckDB connection and gives every call a
short-lived cursor of its own, so ``store.results.write`` may run in a worker thread while other
threads read: reads see the last committed batch. Writes are serialised by a lock; ``close()``
waits for a write in progress.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ..errors import StoreError
from ._db import Database
from .ledger import BatchLedger, RunLedger, RunRecord
from .queries import CacheSaving, DocumentCost, ModelGroup, Queries, Report, RunSummary, Totals
from .results import ResultTable
from .schema import (
    ANALYSIS_VIEWS,
    MIGRATIONS,
    RUN_STATES,
    SCHEMA_VERSION,
    TABLES,
    VIEWS,
)

__all__ = [
    "ANALYSIS_VIEWS",
    "RUN_STATES",
    "SCHEMA_VERSION",
    "CacheSaving",
    "DocumentCost",
    "ModelGroup",
    "Report",
    "RunRecord",
    "RunSummary",
    "Store",
    "Totals",
]


class Store:
    """A DuckDB result database. Use as a context manager, or call ``close()``.

    Opening for writing creates the file, its directory and the schema if needed, migrates an
    older file (see :mod:`pipeline.store.schema`) and re-creates the views so they follow the
    code, in one transaction. ``read_only=True`` opens an existing file without changing it
    (the views are the ones stored in the file).

    The parts: ``results`` (:class:`~pipeline.store.results.ResultTable`), ``runs``
    (:class:`~pipeline.store.ledger.RunLedger`), ``batches``
    (:class:`~pipeline.store.ledger.BatchLedger`) and ``queries``
    (:class:`~pipeline.store.queries.Queries`).
    """

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self._db = Database(path, read_only=read_only)
        try:
            if read_only:
                _check_schema(self._db)
            else:
                _create_or_migrate_schema(self._db)
        except BaseException:
            self._db.close()
            raise
        self.results = ResultTable(self._db)
        self.runs = RunLedger(self._db)
        self.batches = BatchLedger(self._db)
        self.queries = Queries(self._db)

    @classmethod
    def open(cls, path: str | Path, *, read_only: bool = False) -> Store:
        """Same as ``Store(path, read_only=...)``."""
        return cls(path, read_only=read_only)

    @property
    def path(self) -> Path:
        return self._db.path

    @property
    def read_only(self) -> bool:
        return self._db.read_only

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
        state = "closed" if self._db.closed else "open"
        return f"<Store {str(self.path)!r} {mode} {state}>"

    def close(self) -> None:
        """Close the database. Safe to call twice.

        Waits for a write in progress; call it once no other thread is reading any more.
        """
        self._db.close()

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Run one SQL statement and return its rows as dicts (for ``SELECT ... FROM results``).

        Fetching a TIMESTAMPTZ column (``finished_at``) in Python needs the ``pytz`` package;
        select ``epoch(finished_at)`` to get unix seconds instead.
        """
        return self._db.query(sql, params)


def _create_or_migrate_schema(db: Database) -> None:
    """The writable open, in one transaction: a new file gets the latest schema and records
    ``SCHEMA_VERSION``; an older one gets the migrations above its version, in order, each
    recording its number; then every table missing from the file, and every view, is
    (re)created."""
    with db.transaction("create the schema") as cur:
        cur.execute(TABLES["schema_version"])
        row = cur.execute("SELECT max(version) FROM schema_version").fetchone()
        found = None if row is None else row[0]
        if found is None:
            for ddl in TABLES.values():
                cur.execute(ddl)
            cur.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION])
        elif found > SCHEMA_VERSION:
            raise StoreError(
                f"results database {db.path} has schema version {found}, newer than this "
                f"pipeline's ({SCHEMA_VERSION}); upgrade the pipeline or use another --db"
            )
        else:
            for migration in MIGRATIONS:
                if migration.version > found:
                    migration.run(cur)
                    cur.execute(
                        "INSERT INTO schema_version (version) VALUES (?)", [migration.version]
                    )
            for ddl in TABLES.values():  # tables added since without a version of their own
                cur.execute(ddl)
        for view in VIEWS:
            cur.execute(view)


def _check_schema(db: Database) -> None:
    """The read-only open: the file must hold a results database (it is not changed)."""
    with db.cursor("read the schema version") as cur:
        found = cur.execute(
            "SELECT count(*) FROM duckdb_tables() "
            "WHERE table_name IN ('schema_version', 'runs', 'row_results')"
        ).fetchone()
    if found is None or found[0] != 3:
        raise StoreError(
            f"{db.path} is not a pipeline results database (tables schema_version, runs "
            "and row_results are missing)"
        )
