"""When the database refuses a write, the run ends with one clear error and a failed state."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_integration import make_job, make_reviews, query, run_job, write_jsonl

from pipeline.errors import StoreError
from pipeline.fake import FakeConfig, running_fake_provider
from pipeline.store.results import ResultTable

pytestmark = pytest.mark.anyio


async def test_a_refused_write_ends_the_run_with_that_error_not_a_task_group_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: ResultTable, results: object) -> None:
        raise StoreError("cannot write results: disk full")

    monkeypatch.setattr(ResultTable, "write_lines", refuse)
    job = make_job(tmp_path, "openai", write_jsonl(tmp_path / "in.jsonl", make_reviews(20)))
    async with running_fake_provider(FakeConfig()) as fake:
        with pytest.raises(StoreError, match="disk full"):
            await run_job(job, fake)
    (run,) = query(job, "SELECT state FROM runs")
    assert run["state"] == "failed: cannot write results: disk full"
    assert query(job, "SELECT count(*) AS n FROM results") == [{"n": 0}]
