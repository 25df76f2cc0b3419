"""Plan once: a job's input rows become work items — send, record, or skip.

::

    rows (sources) ──▶ request keys ──▶ what the store has seen of them ──▶ render ──▶ WorkItem

Every consumer of a job's rows reads them through one ``Planner``: the online executor, the batch
executor and ``pipeline estimate``. For each row it decides, in input order:

``Send(request)``
    the rendered request, to send online or to write into a batch part;
``Record(result)``
    an input error, recorded without sending anything: a row that could not be read, a row
    missing a template field, a prompt longer than the model's context, or a second row with
    the same id as an earlier one (``duplicate_id``, naming the file and line of the first);
``Skip(row, reason)``
    ``done``: an ``ok`` result exists under this request version (any run), or this run
    recorded this very row already (a resumed run does not retry what it recorded);
    ``submitted``: this run put the row in one of its batches; ``pending``: the row is in a
    batch of another run that nobody has collected yet (never sent twice); ``filtered``: a
    rerun did not ask for it.

A row is identified by its request key (row id under the request version, and the content of the
files it attaches, see ``Renderer.key``). The store answers
what it has seen of a chunk's keys (``KeyLookup``); the planner also remembers the keys it planned
itself until their results are committed (``forget``), so two rows with the same id are caught
whether the first one's answer is still in flight or already in the database, while memory stays
bounded by the rows in flight rather than by the input.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from .errors import ConfigError, InputError
from .job import Job
from .records import BadRow, Request, ResultBuilder, Row, RowResult
from .render import Renderer, template_fields
from .sources import FileRows, RowSource, field_names, input_files

__all__ = [
    "KeyLookup",
    "Planner",
    "Record",
    "RowFilter",
    "Seen",
    "Send",
    "Skip",
    "SkipReason",
    "Unrendered",
    "WorkItem",
    "check_fields",
]

SkipReason = Literal["done", "submitted", "pending", "filtered"]


@dataclass(frozen=True, slots=True)
class Send:
    request: Request


@dataclass(frozen=True, slots=True)
class Record:
    result: RowResult
    rendered: bool = False  # the row was read and rendered, and rendering found the problem


@dataclass(frozen=True, slots=True)
class Skip:
    key: str
    source: str
    line: int
    reason: SkipReason
    seen: Seen | None = None  # for 'pending': the batch it waits in


@dataclass(frozen=True, slots=True)
class Unrendered:
    """A row to send that the planner was told not to render (``pipeline estimate`` samples)."""

    row: Row
    key: str


WorkItem = Send | Record | Skip | Unrendered


@dataclass(frozen=True, slots=True)
class Seen:
    """One thing the store holds for a request key.

    ``kind``: ``ok`` (an ok result), ``recorded`` (any other result), ``batched`` (in a batch
    part with no result yet). ``batch_id`` is the batch of a ``batched`` row (None while the
    part is only prepared); ``status`` that batch's last known status.
    """

    kind: Literal["ok", "recorded", "batched"]
    run_id: str
    source: str
    line: int
    batch_id: str | None = None
    status: str | None = None


class KeyLookup(Protocol):
    """What the store has seen of some request keys (implemented by ``Store``)."""

    def seen(
        self,
        keys: Sequence[str],
        *,
        run_id: str,
        near: tuple[str, int, int] | None = None,
    ) -> Mapping[str, Sequence[Seen]]:
        """For each key it knows: its ``ok`` results (any run), the results ``run_id``
        recorded, and the batch parts (of any run) that hold it without a result yet.
        ``near`` = (source, first line, last line) of the keys' rows, a hint for speed."""
        ...


@dataclass(frozen=True, slots=True)
class RowFilter:
    """Only these rows are sent (``pipeline rerun --failed``): request keys that failed, and
    the (source, line) of input errors, whose keys change once the input is fixed."""

    keys: frozenset[str] = frozenset()
    lines: frozenset[tuple[str, int]] = frozenset()

    def admits(self, key: str, source: str, line: int) -> bool:
        return key in self.keys or (source, line) in self.lines


