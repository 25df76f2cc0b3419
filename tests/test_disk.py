"""A disk that fills up, and signals at any moment: one line, the run's state recorded, nothing
lost, nothing left half-written; the next run or resume goes on."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import ThreadedFakeProvider

from pipeline.execution.manifest import read_manifest
from pipeline.store import Store

KEY = "sk-test-disk-0123456789abcdef"


def write_job(tmp_path: Path, rows: int, base_url: str) -> Path:
    data = tmp_path / "in.jsonl"
    data.write_bytes(
        b"".join(
            orjson.dumps({"id": i, "text": "word " * 40 + str(i)}) + b"\n" for i in range(rows)
        )
    )
    job = tmp_path / "job.toml"
    job.write_text(
        f"""name = "disk"
[input]
path = "{data}"
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
db = "{tmp_path / "out" / "r.duckdb"}"
"""
    )
    return job


def run_cli(args: list[str], *, file_limit: int | None = None) -> subprocess.CompletedProcess[str]:
    """``pipeline ARGS`` as a process of its own; ``file_limit``: no file it writes may grow
    past that many bytes (the kernel's RLIMIT_FSIZE: a write past it fails as on a full disk)."""

    def limit() -> None:
        if file_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    env = {**os.environ, "OPENAI_API_KEY": KEY}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=limit,
        timeout=180,
    )


def test_a_disk_that_fills_mid_run_ends_it_in_one_line_and_resume_finishes_it(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider
) -> None:
    job = write_job(tmp_path, 6000, threaded_fake.openai_base_url)

    full = run_cli(["run", str(job), "--quiet"], file_limit=1_000_000)

    assert full.returncode == 1, full.stderr
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write"), full.stderr
    assert "Traceback" not in full.stderr + full.stdout
    runs = tmp_path / "out" / "runs"
    (manifest_file,) = runs.glob("*.manifest.json")
    manifest = read_manifest(manifest_file)
    assert manifest.status.startswith("failed: cannot write")
    assert not list(runs.glob("*.tmp")) and not list(runs.glob(".*.tmp"))
    paid = threaded_fake.accounting()["paid_total"]
    assert 0 < paid < 6000

    done = run_cli(["resume", manifest.run_id, "--db", manifest.db, "--quiet"])

    assert done.returncode == 0, done.stderr
    with Store(manifest.db, read_only=True) as store:
        counts = store.query(
            "SELECT count(*) AS n, count(DISTINCT row_id) AS ids FROM results WHERE status = 'ok'"
        )
    assert counts == [{"n": 6000, "ids": 6000}]
    accounting = threaded_fake.accounting()
    # At most what was in flight when it filled, and the answer whose journal line failed.
    assert accounting["duplicates_paid"] <= 16 + 1
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("when", ["start", "end"])
def test_a_signal_outside_the_run_exits_3_in_one_line(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, when: str
) -> None:
    """SIGTERM while the input is read (before anything is sent) or once the run is over
    (closing, printing): exit 3 and one line, never a traceback."""
    job = write_job(tmp_path, 50, threaded_fake.openai_base_url)
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-c", HOOK.format(when=when), "run", str(job), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    if when == "end":
        assert "pipeline resume" in lines[0]


# The CLI with a SIGTERM sent to itself at a chosen moment: while the input is surveyed, or
# while the summary is printed after the run.
HOOK = """
import os, signal, sys
import pipeline.estimates as estimates
import pipeline.cli._run as cli_run
from pipeline.cli import main

when = "{when}"
if when == "start":
    survey = estimates.survey
    def slow_survey(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        import time
        time.sleep(5)
        return survey(*args, **kwargs)
    estimates.survey = slow_survey
else:
    summary = cli_run._print_summary
    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return summary(*args, **kwargs)
    cli_run._print_summary = interrupted
sys.exit(main(sys.argv[1:]))
"""
