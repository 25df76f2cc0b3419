"""Rendering rows into requests: templates, token estimates, version hashes and request keys."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import ConfigError, InputError
from pipeline.job import RequestSpec
from pipeline.records import Row
from pipeline.render import (
    MESSAGE_OVERHEAD_TOKENS,
    REPLY_OVERHEAD_TOKENS,
    Renderer,
    estimate_tokens,
    prompt_hash,
    request_key,
)

ROOT = Path(__file__).resolve().parents[1]

SPEC = RequestSpec(
    provider="openai",
    model="gpt-4o-mini",
    prompt="Review ({stars} stars): {text}\nAnswer in {{one}} word.",
    system="You label reviews.",
    max_tokens=16,
    temperature=0.0,
    base_url="http://localhost:8000/v1",
)


def row(fields: dict[str, object], row_id: str = "r17", line: int = 17) -> Row:
    return Row(row_id, fields, "data/reviews.jsonl", line)


# -- estimate_tokens -----------------------------------------------------------------------------


def test_estimate_tokens_examples() -> None:
    assert [estimate_tokens(s) for s in ["", "a", "abcd", "abcde", "x" * 400]] == [0, 1, 1, 2, 100]


@given(st.text(), st.text())
def test_estimate_tokens_grows_with_text(a: str, b: str) -> None:
    assert estimate_tokens(a) <= estimate_tokens(a + b)
    assert (estimate_tokens(a) >= 1) == (a != "")
    if len(a) <= len(b):
        assert estimate_tokens(a) <= estimate_tokens(b)


# -- prompt_hash / request_key -------------------------------------------------------------------


def test_prompt_hash_is_16_hex_and_ignores_base_url() -> None:
    h = prompt_hash(SPEC)
    assert len(h) == 16
    int(h, 16)
    assert prompt_hash(dataclasses.replace(SPEC, base_url=None)) == h
    assert prompt_hash(dataclasses.replace(SPEC, base_url="https://api.openai.com/v1")) == h


@given(
    st.sampled_from(["provider", "model", "prompt", "system", "max_tokens", "temperature"]),
    st.data(),
)
def test_prompt_hash_changes_with_every_part_of_the_version(
    field: str, data: st.DataObject
) -> None:
    new_values: dict[str, st.SearchStrategy[Any]] = {
        "provider": st.just("anthropic"),
        "model": st.text(min_size=1).filter(lambda s: s != SPEC.model),
        "prompt": st.text().filter(lambda s: s != SPEC.prompt),
        "system": st.none() | st.text().filter(lambda s: s != SPEC.system),
        "max_tokens": st.integers(1, 100_000).filter(lambda n: n != SPEC.max_tokens),
        "temperature": st.none() | st.floats(0.01, 2.0),
    }
    overrides: dict[str, Any] = {field: data.draw(new_values[field])}
    changed = dataclasses.replace(SPEC, **overrides)
    assert prompt_hash(changed) != prompt_hash(SPEC)


def test_prompt_hash_tells_no_system_from_empty_system() -> None:
    assert prompt_hash(dataclasses.replace(SPEC, system=None)) != prompt_hash(
        dataclasses.replace(SPEC, system="")
    )


def test_request_key_is_24_hex_and_depends_on_both_parts() -> None:
    k = request_key("r1", "0123456789abcdef")
    assert len(k) == 24
    int(k, 16)
    assert request_key("r1", "0123456789abcdef") == k
    assert request_key("r2", "0123456789abcdef") != k
    assert request_key("r1", "0123456789abcdee") != k


def test_hashes_are_the_same_in_another_process() -> None:
    """Reruns skip paid work only if keys do not depend on the process (e.g. on hash())."""
    code = (
        "from pipeline.job import RequestSpec\n"
        "from pipeline.render import prompt_hash, request_key\n"
        f"h = prompt_hash(RequestSpec(**{dataclasses.asdict(SPEC)!r}))\n"
        "print(h, request_key('r1', h))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    h = prompt_hash(SPEC)
    assert out == [h, request_key("r1", h)]


# -- Renderer ------------------------------------------------------------------------------------


def test_render_fills_the_template_and_carries_the_row() -> None:
    r = Renderer(SPEC)
    req = r.render(row({"id": "r17", "text": "Loved it", "stars": 5, "unused": "x"}))
    assert req.prompt == "Review (5 stars): Loved it\nAnswer in {one} word."
    assert (req.row_id, req.source, req.line) == ("r17", "data/reviews.jsonl", 17)
    assert (req.provider, req.model, req.system) == ("openai", "gpt-4o-mini", "You label reviews.")
    assert (req.max_tokens, req.temperature) == (16, 0.0)
    assert req.prompt_hash == prompt_hash(SPEC) == r.prompt_hash
    assert req.request_key == request_key("r17", req.prompt_hash)
    assert req.est_total_tokens == req.est_input_tokens + 16


def test_est_input_tokens_is_system_plus_prompt_plus_overhead() -> None:
    req = Renderer(SPEC).render(row({"text": "t" * 400, "stars": 1}))
    assert req.est_input_tokens == (
        estimate_tokens(SPEC.system or "")
        + estimate_tokens(req.prompt)
        + 2 * MESSAGE_OVERHEAD_TOKENS
        + REPLY_OVERHEAD_TOKENS
    )
    no_system = Renderer(dataclasses.replace(SPEC, system=None)).render(
        row({"text": "t" * 400, "stars": 1})
    )
    assert no_system.est_input_tokens == (
        estimate_tokens(req.prompt) + MESSAGE_OVERHEAD_TOKENS + REPLY_OVERHEAD_TOKENS
    )
    assert no_system.est_input_tokens < req.est_input_tokens


def test_fields_lists_template_fields_in_order_once() -> None:
    spec = dataclasses.replace(SPEC, prompt="{b} {a} {b!r} {c:>10}")
    assert Renderer(spec).fields == ("b", "a", "c")
    assert Renderer(dataclasses.replace(SPEC, prompt="no fields {{here}}")).fields == ()


def test_missing_field_is_an_input_error_naming_row_field_and_fix() -> None:
    r = Renderer(SPEC)
    with pytest.raises(InputError) as info:
        r.render(row({"id": "r17", "stars": 3, "body": "typo'd column"}))
    err = info.value
    assert err.error_type == "missing_field"
    msg = str(err)
    assert msg.startswith("data/reviews.jsonl line 17 (row r17): no field 'text'")
    assert "[request].prompt" in msg
    assert "add it to the row or change the template" in msg
    assert "body" in msg  # the fields the row does have, to spot a typo


@pytest.mark.parametrize("template", ["{a.b}", "{a[0]}", "x {row.text} y", "{}", "{0}"])
def test_attribute_index_and_positional_fields_are_refused(template: str) -> None:
    with pytest.raises(ConfigError) as info:
        Renderer(dataclasses.replace(SPEC, prompt=template))
    assert info.value.key == "request.prompt"


@pytest.mark.parametrize("template", ["{text", "text}", "{text!x}"])
def test_malformed_template_is_refused(template: str) -> None:
    with pytest.raises(ConfigError) as info:
        Renderer(dataclasses.replace(SPEC, prompt=template))
    assert info.value.key == "request.prompt"


def test_objects_and_lists_are_written_as_json() -> None:
    r = Renderer(dataclasses.replace(SPEC, prompt="{meta} | {tags} | {n} | {s}"))
    req = r.render(row({"meta": {"a": 1, "b": "é"}, "tags": ["x", 2], "n": 1.5, "s": "plain"}))
    assert req.prompt == '{"a":1,"b":"é"} | ["x",2] | 1.5 | plain'


def test_format_specs_work_and_bad_values_are_input_errors() -> None:
    r = Renderer(dataclasses.replace(SPEC, prompt="score={score:.2f}"))
    assert r.render(row({"score": 0.5})).prompt == "score=0.50"
    with pytest.raises(InputError) as info:
        r.render(row({"score": "high"}))
    assert info.value.error_type == "bad_field"
    assert "data/reviews.jsonl line 17" in str(info.value)


@given(st.text(), st.text(min_size=1, max_size=20))
def test_render_never_rewrites_field_text(text: str, row_id: str) -> None:
    r = Renderer(dataclasses.replace(SPEC, prompt="<<{text}>>", system=None))
    req = r.render(Row(row_id, {"text": text}, "", 0))
    assert req.prompt == f"<<{text}>>"
    assert req.request_key == request_key(row_id, r.prompt_hash)
