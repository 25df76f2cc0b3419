"""Property tests over what others write: job files, input rows and provider answers.

Whatever hypothesis makes of them, the outcome is one of the pipeline's own: a job file is a
``Job`` or one ``ConfigError`` line; an input file is ``Row``s and ``BadRow``s (or one
``ConfigError`` line for a file that cannot be read at all); a row renders to a ``Request`` or
an ``InputError``; a provider's answer is a reply with counts that are counts, or a classified
``ProviderError``. Never a ``TypeError``, ``OverflowError``, ``MemoryError`` or traceback.

Profiles: ``ci`` (the default, a few seconds in all) and ``thorough`` (many more examples):
``PIPELINE_HYPOTHESIS=thorough pytest tests/test_properties.py``.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError, InputError, PipelineError, ProviderError
from pipeline.job import JOB_KEYS, InputSpec, RequestSpec, parse_job
from pipeline.limits.headers import parse_rate_limit_headers
from pipeline.limits.retry import classify_http_error
from pipeline.providers._answers import MAX_TOKEN_COUNT
from pipeline.providers._base import parse_json_body
from pipeline.providers.anthropic import parse_message
from pipeline.providers.gemini import parse_generate
from pipeline.providers.openai import parse_chat_completion
from pipeline.records import BadRow, Row
from pipeline.render import Renderer
from pipeline.sources import iter_row_chunks

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
PROFILE = settings.get_profile(os.environ.get("PIPELINE_HYPOTHESIS", "ci"))


def one_line(error: BaseException) -> None:
    text = str(error)
    assert text and "\n" not in text and "Traceback" not in text, text


# -- values as TOML and JSON hold them -----------------------------------------------------------

huge_ints = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(10**400)]),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, math.inf, -math.inf, math.nan]),
)
texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "{text}",
            "{}",
            "{text:>{w}}",
            "{a.b}",
            "{x!z}",
            "http://u:p@h/v1",
            "https://",
            "http://[::1",
            "http://h:99999/",
            "/dev/zero",
            "\0",
            "../../etc/passwd",
            "ray://a:b@head:10001",
        ]
    ),
)
scalars = st.one_of(st.booleans(), huge_ints, floats, texts)
toml_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def toml_text(doc: Mapping[str, Any]) -> str:
    """A TOML document holding ``doc`` (tables of values), as a person would write it."""
    top = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    tables = [
        f"[{_key(name)}]\n" + "".join(f"{_key(k)} = {_value(v)}\n" for k, v in table.items())
        for name, table in doc.items()
        if isinstance(table, dict)
    ]
    return "\n".join(top) + "\n" + "\n".join(tables)


def _key(key: str) -> str:
    return orjson.dumps(key).decode()


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"


VALID: dict[str, Any] = {
    "name": "p",
    "input": {"path": "rows.jsonl"},
    "request": {"provider": "openai", "model": "gpt-4o-mini", "prompt": "{text}"},
}
ALL_KEYS = [(table, key) for table, keys in JOB_KEYS.items() for key in keys if table != ""]
ALL_KEYS.remove(("request", "schema"))  # a path that is read: not for random text


def _parse(text: str) -> None:
    try:
        parse_job(text, path="random.toml")
    except ConfigError as exc:
        one_line(exc)


@PROFILE
@given(st.text(max_size=200))
def test_any_text_is_a_job_or_one_config_error_line(text: str) -> None:
    _parse(text)


@PROFILE
@given(
    st.lists(st.tuples(st.sampled_from(ALL_KEYS), toml_values), min_size=1, max_size=4),
    st.dictionaries(st.text(max_size=6), toml_values, max_size=2),
)
def test_a_valid_job_with_random_values_is_a_job_or_one_config_error_line(
    changes: list[tuple[tuple[str, str], Any]], extra: dict[str, Any]
) -> None:
    doc: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in VALID.items()}
    for (table, key), value in changes:
        if "." in table:  # [request.fallback]
            outer, inner = table.split(".")
            doc.setdefault(outer, {}).setdefault(inner, {})[key] = value
        else:
            section = doc.setdefault(table, {})
            if isinstance(section, dict):
                section[key] = value
    doc["request"].update({k: v for k, v in extra.items() if k not in doc["request"]})
    _parse(toml_text(doc))


# -- input rows ---------------------------------------------------------------------------------


def json_bytes(value: Any) -> bytes:
    """``value`` as JSON, as any writer might: integers past 64 bits, NaN and all."""
    import json

    return json.dumps(value).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
lines = st.one_of(
    st.binary(max_size=60),
    json_values.map(json_bytes),
    st.dictionaries(st.sampled_from(["id", "text", "path", "w"]), json_values, max_size=4).map(
        json_bytes
    ),
)


TEMPLATES = ["{text}", "{text!r} {id}", "{text:>8}", "{id:.3}", "{text:,}", "{w:%Y}"]


def _read(path: Path, id_field: str | None) -> list[Row | BadRow]:
    items: list[Row | BadRow] = []
    try:
        for chunk in iter_row_chunks(InputSpec(str(path), id=id_field), chunk_size=7):
            items.extend(chunk)
    except ConfigError as exc:
        one_line(exc)
    for item in items:
        assert isinstance(item, Row | BadRow)
        assert isinstance(item.row_id, str) and item.row_id
    return items


def _render_all(items: list[Row | BadRow], template: str) -> None:
    renderer = Renderer(RequestSpec(provider="openai", model="m", prompt=template))
    for item in items:
        if isinstance(item, Row):
            try:
                request = renderer.render(item)
            except InputError as exc:
                one_line(exc)
            else:
                assert isinstance(request.prompt, str)
                assert len(request.prompt) <= 100_000 * 2 + 10_000


@PROFILE
@given(
    st.lists(lines, max_size=12),
    st.sampled_from([None, "id", "text"]),
    st.sampled_from([".jsonl", ".jsonl.gz", ".ndjson"]),
    st.sampled_from(TEMPLATES),
)
def test_any_jsonl_bytes_are_rows_bad_rows_or_one_config_error_line(
    content: list[bytes], id_field: str | None, suffix: str, template: str
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"in{suffix}"
        path.write_bytes(b"\n".join(content))
        items = _read(path, id_field)
        _render_all(items, template)


arrow_columns = st.sampled_from(
    [
        ("int64", st.integers(-(2**63), 2**63 - 1) | st.none()),
        ("float64", st.floats() | st.none()),
        ("string", st.text(max_size=10) | st.none()),
        ("binary", st.binary(max_size=10) | st.none()),
        ("bool", st.booleans() | st.none()),
        ("list", st.lists(st.integers(-5, 5), max_size=3) | st.none()),
        ("struct", st.fixed_dictionaries({"a": st.integers(0, 9)}) | st.none()),
        ("timestamp", st.datetimes(dt.datetime(1970, 1, 2), dt.datetime(2200, 1, 1)) | st.none()),
        ("decimal", st.decimals(-(10**6), 10**6, places=2, allow_nan=False) | st.none()),
    ]
)


@st.composite
def parquet_tables(draw: Callable[..., Any]) -> dict[str, list[Any]]:
    rows = draw(st.integers(0, 6))
    columns: dict[str, list[Any]] = {}
    for name in draw(st.lists(st.sampled_from(["id", "text", "w", "x"]), unique=True, min_size=1)):
        _kind, values = draw(arrow_columns)
        columns[name] = draw(st.lists(values, min_size=rows, max_size=rows))
    return columns


@PROFILE
@given(parquet_tables(), st.sampled_from([None, "id"]), st.sampled_from(TEMPLATES))
def test_any_parquet_values_are_rows_bad_rows_or_one_config_error_line(
    columns: dict[str, list[Any]], id_field: str | None, template: str
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.table(
            {
                k: pa.array(v, type=pa.decimal128(12, 2)) if _decimals(v) else pa.array(v)
                for k, v in columns.items()
            }
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return  # not a table Arrow writes
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "in.parquet"
        pq.write_table(table, path)
        items = _read(path, id_field)
        _render_all(items, template)


def _decimals(values: list[Any]) -> bool:
    return any(isinstance(v, Decimal) for v in values)


# -- provider answers ---------------------------------------------------------------------------

OPENAI = {
    "choices": [{"message": {"content": "hi", "refusal": None}, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}
ANTHROPIC = {
    "content": [{"type": "text", "text": "hi"}, {"type": "tool_use", "input": {"a": 1}}],
    "stop_reason": "end_turn",
    "usage": {
        "input_tokens": 5,
        "output_tokens": 2,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    },
}
GEMINI = {
    "candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
    "usageMetadata": {"promptTokenCount": "5", "candidatesTokenCount": 2},
}
PARSERS: dict[str, tuple[Callable[[Mapping[str, Any]], Any], dict[str, Any]]] = {
    "openai": (parse_chat_completion, OPENAI),
    "anthropic": (parse_message, ANTHROPIC),
    "gemini": (parse_generate, GEMINI),
}
answer_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1, 2**63, 10**12, 1.5, 1e400, -0.0, "12", "1e3", "", "-3", "9" * 30]),
    st.floats(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


def _replaced(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    body = copy.deepcopy(body)
    if not path:
        return value
    here = body
    for step in path[:-1]:
        here = here[step]
    here[path[-1]] = value
    return body


def _check_answer(provider: str, parse: Callable[[Mapping[str, Any]], Any], body: Any) -> None:
    try:
        if not isinstance(body, dict):
            body = parse_json_body(provider, 200, json_bytes(body))
        text, finish, usage = parse(body)
    except ProviderError as exc:
        assert exc.transient and exc.error_type == "bad_response", exc
        one_line(exc)
        return
    assert isinstance(text, str)
    assert finish is None or isinstance(finish, str)
    for count in (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    ):
        assert isinstance(count, int) and 0 <= count <= 3 * MAX_TOKEN_COUNT


@PROFILE
@pytest.mark.parametrize("provider", sorted(PARSERS))
@given(data=st.data())
def test_a_malformed_answer_is_a_bad_response_never_a_crash(
    provider: str, data: st.DataObject
) -> None:
    parse, good = PARSERS[provider]
    path = data.draw(st.sampled_from([*_paths(good), ()]))
    body = _replaced(good, path, data.draw(answer_values))
    _check_answer(provider, parse, body)


@PROFILE
@pytest.mark.parametrize("provider", sorted(PARSERS))
@given(cut=st.integers(0, 400), noise=st.binary(max_size=8))
def test_a_truncated_answer_is_a_bad_response(provider: str, cut: int, noise: bytes) -> None:
    parse, good = PARSERS[provider]
    raw = orjson.dumps(good)[:cut] + noise
    try:
        body = parse_json_body(provider, 200, raw)
        parse(body)
    except ProviderError as exc:
        assert exc.transient, exc
        one_line(exc)


@PROFILE
@pytest.mark.parametrize("provider", sorted(PARSERS))
@given(
    status=st.integers(100, 599),
    body=st.one_of(st.binary(max_size=80), json_values.map(json_bytes)),
    headers=st.dictionaries(
        st.sampled_from(
            [
                "retry-after",
                "retry-after-ms",
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-requests",
                "anthropic-ratelimit-requests-limit",
                "anthropic-ratelimit-tokens-reset",
                "content-type",
            ]
        ),
        st.one_of(
            st.text(max_size=12),
            st.sampled_from(["1e400", "-5", "nan", "inf", "99999999999999999999", "1h2m3s"]),
        ),
        max_size=4,
    ),
)
def test_an_error_answer_is_classified_with_finite_waits(
    provider: str, status: int, body: bytes, headers: dict[str, str]
) -> None:
    error = classify_http_error(provider, status, body, headers)
    assert isinstance(error, ProviderError) and isinstance(error, PipelineError)
    assert error.error_type
    assert not (error.transient and error.fatal)
    if error.retry_after is not None:
        assert math.isfinite(error.retry_after) and error.retry_after >= 0
    info = parse_rate_limit_headers(provider, headers)
    if info is not None:
        for value in vars(info).values() if hasattr(info, "__dict__") else _fields(info):
            if isinstance(value, float):
                assert not math.isnan(value)


def _fields(info: Any) -> list[Any]:
    return [getattr(info, name) for name in getattr(info, "__slots__", ())]
