"""The records that flow through the pipeline, left to right.

``Row`` / ``BadRow`` (sources) → ``Request`` (render) → ``Reply`` (providers) →
``RowResult`` (store).
All are frozen, slotted dataclasses: cheap to make by the million and safe to share between tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AnswerSchema",
    "BadRow",
    "Framing",
    "RateLimitInfo",
    "Reply",
    "Request",
    "Row",
    "RowResult",
    "Usage",
]


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
class Request:
    """A provider-neutral request for one row.

    ``prompt_hash`` identifies the request *version* (template, system prompt, model,
    parameters); ``request_key`` identifies this row under this version and is what makes a
    rerun skip work already paid for.

    ``framing`` is the job's shared examples, answer schema and cache breakpoints (None for a
    plain text job). ``followups`` are (assistant answer, user reply) turns after the row's
    prompt: an invalid answer and what was wrong with it, one pair per follow-up attempt.
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
    raw_usage: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RowResult:
    """What is written to the store for one row of one run: its final outcome."""

    job: str
    run_id: str
    row_id: str
    request_key: str
    prompt_hash: str
    status: str  # 'ok' | 'failed' | 'input_error' | 'invalid'
    provider: str
    model: str
    mode: str  # 'online' | 'batch'
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

    @classmethod
    def unanswered(
        cls,
        *,
        job: str,
        run_id: str,
        row_id: str,
        request_key: str,
        prompt_hash: str,
        status: str,
        provider: str,
        model: str,
        mode: str,
        error_type: str,
        error: str,
        attempts: int,
        finished_at: float,
        source: str,
        line: int,
    ) -> RowResult:
        """A row without an answer (bad input, or failed for good): no tokens, no cost."""
        return cls(
            job=job,
            run_id=run_id,
            row_id=row_id,
            request_key=request_key,
            prompt_hash=prompt_hash,
            status=status,
            provider=provider,
            model=model,
            mode=mode,
            output_text=None,
            finish_reason=None,
            error_type=error_type,
            error=error,
            attempts=attempts,
            input_tokens=0,
            output_tokens=0,
            cache_read_tokens=0,
            cache_write_tokens=0,
            reasoning_tokens=0,
            cost_usd=None,
            latency_ms=None,
            finished_at=finished_at,
            source=source,
            line=line,
        )
