"""Parsing the rate-limit headers of OpenAI and Anthropic responses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.limits.headers import (
    parse_go_duration,
    parse_rate_limit_headers,
    parse_reset_rfc3339,
)
from pipeline.records import RateLimitInfo

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


# -- Go durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("2m59.56s", 179.56),
        ("1h2m", 3720.0),
        ("0s", 0.0),
        ("0", 0.0),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("500μs", 0.0005),
        ("250ns", 2.5e-7),
        ("1.5h", 5400.0),
        (" 20ms ", 0.02),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "1m2", "-1s", "1 s", "ms", "1.2.3s", "abc"])
def test_malformed_go_durations_are_none(text: str) -> None:
    assert parse_go_duration(text) is None


@given(
    st.integers(0, 48),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999),
    st.sets(st.sampled_from(["h", "m", "s", "ms"]), min_size=1),
)
def test_go_duration_round_trip(h: int, m: int, s: int, ms: int, units: set[str]) -> None:
    parts = {"h": (h, 3600.0), "m": (m, 60.0), "s": (s, 1.0), "ms": (ms, 0.001)}
    text = "".join(f"{parts[u][0]}{u}" for u in ["h", "m", "s", "ms"] if u in units)
    expected = sum(parts[u][0] * parts[u][1] for u in units)
    assert parse_go_duration(text) == pytest.approx(expected)
    # Go's own String() form: seconds with a fraction, e.g. 1h2m3.004s
    go_text = f"{h}h{m}m{s}.{ms:03d}s"
    assert parse_go_duration(go_text) == pytest.approx(h * 3600 + m * 60 + s + ms / 1000)


# -- RFC 3339 resets -----------------------------------------------------------------------------


def test_rfc3339_resets() -> None:
    assert parse_reset_rfc3339("2025-03-01T12:00:30Z", NOW) == 30.0
    assert parse_reset_rfc3339("2025-03-01T12:00:00.250Z", NOW) == 0.25
    assert parse_reset_rfc3339("2025-03-01T13:00:05+01:00", NOW) == 5.0
    assert parse_reset_rfc3339("2025-03-01t12:00:01z", NOW) == 1.0
    assert parse_reset_rfc3339("2025-03-01T11:59:00Z", NOW) == 0.0  # already passed
    assert parse_reset_rfc3339("2025-03-01T12:00:10Z", NOW.replace(tzinfo=None)) == 10.0
    assert parse_reset_rfc3339("in a minute", NOW) is None


@given(st.integers(0, 10**7), st.integers(-12, 12))
def test_rfc3339_reset_is_the_distance_from_now(millis: int, offset_h: int) -> None:
    tz = timezone(timedelta(hours=offset_h))
    when = (NOW + timedelta(milliseconds=millis)).astimezone(tz)
    assert parse_reset_rfc3339(when.isoformat(), NOW) == pytest.approx(millis / 1000)


# -- parse_rate_limit_headers ---------------------------------------------------------------------

OPENAI = {
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-reset-requests": "120ms",
    "x-ratelimit-limit-tokens": "30000",
    "x-ratelimit-remaining-tokens": "29000",
    "x-ratelimit-reset-tokens": "6m0s",
}


def test_openai_headers() -> None:
    assert parse_rate_limit_headers("openai", OPENAI) == RateLimitInfo(
        limit_requests=500,
        remaining_requests=499,
        reset_requests_s=0.12,
        limit_tokens=30000,
        remaining_tokens=29000,
        reset_tokens_s=360.0,
    )


def test_httpx_headers_with_any_case_work() -> None:
    headers = httpx.Headers({k.upper(): v for k, v in OPENAI.items()} | {"Retry-After": "2"})
    info = parse_rate_limit_headers("openai", headers)
    assert info is not None
    assert (info.remaining_tokens, info.reset_tokens_s, info.retry_after_s) == (29000, 360.0, 2.0)


def test_anthropic_headers_use_the_combined_token_family() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": "2025-03-01T12:00:20Z",
        "anthropic-ratelimit-tokens-limit": "90000",
        "anthropic-ratelimit-tokens-remaining": "1000",
        "anthropic-ratelimit-tokens-reset": "2025-03-01T12:00:03Z",
        "anthropic-ratelimit-output-tokens-remaining": "5",
        "retry-after": "20",
    }
    assert parse_rate_limit_headers("anthropic", headers, NOW) == RateLimitInfo(
        limit_requests=50,
        remaining_requests=0,
        reset_requests_s=20.0,
        limit_tokens=90000,
        remaining_tokens=1000,
        reset_tokens_s=3.0,
        retry_after_s=20.0,
    )


def test_anthropic_input_and_output_families_give_the_tighter() -> None:
    headers = {
        "anthropic-ratelimit-input-tokens-limit": "400000",
        "anthropic-ratelimit-input-tokens-remaining": "350000",
        "anthropic-ratelimit-input-tokens-reset": "2025-03-01T12:00:01Z",
        "anthropic-ratelimit-output-tokens-limit": "80000",
        "anthropic-ratelimit-output-tokens-remaining": "2000",
        "anthropic-ratelimit-output-tokens-reset": "2025-03-01T12:00:09Z",
    }
    info = parse_rate_limit_headers("anthropic", headers, NOW)
    assert info == RateLimitInfo(limit_tokens=80000, remaining_tokens=2000, reset_tokens_s=9.0)
    only_input = {k: v for k, v in headers.items() if "input" in k}
    info = parse_rate_limit_headers("anthropic", only_input, NOW)
    assert info is not None and info.remaining_tokens == 350000


def test_nothing_relevant_gives_none_and_retry_after_alone_counts() -> None:
    assert parse_rate_limit_headers("openai", {"content-type": "application/json"}) is None
    assert parse_rate_limit_headers("anthropic", {}, NOW) is None
    # Each provider's parser reads only its own family.
    assert parse_rate_limit_headers("anthropic", OPENAI, NOW) is None
    assert parse_rate_limit_headers("openai", {"retry-after-ms": "1500"}) == RateLimitInfo(
        retry_after_s=1.5
    )


def test_garbage_values_are_dropped_not_raised() -> None:
    headers = {
        "x-ratelimit-limit-requests": "lots",
        "x-ratelimit-remaining-requests": "-3",
        "x-ratelimit-reset-requests": "soon",
        "x-ratelimit-remaining-tokens": "1200.0",
    }
    assert parse_rate_limit_headers("openai", headers) == RateLimitInfo(remaining_tokens=1200)
