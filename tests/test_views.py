"""The analysis views (``cost_by_job`` ... ``latency_percentiles``) on a small hand-made database.

Every figure below is worked out by hand from the rows in ``ROWS``; the views must agree.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from rich.console import Console

from pipeline.job.pricing import Price
from pipeline.records import RowResult
from pipeline.reporting.text import render_report
from pipeline.store import ANALYSIS_VIEWS, Store

DAY1 = 1_763_035_200.0  # 2025-11-13 12:00 UTC
DAY2 = DAY1 + 86_400  # 2025-11-14 12:00 UTC

GPT_ONLINE = Price(input_mtok=0.15, output_mtok=0.6, cache_read_mtok=0.075, source="test")
CLAUDE_ONLINE = Price(
    input_mtok=0.8, output_mtok=4.0, cache_read_mtok=0.08, cache_write_mtok=1.0, source="test"
)


def row(n: int, **changes: Any) -> RowResult:
    status = changes.get("status", "ok")
    values: dict[str, Any] = {
        "job": "a",
        "run_id": "r1",
        "row_id": f"row-{n}",
        "request_key": f"key-{n}",
        "prompt_hash": "p1",
        "status": status,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "mode": "online",
        "output_text": "positive" if status == "ok" else None,
        "finish_reason": "stop" if status == "ok" else None,
        "error_type": None,
        "error": None,
        "attempts": 1,
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": None,
        "latency_ms": None,
        "finished_at": DAY1,
        "source": "in.jsonl",
        "line": n,
    }
    values.update(changes)
    return RowResult(**values)


ROWS = [
    # job a, run r1: online, request version p1
    row(1, input_tokens=1000, output_tokens=100, cache_read_tokens=400, cost_usd=0.001,
        latency_ms=100.0),
    row(2, input_tokens=1000, output_tokens=300, cost_usd=0.002, latency_ms=200.0),
    row(3, input_tokens=2000, output_tokens=100, cache_read_tokens=1600, cost_usd=0.003,
        latency_ms=300.0, finished_at=DAY2),
    row(4, status="failed", error_type="rate_limited", error="429 after 6 attempts",
        attempts=6, finished_at=DAY2),
    row(5, status="input_error", error_type="missing_field", error="no field 'text'",
        attempts=0, finished_at=DAY2),
    # job a, run r2: batch, request version p2 (no price recorded for this run)
    row(6, run_id="r2", prompt_hash="p2", mode="batch", input_tokens=500, output_tokens=50,
        cost_usd=0.0005, finished_at=DAY2),
    # job b, run r3: Anthropic, a cache write then a cache read
    row(7, job="b", run_id="r3", provider="anthropic", model="claude-3-5-haiku-latest",
        input_tokens=1000, output_tokens=10, cache_write_tokens=1000, cost_usd=0.01,
        latency_ms=400.0),
    row(8, job="b", run_id="r3", provider="anthropic", model="claude-3-5-haiku-latest",
        input_tokens=1000, output_tokens=10, cache_read_tokens=1000, cost_usd=0.02,
        latency_ms=500.0),
    # job c, run r4: a model with no known price (cost NULL)
    row(9, job="c", run_id="r4", model="mystery-ft", input_tokens=10, output_tokens=10,
        latency_ms=50.0),
]  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "views.duckdb") as s:
        s.results.write(ROWS)
        s.runs.record_prices("r1", {"online": GPT_ONLINE, "batch": None})
        s.runs.record_prices("r3", {"online": CLAUDE_ONLINE})
        yield s


def by(rows: list[dict[str, Any]], *keys: str) -> dict[Any, dict[str, Any]]:
    out = {}
    for r in rows:
        key = tuple(r[k] for k in keys)
        out[key[0] if len(key) == 1 else key] = r
    return out


def test_every_view_is_created_with_the_schema(store: Store) -> None:
    names = {r["view_name"] for r in store.query("SELECT view_name FROM duckdb_views()")}
    assert set(ANALYSIS_VIEWS) <= names


def test_cost_by_job(store: Store) -> None:
    jobs = by(store.query("SELECT * FROM cost_by_job"), "job")
    assert jobs["a"] == {
        "job": "a",
        "rows": 6,
        "rows_ok": 4,
        "rows_failed": 2,
        "input_tokens": 4500,
        "output_tokens": 550,
        "cost_usd": pytest.approx(0.0065),
        "unpriced_rows": 0,
    }
    assert jobs["b"]["rows"] == 2 and jobs["b"]["cost_usd"] == pytest.approx(0.03)
    # An unknown price is NULL, never $0, and the row is counted as unpriced.
    assert jobs["c"]["cost_usd"] is None and jobs["c"]["unpriced_rows"] == 1


def test_cost_by_model(store: Store) -> None:
    models = by(store.query("SELECT * FROM cost_by_model"), "model")
    gpt = models["gpt-4o-mini"]
    assert (gpt["provider"], gpt["rows"], gpt["rows_ok"], gpt["rows_failed"]) == (
        "openai",
        6,
        4,
        2,
    )
    assert gpt["cost_usd"] == pytest.approx(0.0065)
    assert gpt["cost_per_1k_rows"] == pytest.approx(1000 * 0.0065 / 6)
    claude = models["claude-3-5-haiku-latest"]
    assert claude["input_tokens"] == 2000 and claude["output_tokens"] == 20
    assert claude["cost_per_1k_rows"] == pytest.approx(15.0)
    assert models["mystery-ft"]["cost_per_1k_rows"] is None


def test_cost_by_day_splits_days_in_utc_and_modes(store: Store) -> None:
    days = by(
        store.query("SELECT day::VARCHAR AS day, * EXCLUDE (day) FROM cost_by_day"),
        "day",
        "job",
        "model",
        "mode",
    )
    assert set(days) == {
        ("2025-11-13", "a", "gpt-4o-mini", "online"),
        ("2025-11-14", "a", "gpt-4o-mini", "online"),
        ("2025-11-14", "a", "gpt-4o-mini", "batch"),
        ("2025-11-13", "b", "claude-3-5-haiku-latest", "online"),
        ("2025-11-13", "c", "mystery-ft", "online"),
    }
    day1 = days[("2025-11-13", "a", "gpt-4o-mini", "online")]
    assert (day1["rows"], day1["input_tokens"], day1["output_tokens"], day1["total_tokens"]) == (
        2,
        2000,
        400,
        2400,
    )
    assert day1["cost_usd"] == pytest.approx(0.003)
    day2 = days[("2025-11-14", "a", "gpt-4o-mini", "online")]
    assert day2["rows"] == 3 and day2["total_tokens"] == 2100
    assert day2["cost_usd"] == pytest.approx(0.003)  # the failed rows cost nothing
    assert days[("2025-11-14", "a", "gpt-4o-mini", "batch")]["cost_usd"] == pytest.approx(0.0005)


def test_cost_by_prompt_version(store: Store) -> None:
    versions = by(store.query("SELECT * FROM cost_by_prompt_version"), "job", "prompt_hash")
    p1 = versions[("a", "p1")]
    assert (p1["runs"], p1["rows"], p1["rows_ok"], p1["model"]) == (1, 5, 3, "gpt-4o-mini")
    assert p1["cost_usd"] == pytest.approx(0.006)
    assert p1["cost_per_1k_rows"] == pytest.approx(1.2)  # $0.006 over 5 rows
    p2 = versions[("a", "p2")]
    assert (p2["rows"], p2["cost_usd"], p2["cost_per_1k_rows"]) == (
        1,
        pytest.approx(0.0005),
        pytest.approx(0.5),
    )


def test_token_ratio_counts_ok_rows_only(store: Store) -> None:
    ratios = by(store.query("SELECT * FROM token_ratio"), "job", "model")
    a = ratios[("a", "gpt-4o-mini")]
    assert (a["rows"], a["input_tokens"], a["output_tokens"]) == (4, 4500, 550)
    assert a["avg_input_tokens"] == pytest.approx(1125.0)
    assert a["avg_output_tokens"] == pytest.approx(137.5)
    assert a["input_per_output"] == pytest.approx(4500 / 550)
    assert ratios[("b", "claude-3-5-haiku-latest")]["input_per_output"] == pytest.approx(100.0)


def test_cache_savings_uses_each_runs_recorded_prices(store: Store) -> None:
    savings = by(store.query("SELECT * FROM cache_savings"), "job")
    a = savings["a"]
    assert (a["input_tokens"], a["cache_read_tokens"], a["cache_write_tokens"]) == (4500, 2000, 0)
    assert a["hit_rate"] == pytest.approx(2000 / 4500)
    # 2,000 tokens read at $0.075 instead of $0.15 per million
    assert a["read_saved_usd"] == pytest.approx(2000 * 0.075 / 1e6)
    assert a["saved_usd"] == pytest.approx(2000 * 0.075 / 1e6)
    assert a["unpriced_rows"] == 0
    b = savings["b"]
    assert b["hit_rate"] == pytest.approx(0.5)
    # 1,000 read at $0.08 instead of $0.80; 1,000 written at $1.00 instead of $0.80
    assert b["read_saved_usd"] == pytest.approx(1000 * 0.72 / 1e6)
    assert b["saved_usd"] == pytest.approx((1000 * 0.72 - 1000 * 0.2) / 1e6)
    c = savings["c"]
    assert c["hit_rate"] == 0 and c["saved_usd"] is None


def test_cache_savings_of_a_run_without_recorded_prices_is_null_and_counted(
    store: Store,
) -> None:
    store.results.write([row(10, run_id="r9", input_tokens=100, cache_read_tokens=50)])
    a = by(store.query("SELECT * FROM cache_savings"), "job")["a"]
    assert a["unpriced_rows"] == 1
    assert a["saved_usd"] == pytest.approx(2000 * 0.075 / 1e6)  # the priced rows' saving only


def test_the_reports_cache_figures_are_the_views_by_provider_model_and_mode(
    store: Store,
) -> None:
    store.results.write([row(10, run_id="r9", input_tokens=100, cache_read_tokens=50)])
    groups = {(c.provider, c.model, c.mode): c for c in store.queries.cache_savings()}
    # groups without cache tokens (the batch run, mystery-ft) are left out
    assert set(groups) == {
        ("openai", "gpt-4o-mini", "online"),
        ("anthropic", "claude-3-5-haiku-latest", "online"),
    }
    gpt = groups[("openai", "gpt-4o-mini", "online")]
    assert (gpt.input_tokens, gpt.cache_read_tokens, gpt.cache_write_tokens) == (4100, 2050, 0)
    assert gpt.saved_usd == gpt.read_saved_usd == pytest.approx(2000 * 0.075 / 1e6)
    assert gpt.unpriced_rows == 1  # r9 recorded no price
    claude = groups[("anthropic", "claude-3-5-haiku-latest", "online")]
    assert claude.read_saved_usd == pytest.approx(0.00072)
    assert claude.saved_usd == pytest.approx(0.00052)
    view = store.query("SELECT sum(saved_usd) AS s, sum(unpriced_rows) AS u FROM cache_savings")
    assert view == [{"s": pytest.approx(gpt.saved_usd + claude.saved_usd), "u": 1}]
    assert store.queries.report().cache_saved_usd == pytest.approx(view[0]["s"])
    only_b = store.queries.cache_savings(job="b")
    assert [c.model for c in only_b] == ["claude-3-5-haiku-latest"]
    assert store.queries.cache_savings(run_id="r4") == ()


def test_failures_by_type(store: Store) -> None:
    failures = by(store.query("SELECT * FROM failures_by_type"), "job", "status", "error_type")
    assert failures == {
        ("a", "failed", "rate_limited"): {
            "job": "a",
            "status": "failed",
            "error_type": "rate_limited",
            "rows": 1,
            "example_error": "429 after 6 attempts",
        },
        ("a", "input_error", "missing_field"): {
            "job": "a",
            "status": "input_error",
            "error_type": "missing_field",
            "rows": 1,
            "example_error": "no field 'text'",
        },
    }


def test_latency_percentiles_over_ok_online_rows(store: Store) -> None:
    latency = by(store.query("SELECT * FROM latency_percentiles"), "model", "mode")
    assert set(latency) == {
        ("gpt-4o-mini", "online"),
        ("claude-3-5-haiku-latest", "online"),
        ("mystery-ft", "online"),
    }  # the batch row has no latency of its own; the failed rows have none
    gpt = latency[("gpt-4o-mini", "online")]
    assert gpt["rows"] == 3
    assert (gpt["p50_ms"], gpt["p95_ms"], gpt["p99_ms"]) == (
        pytest.approx(200.0),
        pytest.approx(290.0),
        pytest.approx(298.0),
    )
    claude = latency[("claude-3-5-haiku-latest", "online")]
    assert (claude["p50_ms"], claude["p95_ms"], claude["p99_ms"]) == (
        pytest.approx(450.0),
        pytest.approx(495.0),
        pytest.approx(499.0),
    )


def test_record_run_prices_replaces_what_the_run_recorded(store: Store) -> None:
    store.runs.record_prices("r1", {"online": CLAUDE_ONLINE, "batch": GPT_ONLINE.halved()})
    rows = store.query("SELECT mode, input_mtok FROM run_prices WHERE run_id = 'r1' ORDER BY mode")
    assert rows == [{"mode": "batch", "input_mtok": 0.075}, {"mode": "online", "input_mtok": 0.8}]


def test_views_come_back_on_an_older_file_opened_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    with Store(path):
        pass
    con = duckdb.connect(str(path))
    for view in ANALYSIS_VIEWS:
        con.execute(f"DROP VIEW {view}")
    con.execute("DROP TABLE run_prices")
    con.close()
    with Store(path, read_only=True) as old:  # a reader neither needs nor makes them
        assert old.queries.report().cache_saved_usd is None
    with Store(path) as s:
        names = {r["view_name"] for r in s.query("SELECT view_name FROM duckdb_views()")}
        assert set(ANALYSIS_VIEWS) <= names
        assert s.query("SELECT count(*) AS n FROM run_prices") == [{"n": 0}]


# -- the report's cache line ----------------------------------------------------------------------


def report_text(store: Store, **scope: Any) -> str:
    buffer = io.StringIO()
    render_report(store.queries.report(**scope), Console(file=buffer, width=200))
    return buffer.getvalue()


def test_report_says_what_the_cache_saved(store: Store) -> None:
    report = store.queries.report()
    assert report.cache_saved_usd == pytest.approx((2000 * 0.075 + 1000 * 0.72 - 200) / 1e6)
    text = report_text(store)
    assert "Prompt cache: 3,000 of 6,510 input tokens read from the cache (46.1%)" in text
    assert "saving $0.000670 against the full input price" in text
    assert store.queries.report(job="b").cache_saved_usd == pytest.approx(0.00052)


def test_report_has_no_cache_line_without_cache_reads(store: Store) -> None:
    assert "Prompt cache" not in report_text(store, job="c")


def test_report_says_when_the_saving_is_unknown(tmp_path: Path) -> None:
    with Store(tmp_path / "unpriced.duckdb") as s:
        s.results.write([row(1, input_tokens=100, cache_read_tokens=25, cost_usd=0.1)])
        assert s.queries.report().cache_saved_usd is None
        text = report_text(s)
    assert "Prompt cache: 25 of 100 input tokens read from the cache (25.0%)" in text
    assert "unknown" in text
