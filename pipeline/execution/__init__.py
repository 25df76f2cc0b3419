"""Execution: a session owns a run; executors send what the planner planned; a sink records it.

::

    RunSession (session.py)       ledger, manifest (manifest.py), batch → online, stops
      ├── Takeover                open batches of earlier runs (takeover.py)
      ├── Planner (pipeline.plan) rows → send / record / skip, fed by feed.py
      ├── Executors               makes the run's executors (executors.py):
      │     OnlineExecutor        requests → provider, under a RunBudget (online.py, fallback.py)
      │     RayExecutor           the same on Ray workers (cluster.py, shard.py)
      │     BatchExecutor         requests → batch parts → provider's batches (batch.py, parts.py)
      └── ResultSink              journal at once (journal.py), DuckDB in batches (sink.py)

``pipeline.run`` (``pipeline._api``) makes and drives the session; ``RunOutcome`` is what it
returns.
"""

from __future__ import annotations

from ..plan import RowFilter
from .manifest import Manifest
from .outcome import RunOutcome
from .session import RunSession
from .stats import RunStats, new_run_id

__all__ = ["Manifest", "RowFilter", "RunOutcome", "RunSession", "RunStats", "new_run_id"]
