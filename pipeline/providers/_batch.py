"""The batch side of a provider: submit many requests at once, poll, collect (half price).

A batch job goes: rows → one serialized line per request (``BatchProvider.line``) → part files
no larger than the provider's limits (``pipeline.execution.parts``) → ``submit`` each part →
``poll`` until it has ended → ``results`` yields one ``BatchLine`` per request, joined back to its
row by ``custom_id`` (the row's request key). The runner commits what ``submit`` returns before
it waits, so a run killed while waiting polls the same batches again instead of paying twice.

A part is recorded before it is submitted, so a part recorded without a batch id is one whose
create was never sent, or was sent and its answer lost (a kill, a timeout, a dropped
connection). Before submitting such a part again the runner asks ``find_submitted`` whether the
provider already holds its batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

from ..records import Reply, Request

__all__ = [
    "CLOCK_SLACK_S",
    "BatchLine",
    "BatchPart",
    "BatchProvider",
    "BatchState",
    "LineError",
    "Submitted",
]


# How far the provider's clock may be from ours when ``find_submitted`` compares a batch's
# ``created_at`` (the provider's clock) with the time a part was recorded (ours). Synced clocks
# differ by far less than a second; five minutes (the skew Kerberos tolerates by default) also
# covers a drifting or resumed VM, and OpenAI's whole-second ``created_at``. Too small a slack
# misses our own batch and pays for the part twice; a larger one only lets older batches be
# looked at, which the matching rules then rule out (OpenAI: by metadata; Anthropic: by request
# count, and by request keys once a batch has ended).
CLOCK_SLACK_S: Final = 300.0


@dataclass(frozen=True, slots=True)
class BatchPart:
    """One prepared input file: ``count`` request lines, ``bytes`` bytes on disk at ``path``.

    For OpenAI the file is the JSONL to upload; for Anthropic it holds one ``{"custom_id",
    "params"}`` JSON object per line, which ``submit`` streams as the ``requests`` array.
    ``first_key`` and ``last_key`` are the request keys (custom_ids) of its first and last line
    ("" when unknown): ``find_submitted`` recognises the part's batch by them.
    """

    index: int
    path: Path
    count: int
    bytes: int
    first_key: str = ""
    last_key: str = ""


@dataclass(frozen=True, slots=True)
class Submitted:
    """What a provider gave back for a part: commit it before waiting."""

    batch_id: str
    input_file_id: str | None = None


@dataclass(frozen=True, slots=True)
class LineError:
    """A validation error the provider reported for one input line (1-based)."""

    line: int | None
    code: str | None
    message: str


@dataclass(frozen=True, slots=True)
class BatchState:
    """A batch's state, normalised across providers.

    ``status`` is the provider's own word (OpenAI: validating, in_progress, finalizing,
    completed, failed, expired, cancelling, cancelled; Anthropic: in_progress, canceling,
    ended). ``ended`` is True once no further line will be answered, whatever the reason:
    results (possibly partial) can then be collected. ``failed`` is True when the batch was
    rejected as a whole (OpenAI validation failure): ``errors`` says why, line by line.
    """

    batch_id: str
    status: str
    ended: bool
    failed: bool = False
    total: int = 0
    succeeded: int = 0
    errored: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: tuple[LineError, ...] = ()
    raw_counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BatchLine:
    """The outcome of one request of a batch. ``reply`` is set when it succeeded; otherwise
    ``error_type`` is e.g. ``expired``, ``canceled``, ``invalid_request``, ``server_error``
    and ``error`` the provider's message."""

    custom_id: str
    reply: Reply | None = None
    error_type: str | None = None
    error: str | None = None


class BatchProvider(Protocol):
    """Provider batch endpoints. Errors are ``ProviderError`` subclasses, as online."""

    name: str
    max_requests: int  # per batch, as the provider allows (or lower, when configured)
    max_bytes: int

    def line(self, request: Request) -> bytes:
        """One request as a line of a part file (no trailing newline); custom_id = key."""
        ...

    async def submit(self, part: BatchPart, *, metadata: Mapping[str, str]) -> Submitted: ...

    async def find_submitted(
        self,
        part: BatchPart,
        *,
        metadata: Mapping[str, str],
        since: float,
        known: Collection[str],
    ) -> Submitted | None:
        """A batch that an earlier submit of this part may have created though its answer was
        lost, or None.

        ``metadata`` is what a submit of this part sends; ``since`` is unix seconds when the
        part was recorded (no such batch is older, give or take ``CLOCK_SLACK_S``); ``known``
        are batch ids already recorded for other parts (never a match). None means the provider
        was searched and holds no batch of this part: submitting it does not pay twice. A
        failure to search is raised, never answered None: ``TransientError`` when listing (or
        reading a candidate's results) failed in a way worth another attempt, another
        ``ProviderError`` as for any call (a refused key is fatal).
        """
        ...

    async def poll(self, batch_id: str) -> BatchState: ...

    def results(self, state: BatchState) -> AsyncIterator[BatchLine]:
        """Every answered (or failed) request of an ended batch, streamed, in any order."""
        ...

    async def cancel(self, batch_id: str) -> BatchState: ...

    async def aclose(self) -> None: ...
