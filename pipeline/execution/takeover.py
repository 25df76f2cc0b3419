"""Batches of earlier runs: rows in them are never sent again.

A batch an earlier run of the same job and request version submitted, and nobody collected
(that run was killed, or ran with ``--no-wait``), still holds its rows: sending them again would
pay twice. When a run opens, :func:`open_parts` finds such parts; :class:`Takeover` then

- in batch mode, takes each over (its ledger rows and part file move to this run, the old run is
  marked ``stopped: its batches were taken over by run ...``) and the batch executor collects it
  with its own;
- online, collects those that have ended and leaves the rest, naming them and the
  ``pipeline resume`` that collects them (the planner skips their rows as ``pending``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import structlog

from ..providers import BatchProvider
from ..records import Mode, RunState
from ..store import Store
from .manifest import manifest_path, read_manifest, write_manifest

__all__ = ["Takeover", "pending_line"]

log = structlog.get_logger("pipeline.takeover")


class Takeover:
    """What one run does with the open batch parts of earlier runs (``parts``, from
    ``store.batches.open_parts``). ``collect`` collects the parts taken over: the session's
    batch executor, made for the batch mode's results."""

    def __init__(
        self,
        *,
        run_id: str,
        mode: Mode,
        store: Store,
        db: str,
        runs_dir: Path,
        parts: Sequence[Mapping[str, Any]],
        provider: BatchProvider | None,
        notice: Callable[[str], None],
    ) -> None:
        self.run_id = run_id
        self.mode = mode
        self.store = store
        self.db = db
        self.runs_dir = runs_dir
        self.parts = list(parts)
        self.provider = provider
        self.notice = notice

    async def run(self, collect: Callable[[], Awaitable[None]]) -> None:
        if not self.parts:
            return
        if self.mode is Mode.ONLINE and self.provider is None:
            for part in self.parts:
                self.notice(pending_line(part, _resume_collects(part)))
            return
        taken = [part for part in self.parts if await self._take(part)]
        for part in taken:
            new = await anyio.to_thread.run_sync(self._adopt, part)
            verb = "collecting it" if part["batch_id"] else "submitting it"
            self.notice(pending_line(part, f"{verb} in this run (part {new})"))
        if taken and self.mode is Mode.ONLINE:
            await collect()

    async def _take(self, part: Mapping[str, Any]) -> bool:
        """Whether this run takes ``part`` over: every part in batch mode; online, only a
        batch that has ended (a prepared part is left to the run that made it)."""
        if self.mode is Mode.BATCH:
            return True
        if part["batch_id"] is None:
            self.notice(
                pending_line(
                    part, f"never submitted; 'pipeline resume {part['run_id']}' submits them"
                )
            )
            return False
        assert self.provider is not None
        state = await self.provider.poll(part["batch_id"])
        if not state.ended:
            self.notice(pending_line({**part, "status": state.status}, _resume_collects(part)))
            return False
        return True

    def _adopt(self, part: Mapping[str, Any]) -> int:
        """Move a part of a dead run into this one (file included); its run is marked."""
        old_run = part["run_id"]
        new = self.store.batches.adopt(old_run, part["part"], self.run_id)
        old_file = self.runs_dir / f"{old_run}.parts" / f"part-{part['part']:04d}.jsonl"
        if old_file.exists():
            parts_dir = self.runs_dir / f"{self.run_id}.parts"
            parts_dir.mkdir(parents=True, exist_ok=True)
            old_file.replace(parts_dir / f"part-{new:04d}.jsonl")
        reason = f"its batches were taken over by run {self.run_id}"
        self.store.runs.update(old_run, state=f"stopped: {reason}", refresh_counts=True)
        old_manifest = manifest_path(self.db, old_run)
        if old_manifest.exists():
            old = read_manifest(old_manifest)
            write_manifest(old_manifest, old.live(state=RunState.STOPPED, reason=reason))
        log.info("batch_taken_over", from_run=old_run, part=part["part"], new_part=new)
        return new


def _resume_collects(part: Mapping[str, Any]) -> str:
    return f"not sent again; 'pipeline resume {part['run_id']}' collects them"


def pending_line(part: Mapping[str, Any], what: str) -> str:
    """One line about a part of another run that holds rows of this one."""
    batch = part["batch_id"] or f"part {part['part']} (prepared)"
    return (
        f"{part['requests']:,} rows are in batch {batch} of run {part['run_id']}, "
        f"still {part['status']}: {what}"
    )
