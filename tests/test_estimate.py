"""``pipeline estimate`` and the ``[pricing]`` override.

The acceptance test runs each demo job on the built-in fake provider and compares the estimate
made before the run with what the run then cost; ``pytest -s -k demo`` shows both figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.estimates import DEFAULT_LATENCY_S, estimate_job, throughput
from pipeline.job import LimitsSpec, load_job, parse_job
from pipeline.job.pricing import Price, cost_usd, lookup_price, price_for
from pipeline.records import RowResult, Usage
from pipeline.render import Renderer, request_key
from pipeline.sources import iter_row_chunks
from pipeline.store import Store

PROJECT = Path(__file__).resolve().parents[1]
SYSTEM = "You are a sentiment classifier. Reply with one word: positive, negative or neutral."
TEXTS = [
    "I love this kettle, it is excellent.",
    "Terrible kettle, it arrived broken and I want a refund. " * 3,
    "The kettle arrived on Tuesday.",
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No key or base URL from the outer environment; structlog restored after ``run``."""
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def write_job(
    tmp_path: Path,
    *,
    rows: int = 30,
    model: str = "gpt-4o-mini",
    extra: str = "",
    limits: str = "concurrency = 4",
    lines: list[bytes] | None = None,
) -> Path:
    if lines is None:
        lines = [orjson.dumps({"id": f"r{i}", "text": TEXTS[i % 3]}) for i in range(rows)]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    job = tmp_path / "job.toml"
    job.write_text(
        f"""name = "est"

[input]
path = "{tmp_path / "in.jsonl"}"
id = "id"

[request]
provider = "openai"
model = "{model}"
system = "{SYSTEM}"
prompt = "Review: {{text}}"
max_tokens = 5

[limits]
{limits}

[output]
db = "{tmp_path / "out.duckdb"}"
{extra}
"""
    )
    return job


def ok_result(job_name: str, spec_job: Any, row_id: str, output_tokens: int) -> RowResult:
    ph = Renderer(spec_job.request).prompt_hash
    return RowResult(
        job=job_name,
        run_id="earlier",
        row_id=row_id,
        request_key=request_key(row_id, ph),
        prompt_hash=ph,
        status="ok",
        provider="openai",
        model=spec_job.request.model,
        mode="online",
        output_text="positive",
        finish_reason="stop",
        error_type=None,
        error=None,
        attempts=1,
        input_tokens=40,
        output_tokens=output_tokens,
        cache_read_tokens=0,
        cache_write_tokens=0,
        reasoning_tokens=0,
        cost_usd=0.0,
        latency_ms=250.0,
        finished_at=1_763_000_000.0,
        source="in.jsonl",
        line=1,
    )


def rendered_tokens(job: Any) -> list[int]:
    renderer = Renderer(job.request)
    return [
        renderer.render(item).est_input_tokens
        for chunk in iter_row_chunks(job.input)
        for item in chunk
        if not hasattr(item, "error")
    ]


# -- the acceptance test: estimate before, cost after, on the demo jobs --------------------------


@pytest.mark.parametrize(
    "job_file",
    ["review_sentiment.toml", "review_sentiment_claude.toml", "invoice_extraction.toml"],
)
def test_demo_estimate_is_within_20_percent_of_what_the_fake_run_cost(
    job_file: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(PROJECT)  # the demo jobs name data/reviews.jsonl relative to the project
    job = str(PROJECT / "jobs" / job_file)
    db = tmp_path / "demo.duckdb"

    assert main(["estimate", job, "--db", str(db), "--json"]) == 0
    before = orjson.loads(capsys.readouterr().out)
    assert not db.exists()  # estimating sends nothing and writes nothing

    assert main(["run", job, "--fake", "--db", str(db), "--quiet"]) == 0
    capsys.readouterr()
    with Store(db, read_only=True) as store:
        rows = store.query("SELECT sum(cost_usd) AS usd, count(*) AS n FROM results")
    actual, n = rows[0]["usd"], rows[0]["n"]

    ratio = before["cost_expected"] / actual
    with capsys.disabled():
        print(
            f"\n{job_file}: estimate before the run ${before['cost_expected']:.6f} "
            f"(worst case ${before['cost_worst']:.6f}), actual ${actual:.6f}, "
            f"ratio {ratio:.3f}"
        )
    assert before["rows_to_send"] == n == before["rows_total"]
    assert 0.8 <= ratio <= 1.2

    # After the run every row is done, and the expected output comes from the answers.
    assert main(["estimate", job, "--db", str(db), "--json"]) == 0
    after = orjson.loads(capsys.readouterr().out)
    assert (after["rows_done"], after["rows_to_send"], after["cost_expected"]) == (n, 0, 0.0)
    assert after["output_tokens_per_row"] <= before["output_tokens_per_row"] * 1.2
    assert "earlier ok results of this request version" in after["output_basis"]


# -- the estimate ----------------------------------------------------------------------------------


def test_estimate_counts_rows_and_renders_every_one(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, rows=30))

    est = estimate_job(job)

    assert (est.rows_total, est.rows_done, est.rows_input_error, est.rows_to_send) == (30, 0, 0, 30)
    assert not est.sampled and est.rows_rendered == 30
    assert est.input_tokens == sum(rendered_tokens(job))
    assert est.output_tokens_worst == est.output_tokens_expected == 30 * 5
    assert "max_tokens" in est.output_basis
    price = lookup_price("openai", "gpt-4o-mini")
    batch = lookup_price("openai", "gpt-4o-mini", batch=True)
    assert price is not None and batch is not None
    usage = Usage(input_tokens=est.input_tokens, output_tokens=150)
    assert est.cost_online_expected == pytest.approx(cost_usd(price, usage))
    assert est.cost_batch_worst == pytest.approx(cost_usd(batch, usage))
    assert est.cost_expected == est.cost_online_expected  # the job runs online
    assert est.price_source == price.source


