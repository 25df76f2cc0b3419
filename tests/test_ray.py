"""Whole jobs on a local Ray (``[cluster] engine = "ray"``) against the fake provider.

One local Ray (2 CPUs) serves the whole test session (``local_ray`` in conftest.py); the tests
skip, saying why, where Ray is missing or cannot start. What is checked is what a user sees:
the rows of ``results`` (each once, ``mode = 'online'``, the worker named), the run's state, what
the fake provider says it received and charged, and that the provider's key is in no file —
Ray's own logs included. Faults: a worker killed mid-run, the driver killed mid-run and resumed,
Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from conftest import RAY_WORKER_KEY, LocalRay, ThreadedFakeProvider
from test_integration import make_job, make_reviews, query, write_jsonl

import pipeline
from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.execution import RunOutcome
from pipeline.execution.cluster import NAMESPACE
from pipeline.fake import FakeConfig, FakeProvider, running_fake_provider
from pipeline.job import ClusterSpec, Job, parse_job

PROJECT = Path(__file__).resolve().parents[1]


def on_ray(job: Job, workers: int = 2) -> Job:
    return replace(job, cluster=ClusterSpec(engine="ray", workers=workers))


async def run_on_ray(job: Job, fake: FakeProvider, *, run_id: str | None = None) -> RunOutcome:
    """One run of ``job`` on the session's Ray, wired as ``pipeline run --engine ray`` wires
    it; the workers read the key from their own environment."""
    # force: a job with a budget runs until the budget is spent (the workers must keep it).
    return await pipeline.arun(
        job, base_url=fake.openai_base_url, api_key=RAY_WORKER_KEY, run_id=run_id, force=True
    )


def files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                if needle in path.read_bytes():
                    found.append(str(path))
            except OSError:
                continue
    return found


# -- a whole job ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_job_on_two_ray_workers_lands_like_a_local_one(
    tmp_path: Path, local_ray: LocalRay
) -> None:
    rows = make_reviews(600)
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    local = make_job(tmp_path, "openai", inp, db=tmp_path / "local.duckdb", concurrency=16)
    ray_job = on_ray(make_job(tmp_path, "openai", inp, db=tmp_path / "ray.duckdb", concurrency=16))
    async with running_fake_provider(FakeConfig(latency_ms=5)) as fake:
        outcome = await run_on_ray(ray_job, fake)
        accounting = fake.accounting()
    async with running_fake_provider(FakeConfig(latency_ms=5)) as fake:
        from test_integration import run_job

        assert (await run_job(local, fake)).state == "completed"
    assert outcome.state == "completed"
    assert outcome.stats.rows_ok == 600 and outcome.stats.requests_sent == 600
    got = query(ray_job, "SELECT row_id, output_text, mode, worker, cost_usd FROM results")
    want = {r["row_id"]: r["output_text"] for r in query(local, "SELECT * FROM results")}
    assert {r["row_id"]: r["output_text"] for r in got} == want  # each row once, same answer
    assert {r["mode"] for r in got} == {"online"}
    workers = {r["worker"] for r in got}
    assert len(workers) == 2 and all(w.startswith(("ray-0@", "ray-1@")) for w in workers)
    assert all(r["cost_usd"] > 0 for r in got)
    assert accounting["paid_total"] == 600 and accounting["duplicates_paid"] == 0
    # The key the workers used is in no file: not the database, manifest or log, not Ray's logs.
    assert files_holding(tmp_path, RAY_WORKER_KEY) == []
    assert files_holding(Path(local_ray.session_dir), RAY_WORKER_KEY) == []


@pytest.mark.anyio
async def test_a_429_slows_every_worker_and_the_provider_limit_is_shared(
    tmp_path: Path, local_ray: LocalRay
) -> None:
    """The job is configured at twice what the provider allows: the provider's headers cap the
    one budget the workers share, so only a handful of requests are answered 429."""
    inp = write_jsonl(tmp_path / "in.jsonl", make_reviews(500))
    job = on_ray(make_job(tmp_path, "openai", inp, concurrency=16, requests_per_minute=12_000))
    async with running_fake_provider(
        FakeConfig(requests_per_second=100, burst_s=1.0, latency_ms=2)
    ) as fake:
        started = time.monotonic()
        outcome = await run_on_ray(job, fake)
        accounting = fake.accounting()
    assert outcome.state == "completed" and outcome.stats.rows_ok == 500
    limited = accounting["by_status"].get("429", 0)
    assert limited <= 0.05 * accounting["requests"], accounting["by_status"]
    assert time.monotonic() - started >= 4.0 - 1.0  # 500 rows at 100/s after a 100-row burst


@pytest.mark.anyio
async def test_a_budget_is_kept_across_workers(tmp_path: Path, local_ray: LocalRay) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", make_reviews(400))
    job = on_ray(make_job(tmp_path, "openai", inp, concurrency=8, budget_usd=0.002))
    async with running_fake_provider(FakeConfig(latency_ms=5)) as fake:
        outcome = await run_on_ray(job, fake)
    spent = query(job, "SELECT sum(cost_usd) AS usd, count(*) AS n FROM results")[0]
    assert outcome.status == "stopped: budget"
    assert 0 < spent["n"] < 400
    assert spent["usd"] <= 0.002


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_worker_killed_mid_run_is_replaced_and_nothing_is_lost(
    tmp_path: Path, local_ray: LocalRay
) -> None:
    import ray

    inp = write_jsonl(tmp_path / "in.jsonl", make_reviews(1_500))
    job = on_ray(make_job(tmp_path, "openai", inp, concurrency=32))
    run_id = "ray-kill-test"
    outcome: list[RunOutcome] = []
    async with running_fake_provider(FakeConfig(latency_ms=40)) as fake:

        async def run() -> None:
            outcome.append(await run_on_ray(job, fake, run_id=run_id))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            with anyio.fail_after(60):  # until 400 answers are paid: then kill worker 0
                while True:
                    if fake.accounting()["paid_total"] >= 400:
                        break
                    await anyio.sleep(0.02)
            worker = ray.get_actor(f"{run_id}-worker-0.0", namespace=NAMESPACE)
            os.kill(await worker.pid.remote(), signal.SIGKILL)
        accounting = fake.accounting()
    assert outcome[0].state == "completed"
    rows = query(job, "SELECT count(*) AS n, count(DISTINCT row_id) AS ids FROM results")[0]
    assert rows == {"n": 1_500, "ids": 1_500}
    assert query(job, "SELECT count(*) AS n FROM results WHERE status <> 'ok'")[0]["n"] == 0
    # Paid twice at most: what the dead worker had in flight (16) and had not shipped yet.
    assert accounting["duplicates_paid"] <= 16 + 256, accounting["duplicates_paid"]


def _pipeline(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=PROJECT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _job_file(tmp_path: Path, rows: int, base_url: str) -> Path:
    inp = write_jsonl(tmp_path / "in.jsonl", make_reviews(rows))
    path = tmp_path / "job.toml"
    path.write_text(
        f"""name = "ray-cli"
