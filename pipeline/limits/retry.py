"""Decide what a failed HTTP answer means, and how long to wait before trying again.

- ``classify_http_error`` maps a provider's non-2xx answer into the error tree of
  ``pipeline.errors``: transient (retry), rate-limited (retry after the provider's wait), rejected
  (this row fails for good) or fatal (stop the run). The runner decides from the class alone.
- ``retry_after_seconds`` reads the provider's ``retry-after-ms`` / ``retry-after`` headers.
- ``backoff_s`` is exponential backoff with full jitter that never undercuts the provider's wait.

The rules follow the official OpenAI and Anthropic SDKs: retry 408, 409, 429 and every 5xx
(Anthropic's 529 included), and let ``x-should-retry`` overrule the status code. Unlike the SDKs,
authentication, permission and quota failures stop the run: no later request can succeed.

Gemini answers in Google's error shape, ``{"error": {"code", "message", "status", "details"}}``:
its wait is the ``retryDelay`` of a ``google.rpc.RetryInfo`` detail (``"37s"``), used when no
header says one; a bad key is a 400 whose ``ErrorInfo`` reason is ``API_KEY_INVALID`` (fatal, as
a 401 elsewhere); a 429 whose ``QuotaFailure`` names a per-day quota is fatal too (waiting a
minute cannot help), while a per-minute one is a rate limit like any other.

Messages are built from the status and the provider's own error message; header values never go
into them, and a body passes through :func:`pipeline.redact.redact` (anything that looks like an
API key, and the run's own keys, become ``[REDACTED]``).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import orjson

from ..errors import (
    FatalProviderError,
    ProviderError,
    RateLimitError,
    RowRejectedError,
    TransientError,
)
from ..redact import redact

__all__ = [
    "MAX_RETRY_AFTER_S",
    "backoff_s",
    "classify_http_error",
    "retry_after_seconds",
]

MAX_RETRY_AFTER_S = 120.0
"""The longest a provider's retry-after can stretch one wait in ``backoff_s``."""

_EXCERPT_CHARS = 300
_MESSAGE_CHARS = 500

# status -> (error class, error_type) for the statuses with a fixed meaning.
_BY_STATUS: dict[int, tuple[type[ProviderError], str]] = {
    400: (RowRejectedError, "invalid_request"),
    401: (FatalProviderError, "auth_failed"),
    403: (FatalProviderError, "permission_denied"),
    404: (RowRejectedError, "not_found"),
    408: (TransientError, "timeout"),
    409: (TransientError, "conflict"),
    413: (RowRejectedError, "request_too_large"),
    422: (RowRejectedError, "invalid_request"),
    429: (RateLimitError, "rate_limited"),
    500: (TransientError, "server_error"),
    502: (TransientError, "bad_gateway"),
    503: (TransientError, "overloaded"),
    504: (TransientError, "timeout"),
    529: (TransientError, "overloaded"),
}

_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY (or GOOGLE_API_KEY)",
}

_SPACES = re.compile(r"\s+")


def classify_http_error(
    provider: str, status: int, body: bytes, headers: Mapping[str, str]
) -> ProviderError:
    """The error a non-2xx answer stands for (returned, not raised).

    ``headers`` may be ``httpx.Headers`` or a dict with lower-case names.
    """
    message, body_type, body_code = _parse_body(body)
    retry_after = retry_after_seconds(headers)
    google = _google_hints(body) if provider == "gemini" else None
    if retry_after is None and google is not None:
        retry_after = google[0]
    kinds = {body_type, body_code}
    prefix = f"{provider} HTTP {status}"

    cls: type[ProviderError]
    if status in _BY_STATUS:
        cls, error_type = _BY_STATUS[status]
    elif status >= 500:
        cls, error_type = TransientError, "server_error"
    elif status >= 400:
        cls, error_type = RowRejectedError, "client_error"
    else:
        cls, error_type = RowRejectedError, "unexpected_status"

    if status == 401 or (google is not None and "API_KEY_INVALID" in google[1]):
        cls, error_type = FatalProviderError, "auth_failed"
        text = f"authentication failed: check {_key_env(provider)}"
    elif status == 403:
        text = f"permission denied: the key in {_key_env(provider)} may not use this model or API"
        if message:
            text = f"{text} ({message})"
    elif status == 429 and google is not None and any("PerDay" in q for q in google[2]):
        cls, error_type = FatalProviderError, "insufficient_quota"
        text = f"daily quota exhausted for {_key_env(provider)} ({message})"
    elif status == 429 and "insufficient_quota" in kinds:
        cls, error_type = FatalProviderError, "insufficient_quota"
        text = (
            f"quota exhausted: add credit or raise the spending limit for {_key_env(provider)}"
            f" ({message})"
        )
    elif status == 404:
        # A wrong model name or base URL: every other request would get the same answer.
        cls = FatalProviderError
        text = f"not found ({message or 'no error message'}): check [request] model and base_url"
    elif status == 400 and "credit balance" in (message or "").lower():
        # Anthropic reports an empty prepaid balance as a 400; every later request fails too.
        cls, error_type = FatalProviderError, "insufficient_quota"
        text = f"quota exhausted: {message}"
    elif status < 400:
        text = (
            f"unexpected answer ({message or 'no body'}); check [request] base_url points at "
            "the API itself, not a page that redirects"
        )
    else:
        text = message or "no error message in the response"
        if status == 429 and retry_after is not None:
            text = f"{text} (retry after {retry_after:g} s)"

    # The provider's own verdict wins, except that auth, permission and quota stay fatal.
    should_retry = headers.get("x-should-retry")
    if should_retry is not None and cls is not FatalProviderError:
        flag = should_retry.strip().lower()
        if flag == "true" and not cls.transient:
            cls = TransientError
        elif flag == "false" and cls.transient:
            cls = RowRejectedError

    return cls(
        f"{prefix}: {text}",
        status_code=status,
        error_type=error_type,
        retry_after=retry_after,
    )


