"""An asynchronous batch pipeline for LLM APIs.

Rows from JSONL or Parquet (or from Python) are rendered into OpenAI, Anthropic or Gemini
requests, sent under a concurrency cap and request/token rate limits (or through the providers'
batch endpoints), and every result lands in DuckDB with its token usage and cost.

The names below are the library's public interface; ``pipeline.cli`` is a thin shell over them.
One call runs a job, as ``pipeline run`` does::

    import pipeline

    outcome = pipeline.run("jobs/review_sentiment.toml")           # keys from the environment
    outcome = pipeline.run({"name": "t", "request": {...}}, rows=rows, fake=True)
    if outcome.state is not pipeline.RunState.COMPLETED:
        raise SystemExit(outcome.exit_code)
    table = outcome.results()                                      # a pyarrow Table

    estimate = pipeline.estimate("jobs/review_sentiment.toml")     # before sending anything

The layers, left to right: a module imports only from its left (``make check`` holds it to
this: the import-linter contract in pyproject.toml lists the same layers)::

    errors, records, redact, logs → extract → job → documents → sources → render → plan → limits
        → providers → store → estimates → execution → reporting → _api → cli → __main__

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
    from ._api import aestimate, arun, estimate, failed_rows, job_of_run, run
    from .errors import (
        ConfigError,
        FatalProviderError,
        InputError,
        PipelineError,
        ProviderError,
        RateLimitError,
        RowRejectedError,
        StoppedError,
        StoreError,
        TransientError,
        UnreachableError,
    )
    from .estimates import Estimate, estimate_job
    from .execution import Manifest, RunOutcome, RunStats
    from .fake import FakeConfig
    from .job import Job, job_from_mapping, load_job, parse_job
    from .job.pricing import Price, cost_usd, lookup_price, price_for
    from .limits import LocalRateBudget, RateBudget, RunBudget
    from .plan import RowFilter
    from .providers import Provider, api_key_from_env, make_batch_provider, make_provider
    from .records import Mode, Reply, Request, Row, RowResult, RunState, Status, Usage
    from .store import Store

_WHERE = {
    "ConfigError": "errors",
    "Estimate": "estimates",
    "FatalProviderError": "errors",
    "InputError": "errors",
    "FakeConfig": "fake",
    "Job": "job",
    "LocalRateBudget": "limits",
    "Manifest": "execution",
    "Mode": "records",
    "PipelineError": "errors",
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
    "RunState": "records",
    "RunStats": "execution",
    "Status": "records",
    "StoppedError": "errors",
    "Store": "store",
    "StoreError": "errors",
    "TransientError": "errors",
    "UnreachableError": "errors",
    "Usage": "records",
    "aestimate": "_api",
    "api_key_from_env": "providers",
    "arun": "_api",
    "cost_usd": "job.pricing",
    "estimate": "_api",
    "estimate_job": "estimates",
    "failed_rows": "_api",
    "job_from_mapping": "job",
    "job_of_run": "_api",
    "load_job": "job",
    "lookup_price": "job.pricing",
    "make_batch_provider": "providers",
    "make_provider": "providers",
    "parse_job": "job",
    "price_for": "job.pricing",
    "run": "_api",
}

__all__ = [
    "ConfigError",
    "Estimate",
    "FakeConfig",
    "FatalProviderError",
    "InputError",
    "Job",
    "LocalRateBudget",
    "Manifest",
    "Mode",
    "PipelineError",
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
    "RunState",
    "RunStats",
    "Status",
    "StoppedError",
    "Store",
    "StoreError",
    "TransientError",
    "UnreachableError",
    "Usage",
    "aestimate",
    "api_key_from_env",
    "arun",
    "cost_usd",
    "estimate",
    "estimate_job",
    "failed_rows",
    "job_from_mapping",
    "job_of_run",
    "load_job",
    "lookup_price",
    "make_batch_provider",
    "make_provider",
    "parse_job",
    "price_for",
    "run",
]


# Names of the first interface, gone since one call runs a job: what to use instead.
_REMOVED = {
    "Runner": "pipeline.run(job, ...) (or await pipeline.arun(...)) runs a job in one call",
    "BatchRunner": "pipeline.run(job, mode='batch') runs a job through the batch endpoints",
    "RunSession": "pipeline.run(job, ...) makes and drives the run's session",
    "Planner": "pipeline.estimate(job) plans a job's rows without sending them",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        if name in _REMOVED:
            raise AttributeError(f"pipeline.{name} was removed: {_REMOVED[name]}")
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
