from __future__ import annotations

from pathlib import Path

import genai_prices
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import ConfigError
from pipeline.job.pricing import Price, cost_usd, lookup_price, price_from_mapping
from pipeline.records import Usage

# Model names as users write them in job files; genai-prices 0.2.3 knows all of them.
MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4.1-mini"),
    ("openai", "gpt-5"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("anthropic", "claude-sonnet-4-20250514"),
    ("anthropic", "claude-haiku-4-5"),
]

USAGES = [
    Usage(input_tokens=1_000, output_tokens=250),
    Usage(input_tokens=12_345, output_tokens=678, cache_read_tokens=8_000),
    Usage(input_tokens=5_000, output_tokens=1_200, cache_write_tokens=4_096),
    Usage(
        input_tokens=50_000, output_tokens=3_000, cache_read_tokens=30_000, cache_write_tokens=9_000
    ),
    Usage(input_tokens=900, output_tokens=2_000, reasoning_tokens=1_500),
    Usage(),
]


def _reference(provider: str, model: str, usage: Usage, *, batch: bool = False) -> float:
    """What genai-prices itself computes (genai-prices also counts cache tokens in input)."""
    ref = genai_prices.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )
    context = {"processing": "batch"} if batch else None
    calc = genai_prices.calc_price(ref, model, provider_id=provider, price_context=context)
    return float(calc.total_price)


@pytest.mark.parametrize(("provider", "model"), MODELS)
@pytest.mark.parametrize("usage", USAGES)
def test_cost_agrees_with_genai_prices(provider: str, model: str, usage: Usage) -> None:
    price = lookup_price(provider, model)
    assert price is not None
    cost = cost_usd(price, usage)
    assert cost is not None
    assert cost == pytest.approx(_reference(provider, model, usage), abs=1e-9)


def test_tiered_price_uses_the_base_tier_below_the_threshold() -> None:
    # claude-sonnet-4-5 costs more per token once a prompt passes 200k tokens
    price = lookup_price("anthropic", "claude-sonnet-4-5")
    assert price is not None
    usage = Usage(input_tokens=150_000, output_tokens=4_000, cache_read_tokens=100_000)
    ref = _reference("anthropic", "claude-sonnet-4-5", usage)
    assert cost_usd(price, usage) == pytest.approx(ref, abs=1e-9)


def test_price_names_its_source() -> None:
    price = lookup_price("openai", "gpt-4o-mini")
    assert price is not None
    assert f"genai-prices {genai_prices.__version__}" in price.source
    assert "gpt-4o-mini" in price.source


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-unknown-9000"), ("anthropic", "claude-nonexistent"), ("nosuch", "gpt-4o")],
)
def test_unknown_model_or_provider_has_no_price(provider: str, model: str) -> None:
    assert lookup_price(provider, model) is None
    assert lookup_price(provider, model, batch=True) is None


def test_unknown_price_gives_unknown_cost_not_zero() -> None:
    assert cost_usd(None, Usage(input_tokens=10, output_tokens=10)) is None
    assert cost_usd(None, Usage()) is None


def test_batch_halves_every_rate_when_the_package_has_no_batch_rates() -> None:
    standard = lookup_price("anthropic", "claude-sonnet-4-20250514")
    batch = lookup_price("anthropic", "claude-sonnet-4-20250514", batch=True)
    assert standard is not None and batch is not None
    assert batch.input_mtok == standard.input_mtok / 2
    assert batch.output_mtok == standard.output_mtok / 2
    assert batch.cache_read_mtok == pytest.approx((standard.cache_read_mtok or 0) / 2)
    assert batch.cache_write_mtok == pytest.approx((standard.cache_write_mtok or 0) / 2)
    assert "halved for batch" in batch.source
    usage = USAGES[3]
    assert cost_usd(batch, usage) == pytest.approx(cost_usd(standard, usage) / 2)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "gpt-5"), ("anthropic", "claude-haiku-4-5"), ("openai", "gpt-4o-mini")],
)
def test_batch_uses_the_packages_batch_rates(provider: str, model: str) -> None:
    batch = lookup_price(provider, model, batch=True)
    assert batch is not None
    assert "batch rates" in batch.source
    for usage in USAGES:
        cost = cost_usd(batch, usage)
        assert cost == pytest.approx(_reference(provider, model, usage, batch=True), abs=1e-9)


def test_batch_is_half_the_price_for_plain_usage() -> None:
    for provider, model in MODELS:
        standard = lookup_price(provider, model)
        batch = lookup_price(provider, model, batch=True)
        assert standard is not None and batch is not None
        usage = Usage(input_tokens=10_000, output_tokens=2_000)
        half = cost_usd(standard, usage) / 2  # type: ignore[operator]
        assert cost_usd(batch, usage) == pytest.approx(half, abs=1e-12), model


def test_price_from_mapping() -> None:
    price = price_from_mapping({"input_mtok": 1, "output_mtok": 4.5, "cache_read_mtok": 0.1})
    assert price == Price(input_mtok=1.0, output_mtok=4.5, cache_read_mtok=0.1, source="override")
    cost = cost_usd(price, Usage(input_tokens=2_000_000, output_tokens=1_000_000))
    assert cost == pytest.approx(2.0 + 4.5)


