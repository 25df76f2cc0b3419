"""One call runs a job: ``pipeline.run`` (and ``await pipeline.arun``), ``pipeline.estimate``.

Everything a run needs around it happens here, for the command line, a notebook, a nightly
task and the tests alike::

    pipeline.run(job, rows=..., fake=..., resume=..., ...)
      1. the job       a path, a Job or a dict; overrides; a resumed run's job from its manifest,
                       and the resume rules (not while its process lives; not over a changed
                       input or schema file)
      2. the input     the job's files or rows from Python, surveyed once: fingerprints, the
                       row count and, when the budget is to be checked, the estimate
      3. the policy    keys from the environment (or ``api_key``), the budget refused before
                       anything is sent, warnings for prices nobody knows
      4. the wiring    the run's log, the built-in fake provider, the store, the providers and
                       their closing, the Ray engine, signals, the progress bar
      5. the run       ``RunSession`` (pipeline.execution), which returns the ``RunOutcome``

Errors: a ``ConfigError`` (the job, an option or the input is wrong; nothing was sent) or
another ``PipelineError`` (the database cannot be written, ...) is raised as it is; a run that
fails once started (a bad key, no quota, an unreachable provider) returns an outcome whose
``state`` is ``RunState.FAILED``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from .errors import ConfigError, StoppedError, first_pipeline_error
from .execution.manifest import (
    Manifest,
    changed_inputs,
    check_run_id,
    find_manifest,
    process_alive,
    read_manifest,
    runs_dir,
)
from .job import Job, job_from_mapping, load_job, parse_job
from .records import RunState
from .sources import RowSource, row_source

if TYPE_CHECKING:
    import httpx

    from .estimates import Estimate
    from .execution.outcome import RunOutcome
    from .execution.session import RunSession
    from .fake import FakeConfig, FakeProvider
    from .plan import RowFilter

__all__ = [
    "DEFAULT_DB",
    "FAKE_KEY",
    "JobLike",
    "aestimate",
    "arun",
    "estimate",
    "failed_rows",
    "job_of_run",
    "resolve_job",
    "run",
]

log = structlog.get_logger("pipeline.run")

DEFAULT_DB = "data/results.duckdb"
FAKE_KEY = "fake-key-not-secret"
"""The key the built-in fake provider is sent (it checks that one is there, not which)."""

_last_run: dict[str, str] = {}  # the run this process started last: for a line after Ctrl-C


def last_run() -> str | None:
    """The resume command of the run this process started last, if any."""
    return _last_run.get("resume")


JobLike = str | os.PathLike[str] | Job | Mapping[str, Any]
"""A job: the path of a job file, a ``Job``, or a dict with the job file's keys."""

Notice = Callable[[str], None]


def resolve_job(job: JobLike) -> Job:
    """A ``Job`` from a path, a ``Job`` or a dict (the same checks and one-line errors as a
    job file: ``ConfigError``)."""
    if isinstance(job, Job):
        return job
    if isinstance(job, Mapping):
        return job_from_mapping(job)
    if isinstance(job, str | os.PathLike):
        return load_job(job)
    raise ConfigError(
        f"a job is a path, a Job or a dict of the job file's keys, not {type(job).__name__}"
    )


def job_of_run(
    run: str,
    *,
    db: str | os.PathLike[str] = DEFAULT_DB,
    base_url: str | None = None,
    budget_usd: float | None = None,
    engine: str | None = None,
    workers: int | None = None,
    address: str | None = None,
) -> Job:
    """The job run ``run`` (a run id next to ``db``, or a manifest's path) was started with,
    from its manifest, with today's overrides."""
    return _job_from_manifest(
        read_manifest(find_manifest(run, db)),
        base_url=base_url,
        budget_usd=budget_usd,
        engine=engine,
        workers=workers,
        address=address,
    )


def failed_rows(run: str, *, db: str | os.PathLike[str] = DEFAULT_DB) -> RowFilter:
    """The rows of run ``run`` that did not end ``ok`` (and have no ``ok`` result since), for
    ``pipeline.run(job, only=...)``: what ``pipeline rerun RUN --failed`` sends again."""
    from .plan import RowFilter
    from .store import Store

    manifest = read_manifest(find_manifest(run, db))
    with Store(manifest.db, read_only=True) as store:
        keys, lines = store.results.not_ok_rows(manifest.run_id)
    return RowFilter(frozenset(keys), frozenset(lines))


