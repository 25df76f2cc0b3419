"""The fault matrix: whole runs against a misbehaving fake provider, killed and resumed.

    python tests/chaos.py --seeds 20            # seeds 0..19, one table row each
    python tests/chaos.py --seeds 1 --start 7   # seed 7 alone, e.g. to reproduce a failure
    python tests/chaos.py --seeds 5 --rows 300  # fewer rows per seed
    python tests/chaos.py --seeds 1 --start 7 --keep   # and keep its folder: job, DB, logs

Each seed, deterministically from ``random.Random(seed)``:

1. picks a fault mix for the fake provider (429 storms, 5xx/529 bursts, hangs with a short job
   ``timeout_s``, dropped connections, malformed and empty bodies, latency with jitter) and up
   to three interruptions of the run: SIGKILL, or a graceful SIGTERM/SIGINT;
2. starts ``pipeline fake-provider`` on a free 127.0.0.1 port, writes N rows and a job file into
   a temporary folder, runs ``pipeline run``, interrupts it when the fake's accounting reaches a
   chosen count (state, never a fixed sleep), and after each interruption runs
   ``pipeline resume RUN_ID``; the last resume runs to completion;
3. once every process has exited, checks from DuckDB (read-only) and the fake's accounting the
   promises of README "Never lose a row, never pay twice":

   - no input row is missing from ``results`` for the run, and none is there twice;
   - every row is ``ok`` (the faults are transient, and ``max_attempts`` is high);
   - the fake's ``duplicates_paid`` is at most ``kills × concurrency``: every answer is in
     the run's journal before anything else, so a kill can only cost the requests in flight
     and unanswered; and 0 when the run was only stopped gracefully (or not at all);
   - the run's ``runs.state`` is ``completed`` and every process exited as documented
     (0 when completed, 3 after a graceful stop, which leaves ``stopped: signal``);
   - no row committed before an interruption reaches the fake again afterwards, and a graceful
     stop commits every answer paid while that process ran;
   - ``sum(cost_usd)`` over the run equals the price of the tokens the fake says it served, less
     the answers it was paid for twice (one committed row per key).

``run_seed(seed)`` returns a ``SeedResult``; ``tests/test_chaos.py`` runs a few seeds in the
regular suite. Only the standard library, duckdb, orjson and ``pipeline`` itself are used.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson

from pipeline.job.pricing import cost_usd, lookup_price
from pipeline.records import Usage

__all__ = [
    "Interruption",
    "Observed",
    "Plan",
    "SeedResult",
    "Snapshot",
    "evaluate",
    "main",
    "plan_for_seed",
    "read_run",
    "run_seed",
]

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}
KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
DUMMY_KEY = "chaos-dummy-key-not-secret"
MAX_ATTEMPTS = 12
SIGNALS = {"kill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}

# Bounds on waiting; none of them is a sleep standing in for a condition.
SEED_DEADLINE_S = 150.0  # a seed that takes longer is a violation (something hangs)
STARTUP_TIMEOUT_S = 20.0  # the fake answering /_fake/health
EXIT_TIMEOUT_S = 60.0  # a process exiting after SIGKILL / SIGTERM (grace is 10 s)
POLL_S = 0.02  # how often the fake's accounting is read while waiting for a moment


# -- the plan of a seed ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interruption:
    """Send ``kind`` once the fake's ``metric`` has grown by ``delta`` since the process
    (``run`` or the latest ``resume``) started."""

    kind: str  # 'kill' | 'sigterm' | 'sigint'
    metric: str  # 'requests' | 'paid_total'
    delta: int


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a seed does, drawn from ``random.Random(seed)`` alone."""

    seed: int
    provider: str
    rows: int
    concurrency: int
    timeout_s: float
    requests_per_minute: float | None
    knobs: Mapping[str, float | int]
    interruptions: tuple[Interruption, ...]

    @property
    def model(self) -> str:
        return MODELS[self.provider]

    def fault_summary(self) -> str:
        """The injected faults, short: ``429×rps40, 503×0.20, hang 0.03, drop 0.05``."""
        k = self.knobs
        parts = []
        if "requests_per_second" in k:
            parts.append(f"429×rps{k['requests_per_second']:g}")
        if k.get("error_rate"):
            parts.append(f"{k['error_status']}×{k['error_rate']:.2f}")
        for knob, label in (
            ("hang_rate", "hang"),
            ("drop_rate", "drop"),
            ("malformed_rate", "malf"),
            ("empty_rate", "empty"),
        ):
            if k.get(knob):
                parts.append(f"{label} {k[knob]:.2f}")
        return ", ".join(parts)


