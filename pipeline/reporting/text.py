"""Print a :class:`pipeline.store.Report` as rich tables: what ran, what it cost, how fast.

Printing only; the numbers come from ``store.queries.report()``. A cost that is not known (the
model's price is not in genai-prices and the job gave none) is shown as "unknown price", never as
$0.
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from ..job.pricing import UNKNOWN_PRICE, format_usd
from ..store import DocumentCost, ModelGroup, Report, RunSummary, Totals

__all__ = ["ANALYSIS_SQL", "UNKNOWN_PRICE", "cache_line", "format_usd", "render_report"]

ANALYSIS_SQL = "SELECT model, status, count(*), sum(cost_usd) FROM results GROUP BY ALL"
"""The query the report ends with, for the user to paste into ``duckdb``."""


def _int(value: int) -> str:
    return f"{value:,}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f} ms"


def _table(title: str, *, header: bool = True) -> Table:
    return Table(
        title=title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_header=header,
        padding=(0, 1),
        pad_edge=False,
    )


def _groups_table(groups: tuple[ModelGroup, ...]) -> Table:
    table = _table("Cost and tokens by model and status")
    # Nothing in this table is ever shortened: a cut number is worse than a wrapped line.
    table.add_column("model", overflow="fold")
    table.add_column("status", overflow="fold")
    for name in ("rows", "tokens in", "tokens out", "cost", "p50", "p95"):
        table.add_column(name, justify="right", overflow="fold")
    for g in groups:
        model = g.model or "–"
        if g.provider and len(groups) > 1 and len({x.provider for x in groups}) > 1:
            model = f"{g.provider}/{model}"
        table.add_row(
            model,
            g.status,
            _int(g.rows),
            _int(g.input_tokens),
            _int(g.output_tokens),
            format_usd(g.cost_usd, unpriced_rows=g.unpriced_rows),
            _ms(g.latency_p50_ms),
            _ms(g.latency_p95_ms),
        )
    return table


def _totals_table(totals: Totals) -> Table:
    table = _table("Totals", header=False)
    table.add_column("what", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    table.add_row("rows", _int(totals.rows))
    table.add_row("ok", _int(totals.ok))
    table.add_row("failed", _int(totals.failed))
    table.add_row("input tokens", _int(totals.input_tokens))
    table.add_row("  of which cache reads", _int(totals.cache_read_tokens))
    table.add_row("output tokens", _int(totals.output_tokens))
    table.add_row("cost", format_usd(totals.cost_usd, unpriced_rows=totals.unpriced_rows))
    return table


def _documents_table(documents: tuple[DocumentCost, ...]) -> Table:
    table = _table("Documents (an image is one page)")
    table.add_column("job", overflow="fold")
    for name in ("rows", "pages", "cost", "cost per page"):
        table.add_column(name, justify="right", overflow="fold")
    for d in documents:
        per_page = d.cost_per_page
        table.add_row(
            d.job,
            _int(d.rows),
            _int(d.pages),
            format_usd(d.cost_usd),
            "–" if per_page is None else f"${per_page:,.4f}",
        )
    return table


def _runs_table(runs: tuple[RunSummary, ...]) -> Table:
    table = _table("Latest runs")
    table.add_column("run", overflow="fold")
    table.add_column("job / model", overflow="fold")
    table.add_column("started", overflow="fold")
    table.add_column("state")
    for name in ("ok", "failed", "cost"):
        table.add_column(name, justify="right", overflow="fold")
    for r in runs:
        table.add_row(
            r.run_id,
            f"{r.job} / {r.model or '–'}",
            "–" if r.started_at is None else r.started_at.strftime("%Y-%m-%d %H:%M"),
            r.state,
            _int(r.rows_ok),
            _int(r.rows_failed),
            format_usd(r.cost_usd),
        )
    return table


def cache_line(report: Report) -> str:
    """One line on the prompt cache: hit rate and what it saved (view ``cache_savings``)."""
    t = report.totals
    rate = t.cache_read_tokens / t.input_tokens if t.input_tokens else 0.0
    line = (
        f"Prompt cache: {t.cache_read_tokens:,} of {t.input_tokens:,} input tokens read from "
        f"the cache ({rate:.1%})"
    )
    if report.cache_saved_usd is None:
        return line + "; what it saved is unknown (no run recorded its price)."
    return line + f", saving {format_usd(report.cache_saved_usd)} against the full input price."


def render_report(report: Report, console: Console, *, db_path: str | None = None) -> None:
    """Print ``report``: by model and status, totals, latest runs, then a query to paste.

    With ``db_path`` the last line is a complete ``duckdb`` command line.
    """
    scope = [f"job {report.job}"] if report.job else []
    if report.run_id:
        scope.append(f"run {report.run_id}")
    console.print(f"[bold]Results[/bold] ({', '.join(scope) or 'all jobs'})")
    if report.totals.rows == 0:
        console.print("No results yet.")
    else:
        console.print(_groups_table(report.groups))
        console.print(_totals_table(report.totals))
        if report.totals.unpriced_rows:
            console.print(
                f"{report.totals.unpriced_rows:,} rows used a model whose price is unknown; "
                "their cost is NULL and left out of the sums."
            )
        if report.totals.cache_read_tokens:
            console.print(cache_line(report), highlight=False, markup=False, soft_wrap=True)
        if report.documents:
            console.print(_documents_table(report.documents))
    if report.runs and not report.run_id:
        console.print(_runs_table(report.runs))
    command = f'duckdb -readonly {db_path} "{ANALYSIS_SQL}"' if db_path else ANALYSIS_SQL
    console.print(
        f"Ask your own questions: {command}", highlight=False, markup=False, soft_wrap=True
    )
