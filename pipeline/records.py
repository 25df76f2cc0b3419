"""The records that flow through the pipeline, left to right.

``Row`` / ``BadRow`` (sources) → ``Request`` (render) → ``Reply`` (providers) →
``RowResult`` (store).
All are frozen, slotted dataclasses: cheap to make by the million and safe to share between tasks.

A row's outcome is a ``Status``, the way it went a ``Mode``; a run ends ``completed``,
``stopped: <why>`` or ``failed: <why>`` (``run_state``). ``ResultBuilder`` makes every
``RowResult`` of one run, so that the planner and both executors build them the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

__all__ = [
    "AnswerSchema",
    "Attachment",
    "BadRow",
    "Framing",
    "Mode",
    "RateLimitInfo",
    "Reply",
    "Request",
    "ResultBuilder",
    "Row",
    "RowResult",
    "RunState",
    "Status",
    "Usage",
    "parse_run_state",
    "run_state",
]


class Status(StrEnum):
    """What became of a row (``results.status``)."""

    OK = "ok"
    FAILED = "failed"  # the provider refused it, or its attempts ran out
    INPUT_ERROR = "input_error"  # never sent: unreadable, missing a field, too long, duplicate
    INVALID = "invalid"  # a schema job's answer that did not match the schema


class Mode(StrEnum):
    """How a row was sent (``results.mode``)."""

    ONLINE = "online"
    BATCH = "batch"


class RunState(StrEnum):
    """Where a run stands (``RunOutcome.state``, ``Manifest.state``). A stopped or failed run
    has a reason too; ``run_state`` makes the text the ``runs`` table and manifests hold."""

    RUNNING = "running"
    COMPLETED = "completed"  # every row has an outcome (some may have failed)
    STOPPED = "stopped"  # a signal, the budget, batches left open: ``pipeline resume`` goes on
    FAILED = "failed"  # a bad key, no quota, an unreachable provider, a refused batch, a crash


def run_state(state: RunState | str, why: str | None = None) -> str:
    """``completed``, ``running``, ``stopped: <why>`` or ``failed: <why>``: a run's state as
    stored."""
    state = RunState(state)
    if state in (RunState.COMPLETED, RunState.RUNNING):
        return state.value
    return f"{state.value}: {why or 'unknown'}"


def parse_run_state(text: str) -> tuple[RunState, str | None]:
    """The state and reason of a stored state text (``run_state``'s inverse)."""
    head, sep, why = text.partition(": ")
    try:
        state = RunState(head)
    except ValueError:
        return RunState.FAILED, text
    return state, (why if sep else None)


@dataclass(frozen=True, slots=True)
class Row:
    """One input row. ``line`` is the 1-based line (JSONL) or row number (Parquet) in ``source``."""

    row_id: str
    fields: Mapping[str, Any]
    source: str
    line: int


@dataclass(frozen=True, slots=True)
class BadRow:
    """An input row that could not be read; it becomes that row's recorded error."""

    row_id: str
    source: str
    line: int
    error: str
    error_type: str


@dataclass(frozen=True, slots=True)
class AnswerSchema:
    """The JSON Schema an answer must match (``[request].schema``), as providers are told it.

    ``enforce``: OpenAI gets it as a ``json_schema`` response format (``strict`` when the schema
    qualifies for OpenAI's strict mode) and Anthropic as the input schema of one tool it must
    call; otherwise (``json`` mode) the system prompt asks for JSON and OpenAI gets
    ``{"type": "json_object"}``. ``name`` is OpenAI's ``json_schema.name``.
    """

    schema: Mapping[str, Any]
    name: str
    enforce: bool = True
    strict: bool = False
    description: str = ""


@dataclass(frozen=True, slots=True)
class Framing:
    """What every request of a job shares around its row, made once per job by the renderer.

    ``examples``: few-shot (user, assistant) turns sent before the row. ``answer``: the schema
    the answer must match. ``cache_system`` / ``cache_examples``: put Anthropic's
    ``cache_control`` breakpoint on the system prompt / the last example (the renderer decides,
    from the prefix's length and the model's minimum). A plain text job has no framing at all.
    """

    examples: tuple[tuple[str, str], ...] = ()
    answer: AnswerSchema | None = None
    cache_system: bool = False
    cache_examples: bool = False


@dataclass(frozen=True, slots=True)
class Attachment:
    """A document or image sent with a row's prompt (``[request] attachments``), by reference.

    Only what the file's headers say is kept here (kind, media type, size, pixel size or pages,
    the token estimate); the bytes are read, checked against ``sha256`` and base64-encoded when
    the request body is built for sending (``pipeline.documents.read_base64``), so a window of
    planned requests holds no file content. ``url``: an http(s) URL passed to the provider as a
    URL source, never downloaded (its size, pixels and pages are unknown: 0).
    """

    kind: Literal["image", "pdf"]
    location: str  # a file path (as the row gave it) or an http(s) URL
    media_type: str
    url: bool = False
    size_bytes: int = 0
    width: int = 0
    height: int = 0
    pages: int = 0
    sha256: str = ""
    tokens: int = 0  # estimated prompt tokens for the request's provider and model
    detail: str | None = None  # OpenAI's image detail, when the job sets one

    @property
    def encoded_bytes(self) -> int:
        """Bytes of the base64 text this attachment becomes in a request body."""
        return 0 if self.url else (self.size_bytes + 2) // 3 * 4


@dataclass(frozen=True, slots=True)
class Request:
    """A provider-neutral request for one row.

    ``prompt_hash`` identifies the request *version* (template, system prompt, model,
    parameters); ``request_key`` identifies this row under this version and is what makes a
    rerun skip work already paid for.

    ``framing`` is the job's shared examples, answer schema and cache breakpoints (None for a
    plain text job). ``followups`` are (assistant answer, user reply) turns after the row's
    prompt: an invalid answer and what was wrong with it, one pair per follow-up attempt.
    ``attachments`` are the row's documents and images, by reference (``Attachment``).
    """

    row_id: str
    request_key: str
    prompt_hash: str
    provider: str
    model: str
    system: str | None
    prompt: str
    max_tokens: int
    temperature: float | None
    est_input_tokens: int
    source: str = ""
    line: int = 0
    framing: Framing | None = None
    followups: tuple[tuple[str, str], ...] = ()
    attachments: tuple[Attachment, ...] = ()  # sent before the prompt text, in this order

    @property
    def attachment_bytes(self) -> int:
        """Base64 bytes the attachments add to the request body (0 for a text request)."""
        return sum(a.encoded_bytes for a in self.attachments)

    @property
    def est_total_tokens(self) -> int:
        """Worst case a token-per-minute bucket must reserve before sending."""
        return self.est_input_tokens + self.max_tokens


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage, normalised across providers.

    ``input_tokens`` counts *every* prompt token, cached or not (OpenAI's ``prompt_tokens``;
    Anthropic's ``input_tokens + cache_creation_input_tokens + cache_read_input_tokens``).
    ``cache_read_tokens`` and ``cache_write_tokens`` are the parts of it that were read from or
    written to the prompt cache; ``reasoning_tokens`` is the part of ``output_tokens`` spent on
    reasoning.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """What a provider's rate-limit headers said. Durations are seconds from receipt."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A provider's good answer to one request, normalised."""

    text: str
    finish_reason: str | None
    usage: Usage
    status_code: int = 200
    request_id: str | None = None
    rate_limit: RateLimitInfo | None = None


@dataclass(frozen=True, slots=True)
class RowResult:
    """What is written to the store for one row of one run: its final outcome."""

    job: str
    run_id: str
    row_id: str
    request_key: str
    prompt_hash: str
    status: Status
    provider: str
    model: str
    mode: Mode
    output_text: str | None
    finish_reason: str | None
    error_type: str | None
    error: str | None
    attempts: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_usd: float | None
    latency_ms: float | None
    finished_at: float  # unix seconds
    source: str
    line: int
    output_json: str | None = None  # the answer as JSON, when the job has a schema and it is ok
    fallback_from: str | None = None  # the primary model, when [request.fallback] answered
    worker: str | None = None  # the Ray worker that sent it (engine "ray"); None: this process


_NO_USAGE = Usage()


class ResultBuilder:
    """Makes the ``RowResult``\\ s of one run (``job``, ``run_id``, request version, provider,
    model and mode), stamped with ``clock()``. A fallback's builder has the fallback's provider
    and model, the job's request version, and ``fallback_from``: the primary model."""

    __slots__ = (
        "_clock",
        "fallback_from",
        "job",
        "mode",
        "model",
        "prompt_hash",
        "provider",
        "run_id",
    )

    def __init__(
        self,
        *,
        job: str,
        run_id: str,
        prompt_hash: str,
        provider: str,
        model: str,
        mode: Mode = Mode.ONLINE,
        clock: Callable[[], float] = time.time,
        fallback_from: str | None = None,
    ) -> None:
        self.fallback_from = fallback_from
        self.job = job
        self.run_id = run_id
        self.prompt_hash = prompt_hash
        self.provider = provider
        self.model = model
        self.mode = mode
        self._clock = clock

    def input_error(
        self, key: str, row_id: str, source: str, line: int, error_type: str, error: str
    ) -> RowResult:
        """A row that was never sent: no tokens, no cost."""
        return self.unanswered(
            key, row_id, source, line, Status.INPUT_ERROR, error_type, error, attempts=0
        )

    def unanswered(
        self,
        key: str,
        row_id: str,
        source: str,
        line: int,
        status: Status,
        error_type: str,
        error: str,
        *,
        attempts: int,
        usage: Usage = _NO_USAGE,
        cost: float | None = None,
    ) -> RowResult:
        """A row without a good answer; ``usage``/``cost``: answers paid for that were not
        good enough (invalid ones that were followed up)."""
        return RowResult(
            job=self.job,
            run_id=self.run_id,
            row_id=row_id,
            request_key=key,
            prompt_hash=self.prompt_hash,
            status=status,
            provider=self.provider,
            model=self.model,
            mode=self.mode,
            output_text=None,
            finish_reason=None,
            error_type=error_type,
            error=error,
            attempts=attempts,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_usd=cost,
            latency_ms=None,
            finished_at=self._clock(),
            source=source,
            line=line,
            fallback_from=self.fallback_from,
        )

    def answered(
        self,
        key: str,
        row_id: str,
        source: str,
        line: int,
        reply: Reply,
        *,
        attempts: int,
        usage: Usage,
        cost: float | None,
        latency_ms: float | None,
        status: Status = Status.OK,
        error_type: str | None = None,
        error: str | None = None,
        output_json: str | None = None,
    ) -> RowResult:
        """A row the provider answered: ``ok``, or ``invalid`` for a schema job. ``usage`` and
        ``cost`` count every answer paid for the row."""
        return RowResult(
            job=self.job,
            run_id=self.run_id,
            row_id=row_id,
            request_key=key,
            prompt_hash=self.prompt_hash,
            status=status,
            provider=self.provider,
            model=self.model,
            mode=self.mode,
            output_text=reply.text,
            finish_reason=reply.finish_reason,
            error_type=error_type,
            error=error,
            attempts=attempts,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cost_usd=cost,
            latency_ms=latency_ms,
            finished_at=self._clock(),
            source=source,
            line=line,
            output_json=output_json,
            fallback_from=self.fallback_from,
        )