def _job_from_manifest(
    manifest: Manifest,
    *,
    base_url: str | None = None,
    budget_usd: float | None = None,
    engine: str | None = None,
    workers: int | None = None,
    address: str | None = None,
) -> Job:
    recorded = manifest.job
    job = parse_job(recorded.text, path=recorded.path, text_format=recorded.format)
    return job.with_overrides(
        input_path=None if manifest.python_rows else manifest.input_path,
        db=manifest.db,
        base_url=base_url,
        budget_usd=budget_usd,
        mode=manifest.mode,
        engine=engine,
        workers=workers,
        address=address,
    )


# -- the one call -----------------------------------------------------------------------------


def run(
    job: JobLike | None = None,
    *,
    rows: Any = None,
    fake: bool | FakeConfig | FakeProvider = False,
    resume: str | None = None,
    only: RowFilter | None = None,
    budget_usd: float | None = None,
    engine: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    api_key: str | None = None,
    quiet: bool = True,
    db: str | os.PathLike[str] | None = None,
    input: str | None = None,
    mode: str | None = None,
    base_url: str | None = None,
    run_id: str | None = None,
    force: bool = False,
    wait: bool = True,
    allow_changed_input: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    on_notice: Notice | None = None,
    signals: bool | None = None,
) -> RunOutcome:
    """Run a job to its end and return how it went (``RunOutcome``).

    ``job``: a job file's path, a ``Job``, or a dict with the job file's keys. ``rows``: the
    rows to send instead of the job's ``[input] path``: dicts, a pyarrow Table or
    RecordBatchReader, or a polars/pandas DataFrame. Rows already done (an ``ok`` result for the
    same request version) are not sent again, so the same call twice sends nothing the second
    time, and with more rows only the new ones.

    ``fake``: send every request to the built-in fake provider, started here (a
    ``FakeConfig`` sets its behaviour; a running ``FakeProvider`` is used as it is).
    ``resume``: the run id (or manifest path) of a run to finish; ``job`` may then be left out
    (the run's own job is used). ``only``: send only these rows (``failed_rows(run)``: a rerun
    of what failed). ``budget_usd``, ``engine``, ``workers``, ``address``, ``db``, ``input``,
    ``mode``, ``base_url``: override the job's keys. ``api_key``: the provider's key (default:
    its environment variable; never written anywhere). ``force``: start even if the estimate's
    worst case is over ``budget_usd``. ``wait=False``: in batch mode, submit the batches and
    return (``resume`` collects them). ``transport``: an httpx transport every request goes
    through (tests: ``httpx.MockTransport``). ``quiet=False``: the start line, notices and a
    progress bar on stderr. ``on_notice``: hears the one-line notices (rows recovered from a
    journal, batches of earlier runs, price warnings); by default they are printed on stderr
    unless ``quiet`` (and always logged). ``signals``: SIGINT/SIGTERM stop the run gracefully
    (a second one at once), as on the command line; default: when called on the main thread.

    Works in a notebook too: called where an event loop is already running, the run goes on a
    thread of its own (or ``await pipeline.arun(...)``).
    """
    kwargs = dict(locals())
    try:
        import asyncio

        asyncio.get_running_loop()
    except RuntimeError:
        on_main = threading.current_thread() is threading.main_thread()
        if kwargs["signals"] is None:
            kwargs["signals"] = on_main
        return _run_blocking(kwargs)
    # An event loop is running here (a notebook): run on a thread with a loop of its own.
    kwargs["signals"] = False
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["outcome"] = _run_blocking(kwargs)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="pipeline.run")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["outcome"]  # type: ignore[no-any-return]


def _run_blocking(kwargs: dict[str, Any]) -> RunOutcome:
    # The event loop's signal handling leaves SIGTERM at its default when it ends: the
    # caller's handlers (the CLI's, a task runner's) are put back.
    handlers = {}
    if kwargs.get("signals"):
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        outcome: RunOutcome = anyio.run(
            lambda: arun(**kwargs),
            backend="asyncio",
            backend_options={"use_uvloop": _have_uvloop()},
        )
    finally:
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)
    return outcome


