"""Where every row's outcome goes: the run's journal at once, then DuckDB in batches.

::

    put(result) ──▶ journal (one write, at once) ──▶ buffer ──▶ writer task ──▶ DuckDB
                                                                 ≤ 2,048 rows or 1 s,
                                                                  one transaction each

``put`` counts the row in the run's ``RunStats`` and appends it to the journal before anything
else can happen to the process, so an answer that came back is never paid for again (see
``pipeline.execution.journal``). The writer commits in batches, each one transaction, the last
flush shielded from cancellation; ``on_commit`` hears of every committed batch (the planner
forgets its keys then). ``close()`` ends the stream; ``run()`` returns once everything is
committed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio

from ..records import RowResult
from .journal import Journal
from .stats import RunStats

__all__ = ["WRITE_BATCH", "WRITE_INTERVAL_S", "ResultSink"]

# With every answer in the journal first, a bigger batch loses nothing to a kill; it only
# spares DuckDB a transaction (and its CSV read) per 256 rows.
WRITE_BATCH = 2048
WRITE_INTERVAL_S = 1.0
RESULTS_BUFFER = 2048  # room for the workers while the writer commits


class ResultSink:
    """One run's results, on their way to DuckDB. ``write`` commits a batch (blocking: it runs
    in a worker thread)."""

    def __init__(
        self,
        write: Callable[[Sequence[RowResult]], None],
        *,
        stats: RunStats,
        journal: Journal | None = None,
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
        self._send, self._receive = anyio.create_memory_object_stream[RowResult](RESULTS_BUFFER)
        self.committed_all = False  # True once run() has committed everything put

    async def put(self, result: RowResult) -> None:
        """Record one outcome: counted and journaled now, committed soon."""
        self.stats.count(result)
        if self.journal is not None:
            self.journal.append(result)
        try:
            self._send.send_nowait(result)  # no trip through the event loop while there is room
        except anyio.WouldBlock:
            await self._send.send(result)

    def close(self) -> None:
        """No more results: the writer commits what it holds and returns."""
        self._send.close()

    async def run(self) -> None:
        """The writer: commit results in batches until closed. The last flush is shielded."""
        batch: list[RowResult] = []
        async with self._receive:
            while True:
                closed = False
                with anyio.move_on_after(self._interval_s):
                    try:
                        while len(batch) < self._batch:
                            batch.append(await self._receive.receive())
                    except anyio.EndOfStream:
                        closed = True
                if batch:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(self._write, batch)
                    self.stats.rows_committed += len(batch)
                    if self._on_commit is not None:
                        self._on_commit(batch)
                    batch = []
                if closed:
                    self.committed_all = True
                    return
