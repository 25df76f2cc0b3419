"""An asynchronous batch pipeline for LLM APIs.

Rows from JSONL or Parquet are rendered into OpenAI or Anthropic requests, sent under a
concurrency cap and request/token rate limits (or through the providers' batch endpoints), and
every result lands in DuckDB with its token usage and cost.

The names below are the library's public interface; ``pipeline.cli`` is a thin shell over them::

    job = load_job("jobs/review_sentiment.toml")
    url = job.resolved_base_url()
    with Store(job.output.db) as store:
        provider = make_provider(job, api_key=..., base_url=url)
        session = RunSession(job, store=store, provider=provider, base_url=url)
        outcome = await session.run()

The layers, left to right: a module imports only from its left (``make check`` holds it to
this: the import-linter contract in pyproject.toml lists the same layers)::

    errors, records, redact, logs → extract → job → documents → sources → render → plan → limits
        → providers → store → estimate → execution → reporting → cli → __main__

The first four may import one another; ``pipeline.fake`` imports nothing of the rest.

Names are imported when first used, so ``import pipeline.fake`` (or any one part) does not load
DuckDB, Arrow or the runner.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

_KEPT_OUT = ("rich.traceback", "rich.pretty")


def _import_structlog_without_rich_tracebacks() -> None:
    """structlog imports ``rich.traceback`` and ``rich.pretty`` (and with them pygments: about
    4 MB and 0.15 s a process) whenever rich is installed, for pretty exceptions on a console.
    Logs here are JSON lines, so they are kept out: structlog is imported while those two are
    unimportable, then everything is as it was (rich itself may still import them later)."""
    if "structlog" in sys.modules or any(name in sys.modules for name in _KEPT_OUT):
        return
    for name in _KEPT_OUT:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import structlog  # noqa: F401
    finally:
        for name in _KEPT_OUT:
            del sys.modules[name]


_import_structlog_without_rich_tracebacks()

if TYPE_CHECKING:
    from .errors import (
        ConfigError,
        FatalProviderError,
        InputError,
        PipelineError,
        ProviderError,
        RateLimitError,
        RowRejectedError,
        StoreError,
        TransientError,
        UnreachableError,
    )
    from .estimate import Estimate, estimate_job
    from .execution import BatchRunner, Runner, RunOutcome, RunSession, RunStats
    from .job import Job, load_job, parse_job
    from .job.pricing import Price, cost_usd, lookup_price, price_for
    from .limits import LocalRateBudget, RateBudget, RunBudget
    from .plan import Planner, RowFilter
    from .providers import Provider, make_batch_provider, make_provider
    from .records import Mode, Reply, Request, Row, RowResult, Status, Usage
    from .store import Store

_WHERE = {
    "BatchRunner": "execution",
    "ConfigError": "errors",
    "Estimate": "estimate",
    "FatalProviderError": "errors",
    "InputError": "errors",
    "Job": "job",
    "LocalRateBudget": "limits",
    "Mode": "records",
    "PipelineError": "errors",
    "Planner": "plan",
    "Price": "job.pricing",
    "Provider": "providers",
    "ProviderError": "errors",
    "RateBudget": "limits",
    "RateLimitError": "errors",
    "Reply": "records",
    "Request": "records",
    "Row": "records",
    "RowFilter": "plan",
    "RowRejectedError": "errors",
    "RowResult": "records",
    "RunBudget": "limits",
    "RunOutcome": "execution",
    "RunSession": "execution",
    "RunStats": "execution",
    "Runner": "execution",
    "Status": "records",
    "Store": "store",
    "StoreError": "errors",
    "TransientError": "errors",
    "UnreachableError": "errors",
    "Usage": "records",
    "cost_usd": "job.pricing",
    "estimate_job": "estimate",
    "load_job": "job",
    "lookup_price": "job.pricing",
    "make_batch_provider": "providers",
    "make_provider": "providers",
    "parse_job": "job",
    "price_for": "job.pricing",
}

__all__ = [
    "BatchRunner",
    "ConfigError",
    "Estimate",
    "FatalProviderError",
    "InputError",
    "Job",
    "LocalRateBudget",
    "Mode",
    "PipelineError",
    "Planner",
    "Price",
    "Provider",
    "ProviderError",
    "RateBudget",
    "RateLimitError",
    "Reply",
    "Request",
    "Row",
    "RowFilter",
    "RowRejectedError",
    "RowResult",
    "RunBudget",
    "RunOutcome",
    "RunSession",
    "RunStats",
    "Runner",
    "Status",
    "Store",
    "StoreError",
    "TransientError",
    "UnreachableError",
    "Usage",
    "cost_usd",
    "estimate_job",
    "load_job",
    "lookup_price",
    "make_batch_provider",
    "make_provider",
    "parse_job",
    "price_for",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