async def arun(
    job: JobLike | None = None,
    *,
    rows: Any = None,
    fake: bool | FakeConfig | FakeProvider = False,
    resume: str | None = None,
    only: RowFilter | None = None,
    budget_usd: float | None = None,
    engine: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    api_key: str | None = None,
    quiet: bool = True,
    db: str | os.PathLike[str] | None = None,
    input: str | None = None,
    mode: str | None = None,
    base_url: str | None = None,
    run_id: str | None = None,
    force: bool = False,
    wait: bool = True,
    allow_changed_input: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    on_notice: Notice | None = None,
    signals: bool | None = False,
) -> RunOutcome:
    """``pipeline.run`` for async code: the same arguments, awaited on the caller's loop
    (``signals`` default False: the caller's program owns its signals)."""
    notice = on_notice or _notice_printer(quiet)
    plan = _Plan.make(
        job,
        rows=rows,
        fake=fake,
        resume=resume,
        only=only,
        overrides={
            "budget_usd": budget_usd,
            "engine": engine,
            "workers": workers,
            "address": address,
            "db": None if db is None else os.fspath(db),
            "input_path": input,
            "mode": mode,
            "base_url": base_url,
        },
        run_id=run_id,
        wait=wait,
        allow_changed_input=allow_changed_input,
    )
    keys = plan.keys(api_key)
    from .execution.stats import new_run_id

    plan.run_id = plan.run_id or new_run_id()
    with _run_log(plan.job, plan.run_id):
        return await _launch(
            plan,
            keys=keys,
            force=force,
            quiet=quiet,
            transport=transport,
            notice=notice,
            signals=bool(signals),
        )


@dataclass
class _Plan:
    """A run about to start: its job, its rows, and how (the arguments of ``run``, checked)."""

    job: Job
    source: RowSource
    fake: bool | FakeConfig | FakeProvider
    resumed: Manifest | None
    only: RowFilter | None
    run_id: str | None
    wait: bool

    @classmethod
    def make(
        cls,
        job: JobLike | None,
        *,
        rows: Any,
        fake: bool | FakeConfig | FakeProvider,
        resume: str | None,
        only: RowFilter | None,
        overrides: dict[str, Any],
        run_id: str | None,
        wait: bool,
        allow_changed_input: bool,
    ) -> _Plan:
        resumed: Manifest | None = None
        if resume is not None:
            db = overrides["db"] or (resolve_job(job).output.db if job is not None else DEFAULT_DB)
            resumed = read_manifest(find_manifest(resume, db))
            _check_resumable(resumed, rows=rows, allow_changed_input=allow_changed_input)
            recorded = _job_from_manifest(resumed)
            chosen = recorded if job is None else resolve_job(job)
            overrides = {**overrides, "mode": overrides["mode"] or resumed.mode}
            if overrides["budget_usd"] is None:
                # The budget it was running under, from its job file or --budget-usd.
                overrides["budget_usd"] = resumed.budget_usd
            if overrides["input_path"] is None and not resumed.python_rows:
                overrides["input_path"] = resumed.input_path
            overrides["db"] = resumed.db  # a run goes on in the database it started in
            chosen = chosen.with_overrides(**overrides)
            _check_same_version(chosen, resumed)
            fake = fake or resumed.fake
            run_id = resumed.run_id
        elif job is None:
            raise ConfigError("no job: give a job file's path, a Job or a dict (or resume=RUN)")
        else:
            chosen = resolve_job(job).with_overrides(**overrides)
        if run_id is not None:
            check_run_id(run_id)
        if not wait and chosen.request.mode != "batch":
            raise ConfigError("--no-wait is for batch mode; add --mode batch")
        if not wait and fake:
            raise ConfigError(
                "--no-wait needs a provider that outlives this command, and --fake stops with "
                "it; start 'pipeline fake-provider' and pass --base-url instead"
            )
        source = row_source(chosen.input, rows)  # a missing input fails here, before anything
        return cls(chosen, source, fake, resumed, only, run_id, wait)

    def keys(self, api_key: str | None) -> tuple[str, str]:
        """The job's key and its fallback's (the same when both are on one provider), from
        ``api_key`` or the environment; each registered so that no log line shows it."""
        from .logs import register_secret
        from .providers import api_key_from_env

        job = self.job
        if self.fake:
            return FAKE_KEY, FAKE_KEY
        key = api_key or api_key_from_env(job.request.provider)
        register_secret(key)
        fallback = job.request.fallback
        fallback_key = key
        if fallback is not None and fallback.provider != job.request.provider:
            fallback_key = api_key_from_env(fallback.provider)
            register_secret(fallback_key)
        return key, fallback_key


