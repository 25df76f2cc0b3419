"""Prompt caching: where the cache breakpoints go, the first request sent alone, and what the
cache saves on a whole job against the fake provider (prices from ``pipeline.job.pricing``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
import structlog

import pipeline
from pipeline.cli import main
from pipeline.extract import anthropic_cache_minimum
from pipeline.fake import FakeConfig, running_fake_provider
from pipeline.job import Job, RequestSpec, parse_job
from pipeline.job.pricing import cost_usd, lookup_price
from pipeline.providers.anthropic import messages_body
from pipeline.providers.openai import chat_body
from pipeline.records import Row, Usage
from pipeline.render import Renderer, estimate_tokens
from pipeline.store import Store

ROOT = Path(__file__).resolve().parent.parent
EPHEMERAL = {"type": "ephemeral"}
SONNET = "claude-sonnet-4-5"
HAIKU = "claude-3-5-haiku-latest"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def system_of(tokens: int) -> str:
    """A system prompt the renderer estimates at about ``tokens`` tokens."""
    sentence = "Read the review and answer with one word that names its sentiment. "
    text = sentence * (tokens * 4 // len(sentence) + 1)
    return text[: tokens * 4]


def request_spec(**overrides: Any) -> RequestSpec:
    values: dict[str, Any] = {
        "provider": "anthropic",
        "model": SONNET,
        "prompt": "Review: {text}",
        "system": "You classify reviews.",
        "max_tokens": 5,
        **overrides,
    }
    return RequestSpec(**values)


def body_for(spec: RequestSpec) -> dict[str, Any]:
    request = Renderer(spec).render(Row("r1", {"text": "great kettle"}, "in.jsonl", 1))
    return messages_body(request) if spec.provider == "anthropic" else chat_body(request)


# -- the rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "minimum"),
    [
        ("claude-sonnet-4-5", 1024),
        ("claude-sonnet-4-20250514", 1024),
        ("claude-3-7-sonnet-latest", 1024),
        ("claude-opus-4-1", 1024),
        ("claude-3-opus-latest", 1024),
        ("claude-3-5-haiku-latest", 2048),
        ("claude-3-haiku-20240307", 2048),
        ("claude-sonnet-4-6", 2048),
        ("claude-haiku-4-5", 4096),
        ("claude-opus-4-5-20251101", 4096),
    ],
)
def test_the_minimum_cacheable_prefix_follows_anthropics_table(model: str, minimum: int) -> None:
    assert anthropic_cache_minimum(model) == minimum


def test_a_short_prompt_is_sent_exactly_as_before() -> None:
    body = body_for(request_spec(temperature=0.0))
    assert body == {
        "model": SONNET,
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "Review: great kettle"}],
        "system": "You classify reviews.",
        "temperature": 0.0,
    }
    assert not Renderer(request_spec()).warm_cache


def test_a_long_system_prompt_is_marked_for_the_cache() -> None:
    system = system_of(1100)
    assert estimate_tokens(system) >= 1024
    body = body_for(request_spec(system=system))
    assert body["system"] == [{"type": "text", "text": system, "cache_control": EPHEMERAL}]
    assert body["messages"] == [{"role": "user", "content": "Review: great kettle"}]
    assert Renderer(request_spec(system=system)).warm_cache


def test_haiku_needs_twice_the_prefix() -> None:
    shorter = body_for(request_spec(model=HAIKU, system=system_of(1500)))
    assert isinstance(shorter["system"], str)
    longer = body_for(request_spec(model=HAIKU, system=system_of(2100)))
    assert longer["system"][0]["cache_control"] == EPHEMERAL


def test_the_tool_schema_counts_towards_the_prefix() -> None:
    schema = {
        "type": "object",
        "properties": {
            f"field_{i}": {"type": "string", "description": "x" * 60} for i in range(12)
        },
    }
    system = system_of(900)
    assert isinstance(body_for(request_spec(system=system))["system"], str)
    marked = body_for(request_spec(system=system, schema=schema))
    assert marked["system"][0]["cache_control"] == EPHEMERAL
    assert marked["tools"][0]["input_schema"] == schema  # tools come first in the cached prefix


def test_the_last_example_is_marked_when_everything_up_to_it_is_long_enough() -> None:
    examples = (("first review " * 300, "positive"), ("second review " * 300, "negative"))
    body = body_for(request_spec(system="Short.", examples=examples))
    assert body["system"] == "Short."  # the system prompt alone is too short to mark
    assert body["messages"] == [
        {"role": "user", "content": examples[0][0]},
        {"role": "assistant", "content": "positive"},
        {"role": "user", "content": examples[1][0]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "negative", "cache_control": EPHEMERAL}],
        },
        {"role": "user", "content": "Review: great kettle"},
    ]
    both = body_for(request_spec(system=system_of(1100), examples=examples))
    assert both["system"][0]["cache_control"] == EPHEMERAL
    assert both["messages"][3]["content"][0]["cache_control"] == EPHEMERAL
    short = body_for(request_spec(system="Short.", examples=(("a", "b"),)))
    assert short["messages"][1] == {"role": "assistant", "content": "b"}


def test_openai_gets_no_markers_but_its_stable_prefix_first() -> None:
    spec = request_spec(
        provider="openai", model="gpt-4o-mini", system=system_of(1100), examples=(("u", "a"),)
    )
    body = body_for(spec)
    assert "cache_control" not in orjson.dumps(body).decode()
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
    assert Renderer(spec).warm_cache
    assert not Renderer(request_spec(provider="openai", model="gpt-4o-mini")).warm_cache


# -- the first request goes alone --------------------------------------------------------------


def _message(text: str = "positive") -> bytes:
    return orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": SONNET,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 10, "output_tokens": 1},
        }
    )


def _job(tmp_path: Path, system: str, *, rows: int = 12, concurrency: int = 8) -> Job:
    (tmp_path / "in.jsonl").write_bytes(
        b"".join(
            orjson.dumps({"id": f"r{i:03d}", "text": f"review {i}"}) + b"\n" for i in range(rows)
        )
    )
    return parse_job(
        f"""name = "cached"
