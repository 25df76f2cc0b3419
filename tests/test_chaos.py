"""A few seeds of the fault matrix (tests/chaos.py) in the regular suite.

Each seed runs ``pipeline run`` / ``pipeline resume`` as subprocesses against
``pipeline fake-provider`` on 127.0.0.1 with faults switched on, interrupts the run by SIGKILL
or SIGTERM at moments chosen from the fake's accounting, and checks README "Never lose a row,
never pay twice" from DuckDB and the fake's accounting. ``python tests/chaos.py --seeds 20``
runs the full matrix; the seeds here are small (200 rows) so this file stays well under 30 s.

The ``evaluate`` tests feed the checks made-up observations, so it is known that each invariant
can fail.
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import pytest
from chaos import (
    Observed,
    Plan,
    SeedResult,
    Snapshot,
    evaluate,
    plan_for_seed,
    run_seed,
    running_fake,
)

from pipeline.job.pricing import cost_usd, lookup_price
from pipeline.records import Usage

ROWS = 200

# seed -> what it must exercise (asserted on its plan, so a change to plan_for_seed cannot
# quietly take the kill or the SIGTERM out of the suite)
SEEDS = {
    44: "openai; 429 storm, 503s, hangs, drops, malformed and empty bodies; SIGKILL",
    29: "anthropic; 429 storm, hangs, empty bodies; SIGTERM, then two SIGKILLs",
    52: "openai; 503s, hangs, drops; SIGTERM",
}


def _explain(r: SeedResult) -> str:
    return (
        f"seed {r.seed} ({r.provider}: {r.faults}), {r.rows} rows, {r.requests} requests, "
        f"{r.rate_limited} × 429, state {r.state!r}, cost {r.cost_check}; "
        f"reproduce: python tests/chaos.py --seeds 1 --start {r.seed} --rows {ROWS} --keep\n"
        + "\n".join(f"  - {v}" for v in r.violations)
    )


def test_the_seeds_cover_sigkill_sigterm_and_both_providers() -> None:
    plans = {seed: plan_for_seed(seed, ROWS) for seed in SEEDS}
    kinds = {i.kind for p in plans.values() for i in p.interruptions}
    assert {"kill", "sigterm"} <= kinds, kinds
    assert {p.provider for p in plans.values()} == {"openai", "anthropic"}
    assert any("requests_per_second" in p.knobs for p in plans.values()), "no 429 storm"
    assert any("hang_rate" in p.knobs for p in plans.values()), "no hangs"


def test_a_seed_is_the_same_plan_every_time() -> None:
    assert plan_for_seed(44, ROWS) == plan_for_seed(44, ROWS)
    assert plan_for_seed(44) != plan_for_seed(45)


@pytest.fixture(scope="module")
def chaos_results() -> dict[int, SeedResult]:
    """The seeds, run side by side: each has its own fake, folder and processes, and spends
    most of its time waiting on rate limits and backoff, so together they take the time of the
    slowest."""
    with concurrent.futures.ThreadPoolExecutor(len(SEEDS)) as pool:
        futures = {seed: pool.submit(run_seed, seed, ROWS) for seed in SEEDS}
        return {seed: future.result() for seed, future in futures.items()}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", list(SEEDS), ids=[f"seed{s}" for s in SEEDS])
def test_interrupted_runs_lose_no_row_and_pay_twice_only_for_what_a_kill_lost(
    seed: int, chaos_results: dict[int, SeedResult]
) -> None:
    plan = plan_for_seed(seed, ROWS)
    r = chaos_results[seed]
    planned = {i.kind for i in plan.interruptions}
    # Every planned interruption happened: the moments come well before the run can end.
    assert (r.kills, r.graceful) == (
        sum(1 for i in plan.interruptions if i.kind == "kill"),
        sum(1 for i in plan.interruptions if i.kind != "kill"),
    ), f"not every interruption of {planned} happened: {_explain(r)}"
    assert r.lost == 0, f"{r.lost} rows lost: {_explain(r)}"
    assert r.dup_rows == 0, f"{r.dup_rows} duplicate rows: {_explain(r)}"
    assert r.not_ok == 0, f"{r.not_ok} rows not ok despite transient faults: {_explain(r)}"
    assert r.state == "completed", _explain(r)
    assert r.extra_paid <= r.bound, f"paid twice {r.extra_paid} > {r.bound}: {_explain(r)}"
    if r.kills == 0:
        assert r.extra_paid == 0, f"graceful stops only, yet paid twice: {_explain(r)}"
    assert r.cost_check == "ok", _explain(r)
    assert r.ok, _explain(r)


# -- the checks can fail ----------------------------------------------------------------------

_PLAN = Plan(
    seed=0,
    provider="openai",
    rows=3,
    concurrency=16,
    timeout_s=1.0,
    requests_per_minute=None,
    knobs={},
    interruptions=(),
)
_TOKENS = 100  # input tokens of every made-up answer
_COST = cost_usd(lookup_price("openai", "gpt-4o-mini"), Usage(input_tokens=_TOKENS)) or 0.0


def _observed(**changes: object) -> Observed:
    """Three rows, each paid once and committed once: a clean run."""
    base: dict[str, object] = {
        "ids": ("a", "b", "c"),
        "state": "completed",
        "runs": 1,
        "results": tuple((i, f"k{i}", "ok", _COST) for i in "abc"),
        "accounting": _accounting({"ka": 1, "kb": 1, "kc": 1}),
        "kills": 0,
        "graceful": 0,
    }
    base.update(changes)
    return Observed(**base)  # type: ignore[arg-type]


def _accounting(paid: dict[str, int]) -> dict[str, object]:
    return {
        "requests": sum(paid.values()),
        "by_status": {"200": sum(paid.values())},
        "arrived": dict(paid),
        "paid": dict(paid),
        "duplicates_paid": sum(n - 1 for n in paid.values() if n > 1),
        "tokens": {
            "input": _TOKENS * sum(paid.values()),
            "output": 0,
            "cache_read": 0,
            "cache_write": 0,
        },
    }


def test_a_clean_run_passes() -> None:
    r = evaluate(_PLAN, _observed())
    assert r.ok, r.violations


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"results": tuple((i, f"k{i}", "ok", _COST) for i in "ab")}, "1 input rows"),
        (
            {"results": (*((i, f"k{i}", "ok", _COST) for i in "abc"), ("c", "kc", "ok", _COST))},
            "1 results beyond one per request key",
        ),
        (
            {"results": (*((i, f"k{i}", "ok", _COST) for i in "ab"), ("c", "kc", "failed", None))},
            "1 rows are not ok",
        ),
        ({"state": "stopped: signal"}, "runs.state is 'stopped: signal'"),
        ({"accounting": _accounting({"ka": 2, "kb": 1, "kc": 1})}, "no SIGKILL"),
        ({"accounting": _accounting({"ka": 1, "kb": 1, "kc": 1, "kz": 1})}, "no result"),
    ],
    ids=["lost", "duplicate", "not-ok", "state", "paid-twice", "stray-payment"],
)
def test_each_broken_promise_is_a_violation(changes: dict[str, object], expected: str) -> None:
    r = evaluate(_PLAN, _observed(**changes))
    assert any(expected in v for v in r.violations), r.violations


def test_paying_twice_is_allowed_up_to_the_requests_in_flight_at_each_kill() -> None:
    accounting = _accounting({"ka": 2, "kb": 2, "kc": 1})
    r = evaluate(_PLAN, _observed(accounting=accounting, kills=1))
    assert r.bound == _PLAN.concurrency
    assert (r.extra_paid, r.ok) == (2, True), r.violations
    assert r.per_kill == f"2/{_PLAN.concurrency}"


def test_a_resume_that_sends_a_committed_row_again_is_caught() -> None:
    snap = Snapshot(
        kind="kill",
        exit_code=-9,
        state="running",
        committed=frozenset({"ka"}),
        arrived={"ka": 1},
        paid_by_it=frozenset({"ka"}),
    )
    accounting = {**_accounting({"ka": 1, "kb": 1, "kc": 1}), "arrived": {"ka": 2, "kb": 1}}
    r = evaluate(_PLAN, _observed(accounting=accounting, kills=1, snapshots=(snap,)))
    assert any("sent again by the resume" in v for v in r.violations), r.violations


def test_a_graceful_stop_that_leaves_a_paid_answer_uncommitted_is_caught() -> None:
    snap = Snapshot(
        kind="sigterm",
        exit_code=3,
        state="stopped: signal",
        committed=frozenset({"ka"}),
        arrived={"ka": 1, "kb": 1},
        paid_by_it=frozenset({"ka", "kb"}),
    )
    r = evaluate(_PLAN, _observed(graceful=1, snapshots=(snap,)))
    assert any("paid but not committed" in v for v in r.violations), r.violations


def test_a_cost_that_does_not_add_up_is_caught() -> None:
    results = (*((i, f"k{i}", "ok", _COST) for i in "ab"), ("c", "kc", "ok", 2 * _COST))
    r = evaluate(_PLAN, _observed(results=results))
    assert r.cost_check.startswith("results sum to"), r.cost_check


# -- the fake provider's command line -----------------------------------------------------------


def test_the_fake_provider_runs_with_the_knobs_its_flags_give(tmp_path: Path) -> None:
    """Regression: ``--error-status 503`` once gave error_status 503.0, and GET
    /_fake/accounting then answered 500 once an error and a dropped connection were counted."""
    knobs = {"error_rate": 0.5, "error_status": 503, "drop_rate": 0.5, "seed": 1}
    with running_fake(knobs, tmp_path / "fake.log") as fake:
        statuses = {fake.chat() for _ in range(12)}
        config = fake.config()
        accounting = fake.accounting()
    assert type(config["error_status"]) is int, config["error_status"]
    assert {0, 503} <= statuses, statuses  # 0: the connection was dropped
    assert accounting["by_status"].get("503", 0) > 0, accounting["by_status"]