[input]
path = "{inp}"
id = "id"
[request]
provider = "openai"
model = "gpt-4o-mini"
prompt = "Review: {{text}}"
max_tokens = 5
base_url = "{base_url}"
[limits]
concurrency = 16
[output]
db = "{tmp_path / "results.duckdb"}"
[cluster]
engine = "ray"
workers = 2
"""
    )
    return path


def _named_actors(run_id: str) -> list[str]:
    import ray

    names = ray.util.list_named_actors(all_namespaces=True)
    return [a["name"] for a in names if a["name"].startswith(run_id)]


@pytest.mark.parametrize("how", ["ctrl-c", "kill -9"])
def test_a_stopped_or_killed_driver_leaves_no_workers_and_resume_finishes(
    tmp_path: Path,
    local_ray: LocalRay,
    threaded_fake: ThreadedFakeProvider,
    how: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``pipeline run --engine ray`` in a process of its own, joining the session's Ray; it is
    interrupted (Ctrl-C: stopped, exit 3) or killed (kill -9) mid-run; no worker of it is left,
    and ``pipeline resume`` on Ray finishes it with every row done once."""
    threaded_fake.update_config(latency_ms=30)
    job = _job_file(tmp_path, 1_500, threaded_fake.openai_base_url)
    run_id = f"ray-{how.replace(' ', '').replace('-', '')}"
    env = {"OPENAI_API_KEY": RAY_WORKER_KEY}
    proc = _pipeline(
        "run", str(job), "--run-id", run_id, "--quiet", "--address", local_ray.gcs_address, env=env
    )
    deadline = time.monotonic() + 60
    while threaded_fake.accounting()["paid_total"] < 300:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    if how == "ctrl-c":
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode == 3, out
        assert "stopped: signal" in out and f"pipeline resume {run_id}" in out
    else:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    while _named_actors(run_id):  # Ray ends the actors of a driver that stopped or died
        assert time.monotonic() < deadline, _named_actors(run_id)
        time.sleep(0.2)
    db = tmp_path / "results.duckdb"
    monkeypatch.setenv("OPENAI_API_KEY", RAY_WORKER_KEY)
    assert main(["resume", run_id, "--db", str(db), "--quiet", "--engine", "ray"]) == 0
    rows = query(db, "SELECT count(*) AS n, count(DISTINCT row_id) AS ids FROM results")[0]
    assert rows == {"n": 1_500, "ids": 1_500}
    assert query(db, "SELECT count(*) AS n FROM results WHERE status <> 'ok'")[0]["n"] == 0
    assert threaded_fake.accounting()["duplicates_paid"] <= 16 + 2 * 256


