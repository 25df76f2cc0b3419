"""What a row cost, in US dollars: look the price up once per job, then do plain arithmetic per row.

Prices come from the ``genai-prices`` package (the offline price data it ships; nothing is
fetched). Asking it for every row is too slow (``calc_price`` takes ~65 µs), so the runner calls
:func:`lookup_price` once when a job starts and :func:`cost_usd` (a few hundred nanoseconds) for
each row::

    price = lookup_price("openai", "gpt-4o-mini")          # None: the package does not know it
    if price is None:
        log.warning("unknown_price", model=...)               # cost stays NULL, never $0
    row_cost = cost_usd(price, reply.usage)                   # float | None

A job may also name its own prices (:func:`price_from_mapping`), e.g. for a fine-tuned model or a
negotiated rate: its ``[pricing]`` table. :func:`price_for` is the one place that decides a job's
price, online or batch: the job's ``[pricing]`` when given, else genai-prices.

This module is pure: no I/O, no duckdb.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ConfigError
from ..records import Usage

if TYPE_CHECKING:
    from .config import Job

__all__ = [
    "PRICE_KEYS",
    "UNKNOWN_PRICE",
    "Price",
    "cost_usd",
    "fallback_price_for",
    "format_usd",
    "lookup_price",
    "price_cache_path",
    "price_for",
    "price_from_mapping",
]

PRICE_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")
"""The keys of a price override, all in US dollars per million tokens."""

_BATCH_CONTEXT = {"processing": "batch"}
# The provider as genai-prices names it, where that differs from the job's name for it.
_PRICES_PROVIDER = {"gemini": "google"}


@dataclass(frozen=True, slots=True)
class Price:
    """A model's price in US dollars per million tokens.

    ``cache_read_mtok`` / ``cache_write_mtok`` are ``None`` when the provider has no separate rate
    for them; such tokens are then charged at ``input_mtok``. ``source`` says where the numbers
    came from (it lands in ``runs.price_source``).
    """

    input_mtok: float
    output_mtok: float
    cache_read_mtok: float | None = None
    cache_write_mtok: float | None = None
    source: str = "override"

    def halved(self) -> Price:
        """This price at 50%: what both providers' batch endpoints charge."""
        return Price(
            input_mtok=self.input_mtok / 2,
            output_mtok=self.output_mtok / 2,
            cache_read_mtok=None if self.cache_read_mtok is None else self.cache_read_mtok / 2,
            cache_write_mtok=None if self.cache_write_mtok is None else self.cache_write_mtok / 2,
            source=f"{self.source}, halved for batch",
        )


def _package_source() -> str:
    try:
        return f"genai-prices {_dist_version('genai-prices')}"
    except PackageNotFoundError:  # pragma: no cover - vendored or unusual install
        return "genai-prices (version unknown)"


def _base_rate(value: Any) -> float | None:
    """A genai-prices rate as a float: ``None`` stays ``None``; a tiered rate gives its base."""
    if value is None:
        return None
    if isinstance(value, Decimal | int | float):
        return float(value)
    base = getattr(value, "base", None)  # genai_prices.types.TieredPrices
    if isinstance(base, Decimal | int | float):
        return float(base)
    raise TypeError(f"unexpected price value from genai-prices: {value!r}")


def _has_batch_rates(model: Any, when: datetime) -> bool:
    """Whether genai-prices holds batch rates of its own for this model (active at ``when``)."""
    for variant in getattr(model, "price_variants", None) or ():
        if dict(variant.when) != _BATCH_CONTEXT:
            continue
        constraint = variant.constraint
        if constraint is None or constraint.active(when):
            return True
    return False


def lookup_price(provider: str, model: str, *, batch: bool = False) -> Price | None:
    """The price of ``model`` at ``provider`` (``"openai"``, ``"anthropic"`` or ``"gemini"``,
    which genai-prices calls ``"google"``), or ``None``.

    Looked up in genai-prices once a day per model (and installed version of the package), then
    read from a small cache (``price_cache_path``): loading genai-prices costs a run about
    0.25 s of CPU and 17 MB of memory, for one number that only changes with the package.
    ``_lookup`` below does the asking.
    """
    key = "|".join((_package_source(), provider, model, "batch" if batch else "online", _today()))
    cached = _read_cache()
    if key in cached:
        entry = cached[key]
        return None if entry is None else Price(**entry)
    price = _lookup(provider, model, batch=batch)
    fresh = {k: v for k, v in cached.items() if k.endswith(_today())}  # yesterday's are stale
    fresh[key] = None if price is None else dataclasses.asdict(price)
    _write_cache(fresh)
    return price


