"""The fake provider's pure parts: answers, token estimates, schema examples, buckets, knobs."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from pipeline.fake import FakeConfig
from pipeline.fake._answers import (
    NEGATIVE_CUES,
    POSITIVE_CUES,
    content_text,
    estimate_tokens,
    sentiment,
    truncate_to_tokens,
)
from pipeline.fake._cache import PromptCache
from pipeline.fake._config import config_from_mapping
from pipeline.fake._limits import RateLimits, go_duration, rfc3339_after
from pipeline.fake._schema import example_for_schema

# -- token estimate -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("", 0),
        (" ", 1),
        ("hello", 2),
        ("a b c d e", 5),  # short words: one token each, more than 9 chars / 4
        ("internationalization", 5),
        ("x" * 400, 100),
    ],
)
def test_estimate_tokens_examples(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


@given(st.text(), st.text())
def test_estimate_tokens_never_shrinks_as_text_grows(text: str, more: str) -> None:
    assert estimate_tokens(text) <= estimate_tokens(text + more)


@given(st.text())
def test_estimate_tokens_is_about_four_chars_and_at_least_one_per_word(text: str) -> None:
    tokens = estimate_tokens(text)
    assert tokens >= len(text) / 4
    assert tokens >= len(text.split())
    assert tokens <= max(len(text.split()), len(text) // 4 + 1)


@given(st.text(), st.integers(min_value=0, max_value=50))
def test_truncate_to_tokens_keeps_the_longest_prefix_within_the_limit(
    text: str, limit: int
) -> None:
    cut = truncate_to_tokens(text, limit)
    assert text.startswith(cut)
    assert estimate_tokens(cut) <= limit
    if cut != text:
        assert estimate_tokens(text[: len(cut) + 1]) > limit


# -- sentiment ------------------------------------------------------------------------------------


@pytest.mark.parametrize("word", sorted(POSITIVE_CUES))
def test_each_positive_cue_word_makes_a_positive_answer(word: str) -> None:
    assert sentiment(f"The blender was {word.upper()}!") == "positive"


@pytest.mark.parametrize("word", sorted(NEGATIVE_CUES))
def test_each_negative_cue_word_makes_a_negative_answer(word: str) -> None:
    assert sentiment(f"The blender was ({word}).") == "negative"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Good price, but it arrived broken and the manual is terrible.", "negative"),
        ("Bad box, great blender, love it.", "positive"),
        ("Good motor, bad lid.", "neutral"),
        ("It is a blender. It blends.", "neutral"),
        ("Goodness, what a badge.", "neutral"),  # cue words only count whole
        ("", "neutral"),
    ],
)
def test_sentiment_counts_cue_words(text: str, expected: str) -> None:
    assert sentiment(text) == expected


def test_content_text_reads_strings_and_text_parts() -> None:
    parts = [
        {"type": "text", "text": "great"},
        {"type": "image_url"},
        {"type": "text", "text": "!"},
    ]
    assert content_text("plain") == "plain"
    assert content_text(parts) == "great\n!"
    assert content_text(None) == ""


# -- schema-valid examples ------------------------------------------------------------------------

_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
_SCALARS = st.one_of(st.integers(-1000, 1000), st.text(max_size=8), st.booleans(), st.none())


@st.composite
def _integer_schemas(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.integers(-10_000, 10_000))
    high = draw(st.integers(low, low + 1000))
    style = draw(st.sampled_from(["inclusive", "exclusive", "low", "high", "none"]))
    schema: dict[str, Any] = {"type": "integer"}
    if style == "inclusive":
        schema.update(minimum=low, maximum=high)
    elif style == "exclusive":
        schema.update(exclusiveMinimum=low - 1, exclusiveMaximum=high + 1)
    elif style == "low":
        schema["minimum"] = low
    elif style == "high":
        schema["maximum"] = high
    if draw(st.booleans()):
        step = draw(st.integers(1, 7))
        if style in ("inclusive", "exclusive") and high - low < step:
            schema.pop("maximum", None)
            schema.pop("exclusiveMaximum", None)
        schema["multipleOf"] = step
    return schema


@st.composite
def _number_schemas(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.floats(-1e6, 1e6, allow_nan=False))
    width = draw(st.floats(1e-3, 1e4))
    high = low + width
    style = draw(st.sampled_from(["inclusive", "exclusive", "low", "high", "none"]))
    schema: dict[str, Any] = {"type": "number"}
    if style == "inclusive":
        schema.update(minimum=low, maximum=high)
    elif style == "exclusive":
        schema.update(exclusiveMinimum=low, exclusiveMaximum=high)
    elif style == "low":
        schema["minimum"] = low
    elif style == "high":
        schema["maximum"] = high
    if width >= 1 and draw(st.booleans()):
        schema["multipleOf"] = draw(st.sampled_from([0.5, 0.25, 1, 2]))
        if style in ("inclusive", "exclusive") and width < 4:
            schema.pop("maximum", None)
            schema.pop("exclusiveMaximum", None)
    return schema


@st.composite
def _string_schemas(draw: st.DrawFn) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    fmt = draw(st.sampled_from([None, "date-time", "date", "email", "uuid", "uri", "ipv4"]))
    if fmt is not None:
        schema["format"] = fmt
        return schema
    if draw(st.booleans()):
        low = draw(st.integers(0, 30))
        schema["minLength"] = low
        if draw(st.booleans()):
            schema["maxLength"] = draw(st.integers(low, low + 30))
    return schema


_LEAVES = st.one_of(
    _integer_schemas(),
    _number_schemas(),
    _string_schemas(),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.lists(_SCALARS, min_size=1, max_size=5, unique=True).map(lambda e: {"enum": e}),
    _SCALARS.map(lambda value: {"const": value}),
    st.just({}),
)


def _objects(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        properties = draw(st.dictionaries(_NAMES, children, max_size=4))
        required = [name for name in properties if draw(st.booleans())]
        schema: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
        if draw(st.booleans()):
            schema["additionalProperties"] = False
        elif draw(st.booleans()):
            schema["minProperties"] = draw(st.integers(0, 6))
        return schema

    return build()


def _arrays(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        low = draw(st.integers(0, 4))
        schema: dict[str, Any] = {"type": "array", "items": draw(children), "minItems": low}
        if draw(st.booleans()):
            schema["maxItems"] = draw(st.integers(low, low + 3))
        return schema

    return build()


_SCHEMAS = st.recursive(
    _LEAVES,
    lambda children: st.one_of(
        _objects(children),
        _arrays(children),
        children.map(lambda s: {"anyOf": [{"type": "null"}, s]}),
        children.map(lambda s: {"allOf": [s]}),
        st.just(
            {"type": "array", "items": {"type": "integer"}, "uniqueItems": True, "minItems": 3}
        ),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_SCHEMAS, st.integers(0, 2**32 - 1))
def test_examples_validate_against_their_schema(schema: dict[str, Any], seed: int) -> None:
    Draft202012Validator.check_schema(schema)
    value = example_for_schema(schema, seed)
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(value)]
    assert errors == [], (schema, value)
    assert example_for_schema(schema, seed) == value  # deterministic


REALISTIC_SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "label": {"type": "string"},
            "reasons": {"type": "array", "items": {"$ref": "#/$defs/reason"}, "minItems": 1},
            "reply": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["label", "reasons", "reply"],
        "additionalProperties": False,
        "$defs": {
            "reason": {
                "type": "object",
                "properties": {
                    "aspect": {"enum": ["price", "quality", "delivery"]},
                    "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "since": {"type": "string", "format": "date"},
                },
                "required": ["aspect", "weight", "since"],
                "additionalProperties": False,
            }
        },
    },
    {
        "type": "object",
        "allOf": [
            {"properties": {"id": {"type": "string", "format": "uuid"}}, "required": ["id"]},
            {"properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5}}},
        ],
    },
    {
        "type": "object",
        "properties": {
            "tree": {"$ref": "#/definitions/node"},
            "tags": {"type": ["array", "null"], "items": {"type": "string"}, "uniqueItems": True},
        },
        "required": ["tree"],
        "definitions": {
            "node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 3},
                    "children": {"type": "array", "items": {"$ref": "#/definitions/node"}},
                },
                "required": ["name"],
            }
        },
    },
]


@pytest.mark.parametrize("schema", REALISTIC_SCHEMAS)
@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_examples_for_realistic_schemas(schema: dict[str, Any], seed: int) -> None:
    Draft202012Validator(schema).validate(example_for_schema(schema, seed))


def test_examples_use_the_sentiment_hint_where_it_fits() -> None:
    schema = {
        "type": "object",
        "properties": {
            "sentiment": {"type": "string"},
            "verdict": {"enum": ["positive", "negative", "neutral"]},
            "comment": {"type": "string"},
        },
    }
    for seed in range(20):
        value = example_for_schema(schema, seed, hint="negative")
        assert value["sentiment"] == "negative"
        assert value["verdict"] == "negative"
    assert len({example_for_schema(schema, seed)["comment"] for seed in range(20)}) > 1


# -- rate limits ----------------------------------------------------------------------------------


def test_request_bucket_refuses_then_refills() -> None:
    limits = RateLimits(requests_per_second=2, tokens_per_second=None, burst_s=1, now=0.0)
    assert limits.acquire(0, now=0.0) is None
    assert limits.acquire(0, now=0.0) is None
    refusal = limits.acquire(0, now=0.0)
    assert refusal is not None
    assert (refusal.kind, refusal.limit_per_minute, refusal.too_large) == ("requests", 120, False)
    assert refusal.retry_after_s == pytest.approx(0.5)
    assert limits.acquire(0, now=0.25) is not None
    assert limits.acquire(0, now=0.5) is None
    headers = limits.openai_headers()
    assert headers == {
        "x-ratelimit-limit-requests": "120",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
    }


def test_token_bucket_charges_cost_and_refuses_without_taking() -> None:
    limits = RateLimits(requests_per_second=10, tokens_per_second=100, burst_s=1, now=0.0)
    assert limits.acquire(70, now=0.0) is None
    refusal = limits.acquire(70, now=0.0)
    assert refusal is not None and refusal.kind == "tokens"
    assert refusal.retry_after_s == pytest.approx(0.4)
    assert refusal.remaining == 30
    assert limits.requests is not None and limits.requests.level == 9  # the refusal took nothing
    too_large = limits.acquire(101, now=10.0)
    assert too_large is not None and too_large.too_large


def test_anthropic_headers_carry_rfc3339_resets() -> None:
    limits = RateLimits(requests_per_second=1, tokens_per_second=50, burst_s=2, now=0.0)
    assert limits.acquire(20, now=0.0) is None
    headers = limits.anthropic_headers(wall_now=1_700_000_000.0)
    assert headers["anthropic-ratelimit-requests-limit"] == "60"
    assert headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "80"
    assert headers["anthropic-ratelimit-requests-reset"] == "2023-11-14T22:13:21Z"
    assert datetime.fromisoformat(headers["anthropic-ratelimit-tokens-reset"]).tzinfo == UTC


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (0.012, "12ms"),
        (0.0004, "1ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (6.596, "6.596s"),
        (360, "6m0s"),
        (179.56, "2m59.56s"),
        (3723, "1h2m3s"),
    ],
)
def test_go_durations(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_rfc3339_after_rounds_up_to_the_second() -> None:
    text = rfc3339_after(1_700_000_000.2, 0.5)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text)
    assert datetime.fromisoformat(text).timestamp() == 1_700_000_001


# -- prompt cache ---------------------------------------------------------------------------------


def test_anthropic_prefix_is_written_then_read_until_it_expires() -> None:
    cache = PromptCache(ttl_s=300)
    assert not cache.anthropic_hit("m", "prefix", now=0.0)
    assert cache.anthropic_hit("m", "prefix", now=100.0)
    assert cache.anthropic_hit("m", "prefix", now=399.0)  # a read refreshes the lifetime
    assert not cache.anthropic_hit("other-model", "prefix", now=399.0)
    assert not cache.anthropic_hit("m", "prefix", now=800.0)


def test_openai_cache_counts_the_shared_prefix_in_steps_of_128() -> None:
    cache = PromptCache(ttl_s=300)
    base = "word " * 1000  # 1250 tokens
    assert cache.openai_cached_tokens("m", base, 1250, now=0.0) == 0
    longer = base + "tail " * 400
    assert cache.openai_cached_tokens("m", longer, 1750, now=1.0) == 1152
    assert cache.openai_cached_tokens("m", longer, 1750, now=2.0) == 1664
    assert cache.openai_cached_tokens("m", "short", 2, now=3.0) == 0
    assert cache.openai_cached_tokens("m", longer, 1750, now=500.0) == 0


# -- knobs ----------------------------------------------------------------------------------------


def test_default_config_is_a_well_behaved_provider() -> None:
    config = FakeConfig()
    assert config.latency_ms == 0 and config.requests_per_second is None
    assert config.error_rate == config.drop_rate == config.hang_rate == 0
    assert not config.auth_fail and not config.quota_exhausted


@pytest.mark.parametrize(
    "knobs",
    [
        {"error_rate": 1.5},
        {"latency_ms": -1},
        {"requests_per_second": 0},
        {"burst_s": 0},
        {"error_status": 200},
        {"hang_s": float("inf")},
    ],
)
def test_config_rejects_impossible_values(knobs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FakeConfig(**knobs)


def test_config_from_mapping_checks_names_and_types() -> None:
    base = FakeConfig()
    changed = config_from_mapping(base, {"error_rate": 1, "requests_per_second": None, "seed": 7})
    assert changed.error_rate == 1.0 and isinstance(changed.error_rate, float)
    assert changed.seed == 7
    assert base.error_rate == 0  # the original is untouched
    with pytest.raises(ValueError, match="unknown fake provider knob"):
        config_from_mapping(base, {"latency": 5})
    with pytest.raises(ValueError, match="auth_fail must be true or false"):
        config_from_mapping(base, {"auth_fail": 1})
    with pytest.raises(ValueError, match="latency_ms must be a number"):
        config_from_mapping(base, {"latency_ms": True})
    with pytest.raises(ValueError, match="seed must be an integer"):
        config_from_mapping(base, {"seed": 1.5})
