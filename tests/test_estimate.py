"""The ``[pricing]`` override: a job's own price, online and batch, and the warning without one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog

from pipeline.cli import main
from pipeline.config import load_job, parse_job
from pipeline.cost import Price, cost_usd, lookup_price, price_for
from pipeline.errors import ConfigError
from pipeline.records import Usage
from pipeline.store import Store

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
