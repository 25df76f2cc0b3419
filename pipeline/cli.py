"""The ``pipeline`` command: a thin shell over the library.

Library errors become one clear line on stderr and an exit code; nothing here decides anything
the library could decide.

Exit codes: 0 the run completed (rows may still have failed: see the summary), 1 the run failed
(bad key, no quota, a crash), 2 the job file or the command line is wrong, 3 stopped (signal or
budget): ``pipeline resume RUN_ID`` finishes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import structlog
from rich.console import Console
from rich.markup import escape

from .batch_runner import BatchRunner
from .config import Job, load_job, parse_job
from .cost import Price, price_for
from .errors import ConfigError, PipelineError, StoreError
from .estimate import estimate_job, render_estimate
from .limits import LocalRateBudget
from .logs import configure_logging, register_secret
from .manifest import (
    changed_inputs,
    find_manifest,
    fingerprints,
    latest_manifest,
    manifest_path,
    read_manifest,
    resume_command,
    runs_dir,
)
from .progress import count_rows, show_progress
from .providers import api_key_from_env, make_batch_provider, make_provider
from .render import Renderer
from .report import format_usd, render_report
from .runner import RowFilter, Runner, RunOutcome, new_run_id
from .sources import input_files
from .store import Store

__all__ = ["COMMANDS", "build_parser", "main"]

log = structlog.get_logger("pipeline.cli")

COMMANDS = {
    "run": "run a job file: send every row not yet done, store results and cost in DuckDB",
    "resume": "finish a run that was stopped, killed or crashed (by run id or manifest path)",
    "rerun": "send again only the rows of a run that failed (--failed)",
    "status": "show a run's progress from its manifest; works while the run is going",
    "runs": "list past runs: job, started, rows ok/failed, cost, state",
    "batches": "list submitted batches: run, provider, batch id, status, counts, age",
    "cancel": "cancel a run's open batches; 'pipeline resume RUN' then collects what finished",
    "report": "print cost, tokens and latency by model and status from a results database",
    "estimate": "before sending anything: rows to send, tokens, cost online and batch, and time",
    "export": "write a run's results to a file: JSONL in OpenAI's batch-output shape, or Parquet",
    "fake-provider": "serve the built-in fake OpenAI/Anthropic provider on 127.0.0.1",
}

FAKE_KEY = "fake-key-not-secret"
DEFAULT_DB = "data/results.duckdb"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Batch LLM requests from JSONL/Parquet rows into DuckDB, with cost.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name])

    def sending_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--base-url", help="override [request].base_url")
        p.add_argument(
            "--fake",
            action="store_true",
            help="start the built-in fake provider in-process and send every request to it",
        )
        p.add_argument("--budget-usd", type=float, help="override [limits].budget_usd")
        p.add_argument("--quiet", action="store_true", help="no progress bar and no report")

    run = command("run")
    run.add_argument("job", help="job file (TOML), e.g. jobs/review_sentiment.toml")
    run.add_argument("--input", help="override [input].path")
    run.add_argument("--db", help="override [output].db")
    run.add_argument("--run-id", help="use this run id instead of a new one")
    run.add_argument(
        "--force", action="store_true", help="run even if the estimate exceeds budget_usd"
    )
    run.add_argument(
        "--mode", choices=["online", "batch"], help="override [request].mode (batch: half price)"
    )
    run.add_argument(
        "--no-wait",
        action="store_true",
        help="batch mode: submit and return; 'pipeline resume RUN_ID' collects the results",
    )
    sending_options(run)

    resume = command("resume")
    resume.add_argument("run", help="run id (see 'pipeline runs') or path of its manifest")
    resume.add_argument("--db", default=DEFAULT_DB, help=f"results database ({DEFAULT_DB})")
    resume.add_argument(
        "--allow-changed-input",
        action="store_true",
        help="resume even though an input file changed since the run started",
    )
    sending_options(resume)

    rerun = command("rerun")
    rerun.add_argument("run", help="run id (see 'pipeline runs') or path of its manifest")
    rerun.add_argument("--failed", action="store_true", required=True, help="the failed rows")
    rerun.add_argument("--db", default=DEFAULT_DB, help=f"results database ({DEFAULT_DB})")
    sending_options(rerun)

    status = command("status")
    status.add_argument("run", nargs="?", help="run id or manifest path (default: the latest)")
    status.add_argument("--db", default=DEFAULT_DB, help=f"results database ({DEFAULT_DB})")

    runs = command("runs")
    runs.add_argument("--db", default=DEFAULT_DB, help=f"results database ({DEFAULT_DB})")
    runs.add_argument("--limit", type=int, default=20, help="how many (default 20)")

    batches = command("batches")
    batches.add_argument("--db", default=DEFAULT_DB, help=f"results database ({DEFAULT_DB})")
    batches.add_argument("--run", dest="run_id", help="only this run id")

    cancel = command("cancel")
    cancel.add_argument("run", help="run id (see 'pipeline runs') or path of its manifest")
    cancel.add_argument("--db", default=DEFAULT_DB, help=f"results database ({DEFAULT_DB})")
    cancel.add_argument("--base-url", help="override the provider URL the run used")

    estimate = command("estimate")
    estimate.add_argument("job", help="job file (TOML), e.g. jobs/review_sentiment.toml")
    estimate.add_argument("--input", help="override [input].path")
    estimate.add_argument("--db", help="override [output].db (where rows already done are)")
    estimate.add_argument(
        "--mode", choices=["online", "batch"], help="override [request].mode (batch: half price)"
    )
    estimate.add_argument(
        "--latency-s", type=float, help="seconds per answer (default: earlier answers, else 1)"
    )
    estimate.add_argument("--json", action="store_true", help="print the estimate as JSON")

    export = command("export")
    export.add_argument("run", help="run id (see 'pipeline runs')")
    export.add_argument(
        "--format", choices=["jsonl", "parquet"], default="jsonl", help="file format (jsonl)"
    )
    export.add_argument(
        "--out", help="file to write (default: runs/RUN_ID.results.FORMAT next to the database)"
    )
    export.add_argument("--db", default=DEFAULT_DB, help=f"results database ({DEFAULT_DB})")

    report = command("report")
    report.add_argument("--db", default=DEFAULT_DB, help=f"results database ({DEFAULT_DB})")
    report.add_argument("--job", help="only this job")
    report.add_argument("--run", dest="run_id", help="only this run id")
    report.add_argument(
        "--html", metavar="PATH", help="write the report as one self-contained HTML page of charts"
    )

    fake = command("fake-provider")
    fake.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765)")
    from .fake import FakeConfig

    for f in dataclasses.fields(FakeConfig):
        default = getattr(FakeConfig(), f.name)
        # The annotation, not the default, says the type: `int | None` stays an int.
        annotation = str(f.type)
        kind: Any = next(
            (t for t in (bool, int, float, str) if t.__name__ in annotation.split(" | ")), float
        )
        flag = f"--{f.name.replace('_', '-')}"
        if kind is bool:
            fake.add_argument(flag, action="store_true", default=default)
        else:
            fake.add_argument(flag, type=kind, default=default, help=f"(default {default})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "run": _run,
        "resume": _resume,
        "rerun": _rerun,
        "status": _status,
        "runs": _runs,
        "batches": _batches,
        "cancel": _cancel,
        "report": _report,
        "estimate": _estimate,
        "export": _export,
        "fake-provider": _fake_provider,
    }
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        _error(str(exc))
        return 2
    except PipelineError as exc:
        _error(str(exc))
        return 1


def _error(message: str) -> None:
    # Plain text, one line, whatever the terminal: messages carry [table.key] names that
    # markup would eat, and a wrapped error is two errors to grep.
    print(f"error: {message}", file=sys.stderr)


# -- run, resume, rerun ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """One run to execute: which job, under which run id, and how."""

    job: Job
    run_id: str
    fake: bool
    quiet: bool
    resume: bool = False
    only: RowFilter | None = None
    spent_usd: float = 0.0
    force: bool = False
    manifest: dict[str, Any] | None = None
    wait: bool = True


def _run(args: argparse.Namespace) -> int:
    job = load_job(args.job).with_overrides(
        input_path=args.input,
        db=args.db,
        base_url=args.base_url,
        budget_usd=args.budget_usd,
        mode=args.mode,
    )
    if args.no_wait and job.request.mode != "batch":
        raise ConfigError("--no-wait is for batch mode; add --mode batch")
    if args.no_wait and args.fake:
        raise ConfigError(
            "--no-wait needs a provider that outlives this command, and --fake stops with it; "
            "start 'pipeline fake-provider' and pass --base-url instead"
        )
    plan = _Plan(
        job,
        args.run_id or new_run_id(),
        args.fake,
        args.quiet,
        force=args.force,
        wait=not args.no_wait,
    )
    return _execute(plan)


def _job_from_manifest(manifest: dict[str, Any], args: argparse.Namespace) -> Job:
    recorded = manifest["job"]
    return parse_job(recorded["text"], path=recorded["path"]).with_overrides(
        input_path=manifest["input_path"],
        db=manifest["db"],
        base_url=args.base_url,
        budget_usd=args.budget_usd,
    )


def _resume(args: argparse.Namespace) -> int:
    manifest = read_manifest(find_manifest(args.run, args.db))
    run_id = manifest["run_id"]
    if manifest["state"] == "running" and _alive(manifest.get("pid")):
        raise ConfigError(
            f"run {run_id} is still running (process {manifest['pid']}); "
            f"watch it with: pipeline status {run_id} --db {manifest['db']}"
        )
    changes = changed_inputs(manifest["inputs"])
    if changes and not args.allow_changed_input:
        raise ConfigError(
            f"the input of run {run_id} changed since it started: {'; '.join(changes)}. "
            "Resume anyway with --allow-changed-input (rows already done are not sent again), "
            "or start a new run with 'pipeline run'"
        )
    job = _job_from_manifest(manifest, args)
    if job.request.schema_path and Renderer(job.request).prompt_hash != manifest.get("prompt_hash"):
        raise ConfigError(
            f"the schema file {job.request.schema_path} of run {run_id} changed since it "
            "started, so the rest of its rows would be a new request version; restore the "
            "file, or start a new run with 'pipeline run'"
        )
    with Store(job.output.db, read_only=True) as store:
        spent = store.results.counts(run_id)["cost_usd"] or 0.0
    plan = _Plan(
        job,
        run_id,
        args.fake or bool(manifest.get("fake")),
        args.quiet,
        resume=True,
        spent_usd=spent,
        force=True,
        manifest=manifest,
    )
    return _execute(plan)


def _rerun(args: argparse.Namespace) -> int:
    manifest = read_manifest(find_manifest(args.run, args.db))
    job = _job_from_manifest(manifest, args)
    with Store(job.output.db, read_only=True) as store:
        keys, lines = store.results.not_ok_rows(manifest["run_id"])
    if not keys and not lines:
        print(f"run {manifest['run_id']} has no failed rows: nothing to send")
        return 0
    only = RowFilter(frozenset(keys), frozenset(lines))
    plan = _Plan(job, new_run_id(), args.fake or bool(manifest.get("fake")), args.quiet, only=only)
    return _execute(plan)


def _execute(plan: _Plan) -> int:
    job = plan.job
    files = input_files(job.input.path)  # a missing input fails here, before anything is sent
    if plan.fake:
        api_key = FAKE_KEY
    else:
        api_key = api_key_from_env(job.request.provider)
        register_secret(api_key)
    price = price_for(job)
    if job.limits.budget_usd is not None:
        _check_budget(job, price, plan)
    if price is None:
        print(
            f"warning: no price known for {job.request.provider} model {job.request.model!r}: "
            f"cost_usd will be NULL; add a [pricing] table to {job.path} "
            "(input_mtok, output_mtok: US dollars per million tokens)",
            file=sys.stderr,
        )
    db = Path(job.output.db)
    log_path = runs_dir(db) / f"{plan.run_id}.log.jsonl"
    log_file = configure_logging(log_file=log_path)
    console = Console(stderr=True, quiet=plan.quiet)
    manifest = _manifest_base(plan, files, price)
    try:
        outcome = anyio.run(
            _run_async,
            plan,
            api_key,
            price,
            files,
            manifest,
            console,
            backend="asyncio",
            backend_options={"use_uvloop": _have_uvloop()},
        )
    finally:
        # Nothing may log into the closed file afterwards (a library caller, the next test).
        configure_logging(log_file=None)
        if log_file is not None:
            log_file.close()
    out = _stdout()
    _print_summary(out, job, outcome, log_path)
    if not plan.quiet:
        with Store(job.output.db, read_only=True) as store:
            render_report(store.queries.report(run_id=outcome.run_id), out)
    if outcome.state == "completed":
        return 0
    if outcome.state.startswith("stopped"):
        return 3
    return 1


def _manifest_base(plan: _Plan, files: list[Path], price: Price | None) -> dict[str, Any]:
    """The static part of a run's manifest (the runner adds state, counts and cost)."""
    job = plan.job
    if plan.resume and plan.manifest is not None:
        base = dict(plan.manifest)
        base["resumed_at"] = [*base.get("resumed_at", []), time.time()]
        return base
    db = str(Path(job.output.db).resolve())
    return {
        "run_id": plan.run_id,
        "job": {"name": job.name, "path": job.path, "hash": job.job_hash, "text": job.text},
        "provider": job.request.provider,
        "model": job.request.model,
        "mode": job.request.mode,
        "fake": plan.fake,
        "base_url": None if plan.fake else job.resolved_base_url(),
        "db": db,
        "input_path": job.input.path,
        "inputs": fingerprints(files),
        "price_source": price.source if price else None,
        "started_at": time.time(),
        "rerun_of": None if plan.only is None else "failed rows",
        "resume_command": resume_command(plan.run_id, db),
        "batches": [],
    }


