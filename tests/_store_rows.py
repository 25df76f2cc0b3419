"""Rows and one-value queries for the store's tests (``test_store*.py``)."""

from __future__ import annotations

from typing import Any

from pipeline.records import RowResult
from pipeline.store import Store

T0 = 1_763_000_000.25  # a fixed unix time, with a fraction


def result(i: int, **changes: Any) -> RowResult:
    ok = changes.get("status", "ok") == "ok"
    values: dict[str, Any] = {
        "job": "reviews",
        "run_id": "run-1",
        "row_id": f"row-{i}",
        "request_key": f"key-{i}",
        "prompt_hash": "p1",
        "status": "ok",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "mode": "online",
        "output_text": f"answer {i}" if ok else None,
        "finish_reason": "stop" if ok else None,
        "error_type": None if ok else "rate_limited",
        "error": None if ok else "429 after 6 attempts",
        "attempts": 1,
        "input_tokens": 100 + i,
        "output_tokens": 20 + i % 7,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": 0.0001 * (i + 1),
        "latency_ms": 100.0 + i,
        "finished_at": T0 + i,
        "source": "data/in.jsonl",
        "line": i + 1,
    }
    values.update(changes)
    return RowResult(**values)


def one(s: Store, sql: str, *params: Any) -> Any:
    rows = s.query(sql, list(params) if params else None)
    assert len(rows) == 1
    return next(iter(rows[0].values()))
