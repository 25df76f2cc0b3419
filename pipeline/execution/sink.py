"""Where every row's outcome goes: the run's journal at once, then DuckDB in batches.

::

    put(result) ──▶ journal segment (one write, at once) ──▶ the writer, ≤ 2,048 rows or 1 s:
                    + the batch in memory                      rotate the journal, DuckDB reads
                                                               the closed segment (one
                                                               transaction), the file goes

``put`` counts the row in the run's ``RunStats`` and appends it to the journal before anything
else can happen to the process, so an answer that came back is never paid for again (see
``pipeline.execution.journal``). The journal line is the only encoding a result gets: the writer
closes the segment that holds the batch and has the database insert it from the file. Each
batch is one transaction, the last flush shielded from cancellation; ``on_commit`` hears of
every committed batch (the planner forgets its keys then). ``put`` waits only when the writer
is a whole batch behind. ``close()`` ends the stream; ``run()`` returns once everything is
committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import anyio

from ..records import RowResult
from .journal import Journal
from .stats import RunStats

__all__ = ["WRITE_BATCH", "WRITE_INTERVAL_S", "Outcomes", "ResultSink"]

# With every answer in the journal first, a bigger batch loses nothing to a kill; it only
# spares DuckDB a transaction per 256 rows.
WRITE_BATCH = 2048
WRITE_INTERVAL_S = 1.0


class Outcomes(Protocol):
    """Where an executor puts each row's outcome: a ``ResultSink``, or a Ray worker's outbox."""

    async def put(self, result: RowResult) -> None: ...


class ResultSink:
    """One run's results, on their way to DuckDB. ``write(path)`` inserts the results of one
    closed journal segment in one transaction (blocking: it runs in a worker thread)."""

    def __init__(
        self,
        write: Callable[[Path], object],
        *,
        stats: RunStats,
        journal: Journal,
        on_commit: Callable[[Sequence[RowResult]], None] | None = None,
        batch: int = WRITE_BATCH,
        interval_s: float = WRITE_INTERVAL_S,
    ) -> None:
        self._write = write
        self.stats = stats
        self.journal = journal
        self._on_commit = on_commit
        self._batch = batch
        self._interval_s = interval_s
        self._pending: list[RowResult] = []  # journaled, not committed: the open segment's
        self._due = anyio.Event()  # a batch is full, or the sink is closed
        self._room = anyio.Event()  # the writer took a batch
        self._closed = False
        self.committed_all = False  # True once run() has committed everything put

    async def put(self, result: RowResult) -> None:
        """Record one outcome: counted and journaled now, committed soon."""
        self.stats.count(result)
        self.journal.append(result)
        pending = self._pending
        pending.append(result)
        if len(pending) >= self._batch:
            self._due.set()
            # Room for a second batch while the writer commits one; past that, wait for it.
            while len(self._pending) >= 2 * self._batch:
                await self._room.wait()

    def close(self) -> None:
        """No more results: the writer commits what it holds and returns."""
        self._closed = True
        self._due.set()

    async def run(self) -> None:
        """The writer: commit results in batches until closed. The last flush is shielded."""
        while True:
            with anyio.move_on_after(self._interval_s):
                await self._due.wait()
            self._due = anyio.Event()
            closed = self._closed
            batch, self._pending = self._pending, []
            room, self._room = self._room, anyio.Event()
            room.set()
            if batch:
                segment = self.journal.rotate()  # it holds exactly `batch`
                assert segment is not None
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._write, segment)
                segment.unlink(missing_ok=True)
                self.stats.rows_committed += len(batch)
                if self._on_commit is not None:
                    self._on_commit(batch)
            if closed and not self._pending:
                self.committed_all = True
                return