def price_cache_path() -> Path:
    """Where looked-up prices are kept for the day: ``$XDG_CACHE_HOME`` (else ``~/.cache``)
    ``/llm-batch-pipeline/prices.json``. Deleting it is always safe."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llm-batch-pipeline" / "prices.json"


def _today() -> str:
    return datetime.now(tz=UTC).date().isoformat()


def _read_cache() -> dict[str, Any]:
    try:
        data = orjson.loads(price_cache_path().read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(entries: Mapping[str, Any]) -> None:
    """Replace the cache atomically; a cache that cannot be written is no cache, not an error."""
    path = price_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(entries))
        os.replace(tmp, path)
    except OSError:
        pass


def _lookup(provider: str, model: str, *, batch: bool = False) -> Price | None:
    """``lookup_price`` without the cache: genai-prices itself.

    ``None`` means genai-prices does not know the model (or the provider): the caller should warn
    once and record the cost as NULL, never as zero. It also means the package has no per-token
    input and output rate for the model.

    Simplifications, all on the side of one flat rate per token kind:

    * **Tiered prices** (e.g. Claude Sonnet 4.5 above 200k prompt tokens) are read at their base
      tier. Rows whose prompt crosses a tier's threshold are under-priced; the base tier covers
      every prompt below the first threshold, which is what a batch pipeline sends.
    * **Cache writes** are charged at the package's default (5-minute) cache-write rate; the
      1-hour rate Anthropic offers is not modelled, because ``Usage`` does not tell them apart.
    * **Batch** (``batch=True``): every provider's batch endpoints charge 50%. When genai-prices
      ships batch rates of its own for the model, those are used as they are (they can differ
      from a plain half: OpenAI publishes no batch rate for cached input, so it stays at the
      standard rate); otherwise every standard rate is halved. ``Price.source`` says which.

    The price is the one in force now; call this once per job, not per row. (genai-prices is
    imported here, on first use: it costs about 25 MB and 0.3 s, which a job with its own
    ``[pricing]`` never pays.)
    """
    import genai_prices

    now = datetime.now(tz=UTC)
    provider = _PRICES_PROVIDER.get(provider, provider)
    dummy = genai_prices.Usage(input_tokens=1_000, output_tokens=1_000)
    try:
        calc = genai_prices.calc_price(
            dummy, model, provider_id=provider, genai_request_timestamp=now
        )
    except LookupError:
        return None
    use_package_batch = batch and _has_batch_rates(calc.model, now)
    if use_package_batch:
        calc = genai_prices.calc_price(
            dummy,
            model,
            provider_id=provider,
            genai_request_timestamp=now,
            price_context=_BATCH_CONTEXT,
        )
    mp = calc.model_price
    input_mtok = _base_rate(mp.input_mtok)
    output_mtok = _base_rate(mp.output_mtok)
    if input_mtok is None or output_mtok is None:
        return None
    source = f"{_package_source()} ({calc.provider.id}/{calc.model.id}"
    source += ", batch rates)" if use_package_batch else ")"
    price = Price(
        input_mtok=input_mtok,
        output_mtok=output_mtok,
        cache_read_mtok=_base_rate(mp.cache_read_mtok),
        cache_write_mtok=_base_rate(mp.cache_write_mtok),
        source=source,
    )
    if batch and not use_package_batch:
        return price.halved()
    return price


def price_for(job: Job, *, batch: bool = False) -> Price | None:
    """The price a run of ``job`` is charged at, or ``None`` when nobody knows it.

    The job's ``[pricing]`` table (``job.pricing``) wins: it is for models genai-prices does not
    know and for rates of your own; with ``batch=True`` it is halved, as both providers' batch
    endpoints charge 50%. Without it, :func:`lookup_price` asks genai-prices. ``None`` means the
    cost must be recorded as NULL, never as $0.
    """
    override = job.pricing
    if override is not None:
        return override.halved() if batch else override
    return lookup_price(job.request.provider, job.request.model, batch=batch)


def fallback_price_for(job: Job, *, batch: bool = False) -> Price | None:
    """The price of the job's ``[request.fallback]`` model, from genai-prices (the job's
    ``[pricing]`` is the primary model's); None without a fallback or when it is unknown."""
    fallback = job.request.fallback
    if fallback is None:
        return None
    return lookup_price(fallback.provider, fallback.model, batch=batch)