def test_estimate_leaves_out_bad_rows_and_rows_missing_a_field(tmp_path: Path) -> None:
    lines = [
        orjson.dumps({"id": "a", "text": "fine"}),
        b"{not json",
        orjson.dumps({"id": "b", "other": "no text field"}),
        orjson.dumps({"id": "c", "text": "fine too"}),
    ]
    job = load_job(write_job(tmp_path, lines=lines))

    est = estimate_job(job)

    assert (est.rows_total, est.rows_input_error, est.rows_to_send) == (4, 2, 2)


def test_estimate_leaves_out_rows_longer_than_the_context(tmp_path: Path) -> None:
    lines = [
        orjson.dumps({"id": "short", "text": "ok"}),
        orjson.dumps({"id": "long", "text": "x" * 4000}),
    ]
    job = load_job(
        write_job(tmp_path, lines=lines).parent / "job.toml"
    )  # context_window added below
    job = parse_job(job.text.replace("max_tokens = 5", "max_tokens = 5\ncontext_window = 200"))

    est = estimate_job(job)

    assert (est.rows_input_error, est.rows_to_send) == (1, 1)


def test_estimate_subtracts_rows_done_and_uses_earlier_output(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, rows=30))
    with Store(job.output.db) as store:
        store.results.write([ok_result("est", job, f"r{i}", output_tokens=2) for i in range(10)])

    est = estimate_job(job)

    assert (est.rows_done, est.rows_to_send) == (10, 20)
    assert est.input_tokens == sum(rendered_tokens(job)[10:])
    assert est.output_tokens_per_row == 2.0
    assert est.output_tokens_expected == 40 and est.output_tokens_worst == 100
    assert "average of 10 earlier ok results of this request version" in est.output_basis
    assert est.latency_s == pytest.approx(0.25)  # the median of the earlier answers


def test_expected_output_falls_back_to_the_jobs_model_then_caps_at_max_tokens(
    tmp_path: Path,
) -> None:
    job = load_job(write_job(tmp_path, rows=6))
    older = parse_job(job.text.replace("max_tokens = 5", "max_tokens = 50"))
    with Store(job.output.db) as store:  # another request version of the job, longer answers
        store.results.write([ok_result("est", older, f"x{i}", output_tokens=40) for i in range(4)])

    est = estimate_job(job)

    assert est.rows_done == 0  # another request version's rows are not done for this one
    assert est.output_tokens_per_row == 5.0
    assert "job est with gpt-4o-mini" in est.output_basis
    assert "capped at max_tokens" in est.output_basis


def test_a_large_input_is_estimated_from_a_deterministic_sample(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, rows=3000))
    exact = estimate_job(job)

    sampled = estimate_job(job, sample_limit=300)
    again = estimate_job(job, sample_limit=300)

    assert sampled == again  # the same rows every time
    assert sampled.sampled and not exact.sampled
    # One row in the smallest power of two that keeps the sample within twice the limit: 1 in 8
    # here (3,000 rows, limit 300), about 375 rows, found while reading, without a count first.
    assert 300 <= sampled.rows_rendered <= 450
    assert sampled.rows_to_send == exact.rows_to_send == 3000
    # Row lengths here vary by 5x; a sample of ~300 lands within a few percent (3 sigma: 14%).
    assert sampled.input_tokens == pytest.approx(exact.input_tokens, rel=0.14)


def test_a_sample_scales_up_the_share_of_rows_that_cannot_render(tmp_path: Path) -> None:
    lines = [
        orjson.dumps({"id": f"r{i}", "text": "t"} if i % 4 else {"id": f"r{i}"})
        for i in range(3000)
    ]  # every fourth row lacks the template's field: a pattern a row stride could alias with
    job = load_job(write_job(tmp_path, lines=lines))

    est = estimate_job(job, sample_limit=300)

    assert est.rows_to_send == pytest.approx(2250, abs=225)  # 3 sigma of a ~300-row sample
    assert est.rows_input_error == 3000 - est.rows_to_send


