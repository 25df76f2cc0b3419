"""Reading results back: the report's numbers, the HTML report's charts, estimates' history,
extract views and export.

Everything here reads ``row_results``/``runs`` (or the view ``results``) and may be called on a
read-only store, except :meth:`Queries.create_extract_view`, which writes a view.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import orjson

from ..extract import extract_view_name
from ._db import Database
from .schema import CACHE_SAVINGS_JOIN, CACHE_SAVINGS_MEASURES, UNPRICED

__all__ = [
    "CacheSaving",
    "DocumentCost",
    "ModelGroup",
    "Queries",
    "Report",
    "RunSummary",
    "Totals",
]


def _filter(table: str = "") -> str:
    """SQL: "this job (if given) and this run (if given)", over $job and $run_id; ``table``
    qualifies the columns (``"r."``) where a join makes them ambiguous."""
    return (
        f"($job::VARCHAR IS NULL OR {table}job = $job) "
        f"AND ($run_id::VARCHAR IS NULL OR {table}run_id = $run_id)"
    )


_FILTER: Final = _filter()

# Stands in for table run_prices in a file that has none (written by an older pipeline, opened
# read-only): every row is then unpriced.
_NO_PRICES: Final = (
    "(SELECT NULL::VARCHAR AS run_id, NULL::VARCHAR AS mode, NULL::DOUBLE AS input_mtok, "
    "NULL::DOUBLE AS cache_read_mtok, NULL::DOUBLE AS cache_write_mtok WHERE false)"
)

_EXTRACT_TYPES: Final = frozenset({"VARCHAR", "BIGINT", "DOUBLE", "BOOLEAN", "JSON"})


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
class CacheSaving:
    """Prompt-cache use of one (provider, model, mode) and what it saved, at the prices each
    run recorded (table ``run_prices``), by the expressions of view ``cache_savings``.

    ``read_saved_usd`` is what cache reads saved against the input price; ``saved_usd`` the
    same less what cache writes cost above the input price (the net saving). Both are ``None``
    when no run of the group recorded its prices; ``unpriced_rows`` counts the rows with cache
    tokens whose run recorded none (their saving is not in the sums).
    """

    provider: str | None
    model: str | None
    mode: str | None
    input_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    read_saved_usd: float | None
    saved_usd: float | None
    unpriced_rows: int


@dataclass(frozen=True, slots=True)
class DocumentCost:
    """What a job's documents cost: over its runs that sent files, the rows and pages (an
    image is one page) they sent, as their manifests record, and what those runs cost."""

    job: str
    rows: int
    pages: int
    cost_usd: float | None

    @property
    def cost_per_page(self) -> float | None:
        return None if self.cost_usd is None or not self.pages else self.cost_usd / self.pages


@dataclass(frozen=True, slots=True)
class Report:
    """Everything ``pipeline.reporting.text.render_report`` prints, as plain data."""

    job: str | None
    run_id: str | None
    totals: Totals
    groups: tuple[ModelGroup, ...]
    runs: tuple[RunSummary, ...]
    cache: tuple[CacheSaving, ...] = ()
    """The prompt cache by (provider, model, mode), for the groups that read or wrote it
    (``Queries.cache_savings``)."""
    documents: tuple[DocumentCost, ...] = ()
    """Jobs that sent documents: their pages and cost per page."""

    @property
    def cache_saved_usd(self) -> float | None:
        """The net saving of the prompt cache over the selection: the sum of the groups'
        ``saved_usd``; ``None`` when no group's is known. The one figure both reports print."""
        saved = [c.saved_usd for c in self.cache if c.saved_usd is not None]
        return sum(saved) if saved else None


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, tz=UTC)


def _ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _extract_select(
    columns: Sequence[tuple[str, str]],
    *,
    head: Sequence[str] = ("row_id", "run_id"),
    json: str = "output_json",
) -> list[str]:
    """The typed select list of an extract view: ``head``, then one expression per (property,
    type) over the ``json`` column, named after the property (made unique against ``head`` and
    each other: DuckDB names ignore case)."""
    taken = {name.rsplit(".", 1)[-1].lower() for name in head}
    out = list(head)
    for prop, sql_type in columns:
        if sql_type not in _EXTRACT_TYPES:
            raise ValueError(f"extract column {prop!r}: unknown type {sql_type!r}")
        path = _literal("$." + orjson.dumps(prop).decode())
        if sql_type == "JSON":
            expr = f"{json} -> {path}"
        elif sql_type == "VARCHAR":
            expr = f"{json} ->> {path}"
        else:
            expr = f"TRY_CAST({json} ->> {path} AS {sql_type})"
        name, n = prop, 1
        while name.lower() in taken:
            n += 1
            name = f"{prop}_{n}"
        taken.add(name.lower())
        out.append(f"{expr} AS {_ident(name)}")
    return out


