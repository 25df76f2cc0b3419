"""The journal and the sink: an answer that came back is never lost with the process."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from pipeline.execution.journal import Journal, journal_path, read_journal, replay_journals
from pipeline.execution.sink import ResultSink
from pipeline.execution.stats import RunStats
from pipeline.records import Mode, Reply, ResultBuilder, RowResult, Status, Usage

ROOT = Path(__file__).resolve().parents[1]


def results(n: int, run_id: str = "run-1") -> list[RowResult]:
    build = ResultBuilder(
        job="j", run_id=run_id, prompt_hash="ph", provider="openai", model="m", clock=lambda: 7.0
    )
    reply = Reply(text="positive", finish_reason="stop", usage=Usage(10, 1))
    return [
        build.answered(
            f"k{i}",
            f"r{i}",
            "in.jsonl",
            i,
            reply,
            attempts=1,
            usage=reply.usage,
            cost=0.5,
            latency_ms=3.0,
        )
        for i in range(1, n + 1)
    ]


def test_a_journal_line_is_readable_the_moment_append_returns(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "r.journal.jsonl", run_id="run-1", db="/x/db.duckdb")
    (first,) = results(1)
    journal.append(first)
    header, got = read_journal(journal.path)  # another reader, the file still open
    assert header == {"journal": 1, "run_id": "run-1", "db": "/x/db.duckdb"}
    assert got == [first]
    assert got[0].status is Status.OK and got[0].mode is Mode.ONLINE
    journal.close(remove=True)
    assert not journal.path.exists()


def test_what_a_killed_process_journaled_is_replayed_once_and_the_journal_removed(
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    db = str(tmp_path / "results.duckdb")
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from pipeline.execution.journal import Journal
        from test_journal import results
        journal = Journal(Path({str(runs)!r}) / "run-1.journal.jsonl", run_id="run-1", db={db!r})
        for r in results(5):
            journal.append(r)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parent, capture_output=True
    )
    assert done.returncode == -signal.SIGKILL
    stored: list[RowResult] = results(2)  # the first two were committed before the kill

    def write_missing(batch: Sequence[RowResult]) -> int:
        new = [r for r in batch if r not in stored]
        stored.extend(new)
        return len(new)

    other = Journal(runs / "run-9.journal.jsonl", run_id="run-9", db="/another/db.duckdb")
    other.append(results(1, "run-9")[0])
    other.close()
    (recovered,) = replay_journals(runs, db=db, write_missing=write_missing)
    assert (recovered.run_id, recovered.results, recovered.inserted) == ("run-1", 5, 3)
    assert stored == results(5)
    assert not journal_path(runs, "run-1").exists()
    assert journal_path(runs, "run-9").exists()  # another database's journal is left alone


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "r.journal.jsonl", run_id="run-1", db="db")
    for r in results(2):
        journal.append(r)
    journal.close()
    with journal.path.open("ab") as handle:
        handle.write(b'{"job": "j", "run_id": "run-1", "row_')
    _, got = read_journal(journal.path)
    assert got == results(2)


@pytest.mark.anyio
async def test_the_sink_journals_before_it_commits_and_commits_in_batches(tmp_path: Path) -> None:
    commits: list[list[RowResult]] = []
    journaled_at_commit: list[int] = []
    journal = Journal(tmp_path / "r.journal.jsonl", run_id="run-1", db="db")

    def write(batch: Sequence[RowResult]) -> None:
        journaled_at_commit.append(len(read_journal(journal.path)[1]))
        commits.append(list(batch))

    forgotten: list[RowResult] = []
    stats = RunStats()
    sink = ResultSink(write, stats=stats, journal=journal, on_commit=forgotten.extend, batch=4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sink.run)
        for r in results(10):
            await sink.put(r)
        sink.close()
    assert [len(c) for c in commits] == [4, 4, 2]
    assert all(
        n >= sum(len(c) for c in commits[: i + 1]) for i, n in enumerate(journaled_at_commit)
    )
    assert forgotten == results(10)
    assert sink.committed_all and stats.rows_committed == 10
    assert (stats.rows_ok, stats.input_tokens, stats.cost_usd) == (10, 100, 5.0)