def _check_resumable(manifest: Manifest, *, rows: Any, allow_changed_input: bool) -> None:
    run_id = manifest.run_id
    if manifest.state is RunState.RUNNING and process_alive(manifest.pid):
        raise ConfigError(
            f"run {run_id} is still running (process {manifest.pid}); "
            f"watch it with: pipeline status {run_id} --db {manifest.db}"
        )
    if manifest.python_rows and rows is None:
        raise ConfigError(
            f"run {run_id} read its rows from Python, not from a file; finish it with "
            f"pipeline.run(job, rows=..., resume={run_id!r}) and the same rows (rows already "
            "done are not sent again)"
        )
    changes = changed_inputs(manifest.inputs)
    if changes and not allow_changed_input:
        raise ConfigError(
            f"the input of run {run_id} changed since it started: {'; '.join(changes)}. "
            "Resume anyway with --allow-changed-input (rows already done are not sent again), "
            "or start a new run with 'pipeline run'"
        )
    if rows is not None and not manifest.python_rows:
        raise ConfigError(
            f"run {run_id} read its rows from {manifest.input_path}; resume it without rows"
        )


def _check_same_version(job: Job, manifest: Manifest) -> None:
    """A resumed run goes on with the request version it started with."""
    from .render import Renderer

    if not manifest.prompt_hash or Renderer(job.request).prompt_hash == manifest.prompt_hash:
        return
    what = (
        f"the schema file {job.request.schema_path}"
        if job.request.schema_path
        else "the job's request (model, prompt, system prompt or parameters)"
    )
    raise ConfigError(
        f"{what} of run {manifest.run_id} changed since it started, so the rest of its rows "
        "would be a new request version; restore it, or start a new run with 'pipeline run'"
    )


class _run_log:
    """The run's log (``runs/RUN_ID.log.jsonl``) while the run goes; the logging the caller had
    before is put back afterwards."""

    def __init__(self, job: Job, run_id: str) -> None:
        self.path = runs_dir(job.output.db) / f"{run_id}.log.jsonl"

    def __enter__(self) -> Path:
        from .logs import configure_logging

        self._before = structlog.get_config()
        self._file = configure_logging(log_file=self.path)
        return self.path

    def __exit__(self, *exc: object) -> None:
        # Nothing may log into the closed file afterwards (the caller, the next run).
        structlog.configure(**self._before)
        if self._file is not None:
            with contextlib.suppress(OSError):  # a full disk: what could be written, was
                self._file.close()


async def _launch(
    plan: _Plan,
    *,
    keys: tuple[str, str],
    force: bool,
    quiet: bool,
    transport: httpx.AsyncBaseTransport | None,
    notice: Notice,
    signals: bool,
) -> RunOutcome:
    """Steps 2 to 5 of the module docstring, with signals heard from the start."""
    box: dict[str, Any] = {}
    try:
        async with anyio.create_task_group() as tg:
            control = _Control(tg.cancel_scope, notice)
            if signals:
                tg.start_soon(control.listen)
            box["outcome"] = await _wired(
                plan,
                keys=keys,
                force=force,
                quiet=quiet,
                transport=transport,
                notice=notice,
                control=control,
            )
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # One error for the caller (a refused budget, a database in use), not a task group.
        error = first_pipeline_error(group)
        if error is None:
            raise
        raise error from group
    if "outcome" not in box:  # stopped by a signal before the run began
        raise StoppedError("stopped by a signal before anything was sent; nothing was recorded")
    outcome: RunOutcome = box["outcome"]
    return outcome


