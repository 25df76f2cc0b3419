"""``pipeline run``, ``resume`` and ``rerun``: one call of ``pipeline.run`` each, then the end
of the run printed (a summary and the cost report, or one JSON object with ``--json``)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from rich.markup import escape

from .. import _api
from ..errors import ConfigError
from ..execution.manifest import find_manifest, read_manifest, runs_dir
from ..execution.outcome import RunOutcome
from ..execution.stats import RunStats
from ..records import RunState
from ._out import stdout

__all__ = ["rerun", "resume", "run"]


def run(args: argparse.Namespace) -> int:
    outcome = _api.run(
        args.job,
        input=args.input,
        db=args.db,
        mode=args.mode,
        run_id=args.run_id,
        force=args.force,
        wait=not args.no_wait,
        **_sending(args),
    )
    return _finish(outcome, args)


def resume(args: argparse.Namespace) -> int:
    outcome = _api.run(
        resume=args.run,
        db=args.db,
        allow_changed_input=args.allow_changed_input,
        force=True,
        **_sending(args),
    )
    return _finish(outcome, args)


def rerun(args: argparse.Namespace) -> int:
    manifest = read_manifest(find_manifest(args.run, args.db))
    only = _api.failed_rows(args.run, db=args.db)
    if not only.keys and not only.lines:
        if args.json:
            _print_json({"run_id": None, "state": None, "rerun_of": manifest.run_id, "rows": {}})
        else:
            print(f"run {manifest.run_id} has no failed rows: nothing to send")
        return 0
    job = _api.job_of_run(args.run, db=args.db)
    outcome = _api.run(job, only=only, **_sending(args, fake=manifest.fake))
    return _finish(outcome, args)


def _sending(args: argparse.Namespace, *, fake: bool = False) -> dict[str, Any]:
    """The options every sending command shares, as ``pipeline.run`` takes them."""
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    return {
        "base_url": args.base_url,
        "budget_usd": args.budget_usd,
        "engine": args.engine,
        "workers": args.workers,
        "address": args.address,
        "fake": args.fake or fake,
        "quiet": args.quiet or args.json,
        "on_notice": _to_stderr,
        "signals": True,
    }


def _to_stderr(message: str) -> None:
    # Even with --quiet: these lines say why rows were not sent, or were recovered.
    print(message, file=sys.stderr)


def _finish(outcome: RunOutcome, args: argparse.Namespace) -> int:
    if args.json:
        _print_json(outcome.as_dict())
        return outcome.exit_code
    out = stdout()
    _print_summary(out, outcome)
    if not args.quiet:
        from ..reporting.text import render_report
        from ..store import Store

        with Store(outcome.db, read_only=True) as store:
            render_report(store.queries.report(run_id=outcome.run_id), out)
    return outcome.exit_code


def _print_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    sys.stdout.flush()


def _print_summary(out: Any, outcome: RunOutcome) -> None:
    s = outcome.stats
    rate = s.rows_done / s.elapsed_s if s.elapsed_s else 0.0
    colour = "green" if outcome.state is RunState.COMPLETED else "red"
    out.print(f"[{colour}]{escape(outcome.status)}[/] · run {outcome.run_id}", highlight=False)
    out.print(
        f"rows: {s.rows_ok:,} ok, {s.rows_failed:,} failed, {s.rows_input_error:,} bad input, "
        + (f"{s.rows_invalid:,} invalid, " if s.rows_invalid else "")
        + f"{s.rows_skipped:,} already done · {s.rows_done:,} in {s.elapsed_s:.1f}s "
        f"({rate:,.0f} rows/s)",
        highlight=False,
    )
    out.print(
        f"requests: {s.requests_sent:,} sent, {s.retries:,} retried, {s.rate_limited:,} × 429 · "
        f"tokens: {s.input_tokens:,} in, {s.output_tokens:,} out · cost: ${s.cost_usd:,.6f}",
        highlight=False,
    )
    job = outcome.job
    fallback = None if job is None else job.request.fallback
    if job is not None and fallback is not None and (s.rows_fallback or s.fallback_switches):
        out.print(_fallback_line(job.request.model, fallback.model, s), highlight=False)
    log_path = runs_dir(outcome.db) / f"{outcome.run_id}.log.jsonl"
    out.print(
        f"results: {_shown(outcome.db)} (view 'results') · log: {log_path}",
        highlight=False,
        markup=False,
    )
    if not outcome.ok:
        out.print(f"to finish it: {outcome.resume_command}", highlight=False, markup=False)


def _shown(db: Path) -> str:
    """The database as the person gave it when it is under the working directory."""
    try:
        return str(db.relative_to(Path.cwd()))
    except ValueError:
        return str(db)


def _fallback_line(primary: str, fallback: str, s: RunStats) -> str:
    """One line: how many rows the fallback answered, and when the run switched and back."""
    line = f"fallback: {s.rows_fallback:,} rows sent to {fallback} instead of {primary}"
    for switch in s.fallback_switches:
        at = datetime.fromtimestamp(switch["at"]).strftime("%H:%M:%S")
        after = f"{switch['after_s']:g} s into the run"
        if switch["to"] == "fallback":
            line += f" · switched to {fallback} at {at}, {after} ({switch['why']})"
        else:
            line += f" · back to {primary} at {at}, {after}"
    return line
