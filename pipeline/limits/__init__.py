"""Limits: how many requests may be in flight, how fast they may go, and what they may cost.

- ``RunBudget`` / ``Lease`` (``_budget``): one object per run holding the concurrency cap, the
  rate buckets and the US dollar budget; executors take a lease per row.
- ``RateBudget`` / ``LocalRateBudget`` / ``TokenBucket`` (``_rate``): request and token rates,
  slowed by what providers say (rate-limit headers, 429s).
- ``headers``: providers' rate-limit headers, parsed into ``RateLimitInfo``.
- ``ByteWindow`` (``_bytes``): the bytes of document content read for requests at once.
- ``BudgetService`` / ``SharedRateBudget`` / ``ShardBudget`` (``_shared``): one job's budget
  shared by several workers (Ray), which draw it in blocks.
"""

from __future__ import annotations

from ._budget import Lease, RunBudget
from ._bytes import ByteWindow
from ._rate import LocalRateBudget, RateBudget, TokenBucket
from ._shared import BudgetLink, BudgetService, Grant, Report, ShardBudget, SharedRateBudget

__all__ = [
    "BudgetLink",
    "BudgetService",
    "ByteWindow",
    "Grant",
    "Lease",
    "LocalRateBudget",
    "RateBudget",
    "Report",
    "RunBudget",
    "ShardBudget",
    "SharedRateBudget",
    "TokenBucket",
]
