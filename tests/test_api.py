"""The library's one call: ``pipeline.run`` from Python, as a notebook or a nightly task uses it,
and ``pipeline run --json`` for orchestrators."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

import pipeline
from pipeline.cli import main
from pipeline.fake import FakeConfig, running_fake_provider

ROOT = Path(__file__).resolve().parent.parent


def job_dict(db: Path, **request: Any) -> dict[str, Any]:
    return {
        "name": "tickets",
        "input": {"id": "id"},
        "request": {
            "provider": "openai",
            "model": "gpt-4o-mini",
            "system": "Classify the ticket: billing, bug or other.",
            "prompt": "Ticket: {text}",
            "max_tokens": 5,
            **request,
        },
        "limits": {"concurrency": 32},
        "output": {"db": str(db)},
    }


def tickets(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "text": f"ticket {i}: the invoice is wrong"} for i in range(start, n)]


def test_a_dict_job_and_rows_from_python_run_in_one_call_and_rerun_sends_nothing(
    tmp_path: Path,
) -> None:
    job = job_dict(tmp_path / "r.duckdb")
    rows = tickets(3000)

    first = pipeline.run(job, rows=rows, fake=True)

    assert first.state is pipeline.RunState.COMPLETED and first.exit_code == 0
    assert first.stats.rows_ok == 3000 and first.stats.requests_sent == 3000
    assert first.cost_usd is not None and first.cost_usd > 0
    table = first.results()
    assert table.num_rows == 3000
    assert table.column("row_id").to_pylist() == [str(r["id"]) for r in rows]
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert sum(table.column("cost_usd").to_pylist()) == pytest.approx(first.cost_usd)

    again = pipeline.run(job, rows=rows, fake=True)
    assert again.stats.requests_sent == 0 and again.stats.rows_skipped == 3000
    # The rows found done are in its results too: the same answers, from the first run.
    same = again.results()
    assert same.num_rows == 3000
    assert same.column("run_id").unique().to_pylist() == [first.run_id]
    assert same.column("output_text") == table.column("output_text")

    more = pipeline.run(job, rows=tickets(3100), fake=True)
    assert more.stats.requests_sent == 100 and more.stats.rows_skipped == 3000
    assert more.results().num_rows == 3100


def test_a_table_a_dataframe_and_a_generator_give_the_same_results(tmp_path: Path) -> None:
    polars = pytest.importorskip("polars")
    rows = tickets(200)
    got = {}
    for kind, given in {
        "dicts": rows,
        "table": pa.Table.from_pylist(rows),
        "reader": pa.Table.from_pylist(rows).to_reader(max_chunksize=64),
        "polars": polars.DataFrame(rows),
        "generator": (dict(r) for r in rows),
    }.items():
        outcome = pipeline.run(job_dict(tmp_path / f"{kind}.duckdb"), rows=given, fake=True)
        assert outcome.stats.rows_ok == 200, kind
        table = outcome.results()
        got[kind] = table.select(["row_id", "status", "output_text", "input_tokens"]).to_pylist()
    assert got["table"] == got["reader"] == got["polars"] == got["generator"] == got["dicts"]


def test_anything_that_exports_the_arrow_stream_is_read_through_pyarrow(tmp_path: Path) -> None:
    class Frame:  # a DataFrame library pyarrow has never heard of
        def __init__(self, table: pa.Table) -> None:
            self._table = table

        def __arrow_c_stream__(self, requested_schema: object = None) -> object:
            return self._table.__arrow_c_stream__(requested_schema)

    frame = Frame(pa.Table.from_pylist(tickets(50)))
    outcome = pipeline.run(job_dict(tmp_path / "r.duckdb"), rows=frame, fake=True)
    assert outcome.stats.rows_ok == 50
    assert outcome.results().num_rows == 50  # read a second time for the results


def test_a_schema_job_gives_its_fields_as_typed_columns(tmp_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string"}, "urgent": {"type": "boolean"}},
        "required": ["label", "urgent"],
        "additionalProperties": False,
    }
    job = job_dict(tmp_path / "r.duckdb", schema=schema, max_tokens=100)
    outcome = pipeline.run(job, rows=tickets(20), fake=True)
    table = outcome.results()
    assert table.num_rows == 20
    assert table.schema.field("label").type == pa.string()
    assert table.schema.field("urgent").type == pa.bool_()
    assert all(isinstance(v, str) for v in table.column("label").to_pylist())


def test_a_dict_job_is_checked_like_a_file_with_the_same_one_line_errors(tmp_path: Path) -> None:
    job = job_dict(tmp_path / "r.duckdb")
    job["request"]["temperature"] = "hot"
    with pytest.raises(pipeline.ConfigError) as caught:
        pipeline.run(job, rows=tickets(3), fake=True)
    assert str(caught.value) == "<dict>: [request.temperature] must be a number, got 'hot'"
    job["request"].pop("temperature")
    job["request"]["api_key"] = "sk-nope"
    with pytest.raises(pipeline.ConfigError, match="from the environment only"):
        pipeline.run(job, rows=tickets(3), fake=True)
    assert not (tmp_path / "r.duckdb").exists()  # nothing was opened


def test_a_run_without_rows_or_input_path_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(pipeline.ConfigError, match=r"\[input.path\] no input"):
        pipeline.run(job_dict(tmp_path / "r.duckdb"), fake=True)


def test_rows_that_are_not_dicts_are_recorded_and_the_rest_run(tmp_path: Path) -> None:
    rows: list[Any] = [*tickets(3), ["not", "a", "dict"]]
    outcome = pipeline.run(job_dict(tmp_path / "r.duckdb"), rows=rows, fake=True)
    assert outcome.stats.rows_ok == 3 and outcome.stats.rows_input_error == 1
    bad = [r for r in outcome.results().to_pylist() if r["status"] != "ok"]
    assert [(r["status"], r["error_type"], r["line"]) for r in bad] == [
        ("input_error", "not_an_object", 4)
    ]


def test_a_stopped_python_rows_run_is_resumed_with_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "r.duckdb"
    job = job_dict(db)
    job["limits"]["budget_usd"] = 0.0001
    rows = tickets(400)
    stopped = pipeline.run(job, rows=rows, fake=True, force=True)
    assert stopped.state is pipeline.RunState.STOPPED and stopped.reason == "budget"
    assert stopped.exit_code == 3 and 0 < stopped.stats.rows_ok < 400

    with pytest.raises(pipeline.ConfigError, match="read its rows from Python"):
        pipeline.run(resume=stopped.run_id, db=db)
    done = pipeline.run(resume=stopped.run_id, db=db, rows=rows, budget_usd=1.0)
    assert done.run_id == stopped.run_id and done.state is pipeline.RunState.COMPLETED
    assert done.stats.rows_ok == 400 - stopped.stats.rows_ok
    assert done.results().num_rows == 400


def test_notices_reach_the_caller(tmp_path: Path) -> None:
    heard: list[str] = []
    job = job_dict(tmp_path / "r.duckdb", model="a-model-nobody-prices")
    outcome = pipeline.run(job, rows=tickets(5), fake=True, on_notice=heard.append)
    assert outcome.stats.rows_ok == 5 and outcome.cost_usd is None
    assert any("no price known for openai model 'a-model-nobody-prices'" in m for m in heard)


def test_run_works_where_an_event_loop_is_already_running(tmp_path: Path) -> None:
    """A notebook's cell runs inside an event loop: ``pipeline.run`` still works there."""

    async def cell() -> pipeline.RunOutcome:
        return pipeline.run(job_dict(tmp_path / "r.duckdb"), rows=tickets(10), fake=True)

    outcome = asyncio.run(cell())
    assert outcome.stats.rows_ok == 10


