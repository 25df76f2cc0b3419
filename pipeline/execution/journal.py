"""A run's journal: every outcome, appended the moment it is known, and what DuckDB reads.

Each result is encoded once, as one JSON line, and those bytes are both the crash insurance and
what the database inserts:

::

    put(result) ──▶ orjson line ──▶ open segment  <run_id>.<n>.journal.jsonl   (one write(2))
                                        │ rotate(): at each commit the segment is closed ...
                                        ▼
                   closed segment ──▶ DuckDB reads the file ──▶ row_results (one transaction)
                                        │ ... and deleted once committed

A line is in the operating system's hands when ``append`` returns, so it survives the death of
the process (not of the machine: there is no fsync, which would cost a disk flush per row).
The sink rotates the journal when it commits a batch: the segment it closes holds exactly the
results of that batch, DuckDB inserts them straight from the file, and the file is removed.

The first line of every segment names the run and the database. When a run (or a resume, or a
rerun) opens the database, it first replays every segment left next to it for that database,
oldest first: results the database does not hold yet (same run, request key, source and line)
are inserted, then the segment is removed. A line cut short by a crash of the machine is
skipped. A journal of the older, single-file kind (``<run_id>.journal.jsonl``) is replayed the
same way.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import structlog

from ..records import RowResult

__all__ = [
    "JOURNAL_SUFFIX",
    "Journal",
    "Recovered",
    "journal_segments",
    "replay_journals",
]

log = structlog.get_logger("pipeline.journal")

JOURNAL_SUFFIX = ".journal.jsonl"
_FORMAT = 1
_SEGMENT = re.compile(r"\.(\d+)" + re.escape(JOURNAL_SUFFIX) + "$")


def journal_segments(runs_dir: Path, run_id: str | None = None) -> list[Path]:
    """The journal files in ``runs_dir`` (of ``run_id`` only, if given), oldest first."""
    if not runs_dir.is_dir():
        return []
    pattern = f"{run_id}.*{JOURNAL_SUFFIX}" if run_id else f"*{JOURNAL_SUFFIX}"
    found = list(runs_dir.glob(pattern))
    if run_id:
        found += [p for p in [runs_dir / f"{run_id}{JOURNAL_SUFFIX}"] if p.exists()]
    return sorted(set(found), key=_order)


def _order(path: Path) -> tuple[str, int]:
    match = _SEGMENT.search(path.name)
    if match is None:  # the older single-file journal: before any segment of its run
        return (path.name.removesuffix(JOURNAL_SUFFIX), -1)
    return (path.name[: match.start()], int(match.group(1)))


class Journal:
    """A run's open journal, written in segments. ``append`` is synchronous and cheap (one
    encode, one ``write``); ``rotate`` closes the segment being written and returns its path
    (None when nothing was appended since the last rotation); ``close`` ends it."""

    def __init__(self, runs_dir: Path, *, run_id: str, db: str) -> None:
        runs_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir = runs_dir
        self.run_id = run_id
        self.db = db
        self._header = orjson.dumps({"journal": _FORMAT, "run_id": run_id, "db": db}) + b"\n"
        existing = [_order(p)[1] for p in journal_segments(runs_dir, run_id)]
        self._number = max(existing, default=0)
        self._fd: int | None = None
        self.path: Path | None = None  # the segment being written, if any
        self._closed = False

    def append(self, result: RowResult) -> None:
        fd = self._fd
        if fd is None:
            if self._closed:
                return
            fd = self._open()
        os.write(fd, orjson.dumps(result) + b"\n")

    def _open(self) -> int:
        self._number += 1
        self.path = self.runs_dir / f"{self.run_id}.{self._number:06d}{JOURNAL_SUFFIX}"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, self._header)
        self._fd = fd
        return fd

    def rotate(self) -> Path | None:
        """Close the segment being written: everything appended since the last rotation is in
        the file returned. The next ``append`` starts a new segment."""
        fd, self._fd = self._fd, None
        if fd is None:
            return None
        os.close(fd)
        path, self.path = self.path, None
        return path

    def close(self, *, remove: bool = False) -> None:
        """Close it; ``remove``: everything appended is committed, so delete the segment being
        written (closed segments are deleted by whoever committed them)."""
        self._closed = True
        path = self.rotate()
        if remove and path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@dataclass(frozen=True, slots=True)
class Recovered:
    """What one run's journal gave back: ``inserted`` of its ``results`` were not in the
    database."""

    run_id: str
    path: Path
    results: int
    inserted: int


def _header(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) and "journal" in doc else {}


_REPLAY_LINES = 2048  # lines of a journal recorded at a time: a big one is never read whole


def _chunks(handle: IO[bytes], scratch: Path) -> Iterator[tuple[Path, int]]:
    """The lines left in ``handle`` copied into ``scratch``, ``_REPLAY_LINES`` at a time:
    (the file, its lines) for each chunk."""
    while True:
        lines = list(itertools.islice(handle, _REPLAY_LINES))
        if not lines:
            return
        scratch.write_bytes(b"".join(lines))
        yield scratch, sum(1 for line in lines if line.endswith(b"\n"))


def replay_journals(
    runs_dir: Path,
    *,
    db: str,
    write_missing: Callable[[Path], int],
) -> list[Recovered]:
    """Record what every journal next to ``db`` holds that the database does not, then remove
    the journal files (another database's journals in the same folder are left alone, only
    their first line read). ``write_missing(path)`` inserts, in one transaction, the results
    of a file of result lines that the database lacks and returns how many it inserted; it is
    given a journal ``_REPLAY_LINES`` lines at a time. One ``Recovered`` per run."""
    recovered: dict[str, Recovered] = {}
    for path in journal_segments(runs_dir):
        with path.open("rb") as handle:
            header = _header(handle.readline())
            if header.get("db") != db:
                continue  # another database's, in the same folder
            results = inserted = 0
            scratch = path.with_name(path.name + ".replay")
            try:
                for chunk, lines in _chunks(handle, scratch):
                    results += lines
                    inserted += write_missing(chunk)
            finally:
                scratch.unlink(missing_ok=True)
        run_id = str(header.get("run_id", _order(path)[0]))
        before = recovered.get(run_id)
        if before is not None:
            results, inserted = results + before.results, inserted + before.inserted
        recovered[run_id] = Recovered(run_id, path, results, inserted)
        path.unlink(missing_ok=True)
    for r in recovered.values():
        log.info("journal_replayed", run=r.run_id, results=r.results, inserted=r.inserted)
    return list(recovered.values())