def plan_for_seed(seed: int, rows: int | None = None) -> Plan:
    """The seed's fault mix, job limits and interruptions (``rows`` overrides the row count
    without changing anything else)."""
    rng = random.Random(seed)
    drawn_rows = rng.randint(300, 600)
    n = drawn_rows if rows is None else rows
    provider = ("openai", "anthropic")[seed % 2]
    concurrency = rng.choice((16, 24, 32, 48, 64))
    latency = round(rng.uniform(5, 50), 1)
    knobs: dict[str, float | int] = {
        "latency_ms": latency,
        "jitter_ms": round(rng.uniform(0, latency), 1),
        "seed": seed,
    }
    rpm: float | None = None
    while True:  # at least one kind of fault
        storm = rng.random() < 0.4
        errors = rng.random() < 0.5
        hangs = rng.random() < 0.35
        others = {name: rng.random() < 0.3 for name in ("drop", "malformed", "empty")}
        if storm or errors or hangs or any(others.values()):
            break
    if storm:
        rps = rng.randint(30, 80)
        knobs["requests_per_second"] = rps
        knobs["burst_s"] = round(rng.uniform(0.5, 1.0), 2)
        # Unset (learn the limit from the 429s and headers), or above what the fake allows.
        if rng.random() < 0.5:
            rpm = round(rps * 60 * rng.uniform(1.3, 3.0))
    if errors:
        knobs["error_rate"] = round(rng.uniform(0.05, 0.3), 3)
        knobs["error_status"] = rng.choice((500, 502, 503, 529))
    if hangs:
        knobs["hang_rate"] = round(rng.uniform(0.01, 0.05), 3)
        knobs["hang_s"] = 60.0  # far longer than the job's timeout; shutdown wakes it
    for name, on in others.items():
        if on:
            knobs[f"{name}_rate"] = round(rng.uniform(0.02, 0.1), 3)
    timeout_s = round(rng.uniform(0.5, 1.0), 2) if hangs else 10.0

    interruptions: list[Interruption] = []
    if rng.random() < 0.3:
        kinds = [rng.choice(("sigterm", "sigint")) for _ in range(rng.randint(1, 2))]
    else:
        kinds = ["kill"] * rng.choice((0, 1, 1, 2, 2, 3))
        if kinds and rng.random() < 0.3:
            kinds[rng.randrange(len(kinds))] = rng.choice(("sigterm", "sigint"))
    for kind in kinds:
        metric = rng.choice(("requests", "paid_total"))
        interruptions.append(Interruption(kind, metric, max(2, round(rng.uniform(0.05, 0.3) * n))))
    return Plan(
        seed=seed,
        provider=provider,
        rows=n,
        concurrency=concurrency,
        timeout_s=timeout_s,
        requests_per_minute=rpm,
        knobs=knobs,
        interruptions=tuple(interruptions),
    )


# -- the result of a seed -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeedResult:
    """What one seed did and whether the promises held; ``violations`` empty means ok."""

    seed: int
    provider: str
    faults: str  # the injected faults and the interruptions that happened
    rows: int
    requests: int  # requests the fake received (accounting ``requests``)
    rate_limited: int  # of them answered 429
    lost: int  # input rows with no result in the run
    dup_rows: int  # results beyond one per request key
    not_ok: int  # results whose status is not 'ok'
    extra_paid: int  # the fake's duplicates_paid
    bound: int  # the most extra_paid may be: kills × concurrency (the requests in flight)
    kills: int
    graceful: int
    state: str  # runs.state
    cost_check: str  # 'ok', or what did not add up
    elapsed_s: float
    violations: tuple[str, ...] = ()
    folder: str | None = None  # the seed's folder, when kept

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def verdict(self) -> str:
        return "ok" if self.ok else "VIOLATED"

    @property
    def per_kill(self) -> str:
        """Answers paid twice per kill, against the requests in flight at a kill."""
        if not self.kills:
            return "–"
        return f"{self.extra_paid / self.kills:.0f}/{self.bound // self.kills}"


