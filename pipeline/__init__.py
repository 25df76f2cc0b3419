"""An asynchronous batch pipeline for LLM APIs.

Rows from JSONL or Parquet are rendered into OpenAI or Anthropic requests, sent under a
concurrency cap and request/token rate limits (or through the providers' batch endpoints), and
every result lands in DuckDB with its token usage and cost.

The names below are the library's public interface; ``pipeline.cli`` is a thin shell over them::

    job = load_job("jobs/review_sentiment.toml")
    with Store(job.output.db) as store:
        runner = Runner(job, store=store, provider=make_provider(job, api_key=..., base_url=...),
                        budget=LocalRateBudget(requests_per_minute=5000), price=price_for(job),
                        base_url=...)
        outcome = await runner.run()
"""

from __future__ import annotations

from .batch_runner import BatchRunner
from .config import Job, load_job, parse_job
from .cost import Price, cost_usd, lookup_price, price_for
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
)
from .estimate import Estimate, estimate_job
from .limits import LocalRateBudget, RateBudget
from .providers import Provider, make_batch_provider, make_provider
from .records import Reply, Request, Row, RowResult, Usage
from .runner import RowFilter, Runner, RunOutcome, RunStats
from .store import Store

__all__ = [
    "BatchRunner",
    "ConfigError",
    "Estimate",
    "FatalProviderError",
    "InputError",
    "Job",
    "LocalRateBudget",
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
    "RunOutcome",
    "RunStats",
    "Runner",
    "Store",
    "StoreError",
    "TransientError",
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
