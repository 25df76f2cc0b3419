"""A run's live counters, and new run ids."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..records import RowResult, Status

__all__ = ["RunStats", "new_run_id"]


def new_run_id() -> str:
    """Sortable and unique: UTC start time plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


@dataclass(slots=True)
class RunStats:
    """Live counters of a run; the progress display reads them, the summary prints them.

    Row and token counters move when a result is handed to the sink (``count``), request
    counters when the executor sends; ``rows_committed`` once DuckDB has the row.
    """

    rows_read: int = 0
    rows_skipped: int = 0  # already done (or submitted, pending elsewhere, not selected)
    rows_ok: int = 0
    rows_failed: int = 0
    rows_input_error: int = 0
    rows_invalid: int = 0  # answers that did not match the job's schema
    rows_committed: int = 0
    rows_recovered: int = 0  # answers of a killed process, recorded from its journal
    requests_sent: int = 0
    retries: int = 0
    rate_limited: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    rows_fallback: int = 0  # rows [request.fallback] answered (or failed) instead of the model
    fallback_switches: list[dict[str, Any]] = field(default_factory=list)  # Switch.as_dict()
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None  # set when the run ends: elapsed_s stops there

    def count(self, result: RowResult) -> None:
        """One more row with an outcome."""
        status = result.status
        if status == Status.OK:
            self.rows_ok += 1
        elif status == Status.FAILED:
            self.rows_failed += 1
        elif status == Status.INPUT_ERROR:
            self.rows_input_error += 1
            return
        else:
            self.rows_invalid += 1
        self.input_tokens += result.input_tokens
        self.output_tokens += result.output_tokens
        if result.cost_usd is not None:
            self.cost_usd += result.cost_usd

    def counts(self) -> dict[str, int]:
        """The row and request counters, as a run's manifest records them."""
        return {
            "read": self.rows_read,
            "skipped": self.rows_skipped,
            "ok": self.rows_ok,
            "failed": self.rows_failed,
            "input_error": self.rows_input_error,
            "invalid": self.rows_invalid,
            "committed": self.rows_committed,
            "recovered": self.rows_recovered,
            "requests": self.requests_sent,
            "rate_limited": self.rate_limited,
        }

    @property
    def rows_done(self) -> int:
        return self.rows_ok + self.rows_failed + self.rows_input_error + self.rows_invalid

    @property
    def elapsed_s(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.started

    def end(self) -> None:
        """The run is over: the clock of ``elapsed_s`` stops."""
        if self.ended is None:
            self.ended = time.monotonic()
