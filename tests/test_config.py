from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.job import load_job, parse_job

GOOD = """
name = "t"
[input]
path = "data/x.jsonl"
[request]
provider = "openai"
model = "gpt-4o-mini"
prompt = "Review: {text}"
"""


def test_the_shipped_job_files_load() -> None:
    root = Path(__file__).parent.parent
    for path in sorted((root / "jobs").glob("*.toml")):
        job = load_job(path)
        assert job.name
        assert job.request.provider in {"openai", "anthropic", "gemini"}


def test_defaults_fill_what_the_file_leaves_out() -> None:
    job = parse_job(GOOD, path="jobs/t.toml")
    assert job.limits.concurrency == 64
    assert job.limits.max_attempts == 6
    assert job.request.max_tokens == 1024
    assert job.output.db == "data/results.duckdb"


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        (
            GOOD.replace('provider = "openai"', 'provider = "opnai"'),
            "request.provider",
            "openai, anthropic",
        ),
        (GOOD.replace('model = "gpt-4o-mini"\n', ""), "request.model", "add model"),
        (GOOD + "[limits]\nconcurrency = 0\n", "limits.concurrency", "greater than 0"),
        (
            GOOD + "[limits]\nrequests_per_minut = 10\n",
            "limits.requests_per_minut",
            "requests_per_minute",
        ),
        (GOOD + "[limits]\ntimeout_s = 'soon'\n", "limits.timeout_s", "must be a number"),
        (GOOD.replace("{text}", "{}"), "request.prompt", "name a row field"),
        ("api_key = 'x'\n" + GOOD, "api_key", "a job file takes"),
        (GOOD + "api_key = 'x'\n", "request.api_key", "environment only"),
    ],
)
def test_a_wrong_job_file_names_the_file_the_key_and_the_fix(
    text: str, key: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_job(text, path="jobs/t.toml")
    message = str(info.value)
    assert message.startswith(f"jobs/t.toml: [{key}]")
    assert hint in message


def test_broken_toml_is_reported_with_the_file() -> None:
    with pytest.raises(ConfigError, match=r"jobs/t.toml: not valid TOML"):
        parse_job("name = ", path="jobs/t.toml")


def test_a_missing_job_file_says_so() -> None:
    with pytest.raises(ConfigError, match="job file not found"):
        load_job("jobs/nope.toml")


def test_command_line_overrides_win_and_base_url_falls_back_to_the_sdk_variables() -> None:
    job = parse_job(GOOD)
    assert job.resolved_base_url({}) == "https://api.openai.com/v1"
    assert job.resolved_base_url({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1/"}) == (
        "http://127.0.0.1:9/v1"
    )
    job = job.with_overrides(base_url="http://127.0.0.1:1/v1", db="x.duckdb", input_path="y")
    assert job.resolved_base_url({"OPENAI_BASE_URL": "http://other/v1"}) == "http://127.0.0.1:1/v1"
    assert (job.output.db, job.input.path) == ("x.duckdb", "y")
    claude = parse_job(GOOD.replace('"openai"', '"anthropic"'))
    assert claude.resolved_base_url({}) == "https://api.anthropic.com"