class Queries:
    """``store.queries``: reports, charts, history for estimates, extract views, export."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def report(
        self, *, job: str | None = None, run_id: str | None = None, last_runs: int = 10
    ) -> Report:
        """Totals, per (provider, model, status) groups and the latest runs, optionally for
        one job and/or one run."""
        params = {"job": job, "run_id": run_id}
        with self._db.cursor("build the report") as cur:
            t = cur.execute(
                f"""
                SELECT count(*),
                       count(*) FILTER (WHERE status = 'ok'),
                       count(*) FILTER (WHERE status <> 'ok'),
                       coalesce(sum(input_tokens), 0),
                       coalesce(sum(output_tokens), 0),
                       coalesce(sum(cache_read_tokens), 0),
                       sum(cost_usd),
                       count(*) FILTER (WHERE {UNPRICED})
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
                       count(*) FILTER (WHERE {UNPRICED}),
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
            cache=self.cache_savings(job=job, run_id=run_id),
            documents=self.document_costs(job=job, run_id=run_id),
        )

    def document_costs(
        self, *, job: str | None = None, run_id: str | None = None
    ) -> tuple[DocumentCost, ...]:
        """Per job, the rows and pages its runs sent with files (the runs' manifests) and what
        those runs cost."""
        params = {"job": job, "run_id": run_id}
        with self._db.cursor("price the documents") as cur:
            rows = cur.execute(
                f"""
                WITH sent AS (
                    SELECT run_id, job,
                           CAST(json_extract(manifest, '$.documents.rows') AS BIGINT) AS docs,
                           CAST(json_extract(manifest, '$.documents.pages') AS BIGINT) AS pages
                    FROM runs
                    WHERE {_FILTER} AND json_extract(manifest, '$.documents.rows') IS NOT NULL
                )
                SELECT s.job, sum(s.docs), sum(s.pages),
                       (SELECT sum(cost_usd) FROM row_results r
                        WHERE r.run_id IN (SELECT run_id FROM sent x WHERE x.job = s.job))
                FROM sent s GROUP BY s.job ORDER BY s.job
                """,
                params,
            ).fetchall()
        return tuple(DocumentCost(r[0], int(r[1] or 0), int(r[2] or 0), r[3]) for r in rows)

    def cache_savings(
        self, *, job: str | None = None, run_id: str | None = None
    ) -> tuple[CacheSaving, ...]:
        """What the prompt cache saved, per (provider, model, mode) that read or wrote it,
        optionally for one job and/or one run: the measures of view ``cache_savings`` (see
        :data:`~pipeline.store.schema.CACHE_SAVINGS_MEASURES`) at each run's recorded prices.

        The only source of the cache figures of ``pipeline report`` and its HTML page.
        """
        with self._db.cursor("sum the cache savings") as cur:
            found = cur.execute(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'run_prices'"
            ).fetchone()
            prices = "run_prices" if found and found[0] else _NO_PRICES
            rel = cur.execute(
                f"""
                SELECT r.provider, r.model, r.mode, {CACHE_SAVINGS_MEASURES}
                FROM row_results r {CACHE_SAVINGS_JOIN.format(prices=prices)}
                WHERE {_filter("r.")}
                GROUP BY r.provider, r.model, r.mode
                HAVING coalesce(sum(r.cache_read_tokens), 0)
                       + coalesce(sum(r.cache_write_tokens), 0) > 0
                ORDER BY r.provider, r.model, r.mode
                """,
                {"job": job, "run_id": run_id},
            )
            names = [d[0] for d in rel.description or ()]
            rows = [dict(zip(names, row, strict=True)) for row in rel.fetchall()]
        fields = CacheSaving.__dataclass_fields__
        return tuple(CacheSaving(**{k: v for k, v in r.items() if k in fields}) for r in rows)

    def ok_history(self, *, job: str, model: str, prompt_hash: str | None = None) -> dict[str, Any]:
        """What earlier ``ok`` results of ``job`` with ``model`` (and ``prompt_hash``, if given)
        looked like, for estimates: ``rows``, ``avg_output_tokens`` and ``p50_latency_ms`` (over
        online rows); the averages are ``None`` when there is no such row."""
        with self._db.cursor("summarise earlier results") as cur:
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
        with self._db.transaction(f"create view {name}") as cur:
            cur.execute(sql)
        return name

    def run_results(
        self,
        run_id: str,
        rows: Sequence[tuple[str, str, int]],
        *,
        columns: Sequence[tuple[str, str]] = (),
    ) -> Any:
        """The result of each of ``rows`` (request key, source, line: a run's input, in order),
        as a pyarrow Table in that order: the result run ``run_id`` recorded for the row, else
        the latest ``ok`` result of its key (a row the run found done already). Rows without
        either are left out. ``columns``: a schema job's (property, type) pairs, read from
        ``output_json`` into typed columns after ``output_text``."""
        import pyarrow as pa

        keys = pa.table(
            {
                "ord": pa.array(range(len(rows)), pa.int64()),
                "request_key": pa.array([r[0] for r in rows], pa.string()),
                "source": pa.array([r[1] for r in rows], pa.string()),
                "line": pa.array([r[2] for r in rows], pa.int64()),
            }
        )
        head = ["r.row_id", "r.status", "r.output_text"]
        fields = _extract_select(columns, head=head, json="r.output_json")
        tail = (
            "r.error_type, r.error, r.attempts, r.input_tokens, r.output_tokens, "
            "r.cache_read_tokens, r.cache_write_tokens, r.reasoning_tokens, r.cost_usd, "
            "r.latency_ms, r.provider, r.model, r.mode, r.fallback_from, r.run_id, r.source, "
            "r.line, r.request_key, epoch(r.finished_at) AS finished_at"
        )
        sql = f"""
            SELECT {", ".join(fields)}, {tail}
            FROM input_keys k JOIN row_results r ON r.request_key = k.request_key
            WHERE r.run_id = $run_id OR r.status = 'ok'
            QUALIFY row_number() OVER (
                PARTITION BY k.ord
                ORDER BY (r.run_id = $run_id AND r.source = k.source AND r.line = k.line) DESC,
                         (r.run_id = $run_id) DESC, r.finished_at DESC, r.run_id DESC) = 1
            ORDER BY k.ord
        """
        with self._db.cursor(f"read the results of run {run_id!r}") as cur:
            cur.register("input_keys", keys)
            try:
                return cur.sql(sql, params={"run_id": run_id}).to_arrow_table()
            finally:
                cur.unregister("input_keys")

    def export_parquet(self, run_id: str, path: str | Path) -> int:
        """Write every column of the run's rows of ``results`` to a Parquet file at ``path``
        (DuckDB's COPY), in input order; returns the number of rows written."""
        query = (
            f"SELECT * FROM results WHERE run_id = {_literal(run_id)} ORDER BY source, line, row_id"
        )
        with self._db.cursor(f"export run {run_id!r} to {path}") as cur:
            row = cur.execute(
                f"COPY ({query}) TO {_literal(str(path))} (FORMAT parquet)"
            ).fetchone()
        return int(row[0]) if row else 0

    def iter_results(self, run_id: str, *, chunk: int = 1000) -> Iterator[list[dict[str, Any]]]:
        """The run's rows of ``results`` as dicts, in input order, ``chunk`` at a time;
        ``finished_at`` is unix seconds."""
        with self._db.cursor(f"read the results of run {run_id!r}") as cur:
            rel = cur.execute(
                "SELECT * EXCLUDE (finished_at), epoch(finished_at) AS finished_at FROM results "
                "WHERE run_id = ? ORDER BY source, line, row_id",
                [run_id],
            )
            names = [d[0] for d in rel.description or ()]
            while rows := rel.fetchmany(chunk):
                yield [dict(zip(names, row, strict=True)) for row in rows]

    # -- charts (pipeline report --html) -------------------------------------------------------

    def chart_data(
        self, *, job: str | None = None, run_id: str | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """The numbers behind the charts of ``pipeline report --html``, as rows (dicts); the
        cache chart's come with the report (``Report.cache``).

        * ``cost_by_day``: ``day`` (days since 1970-01-01, UTC), ``provider``, ``model``,
          ``rows``, ``cost_usd`` (``None``: no row had a known price), ``unpriced_rows``.
        * ``failures``: rows that are not ok by ``status`` and ``error_type``: ``rows`` and
          one ``example`` error message; most frequent first.
        * ``latency``: one row over the ok rows' latencies: ``rows``, ``min_ms``, ``p50_ms``,
          ``p95_ms``, ``p99_ms``, ``max_ms`` (``None`` when there are none).
        """
        params = {"job": job, "run_id": run_id}
        query = self._db.query
        return {
            "cost_by_day": query(
                f"""
                SELECT floor(epoch(finished_at) / 86400)::BIGINT AS day, provider, model,
                       count(*) AS rows, sum(cost_usd) AS cost_usd,
                       count(*) FILTER (WHERE {UNPRICED}) AS unpriced_rows
                FROM row_results WHERE {_FILTER}
                GROUP BY ALL ORDER BY day, provider, model
                """,
                params,
            ),
            "failures": query(
                f"""
                SELECT status, coalesce(error_type, 'unknown') AS error_type,
                       count(*) AS rows, min(error) AS example
                FROM row_results WHERE status <> 'ok' AND {_FILTER}
                GROUP BY ALL ORDER BY rows DESC, status, error_type
                """,
                params,
            ),
            "latency": query(
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
        rows = self._db.query(
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
