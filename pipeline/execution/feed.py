"""Read and plan a job's rows, a chunk at a time, for an executor.

``feed`` (a task) reads the next chunk of rows in a worker thread while the current one is
being planned (rendering, and the store's look-ups, which release the GIL) in another, so that
reading overlaps with planning and with the event loop. What the planner records (input errors)
goes to the sink; what it skips is counted; the requests to send go into the executor's stream,
in input order. The reader never runs more than one chunk ahead of the consumer, so memory does
not grow with the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import anyio
from anyio.abc import ObjectSendStream
from anyio.streams.memory import MemoryObjectSendStream

from ..plan import Planner, Record, Send, Skip, Unrendered, WorkItem
from ..records import BadRow, Request, Row
from ..sources import RowSource
from .sink import ResultSink
from .stats import RunStats

__all__ = ["READ_CHUNK", "feed"]

READ_CHUNK = 1024  # rows read, rendered and looked up at a time (3 chunks are held at once)


async def feed(
    planner: Planner,
    source: RowSource,
    out: MemoryObjectSendStream[Request],
    *,
    sink: ResultSink,
    stats: RunStats,
    stopping: Callable[[], bool] = lambda: False,
    chunk_size: int = READ_CHUNK,
    keys: list[tuple[str, str, int]] | None = None,
) -> None:
    """Send the request of every row to send into ``out``, in input order, then close it;
    stops early once ``stopping()``. ``keys`` gets every row's (request key, source, line)."""
    send_chunks, receive_chunks = anyio.create_memory_object_stream[Sequence[Row | BadRow]](1)
    async with out, anyio.create_task_group() as tg:
        tg.start_soon(_read, source, chunk_size, send_chunks, stopping)
        async with receive_chunks:
            async for chunk in receive_chunks:
                stats.rows_read += len(chunk)
                items: list[WorkItem] = await anyio.to_thread.run_sync(planner.plan, chunk)
                if keys is not None:
                    keys.extend(_where(item) for item in items)
                for item in items:
                    if stopping():
                        break
                    if isinstance(item, Send):
                        if not await _put(out, item.request):
                            # The executor stopped (a fatal error): nothing more to feed.
                            tg.cancel_scope.cancel()
                            return
                    elif isinstance(item, Record):
                        await sink.put(item.result)
                    elif isinstance(item, Skip):
                        stats.rows_skipped += 1
                if stopping():
                    break
        tg.cancel_scope.cancel()


async def _put(out: MemoryObjectSendStream[Request], request: Request) -> bool:
    """Hand ``request`` to the executor (without a trip through the event loop while its
    buffer has room); False once nobody receives any more."""
    try:
        try:
            out.send_nowait(request)
        except anyio.WouldBlock:
            await out.send(request)
    except anyio.BrokenResourceError:
        return False
    return True


def _where(item: WorkItem) -> tuple[str, str, int]:
    if isinstance(item, Send):
        r = item.request
        return r.request_key, r.source, r.line
    if isinstance(item, Record):
        result = item.result
        return result.request_key, result.source, result.line
    if isinstance(item, Unrendered):
        return item.key, item.row.source, item.row.line
    return item.key, item.source, item.line


async def _read(
    source: RowSource,
    chunk_size: int,
    out: ObjectSendStream[Sequence[Row | BadRow]],
    stopping: Callable[[], bool],
) -> None:
    chunks: Iterator[list[Row | BadRow]] = source.chunks(chunk_size)
    async with out:
        while not stopping():
            chunk = await anyio.to_thread.run_sync(next, chunks, None)
            if chunk is None:
                return
            try:
                await out.send(chunk)
            except anyio.BrokenResourceError:
                return  # the planning side has stopped