[input]
path = "{tmp_path / "in.jsonl"}"
id = "id"
[request]
provider = "anthropic"
model = "{SONNET}"
system = "{system}"
prompt = "Review: {{text}}"
max_tokens = 5
[limits]
concurrency = {concurrency}
timeout_s = 5
[output]
db = "{tmp_path / "out.duckdb"}"
"""
    )


def _overlaps_with_the_first(tmp_path: Path, system: str) -> int:
    """How many requests arrived while the first one was still unanswered."""
    job = _job(tmp_path, system)
    state = {"seen": 0, "first_answered": False, "early": 0}

    async def handler(request: httpx.Request) -> httpx.Response:
        state["seen"] += 1
        first = state["seen"] == 1
        if not first and not state["first_answered"]:
            state["early"] += 1
        await anyio.sleep(0.05 if first else 0.001)
        if first:
            state["first_answered"] = True
        return httpx.Response(200, content=_message())

    async def go() -> None:
        outcome = await pipeline.arun(
            job, transport=httpx.MockTransport(handler), base_url="http://mock", api_key="k"
        )
        assert outcome.stats.rows_ok == 12

    anyio.run(go)
    return state["early"]


def test_the_first_request_of_a_cached_prefix_goes_alone(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert _overlaps_with_the_first(tmp_path / "a", system_of(1100)) == 0
    # Without a cacheable prefix the workers start together (so the check above can fail).
    assert _overlaps_with_the_first(tmp_path / "b", "Short.") > 0


# -- what the cache saves, on the fake provider -------------------------------------------------


def _uncached_cost(rows: list[dict[str, Any]], model: str, provider: str) -> float:
    price = lookup_price(provider, model)
    return sum(
        cost_usd(price, Usage(input_tokens=r["input_tokens"], output_tokens=r["output_tokens"]))
        or 0.0
        for r in rows
    )


@pytest.mark.anyio
async def test_a_long_system_prompt_is_written_once_then_read(tmp_path: Path) -> None:
    job = _job(tmp_path, system_of(1200), rows=30, concurrency=16)
    async with running_fake_provider(FakeConfig()) as fake:
        outcome = await pipeline.arun(job, fake=fake)
        accounting = fake.accounting()
    assert outcome.state is pipeline.RunState.COMPLETED and outcome.stats.rows_ok == 30
    with Store(job.output.db, read_only=True) as store:
        rows = store.query(
            "SELECT row_id, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, "
            "cost_usd FROM results ORDER BY finished_at, row_id"
        )
    first, rest = rows[0], rows[1:]
    assert first["cache_write_tokens"] > 1024 and first["cache_read_tokens"] == 0
    assert all(r["cache_write_tokens"] == 0 for r in rest)
    assert all(r["cache_read_tokens"] == first["cache_write_tokens"] for r in rest)
    assert accounting["tokens"]["cache_write"] == first["cache_write_tokens"]
    cached = sum(r["cost_usd"] for r in rows)
    uncached = _uncached_cost(rows, SONNET, "anthropic")
    assert cached < 0.5 * uncached
    # The first row pays the write premium (1.25x), every other row reads at 0.1x.
    price = lookup_price("anthropic", SONNET)
    assert price is not None and price.cache_write_mtok and price.cache_read_mtok
    assert first["cost_usd"] > _uncached_cost([first], SONNET, "anthropic")


def test_the_demo_job_caches_its_prefix_and_costs_less(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    subset = tmp_path / "invoices.jsonl"
    lines = (ROOT / "data" / "invoices.jsonl").read_bytes().splitlines(True)[:60]
    subset.write_bytes(b"".join(lines))
    db = tmp_path / "demo.duckdb"
    argv = ["run", "jobs/invoice_extraction.toml", "--fake", "--db", str(db), "--quiet"]
    assert main([*argv, "--input", str(subset)]) == 0
    with Store(db, read_only=True) as store:
        rows = store.query(
            "SELECT input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd "
            "FROM results ORDER BY finished_at"
        )
    writes = sum(r["cache_write_tokens"] for r in rows)
    reads = sum(r["cache_read_tokens"] for r in rows)
    assert rows[0]["cache_write_tokens"] == writes > 0  # one write, by the first row
    assert reads == writes * (len(rows) - 1)
    cached = sum(r["cost_usd"] for r in rows)
    uncached = _uncached_cost(rows, SONNET, "anthropic")
    assert cached < 0.6 * uncached
    print(
        f"\ndemo, 60 rows: {writes:,} tokens written to the cache, {reads:,} read; "
        f"${cached:.4f} with the cache, ${uncached:.4f} without"
    )


@pytest.mark.anyio
async def test_openai_reports_cached_tokens_for_a_long_stable_prefix(tmp_path: Path) -> None:
    job = _job(tmp_path, system_of(1300), rows=10)
    text = job.text.replace('provider = "anthropic"', 'provider = "openai"')
    job = parse_job(text.replace(SONNET, "gpt-4o-mini"))
    async with running_fake_provider(FakeConfig()) as fake:
        assert (await pipeline.arun(job, fake=fake)).stats.rows_ok == 10
    with Store(job.output.db, read_only=True) as store:
        reads = [
            r["cache_read_tokens"]
            for r in store.query("SELECT cache_read_tokens FROM results ORDER BY finished_at")
        ]
    assert reads[0] == 0 and all(n >= 1024 for n in reads[1:])


def test_the_fake_caches_up_to_a_breakpoint_inside_the_messages() -> None:
    from pipeline.fake._anthropic import parse_messages_request

    system = [{"type": "text", "text": "rules " * 900, "cache_control": {"type": "ephemeral"}}]
    example = {"role": "user", "content": [{"type": "text", "text": "example " * 400}]}
    answer = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "answer " * 400, "cache_control": {"type": "ephemeral"}}
        ],
    }
    row = {"role": "user", "content": "the row"}
    body = {"model": "m", "max_tokens": 5, "system": system}
    system_only = parse_messages_request({**body, "messages": [row]})
    with_examples = parse_messages_request({**body, "messages": [example, answer, row]})
    assert 0 < system_only.cache_prefix_tokens < with_examples.cache_prefix_tokens
    assert with_examples.cache_prefix_tokens < with_examples.input_tokens  # the row is not cached
