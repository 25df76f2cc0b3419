"""The ``pipeline`` command: a thin shell over the library.

Library errors become one clear line on stderr and an exit code; nothing here decides anything
the library could decide.

Exit codes: 0 the run completed (rows may still have failed: see the summary), 1 the run failed
(bad key, no quota, a crash), 2 the job file or the command line is wrong, 3 stopped by a signal.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import structlog
from rich.console import Console

from .config import Job, load_job
from .cost import lookup_price
from .errors import ConfigError, PipelineError
from .limits import LocalRateBudget
from .logs import configure_logging, register_secret
from .progress import count_rows, show_progress
from .providers import api_key_from_env, make_provider
from .report import render_report
from .runner import Runner, RunOutcome, new_run_id
from .sources import input_files
from .store import Store

__all__ = ["COMMANDS", "build_parser", "main"]

log = structlog.get_logger("pipeline.cli")

COMMANDS = {
    "run": "run a job file: send every row not yet done, store results and cost in DuckDB",
    "report": "print cost, tokens and latency by model and status from a results database",
    "fake-provider": "serve the built-in fake OpenAI/Anthropic provider on 127.0.0.1",
}

FAKE_KEY = "fake-key-not-secret"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Batch LLM requests from JSONL/Parquet rows into DuckDB, with cost.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help=COMMANDS["run"], description=COMMANDS["run"])
    run.add_argument("job", help="job file (TOML), e.g. jobs/review_sentiment.toml")
    run.add_argument("--input", help="override [input].path")
    run.add_argument("--db", help="override [output].db")
    run.add_argument("--base-url", help="override [request].base_url")
    run.add_argument(
        "--fake",
        action="store_true",
        help="start the built-in fake provider in-process and send every request to it",
    )
    run.add_argument("--run-id", help="use this run id instead of a new one")
    run.add_argument(
        "--quiet", action="store_true", help="no progress bar and no report, just the summary"
    )

    report = sub.add_parser("report", help=COMMANDS["report"], description=COMMANDS["report"])
    report.add_argument("--db", default="data/results.duckdb", help="results database")
    report.add_argument("--job", help="only this job")
    report.add_argument("--run", dest="run_id", help="only this run id")

    fake = sub.add_parser(
        "fake-provider", help=COMMANDS["fake-provider"], description=COMMANDS["fake-provider"]
    )
    fake.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765)")
    from .fake import FakeConfig

    for f in dataclasses.fields(FakeConfig):
        default = getattr(FakeConfig(), f.name)
        kind: Any = type(default) if default is not None else float
        if kind is bool:
            fake.add_argument(
                f"--{f.name.replace('_', '-')}",
                action="store_true",
                default=default,
                help=f"(default {default})",
            )
        else:
            fake.add_argument(
                f"--{f.name.replace('_', '-')}",
                type=kind,
                default=default,
                help=f"(default {default})",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = Console(stderr=True)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "report":
            return _report(args)
        if args.command == "fake-provider":
            return _fake_provider(args)
    except ConfigError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        return 2
    except PipelineError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        return 1
    raise AssertionError(args.command)  # pragma: no cover


# -- run ------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    job = load_job(args.job).with_overrides(
        input_path=args.input, db=args.db, base_url=args.base_url
    )
    files = input_files(job.input.path)  # a missing input fails here, before anything is sent
    if args.fake:
        api_key = FAKE_KEY
    else:
        api_key = api_key_from_env(job.request.provider)
        register_secret(api_key)
    run_id = args.run_id or new_run_id()
    db = Path(job.output.db)
    log_path = db.parent / "runs" / f"{run_id}.log.jsonl"
    log_file = configure_logging(log_file=log_path)
    console = Console(stderr=True, quiet=args.quiet)
    try:
        outcome = _run_async(
            job, args, api_key=api_key, run_id=run_id, files=files, console=console
        )
    finally:
        if log_file is not None:
            log_file.close()
    out = _stdout()
    _print_summary(out, job, outcome, log_path)
    if not args.quiet:
        with Store(job.output.db, read_only=True) as store:
            render_report(store.report(run_id=outcome.run_id), out)
    if outcome.state == "completed":
        return 0
    if outcome.state.startswith("stopped"):
        return 3
    return 1


def _run_async(
    job: Job,
    args: argparse.Namespace,
    *,
    api_key: str,
    run_id: str,
    files: list[Path],
    console: Console,
) -> RunOutcome:
    async def go() -> RunOutcome:
        async with AsyncExitStack() as stack:
            base_url = job.resolved_base_url()
            if args.fake:
                from .fake import FakeConfig, running_fake_provider

                fake = await stack.enter_async_context(running_fake_provider(FakeConfig()))
                base_url = (
                    fake.openai_base_url
                    if job.request.provider == "openai"
                    else fake.anthropic_base_url
                )
            store = stack.enter_context(Store(job.output.db))
            provider = make_provider(job, api_key=api_key, base_url=base_url)
            stack.push_async_callback(provider.aclose)
            price = lookup_price(job.request.provider, job.request.model)
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
            runner = Runner(
                job,
                store=store,
                provider=provider,
                budget=budget,
                price=price,
                base_url=base_url,
                run_id=run_id,
            )
            console.print(
                f"run [bold]{run_id}[/] · job {job.name} · {job.request.provider} "
                f"{job.request.model} → {base_url}",
                highlight=False,
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(_handle_signals, runner, console)
                if not args.quiet:
                    total = await anyio.to_thread.run_sync(count_rows, files)
                    tg.start_soon(lambda: show_progress(runner.stats, total=total, console=console))
                outcome = await runner.run()
                tg.cancel_scope.cancel()
            return outcome

    return anyio.run(go, backend="asyncio", backend_options={"use_uvloop": _have_uvloop()})


async def _handle_signals(runner: Runner, console: Console) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for signum in signals:
            count += 1
            if count == 1:
                console.print(
                    f"[yellow]{signal.Signals(signum).name}: stopping; requests in flight get "
                    f"{runner.grace_s:g}s to finish. Press Ctrl-C again to stop at once.[/]"
                )
                runner.request_stop()
            else:
                runner.cancel_now()


def _print_summary(out: Console, job: Job, outcome: RunOutcome, log_path: Path) -> None:
    s = outcome.stats
    rate = s.rows_done / s.elapsed_s if s.elapsed_s else 0.0
    colour = "green" if outcome.state == "completed" else "red"
    out.print(f"[{colour}]{outcome.state}[/] · run {outcome.run_id}", highlight=False)
    out.print(
        f"rows: {s.rows_ok:,} ok, {s.rows_failed:,} failed, {s.rows_input_error:,} bad input, "
        f"{s.rows_skipped:,} already done · {s.rows_done:,} in {s.elapsed_s:.1f}s "
        f"({rate:,.0f} rows/s)",
        highlight=False,
    )
    out.print(
        f"requests: {s.requests_sent:,} sent, {s.retries:,} retried, {s.rate_limited:,} × 429 · "
        f"tokens: {s.input_tokens:,} in, {s.output_tokens:,} out · cost: ${s.cost_usd:,.6f}",
        highlight=False,
    )
    out.print(f"results: {job.output.db} (view 'results') · log: {log_path}", highlight=False)
    if outcome.state != "completed":
        out.print(
            f"to finish it, run again: pipeline run {job.path}"
            + (f" --db {job.output.db}" if job.output.db else ""),
            highlight=False,
        )


def _stdout() -> Console:
    """Standard output; wide when it is a file or pipe, so no figure is ever folded there."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    return console


def _have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        return False
    return True


# -- report ---------------------------------------------------------------------------------


def _report(args: argparse.Namespace) -> int:
    if not Path(args.db).exists():
        raise ConfigError(f"no results database at {args.db}; run a job first or pass --db")
    with Store(args.db, read_only=True) as store:
        render_report(store.report(job=args.job, run_id=args.run_id), _stdout())
    return 0


# -- fake-provider --------------------------------------------------------------------------


def _fake_provider(args: argparse.Namespace) -> int:
    from .fake import FakeConfig, serve_forever

    knobs = {f.name: getattr(args, f.name) for f in dataclasses.fields(FakeConfig)}
    serve_forever(FakeConfig(**knobs), host="127.0.0.1", port=args.port)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
