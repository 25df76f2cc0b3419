"""Benchmarks: whole jobs against the fake provider on loopback, figures and ratios in one run.

    python bench/run.py                 # every scenario (about 35 minutes on 2 cores)
    python bench/run.py --quick         # smaller inputs, for a quick look
    python bench/run.py --only speed    # one of: speed, latency, ratelimit, memory, kill, ray

What is measured is what users run: ``pipeline run JOB`` as a whole process (its output to a
pipe, as under cron), timed from outside with ``os.wait4`` (wall, user+sys CPU, peak RSS), with
the fake provider in another process. The speed scenario also runs the same job in-process
through the library (``pipeline.arun``, in a child process of its own), on httpx's default
transport, and as bare aiohttp POSTs of the same bodies (the HTTP client's floor), for the ratios.

Scenarios (targets from the project's issue tracker):
  speed     zero latency, 64 in flight, 20,000 rows: rows/s and CPU per row of the whole
            `pipeline run` process, next to the library in-process, httpx's default transport
            and bare aiohttp POSTs of the same bodies (the floor): CPU a row ≤ 1.3× the floor's,
            rows/s ≥ 0.8× the floor's
  latency   200 ms latency, 256 in flight: rows/s against the ideal 256 / 0.2 s = 1,280
  ratelimit provider limited to 500 requests/s (1 s burst); the job configured at that limit
            and at twice it: achieved rate and the share of requests answered 429
  memory    peak RSS of `pipeline run` at 200,000 and 1,000,000 rows, online and in batch mode
            (≤ 130 MB, flat in the number of rows), its make-up at the peak
            (/proc/PID/smaps_rollup), and a rerun of the finished job
  kill      kill -9 three times during a run at 64 in flight, then `pipeline run` again:
            rows ok once each, and answers paid twice against the requests in flight
  ray       `pipeline run --engine ray` (a local Ray started by the run) next to the same job
            run locally: at the provider's limit (500/s, 2 workers), at 200 ms latency (2
            workers x 256 in flight against one process at 256) and at zero latency (1 worker:
            the engine's overhead); and the driver's DuckDB write rate (its ceiling)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PIPELINE = str(Path(PY).with_name("pipeline"))
KEY = "bench-key-not-secret"


# -- the in-process child: pipeline.arun, measured from inside ----------------------------------


def child(args: argparse.Namespace) -> None:
    import anyio
    import httpx

    import pipeline
    from pipeline.job import load_job
    from pipeline.providers import make_transport

    job = load_job(args.job)
    if args.transport == "floor":
        import orjson

        rows = [orjson.loads(line) for line in Path(job.input.path).read_bytes().splitlines()]
        bodies = [
            orjson.dumps(
                {
                    "model": job.request.model,
                    "messages": [
                        {"role": "system", "content": job.request.system},
                        {"role": "user", "content": job.request.prompt.format(**row)},
                    ],
                    "max_tokens": job.request.max_tokens,
                }
            )
            for row in rows
        ]
        result = anyio.run(
            _floor,
            job,
            args.base_url,
            bodies,
            backend="asyncio",
            backend_options={"use_uvloop": True},
        )
        print(json.dumps(result))
        return

    async def go() -> dict[str, Any]:
        transport: httpx.AsyncBaseTransport | None = None  # aiohttp itself, as jobs run
        if args.transport == "httpx":
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=job.limits.concurrency)
            )
        elif args.transport == "httpx-aiohttp":
            transport = make_transport(max_connections=job.limits.concurrency)
        cpu0 = _cpu()
        t0 = time.perf_counter()
        outcome = await pipeline.arun(job, base_url=args.base_url, api_key=KEY, transport=transport)
        wall = time.perf_counter() - t0
        cpu = _cpu() - cpu0
        s = outcome.stats
        return {"rows_ok": s.rows_ok, "rows_done": s.rows_done, "wall_s": wall, "cpu_s": cpu}

    result = anyio.run(go, backend="asyncio", backend_options={"use_uvloop": True})
    print(json.dumps(result))


async def _floor(job: Any, base_url: str, bodies: list[bytes]) -> dict[str, Any]:
    """The HTTP client's own floor: the job's request bodies POSTed on aiohttp alone by as many
    tasks as the job has in flight, each answer read and parsed, nothing else (no planning,
    budget, journal or DuckDB)."""
    import aiohttp
    import anyio
    import orjson

    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = base_url + "/chat/completions"
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=job.limits.concurrency)
    ) as session:
        todo = iter(bodies)

        async def worker() -> None:  # as the pipeline's own: a fixed set of tasks
            for body in todo:
                async with session.post(url, data=body, headers=headers) as response:
                    orjson.loads(await response.read())

        cpu0 = _cpu()
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(job.limits.concurrency):
                tg.start_soon(worker)
        wall = time.perf_counter() - t0
        cpu = _cpu() - cpu0
    n = len(bodies)
    return {"rows_ok": n, "rows_done": n, "wall_s": wall, "cpu_s": cpu}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- the parent: set up, run processes, print --------------------------------------------------


@dataclass
class Measured:
    """One whole process, measured from outside."""

    exit_code: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    output: str
    peak: dict[str, float] = field(default_factory=dict)  # smaps_rollup at the peak, MB


def measure(cmd: list[str], *, env: dict[str, str] | None = None, sample: bool = False) -> Measured:
    """Run ``cmd`` to the end; its wall time, CPU and peak RSS from ``wait4`` (and, with
    ``sample``, the make-up of its memory at its largest, from /proc/PID/smaps_rollup)."""
    with tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
        )
        peak: dict[str, float] = {}
        sampler = None
        if sample:
            sampler = threading.Thread(target=_sample, args=(proc.pid, peak), daemon=True)
            sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if sampler is not None:
            sampler.join(timeout=2)
        out.seek(0)
        output = out.read().decode(errors="replace")
    return Measured(
        exit_code=proc.returncode,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        output=output,
        peak=peak,
    )


def _sample(pid: int, peak: dict[str, float]) -> None:
    """Read /proc/PID/smaps_rollup every 0.2 s; keep the reading with the largest Rss."""
    path = Path(f"/proc/{pid}/smaps_rollup")
    while True:
        try:
            text = path.read_text()
        except OSError:
            return
        fields = {}
        for line in text.splitlines()[1:]:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[-1] == "kB":
                fields[name] = int(parts[0]) / 1024
        if fields.get("Rss", 0) > peak.get("Rss", 0):
            peak.clear()
            peak.update(fields)
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def fake_provider(**knobs: Any) -> Iterator[str]:
    port = free_port()
    cmd = [PIPELINE, "fake-provider", "--port", str(port)]
    for key, value in knobs.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                urllib.request.urlopen(base + "/_fake/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("fake provider did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def accounting(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/_fake/accounting", timeout=5) as r:
        return dict(json.loads(r.read()))


def reset(base: str) -> None:
    req = urllib.request.Request(base + "/_fake/reset", method="POST", data=b"")
    urllib.request.urlopen(req, timeout=5).read()


def make_input(rows: int, tmp: Path) -> Path:
    path = tmp / f"reviews-{rows}.jsonl"
    if not path.exists():
        subprocess.run(
            [PY, str(ROOT / "data" / "generate.py"), "--rows", str(rows), "--out", str(path)],
            check=True,
        )
    return path


def write_job(
    tmp: Path,
    inp: Path,
    db: Path,
    *,
    concurrency: int,
    rpm: float | None = None,
    mode: str = "online",
) -> Path:
    path = tmp / f"job-{time.monotonic_ns()}.toml"
    limit = f"requests_per_minute = {rpm}\n" if rpm else ""
    # Batch mode: parts of 50,000 requests (as the issue measured), polled every second.
    batch = "[batch]\npoll_interval_s = 1\nmax_requests = 50000\n" if mode == "batch" else ""
    path.write_text(
        f"""name = "bench"