def test_an_unknown_model_has_no_cost_and_says_so(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, model="mystery-ft-model"))

    est = estimate_job(job)

    assert est.price_source is None
    assert est.cost_online_expected is None and est.cost_batch_worst is None
    assert any("[pricing]" in note for note in est.notes)


def test_a_database_in_use_is_noted_and_nothing_counts_as_done(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, rows=5))
    with Store(job.output.db) as store:
        store.results.write([ok_result("est", job, "r0", output_tokens=2)])

    def refuse(*args: Any, **kwargs: Any) -> Store:
        from pipeline.errors import StoreError

        raise StoreError("results database is in use")

    mp = pytest.MonkeyPatch()
    mp.setattr("pipeline.estimates.Store", refuse)
    try:
        est = estimate_job(job)
    finally:
        mp.undo()
    assert est.rows_done == 0 and est.rows_to_send == 5
    assert any("in use" in note for note in est.notes)


@pytest.mark.parametrize(
    ("limits", "tokens_per_row", "latency_s", "rate", "by"),
    [
        (LimitsSpec(concurrency=10), 100, 2.0, 300.0, "concurrency"),
        (LimitsSpec(concurrency=64, requests_per_minute=500), 100, 1.0, 500.0,
         "requests_per_minute"),
        (LimitsSpec(concurrency=64, requests_per_minute=5000, tokens_per_minute=60_000), 200,
         1.0, 300.0, "tokens_per_minute"),
    ],
)  # fmt: skip
def test_throughput_is_the_lowest_limit(
    limits: LimitsSpec, tokens_per_row: float, latency_s: float, rate: float, by: str
) -> None:
    assert throughput(limits, tokens_per_row=tokens_per_row, latency_s=latency_s) == (
        pytest.approx(rate),
        by,
    )


def test_estimate_time_is_rows_over_the_rate(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, rows=30, limits="concurrency = 2\nrequests_per_minute = 60"))

    est = estimate_job(job)

    assert est.latency_s == DEFAULT_LATENCY_S
    assert (est.rows_per_minute, est.limited_by) == (60.0, "requests_per_minute")
    assert est.time_s == pytest.approx(30.0)
    assert estimate_job(job, latency_s=4.0).limited_by == "concurrency"  # 2 × 60 / 4 = 30 a minute


# -- the command -----------------------------------------------------------------------------------


def test_estimate_command_prints_rows_tokens_cost_and_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path, rows=30)

    assert main(["estimate", str(job)]) == 0
    out = capsys.readouterr().out

    assert "rows: 30 in the input · 0 already done · 0 bad input · 30 to send" in out
    assert "input tokens: ~" in out and "output tokens: ~150 expected" in out
    assert "cost online: $" in out and "cost batch:  $" in out
    assert "time online: ~" in out
    assert not (tmp_path / "out.duckdb").exists()


def test_estimate_command_json_has_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path, rows=30)

    assert main(["estimate", str(job), "--json", "--mode", "batch", "--latency-s", "0.5"]) == 0
    data = orjson.loads(capsys.readouterr().out)

    assert data["mode"] == "batch"
    assert data["cost_expected"] == data["cost_batch_expected"]
    assert data["cost_batch_expected"] == pytest.approx(data["cost_online_expected"] / 2, rel=0.2)
    assert data["latency_s"] == 0.5
    assert data["rows_to_send"] == 30


def test_estimate_command_refuses_a_bad_latency(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["estimate", str(write_job(tmp_path)), "--latency-s", "0"]) == 2
    assert "--latency-s" in capsys.readouterr().err


# -- [pricing] -------------------------------------------------------------------------------------

PRICING = """
[pricing]
input_mtok = 0.15
output_mtok = 0.60
cache_read_mtok = 0.075
"""


def test_pricing_table_becomes_the_jobs_price(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, model="my-fine-tune", extra=PRICING))

    assert job.pricing == Price(
        input_mtok=0.15,
        output_mtok=0.6,
        cache_read_mtok=0.075,
        source=f"[pricing] in {tmp_path / 'job.toml'}",
    )
    assert price_for(job) == job.pricing
    batch = price_for(job, batch=True)
    assert batch is not None
    assert (batch.input_mtok, batch.output_mtok, batch.cache_read_mtok) == (0.075, 0.3, 0.0375)


def test_without_pricing_the_price_comes_from_genai_prices(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path))

    assert job.pricing is None
    assert price_for(job) == lookup_price("openai", "gpt-4o-mini")
    assert price_for(job, batch=True) == lookup_price("openai", "gpt-4o-mini", batch=True)
    assert price_for(load_job(write_job(tmp_path, model="mystery-ft-model"))) is None


