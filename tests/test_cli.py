"""The ``pipeline`` command as a user runs it: ``pipeline.cli.main([...])``, exit codes, output.

``main`` runs its own event loop, so the fake provider serves from a thread of its own
(``threaded_fake`` in conftest.py). Databases and logs go to tmp_path; keys come from
monkeypatched environment variables.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import duckdb
import openai
import orjson
import pytest
import structlog

from pipeline.cli import main
from pipeline.reporting.text import format_usd

if TYPE_CHECKING:
    from conftest import ThreadedFakeProvider

MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
SYSTEM = "You are a sentiment classifier. Reply with one word: positive, negative or neutral."
REVIEWS = [
    ("good-1", "I love this kettle, it is excellent."),
    ("bad-1", "Terrible kettle, it arrived broken and I want a refund."),
    ("meh-1", "The kettle arrived on Tuesday."),
]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No key, base URL or terminal width from the outer environment; structlog restored.

    ``pipeline run`` configures structlog globally to write to a log file it closes on exit,
    so the configuration is put back for the tests that come after.
    """
    for name in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        "COLUMNS",
        "LINES",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def write_job(
    tmp_path: Path,
    provider: str = "openai",
    *,
    rows: int = 12,
    limits: str = "concurrency = 4\nmax_attempts = 2\ntimeout_s = 5",
) -> Path:
    """A job file over ``rows`` reviews (cycling REVIEWS), results in tmp_path/out/."""
    lines = [
        orjson.dumps({"id": f"{rid}-{i}", "text": text})
        for i in range(rows)
        for rid, text in [REVIEWS[i % len(REVIEWS)]]
    ]
    (tmp_path / "reviews.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    job = tmp_path / "job.toml"
    job.write_text(
        f"""name = "cli-reviews"

[input]
path = "{tmp_path / "reviews.jsonl"}"
id = "id"

[request]
provider = "{provider}"
model = "{MODELS[provider]}"
system = "{SYSTEM}"
prompt = "Review: {{text}}"
max_tokens = 5
temperature = 0

[limits]
{limits}

[output]
db = "{tmp_path / "out" / "results.duckdb"}"
"""
    )
    return job


def db_strings(db: Path) -> str:
    """Every value of every table in the database, as text (DuckDB compresses its file)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = [row[0] for row in con.execute("SHOW TABLES").fetchall()]
        parts = []
        for table in tables:
            rows = con.execute(f'SELECT COLUMNS(*)::VARCHAR FROM "{table}"').fetchall()
            parts.extend(str(value) for row in rows for value in row)
        return "\n".join(parts)
    finally:
        con.close()


def only_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- 1. the key is never written anywhere --------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["sk" + "-proj-TESTSECRET0123456789abcdef", "plain-secret-value-XYZ123"]
)
@pytest.mark.parametrize("answer", ["ok", "401"])
def test_the_api_key_is_written_nowhere(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    threaded_fake: ThreadedFakeProvider,
    key: str,
    answer: str,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", key)
    if answer == "401":
        threaded_fake.update_config(auth_fail=True)
    job = write_job(tmp_path)
    db = tmp_path / "out" / "results.duckdb"

    code = main(["run", str(job), "--base-url", threaded_fake.openai_base_url, "--db", str(db)])
    out, err = capfd.readouterr()

    acc = threaded_fake.accounting()
    if answer == "ok":
        assert code == 0, err
        assert acc["by_status"] == {"200": 12}
    else:
        assert code == 1, err
        assert acc["by_status"].get("401", 0) >= 1 and "200" not in acc["by_status"]
        assert "OPENAI_API_KEY" in out + err  # the error path was taken and says what to fix

    fragment = key[5:-5]  # a masked or cut echo of the key would still hold this
    files = sorted(p for p in db.parent.rglob("*") if p.is_file())
    assert db in files
    assert any(p.parent.name == "runs" and p.name.endswith(".log.jsonl") for p in files)
    assert all(p.stat().st_size > 0 for p in files if p.suffix == ".jsonl")
    for path in files:
        content = path.read_bytes()
        assert key.encode() not in content, path
        assert fragment.encode() not in content, path
    stored = db_strings(db)
    assert "cli-reviews" in stored  # the scan reads the tables, not an empty string
    for where, text in (("stdout", out), ("stderr", err), ("database values", stored)):
        assert key not in text, where
        assert fragment not in text, where


# -- 2. no key ----------------------------------------------------------------------------------


def test_without_a_key_nothing_is_sent_and_no_database_is_made(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], threaded_fake: ThreadedFakeProvider
) -> None:
    job = write_job(tmp_path)
    db = tmp_path / "out" / "results.duckdb"

    code = main(["run", str(job), "--base-url", threaded_fake.openai_base_url, "--db", str(db)])
    out, err = capfd.readouterr()

    assert code == 2
    assert "OPENAI_API_KEY" in err
    assert "Traceback" not in err
    assert out == ""
    assert threaded_fake.accounting()["requests"] == 0
    assert not db.exists()
    assert not db.parent.exists()  # no log folder either


def test_without_a_key_the_error_is_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path)

    assert main(["run", str(job)]) == 2
    line = only_line(capfd.readouterr().err)
    assert line.startswith("error:")
    assert "OPENAI_API_KEY is not set" in line
    assert "--fake" in line


# -- 3. a wrong key in the job file --------------------------------------------------------------


def test_a_misspelled_job_key_exits_2_before_anything_happens(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    threaded_fake: ThreadedFakeProvider,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk" + "-test-not-used-000000")
    job = write_job(tmp_path, limits="concurency = 5")

    code = main(["run", str(job), "--base-url", threaded_fake.openai_base_url])
    out, err = capfd.readouterr()

    assert code == 2
    assert out == ""
    assert str(job) in err
    assert "concurrency" in err  # the fix: the key it should have been
    assert "Traceback" not in err
    assert threaded_fake.accounting()["requests"] == 0
    assert not (tmp_path / "out").exists()


def test_a_misspelled_job_key_is_named_in_the_error(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    job = write_job(tmp_path, limits="concurency = 5")

    assert main(["run", str(job)]) == 2
    err = capfd.readouterr().err
    assert "limits.concurency" in err
    assert "[limits] takes" in err


# -- 4. --fake and report ------------------------------------------------------------------------


def test_run_with_fake_needs_no_key_and_report_prints_cost_by_model(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], threaded_fake: ThreadedFakeProvider
) -> None:
    job = write_job(tmp_path, rows=30)
    db = tmp_path / "out" / "results.duckdb"

    code = main(["run", str(job), "--fake", "--db", str(db)])
    out, err = capfd.readouterr()

    assert code == 0, err
    assert threaded_fake.accounting()["requests"] == 0  # the in-process fake answered
    assert "completed" in out
    assert "rows: 30 ok, 0 failed, 0 bad input, 0 already done" in out
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute("SELECT count(*), sum(cost_usd) FROM results WHERE status = 'ok'")
        (ok_rows, total_cost) = row.fetchone() or (0, 0)
    finally:
        con.close()
    assert ok_rows == 30 and total_cost > 0
    assert f"cost: ${total_cost:,.6f}" in out  # the summary's figure is what was stored
    assert "gpt-4o-mini" in out
    assert format_usd(total_cost) in out  # the report's figure too

    assert main(["report", "--db", str(db)]) == 0
    report, err = capfd.readouterr()
    assert err == ""
    model_lines = [line for line in report.splitlines() if "gpt-4o-mini" in line]
    assert model_lines and any(format_usd(total_cost) in line for line in model_lines)


def test_report_on_a_missing_database_exits_2_with_one_clear_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.duckdb"

    assert main(["report", "--db", str(missing)]) == 2
    out, err = capfd.readouterr()
    assert out == ""
    assert "no results database" in err
    assert "missing.duckdb" in err
    assert "Traceback" not in err
    assert not missing.exists()


# -- 5. the official SDK sees the same fake ------------------------------------------------------


@pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_the_pipeline_and_the_official_sdk_get_the_same_answers(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    threaded_fake: ThreadedFakeProvider,
    provider: str,
) -> None:
    key = "sdk-comparison-key-123456"
    monkeypatch.setenv(KEY_ENV[provider], key)
    job = write_job(tmp_path, provider, rows=2)
    db = tmp_path / "out" / "results.duckdb"
    base_url = threaded_fake.base_url(provider)

    assert main(["run", str(job), "--base-url", base_url, "--db", str(db), "--quiet"]) == 0
    capfd.readouterr()
    con = duckdb.connect(str(db), read_only=True)
    try:
        stored = con.execute(
            "SELECT row_id, output_text, input_tokens, output_tokens, finish_reason "
            "FROM results ORDER BY line"
        ).fetchall()
    finally:
        con.close()

    sdk: list[tuple[Any, ...]] = []
    for (row_id, text), _ in zip(REVIEWS, range(2), strict=False):
        prompt = f"Review: {text}"
        if provider == "openai":
            with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
                completion = client.chat.completions.create(
                    model=MODELS[provider],
                    messages=[
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": prompt},
                    ],
                    max_completion_tokens=5,
                    temperature=0,
                )
            assert completion.usage is not None
            sdk.append(
                (
                    completion.choices[0].message.content,
                    completion.usage.prompt_tokens,
                    completion.usage.completion_tokens,
                    completion.choices[0].finish_reason,
                )
            )
        else:
            with anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0) as client:
                message = client.messages.create(
                    model=MODELS[provider],
                    system=SYSTEM,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=5,
                    extra_body={"temperature": 0},  # as the pipeline sends it; not a kwarg here
                )
            block = message.content[0]
            assert block.type == "text"
            sdk.append(
                (
                    block.text,
                    message.usage.input_tokens,
                    message.usage.output_tokens,
                    message.stop_reason,
                )
            )
        assert row_id in stored[len(sdk) - 1][0]

    assert [tuple(row[1:]) for row in stored] == sdk
    assert [s[0] for s in sdk] == ["positive", "negative"]
    acc = threaded_fake.accounting()
    assert acc["paid_total"] == 4 and acc["by_status"] == {"200": 4}
