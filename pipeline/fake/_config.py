"""The knobs of the fake provider.

Every knob has a default that makes a well-behaved, fast, unlimited provider. Tests and the demo
turn faults on (and off again at runtime, through ``FakeProvider.update_config`` or
``POST /_fake/config``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

__all__ = ["FakeConfig", "config_from_mapping"]

_PROBABILITIES = (
    "error_rate",
    "hang_rate",
    "drop_rate",
    "malformed_rate",
    "empty_rate",
    "batch_error_rate",
)
_BATCH_SECONDS = (
    "batch_validating_s",
    "batch_in_progress_s",
    "batch_finalizing_s",
    "batch_cancelling_s",
)
_BATCH_LIMITS = (
    "openai_batch_max_requests",
    "openai_batch_max_bytes",
    "anthropic_batch_max_requests",
    "anthropic_batch_max_bytes",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeConfig:
    """How the fake provider behaves. Immutable: change it with ``update_config``.

    Timing
        ``latency_ms`` is added to every answered request, plus a uniform extra in
        ``[0, jitter_ms)``. Draws come from a ``random.Random(seed)``.

    Rate limits (per provider API: OpenAI and Anthropic each get their own buckets)
        ``requests_per_second`` and ``tokens_per_second`` are token-bucket refill rates; ``None``
        means unlimited. Each bucket holds ``rate * burst_s`` (at least one request) and starts
        full. A request costs one request and ``estimated input tokens + max_tokens`` tokens (the
        output limit is charged when the request starts, as Anthropic does). Over the limit the
        answer is a 429 in the provider's own shape, with ``retry-after``.

    Faults (probabilities in ``[0, 1]``, drawn per request, in this order)
        ``drop_rate`` closes the connection without a response; ``hang_rate`` holds the request
        for ``hang_s`` seconds and then closes the connection (for client timeouts);
        ``error_rate`` answers 500 (OpenAI, ``server_error``) or 529 (Anthropic,
        ``overloaded_error``), or ``error_status`` for both when set (e.g. 503);
        ``malformed_rate`` answers 200 with a truncated JSON body; ``empty_rate`` answers 200 with
        an empty body.

    Models down
        ``fail_model`` names a model (or several, comma-separated) every online request for
        which is answered as an overloaded provider answers: ``error_status`` when set, else
        OpenAI 503, Anthropic 529 ``overloaded_error``, Gemini 503 ``UNAVAILABLE``. The other
        models answer as usual (a fallback model, say).

    Account state
        ``auth_fail`` answers every request 401 (the key is never echoed back);
        ``quota_exhausted`` answers OpenAI requests 429 ``insufficient_quota`` and Anthropic
        requests 400 "credit balance is too low", as the real APIs do (on the batch APIs: when
        a batch is created).

    Batch APIs (OpenAI ``/v1/batches``, Anthropic ``/v1/messages/batches``)
        Timing: a batch waits ``batch_validating_s`` (OpenAI's ``validating``), then its lines
        finish one after another, evenly spread over ``batch_in_progress_s``, then it spends
        ``batch_finalizing_s`` finalizing; a cancelled batch spends ``batch_cancelling_s``
        cancelling. The defaults end a batch of any size in about a second.
        Faults: ``batch_error_rate`` is the share of lines answered with a server error instead
        of an answer; ``batch_expire_after`` (a share in ``[0, 1]``, None = never) expires a
        batch once that share of its lines is done; ``batch_fail_validation`` fails every
        OpenAI batch's validation and refuses every Anthropic batch at creation (400);
        ``batch_create_lost`` creates each batch as asked but never answers the create: the
        request is held ``hang_s`` seconds (0: not at all), then its connection is closed, so the
        client never learns the id of a batch that exists (and will be paid for).
        Limits: ``openai_batch_max_requests`` lines per input file (more: the batch fails
        validation with ``too_many_tasks``) and ``openai_batch_max_bytes`` per uploaded file
        (more: 400 at upload), as the real API; ``anthropic_batch_max_requests`` requests and
        ``anthropic_batch_max_bytes`` of request body per batch (more: 413
        ``request_too_large``). Megabytes are decimal (200 MB = 200,000,000 bytes), the
        stricter reading of the providers' documentation.
        A batch takes its timing, faults and limits from the knobs as they are when it is
        created; the draws come from a ``random.Random`` seeded from ``seed`` and the batch's
        serial number, so the same calls give the same batches.
    """

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    seed: int = 0
    requests_per_second: float | None = None
    tokens_per_second: float | None = None
    burst_s: float = 1.0
    error_rate: float = 0.0
    error_status: int | None = None
    hang_rate: float = 0.0
    hang_s: float = 3600.0
    drop_rate: float = 0.0
    malformed_rate: float = 0.0
    empty_rate: float = 0.0
    fail_model: str | None = None
    auth_fail: bool = False
    quota_exhausted: bool = False
    batch_validating_s: float = 0.2
    batch_in_progress_s: float = 0.5
    batch_finalizing_s: float = 0.2
    batch_cancelling_s: float = 0.1
    batch_error_rate: float = 0.0
    batch_expire_after: float | None = None
    batch_fail_validation: bool = False
    batch_create_lost: bool = False
    openai_batch_max_requests: int = 50_000
    openai_batch_max_bytes: int = 200_000_000
    anthropic_batch_max_requests: int = 100_000
    anthropic_batch_max_bytes: int = 256_000_000

    def fails(self, model: str) -> bool:
        """Whether ``fail_model`` takes ``model`` down."""
        if not self.fail_model:
            return False
        name = model.removeprefix("models/")
        return name in (m.strip() for m in self.fail_model.split(","))

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms", "hang_s", *_BATCH_SECONDS):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("requests_per_second", "tokens_per_second"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0 or None, got {value!r}")
        if not (math.isfinite(self.burst_s) and self.burst_s > 0):
            raise ValueError(f"burst_s must be a finite number > 0, got {self.burst_s!r}")
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability between 0 and 1, got {value!r}")
        if self.error_status is not None and not 400 <= self.error_status <= 599:
            raise ValueError(
                f"error_status must be an HTTP error status (400-599), got {self.error_status!r}"
            )
        share = self.batch_expire_after
        if share is not None and not 0.0 <= share <= 1.0:
            raise ValueError(
                f"batch_expire_after must be a share between 0 and 1 or None, got {share!r}"
            )
        for name in _BATCH_LIMITS:
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


_FLOAT_KNOBS = frozenset(
    ("latency_ms", "jitter_ms", "burst_s", "hang_s", *_PROBABILITIES, *_BATCH_SECONDS)
)
_OPTIONAL_FLOAT_KNOBS = frozenset(
    ("requests_per_second", "tokens_per_second", "batch_expire_after")
)
_INT_KNOBS = frozenset(("seed", *_BATCH_LIMITS))
_OPTIONAL_INT_KNOBS = frozenset(("error_status",))
_OPTIONAL_STR_KNOBS = frozenset(("fail_model",))
_BOOL_KNOBS = frozenset(
    ("auth_fail", "quota_exhausted", "batch_fail_validation", "batch_create_lost")
)
KNOBS = frozenset(f.name for f in fields(FakeConfig))
assert KNOBS == (
    _FLOAT_KNOBS
    | _OPTIONAL_FLOAT_KNOBS
    | _INT_KNOBS
    | _OPTIONAL_INT_KNOBS
    | _OPTIONAL_STR_KNOBS
    | _BOOL_KNOBS
)


def _coerce(name: str, value: object) -> object:
    """Check one knob's value as it arrives from JSON or keyword arguments."""
    if value is None and name in _OPTIONAL_FLOAT_KNOBS | _OPTIONAL_INT_KNOBS | _OPTIONAL_STR_KNOBS:
        return None
    if name in _OPTIONAL_STR_KNOBS:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name} must be a string, got {value!r}")
    if name in _BOOL_KNOBS:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name} must be true or false, got {value!r}")
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if name in _INT_KNOBS | _OPTIONAL_INT_KNOBS:
        if isinstance(value, int):
            return value
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    raise ValueError(f"{name} must be a number, got {value!r}")


def config_from_mapping(base: FakeConfig, knobs: Mapping[str, object]) -> FakeConfig:
    """Return ``base`` with ``knobs`` changed; unknown names or bad values raise ValueError."""
    unknown = sorted(set(knobs) - KNOBS)
    if unknown:
        raise ValueError(
            f"unknown fake provider knob(s): {', '.join(unknown)}; "
            f"known knobs are: {', '.join(sorted(KNOBS))}"
        )
    changes = {name: _coerce(name, value) for name, value in knobs.items()}
    return replace(base, **changes)  # type: ignore[arg-type]
