"""How a run ended: ``RunOutcome``, what ``pipeline.run`` returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..job import Job
from ..records import RunState, run_state
from ..render import Renderer
from ..sources import RowSource
from .manifest import resume_command
from .stats import RunStats

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["RunOutcome"]

EXIT_CODES = {RunState.COMPLETED: 0, RunState.FAILED: 1, RunState.STOPPED: 3}


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended, and where its results are.

    ``state`` is ``RunState.COMPLETED`` (every row has an outcome; some may have failed: see
    ``stats``), ``STOPPED`` (a signal, the budget, batches left to collect: ``pipeline resume``
    or ``pipeline.run(resume=run_id)`` goes on) or ``FAILED`` (a bad key, no quota, a provider
    that cannot be reached, a refused batch, a crash); ``reason`` says why it stopped or failed.
    ``cost_usd`` is what the run spent, earlier processes of a resumed run included (None when
    no row had a known price). ``message`` is the error that failed it, as one line."""

    run_id: str
    state: RunState
    stats: RunStats
    reason: str | None = None
    message: str | None = None
    cost_usd: float | None = None
    db: Path = Path("data/results.duckdb")
    manifest_path: Path = Path()
    job: Job | None = field(default=None, repr=False)
    source: RowSource | None = field(default=None, repr=False, compare=False)
    keys: Sequence[tuple[str, str, int]] | None = field(default=None, repr=False, compare=False)

    @property
    def status(self) -> str:
        """The state with its reason, as ``pipeline runs`` shows it: ``stopped: budget``."""
        return run_state(self.state, self.reason)

    @property
    def ok(self) -> bool:
        """Whether the run completed (rows may still have failed: see ``stats``)."""
        return self.state is RunState.COMPLETED

    @property
    def exit_code(self) -> int:
        """The ``pipeline`` command's exit code for this outcome: 0, 1 (failed) or 3 (stopped)."""
        return EXIT_CODES.get(self.state, 1)

    @property
    def resume_command(self) -> str:
        return resume_command(self.run_id, str(self.db))

    def results(self) -> pa.Table:
        """This run's rows as a pyarrow Table, in input order: for every row the run read, the
        result it recorded, or (a row found done already) the ``ok`` result an earlier run
        recorded. Columns: ``row_id``, ``status``, ``output_text``, a schema job's fields as
        typed columns, then ``error_type``, ``error``, ``attempts``, the token counts,
        ``cost_usd``, ``latency_ms``, ``provider``, ``model``, ``mode``, ``run_id``,
        ``source``, ``line``, ``request_key`` and ``finished_at`` (unix seconds). Rows not done
        (a stopped run) are left out.

        The rows are read again to know them (a job's files, or rows given as a list, Table or
        DataFrame); rows given as a generator were remembered while the run read them."""
        from ..store import Store

        rows = self.keys if self.keys is not None else self._input_rows()
        columns: Sequence[tuple[str, str]] = ()
        if self.job is not None and self.job.request.schema is not None:
            from ..extract import sql_columns

            columns = sql_columns(self.job.request.schema)
        with Store(self.db, read_only=True) as store:
            return store.queries.run_results(self.run_id, rows, columns=columns)

    def _input_rows(self) -> list[tuple[str, str, int]]:
        from ..sources import row_source

        if self.job is None:
            return []
        source = self.source or row_source(self.job.input)
        key = Renderer(self.job.request).key
        out: list[tuple[str, str, int]] = []
        for chunk in source.chunks(1024):
            out.extend((key(item), item.source, item.line) for item in chunk)
        return out

    def as_dict(self) -> dict[str, Any]:
        """The outcome as plain data (``pipeline run --json`` prints it)."""
        s = self.stats
        return {
            "run_id": self.run_id,
            "state": self.state.value,
            "reason": self.reason,
            "status": self.status,
            "exit_code": self.exit_code,
            "rows": {
                "ok": s.rows_ok,
                "failed": s.rows_failed,
                "input_error": s.rows_input_error,
                "invalid": s.rows_invalid,
                "skipped": s.rows_skipped,
                "recovered": s.rows_recovered,
            },
            "requests": {
                "sent": s.requests_sent,
                "retried": s.retries,
                "rate_limited": s.rate_limited,
            },
            "tokens": {"input": s.input_tokens, "output": s.output_tokens},
            "cost_usd": self.cost_usd,
            "elapsed_s": round(s.elapsed_s, 3),
            "db": str(self.db),
            "manifest": str(self.manifest_path),
            "resume_command": None if self.ok else self.resume_command,
            "message": self.message,
        }