@pytest.mark.parametrize(
    ("table", "key", "says"),
    [
        ("input_mtok = 0.1", "pricing.output_mtok", "missing"),
        ("input_mtok = 'cheap'\noutput_mtok = 1", "pricing.input_mtok", "must be a number"),
        ("input_mtok = -1\noutput_mtok = 1", "pricing.input_mtok", "0 or more"),
        ("input_mtok = true\noutput_mtok = 1", "pricing.input_mtok", "must be a number"),
        ("input_mtok = 1\noutput_mtok = 1\ncache_mtok = 1", "pricing.cache_mtok", "unknown key"),
        ("input_mtok = 1\noutput_mtok = nan", "pricing.output_mtok", "finite"),
    ],
)
def test_a_bad_pricing_table_names_the_file_and_key(
    tmp_path: Path, table: str, key: str, says: str
) -> None:
    path = write_job(tmp_path, extra=f"[pricing]\n{table}\n")

    with pytest.raises(ConfigError) as caught:
        load_job(path)

    assert caught.value.key == key and caught.value.path == str(path)
    assert str(caught.value).startswith(f"{path}: [{key}] ")
    assert says in str(caught.value)


def test_pricing_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[pricing\] must be a table"):
        parse_job('pricing = 3\nname = "x"\n[input]\npath = "a.jsonl"\n', path="j.toml")


def test_run_of_an_unknown_model_warns_once_and_stores_null_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path, rows=6, model="mystery-ft-model")

    assert main(["run", str(job), "--fake", "--quiet"]) == 0
    err = capsys.readouterr().err

    warnings = [line for line in err.splitlines() if line.startswith("warning: no price known")]
    assert warnings == [
        "warning: no price known for openai model 'mystery-ft-model': cost_usd will be NULL; "
        f"add a [pricing] table to {job} (input_mtok, output_mtok: US dollars per million tokens)"
    ]
    with Store(tmp_path / "out.duckdb", read_only=True) as store:
        rows = store.query(
            "SELECT count(*) AS n, count(cost_usd) AS priced, sum(input_tokens) AS tokens "
            "FROM results WHERE status = 'ok'"
        )
        prices = store.query("SELECT * FROM run_prices")
    assert rows == [{"n": 6, "priced": 0, "tokens": rows[0]["tokens"]}] and rows[0]["tokens"] > 0
    assert prices == []


def test_run_with_pricing_charges_the_jobs_price(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path, rows=6, model="mystery-ft-model", extra=PRICING)

    assert main(["run", str(job), "--fake", "--quiet"]) == 0
    assert "no price known" not in capsys.readouterr().err

    with Store(tmp_path / "out.duckdb", read_only=True) as store:
        rows = store.query(
            "SELECT input_tokens, output_tokens, cache_read_tokens, cost_usd FROM results"
        )
        run = store.query("SELECT price_source FROM runs")
        prices = store.query("SELECT mode, input_mtok, output_mtok, source FROM run_prices")
    price = load_job(job).pricing
    for r in rows:
        usage = Usage(
            input_tokens=r["input_tokens"],
            output_tokens=r["output_tokens"],
            cache_read_tokens=r["cache_read_tokens"],
        )
        assert r["cost_usd"] == pytest.approx(cost_usd(price, usage))
    assert run == [{"price_source": f"[pricing] in {job}"}]
    assert prices == [
        {"mode": "online", "input_mtok": 0.15, "output_mtok": 0.6, "source": f"[pricing] in {job}"}
    ]


def test_batch_run_with_pricing_charges_half(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path, rows=6, model="mystery-ft-model", extra=PRICING)

    code = main(["run", str(job), "--fake", "--quiet", "--mode", "batch"])
    assert code == 0, capsys.readouterr().err

    with Store(tmp_path / "out.duckdb", read_only=True) as store:
        rows = store.query("SELECT mode, input_tokens, output_tokens, cost_usd FROM results")
        prices = store.query("SELECT mode, input_mtok FROM run_prices ORDER BY mode")
    assert {r["mode"] for r in rows} == {"batch"}
    for r in rows:
        expected = (r["input_tokens"] * 0.075 + r["output_tokens"] * 0.30) / 1e6
        assert r["cost_usd"] == pytest.approx(expected)
    assert prices == [
        {"mode": "batch", "input_mtok": 0.075},
        {"mode": "online", "input_mtok": 0.15},
    ]


def test_budget_without_a_price_points_at_pricing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path, model="mystery-ft-model", limits="budget_usd = 1")

    assert main(["run", str(job), "--fake", "--quiet"]) == 2
    assert "add a [pricing] table" in capsys.readouterr().err
