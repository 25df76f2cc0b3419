"""Benchmarks: whole jobs against the fake provider on loopback, figures and ratios in one run.

    python bench/run.py                 # every scenario (about 10 minutes on 2 cores)
    python bench/run.py --quick         # smaller inputs, for a quick look
    python bench/run.py --only latency  # one scenario

Each job runs in a fresh child process (so its CPU time and peak RSS are its own), against the
fake provider in another process. A job here is the library's Runner with everything a real run
does: read JSONL, render, rate limits, HTTP, parse, cost, DuckDB writes in transactions.

Scenarios (targets from the project's issue tracker):
  speed     zero latency, 64 in flight, 20,000 rows: rows/s and client CPU per row, on the
            aiohttp transport and, for the ratio, on httpx's default transport
  latency   200 ms latency, 256 in flight: rows/s against the ideal 256 / 0.2 s = 1,280
  ratelimit provider limited to 500 requests/s (1 s burst), job configured at that limit:
            achieved rate and the share of requests answered 429
  memory    peak RSS at 100,000 and 1,000,000 input rows (flat in the number of rows)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


# -- the child: one job, measured ---------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    import anyio
    import httpx

    from pipeline.config import parse_job
    from pipeline.cost import lookup_price
    from pipeline.limits import LocalRateBudget
    from pipeline.providers import OpenAIProvider, make_transport
    from pipeline.runner import Runner
    from pipeline.store import Store

    rpm = f"requests_per_minute = {args.rpm}\n" if args.rpm else ""
    job = parse_job(
        f"""
