"""A window of bytes in flight: how much document content is read and encoded at once.

A job that attaches files reads each one when its request body is built, just before sending;
``ByteWindow`` bounds the bytes of all such bodies held at once (requests wait for room), so memory
follows this window, not the number of requests in flight times the size of a document. A request
larger than the whole window goes alone, once the window is empty.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

__all__ = ["ByteWindow"]


class ByteWindow:
    """``capacity`` bytes, held by ``async with window.hold(n)``. A waiter goes as soon as its
    bytes fit (not strictly first come, first served: a small body may pass a large one)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 byte, got {capacity}")
        self.capacity = capacity
        self.held = 0
        self.peak = 0  # the most held at once, for tests and figures
        self._changed = anyio.Condition()

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        """Wait until ``nbytes`` fit (all of the window, for a request larger than it), hold
        them for the block, then give them back."""
        want = min(max(nbytes, 0), self.capacity)
        async with self._changed:
            while self.held + want > self.capacity:
                await self._changed.wait()
            self.held += want
            self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with self._changed:
                    self.held -= want
                    self._changed.notify_all()
