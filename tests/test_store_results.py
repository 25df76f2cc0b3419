"""The result sink, ``store.results``: atomic batch writes, done keys, counts."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from _store_rows import one, result

from pipeline.errors import StoreError
from pipeline.records import RowResult
from pipeline.store import Store
from pipeline.store import results as results_module


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sub" / "results.duckdb"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store(db) as s:
        yield s


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


# -- counts ---------------------------------------------------------------------------------------


def test_run_counts_of_a_run_without_results(store: Store) -> None:
    counts = store.results.counts("empty")
    assert counts["rows"] == 0 and counts["cost_usd"] is None


# -- speed ----------------------------------------------------------------------------------------


def test_write_speed_is_reasonable(store: Store) -> None:
    # Not a benchmark (see the report for µs/row): a guard against a 10x regression,
    # e.g. falling back to row-by-row inserts.
    batches = [[result(b * 1_000 + i) for i in range(1_000)] for b in range(10)]
    start = time.perf_counter()
    for batch in batches:
        store.results.write(batch)
    per_row = (time.perf_counter() - start) / 10_000
    assert per_row < 100e-6
