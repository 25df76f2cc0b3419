"""Never lose a row, never pay twice: kills, a second `pipeline run`, open batches, repeated ids,
refused batches and providers that cannot be reached, as a user meets them through the CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pytest
from conftest import ThreadedFakeProvider

import pipeline
from pipeline.cli import main
from pipeline.errors import FatalProviderError, UnreachableError
from pipeline.execution.online import Reachability
from pipeline.job import parse_job
from pipeline.store import Store

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}


def write_rows(path: Path, ids: list[str]) -> Path:
    with path.open("wb") as f:
        for n, row_id in enumerate(ids):
            f.write(orjson.dumps({"id": row_id, "text": f"Review {n}: it arrived on time."}))
            f.write(b"\n")
    return path


def make_job(
    tmp: Path, provider: str, ids: list[str], *, extra: str = "", mode: str = "online"
) -> Path:
    data = write_rows(tmp / "rows.jsonl", ids)
    job = tmp / "job.toml"
    job.write_text(
        f"""
name = "twice"
[input]
path = "{data}"
id = "id"
[request]
provider = "{provider}"
model = "{MODELS[provider]}"
prompt = "{{text}}"
max_tokens = 5
mode = "{mode}"
[batch]
poll_interval_s = 0.2
{extra}
[output]
db = "{tmp / "r.duckdb"}"
"""
    )
    return job


def query(tmp: Path, sql: str) -> list[dict[str, Any]]:
    with duckdb.connect(str(tmp / "r.duckdb"), read_only=True) as con:
        cur = con.execute(sql)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def spawn(job: Path, url: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OPENAI_API_KEY": "test-key", "ANTHROPIC_API_KEY": "test-key"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(job), "--base-url", url, "--quiet", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never saw {what}")
        time.sleep(0.02)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


# -- kill -9, then the job again ------------------------------------------------------------------


def test_three_kills_then_run_again_pay_twice_only_for_what_was_in_flight(
    tmp_path: Path,
    threaded_fake: ThreadedFakeProvider,
    env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each answer is journaled before anything else, so kill -9 costs at most the requests in
    flight: 3 kills at 8 in flight pay at most 24 answers twice. Without the journal every
    answer not yet committed (up to a quarter of a second of them, ~100 rows here) is paid
    again by the next run."""
    ids = [f"r{i}" for i in range(600)]
    job = make_job(tmp_path, "openai", ids, extra="")
    text = job.read_text().replace("[batch]", "[limits]\nconcurrency = 8\n[batch]")
    job.write_text(text)
    threaded_fake.update_config(latency_ms=20)
    url = threaded_fake.openai_base_url
    for _ in range(3):
        target = threaded_fake.accounting()["paid_total"] + 120
        child = spawn(job, url)
        try:
            wait_for(lambda t=target: threaded_fake.accounting()["paid_total"] >= t, "answers paid")
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0
    assert "from its journal" in capsys.readouterr().err
    rows = query(tmp_path, "SELECT row_id, status FROM results")
    assert sorted(r["row_id"] for r in rows) == sorted(ids)  # every row once, in one run or another
    assert {r["status"] for r in rows} == {"ok"}
    assert threaded_fake.accounting()["duplicates_paid"] <= 3 * 8
    assert not list((tmp_path / "runs").glob("*.journal.jsonl"))  # replayed, then removed


