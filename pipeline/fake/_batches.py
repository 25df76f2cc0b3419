"""Batch jobs of both providers: input checks, a state machine driven by the clock, result lines.

No I/O and no background work: the caller passes the clock, and a ``LineServices`` that answers
one line with the online endpoints' logic (and pays for it) and stores a file.

Timeline of a batch created at ``t0`` (``BatchTiming``, seconds; the defaults are in
``FakeConfig``)::

    t0 ─ validating_s ─> start ─ in_progress_s ─> end ─ finalizing_s ─> completed
                         line k of n is done at start + in_progress_s * k / n

OpenAI shows each phase (``validating`` → ``in_progress`` → ``finalizing`` → ``completed``, or
``failed`` at ``start`` when the input does not validate); Anthropic shows ``in_progress`` until
the batch has ``ended``. A cancel at ``tc`` stops the lines (those done by ``tc`` are kept),
shows ``cancelling`` / ``canceling`` and ends the batch at ``tc + cancelling_s``. With
``expire_after`` set, the batch expires as soon as ``floor(expire_after * n)`` lines are done:
the rest are never answered.

``advance(now)`` catches a batch up to ``now``: it answers the lines that are due and moves
through every phase whose time has come. The server calls it whenever a batch is looked at (and
before accounting is read), so a client sees what a batch running on its own would show at that
moment; the timestamps are those of the schedule, not of the look. ``advance(now, budget)``
answers at most ``budget`` lines and says whether it got all the way, so a server can catch a big
batch up in slices and serve other requests in between.

Lines are answered in a deterministic shuffle (never the input order when there are two or more
lines), which is also the order of the result files. Error draws (``error_rate``) come from the
same seeded ``random.Random``, one per line in that order.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import orjson

__all__ = [
    "ANTHROPIC_CUSTOM_ID",
    "CANCELLED",
    "CANCELLING",
    "COMPLETED",
    "EXPIRED",
    "FAILED",
    "FILE_TTL_S",
    "FINALIZING",
    "IN_PROGRESS",
    "VALIDATING",
    "WINDOW_S",
    "AnthropicBatch",
    "BatchJob",
    "BatchLine",
    "BatchTiming",
    "LineServices",
    "OpenAIBatch",
    "StoredFile",
    "check_openai_input",
    "processing_order",
    "rfc3339",
]

# Phases. OpenAI shows them as they are; Anthropic maps them to in_progress/canceling/ended.
VALIDATING: Final = "validating"
IN_PROGRESS: Final = "in_progress"
FINALIZING: Final = "finalizing"
CANCELLING: Final = "cancelling"
COMPLETED: Final = "completed"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
EXPIRED: Final = "expired"
_RUNNING: Final = frozenset((VALIDATING, IN_PROGRESS, FINALIZING))

WINDOW_S: Final = 24 * 3600  # both providers give a batch 24 hours
FILE_TTL_S: Final = 30 * 24 * 3600  # OpenAI batch files expire after 30 days by default
ANTHROPIC_CUSTOM_ID: Final = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_MAX_REPORTED_ERRORS: Final = 100


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """Seconds each phase of a batch takes (see the module docstring)."""

    validating_s: float
    in_progress_s: float
    finalizing_s: float
    cancelling_s: float


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a batch: its ``custom_id`` and the body (OpenAI) or params (Anthropic)."""

    custom_id: str
    body: Any