[input]
path = "{inp}"
id = "id"
[request]
provider = "openai"
mode = "{mode}"
model = "gpt-4o-mini"
system = "You are a sentiment classifier. Reply with one word: positive, negative or neutral."
prompt = "Review: {{text}}"
max_tokens = 5
[limits]
concurrency = {concurrency}
max_attempts = 10
timeout_s = 30
{limit}[output]
db = "{db}"
{batch}"""
    )
    return path


def cli_run(base: str, job: Path, *, sample: bool = False, extra: tuple[str, ...] = ()) -> Measured:
    """``pipeline run JOB`` as a user runs it (output to a pipe: no progress bar)."""
    m = measure(
        [PIPELINE, "run", str(job), "--base-url", base + "/v1", *extra],
        env={"OPENAI_API_KEY": KEY},
        sample=sample,
    )
    if m.exit_code not in (0, 3):
        raise RuntimeError(f"pipeline run exited {m.exit_code}:\n{m.output[-2000:]}")
    return m


def run_seconds(m: Measured) -> float:
    """The run's own clock, from its summary line ("20,000 in 6.1s"): the process's wall time
    less start-up (imports, opening the database) and the report."""
    match = re.search(r" in ([0-9.]+)s \(", m.output)
    return float(match.group(1)) if match else m.wall_s


def one_row(db: Path, sql: str) -> tuple[Any, ...]:
    """The one row ``sql`` answers in the database, read after the process ended."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(sql).fetchone()
    finally:
        con.close()
    assert row is not None
    return tuple(row)