class _Control:
    """Signals: the first stops the run gracefully, the second at once. Before the session
    exists (the input is being surveyed), a signal cancels the start-up."""

    def __init__(self, scope: anyio.CancelScope, notice: Notice) -> None:
        self._scope = scope
        self._notice = notice
        self.session: RunSession | None = None
        self.count = 0

    async def listen(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for signum in received:
                self.count += 1
                name = signal.Signals(signum).name
                if self.session is None:
                    self._notice(f"{name}: stopping before anything was sent")
                    self._scope.cancel()
                    return
                if self.count == 1:
                    self._notice(
                        f"{name}: stopping; requests in flight get a short grace to finish. "
                        "Press Ctrl-C again to stop at once."
                    )
                    self.session.request_stop()
                else:
                    self.session.cancel_now()


async def _wired(
    plan: _Plan,
    *,
    keys: tuple[str, str],
    force: bool,
    quiet: bool,
    transport: httpx.AsyncBaseTransport | None,
    notice: Notice,
    control: _Control,
) -> RunOutcome:
    from .execution.executors import Endpoints
    from .execution.session import RunSession
    from .providers import make_batch_provider, make_provider
    from .store import Store

    job = plan.job
    check = job.limits.budget_usd is not None and not force and plan.resumed is None
    found = await anyio.to_thread.run_sync(
        lambda: _survey(job, plan.source, check=check), abandon_on_cancel=True
    )
    _warn_prices(job, notice)
    api_key, fallback_key = keys
    async with AsyncExitStack() as stack:
        base_url = job.resolved_base_url()
        fallback_url = job.fallback_base_url()
        if plan.fake:
            from .fake import FakeConfig, FakeProvider, running_fake_provider

            if isinstance(plan.fake, FakeProvider):
                fake = plan.fake  # one the caller runs (a test that reads its accounting)
            else:
                config = plan.fake if isinstance(plan.fake, FakeConfig) else FakeConfig()
                fake = await stack.enter_async_context(running_fake_provider(config))
            base_url = fake.base_url(job.request.provider)
            if job.request.fallback is not None:
                fallback_url = fake.base_url(job.request.fallback.provider)
        store = stack.enter_context(Store(job.output.db))
        provider = make_provider(job, api_key=api_key, base_url=base_url, transport=transport)
        stack.push_async_callback(provider.aclose)
        batch_provider = make_batch_provider(
            job, api_key=api_key, base_url=base_url, transport=transport
        )
        stack.push_async_callback(batch_provider.aclose)
        fallback_provider = None
        if fallback_url is not None:
            fallback_provider = make_provider(
                job, api_key=fallback_key, base_url=fallback_url, fallback=True, transport=transport
            )
            stack.push_async_callback(fallback_provider.aclose)
        session = RunSession(
            job,
            store=store,
            endpoints=Endpoints(
                base_url=base_url,
                online=provider,
                batch=batch_provider,
                fallback=fallback_provider,
                fallback_url=fallback_url,
            ),
            source=plan.source,
            inputs=found.fingerprints,
            run_id=plan.run_id,
            resumed=plan.resumed,
            only=plan.only,
            wait=plan.wait,
            fake=bool(plan.fake),
            engine=_engine(job, fake=bool(plan.fake), notice=notice),
            remember_keys=not plan.source.reiterable,
            notice=notice,
        )
        control.session = session
        _last_run["resume"] = session.resume_command
        console = _console(quiet)
        if console is not None:
            from rich.markup import escape

            verb = "resuming" if plan.resumed is not None else "run"
            console.print(
                f"{verb} [bold]{session.run_id}[/] · job {escape(job.name)} · "
                f"{job.request.provider} {escape(job.request.model)} → {base_url}\n"
                f"manifest: {session.manifest_path}",
                highlight=False,
            )
        try:
            async with anyio.create_task_group() as tg:
                if console is not None and console.is_terminal:
                    from .reporting.progress import show_progress

                    tg.start_soon(
                        lambda: show_progress(session.stats, total=found.rows, console=console)
                    )
                outcome = await session.run()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The session recorded the run as failed; the caller gets one error, not a group.
            error = first_pipeline_error(group)
            if error is None:
                raise
            raise error from group
    return outcome


def _survey(job: Job, source: RowSource, *, check: bool) -> Any:
    """The input's survey; with ``check``, the budget's too: a run whose worst case is over
    ``budget_usd`` is refused (ConfigError) before anything is opened."""
    from .estimates import survey
    from .job.pricing import format_usd, price_for
    from .plan import check_fields

    budget = job.limits.budget_usd
    if budget is not None and price_for(job, batch=job.request.mode == "batch") is None:
        raise ConfigError(
            f"budget_usd is set but no price is known for {job.request.provider} model "
            f"{job.request.model!r}, so the budget cannot be kept; add a [pricing] table "
            "(input_mtok, output_mtok) or remove budget_usd",
            path=job.path,
            key="limits.budget_usd",
        )
    check_fields(job, source)  # a template field no row has: a job error, nothing recorded
    found = survey(job, source, estimate=check)
    worst = found.estimate.cost_worst if found.estimate is not None else None
    if budget is not None and worst is not None and worst > budget:
        raise ConfigError(
            f"the worst case for the rows still to send is about {format_usd(worst)} (every "
            f"answer at max_tokens; see 'pipeline estimate'), over budget_usd "
            f"{format_usd(budget)}; raise the budget, or pass --force to run until the "
            "budget is spent",
            path=job.path,
            key="limits.budget_usd",
        )
    if check and found.estimate is None:
        log.warning("budget_not_checked", reason="rows that can be read once")
    return found


def _warn_prices(job: Job, notice: Notice) -> None:
    from .job.pricing import fallback_price_for, price_for

    if price_for(job) is None:
        notice(
            f"warning: no price known for {job.request.provider} model {job.request.model!r}: "
            f"cost_usd will be NULL; add a [pricing] table to {job.path} "
            "(input_mtok, output_mtok: US dollars per million tokens)"
        )
    fallback = job.request.fallback
    if fallback is not None and fallback_price_for(job) is None:
        notice(
            f"warning: no price known for the fallback, {fallback.provider} model "
            f"{fallback.model!r}: cost_usd of the rows it answers will be NULL"
        )


def _engine(job: Job, *, fake: bool, notice: Notice) -> Any:
    """The Ray engine for a job with ``[cluster] engine = "ray"`` that sends online; None
    otherwise (batch mode is I/O and runs from this process)."""
    cluster = job.cluster
    if cluster.engine != "ray":
        return None
    if job.request.mode == "batch":
        notice("batch mode runs from this process: [cluster] applies to online runs")
        return None
    from .execution.cluster import RayEngine

    notice(
        f"engine ray: {cluster.workers} workers"
        + (f" on the Ray cluster at {cluster.address}" if cluster.address else " on a local Ray")
    )
    return RayEngine(cluster, fake_key=FAKE_KEY if fake else None, notice=notice)


def _notice_printer(quiet: bool) -> Notice:
    def notice(message: str) -> None:
        log.info("notice", message=message)
        if not quiet:
            print(message, file=sys.stderr)

    return notice


def _console(quiet: bool) -> Any:
    if quiet:
        return None
    from rich.console import Console

    return Console(stderr=True)


def _have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        return False
    return True


# -- estimates --------------------------------------------------------------------------------


def estimate(
    job: JobLike,
    *,
    rows: Any = None,
    db: str | os.PathLike[str] | None = None,
    input: str | None = None,
    mode: str | None = None,
    latency_s: float | None = None,
) -> Estimate:
    """What a run of ``job`` would send and cost, before anything is sent (``Estimate``: rows
    to send, tokens, cost online and batch, expected and worst case, and time at the job's
    limits). ``rows``: rows from Python instead of the job's input."""
    from .estimates import estimate_job

    chosen = resolve_job(job).with_overrides(
        input_path=input, db=None if db is None else os.fspath(db), mode=mode
    )
    if latency_s is not None and not latency_s > 0:
        raise ConfigError(f"latency_s must be greater than 0, got {latency_s}")
    return estimate_job(chosen, latency_s=latency_s, source=row_source(chosen.input, rows))


async def aestimate(
    job: JobLike,
    *,
    rows: Any = None,
    db: str | os.PathLike[str] | None = None,
    input: str | None = None,
    mode: str | None = None,
    latency_s: float | None = None,
) -> Estimate:
    """``pipeline.estimate`` for async code (it reads the input in a worker thread)."""
    return await anyio.to_thread.run_sync(
        lambda: estimate(job, rows=rows, db=db, input=input, mode=mode, latency_s=latency_s)
    )
