from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from pipeline import store as store_module
from pipeline.config import parse_job
from pipeline.errors import StoreError
from pipeline.records import RowResult
from pipeline.store import SCHEMA_VERSION, RunRecord, Store
from pipeline.store import results as results_module

PROJECT = Path(__file__).resolve().parents[1]
T0 = 1_763_000_000.25  # a fixed unix time, with a fraction


def result(i: int, **changes: Any) -> RowResult:
    ok = changes.get("status", "ok") == "ok"
    values: dict[str, Any] = {
        "job": "reviews",
        "run_id": "run-1",
        "row_id": f"row-{i}",
        "request_key": f"key-{i}",
        "prompt_hash": "p1",
        "status": "ok",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "mode": "online",
        "output_text": f"answer {i}" if ok else None,
        "finish_reason": "stop" if ok else None,
        "error_type": None if ok else "rate_limited",
        "error": None if ok else "429 after 6 attempts",
        "attempts": 1,
        "input_tokens": 100 + i,
        "output_tokens": 20 + i % 7,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": 0.0001 * (i + 1),
        "latency_ms": 100.0 + i,
        "finished_at": T0 + i,
        "source": "data/in.jsonl",
        "line": i + 1,
    }
    values.update(changes)
    return RowResult(**values)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sub" / "results.duckdb"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store(db) as s:
        yield s


def one(s: Store, sql: str, *params: Any) -> Any:
    rows = s.query(sql, list(params) if params else None)
    assert len(rows) == 1
    return next(iter(rows[0].values()))


# -- opening ------------------------------------------------------------------------------------


def test_open_creates_directory_schema_and_version_idempotently(db: Path) -> None:
    with Store(db):
        pass
    assert db.exists()
    with Store.open(db) as s:  # a second open must not duplicate anything
        assert s.query("SELECT version FROM schema_version") == [{"version": SCHEMA_VERSION}]
        assert one(s, "SELECT count(*) FROM results") == 0


def test_results_view_has_the_documented_columns(store: Store) -> None:
    columns = {
        r["column_name"]
        for r in store.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'results'"
        )
    }
    expected = {f.name for f in dataclasses.fields(RowResult)}
    assert expected <= columns
    for name in expected:  # every column is named in the module docstring
        assert name in (store_module.__doc__ or "")


def test_view_is_recreated_on_open(db: Path) -> None:
    with Store(db) as s:
        s.query("CREATE OR REPLACE VIEW results AS SELECT 1 AS stale")
    with Store(db) as s:
        assert "cost_usd" in {
            r["column_name"]
            for r in s.query(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'results'"
            )
        }