@pytest.mark.parametrize(
    ("mapping", "key", "words"),
    [
        ({"input_mtok": 1, "output_mtok": 2, "input_per_mtok": 3}, "input_per_mtok", "unknown"),
        ({"output_mtok": 2}, "input_mtok", "missing"),
        ({"input_mtok": 1}, "output_mtok", "missing"),
        ({"input_mtok": "1", "output_mtok": 2}, "input_mtok", "number"),
        ({"input_mtok": True, "output_mtok": 2}, "input_mtok", "number"),
        ({"input_mtok": 1, "output_mtok": -2}, "output_mtok", "0 or more"),
        ({"input_mtok": 1, "output_mtok": float("nan")}, "output_mtok", "finite"),
    ],
)
def test_price_from_mapping_rejects_bad_keys(
    mapping: dict[str, object], key: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as info:
        price_from_mapping(mapping, path="jobs/x.toml")
    assert info.value.key == key
    assert "jobs/x.toml" in str(info.value)
    assert key in str(info.value)


# -- properties -------------------------------------------------------------------------------

rates = st.floats(min_value=0, max_value=200, allow_nan=False)
prices = st.builds(
    Price,
    input_mtok=rates,
    output_mtok=rates,
    cache_read_mtok=st.none() | rates,
    cache_write_mtok=st.none() | rates,
)
counts = st.integers(min_value=0, max_value=2_000_000)


@st.composite
def usages(draw: st.DrawFn) -> Usage:
    uncached, read, written, output = draw(counts), draw(counts), draw(counts), draw(counts)
    return Usage(
        input_tokens=uncached + read + written,
        output_tokens=output,
        cache_read_tokens=read,
        cache_write_tokens=written,
        reasoning_tokens=draw(st.integers(min_value=0, max_value=output)),
    )


@given(prices, usages())
def test_cost_is_never_negative(price: Price, usage: Usage) -> None:
    cost = cost_usd(price, usage)
    assert cost is not None and cost >= 0


@given(prices, counts, counts, counts, counts)
def test_cost_is_never_negative_even_for_inconsistent_usage(
    price: Price, inp: int, read: int, written: int, out: int
) -> None:
    # cache counts larger than input_tokens (a provider bug) must not make a row pay less than 0
    usage = Usage(
        input_tokens=inp, output_tokens=out, cache_read_tokens=read, cache_write_tokens=written
    )
    cost = cost_usd(price, usage)
    assert cost is not None and cost >= 0


@given(prices, usages(), st.integers(min_value=1, max_value=1_000_000))
def test_more_tokens_of_any_kind_never_cost_less(price: Price, usage: Usage, k: int) -> None:
    base = cost_usd(price, usage)
    assert base is not None
    more = [
        Usage(usage.input_tokens + k, usage.output_tokens, usage.cache_read_tokens,
              usage.cache_write_tokens),
        Usage(usage.input_tokens, usage.output_tokens + k, usage.cache_read_tokens,
              usage.cache_write_tokens),
        Usage(usage.input_tokens + k, usage.output_tokens, usage.cache_read_tokens + k,
              usage.cache_write_tokens),
        Usage(usage.input_tokens + k, usage.output_tokens, usage.cache_read_tokens,
              usage.cache_write_tokens + k),
    ]  # fmt: skip
    for bigger in more:
        cost = cost_usd(price, bigger)
        assert cost is not None
        assert cost >= base * (1 - 1e-12)


@given(prices, usages())
def test_batch_price_is_half(price: Price, usage: Usage) -> None:
    full = cost_usd(price, usage)
    half = cost_usd(price.halved(), usage)
    assert full is not None and half is not None
    assert half == pytest.approx(full / 2, rel=1e-12, abs=1e-15)


@given(usages())
def test_reading_from_the_cache_never_costs_more_at_real_prices(usage: Usage) -> None:
    price = lookup_price("anthropic", "claude-haiku-4-5")
    assert price is not None
    uncached = Usage(usage.input_tokens, usage.output_tokens, 0, usage.cache_write_tokens)
    with_cache = cost_usd(price, usage)
    without = cost_usd(price, uncached)
    assert with_cache is not None and without is not None
    assert with_cache <= without + 1e-12


def test_a_price_is_asked_of_genai_prices_once_a_day_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.job import pricing

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    asked: list[tuple[str, str, bool]] = []
    real = pricing._lookup

    def counting(provider: str, model: str, *, batch: bool = False) -> Price | None:
        asked.append((provider, model, batch))
        return real(provider, model, batch=batch)

    monkeypatch.setattr(pricing, "_lookup", counting)
    first = lookup_price("openai", "gpt-4o-mini")
    assert lookup_price("openai", "gpt-4o-mini") == first
    assert lookup_price("openai", "no-such-model-xyz") is None
    assert lookup_price("openai", "no-such-model-xyz") is None  # unknown is cached too
    assert lookup_price("openai", "gpt-4o-mini", batch=True) != first
    assert asked == [
        ("openai", "gpt-4o-mini", False),
        ("openai", "no-such-model-xyz", False),
        ("openai", "gpt-4o-mini", True),
    ]
    assert pricing.price_cache_path() == tmp_path / "llm-batch-pipeline" / "prices.json"
    # Another day: asked again, and yesterday's entries are dropped.
    monkeypatch.setattr(pricing, "_today", lambda: "2999-01-01")
    assert lookup_price("openai", "gpt-4o-mini") == first
    assert asked[-1] == ("openai", "gpt-4o-mini", False)
    assert all(
        k.endswith("2999-01-01") for k in orjson.loads(pricing.price_cache_path().read_bytes())
    )


def test_a_cache_that_cannot_be_written_is_no_cache_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert lookup_price("openai", "gpt-4o-mini") is not None