def price_from_mapping(
    mapping: Mapping[str, Any],
    *,
    source: str = "override",
    path: str | None = None,
    key_prefix: str = "",
) -> Price:
    """A price given by hand, e.g. a job's ``[pricing]`` table, in US dollars per million tokens.

    ``input_mtok`` and ``output_mtok`` are required; ``cache_read_mtok`` and ``cache_write_mtok``
    are optional (missing: charged at ``input_mtok``). Raises ConfigError naming the key, with
    ``key_prefix`` in front of it (``"pricing."`` names ``[pricing.input_mtok]``).
    """
    for key in mapping:
        if key not in PRICE_KEYS:
            raise ConfigError(
                f"unknown price key {key!r}; a price takes: {', '.join(PRICE_KEYS)} "
                "(US dollars per million tokens)",
                path=path,
                key=f"{key_prefix}{key}",
            )
    values: dict[str, float | None] = {}
    for key in PRICE_KEYS:
        raw = mapping.get(key)
        if raw is None:
            if key in ("input_mtok", "output_mtok"):
                raise ConfigError(
                    f"missing; add {key} = <US dollars per million tokens>",
                    path=path,
                    key=f"{key_prefix}{key}",
                )
            values[key] = None
            continue
        if isinstance(raw, bool) or not isinstance(raw, int | float | Decimal):
            raise ConfigError(
                f"must be a number of US dollars per million tokens, got {raw!r}",
                path=path,
                key=f"{key_prefix}{key}",
            )
        value = float(raw)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(
                f"must be a finite number of dollars, 0 or more, got {raw!r}",
                path=path,
                key=f"{key_prefix}{key}",
            )
        values[key] = value
    input_mtok = values["input_mtok"]
    output_mtok = values["output_mtok"]
    assert input_mtok is not None and output_mtok is not None
    return Price(
        input_mtok=input_mtok,
        output_mtok=output_mtok,
        cache_read_mtok=values["cache_read_mtok"],
        cache_write_mtok=values["cache_write_mtok"],
        source=source,
    )


def cost_usd(price: Price | None, usage: Usage) -> float | None:
    """What ``usage`` cost at ``price``, in US dollars; ``None`` when the price is unknown.

    ``usage.input_tokens`` counts every prompt token, cached or not, so the uncached part is
    ``input - cache_read - cache_write`` (never below 0). Cache reads are charged at
    ``cache_read_mtok`` and cache writes at ``cache_write_mtok``, each falling back to
    ``input_mtok``; all output tokens (reasoning included) at ``output_mtok``.
    """
    if price is None:
        return None
    inp = price.input_mtok
    cached = usage.cache_read_tokens
    written = usage.cache_write_tokens
    uncached = usage.input_tokens - cached - written
    if uncached < 0:
        uncached = 0
    read_rate = price.cache_read_mtok
    write_rate = price.cache_write_mtok
    return (
        uncached * inp
        + cached * (inp if read_rate is None else read_rate)
        + written * (inp if write_rate is None else write_rate)
        + usage.output_tokens * price.output_mtok
    ) / 1_000_000


UNKNOWN_PRICE = "unknown price"


def format_usd(value: float | None, *, unpriced_rows: int = 0) -> str:
    """``$1.2346`` from one dollar up, ``$0.000210`` below; ``None`` is "unknown price".

    ``unpriced_rows`` (rows that used tokens at an unknown price) is appended, because the
    amount then leaves their cost out.
    """
    if value is None:
        return UNKNOWN_PRICE
    text = f"${value:,.4f}" if abs(value) >= 1 else f"${value:.6f}"
    if unpriced_rows:
        text += f" + {UNKNOWN_PRICE} ({unpriced_rows:,} rows)"
    return text
