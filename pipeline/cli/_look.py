"""The commands that look at runs rather than make them: status, runs, batches, report, estimate,
export; and cancel and fake-provider, which talk to a provider but run no job."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import anyio

from .. import _api
from ..errors import ConfigError, StoreError
from ..estimates import render_estimate
from ..execution.manifest import (
    Manifest,
    find_manifest,
    latest_manifest,
    process_alive,
    read_manifest,
    resume_command,
    runs_dir,
)
from ..logs import register_secret
from ..providers import api_key_from_env, make_batch_provider
from ..records import RunState
from ..reporting.text import format_usd, render_report
from ..store import Store
from ._out import age, stdout

__all__ = [
    "batches",
    "cancel",
    "estimate",
    "export",
    "fake_provider",
    "report",
    "runs",
    "status",
]


def status(args: argparse.Namespace) -> int:
    if args.run:
        path = find_manifest(args.run, args.db)
    else:
        found = latest_manifest(args.db)
        if found is None:
            raise ConfigError(f"no runs next to {args.db} yet; start one with 'pipeline run'")
        path = found
    m = read_manifest(path)
    gone = m.state is RunState.RUNNING and not process_alive(m.pid)
    if args.json:
        _print_json({**_status_doc(m), "process_gone": gone})
        return 0
    out = stdout()
    state = m.status
    if gone:
        state = f"running, but process {m.pid} is gone (killed or crashed)"
    counts = m.counts
    elapsed = max(m.updated_at - m.started_at, 1e-9)
    out.print(
        f"run {m.run_id} · job {m.job.name} · {m.provider} {m.model}",
        highlight=False,
        markup=False,
    )
    out.print(f"state: {state}", highlight=False, markup=False)
    out.print(
        f"rows: {counts.get('ok', 0):,} ok, {counts.get('failed', 0):,} failed, "
        f"{counts.get('input_error', 0):,} bad input, {counts.get('skipped', 0):,} already done "
        f"· {m.rows_done() / elapsed:,.0f} rows/s · {counts.get('rate_limited', 0):,} × 429",
        highlight=False,
    )
    budget = m.budget_usd
    out.print(
        f"cost so far: {format_usd(m.cost_usd)}"
        + (f" of budget {format_usd(budget)}" if budget else "")
        + f" · updated {time.time() - m.updated_at:,.0f}s ago",
        highlight=False,
    )
    if m.state is not RunState.COMPLETED:
        out.print(f"to finish it: {m.resume_command}", highlight=False, markup=False)
    return 0


def _status_doc(m: Manifest) -> dict[str, object]:
    """A run's manifest, as ``status --json`` and ``runs --json`` print it."""
    return {
        "run_id": m.run_id,
        "job": m.job.name,
        "provider": m.provider,
        "model": m.model,
        "mode": m.mode,
        "state": m.state.value,
        "reason": m.reason,
        "status": m.status,
        "pid": m.pid,
        "started_at": m.started_at,
        "updated_at": m.updated_at,
        "rows": dict(m.counts),
        "tokens": dict(m.tokens),
        "cost_usd": m.cost_usd,
        "budget_usd": m.budget_usd,
        "db": m.db,
        "manifest": str(manifest_file(m)),
        "resume_command": None if m.state is RunState.COMPLETED else m.resume_command,
    }


def manifest_file(m: Manifest) -> Path:
    return runs_dir(m.db) / f"{m.run_id}.manifest.json"


def _print_json(doc: object) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    sys.stdout.flush()


def runs(args: argparse.Namespace) -> int:
    out = stdout()
    try:
        with Store(args.db, read_only=True) as store:
            rows = store.runs.list(limit=args.limit)
    except StoreError as exc:
        # A run is writing the database: the manifests tell the same story.
        print(f"note: {exc}; showing the run manifests instead", file=sys.stderr)
        rows = []
        for path in sorted(runs_dir(args.db).glob("*.manifest.json"), reverse=True)[: args.limit]:
            m = read_manifest(path)
            c = m.counts
            rows.append(
                {
                    "run_id": m.run_id,
                    "job": m.job.name,
                    "model": m.model,
                    "state": m.status,
                    "started_at": m.started_at,
                    "rows_ok": c.get("ok", 0),
                    "rows_failed": c.get("failed", 0) + c.get("input_error", 0),
                    "cost_usd": m.cost_usd,
                }
            )
    if args.json:
        _print_json({"runs": [_run_doc(r) for r in rows]})
        return 0
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


