"""``pipeline run``, ``resume`` and ``rerun``: build a ``RunSession``, drive it, print the end.

Everything a run decides is the session's; this module only turns arguments into a job and a
session, wires the terminal (progress, signals, one-line notices) and prints the summary.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.markup import escape

from ..errors import ConfigError, first_pipeline_error
from ..execution import RunOutcome, RunSession, RunStats, new_run_id
from ..execution.cluster import RayEngine
from ..execution.manifest import changed_inputs, find_manifest, read_manifest, resume_command
from ..execution.session import check_budget
from ..job import Job, load_job, parse_job
from ..job.pricing import fallback_price_for, price_for
from ..logs import configure_logging, register_secret
from ..plan import RowFilter
from ..providers import api_key_from_env, make_batch_provider, make_provider
from ..render import Renderer
from ..sources import input_files
from ..store import Store
from ._out import alive, stdout

__all__ = ["FAKE_KEY", "job_from_manifest", "rerun", "resume", "run"]

FAKE_KEY = "fake-key-not-secret"


@dataclass(frozen=True, slots=True)
class _Launch:
    """One run to start or continue: which job, under which run id, and how."""

    job: Job
    run_id: str
    fake: bool
    quiet: bool
    resume: bool = False
    only: RowFilter | None = None
    force: bool = False
    manifest: Mapping[str, Any] | None = None
    wait: bool = True


def run(args: argparse.Namespace) -> int:
    job = load_job(args.job).with_overrides(
        input_path=args.input,
        db=args.db,
        base_url=args.base_url,
        budget_usd=args.budget_usd,
        mode=args.mode,
        **_cluster_overrides(args),
    )
    if args.no_wait and job.request.mode != "batch":
        raise ConfigError("--no-wait is for batch mode; add --mode batch")
    if args.no_wait and args.fake:
        raise ConfigError(
            "--no-wait needs a provider that outlives this command, and --fake stops with it; "
            "start 'pipeline fake-provider' and pass --base-url instead"
        )
    launch = _Launch(
        job,
        args.run_id or new_run_id(),
        args.fake,
        args.quiet,
        force=args.force,
        wait=not args.no_wait,
    )
    return _execute(launch)


def job_from_manifest(
    manifest: Mapping[str, Any],
    *,
    base_url: str | None = None,
    budget_usd: float | None = None,
    **cluster: Any,
) -> Job:
    """The job a run was started with (its recorded file text), with today's overrides
    (``cluster``: ``engine``, ``workers``, ``address``)."""
    recorded = manifest["job"]
    return parse_job(recorded["text"], path=recorded["path"]).with_overrides(
        input_path=manifest["input_path"],
        db=manifest["db"],
        base_url=base_url,
        budget_usd=budget_usd,
        mode=manifest.get("mode"),
        **cluster,
    )


def _cluster_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--engine``, ``--workers``, ``--address``, for ``Job.with_overrides``."""
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    return {"engine": args.engine, "workers": args.workers, "address": args.address}


def resume(args: argparse.Namespace) -> int:
    manifest = read_manifest(find_manifest(args.run, args.db))
    run_id = manifest["run_id"]
    if manifest["state"] == "running" and alive(manifest.get("pid")):
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
    job = job_from_manifest(
        manifest, base_url=args.base_url, budget_usd=args.budget_usd, **_cluster_overrides(args)
    )
    if job.request.schema_path and Renderer(job.request).prompt_hash != manifest.get("prompt_hash"):
        raise ConfigError(
            f"the schema file {job.request.schema_path} of run {run_id} changed since it "
            "started, so the rest of its rows would be a new request version; restore the "
            "file, or start a new run with 'pipeline run'"
        )
    launch = _Launch(
        job,
        run_id,
        args.fake or bool(manifest.get("fake")),
        args.quiet,
        resume=True,
        force=True,
        manifest=manifest,
    )
    return _execute(launch)


def rerun(args: argparse.Namespace) -> int:
    manifest = read_manifest(find_manifest(args.run, args.db))
    job = job_from_manifest(
        manifest, base_url=args.base_url, budget_usd=args.budget_usd, **_cluster_overrides(args)
    )
    with Store(job.output.db, read_only=True) as store:
        keys, lines = store.results.not_ok_rows(manifest["run_id"])
    if not keys and not lines:
        print(f"run {manifest['run_id']} has no failed rows: nothing to send")
        return 0
    only = RowFilter(frozenset(keys), frozenset(lines))
    fake = args.fake or bool(manifest.get("fake"))
    return _execute(_Launch(job, new_run_id(), fake, args.quiet, only=only))