def _check_budget(job: Job, price: Price | None, plan: _Plan) -> None:
    """Refuse a run whose worst case already exceeds its budget, unless forced."""
    budget = job.limits.budget_usd
    assert budget is not None
    if price is None:
        raise ConfigError(
            f"budget_usd is set but no price is known for {job.request.provider} model "
            f"{job.request.model!r}, so the budget cannot be kept; add a [pricing] table "
            "(input_mtok, output_mtok) or remove budget_usd",
            path=job.path,
            key="limits.budget_usd",
        )
    if plan.force:
        return
    # The same method as 'pipeline estimate': rows already done are not counted.
    worst = estimate_job(job).cost_worst
    if worst is not None and worst > budget:
        raise ConfigError(
            f"the worst case for the rows still to send is about {format_usd(worst)} (every "
            f"answer at max_tokens; see 'pipeline estimate'), over budget_usd "
            f"{format_usd(budget)}; raise the budget, or pass --force to run until the budget "
            "is spent",
            path=job.path,
            key="limits.budget_usd",
        )


async def _run_async(
    plan: _Plan,
    api_key: str,
    price: Price | None,
    files: list[Path],
    manifest: dict[str, Any],
    console: Console,
) -> RunOutcome:
    job = plan.job
    async with AsyncExitStack() as stack:
        base_url = job.resolved_base_url()
        if plan.fake:
            from .fake import FakeConfig, running_fake_provider

            fake = await stack.enter_async_context(running_fake_provider(FakeConfig()))
            base_url = (
                fake.openai_base_url
                if job.request.provider == "openai"
                else fake.anthropic_base_url
            )
        store = stack.enter_context(Store(job.output.db))
        # Both prices come from cost.price_for; the store keeps them for view cache_savings.
        batch_price = price_for(job, batch=True) if job.request.mode == "batch" else None
        store.runs.record_prices(plan.run_id, {"online": price, "batch": batch_price})
        provider = make_provider(job, api_key=api_key, base_url=base_url)
        stack.push_async_callback(provider.aclose)
        if price is None:
            log.warning(
                "unknown_price",
                provider=job.request.provider,
                model=job.request.model,
                hint="cost_usd will be NULL for this run",
            )
        budget = LocalRateBudget(
            requests_per_minute=job.limits.requests_per_minute,
            tokens_per_minute=job.limits.tokens_per_minute,
        )
        path = manifest_path(job.output.db, plan.run_id)

        def online_runner(resume: bool, only: RowFilter | None) -> Runner:
            return Runner(
                job,
                store=store,
                provider=provider,
                budget=budget,
                price=price,
                base_url=base_url,
                run_id=plan.run_id,
                resume=resume,
                only=only,
                budget_usd=job.limits.budget_usd,
                spent_usd=plan.spent_usd,
                manifest_path=path,
                manifest=manifest,
                context_window=job.request.context_tokens,
            )

        runner: Runner | BatchRunner
        if job.request.mode == "batch":
            batch_provider = make_batch_provider(job, api_key=api_key, base_url=base_url)
            stack.push_async_callback(batch_provider.aclose)

            async def online_pass(only: RowFilter) -> RunOutcome:
                return await online_runner(True, only).run()

            runner = BatchRunner(
                job,
                store=store,
                provider=batch_provider,
                price=batch_price,
                base_url=base_url,
                run_id=plan.run_id,
                parts_dir=runs_dir(job.output.db) / f"{plan.run_id}.parts",
                online=online_pass,
                resume=plan.resume,
                wait=plan.wait,
                manifest_path=path,
                manifest=manifest,
                context_window=job.request.context_tokens,
            )
        else:
            runner = online_runner(plan.resume, plan.only)
        verb = "resuming" if plan.resume else "run"
        console.print(
            f"{verb} [bold]{plan.run_id}[/] · job {escape(job.name)} · "
            f"{job.request.provider} {escape(job.request.model)} → {base_url}\n"
            f"manifest: {path}",
            highlight=False,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(_handle_signals, runner, console)
            if not plan.quiet:
                total = await anyio.to_thread.run_sync(count_rows, files)
                tg.start_soon(lambda: show_progress(runner.stats, total=total, console=console))
            outcome = await runner.run()
            tg.cancel_scope.cancel()
        return outcome


async def _handle_signals(runner: Runner | BatchRunner, console: Console) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for signum in signals:
            count += 1
            if count == 1:
                console.print(
                    f"[yellow]{signal.Signals(signum).name}: stopping; requests in flight get "
                    "a short grace to finish. Press Ctrl-C again to stop at once.[/]"
                )
                runner.request_stop()
            else:
                runner.cancel_now()


def _print_summary(out: Console, job: Job, outcome: RunOutcome, log_path: Path) -> None:
    s = outcome.stats
    rate = s.rows_done / s.elapsed_s if s.elapsed_s else 0.0
    colour = "green" if outcome.state == "completed" else "red"
    out.print(f"[{colour}]{escape(outcome.state)}[/] · run {outcome.run_id}", highlight=False)
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
    out.print(
        f"results: {job.output.db} (view 'results') · log: {log_path}",
        highlight=False,
        markup=False,
    )
    if outcome.state != "completed":
        db = str(Path(job.output.db).resolve())
        out.print(
            f"to finish it: {resume_command(outcome.run_id, db)}", highlight=False, markup=False
        )


def _have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        return False
    return True


def _stdout() -> Console:
    """Standard output; wide when it is a file or pipe, so no figure is ever folded there."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    return console


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


# -- status, runs, report -------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    if args.run:
        path = find_manifest(args.run, args.db)
    else:
        found = latest_manifest(args.db)
        if found is None:
            raise ConfigError(f"no runs next to {args.db} yet; start one with 'pipeline run'")
        path = found
    m = read_manifest(path)
    out = _stdout()
    state = m["state"]
    if state == "running" and not _alive(m.get("pid")):
        state = f"running, but process {m.get('pid')} is gone (killed or crashed)"
    counts = m.get("counts", {})
    elapsed = max(m["updated_at"] - m["started_at"], 1e-9)
    done = sum(counts.get(k, 0) for k in ("ok", "failed", "input_error", "invalid"))
    out.print(
        f"run {m['run_id']} · job {m['job']['name']} · {m['provider']} {m['model']}",
        highlight=False,
        markup=False,
    )
    out.print(f"state: {state}", highlight=False, markup=False)
    out.print(
        f"rows: {counts.get('ok', 0):,} ok, {counts.get('failed', 0):,} failed, "
        f"{counts.get('input_error', 0):,} bad input, {counts.get('skipped', 0):,} already done "
        f"· {done / elapsed:,.0f} rows/s · {counts.get('rate_limited', 0):,} × 429",
        highlight=False,
    )
    budget = m.get("budget_usd")
    out.print(
        f"cost so far: {format_usd(m.get('cost_usd'))}"
        + (f" of budget {format_usd(budget)}" if budget else "")
        + f" · updated {time.time() - m['updated_at']:,.0f}s ago",
        highlight=False,
    )
    if m["state"] != "completed":
        out.print(f"to finish it: {m['resume_command']}", highlight=False, markup=False)
    return 0


def _runs(args: argparse.Namespace) -> int:
    out = _stdout()
    try:
        with Store(args.db, read_only=True) as store:
            rows = store.runs.list(limit=args.limit)
    except StoreError as exc:
        # A run is writing the database: the manifests tell the same story.
        print(f"note: {exc}; showing the run manifests instead", file=sys.stderr)
        rows = []
        for path in sorted(runs_dir(args.db).glob("*.manifest.json"), reverse=True)[: args.limit]:
            m = read_manifest(path)
            c = m.get("counts", {})
            rows.append(
                {
                    "run_id": m["run_id"],
                    "job": m["job"]["name"],
                    "model": m["model"],
                    "state": m["state"],
                    "started_at": m["started_at"],
                    "rows_ok": c.get("ok", 0),
                    "rows_failed": c.get("failed", 0) + c.get("input_error", 0),
                    "cost_usd": m.get("cost_usd"),
                }
            )
    if not rows:
        out.print("no runs yet")
        return 0
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("run", "job", "model", "started", "ok", "failed", "cost", "state"):
        table.add_column(name, justify="right" if name in ("ok", "failed", "cost") else "left")
    for r in rows:
        table.add_row(
            r["run_id"],
            r["job"],
            r["model"] or "–",
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["started_at"])),
            f"{r['rows_ok']:,}",
            f"{r['rows_failed']:,}",
            format_usd(r["cost_usd"]),
            r["state"],
        )
    out.print(table)
    return 0


def _batches(args: argparse.Namespace) -> int:
    if not Path(args.db).exists():
        raise ConfigError(f"no results database at {args.db}; run a job first or pass --db")
    with Store(args.db, read_only=True) as store:
        rows = store.batches.list(run_id=args.run_id)
    out = _stdout()
    if not rows:
        out.print("no batches yet")
        return 0
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name in (
        "run",
        "part",
        "provider",
        "batch id",
        "status",
        "requests",
        "ok",
        "errored",
        "age",
        "collected",
    ):
        table.add_column(
            name, justify="right" if name in ("part", "requests", "ok", "errored") else "left"
        )
    now = time.time()
    for r in rows:
        age = "–" if r["submitted_at"] is None else _age(now - r["submitted_at"])
        table.add_row(
            r["run_id"],
            str(r["part"]),
            r["provider"],
            r["batch_id"] or "(not submitted)",
            r["status"],
            f"{r['requests']:,}",
            "–" if r["succeeded"] is None else f"{r['succeeded']:,}",
            "–" if r["errored"] is None else f"{r['errored']:,}",
            age,
            "yes" if r["collected"] else "no",
        )
    out.print(table)
    return 0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _cancel(args: argparse.Namespace) -> int:
    manifest = read_manifest(find_manifest(args.run, args.db))
    if manifest.get("fake") and not args.base_url:
        raise ConfigError(
            f"run {manifest['run_id']} used the in-process fake provider, which stopped with "
            "it; there is nothing to cancel"
        )
    job = _job_from_manifest(manifest, argparse.Namespace(base_url=args.base_url, budget_usd=None))
    api_key = api_key_from_env(job.request.provider)
    register_secret(api_key)
    base_url = args.base_url or manifest.get("base_url") or job.resolved_base_url()

    async def go() -> list[tuple[str, str]]:
        provider = make_batch_provider(job, api_key=api_key, base_url=base_url)
        done = []
        try:
            with Store(job.output.db) as store:
                for part in store.batches.parts(manifest["run_id"]):
                    if part["batch_id"] and not part["collected"]:
                        state = await provider.cancel(part["batch_id"])
                        store.batches.update(manifest["run_id"], part["part"], status=state.status)
                        done.append((part["batch_id"], state.status))
        finally:
            await provider.aclose()
        return done

    cancelled = anyio.run(go)
    for batch_id, status in cancelled:
        print(f"{batch_id}: {status}")
    if not cancelled:
        print(f"run {manifest['run_id']} has no open batches")
    else:
        print(f"collect what finished with: {resume_command(manifest['run_id'], manifest['db'])}")
    return 0


def _report(args: argparse.Namespace) -> int:
    if not Path(args.db).exists():
        raise ConfigError(f"no results database at {args.db}; run a job first or pass --db")
    if args.html:
        from .report_html import collect_html_report, render_html

        with Store(args.db, read_only=True) as store:
            data = collect_html_report(store, job=args.job, run_id=args.run_id, db_path=args.db)
        try:
            Path(args.html).write_text(render_html(data), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {args.html}: {exc.strerror or exc}") from exc
        print(args.html)
        return 0
    with Store(args.db, read_only=True) as store:
        render_report(store.queries.report(job=args.job, run_id=args.run_id), _stdout())
    return 0


def _estimate(args: argparse.Namespace) -> int:
    job = load_job(args.job).with_overrides(input_path=args.input, db=args.db, mode=args.mode)
    if args.latency_s is not None and args.latency_s <= 0:
        raise ConfigError(f"--latency-s must be greater than 0, got {args.latency_s}")
    est = estimate_job(job, latency_s=args.latency_s)
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(est.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render_estimate(est, _stdout())
    return 0


def _export(args: argparse.Namespace) -> int:
    if not Path(args.db).exists():
        raise ConfigError(f"no results database at {args.db}; run a job first or pass --db")
    from .export import export_run

    out = args.out or str(runs_dir(args.db) / f"{args.run}.results.{args.format}")
    with Store(args.db, read_only=True) as store:
        if store.runs.get(args.run) is None:
            raise ConfigError(f"no run {args.run!r} in {args.db}; 'pipeline runs' lists them")
        count = export_run(store, args.run, out, args.format)
    print(f"wrote {count:,} rows of run {args.run} to {out}")
    return 0


# -- fake-provider --------------------------------------------------------------------------


def _fake_provider(args: argparse.Namespace) -> int:
    from .fake import FakeConfig, serve_forever

    knobs = {f.name: getattr(args, f.name) for f in dataclasses.fields(FakeConfig)}
    serve_forever(FakeConfig(**knobs), host="127.0.0.1", port=args.port)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
