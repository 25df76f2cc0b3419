"""A run's journal: every outcome, appended the moment it is known, before DuckDB has it.

DuckDB commits results in batches (every 2,048 rows or every second), so a process killed
with ``kill -9`` used to lose the answers it had been paid for but not yet committed, and the next
run paid for them again. The journal closes that gap: ``<db folder>/runs/<run_id>.journal.jsonl``
gets one JSON line per result, written with one ``write(2)`` on a file opened for appending. The
line is in the operating system's hands when the call returns, so it survives the death of the
process (not of the machine: there is no fsync, which would cost a disk flush per row).

The first line names the run and the database. When a run (or a resume, or a rerun) opens the
database, it first replays every journal left next to it for that database: results the
database does not hold yet (same run, request key, source and line) are inserted, then the
journal is removed. A run that finishes normally removes its own journal once everything in it
is committed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

import orjson
import structlog

from ..records import Mode, RowResult, Status

__all__ = ["JOURNAL_SUFFIX", "Journal", "Recovered", "journal_path", "replay_journals"]

log = structlog.get_logger("pipeline.journal")

JOURNAL_SUFFIX = ".journal.jsonl"
_FORMAT = 1
_REPLAY_BATCH = 10_000  # results read and recorded at a time: a big journal is never held whole
_FIELDS = tuple(f.name for f in fields(RowResult))


def journal_path(runs_dir: Path, run_id: str) -> Path:
    return runs_dir / f"{run_id}{JOURNAL_SUFFIX}"


class Journal:
    """An open journal. ``append`` is synchronous and cheap (one encode, one ``write``)."""

    def __init__(self, path: Path, *, run_id: str, db: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size == 0:
            header = {"journal": _FORMAT, "run_id": run_id, "db": db}
            os.write(self._fd, orjson.dumps(header) + b"\n")

    def append(self, result: RowResult) -> None:
        if self._fd is not None:
            os.write(self._fd, orjson.dumps(result) + b"\n")

    def close(self, *, remove: bool = False) -> None:
        """Close it; ``remove``: everything in it is committed, so delete the file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


@dataclass(frozen=True, slots=True)
class Recovered:
    """What one journal gave back: ``inserted`` of its ``results`` were not in the database."""

    run_id: str
    path: Path
    results: int
    inserted: int


def read_journal(path: Path) -> tuple[dict[str, Any], list[RowResult]]:
    """The header and the results of a journal; a line cut short by a crash is skipped."""
    with path.open("rb") as handle:
        header = _header(handle.readline())
        results = [r for batch in _batches(handle, 1 << 62) for r in batch]
    return header, results


def _header(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _batches(handle: IO[bytes], size: int) -> Iterator[list[RowResult]]:
    """The results of the lines left in ``handle``, ``size`` at a time."""
    batch: list[RowResult] = []
    for raw in handle:
        try:
            result = _result(orjson.loads(raw))
        except orjson.JSONDecodeError:
            continue  # the last line, cut short by a crash of the machine
        if result is not None:
            batch.append(result)
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def _result(doc: Any) -> RowResult | None:
    if not isinstance(doc, dict):
        return None
    try:
        values = {name: doc[name] for name in _FIELDS if name in doc}
        values["status"] = Status(values["status"])
        values["mode"] = Mode(values["mode"])
        return RowResult(**values)
    except (KeyError, TypeError, ValueError):
        return None


def replay_journals(
    runs_dir: Path,
    *,
    db: str,
    write_missing: Callable[[Sequence[RowResult]], int],
) -> list[Recovered]:
    """Record what every journal next to ``db`` holds that the database does not, then remove
    the journals (another database's journals in the same folder are left alone, only their
    first line read). ``write_missing`` inserts the results the database lacks (one
    transaction a call, ``_REPLAY_BATCH`` results at most) and returns how many it inserted."""
    recovered = []
    for path in sorted(_journals(runs_dir)):
        with path.open("rb") as handle:
            header = _header(handle.readline())
            if header.get("db") != db:
                continue  # another database's, in the same folder
            results = inserted = 0
            for batch in _batches(handle, _REPLAY_BATCH):
                results += len(batch)
                inserted += write_missing(batch)
        run_id = str(header.get("run_id", path.name.removesuffix(JOURNAL_SUFFIX)))
        recovered.append(Recovered(run_id, path, results, inserted))
        log.info("journal_replayed", run=run_id, results=results, inserted=inserted)
        path.unlink(missing_ok=True)
    return recovered


def _journals(runs_dir: Path) -> Iterator[Path]:
    if runs_dir.is_dir():
        yield from runs_dir.glob(f"*{JOURNAL_SUFFIX}")