class Planner:
    """Turns chunks of input rows into work items for one run (see the module docstring).

    ``results`` builds the run's input-error results. ``lookup`` is the store (None: nothing is
    known, e.g. an estimate without a database). ``only``: a rerun's filter. ``resend_batched``:
    send rows this run put in a batch that did not answer them (batch mode's online pass).
    ``context_window``: rows whose prompt estimate plus ``max_tokens`` pass it are input errors,
    unless ``overflow(request)`` says another model takes them (``[request.fallback]`` with
    ``context_exceeded``): those are sent, and the executor sends them to it.
    ``look_up_first``: ask the store from the first chunk on (False when it cannot know any key
    yet: a new request version). ``track_duplicates=False`` remembers nothing planned (an
    estimate, which commits nothing, would remember every row).
    """

    def __init__(
        self,
        renderer: Renderer,
        results: ResultBuilder,
        *,
        lookup: KeyLookup | None = None,
        only: RowFilter | None = None,
        resend_batched: bool = False,
        context_window: int | None = None,
        look_up_first: bool = True,
        track_duplicates: bool = True,
        overflow: Callable[[Request], bool] | None = None,
    ) -> None:
        self.overflow = overflow
        self.renderer = renderer
        self.results = results
        self.run_id = results.run_id
        self.lookup = lookup
        self.only = only
        self.resend_batched = resend_batched
        self.context_window = context_window
        # Whether the store can know any key yet: a new request version's first run skips the
        # look-ups until it has committed something of its own.
        self._look_up = lookup is not None and look_up_first
        self._track = track_duplicates
        # Keys planned by this process whose results are not committed yet → (source, line).
        self._open: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()
        # Rows planned for sending that attach files, and their pages (an image is one page):
        # the run's manifest records them, and the report prices a page from them.
        self.attached_rows = 0
        self.attached_pages = 0

    @property
    def prompt_hash(self) -> str:
        return self.renderer.prompt_hash

    def forget(self, results: Iterable[RowResult]) -> None:
        """These results are committed (or their rows are in a recorded batch part): the store
        answers for their keys from now on."""
        with self._lock:
            for result in results:
                where = self._open.get(result.request_key)
                if where is not None and where == (result.source, result.line):
                    del self._open[result.request_key]
            if self.lookup is not None:
                self._look_up = True

    def forget_rows(self, rows: Iterable[tuple[str, str, str, int]]) -> None:
        """Like ``forget``, for the (key, row id, source, line) of rows recorded in a batch
        part."""
        with self._lock:
            for key, _, source, line in rows:
                if self._open.get(key) == (source, line):
                    del self._open[key]
            if self.lookup is not None:
                self._look_up = True

    def plan(
        self, chunk: Sequence[Row | BadRow], *, render: Callable[[str], bool] | None = None
    ) -> list[WorkItem]:
        """The work items of one chunk of rows, in input order. Blocking (it may ask the
        store): call it from a worker thread in async code. ``render(key)`` False leaves a row to
        send unrendered (``Unrendered``)."""
        key_of = self.renderer.key  # the row id under the request version (and its files' hashes)
        keys = [key_of(item) for item in chunk]
        # What this process has in flight is read before the store is asked: a key committed
        # (and forgotten) in between is then in the store's answer.
        with self._lock:
            planned = {k: self._open[k] for k in keys if k in self._open}
        seen: Mapping[str, Sequence[Seen]] = {}
        if self._look_up and self.lookup is not None and chunk:
            seen = self.lookup.seen(keys, run_id=self.run_id, near=_near(chunk))
        items: list[WorkItem] = []
        open_now: dict[str, tuple[str, int]] = {}
        for item, key in zip(chunk, keys, strict=True):
            source, line = item.source, item.line
            first = planned.get(key) or open_now.get(key)
            decided = self._decide(key, item.row_id, source, line, seen.get(key, ()), first)
            if decided is not None:
                items.append(decided)
                continue
            if isinstance(item, BadRow):
                result = self.results.input_error(
                    key, item.row_id, source, line, item.error_type, item.error
                )
                items.append(Record(result))
            elif render is not None and not render(key):
                items.append(Unrendered(item, key))
            else:
                items.append(self._render(item, key))
            open_now[key] = (source, line)
        if open_now and self._track:
            with self._lock:
                self._open.update(open_now)
        return items

    def _decide(
        self,
        key: str,
        row_id: str,
        source: str,
        line: int,
        seen: Sequence[Seen],
        first: tuple[str, int] | None,
    ) -> WorkItem | None:
        """Skip, or record as a duplicate; None: plan the row."""
        mine = [s for s in seen if s.run_id == self.run_id]
        for s in mine:
            if (s.source, s.line) == (source, line):
                if s.kind != "batched":
                    return Skip(key, source, line, "done")
                if not self.resend_batched:
                    return Skip(key, source, line, "submitted")
                break
        else:
            if mine:
                first = min((s.source, s.line) for s in mine)
        if first is not None and first != (source, line):
            return Record(self._duplicate(key, row_id, source, line, first))
        if any(s.kind == "ok" for s in seen):
            return Skip(key, source, line, "done")
        pending = next((s for s in seen if s.kind == "batched" and s.run_id != self.run_id), None)
        if pending is not None:
            return Skip(key, source, line, "pending", pending)
        if self.only is not None and not self.only.admits(key, source, line):
            return Skip(key, source, line, "filtered")
        return None

    def _duplicate(
        self, key: str, row_id: str, source: str, line: int, first: tuple[str, int]
    ) -> RowResult:
        return self.results.input_error(
            key,
            row_id,
            source,
            line,
            "duplicate_id",
            f"{source} line {line}: the same row id as {first[0]} line {first[1]}, which is "
            "sent instead; give every row its own id ([input] id), or drop the repeated row",
        )

    def _render(self, row: Row, key: str) -> Send | Record:
        try:
            request = self.renderer.render(row, key)
        except InputError as exc:
            return Record(
                self.results.input_error(
                    key, row.row_id, row.source, row.line, exc.error_type, str(exc)
                ),
                rendered=True,
            )
        window = self.context_window
        if (
            window
            and request.est_total_tokens > window
            and (self.overflow is None or not self.overflow(request))
        ):
            return Record(
                self.results.input_error(
                    key,
                    row.row_id,
                    row.source,
                    row.line,
                    "context_exceeded",
                    f"{row.source} line {row.line} (row {row.row_id}): the prompt is about "
                    f"{request.est_input_tokens:,} tokens and max_tokens is "
                    f"{request.max_tokens:,}, more than the model's context of {window:,}; "
                    "shorten the row or the template, or lower [request].max_tokens",
                ),
                rendered=True,
            )
        if request.attachments:
            self.attached_rows += 1
            self.attached_pages += sum(max(a.pages, 1) for a in request.attachments)
        return Send(request)


