"""``store.queries.report``: totals, groups and latest runs from the committed results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _store_rows import T0, result

from pipeline.store import RunRecord, Store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sub" / "results.duckdb"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store(db) as s:
        yield s


# -- reports --------------------------------------------------------------------------------------


def test_report_groups_add_up(store: Store) -> None:
    store.runs.start(RunRecord(run_id="run-1", job="reviews", model="gpt-4o-mini", started_at=T0))
    store.runs.start(RunRecord(run_id="run-2", job="reviews", started_at=T0 + 100))
    batch = [result(i) for i in range(20)]
    batch += [result(i, status="failed", cost_usd=0.0, latency_ms=None) for i in range(20, 23)]
    batch += [
        result(i, provider="anthropic", model="claude-x", cost_usd=None, run_id="run-2")
        for i in range(23, 30)
    ]
    store.results.write(batch)
    store.results.write([result(99, job="other", run_id="run-9")])

    report = store.queries.report(job="reviews")
    by_key = {(g.provider, g.model, g.status): g for g in report.groups}
    assert set(by_key) == {
        ("openai", "gpt-4o-mini", "ok"),
        ("openai", "gpt-4o-mini", "failed"),
        ("anthropic", "claude-x", "ok"),
    }
    ok = by_key[("openai", "gpt-4o-mini", "ok")]
    assert ok.rows == 20
    assert ok.cost_usd == pytest.approx(sum(r.cost_usd or 0 for r in batch[:20]))
    assert ok.input_tokens == sum(r.input_tokens for r in batch[:20])
    latencies = sorted(100.0 + i for i in range(20))  # quantile_cont: linear interpolation
    assert ok.latency_p50_ms == pytest.approx((latencies[9] + latencies[10]) / 2)
    assert ok.latency_p95_ms == pytest.approx(
        latencies[18] + 0.05 * (latencies[19] - latencies[18])
    )
    assert by_key[("openai", "gpt-4o-mini", "failed")].latency_p50_ms is None
    claude = by_key[("anthropic", "claude-x", "ok")]
    assert claude.cost_usd is None and claude.unpriced_rows == 7

    totals = report.totals
    assert (totals.rows, totals.ok, totals.failed) == (30, 27, 3)
    assert totals.cost_usd == pytest.approx(sum(r.cost_usd or 0 for r in batch))
    assert totals.unpriced_rows == 7
    assert totals.cost_usd == pytest.approx(sum(g.cost_usd or 0 for g in report.groups))

    assert [r.run_id for r in report.runs] == ["run-2", "run-1"]  # latest first
    run1 = report.runs[1]
    assert (run1.rows_ok, run1.rows_failed, run1.state) == (20, 3, "running")
    assert run1.started_at.timestamp() == pytest.approx(T0)
    assert report.runs[0].cost_usd is None

    only_run2 = store.queries.report(run_id="run-2")
    assert only_run2.totals.rows == 7 and [r.run_id for r in only_run2.runs] == ["run-2"]
    assert store.queries.report().totals.rows == 31


def test_report_of_an_empty_database(store: Store) -> None:
    report = store.queries.report()
    assert report.totals.rows == 0 and report.totals.cost_usd is None
    assert report.groups == () and report.runs == ()
