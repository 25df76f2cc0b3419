from __future__ import annotations

import anyio
import pytest

from pipeline.limits import Lease, LocalRateBudget, RunBudget, TokenBucket
from pipeline.records import RateLimitInfo


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_full_and_refills_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=100, capacity=50, clock=clock)
    assert bucket.try_take(50)
    assert not bucket.try_take(1)
    clock.now += 0.1  # 10 tokens back
    assert bucket.level == pytest.approx(10)
    clock.now += 10  # never above capacity
    assert bucket.level == pytest.approx(50)


def test_bucket_lets_an_oversized_request_through_on_a_full_bucket_and_goes_into_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, capacity=20, clock=clock)
    assert bucket.try_take(35)
    assert bucket.level == pytest.approx(-15)
    clock.now += 2  # 20 tokens later it is still only at +5
    assert not bucket.try_take(20)
    assert bucket.level == pytest.approx(5)


def test_settling_credits_back_unused_estimate_and_charges_overruns() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1, capacity=1000, clock=clock)
    assert bucket.try_take(600)  # estimate
    bucket.give_back(600 - 150)  # real usage was 150
    assert bucket.level == pytest.approx(850)
    bucket.give_back(-100)  # used more than estimated
    assert bucket.level == pytest.approx(750)


def test_provider_remaining_tokens_caps_the_bucket() -> None:
    clock = FakeClock()
    budget = LocalRateBudget(tokens_per_minute=60_000, clock=clock)
    budget.observe(RateLimitInfo(remaining_tokens=40))
    assert budget._tokens is not None
    assert budget._tokens.level == pytest.approx(40)


def test_a_429_pauses_everyone_and_cuts_the_rate_once_per_second() -> None:
    clock = FakeClock()
    budget = LocalRateBudget(requests_per_minute=6000, clock=clock)
    assert budget.request_rate == pytest.approx(100)
    budget.penalize(retry_after=2.0)
    budget.penalize(retry_after=2.0)  # same burst: no second cut
    assert budget.request_rate == pytest.approx(70)
    assert budget._paused_until == pytest.approx(clock.now + 2.0)
    clock.now += 1.5
    budget.penalize(retry_after=None)
    assert budget.request_rate == pytest.approx(49)
    assert budget.rate_limited == 3


def test_the_rate_grows_back_after_clean_answers_but_never_past_the_configured_rate() -> None:
    clock = FakeClock()
    budget = LocalRateBudget(requests_per_minute=6000, clock=clock)
    budget.penalize(retry_after=None)
    cut = budget.request_rate
    assert cut is not None
    clock.now += 1.0
    budget.reward()  # too soon after the cut
    assert budget.request_rate == pytest.approx(cut)
    clock.now += 5.0
    for _ in range(10_000):
        budget.reward()
    assert budget.request_rate == pytest.approx(100)


def test_without_a_configured_rate_the_providers_stated_limit_is_cut_on_429() -> None:
    clock = FakeClock()
    budget = LocalRateBudget(clock=clock)
    assert budget.request_rate is None
    budget.observe(RateLimitInfo(limit_requests=600, remaining_requests=5))
    budget.penalize(retry_after=None)
    assert budget.request_rate == pytest.approx(7.0)  # 0.7 × 600/60


def test_the_providers_stated_limit_caps_a_configured_rate_above_it_from_the_first_answer() -> None:
    clock = FakeClock()
    budget = LocalRateBudget(requests_per_minute=60_000, clock=clock)  # 1,000/s configured
    budget.observe(RateLimitInfo(limit_requests=30_000, remaining_requests=29_000))
    assert budget.request_rate == pytest.approx(500)
    clock.now += 60.0
    for _ in range(10_000):
        budget.reward()  # clean answers never grow it past what the provider allows
    assert budget.request_rate == pytest.approx(500)


def test_a_stated_limit_above_the_configured_rate_changes_nothing() -> None:
    clock = FakeClock()
    budget = LocalRateBudget(requests_per_minute=6_000, clock=clock)
    budget.observe(RateLimitInfo(limit_requests=30_000))
    assert budget.request_rate == pytest.approx(100)


