"""Split request lines into batch input files that respect the provider's limits.

Providers cap a batch by request count *and* by size (OpenAI: 50,000 requests, 200 MB;
Anthropic: 100,000 requests, 256 MB). Splitting by count alone is not enough: long prompts hit
the size cap first. ``PartWriter`` streams lines to disk and starts a new part before either
limit would be passed, so memory stays flat however many rows there are: the rows of a part
(request key, row id, source, line) go to a file of their own beside it as they are written,
which the batch ledger reads when the part is recorded (``PartRows``). (Each request key
comes once: the planner records a second row with the same id as ``duplicate_id``, so no part
holds a ``custom_id`` twice, which would get the whole batch rejected.)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

from ..errors import InputError
from ..providers._batch import BatchPart

__all__ = ["PartRows", "PartWriter", "PendingPart"]

PartRow = tuple[str, str, str, int]  # request key, row id, source, line


@dataclass(frozen=True, slots=True)
class PartRows:
    """The rows of a part, in file order, in a file of their own (one JSON object a line:
    ``request_key``, ``row_id``, ``source``, ``line``, ``ordinal``); iterating reads them."""

    path: Path
    count: int

    def __iter__(self) -> Iterator[PartRow]:
        with self.path.open("rb") as handle:
            for raw in handle:
                row = orjson.loads(raw)
                yield row["request_key"], row["row_id"], row["source"], row["line"]


# Room kept for what wraps the lines ({"requests":[ ... ]} for Anthropic) and separators.
ENVELOPE_BYTES = 64


@dataclass(slots=True)
class PendingPart:
    """The part being written: its file and the rows in it, in file order."""

    index: int
    path: Path
    file: IO[bytes]
    rows_path: Path
    rows: IO[bytes]
    count: int = 0
    bytes: int = 0
    first_key: str = ""
    last_key: str = ""


class PartWriter:
    """Writes request lines into numbered part files, each within ``max_requests`` and
    ``max_bytes``. ``add`` returns the part it just closed, if adding this line closed one."""

    def __init__(
        self, folder: Path, *, max_requests: int, max_bytes: int, first_index: int = 1
    ) -> None:
        if max_requests < 1 or max_bytes <= ENVELOPE_BYTES:
            raise ValueError("max_requests must be ≥ 1 and max_bytes larger than a line")
        self.folder = folder
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._next_index = first_index
        self._part: PendingPart | None = None

    def add(
        self, key: str, row_id: str, source: str, line: int, data: bytes
    ) -> tuple[BatchPart, PartRows] | None:
        """Add one request line. Raises InputError if the line alone exceeds ``max_bytes``."""
        size = len(data) + 1  # newline (or comma, for Anthropic's array)
        if size + ENVELOPE_BYTES > self.max_bytes:
            raise InputError(
                f"{source} line {line} (row {row_id}): the request is {size:,} bytes, more "
                f"than a batch may hold ({self.max_bytes:,}); shorten the row or run it online",
                error_type="request_too_large",
            )
        part = self._part
        closed = None
        if part is not None and (
            part.count + 1 > self.max_requests
            or part.bytes + size + ENVELOPE_BYTES > self.max_bytes
        ):
            closed = self._close()
            part = None
        if part is None:
            part = self._open()
        part.file.write(data + b"\n")
        part.count += 1
        part.bytes += size
        part.rows.write(
            orjson.dumps(
                {
                    "request_key": key,
                    "row_id": row_id,
                    "source": source,
                    "line": line,
                    "ordinal": part.count,
                }
            )
            + b"\n"
        )
        if not part.first_key:
            part.first_key = key
        part.last_key = key
        return closed

    def close(self) -> tuple[BatchPart, PartRows] | None:
        """Close the part being written, if any."""
        return self._close() if self._part is not None else None

    def _open(self) -> PendingPart:
        self.folder.mkdir(parents=True, exist_ok=True)
        index = self._next_index
        self._next_index += 1
        path = self.folder / f"part-{index:04d}.jsonl"
        rows_path = self.folder / f"part-{index:04d}.rows.jsonl"
        self._part = PendingPart(index, path, path.open("wb"), rows_path, rows_path.open("wb"))
        return self._part

    def _close(self) -> tuple[BatchPart, PartRows]:
        part = self._part
        assert part is not None
        part.file.close()
        part.rows.close()
        self._part = None
        batch_part = BatchPart(
            part.index, part.path, part.count, part.bytes, part.first_key, part.last_key
        )
        return batch_part, PartRows(part.rows_path, part.count)
