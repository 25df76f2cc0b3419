"""Execution: a session owns a run; executors send what the planner planned; a sink records it.

::

    RunSession (session.py)       ledger, manifest, prices, budget policy, batch → online, stops
      ├── Planner (pipeline.plan) rows → send / record / skip, fed by feed.py
      ├── OnlineExecutor          requests → provider, under a RunBudget (online.py)
      ├── BatchExecutor           requests → batch parts → provider's batches (batch.py, parts.py)
      └── ResultSink              journal at once (journal.py), DuckDB in batches (sink.py)

``Runner`` and ``BatchRunner`` are sessions fixed to one mode with the collaborators given, for
callers of the library's first interface.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from ..job import Job
from ..job.pricing import Price
from ..limits import RateBudget
from ..plan import RowFilter
from ..providers import BatchProvider, Provider
from ..store import Store
from .session import RunSession
from .stats import RunOutcome, RunStats, new_run_id

__all__ = [
    "BatchRunner",
    "RowFilter",
    "RunOutcome",
    "RunSession",
    "RunStats",
    "Runner",
    "new_run_id",
]


class Runner(RunSession):
    """One online run of ``job`` with the collaborators given; ``await run()``.

    ``budget`` is the rate budget (requests and tokens per minute); the concurrency cap and
    ``budget_usd`` come from the job's ``[limits]``. Whatever the job's mode, this sends online.
    """

    def __init__(
        self,
        job: Job,
        *,
        store: Store,
        provider: Provider,
        budget: RateBudget,
        price: Price | None,
        base_url: str,
        run_id: str | None = None,
        resume: bool = False,
        only: RowFilter | None = None,
        grace_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        online = replace(job, request=replace(job.request, mode="online"))
        super().__init__(
            online,
            store=store,
            base_url=base_url,
            provider=provider,
            rate=budget,
            price=price,
            run_id=run_id,
            resume=resume,
            only=only,
            grace_s=grace_s,
            clock=clock,
        )


class BatchRunner(RunSession):
    """One batch-mode run of ``job`` through ``provider``'s batch endpoints; rows the batches
    do not answer go online through ``online_provider`` (when given and the job's
    ``on_unfinished`` is ``online``). ``wait=False`` submits and returns."""

    def __init__(
        self,
        job: Job,
        *,
        store: Store,
        provider: BatchProvider,
        price: Price | None,
        base_url: str,
        online_provider: Provider | None = None,
        run_id: str | None = None,
        resume: bool = False,
        wait: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        batch = replace(job, request=replace(job.request, mode="batch"))
        super().__init__(
            batch,
            store=store,
            base_url=base_url,
            provider=online_provider,
            batch_provider=provider,
            batch_price=price,
            run_id=run_id,
            resume=resume,
            wait=wait,
            clock=clock,
        )