def test_a_stated_token_limit_caps_the_token_rate_or_starts_one() -> None:
    clock = FakeClock()
    configured = LocalRateBudget(tokens_per_minute=6_000_000, clock=clock)
    configured.observe(RateLimitInfo(limit_tokens=600_000))
    assert configured._tokens is not None
    assert configured._tokens.rate == pytest.approx(10_000)
    unconfigured = LocalRateBudget(clock=clock)
    unconfigured.observe(RateLimitInfo(limit_tokens=600_000))
    assert unconfigured._tokens is not None
    assert unconfigured._tokens.rate == pytest.approx(10_000)


def test_no_requests_left_pauses_for_about_one_requests_worth_of_refill() -> None:
    clock = FakeClock()
    budget = LocalRateBudget(clock=clock)
    budget.observe(RateLimitInfo(limit_requests=600, remaining_requests=0, reset_requests_s=30))
    assert budget._paused_until == pytest.approx(clock.now + 0.1)


@pytest.mark.anyio
async def test_acquire_does_not_let_more_through_than_the_burst_at_once() -> None:
    budget = LocalRateBudget(requests_per_minute=60 * 40)  # 40/s, 0.25 s burst → 10 at once
    passed = 0

    async def one() -> None:
        nonlocal passed
        await budget.acquire(1)
        passed += 1

    async with anyio.create_task_group() as tg:
        for _ in range(30):
            tg.start_soon(one)
        await anyio.wait_all_tasks_blocked()
        assert passed == 10
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_large_token_requests_are_not_starved_by_small_ones() -> None:
    bucket = TokenBucket(rate=1000, capacity=100)
    assert bucket.try_take(100)
    order: list[str] = []

    async def take(name: str, amount: int) -> None:
        await bucket.acquire(amount)
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(take, "big", 100)
        await anyio.wait_all_tasks_blocked()
        for i in range(5):
            tg.start_soon(take, f"small{i}", 1)
    assert order[0] == "big"


# -- RunBudget: leases for concurrency, rates and US dollars ----------------------------------


@pytest.mark.anyio
async def test_a_lease_holds_a_slot_until_released_so_the_cap_bounds_requests_in_flight() -> None:
    budget = RunBudget(rate=LocalRateBudget(), concurrency=2)
    first = await budget.acquire(tokens=10)
    second = await budget.acquire(tokens=10)
    assert first is not None and second is not None
    got: list[Lease | None] = []

    async def third() -> None:
        got.append(await budget.acquire(tokens=10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(third)
        await anyio.wait_all_tasks_blocked()
        assert got == []  # two in flight: the third waits
        first.release()
        first.release()  # twice is harmless, and frees one slot only
    assert len(got) == 1 and got[0] is not None
    assert budget.slots.value == 0


@pytest.mark.anyio
async def test_the_usd_budget_counts_spent_and_the_worst_case_in_flight() -> None:
    budget = RunBudget(rate=LocalRateBudget(), concurrency=8, budget_usd=1.0, spent_usd=0.25)
    a = await budget.acquire(tokens=10, worst_usd=0.5)
    assert a is not None
    assert await budget.acquire(tokens=10, worst_usd=0.3) is None  # 0.25 + 0.5 + 0.3 > 1
    assert budget.slots.value == 7  # a refused lease holds nothing
    a.release(cost_usd=0.1)  # it cost far less than its worst case
    assert budget.spent_usd == pytest.approx(0.35)
    b = await budget.acquire(tokens=10, worst_usd=0.6)
    assert b is not None
    assert not b.grow(tokens=20, worst_usd=0.1)  # a follow-up past the budget is refused
    assert b.worst_usd == pytest.approx(0.6)
    assert b.grow(tokens=20, worst_usd=0.05)
    assert budget.in_flight_usd == pytest.approx(0.65)


@pytest.mark.anyio
async def test_a_lease_charges_each_attempt_and_settles_with_real_usage() -> None:
    clock = FakeClock()
    rate = LocalRateBudget(tokens_per_minute=60_000, clock=clock)  # 1,000/s, 250 at once
    budget = RunBudget(rate=rate, concurrency=4)
    lease = await budget.acquire(tokens=100)
    assert lease is not None
    lease.unanswered()  # the first attempt failed: its tokens come back
    await lease.retry()
    lease.settle(30)  # the second was answered with 30 tokens
    assert rate._tokens is not None
    assert rate._tokens.level == pytest.approx(250 - 30)
