"""One job's budget shared by several workers (``pipeline.limits._shared``), without Ray: the
workers' ``SharedRateBudget`` / ``ShardBudget`` reach a ``BudgetService`` in the same process
through a link that behaves like the Ray actor (every call a trip through the event loop)."""

from __future__ import annotations

import time

import anyio
import pytest

from pipeline.limits import BudgetService, Grant, Report, ShardBudget, SharedRateBudget

pytestmark = pytest.mark.anyio


class Link:
    """The service as a worker reaches it; counts the calls, as remote calls would be."""

    def __init__(self, service: BudgetService) -> None:
        self.service = service
        self.calls = 0

    async def grant(self, worker: str, report: Report, requests: int, tokens: int) -> Grant:
        self.calls += 1
        await anyio.sleep(0.002)  # a round trip
        return await self.service.grant(worker, report, requests, tokens)

    def penalize(self, worker: str, retry_after: float | None) -> None:
        self.calls += 1
        self.service.penalize(worker, retry_after)

    def pause(self, seconds: float) -> None:
        self.service.pause(seconds)

    async def allot(self, worker: str, usd: float) -> float:
        self.calls += 1
        return self.service.allot(worker, usd)

    async def done(self, worker: str, spent_usd: float) -> None:
        self.service.done(worker, spent_usd)


async def _send_for(rate: SharedRateBudget, seconds: float, sent: list[float]) -> None:
    """Acquire as fast as the budget allows for ``seconds``; note when each went out."""
    with anyio.move_on_after(seconds):
        while True:
            await rate.acquire(10)
            sent.append(time.monotonic())


async def test_two_workers_share_one_request_rate_in_blocks_not_per_request() -> None:
    service = BudgetService(requests_per_minute=12_000)  # 200/s for the whole job
    link = Link(service)
    workers = [SharedRateBudget(link, worker=f"w{i}", share=0.5) for i in range(2)]
    sent: list[list[float]] = [[], []]
    async with anyio.create_task_group() as tg:
        for rate in workers:
            tg.start_soon(rate.run)
        async with anyio.create_task_group() as senders:
            for rate, times in zip(workers, sent, strict=True):
                senders.start_soon(_send_for, rate, 1.5, times)
        tg.cancel_scope.cancel()
    total = len(sent[0]) + len(sent[1])
    # 1.5 s at 200/s, plus the service's quarter-second burst and one block per worker
    assert 250 <= total <= 300 + 50 + 2 * 10, total
    assert min(len(s) for s in sent) >= 0.35 * total  # neither worker starves
    assert link.calls < total / 3  # credit comes in blocks, not one call per request


async def test_a_429_seen_by_one_worker_pauses_the_other() -> None:
    service = BudgetService(requests_per_minute=60_000)
    link = Link(service)
    a, b = (SharedRateBudget(link, worker=w, share=0.5) for w in "ab")
    sent_b: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(a.run)
        tg.start_soon(b.run)
        await a.acquire(10)
        await b.acquire(10)
        a.penalize(1.0)  # worker a got a 429 with retry-after: 1
        penalized = time.monotonic()
        await _send_for(b, 1.5, sent_b)
        tg.cancel_scope.cancel()
    # b may spend what it already held (one block), then waits for the job's pause
    early = [t for t in sent_b if t - penalized < 0.9]
    assert len(early) <= 1000 * 0.5 * 0.1 + 2, len(early)
    assert any(t - penalized >= 0.9 for t in sent_b)
    assert service.rate.rate_limited == 1


async def test_without_limits_workers_send_freely_after_one_grant() -> None:
    service = BudgetService()
    link = Link(service)
    rate = SharedRateBudget(link, worker="w", share=1.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rate.run)
        with anyio.fail_after(2):
            for _ in range(1000):
                await rate.acquire(50)
        tg.cancel_scope.cancel()
    assert link.calls <= 2


async def test_a_token_limit_is_shared_and_settled_with_real_usage() -> None:
    service = BudgetService(tokens_per_minute=60_000)  # 1,000 tokens/s
    link = Link(service)
    rate = SharedRateBudget(link, worker="w", share=1.0)
    sent: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(rate.run)
        with anyio.move_on_after(1.0):
            while True:
                await rate.acquire(100)  # reserve 100, use 50: half comes back
                rate.settle(100, 50)
                sent.append(time.monotonic())
        tg.cancel_scope.cancel()
    # without settling: about 1,250 tokens in a second = 12 requests; with it, more
    assert 15 <= len(sent) <= 40, len(sent)


async def test_workers_never_hold_more_dollars_than_the_budget_and_the_dead_keep_theirs() -> None:
    service = BudgetService(budget_usd=1.0, spent_usd=0.2)
    link = Link(service)
    rates = [SharedRateBudget(link, worker=f"w{i}", share=0.5) for i in range(2)]
    a, b = (ShardBudget(rate=r, concurrency=4, link=link, dollars=True) for r in rates)
    async with anyio.create_task_group() as tg:
        for r in rates:
            tg.start_soon(r.run)
        lease = await a.acquire(tokens=10, worst_usd=0.05)
        assert lease is not None
        assert a.budget_usd == pytest.approx(0.4)  # 2 × 4 in flight × $0.05
        leases = [await b.acquire(tokens=10, worst_usd=0.05) for _ in range(4)]
        assert all(leases)
        assert service.held_usd == pytest.approx(1.0)  # 0.2 before + 0.4 + 0.4
        lease.release(0.01)
        await a.done()  # a spent $0.01: the rest goes back
        assert service.held_usd == pytest.approx(0.2 + 0.01 + 0.4)
        service.lost("w1")  # b died holding $0.4: it stays counted
        assert service.held_usd == pytest.approx(0.61)
        c_rate = SharedRateBudget(link, worker="w2", share=0.5)
        tg.start_soon(c_rate.run)
        c = ShardBudget(rate=c_rate, concurrency=4, link=link, dollars=True)
        assert await c.acquire(tokens=10, worst_usd=0.5) is None  # $0.39 left: the row cannot go
        assert (await c.acquire(tokens=10, worst_usd=0.3)) is not None
        assert service.held_usd <= 1.0 + 1e-9
        tg.cancel_scope.cancel()