@pytest.mark.anyio
async def test_arun_sends_to_a_fake_the_caller_runs(tmp_path: Path) -> None:
    async with running_fake_provider(FakeConfig()) as fake:
        outcome = await pipeline.arun(job_dict(tmp_path / "r.duckdb"), rows=tickets(7), fake=fake)
        assert fake.accounting()["requests"] == 7
    assert outcome.stats.rows_ok == 7


def test_estimate_takes_rows_from_python_too(tmp_path: Path) -> None:
    job = job_dict(tmp_path / "r.duckdb")
    before = pipeline.estimate(job, rows=tickets(100))
    assert before.rows_total == 100 and before.rows_to_send == 100
    assert before.cost_online_worst is not None and before.cost_online_worst > 0
    pipeline.run(job, rows=tickets(100), fake=True)
    after = pipeline.estimate(job, rows=tickets(150))
    assert after.rows_done == 100 and after.rows_to_send == 50


def test_names_of_the_first_interface_say_what_replaced_them() -> None:
    for name in ("Runner", "BatchRunner", "RunSession"):
        with pytest.raises(AttributeError, match=r"pipeline\.run\("):
            getattr(pipeline, name)
    importlib.import_module("pipeline.estimates")  # a module of that stem does not hide it
    assert callable(pipeline.estimate) and pipeline.estimate.__module__ == "pipeline._api"