# -- processes ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class FakeClient:
    """The fake provider's control endpoints, over one keep-alive connection."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._conn: http.client.HTTPConnection | None = None

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self._conn.request(method, path, body=body)
                response = self._conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                continue
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {data[:200]!r}")
            return orjson.loads(data)
        raise AssertionError("unreachable")

    def health(self) -> bool:
        try:
            return bool(self._request("GET", "/_fake/health").get("ok"))
        except (OSError, http.client.HTTPException, RuntimeError):
            return False

    def accounting(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/_fake/accounting")
        return result

    def config(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/_fake/config")
        return result

    def chat(self) -> int:
        """One OpenAI chat completion on a connection of its own; its status (0: dropped)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        body = {"model": MODELS["openai"], "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {DUMMY_KEY}", "Content-Type": "application/json"}
        try:
            conn.request("POST", "/v1/chat/completions", orjson.dumps(body), headers)
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            return 0
        finally:
            conn.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _knob_flags(knobs: Mapping[str, float | int]) -> list[str]:
    flags = []
    for name, value in knobs.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


@contextlib.contextmanager
def running_fake(knobs: Mapping[str, float | int], log: Path) -> Iterator[FakeClient]:
    """``pipeline fake-provider`` on a free loopback port, started with ``knobs`` as flags and
    checked to run with them, healthy; terminated on exit."""
    for _ in range(3):  # another process may take the free port before the fake binds it
        port = _free_port()
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "pipeline",
                    "fake-provider",
                    "--port",
                    str(port),
                    *_knob_flags(knobs),
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        client = FakeClient(port)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while proc.poll() is None and not client.health():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the fake provider did not answer /_fake/health: {log}")
                time.sleep(POLL_S)
            if proc.poll() is None:
                config = client.config()
                wrong = {k: config.get(k) for k, v in knobs.items() if config.get(k) != v}
                if wrong:
                    raise RuntimeError(f"the fake provider runs with other knobs: {wrong}")
                yield client
                return
        finally:
            client.close()
            _stop(proc, signal.SIGTERM)
    raise RuntimeError(f"the fake provider would not start: {_tail(log)}")


