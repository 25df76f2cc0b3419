"""The ``pipeline`` command: a thin shell over the library.

Library errors become one clear line on stderr and an exit code; nothing here decides anything
the library could decide. ``_run`` calls ``pipeline.run`` (run, resume, rerun) and prints how it
ended; ``_look`` holds the commands that read what runs left (status, runs, batches, report,
estimate, export) and cancel and fake-provider. ``--json`` on run, resume, rerun, status, runs
and estimate prints one JSON object on stdout instead (for orchestrators); exit codes stay.

Exit codes: 0 the run completed (rows may still have failed: see the summary), 1 the run failed
(bad key, no quota, a provider that cannot be reached, a refused batch, a crash), 2 the job file
or the command line is wrong, 3 stopped (signal or budget): ``pipeline resume RUN_ID``
finishes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError, PipelineError, StoppedError

__all__ = ["COMMANDS", "build_parser", "main"]

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

DEFAULT_DB = "data/results.duckdb"
JSON_HELP = "print one JSON object on stdout (state, counts, cost, run id, ...) instead of text"


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
        p.add_argument("--json", action="store_true", help=JSON_HELP)
        p.add_argument(
            "--engine", choices=["local", "ray"], help="override [cluster].engine (ray: workers)"
        )
        p.add_argument("--workers", type=int, help="override [cluster].workers (Ray workers)")
        p.add_argument("--address", help="override [cluster].address (a Ray cluster to join)")

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
    status.add_argument("--json", action="store_true", help=JSON_HELP)

    runs = command("runs")
    runs.add_argument("--db", default=DEFAULT_DB, help=f"results database ({DEFAULT_DB})")
    runs.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    runs.add_argument("--json", action="store_true", help=JSON_HELP)

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
    from ..fake import FakeConfig

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
    # SIGTERM before (or after) a run's own handlers: the same clean end as Ctrl-C.
    previous = _terminate_as_interrupt()
    try:
        return _handler(args.command)(args)
    except KeyboardInterrupt:
        # A signal outside a run's own handling (start-up, the final report, a second
        # Ctrl-C while closing): one line, exit 3, and how to go on when a run was started.
        from .._api import last_run

        started = last_run()
        tail = f"; to finish it: {started}" if started else ""
        _error(f"interrupted{tail}")
        return 3
    except OSError as exc:  # the terminal or a file the command writes (a full disk)
        where = f" {exc.filename}" if exc.filename else ""
        _error(f"cannot write{where}: {exc.strerror or exc}")
        return 1
    except ConfigError as exc:
        _error(str(exc))
        return 2
    except StoppedError as exc:
        _error(str(exc))
        return 3
    except PipelineError as exc:
        _error(str(exc))
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt() -> Any:
    """SIGTERM raises KeyboardInterrupt (as SIGINT does) on the main thread; the old handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _handler(command: str) -> Callable[[argparse.Namespace], int]:
    """The function behind a command (imported only when that command runs)."""
    if command in ("run", "resume", "rerun"):
        from . import _run

        return getattr(_run, command)  # type: ignore[no-any-return]
    from . import _look

    return getattr(_look, command.replace("-", "_"))  # type: ignore[no-any-return]


def _error(message: str) -> None:
    # Plain text, one line, whatever the terminal: messages carry [table.key] names that
    # markup would eat, and a wrapped error is two errors to grep.
    print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
