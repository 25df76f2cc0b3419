"""What a person sees while a job runs: a progress bar on a terminal, log lines otherwise."""

from __future__ import annotations

import anyio
import structlog
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ..execution.stats import RunStats

__all__ = ["show_progress"]

log = structlog.get_logger("pipeline.reporting.progress")


def _line(stats: RunStats) -> str:
    rate = stats.rows_done / stats.elapsed_s if stats.elapsed_s > 0 else 0.0
    failed = stats.rows_failed + stats.rows_input_error
    parts = [
        f"[green]{stats.rows_ok:,} ok[/]",
        f"[red]{failed:,} failed[/]" if failed else "0 failed",
    ]
    if stats.rows_invalid:
        parts.append(f"[yellow]{stats.rows_invalid:,} invalid[/]")
    if stats.rows_skipped:
        parts.append(f"{stats.rows_skipped:,} already done")
    parts += [
        f"{rate:,.0f} rows/s",
        f"{stats.input_tokens + stats.output_tokens:,} tokens",
        f"${stats.cost_usd:,.4f}",
    ]
    if stats.rate_limited:
        parts.append(f"[yellow]{stats.rate_limited} × 429[/]")
    return " · ".join(parts)


async def show_progress(
    stats: RunStats, *, total: int | None, console: Console, interval_s: float = 0.25
) -> None:
    """Draw progress until cancelled. On a terminal a live bar; otherwise a log line every 10 s."""
    if not console.is_terminal:
        while True:
            await anyio.sleep(10)
            log.info(
                "progress",
                rows_ok=stats.rows_ok,
                rows_failed=stats.rows_failed + stats.rows_input_error,
                rows_skipped=stats.rows_skipped,
                cost_usd=round(stats.cost_usd, 6),
            )
    progress = Progress(
        TextColumn("[bold]rows"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task("", total=total)
        try:
            while True:
                progress.update(
                    task,
                    completed=stats.rows_done + stats.rows_skipped,
                    description=_line(stats),
                )
                await anyio.sleep(interval_s)
        finally:
            progress.update(
                task, completed=stats.rows_done + stats.rows_skipped, description=_line(stats)
            )