# -- the job file and the command line -----------------------------------------------------------


def test_cluster_keys_are_checked_once_with_the_fix() -> None:
    base = """name = "j"
[input]
path = "in.jsonl"
[request]
provider = "openai"
model = "gpt-4o-mini"
prompt = "{text}"
[limits]
concurrency = 4
"""
    assert parse_job(base).cluster == ClusterSpec()
    job = parse_job(base + '[cluster]\nengine = "ray"\naddress = "auto"\nworkers = 4\n')
    assert job.cluster == ClusterSpec(engine="ray", address="auto", workers=4)
    with pytest.raises(ConfigError, match=r"\[cluster.workers\] 5 workers cannot share"):
        parse_job(base + '[cluster]\nengine = "ray"\nworkers = 5\n')
    with pytest.raises(ConfigError, match=r"\[cluster.engine\] 'spark' is not one of"):
        parse_job(base + '[cluster]\nengine = "spark"\n')
    with pytest.raises(ConfigError, match=r"\[cluster.engine\] \[request.fallback\] is not"):
        parse_job(
            base.replace("[limits]", '[request.fallback]\nmodel = "gpt-4o"\n[limits]')
            + '[cluster]\nengine = "ray"\n'
        )
    assert job.with_overrides(engine="local").cluster.engine == "local"
    assert parse_job(base).with_overrides(engine="ray", workers=2).cluster.workers == 2


def test_a_job_without_cluster_never_imports_ray(tmp_path: Path) -> None:
    inp = write_jsonl(tmp_path / "in.jsonl", make_reviews(5))
    job = tmp_path / "job.toml"
    job.write_text(
        f'name = "j"\n[input]\npath = "{inp}"\nid = "id"\n[request]\nprovider = "openai"\n'
        f'model = "gpt-4o-mini"\nprompt = "{{text}}"\n[output]\ndb = "{tmp_path / "r.duckdb"}"\n'
    )
    code = (
        "import sys; from pipeline.cli import main; "
        f"rc = main(['run', {str(job)!r}, '--fake', '--quiet']); "
        "print('RAY' if 'ray' in sys.modules else 'NO-RAY', rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip().splitlines()[-1] == "NO-RAY 0", out.stdout + out.stderr
