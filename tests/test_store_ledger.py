"""The ledgers: ``store.runs`` (table runs) and ``store.batches`` (batches, batch_requests)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from _store_rows import T0, one, result

from pipeline.errors import StoreError
from pipeline.job import Job, parse_job
from pipeline.redact import register_secret
from pipeline.store import RunRecord, Store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sub" / "results.duckdb"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store(db) as s:
        yield s


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


def secret_job() -> Job:
    """A job whose text and base URL hold a key: the parser refuses a URL with a user and
    password, so it is built by hand, as an older manifest's job could be; the store redacts
    it all the same."""
    url = "https://user:sk-secret@proxy.example.com:8443/v1?api_key=sk-secret#frag"
    job = parse_job(JOB_TOML.replace("user:sk-secret@", ""), path="jobs/reviews.toml")
    return dataclasses.replace(
        job, text=JOB_TOML, request=dataclasses.replace(job.request, base_url=url)
    )


def test_run_lifecycle(store: Store) -> None:
    job = secret_job()
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


def test_a_registered_key_of_any_shape_is_not_stored(store: Store) -> None:
    key = "plain" + "key-7f3a9c"
    register_secret(key)
    store.runs.start(
        RunRecord(run_id="r", job="j", job_text=f'key = "{key}"', manifest={"argv": [key]})
    )
    assert key not in str(store.query("SELECT * EXCLUDE (started_at, finished_at) FROM runs"))


def test_reopen_get_and_list_runs(store: Store) -> None:
    store.runs.start(RunRecord(run_id="r", job="j", started_at=T0))
    store.runs.finish("r", "stopped: signal", finished_at=T0 + 5)
    store.runs.reopen("r")
    got = store.runs.get("r")
    assert got is not None
    assert (got["state"], got["finished_at"]) == ("running", None)
    assert got["started_at"] == pytest.approx(T0)
    assert store.runs.get("nope") is None
    with pytest.raises(StoreError, match="no run 'nope'"):
        store.runs.reopen("nope")

    store.runs.start(RunRecord(run_id="r2", job="j", started_at=T0 + 10))
    store.results.write([result(0, run_id="r2"), result(1, run_id="r2", status="failed")])
    listed = store.runs.list(limit=5)
    assert [r["run_id"] for r in listed] == ["r2", "r"]  # newest first
    assert (listed[0]["rows_ok"], listed[0]["rows_failed"]) == (1, 1)
    assert [r["run_id"] for r in store.runs.list(limit=1)] == ["r2"]


# -- batches --------------------------------------------------------------------------------------


def test_a_batch_part_from_record_to_collect(store: Store) -> None:
    store.runs.start(RunRecord(run_id="run-1", job="reviews", mode="batch"))
    requests = [(f"key-{i}", f"row-{i}", "data/in.jsonl", i + 1) for i in range(3)]
    before = time.time()
    store.batches.record_part("run-1", 1, "openai", nbytes=1234, requests=requests)
    (part,) = store.batches.parts("run-1")
    assert before - 1 <= part.pop("created_at") <= time.time() + 1
    assert [part] == [
        {
            "part": 1,
            "provider": "openai",
            "batch_id": None,
            "input_file_id": None,
            "status": "preparing",
            "requests": 3,
            "bytes": 1234,
            "collected": False,
        }
    ]
    assert store.batches.requests("run-1", 1) == {
        f"key-{i}": (f"row-{i}", "data/in.jsonl", i + 1, i + 1) for i in range(3)
    }

    store.batches.mark_submitted("run-1", 1, "batch_abc", "file_xyz")
    store.batches.update("run-1", 1, status="in_progress", succeeded=1)
    store.batches.update("run-1", 1, status="ended", errored=1)  # succeeded stays as it was
    assert store.batches.unanswered_keys("run-1") == {"key-0", "key-1", "key-2"}

    answers = [result(0, mode="batch"), result(1, mode="batch", status="failed")]
    with pytest.raises(StoreError, match="collect batch part 1"):
        store.batches.collect("run-1", 1, [*answers, result(2, status="maybe")])
    assert not store.batches.parts("run-1")[0]["collected"]  # nothing of it was written
    store.batches.collect("run-1", 1, answers)
    assert store.batches.unanswered_keys("run-1") == {"key-2"}
    (part,) = store.batches.list(run_id="run-1")
    assert (part["batch_id"], part["status"], part["succeeded"], part["errored"]) == (
        "batch_abc",
        "ended",
        1,
        1,
    )
    assert part["collected"] and part["submitted_at"] is not None
    assert store.batches.list(run_id="nope") == []
    assert one(store, "SELECT count(*) FROM results WHERE mode = 'batch'") == 2


def test_a_part_recorded_from_its_rows_file_and_collected_from_a_file_of_answers(
    store: Store, tmp_path: Path
) -> None:
    """Batch mode streams: the part's rows and its answers go through files, never a list."""
    store.runs.start(RunRecord(run_id="run-1", job="reviews", mode="batch"))
    rows = tmp_path / "part-0001.rows.jsonl"
    rows.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "request_key": f"key-{i}",
                    "row_id": f"row-{i}",
                    "source": "data/in.jsonl",
                    "line": i + 1,
                    "ordinal": i + 1,
                }
            )
            + b"\n"
            for i in range(3)
        )
    )
    store.batches.record_part("run-1", 1, "openai", nbytes=99, requests=rows)
    assert store.batches.parts("run-1")[0]["requests"] == 3
    assert store.batches.part_keys("run-1", 1) == {"key-0", "key-1", "key-2"}
    # Answers carry no row of their own: the part's row id, source and line are written.
    blank = {"row_id": "", "source": "", "line": 0, "mode": "batch"}
    answers = [result(0, **blank), result(2, **blank), result(7, **blank)]  # key-7: not the part's
    path = tmp_path / "answers.jsonl"
    path.write_bytes(b"".join(orjson.dumps(a) + b"\n" for a in answers))
    assert store.batches.collect_lines("run-1", 1, [path]) == 2
    got = store.query("SELECT request_key, row_id, source, line FROM results ORDER BY line")
    assert [tuple(r.values()) for r in got] == [
        ("key-0", "row-0", "data/in.jsonl", 1),
        ("key-2", "row-2", "data/in.jsonl", 3),
    ]
    assert store.batches.parts("run-1")[0]["collected"]
    assert store.batches.unanswered_keys("run-1") == {"key-1"}