def _near(chunk: Sequence[Row | BadRow]) -> tuple[str, int, int] | None:
    first, last = chunk[0], chunk[-1]
    return (first.source, first.line, last.line) if first.source == last.source else None


def check_fields(job: Job, source: RowSource | None = None, *, rows: int = 10_000) -> None:
    """Raise ConfigError (one line, naming the field and the file) when the prompt or an
    attachment template uses a field that no row of an input file has: every row of that file
    would fail. Parquet files answer from their schema; JSONL files from their first ``rows``
    readable rows; documents have their fixed fields; rows from Python (``source``) from their
    first ``rows`` rows, when they can be read twice. Called before anything is sent (the
    start of a run, ``pipeline estimate``)."""
    used: dict[str, str] = {}
    for template in job.request.attachments:
        for name in template_fields(template):
            used.setdefault(name, "[request].attachments")
    for name in template_fields(job.request.prompt):
        used[name] = "[request].prompt"
    if not used:
        return
    if source is not None and not isinstance(source, FileRows):
        if source.reiterable:
            _check_named(job, used, _python_field_names(source, used, rows), "the rows given")
        return
    files = source.files if isinstance(source, FileRows) else input_files(job.input.path)
    for path in files:
        names = field_names(path, used, rows=rows)
        if names is None:
            continue  # no readable row: each is recorded for what it is
        for name, where in used.items():
            if name not in names:
                have = sorted(names)
                listed = ", ".join(have[:12]) + (", ..." if len(have) > 12 else "")
                raise ConfigError(
                    f"{where} uses {{{name}}}, a field the rows of {path} do not have (they have: "
                    f"{listed or 'no fields'}); fix the template or the input",
                    path=job.path,
                    key="request.attachments" if "attach" in where else "request.prompt",
                )


def _python_field_names(
    source: RowSource, wanted: Mapping[str, str], rows: int
) -> frozenset[str] | None:
    """The fields of the first ``rows`` rows from Python (stops once every wanted one is seen)."""
    seen: set[str] = set()
    missing = set(wanted)
    readable = 0
    for chunk in source.chunks(256):
        for item in chunk:
            if isinstance(item, BadRow):
                continue
            readable += 1
            if len(seen) < 1000:
                seen.update(str(k) for k in item.fields)
            missing.difference_update(item.fields)
            if not missing or readable >= rows:
                return frozenset(seen)
    return frozenset(seen) if readable else None


def _check_named(
    job: Job, used: Mapping[str, str], names: frozenset[str] | None, what: str
) -> None:
    if names is None:
        return
    for name, where in used.items():
        if name not in names:
            have = sorted(names)
            listed = ", ".join(have[:12]) + (", ..." if len(have) > 12 else "")
            raise ConfigError(
                f"{where} uses {{{name}}}, a field {what} do not have (they have: "
                f"{listed or 'no fields'}); fix the template or the rows",
                path=job.path,
                key="request.attachments" if "attach" in where else "request.prompt",
            )
