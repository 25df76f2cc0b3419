"""``pipeline export``: JSONL in OpenAI's batch-output line shape, and Parquet, of one run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
import structlog

from pipeline.cli import main
from pipeline.reporting.export import batch_output_line
from pipeline.store import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``pipeline run`` configures structlog globally (to a log file it closes on exit): put
    the configuration back for the tests that come after."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


BATCH_LINE_KEYS = {"id", "custom_id", "response", "error"}


def run_job(tmp_path: Path, provider: str, *, schema: bool = False) -> tuple[Path, str]:
    """A run on the fake: four good rows and one without the template's field (input_error);
    the database and the run id."""
    rows = [{"id": f"r{i}", "text": t} for i, t in enumerate(["great", "awful", "fine", "ok"])]
    rows.append({"id": "r9", "body": "no text field"})
    (tmp_path / "in.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    model = "gpt-4o-mini" if provider == "openai" else "claude-sonnet-4-5"
    extra = f'schema = "{ROOT / "jobs" / "schemas" / "invoice.json"}"' if schema else ""
    (tmp_path / "job.toml").write_text(
        f"""name = "export-{provider}"
[input]
path = "{tmp_path / "in.jsonl"}"
id = "id"
[request]
provider = "{provider}"
model = "{model}"
prompt = "Review: {{text}}"
max_tokens = 300
{extra}
[limits]
concurrency = 4
timeout_s = 5
"""
    )
    db = tmp_path / "out.duckdb"
    assert main(["run", str(tmp_path / "job.toml"), "--fake", "--db", str(db), "--quiet"]) == 0
    with Store(db, read_only=True) as store:
        run_id = store.query("SELECT run_id FROM runs")[0]["run_id"]
    return db, run_id


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize(("provider", "schema"), [("openai", False), ("anthropic", True)])
def test_jsonl_lines_have_openais_batch_output_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], provider: str, schema: bool
) -> None:
    from _openapi import openai_validator

    db, run_id = run_job(tmp_path, provider, schema=schema)
    out = tmp_path / "export" / "run.jsonl"
    capsys.readouterr()
    assert main(["export", run_id, "--format", "jsonl", "--out", str(out), "--db", str(db)]) == 0
    assert f"wrote 5 rows of run {run_id} to {out}" in capsys.readouterr().out

    with Store(db, read_only=True) as store:
        results = {r["request_key"]: r for r in store.query("SELECT * FROM results")}
    lines = read_lines(out)
    assert len(lines) == 5
    assert {line["custom_id"] for line in lines} == set(results)
    response_schema = openai_validator("CreateChatCompletionResponse")
    ok = [line for line in lines if line["response"] is not None]
    assert len(ok) == 4
    for line in lines:
        assert set(line) == BATCH_LINE_KEYS
        assert line["id"] == f"batch_req_{line['custom_id']}"
        row = results[line["custom_id"]]
        if line["response"] is None:
            assert row["status"] == "input_error"
            assert line["error"] == {"code": "missing_field", "message": row["error"]}
            continue
        assert line["error"] is None
        response = line["response"]
        assert set(response) == {"status_code", "request_id", "body"}
        assert response["status_code"] == 200 and response["request_id"] is None
        body = response["body"]
        assert list(response_schema.iter_errors(body)) == []
        choice = body["choices"][0]
        assert choice["message"]["content"] == row["output_text"]
        assert choice["finish_reason"] == "stop"  # end_turn and tool_use included
        assert body["model"] == row["model"]
        usage = body["usage"]
        assert usage["prompt_tokens"] == row["input_tokens"]
        assert usage["completion_tokens"] == row["output_tokens"]
        assert usage["total_tokens"] == row["total_tokens"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == row["cache_read_tokens"]
        if schema:
            assert orjson.loads(choice["message"]["content"]) == orjson.loads(row["output_json"])


def test_other_statuses_become_error_lines_and_finish_reasons_map() -> None:
    row = {
        "request_key": "k1",
        "status": "invalid",
        "error_type": "schema_violation",
        "error": "$.total: 'x' is not of type 'number'",
    }
    assert batch_output_line(row) == {
        "id": "batch_req_k1",
        "custom_id": "k1",
        "response": None,
        "error": {"code": "schema_violation", "message": "$.total: 'x' is not of type 'number'"},
    }
    ok = {
        "request_key": "k2",
        "status": "ok",
        "finished_at": 1700000000.5,
        "model": "claude-sonnet-4-5",
        "output_text": "{}",
        "input_tokens": 10,
        "output_tokens": 2,
        "cache_read_tokens": 4,
        "reasoning_tokens": 0,
    }
    for finish, mapped in (("max_tokens", "length"), ("refusal", "content_filter"), (None, "stop")):
        body = batch_output_line({**ok, "finish_reason": finish})["response"]["body"]
        assert body["choices"][0]["finish_reason"] == mapped
        assert body["created"] == 1700000000


def test_parquet_holds_every_results_column_of_the_run(tmp_path: Path) -> None:
    db, run_id = run_job(tmp_path, "anthropic", schema=True)
    # another run in the same database (the row with bad input again) is left out
    assert main(["run", str(tmp_path / "job.toml"), "--fake", "--db", str(db), "--quiet"]) == 0

    assert main(["export", run_id, "--format", "parquet", "--db", str(db)]) == 0
    default = db.parent / "runs" / f"{run_id}.results.parquet"
    table = pq.read_table(default)
    with Store(db, read_only=True) as store:
        columns = [
            r["column_name"]
            for r in store.query(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'results' ORDER BY ordinal_position"
            )
        ]
        expected = store.query(
            "SELECT row_id, status, output_text, cost_usd, output_json::VARCHAR AS output_json "
            "FROM results WHERE run_id = ? ORDER BY row_id",
            [run_id],
        )
    assert table.column_names == columns
    assert table.num_rows == 5
    assert set(table.column("run_id").to_pylist()) == {run_id}
    got = sorted(
        (
            {
                "row_id": r["row_id"],
                "status": r["status"],
                "output_text": r["output_text"],
                "cost_usd": r["cost_usd"],
                "output_json": r["output_json"],
            }
            for r in table.to_pylist()
        ),
        key=lambda r: r["row_id"],
    )
    assert [r["row_id"] for r in got] == [r["row_id"] for r in expected]
    for mine, theirs in zip(got, expected, strict=True):
        assert mine["status"] == theirs["status"]
        assert mine["output_text"] == theirs["output_text"]
        assert mine["cost_usd"] == theirs["cost_usd"]
        if theirs["output_json"] is None:
            assert mine["output_json"] is None
        else:
            assert orjson.loads(mine["output_json"]) == orjson.loads(theirs["output_json"])


def test_export_refuses_an_unknown_run_or_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "nope", "--db", str(tmp_path / "missing.duckdb")]) == 2
    assert "no results database" in capsys.readouterr().err
    db, _ = run_job(tmp_path, "openai")
    capsys.readouterr()
    assert main(["export", "no-such-run", "--db", str(db)]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err
    assert not (db.parent / "runs" / "no-such-run.results.jsonl").exists()
