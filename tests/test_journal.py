"""The journal and the sink: an answer that came back is never lost with the process."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from pipeline.execution import journal as journal_module
from pipeline.execution.journal import Journal, journal_segments, replay_journals
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


def read_segment(path: Path) -> tuple[dict[str, Any], list[RowResult]]:
    """A journal segment's first line and its results, as another process reads them."""
    header, *lines = path.read_bytes().splitlines()
    return orjson.loads(header), [as_result(orjson.loads(line)) for line in lines]


def as_result(doc: dict[str, Any]) -> RowResult:
    return RowResult(**{**doc, "status": Status(doc["status"]), "mode": Mode(doc["mode"])})


def test_a_journal_line_is_readable_the_moment_append_returns(tmp_path: Path) -> None:
    journal = Journal(tmp_path, run_id="run-1", db="/x/db.duckdb")
    (first,) = results(1)
    journal.append(first)
    assert journal.path is not None
    header, got = read_segment(journal.path)  # another reader, the file still open
    assert header == {"journal": 1, "run_id": "run-1", "db": "/x/db.duckdb"}
    assert got == [first]
    assert got[0].status is Status.OK and got[0].mode is Mode.ONLINE
    journal.close(remove=True)
    assert journal_segments(tmp_path) == []


def test_rotating_closes_a_segment_holding_exactly_what_was_appended_since(tmp_path: Path) -> None:
    journal = Journal(tmp_path, run_id="run-1", db="db")
    first, second = results(3)[:1], results(3)[1:]
    for r in first:
        journal.append(r)
    one = journal.rotate()
    assert journal.rotate() is None  # nothing appended since
    for r in second:
        journal.append(r)
    two = journal.rotate()
    assert one is not None and two is not None and one != two
    assert read_segment(one)[1] == first and read_segment(two)[1] == second
    assert journal_segments(tmp_path, "run-1") == [one, two]
    journal.close()


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
        journal = Journal(Path({str(runs)!r}), run_id="run-1", db={db!r})
        for i, r in enumerate(results(5)):
            journal.append(r)
            if i == 1:
                journal.rotate()  # a commit was under way: two segments are left
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parent, capture_output=True
    )
    assert done.returncode == -signal.SIGKILL
    assert len(journal_segments(runs, "run-1")) == 2
    stored: list[RowResult] = results(2)  # the first two were committed before the kill
    files: list[str] = []

    def write_missing(path: Path) -> int:
        files.append(path.name)
        lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        new = [r for r in map(as_result, lines) if r not in stored]
        stored.extend(new)
        return len(new)

    other = Journal(runs, run_id="run-9", db="/another/db.duckdb")
    other.append(results(1, "run-9")[0])
    other.close()
    (recovered,) = replay_journals(runs, db=db, write_missing=write_missing)
    assert (recovered.run_id, recovered.results, recovered.inserted) == ("run-1", 5, 3)
    # Each segment in turn (a line at a time would do too: a big journal goes in chunks).
    assert files == ["run-1.000001.journal.jsonl.replay", "run-1.000002.journal.jsonl.replay"]
    assert stored == results(5)
    assert journal_segments(runs, "run-1") == []
    assert len(journal_segments(runs, "run-9")) == 1  # another database's journal is left alone


def test_a_journal_of_the_single_file_kind_is_replayed_too(tmp_path: Path) -> None:
    old = tmp_path / "run-1.journal.jsonl"
    header = orjson.dumps({"journal": 1, "run_id": "run-1", "db": "db"})
    old.write_bytes(b"\n".join([header, *(orjson.dumps(r) for r in results(2))]) + b"\n")
    seen: list[bytes] = []

    def write_missing(path: Path) -> int:
        seen.append(path.read_bytes())
        return 2

    (recovered,) = replay_journals(tmp_path, db="db", write_missing=write_missing)
    assert seen == [b"".join(orjson.dumps(r) + b"\n" for r in results(2))]
    assert (recovered.results, recovered.inserted) == (2, 2)
    assert not old.exists()


def test_a_big_journal_is_recorded_a_chunk_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "_REPLAY_LINES", 4)
    journal = Journal(tmp_path, run_id="run-1", db="db")
    for r in results(10):
        journal.append(r)
    journal.close()
    chunks: list[int] = []

    def write_missing(path: Path) -> int:
        chunks.append(len(path.read_bytes().splitlines()))
        return 0

    (recovered,) = replay_journals(tmp_path, db="db", write_missing=write_missing)
    assert chunks == [4, 4, 2] and recovered.results == 10


@pytest.mark.anyio
async def test_the_sink_journals_before_it_commits_and_commits_in_batches(tmp_path: Path) -> None:
    commits: list[list[RowResult]] = []
    journal = Journal(tmp_path, run_id="run-1", db="db")

    def write(segment: Path) -> None:
        # DuckDB reads the closed segment: it holds the batch, and nothing of the next one.
        commits.append(read_segment(segment)[1])

    forgotten: list[RowResult] = []
    stats = RunStats()
    sink = ResultSink(write, stats=stats, journal=journal, on_commit=forgotten.extend, batch=4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sink.run)
        for r in results(10):
            await sink.put(r)
            # In the journal when put returns: in a segment on disk, or in one committed since.
            on_disk = [x for path in journal_segments(tmp_path) for x in read_segment(path)[1]]
            assert r in on_disk + [c for batch in commits for c in batch]
        sink.close()
    # A batch is what was put by the time the writer took it: 4 or more, never past two
    # batches (put waits for the writer then), and the last one the rest.
    assert all(4 <= len(c) <= 8 for c in commits[:-1]) and len(commits) >= 2
    assert [r for c in commits for r in c] == results(10)
    assert forgotten == results(10)
    assert sink.committed_all and stats.rows_committed == 10
    assert (stats.rows_ok, stats.input_tokens, stats.cost_usd) == (10, 100, 5.0)
    journal.close(remove=True)
    assert journal_segments(tmp_path) == []  # each segment went once committed