@dataclass(slots=True)
class StoredFile:
    """A file of OpenAI's Files API (uploaded, or a batch's output or error file)."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }
        if self.purpose in ("batch", "batch_output"):
            body["expires_at"] = self.created_at + FILE_TTL_S
        return body


class LineServices(Protocol):
    """What a batch needs from the server to answer its lines and keep its files."""

    def new_id(self) -> str:
        """A fresh unique id (for ``batch_req_...``)."""
        ...

    def answer_openai_line(
        self, custom_id: str, body: Any, inject_error: bool
    ) -> tuple[int, dict[str, Any], str]:
        """``(status_code, response body, request ident)``; a 200 has been paid for."""
        ...

    def answer_anthropic_line(
        self, custom_id: str, params: Any, inject_error: bool
    ) -> dict[str, Any]:
        """The ``result`` of a line: ``succeeded`` (paid for) or ``errored``."""
        ...

    def store_file(self, filename: str, data: bytes, created_at: int) -> str:
        """Keep a batch output file (purpose ``batch_output``); return its id."""
        ...


def rfc3339(wall: float) -> str:
    """An RFC 3339 UTC time with microseconds, as Anthropic writes them."""
    moment = datetime.fromtimestamp(wall, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def processing_order(count: int, rng: random.Random) -> list[int]:
    """A shuffle of ``range(count)`` that is never the identity when ``count >= 2``."""
    order = list(range(count))
    rng.shuffle(order)
    if count >= 2 and all(index == position for position, index in enumerate(order)):
        order = order[1:] + order[:1]
    return order


def _line_error(code: str, message: str, param: str | None, line: int | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def check_openai_input(
    data: bytes, endpoint: str, max_requests: int
) -> tuple[list[BatchLine], list[dict[str, Any]]]:
    """Validate a batch input file the way OpenAI's ``validating`` phase does.

    Returns the lines, or the errors (``errors.data`` items, ``line`` 1-based; at most 100).
    Blank lines are skipped but still counted for line numbers. Codes: ``empty_file``,
    ``too_many_tasks`` (more than ``max_requests`` lines), ``invalid_json_line``,
    ``missing_required_parameter`` / ``invalid_type`` (``custom_id``, ``method``, ``url``,
    ``body``), ``invalid_value`` (a method other than POST), ``url_mismatch`` (a url other
    than the batch's endpoint), ``duplicate_custom_id`` and ``model_mismatch`` (every line must
    name the same model). The bodies themselves are checked when each line is answered: a bad
    body is a 400 in the error file, not a failed batch.
    """
    numbered = [(number, raw) for number, raw in enumerate(data.split(b"\n"), 1) if raw.strip()]
    if not numbered:
        message = (
            "The batch input file is empty. Please ensure that the batch contains at least one "
            "request."
        )
        return [], [_line_error("empty_file", message, None, None)]
    if len(numbered) > max_requests:
        message = (
            f"The batch input file has {len(numbered)} requests; a batch can have at most "
            f"{max_requests}."
        )
        return [], [_line_error("too_many_tasks", message, None, None)]
    lines: list[BatchLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    model: str | None = None
    for number, raw in numbered:
        error, line = _check_openai_line(raw, number, endpoint, seen, model)
        if error is not None:
            errors.append(error)
            if len(errors) >= _MAX_REPORTED_ERRORS:
                break
            continue
        assert line is not None
        seen.add(line.custom_id)
        if model is None:
            model = line.body.get("model") if isinstance(line.body.get("model"), str) else None
        lines.append(line)
    return (lines, []) if not errors else ([], errors)


def _check_openai_line(
    raw: bytes, number: int, endpoint: str, seen: set[str], model: str | None
) -> tuple[dict[str, Any] | None, BatchLine | None]:
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError:
        message = "This line is not parseable as valid JSON."
        return _line_error("invalid_json_line", message, None, number), None
    if not isinstance(request, dict):
        message = "This line is not a JSON object."
        return _line_error("invalid_json_line", message, None, number), None
    for name, kind in (("custom_id", str), ("method", str), ("url", str), ("body", dict)):
        value = request.get(name)
        if value is None or value == "":
            message = f"Missing required parameter: '{name}'."
            return _line_error("missing_required_parameter", message, name, number), None
        if not isinstance(value, kind):
            expected = "a string" if kind is str else "an object"
            message = f"Invalid type for '{name}': expected {expected}."
            return _line_error("invalid_type", message, name, number), None
    custom_id: str = request["custom_id"]
    if request["method"] != "POST":
        message = f"Invalid value: '{request['method']}'. Supported values are: 'POST'."
        return _line_error("invalid_value", message, "method", number), None
    if request["url"] != endpoint:
        message = (
            f"The provided URL '{request['url']}' does not match the batch endpoint '{endpoint}'."
        )
        return _line_error("url_mismatch", message, "url", number), None
    if custom_id in seen:
        message = (
            "The custom_id for this request is a duplicate of another request. The custom_id "
            "parameter must be unique for each request in a batch."
        )
        return _line_error("duplicate_custom_id", message, "custom_id", number), None
    body: dict[str, Any] = request["body"]
    line_model = body.get("model")
    if model is not None and isinstance(line_model, str) and line_model != model:
        message = (
            f"The provided model '{line_model}' does not match the model of the other "
            f"requests in the batch ('{model}'). A batch can only use one model."
        )
        return _line_error("model_mismatch", message, "body.model", number), None
    return None, BatchLine(custom_id, body)


class BatchJob:
    """The schedule and progress of one batch; the providers' subclasses add their shapes.

    Times are ``time.monotonic()`` seconds; ``wall(t)`` turns one into ``time.time()`` seconds.
    Subclasses provide ``_validate`` (set ``lines`` or return errors), ``_answer`` (one line:
    ``(answered with a message, JSONL line)``) and ``_finish`` (write the results).
    """

    def __init__(
        self,
        *,
        batch_id: str,
        created: float,
        wall_offset: float,
        timing: BatchTiming,
        error_rate: float,
        expire_after: float | None,
        seed: int,
        services: LineServices,
    ) -> None:
        self.id = batch_id
        self.created = created
        self.wall_offset = wall_offset
        self.timing = timing
        self.error_rate = error_rate
        self.expire_after = expire_after
        self.services = services
        self.phase: str = VALIDATING
        self.lines: list[BatchLine] = []
        self.order: list[int] = []
        self.done = 0  # lines answered, a prefix of ``order``
        self.results: list[tuple[bool, bytes]] = []  # per answered line, in answer order
        self.succeeded = 0
        self.errored = 0
        self.expire_count: int | None = None
        self.start = created + timing.validating_s
        self.at: dict[str, float] = {}  # when each phase began (monotonic)
        self._rng = random.Random(seed)

    # -- clock ----------------------------------------------------------------------------

    def wall(self, moment: float) -> float:
        return moment + self.wall_offset

    def line_time(self, count: int) -> float:
        """When the ``count``-th line (1-based, answer order) is done."""
        total = len(self.lines)
        if total == 0:
            return self.start
        return self.start + self.timing.in_progress_s * count / total

    def _due(self, now: float) -> int:
        """How many lines are done by ``now``, by the schedule."""
        total = len(self.lines)
        span = self.timing.in_progress_s
        if span <= 0:
            return total
        count = math.floor((now - self.start) / span * total + 1e-9)
        return max(0, min(total, count))

    # -- the state machine --------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.phase not in _RUNNING and self.phase != CANCELLING

    def advance(self, now: float, budget: int | None = None) -> bool:
        """Catch up to ``now``: answer the lines that are due, move through due phases.

        Answers at most ``budget`` lines (None: no limit). True when the batch is caught up;
        False when the budget ran out first (call again).
        """
        while True:
            phase = self.phase
            if phase == VALIDATING:
                if now < self.start:
                    return True
                self._begin()
            elif phase == IN_PROGRESS:
                progress = self._work(now, budget)
                if progress != "moved":
                    return progress == "waiting"
            elif phase == FINALIZING:
                finish = self.at[FINALIZING] + self.timing.finalizing_s
                if now < finish:
                    return True
                self._end(COMPLETED, finish)
            elif phase == CANCELLING:
                finish = self.at[CANCELLING] + self.timing.cancelling_s
                if now < finish:
                    return True
                self._end(CANCELLED, finish)
            else:
                return True

    def cancel(self, now: float) -> bool:
        """Start cancelling (after catching up to ``now``); False when the batch has ended."""
        self.advance(now)
        if self.phase == CANCELLING:
            return True
        if self.phase not in _RUNNING:
            return False
        self.phase = CANCELLING
        self.at[CANCELLING] = now
        self.advance(now)
        return True

    def _begin(self) -> None:
        errors = self._validate()
        if errors:
            self.at[FAILED] = self.start
            self.phase = FAILED
            self._failed(errors)
            return
        total = len(self.lines)
        self.order = processing_order(total, self._rng)
        if self.expire_after is not None:
            self.expire_count = math.floor(self.expire_after * total + 1e-9)
        self.at[IN_PROGRESS] = self.start
        self.phase = IN_PROGRESS

    def _work(self, now: float, budget: int | None) -> str:
        """Answer the due lines: ``"moved"`` when the phase changed (look again), ``"waiting"``
        when the next step is in the future, ``"budget"`` when ``budget`` lines were answered
        and more are due."""
        total = len(self.lines)
        target = self._due(now)
        if self.expire_count is not None:
            target = min(target, self.expire_count)
        stop = target if budget is None else min(target, self.done + budget)
        while self.done < stop:
            line = self.lines[self.order[self.done]]
            inject = self.error_rate > 0 and self._rng.random() < self.error_rate
            succeeded, raw = self._answer(line, inject)
            self.results.append((succeeded, raw))
            if succeeded:
                self.succeeded += 1
            else:
                self.errored += 1
            self.done += 1
        if self.done < target:
            return "budget"
        if self.expire_count is not None and self.done == self.expire_count:
            moment = self.line_time(self.expire_count)
            if now >= moment:
                self._end(EXPIRED, moment)
                return "moved"
            return "waiting"
        if self.done == total:
            self.at[FINALIZING] = self.line_time(total)
            self.phase = FINALIZING
            return "moved"
        return "waiting"

    def _end(self, phase: str, moment: float) -> None:
        self.phase = phase
        self.at[phase] = moment
        self._finish(moment)

    # -- provider hooks -------------------------------------------------------------------------

    def _validate(self) -> list[dict[str, Any]]:
        return []

    def _failed(self, errors: list[dict[str, Any]]) -> None:
        return None

    def _answer(self, line: BatchLine, inject_error: bool) -> tuple[bool, bytes]:
        raise NotImplementedError

    def _finish(self, moment: float) -> None:
        return None

    def unanswered(self) -> list[BatchLine]:
        """Lines never answered (cancelled or expired), in answer order (input order when the
        batch was cancelled before it started)."""
        if not self.order:
            return list(self.lines)
        return [self.lines[index] for index in self.order[self.done :]]


class OpenAIBatch(BatchJob):
    """A ``/v1/batches`` batch: validates its input file, answers chat completion lines."""

    def __init__(
        self,
        *,
        input_file_id: str,
        input_data: bytes,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
        max_requests: int,
        fail_validation: bool,
        **job: Any,
    ) -> None:
        super().__init__(**job)
        self.input_file_id = input_file_id
        self.input_data = input_data
        self.endpoint = endpoint
        self.completion_window = completion_window
        self.metadata = metadata
        self.max_requests = max_requests
        self.fail_validation = fail_validation
        self.errors: list[dict[str, Any]] = []
        self.model: str | None = None
        self.output_file_id: str | None = None
        self.error_file_id: str | None = None
        self.expired_lines = 0
        self.usage = {"input": 0, "cached": 0, "output": 0}

    def _validate(self) -> list[dict[str, Any]]:
        data, self.input_data = self.input_data, b""
        if self.fail_validation:
            message = "The batch failed validation (batch_fail_validation is set)."
            return [_line_error("invalid_request", message, None, None)]
        lines, errors = check_openai_input(data, self.endpoint, self.max_requests)
        self.lines = lines
        if lines:
            model = lines[0].body.get("model")
            self.model = model if isinstance(model, str) else None
        return errors

    def _failed(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors

    def _answer(self, line: BatchLine, inject_error: bool) -> tuple[bool, bytes]:
        status, body, ident = self.services.answer_openai_line(
            line.custom_id, line.body, inject_error
        )
        if status == 200:
            usage = body["usage"]
            self.usage["input"] += usage["prompt_tokens"]
            self.usage["cached"] += usage["prompt_tokens_details"]["cached_tokens"]
            self.usage["output"] += usage["completion_tokens"]
        raw = orjson.dumps(
            {
                "id": f"batch_req_{ident}",
                "custom_id": line.custom_id,
                "response": {"status_code": status, "request_id": f"req_{ident}", "body": body},
                "error": None,
            }
        )
        return status == 200, raw

    def _finish(self, moment: float) -> None:
        output = [raw for succeeded, raw in self.results if succeeded]
        errors = [raw for succeeded, raw in self.results if not succeeded]
        if self.phase == EXPIRED:
            for line in self.unanswered():
                errors.append(
                    orjson.dumps(
                        {
                            "id": f"batch_req_{self.services.new_id()}",
                            "custom_id": line.custom_id,
                            "response": None,
                            "error": {
                                "code": "batch_expired",
                                "message": "This request could not be executed before the "
                                "completion window expired.",
                            },
                        }
                    )
                )
                self.expired_lines += 1
        created_at = int(self.wall(moment))
        stem = self.id
        if output:
            data = b"\n".join(output) + b"\n"
            self.output_file_id = self.services.store_file(f"{stem}_output.jsonl", data, created_at)
        if errors:
            data = b"\n".join(errors) + b"\n"
            self.error_file_id = self.services.store_file(f"{stem}_error.jsonl", data, created_at)

    def to_json(self) -> dict[str, Any]:
        """The ``Batch`` object. Absent values are left out rather than null: OpenAI's published
        schema does not allow null for them (the SDK reads a missing field as None)."""
        body: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.phase,
            "created_at": int(self.wall(self.created)),
            "expires_at": int(self.wall(self.created)) + WINDOW_S,
            "request_counts": {
                "total": len(self.lines),
                "completed": self.succeeded,
                "failed": self.errored + self.expired_lines,
            },
            "metadata": self.metadata,
        }
        if self.errors:
            body["errors"] = {"object": "list", "data": self.errors}
        if self.model is not None:
            body["model"] = self.model
        if self.output_file_id is not None:
            body["output_file_id"] = self.output_file_id
        if self.error_file_id is not None:
            body["error_file_id"] = self.error_file_id
        for phase in (IN_PROGRESS, FINALIZING, COMPLETED, FAILED, EXPIRED, CANCELLING, CANCELLED):
            moment = self.at.get(phase)
            if moment is not None:
                body[f"{phase}_at"] = int(self.wall(moment))
        if self.phase != VALIDATING and self.phase != FAILED:
            usage = self.usage
            body["usage"] = {
                "input_tokens": usage["input"],
                "input_tokens_details": {"cached_tokens": usage["cached"]},
                "output_tokens": usage["output"],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage["input"] + usage["output"],
            }
        return body


class AnthropicBatch(BatchJob):
    """A ``/v1/messages/batches`` batch: its requests were checked when it was created."""

    def __init__(self, *, lines: Sequence[BatchLine], **job: Any) -> None:
        super().__init__(**job)
        self.lines = list(lines)
        self.canceled = 0
        self.expired = 0
        self.results_data: bytes | None = None

    def _answer(self, line: BatchLine, inject_error: bool) -> tuple[bool, bytes]:
        result = self.services.answer_anthropic_line(line.custom_id, line.body, inject_error)
        raw = orjson.dumps({"custom_id": line.custom_id, "result": result})
        return result["type"] == "succeeded", raw

    def _finish(self, moment: float) -> None:
        results = [raw for _, raw in self.results]
        kind = "expired" if self.phase == EXPIRED else "canceled"
        for line in self.unanswered():
            results.append(orjson.dumps({"custom_id": line.custom_id, "result": {"type": kind}}))
            if kind == "expired":
                self.expired += 1
            else:
                self.canceled += 1
        self.results_data = b"\n".join(results) + b"\n" if results else b""

    @property
    def processing_status(self) -> str:
        if self.phase == CANCELLING:
            return "canceling"
        return "in_progress" if self.phase in _RUNNING else "ended"

    def to_json(self, origin: str) -> dict[str, Any]:
        """The ``MessageBatch`` object; ``origin`` (``http://host:port``) roots ``results_url``."""
        ended = self.processing_status == "ended"
        if ended:
            counts = {
                "processing": 0,
                "succeeded": self.succeeded,
                "errored": self.errored,
                "canceled": self.canceled,
                "expired": self.expired,
            }
        else:
            counts = {
                "processing": len(self.lines),
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            }
        ended_at = next(
            (self.at[phase] for phase in (COMPLETED, CANCELLED, EXPIRED) if phase in self.at),
            None,
        )
        cancel_at = self.at.get(CANCELLING)
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.processing_status,
            "request_counts": counts,
            "ended_at": rfc3339(self.wall(ended_at)) if ended_at is not None else None,
            "created_at": rfc3339(self.wall(self.created)),
            "expires_at": rfc3339(self.wall(self.created) + WINDOW_S),
            "archived_at": None,
            "cancel_initiated_at": rfc3339(self.wall(cancel_at)) if cancel_at is not None else None,
            "results_url": f"{origin}/v1/messages/batches/{self.id}/results" if ended else None,
        }