def retry_after_seconds(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds the provider asked us to wait, or None if it did not say (or said nonsense).

    ``retry-after-ms`` (milliseconds) wins over ``retry-after`` (seconds or an HTTP date, which
    is measured from ``now``, default the current time). Negative or unparseable values are
    ignored. No cap is applied here.
    """
    value = headers.get("retry-after-ms")
    if value is not None:
        ms = _non_negative_float(value)
        if ms is not None:
            return ms / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative_float(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    if current.tzinfo is None:
        current = current.replace(tzinfo=UTC)
    delta = (when - current).total_seconds()
    return delta if delta >= 0 else None


def backoff_s(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` after attempt ``attempt`` (1-based) failed.

    Full jitter: uniform in ``[0, min(cap, base * 2 ** (attempt - 1))]``, so that clients that
    failed together do not retry together. When the provider gave a ``retry_after``, the wait is
    never shorter than it, even above ``cap``, up to ``MAX_RETRY_AFTER_S``.
    """
    exponent = min(max(attempt, 1) - 1, 64)
    ceiling = max(0.0, min(cap, base * 2.0**exponent))
    wait = (rng or random).random() * ceiling
    if retry_after is not None and retry_after > 0:
        wait = max(wait, min(retry_after, MAX_RETRY_AFTER_S))
    return wait


# -- internals -------------------------------------------------------------------------------


def _key_env(provider: str) -> str:
    return _KEY_ENV.get(provider, f"{provider.upper()}_API_KEY")


def _parse_body(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(message, error type, error code) from an OpenAI or Anthropic error body.

    OpenAI: ``{"error": {"message", "type", "param", "code"}}``; Anthropic:
    ``{"type": "error", "error": {"type", "message"}}``. Anything else gives a short excerpt.
    """
    if not body:
        return None, None, None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _excerpt(body), None, None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        message = err.get("message")
        etype = err.get("type")
        code = err.get("code")
        return (
            _clean(message) if isinstance(message, str) and message else _excerpt(body),
            etype if isinstance(etype, str) else None,
            code if isinstance(code, str) else None,
        )
    if isinstance(err, str) and err:
        return _clean(err), None, None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return _clean(doc["message"]), None, None
    return _excerpt(body), None, None


def _google_hints(body: bytes) -> tuple[float | None, set[str], list[str]] | None:
    """``(retryDelay seconds, ErrorInfo reasons, QuotaFailure quota ids)`` of a Google error
    body, or None when it is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = doc.get("error") if isinstance(doc, dict) else None
    details = err.get("details") if isinstance(err, dict) else None
    if not isinstance(details, list):
        return None
    delay: float | None = None
    reasons: set[str] = set()
    quotas: list[str] = []
    for detail in details:
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", ""))
        if kind.endswith("RetryInfo"):
            delay = _proto_duration(detail.get("retryDelay"))
        elif kind.endswith("ErrorInfo") and isinstance(detail.get("reason"), str):
            reasons.add(detail["reason"])
        elif kind.endswith("QuotaFailure"):
            for violation in detail.get("violations") or ():
                if isinstance(violation, dict) and isinstance(violation.get("quotaId"), str):
                    quotas.append(violation["quotaId"])
    return delay, reasons, quotas


def _proto_duration(value: object) -> float | None:
    """Seconds of a protobuf ``Duration`` in JSON (``"37s"``, ``"0.5s"``); None otherwise."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    return _non_negative_float(value[:-1])


def _clean(text: str) -> str:
    text = redact(_SPACES.sub(" ", text).strip())
    if len(text) > _MESSAGE_CHARS:
        text = text[: _MESSAGE_CHARS - 3] + "..."
    return text


def _excerpt(body: bytes) -> str:
    text = body[: _EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    text = redact(_SPACES.sub(" ", text).strip())
    if len(text) > _EXCERPT_CHARS or len(body) > _EXCERPT_CHARS * 4:
        text = text[:_EXCERPT_CHARS] + "..."
    return f"unparseable body: {text!r}"


def _non_negative_float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    if math.isnan(number) or math.isinf(number) or number < 0:
        return None
    return number