def _execute(launch: _Launch) -> int:
    job = launch.job
    input_files(job.input.path)  # a missing input fails here, before anything is opened
    fallback = job.request.fallback
    if launch.fake:
        api_key = fallback_key = FAKE_KEY
    else:
        api_key = api_key_from_env(job.request.provider)
        register_secret(api_key)
        fallback_key = api_key
        if fallback is not None and fallback.provider != job.request.provider:
            # The fallback's own key, read only for a job that has a fallback there.
            fallback_key = api_key_from_env(fallback.provider)
            register_secret(fallback_key)
    price = price_for(job, batch=job.request.mode == "batch")
    check_budget(job, price=price, force=launch.force)
    if price_for(job) is None:
        print(
            f"warning: no price known for {job.request.provider} model {job.request.model!r}: "
            f"cost_usd will be NULL; add a [pricing] table to {job.path} "
            "(input_mtok, output_mtok: US dollars per million tokens)",
            file=sys.stderr,
        )
    if fallback is not None and fallback_price_for(job) is None:
        print(
            f"warning: no price known for the fallback, {fallback.provider} model "
            f"{fallback.model!r}: cost_usd of the rows it answers will be NULL",
            file=sys.stderr,
        )
    from ..execution.manifest import runs_dir

    log_path = runs_dir(job.output.db) / f"{launch.run_id}.log.jsonl"
    log_file = configure_logging(log_file=log_path)
    console = Console(stderr=True, quiet=launch.quiet)
    try:
        outcome = anyio.run(
            _run_async,
            launch,
            (api_key, fallback_key),
            console,
            backend="asyncio",
            backend_options={"use_uvloop": _have_uvloop()},
        )
    finally:
        # Nothing may log into the closed file afterwards (a library caller, the next test).
        configure_logging(log_file=None)
        if log_file is not None:
            log_file.close()
    out = stdout()
    _print_summary(out, job, outcome, log_path)
    if not launch.quiet:
        from ..reporting.text import render_report

        with Store(job.output.db, read_only=True) as store:
            render_report(store.queries.report(run_id=outcome.run_id), out)
    if outcome.state == "completed":
        return 0
    if outcome.state.startswith("stopped"):
        return 3
    return 1


async def _run_async(launch: _Launch, keys: tuple[str, str], console: Console) -> RunOutcome:
    job = launch.job
    api_key, fallback_key = keys
    async with AsyncExitStack() as stack:
        base_url = job.resolved_base_url()
        fallback_url = job.fallback_base_url()
        if launch.fake:
            from ..fake import FakeConfig, running_fake_provider

            fake = await stack.enter_async_context(running_fake_provider(FakeConfig()))
            base_url = fake.base_url(job.request.provider)
            if job.request.fallback is not None:
                fallback_url = fake.base_url(job.request.fallback.provider)
        store = stack.enter_context(Store(job.output.db))
        provider = make_provider(job, api_key=api_key, base_url=base_url)
        stack.push_async_callback(provider.aclose)
        batch_provider = make_batch_provider(job, api_key=api_key, base_url=base_url)
        stack.push_async_callback(batch_provider.aclose)
        fallback_provider = None
        if fallback_url is not None:
            fallback_provider = make_provider(
                job, api_key=fallback_key, base_url=fallback_url, fallback=True
            )
            stack.push_async_callback(fallback_provider.aclose)

        def notice(message: str) -> None:
            # Even with --quiet: these lines say why rows were not sent, or were recovered.
            print(message, file=sys.stderr)

        manifest = launch.manifest
        if manifest is None:
            manifest = {"fake": launch.fake, "base_url": None if launch.fake else base_url}
        engine = _engine(job, launch, notice)
        if engine is not None:  # for 'pipeline status' and whoever reads the manifest
            cluster = job.cluster
            manifest = {
                **manifest,
                "cluster": {
                    "engine": "ray",
                    "workers": cluster.workers,
                    "address": cluster.address,
                },
            }
        session = RunSession(
            job,
            store=store,
            base_url=base_url,
            provider=provider,
            batch_provider=batch_provider,
            run_id=launch.run_id,
            resume=launch.resume,
            only=launch.only,
            wait=launch.wait,
            manifest=manifest,
            notice=notice,
            fallback_provider=fallback_provider,
            fallback_url=fallback_url,
            engine=engine,
        )
        verb = "resuming" if launch.resume else "run"
        console.print(
            f"{verb} [bold]{launch.run_id}[/] · job {escape(job.name)} · "
            f"{job.request.provider} {escape(job.request.model)} → {base_url}\n"
            f"manifest: {session.manifest_path}",
            highlight=False,
        )
        try:
            return await _drive(session, launch, console)
        except BaseExceptionGroup as group:
            # The session recorded the run as failed; the person gets one line, not a group.
            error = first_pipeline_error(group)
            if error is None:
                raise
            raise error from group


def _engine(job: Job, launch: _Launch, notice: Callable[[str], None]) -> RayEngine | None:
    """The Ray engine for a job with ``[cluster] engine = "ray"`` that sends online; None
    otherwise (batch mode is I/O and runs from this process)."""
    cluster = job.cluster
    if cluster.engine != "ray":
        return None
    if job.request.mode == "batch":
        notice("batch mode runs from this process: [cluster] applies to online runs")
        return None
    notice(
        f"engine ray: {cluster.workers} workers"
        + (f" on the Ray cluster at {cluster.address}" if cluster.address else " on a local Ray")
    )
    return RayEngine(cluster, fake_key=FAKE_KEY if launch.fake else None, notice=notice)


async def _drive(session: RunSession, launch: _Launch, console: Console) -> RunOutcome:
    """The session's run, with signals handled and (on a terminal) a progress bar."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(_handle_signals, session, console)
        if not launch.quiet and console.is_terminal:
            from ..reporting.progress import show_progress
            from ..sources import count_rows

            files = input_files(launch.job.input.path)
            total = await anyio.to_thread.run_sync(count_rows, files)
            tg.start_soon(lambda: show_progress(session.stats, total=total, console=console))
        outcome = await session.run()
        tg.cancel_scope.cancel()
    return outcome


async def _handle_signals(session: RunSession, console: Console) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        count = 0
        async for signum in signals:
            count += 1
            if count == 1:
                console.print(
                    f"[yellow]{signal.Signals(signum).name}: stopping; requests in flight get "
                    "a short grace to finish. Press Ctrl-C again to stop at once.[/]"
                )
                session.request_stop()
            else:
                session.cancel_now()


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
    fallback = job.request.fallback
    if fallback is not None and (s.rows_fallback or s.fallback_switches):
        out.print(_fallback_line(job.request.model, fallback.model, s), highlight=False)
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


def _have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        return False
    return True
