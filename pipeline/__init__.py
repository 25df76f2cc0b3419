"""An asynchronous batch pipeline for LLM APIs.

Rows from JSONL or Parquet are rendered into OpenAI or Anthropic requests, sent under a
concurrency cap and request/token rate limits, and every result lands in DuckDB with its
token usage and cost.
"""

from __future__ import annotations