name = "bench"
[input]
path = "{args.input}"
id = "id"
[request]
provider = "openai"
model = "gpt-4o-mini"
system = "You are a sentiment classifier. Reply with one word: positive, negative or neutral."
prompt = "Review: {{text}}"
max_tokens = 5
[limits]
concurrency = {args.concurrency}
max_attempts = 10
timeout_s = 30
{rpm}
[output]
db = "{args.db}"
""",
        path="bench",
    )

    async def go() -> dict[str, Any]:
        transport: httpx.AsyncBaseTransport
        if args.transport == "httpx":
            transport = httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=args.concurrency)
            )
        else:
            transport = make_transport(max_connections=args.concurrency)
        provider = OpenAIProvider(
            transport, base_url=args.base_url, api_key="bench-key", timeout_s=30
        )
        with Store(job.output.db) as store:
            runner = Runner(
                job,
                store=store,
                provider=provider,
                budget=LocalRateBudget(requests_per_minute=job.limits.requests_per_minute),
                price=lookup_price("openai", "gpt-4o-mini"),
                base_url=args.base_url,
            )
            cpu0 = _cpu()
            t0 = time.perf_counter()
            outcome = await runner.run()
            wall = time.perf_counter() - t0
            cpu = _cpu() - cpu0
            await provider.aclose()
        s = outcome.stats
        return {
            "state": outcome.state,
            "rows_ok": s.rows_ok,
            "rows_done": s.rows_done,
            "requests": s.requests_sent,
            "rate_limited": s.rate_limited,
            "wall_s": wall,
            "cpu_s": cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }

    result = anyio.run(go, backend="asyncio", backend_options={"use_uvloop": True})
    print(json.dumps(result))


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- the parent: set up, run children, print ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def fake_provider(**knobs: Any) -> Any:
    port = free_port()
    cmd = [PY, "-m", "pipeline", "fake-provider", "--port", str(port)]
    for key, value in knobs.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
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


def run_job(
    base: str,
    inp: Path,
    tmp: Path,
    *,
    concurrency: int,
    transport: str = "aiohttp",
    rpm: float | None = None,
    db: Path | None = None,
) -> dict[str, Any]:
    """One job in a child process. A given ``db`` is kept (for a rerun); a fresh one is not."""
    keep = db is not None
    db = db or tmp / f"bench-{time.monotonic_ns()}.duckdb"
    cmd = [
        PY,
        __file__,
        "--child",
        "--input",
        str(inp),
        "--db",
        str(db),
        "--base-url",
        base + "/v1",
        "--concurrency",
        str(concurrency),
        "--transport",
        transport,
    ]
    if rpm:
        cmd += ["--rpm", str(rpm)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    process_s = time.perf_counter() - t0
    if not keep:
        db.unlink(missing_ok=True)
        Path(f"{db}.wal").unlink(missing_ok=True)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": process_s}


def row(name: str, figure: str, target: str, verdict: str) -> None:
    print(f"  {name:<44} {figure:>22}   {target:<18} {verdict}")


def check(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def scenario_speed(tmp: Path, rows: int) -> None:
    print(f"\nspeed: zero latency, 64 in flight, {rows:,} rows")
    inp = make_input(rows, tmp)
    with fake_provider() as base:
        fast = run_job(base, inp, tmp, concurrency=64)
        slow = run_job(base, inp, tmp, concurrency=64, transport="httpx")
    for label, r in (("aiohttp transport (default)", fast), ("httpx default transport", slow)):
        rps = r["rows_ok"] / r["wall_s"]
        cpu_us = r["cpu_s"] / r["rows_done"] * 1e6
        row(
            f"{label}: rows/s",
            f"{rps:,.0f}",
            "≥ 3,000" if r is fast else "",
            check(rps >= 3000) if r is fast else "",
        )
        row(
            f"{label}: client CPU per row",
            f"{cpu_us:,.0f} µs",
            "≤ 300 µs" if r is fast else "",
            check(cpu_us <= 300) if r is fast else "",
        )
    ratio = (fast["rows_ok"] / fast["wall_s"]) / (slow["rows_ok"] / slow["wall_s"])
    cpu_ratio = (slow["cpu_s"] / slow["rows_done"]) / (fast["cpu_s"] / fast["rows_done"])
    row("ratio aiohttp / httpx default: rows/s", f"{ratio:.2f}×", "", "")
    row("ratio httpx default / aiohttp: CPU per row", f"{cpu_ratio:.2f}×", "", "")


def scenario_latency(tmp: Path, rows: int) -> None:
    print(f"\nlatency: 200 ms per request, 256 in flight, {rows:,} rows")
    inp = make_input(rows, tmp)
    with fake_provider(latency_ms=200) as base:
        r = run_job(base, inp, tmp, concurrency=256)
    rps = r["rows_ok"] / r["wall_s"]
    ideal = 256 / 0.2
    row("rows/s", f"{rps:,.0f}", "", "")
    row("share of the ideal 1,280 rows/s", f"{rps / ideal:.1%}", "≥ 90%", check(rps / ideal >= 0.9))
    row("client CPU per row", f"{r['cpu_s'] / r['rows_done'] * 1e6:,.0f} µs", "", "")


def scenario_ratelimit(tmp: Path, rows: int) -> None:
    print(
        f"\nratelimit: provider allows 500 requests/s (1 s burst); job set to 30,000/min; "
        f"{rows:,} rows"
    )
    inp = make_input(rows, tmp)
    with fake_provider(requests_per_second=500, burst_s=1.0) as base:
        reset(base)
        r = run_job(base, inp, tmp, concurrency=64, rpm=30_000)
        acc = accounting(base)
    total = int(acc["requests"])
    limited = int(acc["by_status"].get("429", 0))
    achieved = r["rows_ok"] / r["wall_s"]
    row("achieved requests/s (rows ok / wall)", f"{achieved:,.0f}", "", "")
    row(
        "share of the provider's limit",
        f"{achieved / 500:.1%}",
        "≥ 98%",
        check(achieved / 500 >= 0.98),
    )
    row(
        "requests answered 429",
        f"{limited:,} of {total:,} ({limited / total:.2%})",
        "≤ 0.5%",
        check(limited / total <= 0.005),
    )


def scenario_memory(tmp: Path, sizes: list[int]) -> None:
    print("\nmemory: peak RSS of the whole job by input size (zero latency, 64 in flight),")
    print("then the same job again over its finished database (nothing left to send)")
    peaks = []
    with fake_provider() as base:
        for n in sizes:
            inp = make_input(n, tmp)
            db = tmp / f"memory-{n}.duckdb"
            r = run_job(base, inp, tmp, concurrency=64, db=db)
            peaks.append(r["peak_rss_mb"])
            row(
                f"{n:,} rows: peak RSS",
                f"{r['peak_rss_mb']:,.0f} MB",
                "≤ 150 MB",
                check(r["peak_rss_mb"] <= 150),
            )
            row(f"{n:,} rows: rows/s", f"{r['rows_ok'] / r['wall_s']:,.0f}", "", "")
            again = run_job(base, inp, tmp, concurrency=64, db=db)
            row(
                f"{n:,} rows: rerun of the finished job (process)",
                f"{again['process_s']:,.1f} s, {again['requests']} sent",
                "≤ 10 s",
                check(again["process_s"] <= 10 and again["requests"] == 0),
            )
            inp.unlink()
            db.unlink()
    row(
        f"ratio peak RSS {sizes[-1]:,} / {sizes[0]:,} rows",
        f"{peaks[-1] / peaks[0]:.2f}×",
        "≈ 1 (flat)",
        "",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    parser.add_argument("--only", choices=["speed", "latency", "ratelimit", "memory"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--transport", default="aiohttp", help=argparse.SUPPRESS)
    parser.add_argument("--rpm", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(
        f"benchmarks on {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
        "every job in its own process, the fake provider in another"
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
            scenario_memory(tmp, [20_000, 100_000] if args.quick else [100_000, 1_000_000])


if __name__ == "__main__":
    main()
