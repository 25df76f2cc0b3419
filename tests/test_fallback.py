"""[request.fallback]: the rows a failing primary leaves go to a second model, once each; the
switch that stops asking a primary that keeps failing, and asks it again later."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
from test_integration import make_reviews, write_jsonl

import pipeline
from pipeline.errors import ConfigError
from pipeline.estimates import estimate_job
from pipeline.execution import RunOutcome
from pipeline.execution.fallback import Breaker
from pipeline.execution.manifest import read_manifest
from pipeline.fake import FakeConfig, FakeProvider, running_fake_provider
from pipeline.job import Job, parse_job
from pipeline.job.pricing import lookup_price
from pipeline.render import Renderer
from pipeline.store.schema import SCHEMA_VERSION

PRIMARY = "gemini-2.5-flash-lite"
FALLBACK = "gpt-4o-mini"


def job_text(data: Path, db: Path, *, fallback: str = "", max_attempts: int = 3) -> str:
    return f"""
name = "nightly"
[input]
path = "{data}"
id = "id"
[request]
provider = "gemini"
model = "{PRIMARY}"
system = "Reply with one word."
prompt = "Review: {{text}}"
max_tokens = 8
{fallback}
[limits]
concurrency = 8
max_attempts = {max_attempts}
timeout_s = 5
[output]
db = "{db}"
"""


WITH_FALLBACK = f"""
[request.fallback]
provider = "openai"
model = "{FALLBACK}"
"""


def make(tmp: Path, rows: int, fallback: str = WITH_FALLBACK, **kw: Any) -> Job:
    data = write_jsonl(tmp / "rows.jsonl", make_reviews(rows))
    return parse_job(job_text(data, tmp / "r.duckdb", fallback=fallback, **kw), path="job.toml")


async def run(job: Job, fake: FakeProvider, notice: Any = None) -> RunOutcome:
    return await pipeline.arun(job, fake=fake, on_notice=notice)


def rows_of(job: Job) -> list[dict[str, Any]]:
    with duckdb.connect(job.output.db, read_only=True) as con:
        cur = con.execute("SELECT * FROM results ORDER BY row_id, run_id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_integration import backoff_s

    from pipeline.execution import online

    monkeypatch.setattr(
        online, "backoff_s", lambda a, **k: backoff_s(a, **{**k, "base": 0.005, "cap": 0.05})
    )


# -- the switch -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_twenty_failures_in_a_row_switch_over_and_a_probe_switches_back() -> None:
    clock = Clock()
    breaker = Breaker(cooldown_s=60, clock=clock, wall=clock)
    for _ in range(19):
        breaker.failed("overloaded")
    assert breaker.route() == "primary"
    breaker.failed("overloaded")
    assert breaker.tripped and breaker.route() == "fallback"
    clock.now += 59
    assert breaker.route() == "fallback"
    clock.now += 1
    assert breaker.route() == "primary"  # the probe
    assert breaker.route() == "fallback"  # the others, while it is out
    breaker.failed("timeout")  # the probe failed: another cooldown
    assert breaker.route() == "fallback"
    clock.now += 60
    assert breaker.route() == "primary"
    breaker.answered()
    assert breaker.route() == "primary" and not breaker.tripped
    assert [s.to for s in breaker.switches] == ["fallback", "fallback", "primary"]
    assert "20 requests in a row failed: overloaded" in breaker.switches[0].why


def test_half_of_the_last_thirty_seconds_failing_switches_over() -> None:
    clock = Clock()
    breaker = Breaker(cooldown_s=60, clock=clock, wall=clock)
    for _ in range(12):
        breaker.answered()
        breaker.failed("server_error")
        clock.now += 1
    assert breaker.tripped
    assert "10 of 20 requests in the last 30 s failed" in breaker.switches[0].why

    steady = Breaker(cooldown_s=60, clock=clock, wall=clock)
    for _ in range(40):  # one failure in three, spread over 40 s: not down
        steady.answered()
        steady.answered()
        steady.failed("server_error")
        clock.now += 1
    assert not steady.tripped


# -- the job file ---------------------------------------------------------------------------


def test_when_names_error_types_and_is_checked_at_load(tmp_path: Path) -> None:
    job = make(tmp_path, 1)
    assert job.request.fallback is not None
    assert job.request.fallback.when == ("overloaded", "timeout", "server_error")
    with pytest.raises(ConfigError) as bad:
        make(tmp_path, 1, fallback=WITH_FALLBACK + 'when = ["overloaded", "busy"]')
    assert "[request.fallback.when]" in str(bad.value)
    assert "'busy'" in str(bad.value) and "context_exceeded" in str(bad.value)
    with pytest.raises(ConfigError) as unknown:
        make(tmp_path, 1, fallback=WITH_FALLBACK + "retries = 2")
    assert "[request.fallback.retries]" in str(unknown.value)
    # The fallback is not part of the request version: rows keep their keys.
    without = make(tmp_path, 1, fallback="")
    assert Renderer(job.request).prompt_hash == Renderer(without.request).prompt_hash


# -- whole runs ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_down_primary_ends_with_every_row_ok_on_the_fallback_paid_once(
    tmp_path: Path, quick_backoff: None
) -> None:
    job = make(tmp_path, 120)
    async with running_fake_provider(FakeConfig(fail_model=PRIMARY)) as fake:
        session = await run(job, fake)
        accounting = fake.accounting()
    rows = rows_of(job)
    assert len(rows) == 120 and {r["status"] for r in rows} == {"ok"}
    assert {(r["provider"], r["model"], r["fallback_from"]) for r in rows} == {
        ("openai", FALLBACK, PRIMARY)
    }
    price = lookup_price("openai", FALLBACK)
    assert price is not None and all(r["cost_usd"] > 0 for r in rows)
    assert accounting["duplicates_paid"] == 0 and accounting["paid_total"] == 120
    stats = session.stats
    assert stats.rows_fallback == 120
    assert [s["to"] for s in stats.fallback_switches] == ["fallback"]
    # Most rows never tried the primary: the switch sent them straight over.
    assert sum(r["attempts"] for r in rows) < 2 * 120
    manifest = read_manifest(session.manifest_path)
    assert manifest.fallback is not None and manifest.fallback["rows"] == 120
    assert manifest.fallback["switches"][0]["to"] == "fallback"
    with duckdb.connect(job.output.db, read_only=True) as con:
        by_model = con.execute("SELECT model, rows FROM cost_by_model").fetchall()
        version = con.execute("SELECT max(version) FROM schema_version").fetchone()
    assert by_model == [(FALLBACK, 120)]
    assert version == (SCHEMA_VERSION,) and SCHEMA_VERSION >= 3  # fallback_from came in 3

    # Tomorrow, with the primary back: nothing is sent again.
    async with running_fake_provider() as fake:
        again = await run(job, fake)
        assert fake.accounting()["requests"] == 0
    assert again.stats.rows_skipped == 120


@pytest.mark.anyio
async def test_without_a_fallback_a_down_primary_fails_its_rows_as_before(
    tmp_path: Path, quick_backoff: None
) -> None:
    job = make(tmp_path, 20, fallback="", max_attempts=2)
    async with running_fake_provider(FakeConfig(fail_model=PRIMARY)) as fake:
        await run(job, fake)
    rows = rows_of(job)
    assert len(rows) == 20
    assert {(r["status"], r["error_type"], r["fallback_from"]) for r in rows} == {
        ("failed", "overloaded", None)
    }


@pytest.mark.anyio
async def test_after_the_cooldown_a_probe_finds_the_primary_back_and_rows_return_to_it(
    tmp_path: Path, quick_backoff: None
) -> None:
    job = make(tmp_path, 400, fallback=WITH_FALLBACK + "cooldown_s = 0.2")
    async with running_fake_provider(FakeConfig(fail_model=PRIMARY, latency_ms=5)) as fake:

        def notice(message: str) -> None:
            if message.startswith("new rows go to fallback"):
                fake.update_config(fail_model=None)  # the primary comes back

        session = await run(job, fake, notice)
    rows = rows_of(job)
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 400
    models = {r["model"] for r in rows}
    assert models == {PRIMARY, FALLBACK}
    assert [s["to"] for s in session.stats.fallback_switches] == ["fallback", "primary"]
    assert all(r["fallback_from"] == PRIMARY for r in rows if r["model"] == FALLBACK)
    assert all(r["fallback_from"] is None for r in rows if r["model"] == PRIMARY)


@pytest.mark.anyio
async def test_rows_too_long_for_the_primary_go_to_a_fallback_with_a_larger_context(
    tmp_path: Path,
) -> None:
    rows = [{"id": "short", "text": "great"}, {"id": "long", "text": "word " * 400}]
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    fallback = WITH_FALLBACK + 'when = ["overloaded", "context_exceeded"]\ncontext_window = 100000'
    text = job_text(data, tmp_path / "r.duckdb", fallback=fallback)
    job = parse_job(text.replace("max_tokens = 8", "max_tokens = 8\ncontext_window = 200"))
    async with running_fake_provider() as fake:
        await run(job, fake)
    got = {r["row_id"]: (r["status"], r["model"]) for r in rows_of(job)}
    assert got == {"short": ("ok", PRIMARY), "long": ("ok", FALLBACK)}


def test_the_estimate_counts_the_dearer_model_in_the_worst_case(tmp_path: Path) -> None:
    dear = WITH_FALLBACK.replace(FALLBACK, "gpt-4o")
    estimate = estimate_job(make(tmp_path, 50, fallback=dear))
    assert estimate.fallback == "openai gpt-4o"
    assert estimate.cost_fallback_worst is not None
    assert estimate.cost_online_worst == estimate.cost_fallback_worst
    plain = estimate_job(make(tmp_path, 50, fallback=""))
    assert plain.cost_online_worst is not None
    assert plain.cost_online_worst < estimate.cost_fallback_worst