def test_newer_schema_is_refused(db: Path) -> None:
    with Store(db) as s:
        s.query("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION + 1])
    with pytest.raises(StoreError, match="newer than this pipeline"):
        Store(db)


def test_closed_store_says_so(db: Path) -> None:
    s = Store(db)
    s.close()
    s.close()
    with pytest.raises(StoreError, match=r"results\.duckdb is closed"):
        s.results.write([result(0)])


# -- writing results ------------------------------------------------------------------------------


def test_written_results_add_up_in_sql(store: Store) -> None:
    batch = [result(i) for i in range(250)]
    store.results.write(batch)
    store.results.write([result(i, run_id="run-2") for i in range(250, 300)])
    assert one(store, "SELECT count(*) FROM results") == 300
    expected = sum(r.cost_usd or 0 for r in batch) + sum(0.0001 * (i + 1) for i in range(250, 300))
    assert one(store, "SELECT sum(cost_usd) FROM results") == pytest.approx(expected, rel=1e-12)
    assert one(store, "SELECT sum(input_tokens) FROM results WHERE run_id = 'run-1'") == sum(
        r.input_tokens for r in batch
    )


def test_every_field_round_trips(store: Store) -> None:
    original = result(
        3,
        status="failed",
        cache_read_tokens=40,
        cache_write_tokens=2,
        reasoning_tokens=9,
        cost_usd=None,
        latency_ms=None,
        attempts=6,
    )
    store.results.write([original])
    names = [f.name for f in dataclasses.fields(RowResult)]
    select = ", ".join(
        "epoch(finished_at) AS finished_at" if n == "finished_at" else n for n in names
    )
    rows = store.query(f"SELECT {select} FROM results")
    assert len(rows) == 1
    back = RowResult(**rows[0])
    assert dataclasses.replace(back, finished_at=original.finished_at) == original
    assert back.finished_at == pytest.approx(original.finished_at, abs=1e-6)
    assert one(store, "SELECT typeof(finished_at) FROM results") == "TIMESTAMP WITH TIME ZONE"


def test_bad_value_fails_the_whole_batch(store: Store) -> None:
    store.results.write([result(0)])
    batch = [result(i) for i in range(1, 10)] + [result(10, status="maybe")]
    with pytest.raises(StoreError, match=r"results\.duckdb") as info:
        store.results.write(batch)
    assert "none was written" in str(info.value)
    assert isinstance(info.value.__cause__, duckdb.Error)
    assert one(store, "SELECT count(*) FROM results") == 1
    store.results.write([result(11)])  # the store is usable afterwards
    assert one(store, "SELECT count(*) FROM results") == 2


def test_a_failure_in_a_later_chunk_rolls_back_the_earlier_chunks(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results_module, "_INSERT_CHUNK", 3)
    batch = [result(i) for i in range(8)] + [result(8, input_tokens="lots")]
    with pytest.raises(StoreError, match="input_tokens") as info:
        store.results.write(batch)
    assert "lots" in str(info.value)
    assert one(store, "SELECT count(*) FROM row_results") == 0
    store.results.write(batch[:8])  # three chunks, one transaction
    assert one(store, "SELECT count(*) FROM row_results") == 8


def test_empty_batch_is_a_no_op(store: Store) -> None:
    store.results.write([])
    assert one(store, "SELECT count(*) FROM results") == 0


# -- skipping work already paid for ---------------------------------------------------------------


def test_done_request_keys_counts_only_ok_results_of_the_asked_keys(store: Store) -> None:
    store.results.write(
        [
            result(0),
            result(1, status="failed"),
            result(2, status="input_error"),
            result(3, run_id="run-0"),  # ok in an earlier run
            result(4),
            result(5, status="failed"),
        ]
    )
    store.results.write([result(5, run_id="run-2")])  # failed first, ok on the rerun
    asked = ["key-0", "key-1", "key-2", "key-3", "key-5", "key-99"]
    assert store.results.done_keys(asked) == {"key-0", "key-3", "key-5"}
    assert store.results.done_keys([]) == set()
    assert store.results.done_keys(["key-1"]) == set()


def test_done_request_keys_handles_a_full_chunk(store: Store) -> None:
    store.results.write([result(i, status="ok" if i % 2 else "failed") for i in range(1_000)])
    keys = [f"key-{i}" for i in range(0, 1_024)]
    assert store.results.done_keys(keys) == {f"key-{i}" for i in range(1, 1_000, 2)}


# -- runs -----------------------------------------------------------------------------------------


JOB_TOML = """
name = "reviews"
[input]
path = "data/reviews.jsonl"
[request]
provider = "openai"
model = "gpt-4o-mini"
prompt = "Classify: {text}"
base_url = "https://user:sk-secret@proxy.example.com:8443/v1?api_key=sk-secret#frag"
"""


def test_run_lifecycle(store: Store) -> None:
    job = parse_job(JOB_TOML, path="jobs/reviews.toml")
    run = RunRecord.for_job(
        job,
        run_id="run-1",
        prompt_hash="p1",
        price_source="genai-prices 0.2.3",
        manifest={
            "argv": ["pipeline", "run"],
            "version": 1,
            "env": "OPENAI_API_KEY=sk-abcdef123456",
        },
    )
    store.runs.start(dataclasses.replace(run, started_at=T0))
    row = store.query("SELECT * EXCLUDE (started_at, finished_at) FROM runs")[0]
    assert row["state"] == "running"
    assert row["job"] == "reviews" and row["job_path"] == "jobs/reviews.toml"
    assert row["job_hash"] == job.job_hash  # the hash is of the file as written
    assert row["job_text"] == JOB_TOML.replace("user:sk-secret@", "[REDACTED]@").replace(
        "api_key=sk-secret", "api_key=[REDACTED]"
    )
    assert row["base_url"] == "https://proxy.example.com:8443/v1"  # no user, key or query
    everything = str(store.query("SELECT * EXCLUDE (started_at, finished_at) FROM runs"))
    assert "sk-secret" not in everything and "sk-abcdef" not in everything
    assert one(store, "SELECT manifest::JSON->>'$.argv[1]' FROM runs") == "run"
    assert one(store, "SELECT epoch(started_at) FROM runs") == pytest.approx(T0)

    store.results.write([result(i) for i in range(5)] + [result(5, status="failed")])
    store.results.write([result(6, run_id="other-run")])
    store.runs.finish("run-1", "stopped: budget", rows_total=10, finished_at=T0 + 60)
    row = store.query(
        "SELECT state, rows_total, rows_ok, rows_failed, input_tokens, output_tokens, cost_usd,"
        " epoch(finished_at) AS finished FROM runs"
    )[0]
    mine = [result(i) for i in range(6)]
    assert row == {
        "state": "stopped: budget",
        "rows_total": 10,
        "rows_ok": 5,
        "rows_failed": 1,
        "input_tokens": sum(r.input_tokens for r in mine),
        "output_tokens": sum(r.output_tokens for r in mine),
        "cost_usd": pytest.approx(sum(r.cost_usd or 0 for r in mine)),
        "finished": pytest.approx(T0 + 60),
    }
    counts = store.results.counts("run-1")
    assert counts["rows"] == 6 and counts["ok"] == 5 and counts["failed"] == 1
    assert counts["cost_usd"] == pytest.approx(row["cost_usd"])


def test_finish_run_takes_explicit_counts_and_keeps_unknown_cost_null(store: Store) -> None:
    store.runs.start(RunRecord(run_id="run-1", job="reviews"))
    store.results.write([result(i, cost_usd=None) for i in range(3)])
    store.runs.finish("run-1", "completed", rows_ok=2, rows_total=3)
    row = store.query("SELECT rows_total, rows_ok, rows_failed, cost_usd FROM runs")[0]
    assert row == {"rows_total": 3, "rows_ok": 2, "rows_failed": 0, "cost_usd": None}


def test_run_states_are_checked(store: Store) -> None:
    store.runs.start(RunRecord(run_id="r", job="j"))
    for bad in ("done", "failed:", "failed: ", "stopped"):
        with pytest.raises(ValueError, match="bad run state"):
            store.runs.finish("r", bad)
    store.runs.update("r", state="failed: provider said 401")
    assert one(store, "SELECT state FROM runs") == "failed: provider said 401"


def test_run_errors_are_store_errors(store: Store) -> None:
    store.runs.start(RunRecord(run_id="r", job="j"))
    with pytest.raises(StoreError, match="record run 'r'"):
        store.runs.start(RunRecord(run_id="r", job="j"))
    with pytest.raises(StoreError, match="no run 'nope'"):
        store.runs.finish("nope", "completed")


def test_run_counts_of_a_run_without_results(store: Store) -> None:
    counts = store.results.counts("empty")
    assert counts["rows"] == 0 and counts["cost_usd"] is None


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


# -- concurrency and locking ----------------------------------------------------------------------


def test_reads_from_other_threads_while_a_thread_writes(store: Store) -> None:
    batches = [[result(b * 100 + i) for i in range(100)] for b in range(30)]
    errors: list[BaseException] = []
    writer_done = threading.Event()
    seen: list[int] = []

    def write() -> None:
        try:
            for batch in batches:
                store.results.write(batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            writer_done.set()

    def read() -> None:
        try:
            while not writer_done.is_set():
                n = store.queries.report().totals.rows
                assert n % 100 == 0  # only whole, committed batches are ever visible
                seen.append(n)
                store.results.done_keys([f"key-{i}" for i in range(0, 3_000, 7)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert seen == sorted(seen)
    assert store.queries.report().totals.rows == 3_000


HOLD_OPEN = textwrap.dedent(
    """
    import sys
    from pipeline.store import Store
    with Store(sys.argv[1]):
        print("ready", flush=True)
        sys.stdin.read()
    """
)


def test_a_database_written_by_another_process_gives_a_clear_error(db: Path) -> None:
    with Store(db) as s:
        s.results.write([result(0)])
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(db)],
        cwd=PROJECT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        for read_only in (False, True):
            with pytest.raises(StoreError) as info:
                Store(db, read_only=read_only)
            message = str(info.value)
            assert str(db) in message
            assert "another pipeline process" in message
            assert f"PID {child.pid}" in message
            assert "read_only=True" in message and "duckdb -readonly" in message
            assert isinstance(info.value.__cause__, duckdb.IOException)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    with Store(db, read_only=True) as s:  # the writer is gone: reading works
        assert s.queries.report().totals.rows == 1


def test_read_only_store_reads_but_does_not_write(db: Path) -> None:
    with Store(db) as s:
        s.results.write([result(0), result(1)])
    with Store(db, read_only=True) as s1, Store(db, read_only=True) as s2:
        assert s1.queries.report().totals.rows == 2
        assert s2.results.done_keys(["key-0"]) == {"key-0"}
        with pytest.raises(StoreError, match="read-only"):
            s1.results.write([result(2)])


def test_read_only_open_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no results database at"):
        Store(tmp_path / "nope.duckdb", read_only=True)
    assert not (tmp_path / "nope.duckdb").exists()


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_text("not a database\n" * 100)
    with pytest.raises(StoreError, match=r"notes\.duckdb"):
        Store(path)


def test_write_speed_is_reasonable(store: Store) -> None:
    # Not a benchmark (see the report for µs/row): a guard against a 10x regression,
    # e.g. falling back to row-by-row inserts.
    batches = [[result(b * 1_000 + i) for i in range(1_000)] for b in range(10)]
    start = time.perf_counter()
    for batch in batches:
        store.results.write(batch)
    per_row = (time.perf_counter() - start) / 10_000
    assert per_row < 100e-6