def _stop(proc: subprocess.Popen[bytes], signum: int) -> None:
    if proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _tail(path: Path) -> str:
    """The gist of a process's output: its last error line, else its last line."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return "(no output)"
    lines = [line for line in lines if line and not set(line) <= set("|+-^ ")]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[-1].lstrip("| ")


# -- one seed -------------------------------------------------------------------------------

# (row_id, request_key, status, cost_usd) of the results of a run
ResultRow = tuple[str, str, str, float | None]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The run as it stood once the process had exited after one interruption."""

    kind: str  # 'kill' | 'sigterm' | 'sigint'
    exit_code: int
    state: str  # runs.state then
    committed: frozenset[str]  # request keys with a result in the run then
    arrived: Mapping[str, int]  # the fake's arrivals per request key then
    paid_by_it: frozenset[str]  # keys whose paid count grew while that process ran


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything a seed saw, read once every process had exited; ``evaluate`` judges it."""

    ids: tuple[str, ...]  # the input rows
    state: str  # runs.state at the end
    runs: int  # rows in table runs
    results: tuple[ResultRow, ...]  # the run's rows in the results view
    accounting: Mapping[str, Any]  # the fake's, at the end
    kills: int
    graceful: int
    snapshots: tuple[Snapshot, ...] = ()
    problems: tuple[str, ...] = ()  # exit codes, missing manifests, timeouts


def evaluate(plan: Plan, seen: Observed, elapsed_s: float = 0.0) -> SeedResult:
    """The invariants of a seed, checked on what it observed (no I/O)."""
    violations = list(seen.problems)
    accounting = seen.accounting
    rows = seen.results
    keys = {r[1] for r in rows}
    lost = len(set(seen.ids) - {r[0] for r in rows})
    dup_rows = len(rows) - len(keys)
    not_ok = sum(1 for r in rows if r[2] != "ok")
    bound = seen.kills * plan.concurrency  # the requests in flight at each kill
    extra_paid = int(accounting["duplicates_paid"])
    paid: Mapping[str, int] = accounting["paid"]
    arrived: Mapping[str, int] = accounting["arrived"]
    if lost:
        violations.append(f"{lost} input rows have no result in the run")
    if dup_rows:
        violations.append(f"{dup_rows} results beyond one per request key")
    if not_ok:
        statuses = sorted({r[2] for r in rows if r[2] != "ok"})
        violations.append(f"{not_ok} rows are not ok ({', '.join(statuses)})")
    if seen.state != "completed":
        violations.append(f"runs.state is {seen.state!r}, not 'completed'")
    if seen.runs != 1:
        violations.append(f"table runs holds {seen.runs} runs, not 1")
    if extra_paid > bound:
        why = "no SIGKILL, so none may be" if seen.kills == 0 else f"{seen.kills} SIGKILL(s)"
        violations.append(f"{extra_paid} answers paid twice, over the bound {bound} ({why})")
    unpaid = sorted(r[0] for r in rows if r[2] == "ok" and paid.get(r[1], 0) < 1)
    if unpaid:
        violations.append(f"{len(unpaid)} ok rows the fake never answered, e.g. {unpaid[:3]}")
    strays = set(paid) - keys
    if strays:
        violations.append(f"{len(strays)} keys were paid for but have no result in the run")
    for n, snap in enumerate(seen.snapshots, 1):
        where = f"interruption {n} ({snap.kind})"
        again = sorted(k for k in snap.committed if arrived.get(k, 0) > snap.arrived.get(k, 0))
        if again:
            violations.append(
                f"{len(again)} rows committed before {where} were sent again by the resume"
            )
        if snap.kind != "kill" and snap.exit_code == 3:
            if snap.state != "stopped: signal":
                violations.append(f"after {where} runs.state is {snap.state!r}")
            uncommitted = snap.paid_by_it - snap.committed
            if uncommitted:
                violations.append(
                    f"{where}: {len(uncommitted)} answers paid but not committed at exit"
                )
    cost_check = _check_cost(plan, rows, accounting)
    if cost_check != "ok":
        violations.append(f"cost: {cost_check}")
    return SeedResult(
        seed=plan.seed,
        provider=plan.provider,
        faults=_faults(plan, seen.kills, seen.graceful),
        rows=len(seen.ids),
        requests=int(accounting["requests"]),
        rate_limited=int(accounting["by_status"].get("429", 0)),
        lost=lost,
        dup_rows=dup_rows,
        not_ok=not_ok,
        extra_paid=extra_paid,
        bound=bound,
        kills=seen.kills,
        graceful=seen.graceful,
        state=seen.state,
        cost_check=cost_check,
        elapsed_s=elapsed_s,
        violations=tuple(dict.fromkeys(violations)),
    )


def read_run(db: Path, run_id: str | None) -> tuple[str, int, tuple[ResultRow, ...]]:
    """(runs.state, rows in table runs, the run's results), read-only; call it only when no
    pipeline process is running (DuckDB lets no one read while a process writes)."""
    if run_id is None or not db.exists():
        return "missing", 0, ()
    con = duckdb.connect(str(db), read_only=True)
    try:
        found = con.execute("SELECT state FROM runs WHERE run_id = ?", [run_id]).fetchone()
        counted = con.execute("SELECT count(*) FROM runs").fetchone()
        rows = con.execute(
            "SELECT row_id, request_key, status, cost_usd FROM results WHERE run_id = ?",
            [run_id],
        ).fetchall()
    finally:
        con.close()
    state = "missing" if found is None else str(found[0])
    return state, 0 if counted is None else int(counted[0]), tuple(map(tuple, rows))


@dataclass(slots=True)
class _Seed:
    """The mutable state of one seed while its processes run."""

    plan: Plan
    tmp: Path
    fake: FakeClient
    base_url: str
    db: Path
    deadline: float
    kills: int = 0
    graceful: int = 0
    processes: int = 0
    paid_at_spawn: dict[str, int] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def spawn(self, args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        self.processes += 1
        self.paid_at_spawn = dict(self.fake.accounting()["paid"])
        log = self.tmp / f"pipeline-{self.processes}.log"
        env = {**os.environ, KEY_ENV[self.plan.provider]: DUMMY_KEY, "NO_COLOR": "1"}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [PYTHON, "-m", "pipeline", *args, "--base-url", self.base_url, "--quiet"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return proc, log

    def wait_exit(self, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        try:
            return proc.wait(timeout=max(0.1, min(timeout, self.deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            return None

    def wait_for_moment(self, proc: subprocess.Popen[bytes], moment: Interruption) -> bool:
        """Poll the fake's accounting until ``moment`` comes (True) or ``proc`` exits (False)."""
        target = self.fake.accounting()[moment.metric] + moment.delta
        while proc.poll() is None:
            if self.fake.accounting()[moment.metric] >= target:
                return True
            if time.monotonic() > self.deadline:
                raise TimeoutError(f"{moment.metric} never reached {target}")
            time.sleep(POLL_S)
        return False

    def run_id(self) -> str | None:
        manifests = sorted((self.db.parent / "runs").glob("*.manifest.json"))
        if len(manifests) != 1:
            self.problems.append(
                f"expected one run manifest next to the database, found {len(manifests)}"
            )
            return None
        run_id: str = orjson.loads(manifests[0].read_bytes())["run_id"]
        return run_id

    def snapshot(self, kind: str, code: int, run_id: str | None) -> None:
        state, _, rows = read_run(self.db, run_id)
        accounting = self.fake.accounting()
        before = self.paid_at_spawn
        paid_by_it = {k for k, v in accounting["paid"].items() if v > before.get(k, 0)}
        self.snapshots.append(
            Snapshot(
                kind=kind,
                exit_code=code,
                state=state,
                committed=frozenset(r[1] for r in rows),
                arrived=dict(accounting["arrived"]),
                paid_by_it=frozenset(paid_by_it),
            )
        )


def _write_inputs(plan: Plan, tmp: Path) -> tuple[Path, Path, list[str]]:
    data = tmp / "rows.jsonl"
    generate = [PYTHON, str(ROOT / "data" / "generate.py"), "--seed", str(plan.seed)]
    subprocess.run(
        [*generate, "--rows", str(plan.rows), "--out", str(data)],
        check=True,
        timeout=60,
    )
    ids = [orjson.loads(line)["id"] for line in data.read_bytes().splitlines() if line.strip()]
    db = tmp / "out" / "results.duckdb"
    limits = [
        f"concurrency = {plan.concurrency}",
        f"max_attempts = {MAX_ATTEMPTS}",
        f"timeout_s = {plan.timeout_s}",
    ]
    if plan.requests_per_minute is not None:
        limits.append(f"requests_per_minute = {plan.requests_per_minute}")
    job = tmp / "job.toml"
    job.write_text(
        "\n".join(
            [
                f'name = "chaos-{plan.seed}"',
                "",
                "[input]",
                f"path = {orjson.dumps(str(data)).decode()}",
                'id = "id"',
                "",
                "[request]",
                f'provider = "{plan.provider}"',
                f'model = "{plan.model}"',
                'system = "Reply with one word: positive, negative or neutral."',
                'prompt = "Review: {text}"',
                "max_tokens = 5",
                "temperature = 0",
                "",
                "[limits]",
                *limits,
                "",
                "[output]",
                f"db = {orjson.dumps(str(db)).decode()}",
                "",
            ]
        )
    )
    return job, db, ids


def run_seed(seed: int, rows: int | None = None, *, keep: bool = False) -> SeedResult:
    """Run one seed of the fault matrix end to end and check its invariants. ``keep`` leaves
    its folder (input, job, database, logs) in place and names it in the result."""
    plan = plan_for_seed(seed, rows)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=f"chaos-{seed}-"))
    try:
        job, db, ids = _write_inputs(plan, tmp)
        with running_fake(plan.knobs, tmp / "fake.log") as fake:
            url = f"http://127.0.0.1:{fake.port}"
            s = _Seed(
                plan=plan,
                tmp=tmp,
                fake=fake,
                base_url=f"{url}/v1" if plan.provider == "openai" else url,
                db=db,
                deadline=started + SEED_DEADLINE_S,
            )
            try:
                _drive(s, job)
            except TimeoutError as exc:
                s.problems.append(f"timed out: {exc}")
            accounting = fake.accounting()
        run_id = s.run_id()
        state, runs, results = read_run(db, run_id)
        seen = Observed(
            ids=tuple(ids),
            state=state,
            runs=runs,
            results=results,
            accounting=accounting,
            kills=s.kills,
            graceful=s.graceful,
            snapshots=tuple(s.snapshots),
            problems=tuple(s.problems),
        )
        result = evaluate(plan, seen, time.monotonic() - started)
        return dataclasses.replace(result, folder=str(tmp) if keep else None)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _drive(s: _Seed, job: Path) -> None:
    """Run, interrupt and resume the job as planned; the last process runs to completion."""
    proc, log = s.spawn(["run", str(job), "--db", str(s.db)])
    try:
        for moment in s.plan.interruptions:
            if not s.wait_for_moment(proc, moment):
                break  # it finished before the moment came
            proc.send_signal(SIGNALS[moment.kind])
            code = s.wait_exit(proc, EXIT_TIMEOUT_S)
            if code is None:
                raise TimeoutError(f"no exit {EXIT_TIMEOUT_S:g}s after {moment.kind}")
            if moment.kind == "kill":
                s.kills += 1
                if code != -signal.SIGKILL:
                    s.problems.append(f"exit {code} after SIGKILL: {_tail(log)}")
            else:
                s.graceful += 1
                # 3: stopped, resume finishes it; 0: it had just completed.
                if code not in (0, 3):
                    s.problems.append(f"exit {code} after {moment.kind}, not 3: {_tail(log)}")
            run_id = s.run_id()
            s.snapshot(moment.kind, code, run_id)
            if run_id is None:
                return
            proc, log = s.spawn(["resume", run_id, "--db", str(s.db)])
        code = s.wait_exit(proc, s.deadline - time.monotonic())
        if code is None:
            raise TimeoutError("the last process did not finish")
        if code != 0:
            s.problems.append(f"the last process exited {code}, not 0: {_tail(log)}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=EXIT_TIMEOUT_S)


def _faults(plan: Plan, kills: int, graceful: int) -> str:
    """The faults injected and the interruptions that happened, as one short string."""
    parts = [plan.fault_summary()]
    if kills:
        parts.append(f"{kills} kill{'s' if kills > 1 else ''}")
    if graceful:
        kinds = sorted({i.kind for i in plan.interruptions if i.kind != "kill"})
        parts.append(f"{graceful} {'/'.join(kinds)}")
    return ", ".join(parts)


def _check_cost(plan: Plan, rows: tuple[ResultRow, ...], accounting: Mapping[str, Any]) -> str:
    """sum(cost_usd) == price of the tokens the fake served − the answers it was paid twice.

    The fake answers a request the same way every time, so an answer paid twice cost what the
    committed row of its key cost. 'ok', or what did not add up.
    """
    price = lookup_price(plan.provider, plan.model)
    if price is None:
        return f"no price for {plan.provider} {plan.model}"
    tokens = accounting["tokens"]
    served = cost_usd(
        price,
        Usage(
            input_tokens=tokens["input"],
            output_tokens=tokens["output"],
            cache_read_tokens=tokens["cache_read"],
            cache_write_tokens=tokens["cache_write"],
        ),
    )
    assert served is not None
    cost_of = {r[1]: float(r[3] or 0.0) for r in rows}
    twice = sum((n - 1) * cost_of.get(k, 0.0) for k, n in accounting["paid"].items() if n > 1)
    stored = sum(float(r[3] or 0.0) for r in rows)
    expected = served - twice
    if math.isclose(stored, expected, rel_tol=1e-9, abs_tol=1e-12):
        return "ok"
    return f"results sum to ${stored:.9f}, the fake served ${expected:.9f} once per key"


# -- the table ------------------------------------------------------------------------------

_COLUMNS = (
    ("seed", ">"),
    ("provider", "<"),
    ("faults", "<"),
    ("rows", ">"),
    ("requests", ">"),
    ("429s", ">"),
    ("lost", ">"),
    ("dup rows", ">"),
    ("extra paid (bound)", ">"),
    ("per kill/in flight", ">"),
    ("time", ">"),
    ("verdict", "<"),
)
_MIN_WIDTHS = (4, 9, 0, 4, 8, 5, 4, 8, 18, 18, 6, 8)


def _cells(r: SeedResult) -> tuple[str, ...]:
    return (
        str(r.seed),
        r.provider,
        r.faults,
        str(r.rows),
        str(r.requests),
        str(r.rate_limited),
        str(r.lost),
        str(r.dup_rows),
        f"{r.extra_paid} ({r.bound})",
        r.per_kill,
        f"{r.elapsed_s:.1f}s",
        r.verdict,
    )


def table_widths(plans: list[Plan]) -> tuple[int, ...]:
    """Column widths fixed before any seed runs, so rows can be printed as they come."""
    faults = max((len(_faults(p, *_planned_events(p))) for p in plans), default=6)
    return tuple(
        max(minimum, len(name), faults if name == "faults" else 0)
        for (name, _), minimum in zip(_COLUMNS, _MIN_WIDTHS, strict=True)
    )


def _planned_events(plan: Plan) -> tuple[int, int]:
    kills = sum(1 for i in plan.interruptions if i.kind == "kill")
    return kills, len(plan.interruptions) - kills


def format_row(cells: tuple[str, ...], widths: tuple[int, ...]) -> str:
    return "  ".join(
        f"{cell:{align}{width}}"
        for cell, (_, align), width in zip(cells, _COLUMNS, widths, strict=True)
    ).rstrip()


def _harness_failure(plan: Plan, exc: Exception) -> SeedResult:
    return SeedResult(
        seed=plan.seed,
        provider=plan.provider,
        faults=plan.fault_summary(),
        rows=plan.rows,
        requests=0,
        rate_limited=0,
        lost=plan.rows,
        dup_rows=0,
        not_ok=0,
        extra_paid=0,
        bound=0,
        kills=0,
        graceful=0,
        state="?",
        cost_check="not checked",
        elapsed_s=0.0,
        violations=(f"the harness failed: {type(exc).__name__}: {exc}",),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="how many seeds (default 20)")
    parser.add_argument("--start", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--rows", type=int, help="rows per seed (default: 300-600, by seed)")
    parser.add_argument(
        "--keep", action="store_true", help="keep each seed's folder (job, database, logs)"
    )
    args = parser.parse_args(argv)
    seeds = range(args.start, args.start + args.seeds)
    widths = table_widths([plan_for_seed(seed, args.rows) for seed in seeds])
    print(format_row(tuple(name for name, _ in _COLUMNS), widths), flush=True)
    results = []
    began = time.monotonic()
    for seed in seeds:
        try:
            result = run_seed(seed, args.rows, keep=args.keep)
        except Exception as exc:  # the harness itself failed: a failed row, and go on
            result = _harness_failure(plan_for_seed(seed, args.rows), exc)
        results.append(result)
        print(format_row(_cells(result), widths), flush=True)
        for violation in result.violations:
            print(f"    seed {seed}: {violation}", flush=True)
        if result.folder:
            print(f"    seed {seed}: kept {result.folder}", flush=True)
    print(f"{len(results)} seeds in {time.monotonic() - began:.0f}s")
    kills = sum(r.kills for r in results)
    if kills:
        paid = sum(r.extra_paid for r in results)
        in_flight = sum(r.bound for r in results)
        worst = max((r.extra_paid / r.kills for r in results if r.kills), default=0.0)
        print(
            f"{kills} kills: {paid} answers paid twice in all, {paid / kills:.1f} a kill "
            f"(worst seed {worst:.1f} a kill), against {in_flight / kills:.1f} requests in "
            "flight a kill"
        )
    failed = sum(1 for r in results if not r.ok)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
