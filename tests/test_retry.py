"""Classifying provider failures and computing retry waits."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import (
    FatalProviderError,
    ProviderError,
    RateLimitError,
    RowRejectedError,
    TransientError,
)
from pipeline.limits.retry import (
    MAX_RETRY_AFTER_S,
    backoff_s,
    classify_http_error,
    retry_after_seconds,
)


def openai_body(
    message: str, type_: str = "invalid_request_error", code: str | None = None
) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


def anthropic_body(message: str, type_: str = "invalid_request_error") -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_1"}
    )


# -- classify_http_error -------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("status", "cls", "error_type"),
    [
        (400, RowRejectedError, "invalid_request"),
        (401, FatalProviderError, "auth_failed"),
        (403, FatalProviderError, "permission_denied"),
        (404, FatalProviderError, "not_found"),  # wrong model or base URL: stop the run
        (408, TransientError, "timeout"),
        (409, TransientError, "conflict"),
        (413, RowRejectedError, "request_too_large"),
        (422, RowRejectedError, "invalid_request"),
        (429, RateLimitError, "rate_limited"),
        (500, TransientError, "server_error"),
        (502, TransientError, "bad_gateway"),
        (503, TransientError, "overloaded"),
        (504, TransientError, "timeout"),
        (529, TransientError, "overloaded"),
        (599, TransientError, "server_error"),
        (418, RowRejectedError, "client_error"),
    ],
)
def test_status_codes_map_to_the_error_tree(
    provider: str, status: int, cls: type[ProviderError], error_type: str
) -> None:
    err = classify_http_error(provider, status, b"", {})
    assert type(err) is cls
    assert err.error_type == error_type
    assert err.status_code == status
    assert err.transient == issubclass(cls, TransientError)
    assert err.fatal == (cls is FatalProviderError)
    assert f"HTTP {status}" in str(err)


def test_rate_limit_carries_retry_after_and_provider_message() -> None:
    body = openai_body(
        "Rate limit reached for gpt-4o-mini on tokens per min (TPM). Please try again in 6.596s.",
        type_="tokens",
        code="rate_limit_exceeded",
    )
    err = classify_http_error("openai", 429, body, {"retry-after": "7"})
    assert isinstance(err, RateLimitError)
    assert err.transient
    assert err.retry_after == 7.0
    assert "Please try again in 6.596s" in str(err)


def test_openai_insufficient_quota_stops_the_run() -> None:
    body = openai_body(
        "You exceeded your current quota.", "insufficient_quota", "insufficient_quota"
    )
    err = classify_http_error("openai", 429, body, {})
    assert isinstance(err, FatalProviderError)
    assert err.error_type == "insufficient_quota"
    assert "You exceeded your current quota." in str(err)


@pytest.mark.parametrize(
    ("provider", "env"), [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")]
)
def test_auth_failure_names_the_env_variable_and_no_key_material(provider: str, env: str) -> None:
    secret = "sk" + "-proj-AbCdEf0123456789secret"
    body = openai_body(
        f"Incorrect API key provided: {secret}.", "invalid_request_error", "invalid_api_key"
    )
    headers = {"authorization": f"Bearer {secret}", "x-api-key": secret}
    err = classify_http_error(provider, 401, body, headers)
    assert isinstance(err, FatalProviderError)
    assert f"check {env}" in str(err)
    assert secret not in str(err)
    assert "AbCdEf" not in str(err)


def test_permission_denied_keeps_the_reason_but_masks_keys() -> None:
    body = anthropic_body(
        "Key sk" + "-ant-api03-XYZXYZXYZ may not use claude-opus.", "permission_error"
    )
    err = classify_http_error("anthropic", 403, body, {"x-api-key": "sk" + "-ant-api03-XYZXYZXYZ"})
    assert isinstance(err, FatalProviderError)
    assert "may not use claude-opus" in str(err)
    assert "XYZXYZ" not in str(err)


@pytest.mark.parametrize(
    ("provider", "body"),
    [
        ("openai", openai_body("Invalid value for 'temperature': must be <= 2.")),
        ("anthropic", anthropic_body("Invalid value for 'temperature': must be <= 2.")),
    ],
)
def test_rejected_request_carries_the_provider_message(provider: str, body: bytes) -> None:
    err = classify_http_error(provider, 400, body, {})
    assert isinstance(err, RowRejectedError)
    assert not err.transient and not err.fatal
    assert str(err) == f"{provider} HTTP 400: Invalid value for 'temperature': must be <= 2."


def test_anthropic_empty_credit_balance_stops_the_run() -> None:
    body = anthropic_body("Your credit balance is too low to access the Anthropic API.")
    err = classify_http_error("anthropic", 400, body, {})
    assert isinstance(err, FatalProviderError)
    assert err.error_type == "insufficient_quota"


def test_unparseable_body_gives_a_short_excerpt() -> None:
    body = b"<html><body>502 Bad Gateway</body></html>" + b"x" * 10_000
    err = classify_http_error("openai", 502, body, {})
    assert isinstance(err, TransientError)
    assert "502 Bad Gateway" in str(err)
    assert len(str(err)) < 400


def test_x_should_retry_overrules_the_status_but_not_auth() -> None:
    body = openai_body("bad")
    assert (
        type(classify_http_error("openai", 400, body, {"x-should-retry": "true"})) is TransientError
    )
    assert (
        type(classify_http_error("openai", 500, body, {"x-should-retry": "false"}))
        is RowRejectedError
    )
    assert (
        type(classify_http_error("openai", 429, body, {"x-should-retry": "False"}))
        is RowRejectedError
    )
    assert (
        type(classify_http_error("openai", 401, body, {"x-should-retry": "true"}))
        is FatalProviderError
    )
    assert (
        type(classify_http_error("openai", 403, body, {"x-should-retry": "true"}))
        is FatalProviderError
    )
    assert (
        type(classify_http_error("openai", 500, body, {"x-should-retry": "maybe"}))
        is TransientError
    )


@given(st.integers(100, 999), st.binary(max_size=200))
def test_classification_never_leaks_header_values(status: int, body: bytes) -> None:
    secret = "sk" + "-ant-api03-SECRETSECRETSECRET"
    headers = {"authorization": f"Bearer {secret}", "x-api-key": secret, "retry-after": "1"}
    err = classify_http_error("anthropic", status, body, headers)
    assert isinstance(err, ProviderError)
    assert "SECRET" not in str(err)
    assert err.error_type.isidentifier() and err.error_type == err.error_type.lower()


# -- retry_after_seconds -------------------------------------------------------------------------


def test_retry_after_headers() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after-ms": "junk", "retry-after": "9"}) == 9.0
    assert retry_after_seconds({"retry-after": "Wed, 01 Jan 2025 12:00:30 GMT"}, now=now) == 30.0
    assert retry_after_seconds({"retry-after": "Wed, 01 Jan 2025 11:59:00 GMT"}, now=now) is None
    assert retry_after_seconds({"retry-after": "-1"}) is None
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after": "nan"}) is None
    assert retry_after_seconds({"retry-after": "0"}) == 0.0


# -- backoff_s -----------------------------------------------------------------------------------


@given(
    st.integers(1, 200),
    st.floats(0.01, 5.0),
    st.floats(0.1, 60.0),
    st.none() | st.floats(0.0, 500.0),
    st.randoms(use_true_random=False),
)
def test_backoff_stays_within_bounds(
    attempt: int, base: float, cap: float, retry_after: float | None, rng: random.Random
) -> None:
    wait = backoff_s(attempt, base=base, cap=cap, retry_after=retry_after, rng=rng)
    floor = 0.0 if retry_after is None else min(retry_after, MAX_RETRY_AFTER_S)
    assert floor <= wait <= max(cap, floor)
    assert wait <= max(min(cap, base * 2 ** min(attempt - 1, 64)), floor)


def test_backoff_is_full_jitter_and_grows_with_attempts() -> None:
    rng = random.Random(7)
    first = [backoff_s(1, rng=rng) for _ in range(500)]
    later = [backoff_s(8, rng=rng) for _ in range(500)]
    assert max(first) <= 0.5
    assert min(later) < 3.0 and max(later) > 27.0  # spread over [0, 30], not clustered at the top
    assert sum(later) / len(later) > 5 * sum(first) / len(first)


def test_backoff_honours_retry_after_above_cap_up_to_the_ceiling() -> None:
    rng = random.Random(1)
    assert backoff_s(1, cap=30.0, retry_after=45.0, rng=rng) == 45.0
    assert backoff_s(1, cap=30.0, retry_after=10_000.0, rng=rng) == MAX_RETRY_AFTER_S == 120.0


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    a = [backoff_s(n, rng=random.Random(3)) for n in range(1, 6)]
    b = [backoff_s(n, rng=random.Random(3)) for n in range(1, 6)]
    assert a == b