def rows_ok(db: Path) -> tuple[int, int]:
    """(ok rows, distinct ok request keys) in the database."""
    ok, keys = one_row(
        db, "SELECT count(*), count(DISTINCT request_key) FROM results WHERE status = 'ok'"
    )
    return int(ok), int(keys)


def fresh_db(tmp: Path, name: str) -> Path:
    db = tmp / f"{name}-{time.monotonic_ns()}.duckdb"
    return db


def row(name: str, figure: str, target: str = "", verdict: str = "") -> None:
    print(f"  {name:<52} {figure:>24}   {target:<14} {verdict}", flush=True)


def check(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def scenario_speed(tmp: Path, rows: int) -> None:
    print(f"\nspeed: zero latency, 64 in flight, {rows:,} rows")
    inp = make_input(rows, tmp)
    with fake_provider() as base:
        cli = []
        for _ in range(3):
            db = fresh_db(tmp, "speed")
            m = cli_run(base, write_job(tmp, inp, db, concurrency=64))
            ok, _ = rows_ok(db)
            cli.append((ok / m.wall_s, m.cpu_s / rows * 1e6))
        lib = []
        for transport in ("aiohttp", "aiohttp", "aiohttp", "httpx", "floor", "floor", "floor"):
            db = fresh_db(tmp, "speed")
            job = write_job(tmp, inp, db, concurrency=64)
            out = subprocess.run(
                [
                    PY,
                    __file__,
                    "--child",
                    "--job",
                    str(job),
                    "--base-url",
                    base + "/v1",
                    "--transport",
                    transport,
                ],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            lib.append((transport, r["rows_ok"] / r["wall_s"], r["cpu_s"] / r["rows_done"] * 1e6))
    cli_rps = sorted(r for r, _ in cli)[1]
    cli_cpu = sorted(c for _, c in cli)[1]
    lib_fast = [x for x in lib if x[0] == "aiohttp"]
    lib_rps = sorted(r for _, r, _ in lib_fast)[1]
    lib_cpu = sorted(c for _, _, c in lib_fast)[1]
    _, slow_rps, slow_cpu = next(x for x in lib if x[0] == "httpx")
    floor = [x for x in lib if x[0] == "floor"]
    floor_rps = sorted(r for _, r, _ in floor)[1]
    floor_cpu = sorted(c for _, _, c in floor)[1]
    row("pipeline run (whole process): rows/s, median of 3", f"{cli_rps:,.0f}")
    row("pipeline run (whole process): CPU per row", f"{cli_cpu:,.0f} µs")
    row("library in-process (pipeline.arun): rows/s, median of 3", f"{lib_rps:,.0f}")
    row("library in-process (pipeline.arun): CPU per row (run only)", f"{lib_cpu:,.0f} µs")
    row("ratio whole process / in-process: rows/s", f"{cli_rps / lib_rps:.2f}×")
    row("library on httpx's default transport: rows/s", f"{slow_rps:,.0f}")
    row("ratio aiohttp / httpx default transport: rows/s", f"{lib_rps / slow_rps:.2f}×")
    row("ratio httpx default / aiohttp: CPU per row", f"{slow_cpu / lib_cpu:.2f}×")
    row("aiohttp alone, the same bodies (no pipeline): rows/s", f"{floor_rps:,.0f}")
    row("aiohttp alone: CPU per request (the client's floor)", f"{floor_cpu:,.0f} µs")
    row("pipeline run CPU per row over aiohttp alone", f"+{cli_cpu - floor_cpu:,.0f} µs")
    cpu_ratio, rps_ratio = cli_cpu / floor_cpu, cli_rps / floor_rps
    row(
        "ratio pipeline run / the floor: CPU per row",
        f"{cpu_ratio:.2f}×",
        "≤ 1.3×",
        check(cpu_ratio <= 1.3),
    )
    row(
        "ratio pipeline run / the floor: rows/s",
        f"{rps_ratio:.2f}×",
        "≥ 0.8×",
        check(rps_ratio >= 0.8),
    )


def scenario_latency(tmp: Path, rows: int) -> None:
    print(f"\nlatency: 200 ms per request, 256 in flight, {rows:,} rows")
    inp = make_input(rows, tmp)
    with fake_provider(latency_ms=200) as base:
        db = fresh_db(tmp, "latency")
        m = cli_run(base, write_job(tmp, inp, db, concurrency=256))
    ok, _ = rows_ok(db)
    rps = ok / m.wall_s
    ideal = 256 / 0.2
    row("pipeline run: rows/s", f"{rps:,.0f}")
    row("share of the ideal 1,280 rows/s", f"{rps / ideal:.1%}", "≥ 90%", check(rps / ideal >= 0.9))
    row("CPU per row", f"{m.cpu_s / rows * 1e6:,.0f} µs")


def scenario_ratelimit(tmp: Path, rows: int) -> None:
    print(
        f"\nratelimit: the provider allows 500 requests/s (1 s burst), {rows:,} rows, 64 in flight"
    )
    inp = make_input(rows, tmp)
    with fake_provider(requests_per_second=500, burst_s=1.0) as base:
        for rpm, label, share_target, limited_target in (
            (30_000, "job at the limit (30,000/min)", 0.98, 0.005),
            (60_000, "job at twice the limit (60,000/min)", 0.90, 0.01),
        ):
            reset(base)
            db = fresh_db(tmp, "ratelimit")
            m = cli_run(base, write_job(tmp, inp, db, concurrency=64, rpm=rpm))
            acc = accounting(base)
            ok, _ = rows_ok(db)
            total = int(acc["requests"])
            limited = int(acc["by_status"].get("429", 0))
            achieved = ok / run_seconds(m)
            print(f"  {label}")
            row("  requests/s: rows ok / the run's own clock", f"{achieved:,.0f}")
            row("  requests/s: rows ok / the process's wall time", f"{ok / m.wall_s:,.0f}")
            row(
                "  share of the provider's limit",
                f"{achieved / 500:.1%}",
                f"≥ {share_target:.0%}",
                check(achieved / 500 >= share_target),
            )
            row(
                "  requests answered 429",
                f"{limited:,} of {total:,} ({limited / total:.2%})",
                f"≤ {limited_target:.1%}",
                check(limited / total <= limited_target),
            )


def scenario_memory(tmp: Path, sizes: list[int]) -> None:
    print("\nmemory: peak RSS of `pipeline run` by input size (zero latency, 64 in flight; batch")
    print("mode in parts of 50,000), then the same job again over its finished database")
    with fake_provider(batch_validating_s=0.1, batch_in_progress_s=0.2) as base:
        for mode in ("online", "batch"):
            peaks = []
            for n in sizes:
                inp = make_input(n, tmp)
                db = tmp / f"memory-{mode}-{n}.duckdb"
                job = write_job(tmp, inp, db, concurrency=64, mode=mode)
                m = cli_run(base, job, sample=True)
                peaks.append(m.peak_rss_mb)
                row(
                    f"{mode}, {n:,} rows: peak RSS",
                    f"{m.peak_rss_mb:,.0f} MB",
                    "≤ 130 MB",
                    check(m.peak_rss_mb <= 130),
                )
                if m.peak:
                    anon = m.peak.get("Anonymous", 0)
                    row(
                        f"{mode}, {n:,} rows: at the peak, anonymous / file-backed",
                        f"{anon:,.0f} / {m.peak['Rss'] - anon:,.0f} MB",
                    )
                ok, _ = rows_ok(db)
                row(f"{mode}, {n:,} rows: rows/s", f"{ok / m.wall_s:,.0f}")
                if mode == "online":
                    again = cli_run(base, job)
                    sent = "0 sent" if "requests: 0 sent" in again.output else "some sent"
                    row(
                        f"{mode}, {n:,} rows: rerun of the finished job",
                        f"{again.wall_s:,.1f} s, {sent}",
                        "≤ 10 s",
                        check(again.wall_s <= 10 and sent == "0 sent"),
                    )
                db.unlink()
            row(
                f"{mode}: ratio peak RSS {sizes[-1]:,} / {sizes[0]:,} rows",
                f"{peaks[-1] / peaks[0]:.2f}×",
                "≈ 1 (flat)",
            )
    for n in sizes:
        make_input(n, tmp).unlink()


def scenario_kill(tmp: Path, rows: int) -> None:
    print(
        f"\nkill: kill -9 three times during a run at 64 in flight ({rows:,} rows, 20 ms "
        "latency), then `pipeline run` again"
    )
    inp = make_input(rows, tmp)
    with fake_provider(latency_ms=20) as base:
        db = fresh_db(tmp, "kill")
        job = write_job(tmp, inp, db, concurrency=64)
        env = {**os.environ, "OPENAI_API_KEY": KEY}
        for _ in range(3):
            target = accounting(base)["paid_total"] + rows // 5
            proc = subprocess.Popen(
                [PIPELINE, "run", str(job), "--base-url", base + "/v1", "--quiet"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            while proc.poll() is None and accounting(base)["paid_total"] < target:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        final = cli_run(base, job)
        acc = accounting(base)
    ok, distinct = rows_ok(db)
    twice = int(acc["duplicates_paid"])
    row(
        "rows ok, and distinct request keys among them",
        f"{ok:,} / {distinct:,} of {rows:,}",
        "each once",
        check(ok == distinct == rows),
    )
    row("answers paid twice, in all (3 kills)", f"{twice:,}", "≤ 3 × 64", check(twice <= 192))
    row("answers paid twice per kill", f"{twice / 3:.1f}", "≤ 64")
    row("the last run's exit code", str(final.exit_code), "0", check(final.exit_code == 0))


def sending_rate(db: Path) -> float:
    """Rows per second between the first and the last result: the rate while sending, without
    the process's start (a local Ray's start) and end."""
    rows, seconds = one_row(
        db, "SELECT count(*), epoch(max(finished_at)) - epoch(min(finished_at)) FROM results"
    )
    return float(rows) / max(float(seconds), 1e-9)


def scenario_ray(tmp: Path, rows: int) -> None:
    print(
        f"\nray: `pipeline run --engine ray` (a local Ray started by each run) next to the same "
        f"job on one process, {rows:,} rows"
    )
    inp = make_input(rows, tmp)
    ray_args = ("--engine", "ray", "--workers")

    print("  at the provider's limit: 500 requests/s (1 s burst), the job configured at it")
    with fake_provider(requests_per_second=500, burst_s=1.0) as base:
        for label, extra in (("local, 1 process", ()), ("ray, 2 workers", (*ray_args, "2"))):
            reset(base)
            db = fresh_db(tmp, "ray-limit")
            m = cli_run(base, write_job(tmp, inp, db, concurrency=64, rpm=30_000), extra=extra)
            acc = accounting(base)
            ok, _ = rows_ok(db)
            total, limited = int(acc["requests"]), int(acc["by_status"].get("429", 0))
            window = sending_rate(db)
            row(f"{label}: rows/s, whole process", f"{ok / m.wall_s:,.0f}")
            row(
                f"{label}: rows/s while sending (share of 500)",
                f"{window:,.0f} ({window / 500:.1%})",
                "≥ 98%",
                check(window / 500 >= 0.98),
            )
            row(
                f"{label}: requests answered 429",
                f"{limited:,} of {total:,} ({limited / total:.2%})",
                "≤ 0.5%",
                check(limited / total <= 0.005),
            )

    print("  200 ms latency: one process at 256 in flight, 2 Ray workers at 256 each")
    with fake_provider(latency_ms=200) as base:
        db = fresh_db(tmp, "ray-latency")
        local = cli_run(base, write_job(tmp, inp, db, concurrency=256))
        local_rps, local_window = rows_ok(db)[0] / local.wall_s, sending_rate(db)
        db = fresh_db(tmp, "ray-latency")
        two = cli_run(base, write_job(tmp, inp, db, concurrency=512), extra=(*ray_args, "2"))
        two_rps, two_window = rows_ok(db)[0] / two.wall_s, sending_rate(db)
    row(
        "local, 256 in flight: rows/s, whole process (while sending)",
        f"{local_rps:,.0f} ({local_window:,.0f})",
    )
    row(
        "ray, 2 × 256 in flight: rows/s, whole process (while sending)",
        f"{two_rps:,.0f} ({two_window:,.0f})",
    )
    row(
        "ratio ray 2 workers / local: rows/s, whole process",
        f"{two_rps / local_rps:.2f}×",
        "≥ 1.5×",
        check(two_rps / local_rps >= 1.5),
    )
    row("ratio ray 2 workers / local: rows/s while sending", f"{two_window / local_window:.2f}×")

    print("  zero latency, 64 in flight: the engine's overhead, 1 Ray worker against one process")
    with fake_provider() as base:
        db = fresh_db(tmp, "ray-overhead")
        local = cli_run(base, write_job(tmp, inp, db, concurrency=64))
        local_rps, local_window = rows_ok(db)[0] / local.wall_s, sending_rate(db)
        db = fresh_db(tmp, "ray-overhead")
        one = cli_run(base, write_job(tmp, inp, db, concurrency=64), extra=(*ray_args, "1"))
        one_rps, one_window = rows_ok(db)[0] / one.wall_s, sending_rate(db)
    row("local: rows/s, whole process (while sending)", f"{local_rps:,.0f} ({local_window:,.0f})")
    row(
        "ray, 1 worker: rows/s, whole process (while sending)",
        f"{one_rps:,.0f} ({one_window:,.0f})",
    )
    row("ratio ray 1 worker / local: rows/s, whole process", f"{one_rps / local_rps:.2f}×")
    row("ratio ray 1 worker / local: rows/s while sending", f"{one_window / local_window:.2f}×")
    row("ray, 1 worker: wall time over local", f"+{one.wall_s - local.wall_s:.1f} s")

    print("  the driver's ceiling: DuckDB writes of results, 256 a transaction, one writer")
    write_rate = duckdb_write_rate(tmp, 200_000)
    row("rows/s committed to DuckDB (results of 256 per batch)", f"{write_rate:,.0f}")


def duckdb_write_rate(tmp: Path, n: int) -> float:
    """Rows per second the driver's sink commits in batches of 256: the journal's one write per
    row, then DuckDB inserting each closed journal segment."""
    from pipeline.execution.journal import Journal
    from pipeline.records import Mode, RowResult, Status
    from pipeline.store import Store

    results = [
        RowResult(
            "bench", "run-1", f"r{i}", f"key-{i:08d}", "p1", Status.OK, "openai", "gpt-4o-mini",
            Mode.ONLINE, "positive", "stop", None, None, 1, 120, 2, 0, 0, 0, 2.1e-5, 180.0,
            1.76e9 + i, "in.jsonl", i + 1, worker="ray-0@node",
        )
        for i in range(n)
    ]  # fmt: skip
    db = fresh_db(tmp, "writes")
    journal = Journal(tmp / "writes", run_id="run-1", db=str(db))
    with Store(db) as store:
        t0 = time.perf_counter()
        for start in range(0, n, 256):
            for result in results[start : start + 256]:
                journal.append(result)
            segment = journal.rotate()
            assert segment is not None
            store.results.write_lines(segment)
            segment.unlink()
        wall = time.perf_counter() - t0
    journal.close(remove=True)
    return n / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    parser.add_argument(
        "--only", choices=["speed", "latency", "ratelimit", "memory", "kill", "ray"]
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--transport", default="aiohttp", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(
        f"benchmarks on {os.cpu_count()} cores, Python {sys.version.split()[0]}; every job a "
        "`pipeline run` process measured from outside, the fake provider in another process"
    )
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as t:
        tmp = Path(t)
        if args.only in (None, "speed"):
            scenario_speed(tmp, 5_000 if args.quick else 20_000)
        if args.only in (None, "latency"):
            scenario_latency(tmp, 5_000 if args.quick else 20_000)
        if args.only in (None, "ratelimit"):
            scenario_ratelimit(tmp, 5_000 if args.quick else 15_000)
        if args.only in (None, "memory"):
            scenario_memory(tmp, [20_000, 100_000] if args.quick else [200_000, 1_000_000])
        if args.only in (None, "kill"):
            scenario_kill(tmp, 5_000 if args.quick else 20_000)
        if args.only in (None, "ray"):
            scenario_ray(tmp, 5_000 if args.quick else 20_000)


if __name__ == "__main__":
    main()
