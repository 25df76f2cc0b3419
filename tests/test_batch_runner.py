"""Batch mode end to end: the CLI against the fake provider's batch endpoints on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pytest
from conftest import ThreadedFakeProvider

from pipeline.cli import main
from pipeline.job.pricing import cost_usd, lookup_price
from pipeline.records import Usage

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "openai": "gpt-4o-mini",
    "anthropic": "claude-3-5-haiku-latest",
    "gemini": "gemini-2.5-flash-lite",
}


def make_job(tmp: Path, provider: str, rows: int, *, batch: str = "", name: str = "b") -> Path:
    data = tmp / "rows.jsonl"
    with data.open("wb") as f:
        for i in range(rows):
            mood = ("great, I love it", "terrible, want a refund", "it arrived")[i % 3]
            f.write(orjson.dumps({"id": f"r{i}", "text": f"Review {i}: {mood}."}) + b"\n")
    job = tmp / f"{name}.toml"
    job.write_text(
        f"""
name = "{name}"
[input]
path = "{data}"
id = "id"
[request]
provider = "{provider}"
model = "{MODELS[provider]}"
system = "Reply with one word."
prompt = "{{text}}"
max_tokens = 5
mode = "batch"
[limits]
max_attempts = 3
[batch]
poll_interval_s = 0.2
{batch}
[output]
db = "{tmp / "r.duckdb"}"
"""
    )
    return job


def results(tmp: Path) -> list[dict[str, Any]]:
    with duckdb.connect(str(tmp / "r.duckdb"), read_only=True) as con:
        cur = con.execute("SELECT * EXCLUDE (finished_at) FROM results ORDER BY row_id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def run_state(tmp: Path) -> str:
    with duckdb.connect(str(tmp / "r.duckdb"), read_only=True) as con:
        row = con.execute("SELECT state FROM runs ORDER BY started_at DESC LIMIT 1").fetchone()
    assert row is not None
    return str(row[0])


def batch_accounting(fake: ThreadedFakeProvider) -> dict[str, Any]:
    return dict(fake.call(fake.provider.batch_accounting))


def only_run_id(tmp: Path) -> str:
    manifests = list((tmp / "runs").glob("*.manifest.json"))
    assert len(manifests) == 1
    return manifests[0].name.removesuffix(".manifest.json")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-openai")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-anthropic")
    monkeypatch.setenv("GEMINI_API_KEY", "test-key-gemini")


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_a_batch_job_lands_in_results_at_half_the_online_price(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None, provider: str
) -> None:
    job = make_job(tmp_path, provider, 60)
    code = main(["run", str(job), "--base-url", threaded_fake.base_url(provider), "--quiet"])
    assert code == 0
    rows = results(tmp_path)
    assert len(rows) == 60
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["mode"] for r in rows} == {"batch"}
    online = lookup_price(provider, MODELS[provider])
    batch = lookup_price(provider, MODELS[provider], batch=True)
    assert online is not None and batch is not None
    for r in rows:
        usage = Usage(input_tokens=r["input_tokens"], output_tokens=r["output_tokens"])
        assert r["input_tokens"] > 0 and r["output_tokens"] > 0
        assert r["cost_usd"] == pytest.approx(cost_usd(batch, usage))
        assert r["cost_usd"] == pytest.approx(cost_usd(online, usage) / 2)  # type: ignore[operator]
    loved = [r for r in rows if int(r["row_id"][1:]) % 3 == 0]
    assert {r["output_text"] for r in loved} == {"positive"}
    accounting = threaded_fake.accounting()
    assert accounting["duplicates_paid"] == 0
    assert accounting["requests"] == 0  # nothing went online
    assert sum(batch_accounting(threaded_fake)["batches_created"].values()) == 1
    assert run_state(tmp_path) == "completed"


def test_parts_are_split_by_count_and_by_bytes(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None
) -> None:
    by_count = tmp_path / "count"
    by_count.mkdir()
    job = make_job(by_count, "openai", 100, batch="max_requests = 40")
    assert main(["run", str(job), "--base-url", threaded_fake.openai_base_url, "--quiet"]) == 0
    assert batch_accounting(threaded_fake)["batches_created"].get("openai") == 3

    threaded_fake.reset()
    by_bytes = tmp_path / "bytes"
    by_bytes.mkdir()
    job = make_job(by_bytes, "anthropic", 100, batch="max_bytes = 6000")
    url = threaded_fake.anthropic_base_url
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0
    with duckdb.connect(str(by_bytes / "r.duckdb"), read_only=True) as con:
        parts = con.execute("SELECT requests, bytes FROM batches ORDER BY part").fetchall()
    assert len(parts) > 1
    assert all(nbytes <= 6000 for _, nbytes in parts)
    assert sum(n for n, _ in parts) == 100
    assert batch_accounting(threaded_fake)["batches_created"].get("anthropic") == len(parts)
    assert len(results(by_bytes)) == 100


@pytest.mark.parametrize("provider", ["openai", "gemini"])
def test_no_wait_then_resume_collects_without_submitting_again(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None, provider: str
) -> None:
    job = make_job(tmp_path, provider, 50)
    url = threaded_fake.base_url(provider)
    assert main(["run", str(job), "--base-url", url, "--quiet", "--no-wait"]) == 3
    assert run_state(tmp_path).startswith("stopped: batches submitted")
    assert results(tmp_path) == []
    run_id = only_run_id(tmp_path)
    db = str(tmp_path / "r.duckdb")
    assert main(["resume", run_id, "--db", db, "--base-url", url, "--quiet"]) == 0
    assert len(results(tmp_path)) == 50
    assert batch_accounting(threaded_fake)["batches_created"].get(provider) == 1
    assert threaded_fake.accounting()["duplicates_paid"] == 0
    assert run_state(tmp_path) == "completed"


def test_a_run_killed_while_waiting_resumes_polling_the_same_batch(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None
) -> None:
    threaded_fake.update_config(batch_in_progress_s=3.0)
    job = make_job(tmp_path, "anthropic", 40)
    url = threaded_fake.anthropic_base_url
    env = {**os.environ, "ANTHROPIC_API_KEY": "test-key"}
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(job), "--base-url", url, "--quiet"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the batch id is committed
            manifests = list((tmp_path / "runs").glob("*.manifest.json"))
            if manifests:
                batches = orjson.loads(manifests[0].read_bytes()).get("batches", [])
                if batches and batches[0].get("batch_id"):
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the run never recorded a submitted batch")
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
    run_id = only_run_id(tmp_path)
    db = str(tmp_path / "r.duckdb")
    code = main(["resume", run_id, "--db", db, "--base-url", url, "--quiet"])
    assert code == 0
    rows = results(tmp_path)
    assert len(rows) == 40
    assert len({r["request_key"] for r in rows}) == 40
    assert batch_accounting(threaded_fake)["batches_created"].get("anthropic") == 1
    assert threaded_fake.accounting()["duplicates_paid"] == 0


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_expired_and_errored_rows_are_sent_online_when_configured(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None, provider: str
) -> None:
    threaded_fake.update_config(batch_expire_after=0.5, batch_error_rate=0.2)
    job = make_job(tmp_path, provider, 60, batch='on_unfinished = "online"')
    url = threaded_fake.base_url(provider)
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0
    rows = results(tmp_path)
    assert len(rows) == 60
    assert len({r["request_key"] for r in rows}) == 60
    assert {r["status"] for r in rows} == {"ok"}
    modes = [r["mode"] for r in rows]
    assert 0 < modes.count("online") < 60
    assert threaded_fake.accounting()["duplicates_paid"] == 0


def test_unfinished_rows_are_recorded_as_failed_when_configured(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None
) -> None:
    threaded_fake.update_config(batch_expire_after=0.5)
    job = make_job(tmp_path, "anthropic", 40, batch='on_unfinished = "record"')
    assert main(["run", str(job), "--base-url", threaded_fake.anthropic_base_url, "--quiet"]) == 0
    rows = results(tmp_path)
    assert len(rows) == 40
    failed = [r for r in rows if r["status"] == "failed"]
    assert failed and {r["error_type"] for r in failed} == {"expired"}
    assert threaded_fake.accounting()["requests"] == 0


def test_cancel_stops_open_batches_and_resume_keeps_what_finished(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None
) -> None:
    threaded_fake.update_config(batch_in_progress_s=2.0)
    job = make_job(tmp_path, "openai", 40)
    url = threaded_fake.openai_base_url
    db = str(tmp_path / "r.duckdb")
    assert main(["run", str(job), "--base-url", url, "--quiet", "--no-wait"]) == 3
    run_id = only_run_id(tmp_path)
    assert main(["cancel", run_id, "--db", db, "--base-url", url]) == 0
    with duckdb.connect(db, read_only=True) as con:
        statuses = {s for (s,) in con.execute("SELECT status FROM batches").fetchall()}
    assert statuses <= {"cancelling", "cancelled"}
    assert main(["resume", run_id, "--db", db, "--base-url", url, "--quiet"]) == 0
    rows = results(tmp_path)
    assert len(rows) == 40 and {r["status"] for r in rows} == {"ok"}
    assert threaded_fake.accounting()["duplicates_paid"] == 0


def test_a_batch_that_fails_validation_records_every_row_with_the_providers_reason(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None
) -> None:
    threaded_fake.update_config(batch_fail_validation=True)
    job = make_job(tmp_path, "openai", 10)
    assert main(["run", str(job), "--base-url", threaded_fake.openai_base_url, "--quiet"]) == 0
    rows = results(tmp_path)
    assert len(rows) == 10
    assert {r["status"] for r in rows} == {"failed"}
    assert {r["error_type"] for r in rows} == {"batch_invalid"}
    assert all("failed validation" in r["error"] for r in rows)


def test_a_duplicate_id_is_that_rows_input_error_not_a_rejected_batch(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None
) -> None:
    job = make_job(tmp_path, "openai", 10)
    data = tmp_path / "rows.jsonl"
    data.write_bytes(data.read_bytes() + b'{"id": "r3", "text": "again"}\n')
    assert main(["run", str(job), "--base-url", threaded_fake.openai_base_url, "--quiet"]) == 0
    rows = results(tmp_path)
    assert sorted(r["status"] for r in rows).count("ok") == 10
    bad = [r for r in rows if r["status"] == "input_error"]
    assert len(bad) == 1
    assert bad[0]["error_type"] == "duplicate_id" and "line 4" in bad[0]["error"]


def test_status_of_a_batch_run_reads_its_manifest(
    tmp_path: Path,
    threaded_fake: ThreadedFakeProvider,
    env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = make_job(tmp_path, "openai", 20)
    url = threaded_fake.openai_base_url
    assert main(["run", str(job), "--base-url", url, "--quiet", "--no-wait"]) == 3
    run_id = only_run_id(tmp_path)
    manifest = orjson.loads((tmp_path / "runs" / f"{run_id}.manifest.json").read_bytes())
    assert manifest["pid"] == os.getpid()
    assert manifest["batches"][0]["batch_id"]
    capsys.readouterr()
    assert main(["status", run_id, "--db", str(tmp_path / "r.duckdb")]) == 0
    out = capsys.readouterr().out
    assert "state: stopped: batches submitted" in out
    assert f"pipeline resume {run_id}" in out


def log_events(tmp: Path, run_id: str) -> list[dict[str, Any]]:
    path = tmp / "runs" / f"{run_id}.log.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_run_killed_before_recording_its_batch_id_resumes_without_paying_twice(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None, provider: str
) -> None:
    # The fake makes the batch, then holds the create's answer: the run is killed in between.
    threaded_fake.update_config(batch_create_lost=True, hang_s=60.0)
    job = make_job(tmp_path, provider, 40)
    url = threaded_fake.base_url(provider)
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(job), "--base-url", url, "--quiet"],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while batch_accounting(threaded_fake)["batches_created"].get(provider) != 1:
            assert child.poll() is None, "the run ended before its batch was created"
            assert time.monotonic() < deadline, "the run never created its batch"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
    db = str(tmp_path / "r.duckdb")
    with duckdb.connect(db, read_only=True) as con:
        recorded = con.execute("SELECT run_id, part, batch_id, requests FROM batches").fetchall()
    [(run_id, part, batch_id, requests)] = recorded
    assert (part, batch_id, requests) == (1, None, 40)  # the part is recorded, its batch id not

    threaded_fake.update_config(batch_create_lost=False)
    assert main(["resume", run_id, "--db", db, "--base-url", url, "--quiet"]) == 0
    rows = results(tmp_path)
    assert len(rows) == 40
    assert len({r["request_key"] for r in rows}) == 40
    assert {r["status"] for r in rows} == {"ok"}
    assert batch_accounting(threaded_fake)["batches_created"].get(provider) == 1
    assert threaded_fake.accounting()["duplicates_paid"] == 0
    with duckdb.connect(db, read_only=True) as con:
        [(batch_id,)] = con.execute("SELECT batch_id FROM batches").fetchall()
    found = [e for e in log_events(tmp_path, run_id) if e["event"] == "batch_found"]
    assert [(e["part"], e["batch_id"]) for e in found] == [(1, batch_id)]
    assert not [e for e in log_events(tmp_path, run_id) if e["event"] == "batch_submitted"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_create_whose_answer_is_lost_is_paid_for_once(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None, provider: str
) -> None:
    threaded_fake.update_config(batch_create_lost=True, hang_s=0.0)  # dropped once made
    job = make_job(tmp_path, provider, 30)
    url = threaded_fake.base_url(provider)
    # OpenAI's submit finds the batch over its own input file within the same call; for
    # Anthropic the run waits, then asks the provider for the batch before sending it again.
    code = main(["run", str(job), "--base-url", url, "--quiet"])
    threaded_fake.update_config(batch_create_lost=False)
    assert code == 0
    rows = results(tmp_path)
    assert len(rows) == 30 and {r["status"] for r in rows} == {"ok"}
    assert batch_accounting(threaded_fake)["batches_created"].get(provider) == 1
    assert threaded_fake.accounting()["duplicates_paid"] == 0
    assert run_state(tmp_path) == "completed"
