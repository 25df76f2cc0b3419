"""The result sink, ``store.results``: atomic batch writes, done keys, counts."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import orjson
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
    with pytest.raises(StoreError, match="none was written") as info:
        store.results.write(batch)
    assert '"lots"' in str(info.value)  # the value that does not fit
    assert one(store, "SELECT count(*) FROM row_results") == 0
    store.results.write(batch[:8])  # three chunks, one transaction
    assert one(store, "SELECT count(*) FROM row_results") == 8


def test_empty_batch_is_a_no_op(store: Store) -> None:
    store.results.write([])
    assert one(store, "SELECT count(*) FROM results") == 0


# -- skipping work already paid for ---------------------------------------------------------------


def test_seen_tells_ok_results_of_any_run_and_everything_this_run_recorded(store: Store) -> None:
    store.results.write(
        [
            result(0),
            result(1, status="failed"),
            result(2, status="input_error"),
            result(3, run_id="run-0"),  # ok in an earlier run
            result(4, run_id="run-0", status="failed"),  # an earlier run's failure
        ]
    )
    asked = ["key-0", "key-1", "key-2", "key-3", "key-4", "key-99"]
    seen = store.results.seen(asked, run_id="run-1")
    assert {k: [(s.kind, s.run_id, s.line) for s in v] for k, v in seen.items()} == {
        "key-0": [("ok", "run-1", 1)],
        "key-1": [("recorded", "run-1", 2)],
        "key-2": [("recorded", "run-1", 3)],
        "key-3": [("ok", "run-0", 4)],
    }
    # Another run sees only what was ok.
    assert set(store.results.seen(asked, run_id="run-9")) == {"key-0", "key-3"}
    assert store.results.seen([], run_id="run-1") == {}


def test_seen_looks_near_the_rows_first_and_still_finds_the_rest(store: Store) -> None:
    store.results.write([result(i, status="ok" if i % 2 else "failed") for i in range(1_000)])
    keys = [f"key-{i}" for i in range(0, 1_024)]
    everywhere = store.results.seen(keys, run_id="run-9")
    near = store.results.seen(keys, run_id="run-9", near=("data/in.jsonl", 1, 10))
    assert set(everywhere) == set(near) == {f"key-{i}" for i in range(1, 1_000, 2)}


def test_seen_tells_rows_in_open_batches_of_any_run_and_in_this_runs_own(store: Store) -> None:
    rows = [(f"key-{i}", f"row-{i}", "data/in.jsonl", i + 1) for i in range(4)]
    store.batches.record_part("run-0", 1, "openai", nbytes=10, requests=rows[:2])
    store.batches.mark_submitted("run-0", 1, "batch_a", None)
    store.batches.record_part("run-1", 1, "openai", nbytes=10, requests=rows[2:])
    store.batches.collect("run-1", 1, [result(2, run_id="run-1")])  # key-3 left unanswered
    seen = store.results.seen([r[0] for r in rows], run_id="run-1")
    assert [(s.kind, s.run_id, s.batch_id) for s in seen["key-0"]] == [
        ("batched", "run-0", "batch_a")
    ]
    assert [s.kind for s in seen["key-2"]] == ["ok"]
    assert [(s.kind, s.run_id) for s in seen["key-3"]] == [("batched", "run-1")]
    store.batches.collect("run-0", 1, [])  # collected, nothing answered: not open any more
    assert "key-0" not in store.results.seen(["key-0"], run_id="run-1")


def journal_file(path: Path, results: list[RowResult], tail: bytes = b"") -> Path:
    """A journal segment as a run writes it: a first line naming the run, then one line a
    result (``tail``: what a crash of the machine left of one more)."""
    header = orjson.dumps({"journal": 1, "run_id": "run-1", "db": "x.duckdb"})
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in results) + tail)
    path.write_bytes(header + b"\n" + path.read_bytes())
    return path


def test_a_journal_segment_is_inserted_from_its_file_without_its_first_line(
    store: Store, tmp_path: Path
) -> None:
    segment = journal_file(tmp_path / "run-1.000001.journal.jsonl", [result(i) for i in range(5)])
    assert store.results.write_lines(segment) == 5
    assert one(store, "SELECT count(*) FROM results") == 5
    assert one(store, "SELECT sum(input_tokens) FROM results") == sum(100 + i for i in range(5))


def test_a_segment_with_a_bad_value_is_refused_whole(store: Store, tmp_path: Path) -> None:
    rows = [result(1), result(2, status="maybe")]
    with pytest.raises(StoreError, match="none was written"):
        store.results.write_lines(journal_file(tmp_path / "bad.journal.jsonl", rows))
    assert one(store, "SELECT count(*) FROM results") == 0


def test_a_journal_replayed_twice_records_its_results_once(store: Store, tmp_path: Path) -> None:
    store.results.write([result(0)])
    path = tmp_path / "run-1.journal.jsonl"
    cut = b'{"job": "reviews", "run_id": "run-1", "row_'  # a crash of the machine mid-line
    assert store.results.write_missing(journal_file(path, [result(i) for i in range(3)], cut)) == 2
    assert store.results.write_missing(journal_file(path, [result(1), result(2)])) == 0
    assert store.queries.report().totals.rows == 3
    # The same key at another line (a repeated row id) is another result.
    again = [result(0, line=99, status="input_error")]
    assert store.results.write_missing(journal_file(path, again)) == 1


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