def test_a_killed_batch_run_then_run_again_collects_its_batch_instead_of_paying_again(
    tmp_path: Path,
    threaded_fake: ThreadedFakeProvider,
    env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    threaded_fake.update_config(batch_in_progress_s=2.0)
    job = make_job(tmp_path, "anthropic", [f"r{i}" for i in range(40)], mode="batch")
    url = threaded_fake.anthropic_base_url
    child = spawn(job, url)
    try:

        def submitted() -> bool:
            for manifest in (tmp_path / "runs").glob("*.manifest.json"):
                batches = orjson.loads(manifest.read_bytes()).get("batches", [])
                if batches and batches[0].get("batch_id"):
                    return True
            return False

        wait_for(submitted, "a submitted batch")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    (first,) = [
        m.name.removesuffix(".manifest.json") for m in (tmp_path / "runs").glob("*.manifest.json")
    ]
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0  # not resume: a new run
    err = capsys.readouterr().err
    assert "40 rows are in batch msgbatch_" in err and f"of run {first}" in err
    assert "collecting it in this run" in err
    rows = query(tmp_path, "SELECT row_id, mode, status FROM results")
    assert len(rows) == 40 and {(r["mode"], r["status"]) for r in rows} == {("batch", "ok")}
    accounting = threaded_fake.call(threaded_fake.provider.batch_accounting)
    assert accounting["batches_created"].get("anthropic") == 1
    assert threaded_fake.accounting()["duplicates_paid"] == 0
    states = {r["run_id"]: r["state"] for r in query(tmp_path, "SELECT run_id, state FROM runs")}
    assert states[first].startswith("stopped: its batches were taken over by run ")


def test_an_online_run_never_resends_rows_in_another_runs_open_batch(
    tmp_path: Path,
    threaded_fake: ThreadedFakeProvider,
    env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    threaded_fake.update_config(batch_in_progress_s=30.0)
    ids = [f"r{i}" for i in range(30)]
    job = make_job(tmp_path, "openai", ids, mode="batch")
    url = threaded_fake.openai_base_url
    assert main(["run", str(job), "--base-url", url, "--quiet", "--no-wait"]) == 3
    more = make_job(tmp_path, "openai", [*ids, "r30", "r31"], mode="batch")
    assert main(["run", str(more), "--mode", "online", "--base-url", url, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "30 rows are in batch batch_" in err and "not sent again" in err
    online = query(tmp_path, "SELECT row_id FROM results WHERE mode = 'online'")
    assert sorted(r["row_id"] for r in online) == ["r30", "r31"]
    assert threaded_fake.accounting()["duplicates_paid"] == 0


# -- repeated ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["online", "batch"])
def test_a_repeated_row_id_is_recorded_once_as_a_duplicate_naming_the_first(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None, mode: str
) -> None:
    job = make_job(tmp_path, "openai", ["a", "b", "a", "c", "b"], mode=mode)
    assert main(["run", str(job), "--base-url", threaded_fake.openai_base_url, "--quiet"]) == 0
    rows = query(
        tmp_path, "SELECT row_id, line, status, error_type, error FROM results ORDER BY line"
    )
    assert [(r["row_id"], r["status"]) for r in rows] == [
        ("a", "ok"),
        ("b", "ok"),
        ("a", "input_error"),
        ("c", "ok"),
        ("b", "input_error"),
    ]
    third = rows[2]
    assert third["error_type"] == "duplicate_id"
    assert "rows.jsonl line 3: the same row id as" in third["error"]
    assert (
        third["error"]
        .split("the same row id as ")[1]
        .startswith(str(tmp_path / "rows.jsonl") + " line 1")
    )
    assert threaded_fake.accounting()["duplicates_paid"] == 0


# -- refused at creation, unreachable -------------------------------------------------------------


def test_a_batch_refused_at_creation_records_its_rows_and_fails_the_run_in_one_line(
    tmp_path: Path,
    threaded_fake: ThreadedFakeProvider,
    env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    threaded_fake.update_config(anthropic_batch_max_requests=10)  # the provider takes 10 a batch
    job = make_job(tmp_path, "anthropic", [f"r{i}" for i in range(25)], mode="batch")
    code = main(["run", str(job), "--base-url", threaded_fake.anthropic_base_url, "--quiet"])
    assert code == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "ExceptionGroup" not in out.err
    (state,) = query(tmp_path, "SELECT state FROM runs")
    assert state["state"].startswith("failed: batch part 1 (25 requests) was refused: anthropic")
    rows = query(tmp_path, "SELECT status, error_type, error FROM results")
    assert len(rows) == 25
    assert {(r["status"], r["error_type"]) for r in rows} == {("failed", "batch_rejected")}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns: nobody listens there


def test_an_unreachable_provider_stops_the_run_at_once_naming_the_url(
    tmp_path: Path, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    port = _closed_port()
    job = make_job(tmp_path, "openai", [f"r{i}" for i in range(50)])
    started = time.monotonic()
    code = main(["run", str(job), "--base-url", f"http://127.0.0.1:{port}/v1", "--quiet"])
    took = time.monotonic() - started
    assert code == 1
    assert took < 20  # seconds, not every row's attempts one after another
    err = capsys.readouterr().err
    assert f"cannot reach the provider at http://127.0.0.1:{port}/v1" in err
    (state,) = query(tmp_path, "SELECT state FROM runs")
    assert state["state"].startswith("failed: cannot reach the provider")
    assert query(tmp_path, "SELECT count(*) AS n FROM results") == [{"n": 0}]  # all left to send


@pytest.mark.anyio
async def test_an_outage_mid_run_pauses_the_run_and_costs_no_row_an_attempt(tmp_path: Path) -> None:
    """The provider answers, then refuses every connection for a while, then answers again:
    the run waits it out (one probe a pause, the pauses growing with the outage); every row
    ends ok with one request sent for it."""
    data = write_rows(tmp_path / "rows.jsonl", [f"r{i}" for i in range(40)])
    job = parse_job(
        f"""
name = "outage"
[input]
path = "{data}"
id = "id"
[request]
provider = "openai"
model = "gpt-4o-mini"
prompt = "{{text}}"
max_tokens = 5
[limits]
concurrency = 4
max_attempts = 2
[output]
db = "{tmp_path / "r.duckdb"}"
"""
    )
    calls = {"n": 0}
    answer = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if 10 < calls["n"] <= 15:  # 5 refused connections: more than 2 attempts a row
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json=answer)

    url = "http://provider.test/v1"
    outcome = await pipeline.arun(
        job, transport=httpx.MockTransport(handler), base_url=url, api_key="k"
    )
    assert outcome.state == "completed"
    assert outcome.stats.rows_ok == 40 and outcome.stats.requests_sent == 40
    assert calls["n"] == 45
    with Store(job.output.db, read_only=True) as store:
        assert store.query("SELECT max(attempts) AS a FROM results") == [{"a": 1}]


# -- Reachability, on a clock of its own -----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def refused() -> UnreachableError:
    return UnreachableError("openai: cannot connect to http://127.0.0.1:9 (refused)")


def test_nothing_ever_answered_for_a_short_window_is_fatal_naming_the_url() -> None:
    clock = Clock()
    reach = Reachability("http://127.0.0.1:9/v1", first_window_s=2.0, clock=clock)
    assert reach.failed(refused()) > 0
    clock.now += 1.0
    assert reach.failed(refused()) > 0  # not long enough yet
    clock.now += 1.5
    with pytest.raises(
        FatalProviderError, match=r"cannot reach the provider at http://127\.0\.0\.1:9/v1"
    ):
        reach.failed(refused())


def test_an_outage_after_answers_pauses_longer_and_longer_then_gives_up_after_the_limit() -> None:
    clock = Clock()
    reach = Reachability("u", outage_limit_s=600, clock=clock)
    reach.answered()
    pauses = []
    for _ in range(5):
        pauses.append(reach.failed(refused()))
        clock.now += 30
    assert pauses == sorted(pauses) and pauses[-1] <= 30
    reach.answered()  # back: the count starts again
    clock.now += 1000
    assert reach.failed(refused()) == pytest.approx(0.25)
    clock.now += 601
    with pytest.raises(FatalProviderError, match="could not be reached for 10 minutes"):
        reach.failed(refused())
