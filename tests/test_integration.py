"""Whole jobs against the fake provider as a real loopback server.

Each test builds the pieces the way ``pipeline run`` does (``Store`` on a tmp file, the job's
provider on the aiohttp transport, ``LocalRateBudget``, the genai-prices price, ``Runner``) and
runs them on the test's event loop, next to a ``running_fake_provider`` on 127.0.0.1, port 0.
What is asserted is what a user would see: the rows of the ``results`` view, the run's outcome,
and what the provider says it received and charged (its accounting endpoint).
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline
from pipeline.execution import RunOutcome
from pipeline.execution import online as online_module
from pipeline.fake import FakeConfig, FakeProvider, running_fake_provider
from pipeline.job import Job, parse_job
from pipeline.job.pricing import cost_usd, lookup_price
from pipeline.limits.retry import backoff_s
from pipeline.records import RunState, Usage
from pipeline.store import Store

pytestmark = pytest.mark.anyio

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
API_KEY = "sk" + "-integration-SECRET-4f1c2a9be07d"
LABELS = ("positive", "negative", "neutral")
SYSTEM = "You are a sentiment classifier. Reply with one word: positive, negative or neutral."
PROMPT = "Review: {text}"

# Reviews whose sentiment is unambiguous for the fake (it counts cue words), so every row's
# expected answer is known in advance and a row given another row's answer is caught.
_PRODUCTS = ("kettle", "blender", "desk lamp", "backpack", "tent", "monitor", "rice cooker")
_OPENERS = {
    "positive": ("I love this {p}.", "Great {p}, I would recommend it.", "An excellent {p}."),
    "negative": ("Terrible {p}, it arrived broken.", "The worst {p}; I want a refund."),
    "neutral": ("The {p} arrived on Tuesday.", "It is a {p} like any other."),
}
_MIDDLES = (
    "Shipping took four days.",
    "The colour matches the photos.",
    "Setup took ten minutes with the manual.",
    "I compared it with two other models.",
)


# -- helpers ------------------------------------------------------------------------------------


def make_reviews(n: int, *, seed: int = 7) -> list[dict[str, Any]]:
    """``n`` review rows ``{"id", "text", "label"}``; some texts repeat under other ids."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        product = rng.choice(_PRODUCTS)
        opener = rng.choice(_OPENERS[label]).format(p=product)
        text = " ".join([opener, *rng.sample(_MIDDLES, 2)])
        rows.append({"id": f"r{i:05d}", "text": text, "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def make_job(
    tmp_path: Path,
    provider: str,
    input_path: Path,
    *,
    db: Path | None = None,
    prompt: str = PROMPT,
    system: str = SYSTEM,
    name: str = "reviews",
    **limits: float,
) -> Job:
    """A job file's text, parsed the way ``load_job`` parses it; ``limits`` fill ``[limits]``."""
    limits = {"concurrency": 16, "timeout_s": 5, "max_attempts": 6, **limits}
    limit_lines = "\n".join(f"{key} = {value}" for key, value in limits.items())
    text = f"""
name = "{name}"

[input]
path = "{input_path}"
id = "id"

[request]
provider = "{provider}"
model = "{MODELS[provider]}"
system = "{system}"
prompt = "{prompt}"
max_tokens = 5
temperature = 0

[limits]
{limit_lines}

[output]
db = "{db or tmp_path / "results.duckdb"}"
"""
    return parse_job(text, path=str(tmp_path / "job.toml"))


async def run_job(job: Job, fake: FakeProvider, *, api_key: str = API_KEY) -> RunOutcome:
    """One run of ``job`` against ``fake`` as a real provider (its URL, a key), through the
    library's one call."""
    base_url = fake.base_url(job.request.provider)
    return await pipeline.arun(job, base_url=base_url, api_key=api_key)


def query(job_or_db: Job | Path, sql: str, params: Any = None) -> list[dict[str, Any]]:
    db = job_or_db.output.db if isinstance(job_or_db, Job) else job_or_db
    with Store(db, read_only=True) as store:
        return store.query(sql, params)


def results(job: Job) -> list[dict[str, Any]]:
    return query(job, "SELECT * EXCLUDE (finished_at) FROM results ORDER BY row_id, run_id")


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's own backoff, with a 5 ms base instead of 500 ms (retry-after still wins).

    The fault tests retry hundreds of times; with the production base they would spend
    seconds asleep without testing anything more.
    """

    def quick(attempt: int, **kwargs: Any) -> float:
        return backoff_s(attempt, **{**kwargs, "base": 0.005, "cap": 0.05})

    monkeypatch.setattr(online_module, "backoff_s", quick)


def assert_all_ok_and_paid_once(
    job: Job, fake: FakeProvider, rows: list[dict[str, Any]], *, refused: int = 0
) -> None:
    """Every input row has exactly one ok result, with the right answer, bought exactly once.

    ``refused``: requests the provider got that no recorded attempt accounts for (a run that
    stopped on a fatal error records nothing for the rows it had in flight).
    """
    got = results(job)
    assert sorted(r["row_id"] for r in got) == sorted(row["id"] for row in rows)
    assert {r["status"] for r in got} == {"ok"}
    expected = {row["id"]: row["label"] for row in rows}
    assert {r["row_id"]: r["output_text"] for r in got} == expected
    acc = fake.accounting()
    assert acc["duplicates_paid"] == 0
    assert acc["paid"] == {r["request_key"]: 1 for r in got}
    # Every request the provider received was an attempt of some row, and vice versa.
    assert sum(r["attempts"] for r in got) + refused == acc["requests"]


# -- 1. a whole job per provider -----------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_whole_job_stores_one_priced_answer_per_row(tmp_path: Path, provider: str) -> None:
    rows = make_reviews(200)
    job = make_job(tmp_path, provider, write_jsonl(tmp_path / "reviews.jsonl", rows))

    async with running_fake_provider(FakeConfig()) as fake:
        outcome = await run_job(job, fake)
        acc = fake.accounting()

    assert outcome.state == "completed"
    assert outcome.stats.rows_ok == 200
    got = results(job)
    assert len(got) == 200
    assert_all_ok_and_paid_once(job, fake, rows)

    # The answers are deterministic: the same review text always got the same answer.
    by_text: dict[str, set[str]] = {}
    text_of = {row["id"]: row["text"] for row in rows}
    for r in got:
        by_text.setdefault(text_of[r["row_id"]], set()).add(r["output_text"])
    assert any(len([x for x in rows if x["text"] == t]) > 1 for t in by_text)  # repeats exist
    assert all(len(answers) == 1 for answers in by_text.values())

    # Tokens: what the provider billed is what the results say, row for row in total.
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in got)
    assert sum(r["input_tokens"] for r in got) == acc["tokens"]["input"]
    assert sum(r["output_tokens"] for r in got) == acc["tokens"]["output"]
    assert all(r["total_tokens"] == r["input_tokens"] + r["output_tokens"] for r in got)

    # Cost: each row's cost is genai-prices' rate applied to that row's tokens.
    price = lookup_price(provider, MODELS[provider])
    assert price is not None
    for r in got:
        usage = Usage(
            input_tokens=r["input_tokens"],
            output_tokens=r["output_tokens"],
            cache_read_tokens=r["cache_read_tokens"],
            cache_write_tokens=r["cache_write_tokens"],
            reasoning_tokens=r["reasoning_tokens"],
        )
        assert r["cost_usd"] > 0
        assert r["cost_usd"] == pytest.approx(cost_usd(price, usage), rel=1e-12)
    assert outcome.stats.cost_usd == pytest.approx(sum(r["cost_usd"] for r in got), rel=1e-9)

    assert {r["mode"] for r in got} == {"online"}
    assert {(r["provider"], r["model"]) for r in got} == {(provider, MODELS[provider])}
    assert all(r["latency_ms"] is not None and r["latency_ms"] > 0 for r in got)
    assert all(r["attempts"] == 1 and r["error"] is None for r in got)

    # Every request body was valid: the provider answered each one 200, exactly once per row.
    assert acc["by_status"] == {"200": 200}
    assert acc["requests"] == 200

    (run,) = query(job, "SELECT state, rows_ok, rows_failed, cost_usd FROM runs")
    assert run["state"] == "completed"
    assert (run["rows_ok"], run["rows_failed"]) == (200, 0)
    assert run["cost_usd"] == pytest.approx(outcome.stats.cost_usd, rel=1e-9)


async def test_prompt_cache_reads_are_stored_and_priced_at_the_cache_rate(tmp_path: Path) -> None:
    # OpenAI caches a prompt prefix of 1,024 tokens and more by itself; so does the fake.
    long_system = SYSTEM + " Think about the review before you answer." * 120
    rows = make_reviews(40)
    job = make_job(
        tmp_path,
        "openai",
        write_jsonl(tmp_path / "reviews.jsonl", rows),
        system=long_system,
        concurrency=4,
    )

    async with running_fake_provider(FakeConfig()) as fake:
        outcome = await run_job(job, fake)
        acc = fake.accounting()

    assert outcome.state == "completed"
    assert_all_ok_and_paid_once(job, fake, rows)
    got = results(job)
    cached = [r for r in got if r["cache_read_tokens"] > 0]
    assert len(cached) >= len(rows) // 2
    assert sum(r["cache_read_tokens"] for r in got) == acc["tokens"]["cache_read"]
    assert sum(r["input_tokens"] for r in got) == acc["tokens"]["input"]
    price = lookup_price("openai", MODELS["openai"])
    assert price is not None and price.cache_read_mtok is not None
    assert price.cache_read_mtok < price.input_mtok
    for r in got:
        usage = Usage(r["input_tokens"], r["output_tokens"], r["cache_read_tokens"])
        assert r["cost_usd"] == pytest.approx(cost_usd(price, usage), rel=1e-12)
    for r in cached:  # the cached part of the prompt was charged at the lower rate
        uncached = cost_usd(price, Usage(r["input_tokens"], r["output_tokens"]))
        assert uncached is not None and r["cost_usd"] < uncached


# -- 2. reruns -----------------------------------------------------------------------------------


async def test_a_rerun_sends_nothing_and_a_new_prompt_sends_everything_again(
    tmp_path: Path,
) -> None:
    rows = make_reviews(120)
    reviews = write_jsonl(tmp_path / "reviews.jsonl", rows)
    job = make_job(tmp_path, "openai", reviews)

    async with running_fake_provider(FakeConfig()) as fake:
        first = await run_job(job, fake)
        after_first = fake.accounting()

        again = await run_job(job, fake)
        assert fake.accounting() == after_first  # not one request more
        assert again.state == "completed"
        assert again.stats.rows_skipped == 120
        assert again.stats.requests_sent == 0
        assert again.stats.rows_done == 0

        changed = make_job(tmp_path, "openai", reviews, prompt="Classify this review: {text}")
        third = await run_job(changed, fake)
        acc = fake.accounting()

    assert first.stats.rows_ok == 120 and third.stats.rows_ok == 120
    assert third.stats.rows_skipped == 0
    assert acc["requests"] == 240
    assert acc["duplicates_paid"] == 0

    got = results(job)
    assert len(got) == 240  # the empty rerun wrote nothing
    versions = {r["prompt_hash"] for r in got}
    assert len(versions) == 2
    assert {r["run_id"] for r in got} == {first.run_id, third.run_id}
    per_row: dict[str, dict[str, str]] = {}
    for r in got:
        per_row.setdefault(r["row_id"], {})[r["prompt_hash"]] = r["output_text"]
    assert len(per_row) == 120
    # Both versions of every row sit side by side, and the fake answered both the same way.
    assert all(len(answers) == 2 for answers in per_row.values())
    assert all(len(set(answers.values())) == 1 for answers in per_row.values())
    assert {r["request_key"] for r in got if r["run_id"] == first.run_id}.isdisjoint(
        r["request_key"] for r in got if r["run_id"] == third.run_id
    )
    runs = query(job, "SELECT run_id, state, rows_ok FROM runs ORDER BY started_at")
    assert [(r["state"], r["rows_ok"]) for r in runs] == [
        ("completed", 120),
        ("completed", 0),
        ("completed", 120),
    ]


# -- 3. a 429 storm ------------------------------------------------------------------------------


async def test_a_rate_limited_provider_does_not_start_a_429_storm(tmp_path: Path) -> None:
    rows = make_reviews(150)
    rps, burst_s, concurrency = 20.0, 1.0, 32
    job = make_job(
        tmp_path,
        "openai",
        write_jsonl(tmp_path / "reviews.jsonl", rows),
        concurrency=concurrency,
        max_attempts=10,
        timeout_s=10,
    )

    async with running_fake_provider(FakeConfig(requests_per_second=rps, burst_s=burst_s)) as fake:
        outcome = await run_job(job, fake)
        acc = fake.accounting()

    assert outcome.state == "completed"
    assert_all_ok_and_paid_once(job, fake, rows)
    got_429 = acc["by_status"].get("429", 0)
    assert outcome.stats.rate_limited == got_429  # the summary reports what really happened
    assert acc["by_status"]["200"] == 150

    # The bound comes from the set-up, not from a measurement. The job sets no rate, so the
    # first `concurrency` requests meet a bucket holding capacity = rps * burst_s: up to
    # (concurrency - capacity) 429s cannot be avoided. After that every 429 pauses the whole
    # run for the provider's retry-after (the fake says >= 1 s) and cuts the rate below the
    # limit the provider advertises, so at most about one more 429 per second of the run.
    # For scale: a client whose workers each just waited out retry-after on their own would
    # collect (concurrency - rps) 429s in every second, (concurrency - rps) * minimum_s in all.
    capacity = rps * burst_s
    minimum_s = (len(rows) - capacity) / rps  # what the provider's bucket allows at best
    seconds = outcome.stats.elapsed_s
    bound = (concurrency - capacity) + math.ceil(seconds)
    independent_retries = (concurrency - capacity) + (concurrency - rps) * minimum_s
    summary = f"{got_429} × 429 for {len(rows)} rows in {seconds:.1f}s (bound {bound})"
    assert got_429 <= bound, summary
    assert bound < independent_retries / 2 and bound <= len(rows)
    # ... and it did not get there by crawling: within twice what the provider allows.
    assert seconds < 2 * minimum_s + 2, summary


# -- 4. transient failures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "knobs", "fault"),
    [
        ("openai", {"error_rate": 0.3}, "error"),
        ("anthropic", {"error_rate": 0.3}, "error"),
        ("openai", {"drop_rate": 0.2}, "drop"),
        ("openai", {"malformed_rate": 0.2}, "malformed"),
        ("anthropic", {"empty_rate": 0.2}, "empty"),
    ],
    ids=["openai-500", "anthropic-529", "dropped", "malformed", "empty"],
)
@pytest.mark.usefixtures("fast_backoff")
async def test_transient_failures_are_retried_until_every_row_is_ok(
    tmp_path: Path, provider: str, knobs: dict[str, float], fault: str
) -> None:
    rows = make_reviews(120)
    job = make_job(
        tmp_path, provider, write_jsonl(tmp_path / "reviews.jsonl", rows), max_attempts=12
    )

    async with running_fake_provider(FakeConfig(seed=3, **knobs)) as fake:
        outcome = await run_job(job, fake)
        acc = fake.accounting()

    assert outcome.state == "completed"
    assert_all_ok_and_paid_once(job, fake, rows)
    got = results(job)
    faults = acc["faults"].get(fault, 0)
    assert faults > 10
    assert set(acc["faults"]) == {fault}
    # Each injected fault cost exactly one more attempt of some row, and nothing else did.
    assert sum(r["attempts"] - 1 for r in got) == faults
    assert outcome.stats.retries == faults
    assert any(r["attempts"] > 1 for r in got)
    if fault == "error":
        assert acc["by_status"].get("529" if provider == "anthropic" else "500") == faults


@pytest.mark.usefixtures("fast_backoff")
async def test_hung_requests_time_out_and_are_retried(tmp_path: Path) -> None:
    rows = make_reviews(120)
    job = make_job(
        tmp_path,
        "openai",
        write_jsonl(tmp_path / "reviews.jsonl", rows),
        timeout_s=0.3,
        max_attempts=8,
    )

    hang_s = 5.0
    async with running_fake_provider(FakeConfig(seed=5, hang_rate=0.1, hang_s=hang_s)) as fake:
        outcome = await run_job(job, fake)
        acc = fake.accounting()

    assert outcome.state == "completed"
    # The client gave up on hung requests after timeout_s, not when the server let go of them.
    assert outcome.stats.elapsed_s < hang_s
    assert_all_ok_and_paid_once(job, fake, rows)
    hangs = acc["faults"]["hang"]
    assert hangs >= 3
    assert sum(r["attempts"] - 1 for r in results(job)) == hangs
    # latency_ms is the successful attempt's, not the time since the row's first attempt.
    retried = [r for r in results(job) if r["attempts"] > 1]
    assert retried and all(r["latency_ms"] < 300 for r in retried)


@pytest.mark.parametrize(
    ("provider", "knobs", "error_type", "in_error"),
    [
        ("openai", {"error_rate": 1.0}, "server_error", "HTTP 500"),
        ("anthropic", {"error_rate": 1.0}, "overloaded", "HTTP 529"),
        ("openai", {"error_rate": 1.0, "error_status": 503}, "overloaded", "HTTP 503"),
        ("openai", {"drop_rate": 1.0}, "connection_error", "connection"),
        ("openai", {"malformed_rate": 1.0}, "bad_response", "not valid JSON"),
        ("anthropic", {"empty_rate": 1.0}, "empty_response", "empty response"),
        ("openai", {"hang_rate": 1.0, "hang_s": 5.0}, "timeout", "timed out|timeout"),
    ],
    ids=["500", "529", "503", "dropped", "malformed", "empty", "hang"],
)
@pytest.mark.usefixtures("fast_backoff")
async def test_when_attempts_run_out_every_row_fails_naming_the_failure(
    tmp_path: Path, provider: str, knobs: dict[str, Any], error_type: str, in_error: str
) -> None:
    rows = make_reviews(24)
    job = make_job(
        tmp_path,
        provider,
        write_jsonl(tmp_path / "reviews.jsonl", rows),
        max_attempts=2,
        timeout_s=0.2,
    )

    async with running_fake_provider(FakeConfig(**knobs)) as fake:
        outcome = await run_job(job, fake)
        acc = fake.accounting()

    assert outcome.state == "completed"  # rows failed; the run itself did not
    assert outcome.stats.rows_failed == 24
    got = results(job)
    assert sorted(r["row_id"] for r in got) == sorted(row["id"] for row in rows)
    for r in got:
        assert r["status"] == "failed"
        assert r["error_type"] == error_type
        assert re.search(in_error, r["error"]), r["error"]
        assert r["attempts"] == 2
        assert r["output_text"] is None
        assert r["input_tokens"] == 0 and r["cost_usd"] is None
    assert acc["requests"] == 48
    assert acc["paid_total"] == 0


@pytest.mark.usefixtures("fast_backoff")
async def test_rows_that_failed_are_sent_again_by_the_next_run(tmp_path: Path) -> None:
    rows = make_reviews(24)
    job = make_job(tmp_path, "anthropic", write_jsonl(tmp_path / "r.jsonl", rows), max_attempts=2)

    async with running_fake_provider(FakeConfig(error_rate=1.0)) as fake:
        first = await run_job(job, fake)
        fake.update_config(error_rate=0.0)
        second = await run_job(job, fake)
        third = await run_job(job, fake)
        acc = fake.accounting()

    assert (first.stats.rows_failed, first.stats.rows_ok) == (24, 0)
    assert (second.stats.rows_skipped, second.stats.rows_ok) == (0, 24)
    assert (third.stats.rows_skipped, third.stats.requests_sent) == (24, 0)
    got = results(job)
    assert sorted((r["run_id"], r["status"]) for r in got) == sorted(
        [(first.run_id, "failed")] * 24 + [(second.run_id, "ok")] * 24
    )
    assert acc["requests"] == 24 * 2 + 24
    assert acc["paid_total"] == 24 and acc["duplicates_paid"] == 0


# -- 5. fatal provider errors ------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize(
    ("knob", "says"),
    [("auth_fail", "authentication failed"), ("quota_exhausted", "quota")],
    ids=["401", "quota"],
)
async def test_a_bad_key_or_no_quota_stops_the_run_at_once_and_leaves_rows_to_resume(
    tmp_path: Path, provider: str, knob: str, says: str
) -> None:
    rows = make_reviews(200)
    concurrency = 8
    job = make_job(
        tmp_path,
        provider,
        write_jsonl(tmp_path / "reviews.jsonl", rows),
        concurrency=concurrency,
    )

    async with running_fake_provider(FakeConfig(**{knob: True})) as fake:
        outcome = await run_job(job, fake)
        refused = fake.accounting()["requests"]

        assert outcome.state is RunState.FAILED
        assert outcome.message is not None
        if knob == "auth_fail" or provider == "openai":
            assert KEY_ENV[provider] in outcome.message
        assert says in outcome.message
        for text in (outcome.status, outcome.message):
            assert API_KEY not in text
            assert API_KEY[-12:] not in text
        # Not one request per row: the run stopped with the first answers.
        assert 1 <= refused <= concurrency
        assert outcome.stats.rows_failed == 0
        assert query(job, "SELECT count(*) AS n FROM results") == [{"n": 0}]
        (run,) = query(job, "SELECT state FROM runs")
        assert run["state"] == outcome.status

        # Fix the account and run again: every row is still there to be sent.
        fake.update_config(**{knob: False})
        resumed = await run_job(job, fake)

    assert resumed.state == "completed"
    assert resumed.stats.rows_ok == 200
    assert_all_ok_and_paid_once(job, fake, rows, refused=refused)


# -- 6. bad input --------------------------------------------------------------------------------


async def test_bad_input_lines_are_recorded_as_input_errors_and_the_rest_run(
    tmp_path: Path,
) -> None:
    good = make_reviews(30)
    bad = {
        # line number (1-based) -> (the line, the error_type its result must carry)
        5: (b'{"id": "broken", "text": "unterminated', "bad_json"),
        11: (b'["a", "list", "not", "an", "object"]', "not_an_object"),
        17: (b'{"id": "latin1", "text": "caf\xe9 au lait"}', "bad_encoding"),
        23: (b'{"id": "no-text", "body": "the template needs text"}', "missing_field"),
        29: (b'{"text": "no id field at all"}', "missing_id"),
    }
    blank = 9  # a blank line is skipped, not an error, and later lines keep their numbers
    lines: list[bytes] = []
    good_line: dict[str, int] = {}
    rest = iter(good)
    for lineno in range(1, len(good) + len(bad) + 2):
        if lineno in bad:
            lines.append(bad[lineno][0])
        elif lineno == blank:
            lines.append(b"")
        else:
            row = next(rest)
            good_line[row["id"]] = lineno
            lines.append(orjson.dumps(row))
    assert next(rest, None) is None
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    job = make_job(tmp_path, "anthropic", path)

    async with running_fake_provider(FakeConfig()) as fake:
        outcome = await run_job(job, fake)
        acc = fake.accounting()

    assert outcome.state == "completed"
    assert outcome.stats.rows_ok == 30
    assert outcome.stats.rows_input_error == len(bad)
    assert acc["requests"] == 30 and acc["by_status"] == {"200": 30}

    got = results(job)
    ok = [r for r in got if r["status"] == "ok"]
    assert {r["row_id"]: r["output_text"] for r in ok} == {row["id"]: row["label"] for row in good}
    assert {r["row_id"]: r["line"] for r in ok} == good_line
    errors = sorted((r for r in got if r["status"] != "ok"), key=lambda r: r["line"])
    assert [r["status"] for r in errors] == ["input_error"] * len(bad)
    assert [r["line"] for r in errors] == sorted(bad)
    for r in errors:
        error_type = bad[r["line"]][1]
        assert r["error_type"] == error_type
        assert str(path) in r["error"]
        assert f"line {r['line']}" in r["error"]
        assert r["source"] == str(path)
        assert r["attempts"] == 0 and r["cost_usd"] is None
    (run,) = query(job, "SELECT state, rows_ok, rows_failed FROM runs")
    assert (run["state"], run["rows_ok"], run["rows_failed"]) == ("completed", 30, len(bad))


# -- 7. Parquet ----------------------------------------------------------------------------------


async def test_parquet_input_gives_the_same_results_as_jsonl(tmp_path: Path) -> None:
    rows = make_reviews(90)
    jsonl = write_jsonl(tmp_path / "reviews.jsonl", rows)
    parquet = tmp_path / "reviews.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=40)
    from_jsonl = make_job(tmp_path, "openai", jsonl, db=tmp_path / "a.duckdb")
    from_parquet = make_job(tmp_path, "openai", parquet, db=tmp_path / "b.duckdb")

    async with running_fake_provider(FakeConfig()) as fake:
        await run_job(from_jsonl, fake)
        fake.reset()
        outcome = await run_job(from_parquet, fake)
        assert_all_ok_and_paid_once(from_parquet, fake, rows)

    assert outcome.state == "completed" and outcome.stats.rows_ok == 90
    columns = ("row_id", "status", "output_text", "input_tokens", "output_tokens", "cost_usd")

    def keep(job: Job) -> list[tuple[Any, ...]]:
        return [tuple(r[c] for c in columns) for r in results(job)]

    assert keep(from_parquet) == keep(from_jsonl)
    # Parquet rows are numbered from 1 in file order, as JSONL lines are.
    lines = {r["row_id"]: r["line"] for r in results(from_parquet)}
    assert lines == {row["id"]: i for i, row in enumerate(rows, 1)}
    assert {r["source"] for r in results(from_parquet)} == {str(parquet)}