def _run_doc(row: dict[str, object]) -> dict[str, object]:
    """One row of ``pipeline runs`` as plain JSON data."""
    keys = ("run_id", "job", "model", "state", "started_at", "rows_ok", "rows_failed", "cost_usd")
    return {k: row.get(k) for k in keys}


def batches(args: argparse.Namespace) -> int:
    if not Path(args.db).exists():
        raise ConfigError(f"no results database at {args.db}; run a job first or pass --db")
    with Store(args.db, read_only=True) as store:
        rows = store.batches.list(run_id=args.run_id)
    out = stdout()
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
        waited = "–" if r["submitted_at"] is None else age(now - r["submitted_at"])
        table.add_row(
            r["run_id"],
            str(r["part"]),
            r["provider"],
            r["batch_id"] or "(not submitted)",
            r["status"],
            f"{r['requests']:,}",
            "–" if r["succeeded"] is None else f"{r['succeeded']:,}",
            "–" if r["errored"] is None else f"{r['errored']:,}",
            waited,
            "yes" if r["collected"] else "no",
        )
    out.print(table)
    return 0


def cancel(args: argparse.Namespace) -> int:
    manifest = read_manifest(find_manifest(args.run, args.db))
    if manifest.fake and not args.base_url:
        raise ConfigError(
            f"run {manifest.run_id} used the in-process fake provider, which stopped with "
            "it; there is nothing to cancel"
        )
    job = _api.job_of_run(args.run, db=args.db, base_url=args.base_url)
    api_key = api_key_from_env(job.request.provider)
    register_secret(api_key)
    base_url = args.base_url or manifest.base_url or job.resolved_base_url()

    async def go() -> list[tuple[str, str]]:
        provider = make_batch_provider(job, api_key=api_key, base_url=base_url)
        done = []
        try:
            with Store(job.output.db) as store:
                for part in store.batches.parts(manifest.run_id):
                    if part["batch_id"] and not part["collected"]:
                        state = await provider.cancel(part["batch_id"])
                        store.batches.update(manifest.run_id, part["part"], status=state.status)
                        done.append((part["batch_id"], state.status))
        finally:
            await provider.aclose()
        return done

    cancelled = anyio.run(go)
    for batch_id, status in cancelled:
        print(f"{batch_id}: {status}")
    if not cancelled:
        print(f"run {manifest.run_id} has no open batches")
    else:
        print(f"collect what finished with: {resume_command(manifest.run_id, manifest.db)}")
    return 0


def report(args: argparse.Namespace) -> int:
    if not Path(args.db).exists():
        raise ConfigError(f"no results database at {args.db}; run a job first or pass --db")
    if args.html:
        from ..reporting.html import collect_html_report, render_html

        with Store(args.db, read_only=True) as store:
            data = collect_html_report(store, job=args.job, run_id=args.run_id, db_path=args.db)
        try:
            Path(args.html).write_text(render_html(data), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {args.html}: {exc.strerror or exc}") from exc
        print(args.html)
        return 0
    with Store(args.db, read_only=True) as store:
        render_report(store.queries.report(job=args.job, run_id=args.run_id), stdout())
    return 0


def estimate(args: argparse.Namespace) -> int:
    if args.latency_s is not None and not args.latency_s > 0:
        raise ConfigError(f"--latency-s must be greater than 0, got {args.latency_s}")
    est = _api.estimate(
        args.job, input=args.input, db=args.db, mode=args.mode, latency_s=args.latency_s
    )
    if args.json:
        import orjson

        sys.stdout.write(orjson.dumps(est.as_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        render_estimate(est, stdout())
    return 0


def export(args: argparse.Namespace) -> int:
    if not Path(args.db).exists():
        raise ConfigError(f"no results database at {args.db}; run a job first or pass --db")
    from ..reporting.export import export_run

    out = args.out or str(runs_dir(args.db) / f"{args.run}.results.{args.format}")
    with Store(args.db, read_only=True) as store:
        if store.runs.get(args.run) is None:
            raise ConfigError(f"no run {args.run!r} in {args.db}; 'pipeline runs' lists them")
        count = export_run(store, args.run, out, args.format)
    print(f"wrote {count:,} rows of run {args.run} to {out}")
    return 0


def fake_provider(args: argparse.Namespace) -> int:
    from ..fake import FakeConfig, serve_forever

    knobs = {f.name: getattr(args, f.name) for f in dataclasses.fields(FakeConfig)}
    serve_forever(FakeConfig(**knobs), host="127.0.0.1", port=args.port)
    return 0
