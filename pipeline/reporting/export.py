"""``pipeline export``: a run's results as a file other tools read.

JSONL is written in the shape of OpenAI's batch output file, one line per row, so that code
written for OpenAI batch results reads it unchanged, whichever provider answered::

    {"id": "batch_req_<request_key>", "custom_id": "<request_key>",
     "response": {"status_code": 200, "request_id": null, "body": {<chat.completion>}},
     "error": null}                                                        # an ok row
    {"id": ..., "custom_id": ..., "response": null,
     "error": {"code": "<error_type>", "message": "<error>"}}               # any other row

The ``chat.completion`` body carries the answer (``output_text``), the finish reason in OpenAI's
words (Anthropic's ``end_turn`` / ``tool_use`` / ``stop_sequence`` → ``stop``, ``max_tokens``
→ ``length``, ``refusal`` → ``content_filter``) and the usage (``prompt_tokens`` counts every
prompt token; cache reads are ``prompt_tokens_details.cached_tokens``). ``custom_id`` is the
row's request key; ``row_id`` is in the Parquet export and the ``results`` view.

Parquet is every column of the ``results`` view, written by DuckDB
(``store.queries.export_parquet``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import orjson

from ..store import Store

__all__ = ["EXPORT_FORMATS", "batch_output_line", "export_run"]

EXPORT_FORMATS: Final = ("jsonl", "parquet")

_FINISH: Final = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "function_call": "function_call",
    "end_turn": "stop",
    "tool_use": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
}


def batch_output_line(row: Mapping[str, Any]) -> dict[str, Any]:
    """One row of ``results`` (``finished_at`` in unix seconds) as an OpenAI batch-output line."""
    key = row["request_key"]
    line: dict[str, Any] = {"id": f"batch_req_{key}", "custom_id": key}
    if row["status"] != "ok":
        line["response"] = None
        line["error"] = {"code": row["error_type"] or row["status"], "message": row["error"] or ""}
        return line
    prompt = int(row["input_tokens"] or 0)
    completion = int(row["output_tokens"] or 0)
    body = {
        "id": f"chatcmpl-{key}",
        "object": "chat.completion",
        "created": int(row["finished_at"] or 0),
        "model": row["model"],
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": row["output_text"] or "",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": _FINISH.get(row["finish_reason"] or "stop", "stop"),
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": int(row["cache_read_tokens"] or 0)},
            "completion_tokens_details": {"reasoning_tokens": int(row["reasoning_tokens"] or 0)},
        },
    }
    line["response"] = {"status_code": 200, "request_id": None, "body": body}
    line["error"] = None
    return line


def _write_lines(path: Path, chunks: Iterable[list[dict[str, Any]]]) -> int:
    count = 0
    with path.open("wb") as handle:
        for chunk in chunks:
            handle.write(b"".join(orjson.dumps(batch_output_line(r)) + b"\n" for r in chunk))
            count += len(chunk)
    return count


def export_run(store: Store, run_id: str, path: str | os.PathLike[str], fmt: str) -> int:
    """Write run ``run_id``'s results to ``path`` as ``jsonl`` or ``parquet``; the number of rows.

    The file appears whole or not at all: it is written next to ``path`` and renamed.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {EXPORT_FORMATS}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        if fmt == "jsonl":
            count = _write_lines(partial, store.queries.iter_results(run_id))
        else:
            count = store.queries.export_parquet(run_id, partial)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return count
