"""The README is a contract: it must stay in step with the CLI and the job-file keys."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from pipeline.cli import COMMANDS, build_parser
from pipeline.job import JOB_KEYS, parse_job

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_the_first_screen_gives_exactly_the_demo_and_test_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:25])
    first_block = re.search(r"```sh\n(.*?)```", first_screen, flags=re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, flags=re.M)
    assert re.search(r"^test:", makefile, flags=re.M)


def test_the_readme_job_file_is_a_valid_job() -> None:
    job = parse_job(_code_blocks("toml")[0], path="README.md")
    assert job.request.provider == "openai"


def test_every_command_is_documented_and_every_documented_command_exists() -> None:
    documented = set(re.findall(r"^\| `pipeline ([a-z-]+)", README, flags=re.M))
    assert documented == set(COMMANDS)
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == set(COMMANDS)


def test_every_job_key_is_documented_and_every_documented_key_exists() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+(?:\.[a-z_]+){0,2})` \|", README, flags=re.M))
    keys = {f"{table}.{key}" if table else key for table, ks in JOB_KEYS.items() for key in ks}
    job_rows = {d for d in documented if "." in d or d in JOB_KEYS[""]}
    assert job_rows == keys


def test_the_shipped_example_job_matches_the_readme() -> None:
    shipped = (ROOT / "jobs" / "review_sentiment.toml").read_text(encoding="utf-8")
    readme_job = parse_job(_code_blocks("toml")[0])
    assert parse_job(shipped).request == readme_job.request
