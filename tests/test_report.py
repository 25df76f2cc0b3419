from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from pipeline.records import RowResult
from pipeline.reporting.text import ANALYSIS_SQL, format_usd, render_report
from pipeline.store import ModelGroup, Report, RunRecord, RunSummary, Store, Totals

T0 = 1_763_000_000.0


def _result(i: int, model: str, cost: float | None, status: str = "ok") -> RowResult:
    return RowResult(
        job="reviews",
        run_id="run-1",
        row_id=f"r{i}",
        request_key=f"k{i}",
        prompt_hash="p",
        status=status,
        provider="anthropic" if model.startswith("claude") else "openai",
        model=model,
        mode="online",
        output_text="yes" if status == "ok" else None,
        finish_reason="stop" if status == "ok" else None,
        error_type=None if status == "ok" else "rejected",
        error=None if status == "ok" else "400 bad request",
        attempts=1,
        input_tokens=1_000,
        output_tokens=100,
        cache_read_tokens=0,
        cache_write_tokens=0,
        reasoning_tokens=0,
        cost_usd=cost,
        latency_ms=200.0 + 10 * i,
        finished_at=T0 + i,
        source="in.jsonl",
        line=i + 1,
    )


def _render(report: Report, **kwargs: str) -> str:
    console = Console(record=True, width=120)
    render_report(report, console, **kwargs)
    return console.export_text()


def test_format_usd() -> None:
    assert format_usd(None) == "unknown price"
    assert format_usd(0.0) == "$0.000000"
    assert format_usd(0.00021) == "$0.000210"
    assert format_usd(12.3456789) == "$12.3457"
    assert format_usd(1234.5) == "$1,234.5000"
    assert format_usd(0.5, unpriced_rows=3) == "$0.500000 + unknown price (3 rows)"


def test_report_from_a_database_shows_models_costs_and_the_query(tmp_path: Path) -> None:
    db = tmp_path / "results.duckdb"
    with Store(db) as store:
        store.runs.start(RunRecord(run_id="run-1", job="reviews", started_at=T0))
        store.results.write(
            [_result(i, "gpt-4o-mini", 0.0012345) for i in range(4)]
            + [_result(4, "gpt-4o-mini", 0.0, status="failed")]
            + [_result(i, "claude-mystery-9", None) for i in range(5, 7)]
        )
        store.runs.finish("run-1", "completed", finished_at=T0 + 10)
    with Store(db, read_only=True) as store:
        text = _render(store.queries.report(job="reviews"), db_path=str(db))
    assert "gpt-4o-mini" in text and "claude-mystery-9" in text
    assert "$0.004938" in text  # 4 x 0.0012345, the gpt-4o-mini ok rows and the total
    assert "unknown price" in text  # claude-mystery-9 has no price: not $0
    assert "$0.004938 + unknown price (2 rows)" in text  # the total says it is incomplete
    assert "completed" in text and "run-1" in text
    assert "p50" in text and "215 ms" in text  # p50 of 200, 210, 220, 230
    assert "…" not in text  # nothing shortened at 120 columns
    last = text.rstrip().splitlines()[-1]
    assert ANALYSIS_SQL in last and f"duckdb -readonly {db}" in last


def test_groups_are_printed_one_line_each_with_their_own_cost() -> None:
    groups = (
        ModelGroup("openai", "gpt-4.1-mini", "ok", 1_500, 2_000_000, 300_000, 1.28, 0, 812, 2950.5),
        ModelGroup("openai", "gpt-4.1-mini", "failed", 12, 0, 0, 0.0, 0, None, None),
        ModelGroup("anthropic", "claude-new", "ok", 7, 7_000, 700, None, 7, 400.0, 500.0),
    )  # fmt: skip
    report = Report(
        job=None,
        run_id=None,
        totals=Totals(1_519, 1_507, 12, 2_007_000, 300_700, 0, 1.28, 7),
        groups=groups,
        runs=(
            RunSummary(
                "run-9",
                "reviews",
                "openai",
                "gpt-4.1-mini",
                "online",
                "stopped: budget",
                datetime.fromtimestamp(T0, tz=UTC),
                None,
                1_507,
                12,
                1.28,
            ),
        ),
    )
    text = _render(report)
    lines = text.splitlines()
    ok_line = next(line for line in lines if "gpt-4.1-mini" in line and " ok " in line)
    assert "$1.2800" in ok_line and "1,500" in ok_line and "812 ms" in ok_line
    assert "2,950 ms" in ok_line or "2,951 ms" in ok_line
    new_line = next(line for line in lines if "claude-new" in line)
    assert "unknown price" in new_line and "$0" not in new_line
    assert "$1.2800 + unknown price (7 rows)" in text
    assert "stopped: budget" in text and "2025-11-13 " in text
    assert "7 rows used a model whose price is unknown" in text
    assert text.rstrip().endswith(ANALYSIS_SQL)


def test_empty_report() -> None:
    report = Report(None, None, Totals(0, 0, 0, 0, 0, 0, None, 0), (), ())
    text = _render(report)
    assert "No results yet" in text
    assert ANALYSIS_SQL in text
