"""budget_usd: refused up front unless forced; stopped before it is passed; resumed with more."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent


def spent(db: Path) -> tuple[float, int, str]:
    with duckdb.connect(str(db), read_only=True) as con:
        row = con.execute(
            "SELECT sum(x.cost_usd), count(*), any_value(r.state) FROM results x "
            "JOIN runs r USING (run_id)"
        ).fetchone()
    assert row is not None
    return float(row[0] or 0), int(row[1]), str(row[2])


def test_a_budget_is_refused_up_front_kept_when_forced_and_raised_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)  # the demo job reads data/reviews.jsonl
    job = tmp_path / "job.toml"  # the demo job without its 5,000/min limit, to keep this quick
    shipped = (ROOT / "jobs" / "review_sentiment.toml").read_text()
    job.write_text(shipped.replace("requests_per_minute = 5000", "requests_per_minute = 60000"))
    db = tmp_path / "r.duckdb"
    args = ["run", str(job), "--fake", "--db", str(db), "--quiet", "--budget-usd", "0.002"]

    assert main(args) == 2  # the worst case of 2,000 rows is about $0.045
    assert "over budget_usd $0.002000" in capsys.readouterr().err
    assert not db.exists()

    assert main([*args, "--force"]) == 3
    cost, rows, state = spent(db)
    assert state == "stopped: budget"
    assert 0 < rows < 2000
    assert cost <= 0.002

    run_id = next((tmp_path / "runs").glob("*.manifest.json")).name.split(".")[0]
    resume = ["resume", run_id, "--db", str(db), "--quiet", "--fake"]
    assert main([*resume, "--budget-usd", "0.004"]) == 3
    cost, more_rows, _ = spent(db)
    assert rows < more_rows < 2000
    assert cost <= 0.004

    assert main([*resume, "--budget-usd", "1"]) == 0
    cost, rows, state = spent(db)
    assert (rows, state) == (2000, "completed")