# -- the command line for orchestrators ---------------------------------------------------------


def write_job(tmp_path: Path, rows: int = 30) -> Path:
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in tickets(rows)))
    doc = job_dict(tmp_path / "r.duckdb")
    job = tmp_path / "job.toml"
    job.write_text(
        f"""name = "tickets"
[input]
path = "{data}"
id = "id"
[request]
provider = "openai"
model = "gpt-4o-mini"
prompt = "{doc["request"]["prompt"]}"
max_tokens = 5
[output]
db = "{tmp_path / "r.duckdb"}"
"""
    )
    return job


def json_out(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # one object, one line
    doc: dict[str, Any] = orjson.loads(out)
    return doc


def test_run_json_prints_one_object_with_state_counts_cost_and_run_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path)
    assert main(["run", str(job), "--fake", "--json"]) == 0
    doc = json_out(capsys)
    assert doc["state"] == "completed" and doc["exit_code"] == 0
    assert doc["rows"]["ok"] == 30 and doc["requests"]["sent"] == 30
    assert doc["cost_usd"] > 0 and doc["resume_command"] is None
    assert Path(doc["manifest"]).exists()

    assert main(["status", doc["run_id"], "--db", str(tmp_path / "r.duckdb"), "--json"]) == 0
    status = json_out(capsys)
    assert (status["run_id"], status["state"], status["rows"]["ok"]) == (
        doc["run_id"],
        "completed",
        30,
    )

    assert main(["runs", "--db", str(tmp_path / "r.duckdb"), "--json"]) == 0
    listed = json_out(capsys)["runs"]
    assert [(r["run_id"], r["rows_ok"]) for r in listed] == [(doc["run_id"], 30)]

    assert main(["estimate", str(job), "--json"]) == 0
    estimate = orjson.loads(capsys.readouterr().out)
    assert estimate["rows_done"] == 30 and estimate["rows_to_send"] == 0


def test_a_stopped_run_json_names_the_resume_command_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path, rows=300)
    args = ["run", str(job), "--fake", "--json", "--budget-usd", "0.00001", "--force"]
    assert main(args) == 3
    doc = json_out(capsys)
    assert (doc["state"], doc["reason"], doc["exit_code"]) == ("stopped", "budget", 3)
    assert doc["resume_command"] == f"pipeline resume {doc['run_id']} --db {tmp_path / 'r.duckdb'}"
    assert main(["resume", doc["run_id"], "--db", str(tmp_path / "r.duckdb"), "--json"]) == 3
    again = json_out(capsys)
    assert again["run_id"] == doc["run_id"]


def test_a_bad_job_file_with_json_still_prints_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path)
    job.write_text(job.read_text().replace("max_tokens = 5", "max_tokens = 0"))
    assert main(["run", str(job), "--fake", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "[request.max_tokens] must be at least 1" in captured.err


# -- a nightly task, as the README shows it ------------------------------------------------------


NIGHTLY = """
import sys
import pipeline

outcome = pipeline.run("{job}", fake=True)
print(outcome.status, outcome.stats.rows_ok, outcome.stats.requests_sent)
if outcome.state is not pipeline.RunState.COMPLETED:
    sys.exit(outcome.exit_code)
"""


def test_a_nightly_task_runs_the_job_and_fails_on_its_state(tmp_path: Path) -> None:
    job = write_job(tmp_path, rows=40)
    script = tmp_path / "nightly.py"
    script.write_text(NIGHTLY.format(job=job))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["completed", "40", "40"]
    again = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert again.stdout.split() == ["completed", "0", "0"]
