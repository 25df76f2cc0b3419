"""What a job will cost and how long it will take, before anything is sent.

``pipeline estimate JOB`` calls :func:`estimate_job` and prints :func:`render_estimate`. Nothing
here talks to a provider; the input is read once, streaming, and the results database (if the
job's ``[output] db`` exists) is opened read-only.

:func:`survey` is what a run needs to know of its input before it sends anything, in one read:
the fingerprint of every file (for the manifest, so that ``resume`` notices a changed input),
the number of rows (for the progress bar) and, when the run has a budget to check, the
estimate.

Method
======

Rows
    Every row of the input is read and planned as a run would plan it (``pipeline.plan``), so
    the row counts are exact. A row is *already done* when its request key (row id under this
    request version, ``prompt_hash``) has an ``ok`` result in the database, and *in open
    batches* when a batch an earlier run submitted holds it and nobody has collected it yet:
    exactly the rows ``pipeline run`` would not send. Unreadable rows, rows missing a template
    field, rows longer than the context and repeated row ids are *bad input*: recorded, never
    sent, free.

Input tokens
    Each row still to send is rendered and its prompt estimated as the runner's rate limiter
    does (``Renderer`` / ``render.estimate_tokens``: four characters a token, plus a few tokens
    of chat framing per message). Inputs of more than ``sample_limit`` rows (20,000) are
    estimated from a deterministic sample instead: about one row to send in n (n = total rows /
    ``sample_limit``, rounded up), chosen by the row's request key (a hash, so the sample is the
    same every time and does not alias with a pattern that repeats in the input), scaled up to
    all rows to send; so is the share of them that would fail to render. Real tokenizers count
    English close to four characters a token; code, CJK text and emoji take more tokens per
    character, and are underestimated.

Output tokens
    *Worst case*: every answer runs to ``max_tokens``. *Expected*: the average output of this
    job's earlier ``ok`` results with the same model (same request version preferred, then any),
    capped at ``max_tokens``; without such results, the average length of the job's example
    answers when it has few-shot examples, else ``max_tokens`` again (nothing better to go on:
    it errs high).

Cost
    Tokens times the job's price (``cost.price_for``: the job's ``[pricing]``, else genai-prices)
    online and at the batch price, expected and worst case. ``None`` when the price is unknown.
    The expected cost counts the prompt cache (``render.cached_prefix_tokens``): the first
    request writes the stable prefix (Anthropic charges a cache write), every later one reads
    it at the cache-read price. The worst case counts no cache at all.

Time
    Online, at the configured limits: rows to send / the lowest of ``requests_per_minute``,
    ``tokens_per_minute`` / tokens per row (estimated input + expected output: the rate limiter
    reserves ``max_tokens`` and gives back what an answer did not use) and ``concurrency`` /
    latency. Latency is the median of earlier ok online answers of this job and model, else
    ``DEFAULT_LATENCY_S`` (override: ``latency_s``). Retries and 429s are not modelled. A batch
    job takes up to the providers' 24-hour window instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .documents import DOCUMENT_SUFFIXES
from .errors import StoreError
from .job import Job, LimitsSpec
from .job.pricing import Price, cost_usd, fallback_price_for, format_usd, price_for
from .plan import Planner, Send, Skip, Unrendered, check_fields
from .records import ResultBuilder, Usage
from .render import (
    REPLY_OVERHEAD_TOKENS,
    Renderer,
    cached_prefix_tokens,
    estimate_tokens,
)
from .sources import FileRows, Fingerprint, RowSource, fingerprint, row_source
from .store import Store

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "DEFAULT_LATENCY_S",
    "SAMPLE_LIMIT",
    "Estimate",
    "Survey",
    "estimate_job",
    "render_estimate",
    "survey",
    "throughput",
]

SAMPLE_LIMIT = 20_000
"""Inputs with more rows than this are estimated from a deterministic sample of about as many."""

DEFAULT_LATENCY_S = 1.0
"""Seconds per answer assumed for the concurrency limit when no earlier answer tells."""

BATCH_WINDOW_S = 24 * 3600.0
"""Both providers promise batch results within 24 hours."""

_CHUNK = 2048


@dataclass(frozen=True, slots=True)
class Estimate:
    """A job's estimate, as plain data (``--json`` prints it as it is).

    Token and cost figures cover the rows still to send. Costs are US dollars, ``None`` when the
    model's price is unknown. ``time_s`` is the online time at the configured limits.
    """

    job: str
    provider: str
    model: str
    mode: str
    prompt_hash: str
    rows_total: int
    rows_done: int
    rows_input_error: int
    rows_to_send: int
    rows_rendered: int
    sampled: bool
    input_tokens: int
    input_tokens_per_row: float
    output_tokens_expected: int
    output_tokens_worst: int
    output_tokens_per_row: float
    output_basis: str
    price_source: str | None
    cost_online_expected: float | None
    cost_online_worst: float | None
    cost_batch_expected: float | None
    cost_batch_worst: float | None
    rows_per_minute: float | None
    limited_by: str
    latency_s: float
    latency_basis: str
    time_s: float | None
    notes: tuple[str, ...] = ()
    cached_tokens_per_row: int = 0
    rows_in_batches: int = 0
    """Rows in batches earlier runs submitted and nobody collected yet: never sent again."""
    fallback: str | None = None
    """``provider model`` of the job's ``[request.fallback]``, if it has one."""
    cost_fallback_worst: float | None = None
    """Every row sent to the fallback, every answer at max_tokens, at its (online) price; the
    online worst case is the dearer of this and the primary's (a row is paid once, by one of
    them)."""

    @property
    def cost_expected(self) -> float | None:
        """The expected cost in the job's own mode."""
        return self.cost_batch_expected if self.mode == "batch" else self.cost_online_expected

    @property
    def cost_worst(self) -> float | None:
        """The worst-case cost in the job's own mode."""
        return self.cost_batch_worst if self.mode == "batch" else self.cost_online_worst

    def as_dict(self) -> dict[str, Any]:
        """Every field, plus ``cost_expected`` and ``cost_worst`` (the job's mode)."""
        out = asdict(self)
        out["notes"] = list(self.notes)
        out["cost_expected"] = self.cost_expected
        out["cost_worst"] = self.cost_worst
        return out


def throughput(limits: LimitsSpec, *, tokens_per_row: float, latency_s: float) -> tuple[float, str]:
    """Rows a minute at ``limits``, and which limit sets it.

    The lowest of ``requests_per_minute``, ``tokens_per_minute / tokens_per_row`` and
    ``concurrency * 60 / latency_s`` (that many requests in flight, each taking ``latency_s``).
    """
    candidates: list[tuple[float, str]] = [
        (limits.concurrency * 60.0 / max(latency_s, 1e-6), "concurrency")
    ]
    if limits.requests_per_minute is not None:
        candidates.append((limits.requests_per_minute, "requests_per_minute"))
    if limits.tokens_per_minute is not None and tokens_per_row > 0:
        candidates.append((limits.tokens_per_minute / tokens_per_row, "tokens_per_minute"))
    return min(candidates)


@dataclass(frozen=True, slots=True)
class Survey:
    """What a run knows of its input before sending, from one read of it (``survey``).

    ``rows``: how many (None when unknown: a generator of rows). ``fingerprints``: every input
    file's, for the manifest. ``estimate``: when one was asked for."""

    rows: int | None
    fingerprints: tuple[Fingerprint, ...]
    estimate: Estimate | None = None


def survey(
    job: Job,
    source: RowSource | None = None,
    *,
    estimate: bool = False,
    latency_s: float | None = None,
    sample_limit: int = SAMPLE_LIMIT,
    store: Store | None = None,
) -> Survey:
    """Read the input once for what a run must know before it sends anything: the files'
    fingerprints and the number of rows and, with ``estimate``, the estimate (rows are then
    planned as they are read, and the JSONL files hashed from the same bytes). Without an
    estimate, only the files' bytes are read (hashed, their lines counted), not parsed.
    ``source``: rows from Python (else the job's files). A source that can be read only once
    (a generator) gets no estimate: it is read by the run itself."""
    source = source or row_source(job.input)
    if not estimate or not source.reiterable:
        if isinstance(source, FileRows):
            prints, rows = source.survey()
            return Survey(rows, tuple(prints))
        return Survey(source.count(), ())
    prints = []
    est = estimate_job(
        job,
        latency_s=latency_s,
        sample_limit=sample_limit,
        store=store,
        source=source,
        fingerprints=prints,
    )
    if isinstance(source, FileRows):
        hashed = {p["path"] for p in prints}
        prints += [fingerprint(f) for f in source.files if str(f) not in hashed]
        order = {str(f): i for i, f in enumerate(source.files)}
        prints.sort(key=lambda p: order.get(p["path"], 0))
    return Survey(est.rows_total, tuple(prints), est)


def estimate_job(
    job: Job,
    *,
    latency_s: float | None = None,
    sample_limit: int = SAMPLE_LIMIT,
    store: Store | None = None,
    source: RowSource | None = None,
    fingerprints: list[Fingerprint] | None = None,
) -> Estimate:
    """Estimate ``job``: rows, tokens, cost online and batch, and time (see the module docstring).

    ``store``: the job's database, already open (a run checking its budget); else it is opened
    read-only when it exists. ``source``: rows from Python (else the job's files);
    ``fingerprints`` gets the fingerprint of each JSONL file, hashed while it is read. Raises
    ConfigError when the input cannot be read. A results database that cannot be opened
    (another process is writing it) is noted, and no row counts as done.
    """
    source = source or row_source(job.input)
    check_fields(job, source)
    renderer = Renderer(job.request)
    notes: list[str] = []
    files = source.files if isinstance(source, FileRows) else []
    if job.input.allow_any_path and (job.request.attachments or _documents_input(files)):
        notes.append(
            "[input] allow_any_path = true: files are read from wherever a row's path points "
            "on this machine, and sent to the provider; remove it to keep them inside "
            f"{job.input.root}"
        )
    own = store is None
    if store is None:
        store = _open_store(job, notes)
    try:
        counts = _read_rows(job, renderer, store, source, sample_limit, fingerprints)
        history: dict[str, Any] = {"rows": 0}
        basis_scope = ""
        if store is not None:
            history = store.queries.ok_history(
                job=job.name, model=job.request.model, prompt_hash=renderer.prompt_hash
            )
            basis_scope = "this request version"
            if not history["rows"]:
                history = store.queries.ok_history(job=job.name, model=job.request.model)
                basis_scope = f"job {job.name} with {job.request.model}"
    finally:
        if own and store is not None:
            store.close()

    max_tokens = job.request.max_tokens
    if history["rows"] and history["avg_output_tokens"] is not None:
        out_per_row = min(float(history["avg_output_tokens"]), float(max_tokens))
        output_basis = f"average of {history['rows']:,} earlier ok results of {basis_scope}" + (
            ", capped at max_tokens" if out_per_row < history["avg_output_tokens"] else ""
        )
    elif job.request.examples:
        # The job's worked answers show how long an answer runs.
        lengths = [estimate_tokens(reply) for _, reply in job.request.examples]
        out_per_row = min(sum(lengths) / len(lengths) + REPLY_OVERHEAD_TOKENS, float(max_tokens))
        output_basis = "the length of the job's example answers (no earlier ok result yet)"
    else:
        out_per_row = float(max_tokens)
        output_basis = "max_tokens, as no earlier ok result of this job and model tells"

    to_send = counts.to_send
    in_per_row = counts.tokens / counts.rendered_ok if counts.rendered_ok else 0.0
    input_tokens = round(in_per_row * to_send)
    out_expected = round(out_per_row * to_send)
    out_worst = max_tokens * to_send

    online = price_for(job)
    batch = price_for(job, batch=True)
    # Expected cost counts the prompt cache: the first request writes the stable prefix (an
    # Anthropic write costs more than input), every later one reads it at the cache price.
    cached = cached_prefix_tokens(job.request) if to_send > 1 else 0
    cache = "write" if job.request.provider == "anthropic" else "read"

    if latency_s is not None:
        latency, latency_basis = latency_s, "given"
    elif history.get("p50_latency_ms") is not None:
        latency = float(history["p50_latency_ms"]) / 1000
        latency_basis = "median of earlier ok online answers"
    else:
        latency, latency_basis = DEFAULT_LATENCY_S, "assumed (no earlier online answers)"
    rate, limited_by = throughput(
        job.limits, tokens_per_row=in_per_row + out_per_row, latency_s=latency
    )
    if online is None:
        notes.append(
            f"no price known for {job.request.provider} model {job.request.model!r}: add a "
            "[pricing] table to the job file to get a cost"
        )
    online_worst = _cost(online, input_tokens, out_worst)
    fallback = job.request.fallback
    fallback_worst: float | None = None
    if fallback is not None:
        fallback_price = fallback_price_for(job)
        fallback_worst = _cost(fallback_price, input_tokens, out_worst)
        if fallback_price is None:
            notes.append(
                f"no price known for the fallback, {fallback.provider} model "
                f"{fallback.model!r}: the worst case leaves it out"
            )
        elif online_worst is not None and fallback_worst is not None:
            online_worst = max(online_worst, fallback_worst)
    return Estimate(
        job=job.name,
        provider=job.request.provider,
        model=job.request.model,
        mode=job.request.mode,
        prompt_hash=renderer.prompt_hash,
        rows_total=counts.total,
        rows_done=counts.done,
        rows_in_batches=counts.in_batches,
        rows_input_error=counts.total - counts.done - counts.in_batches - to_send,
        rows_to_send=to_send,
        rows_rendered=counts.rendered,
        sampled=counts.stride > 1,
        input_tokens=input_tokens,
        input_tokens_per_row=in_per_row,
        output_tokens_expected=out_expected,
        output_tokens_worst=out_worst,
        output_tokens_per_row=out_per_row,
        output_basis=output_basis,
        price_source=None if online is None else online.source,
        cost_online_expected=_cost(online, input_tokens, out_expected, cached, to_send, cache),
        cost_online_worst=online_worst,
        cost_batch_expected=_cost(batch, input_tokens, out_expected, cached, to_send, cache),
        cost_batch_worst=_cost(batch, input_tokens, out_worst),
        rows_per_minute=rate,
        limited_by=limited_by,
        latency_s=latency,
        latency_basis=latency_basis,
        time_s=to_send / rate * 60 if rate > 0 else None,
        notes=tuple(notes),
        cached_tokens_per_row=cached,
        fallback=None if fallback is None else f"{fallback.provider} {fallback.model}",
        cost_fallback_worst=fallback_worst,
    )


@dataclass(slots=True)
class _Counts:
    total: int = 0
    done: int = 0
    in_batches: int = 0  # in a batch an earlier run submitted and nobody collected yet
    bad: int = 0  # unreadable rows and repeated ids: exact
    pending: int = 0  # readable rows not done
    rendered_ok: int = 0
    rendered_bad: int = 0  # missing field, bad value, longer than the context
    tokens: int = 0  # estimated input tokens of the rendered_ok rows
    stride: int = 1  # one row to send in this many was rendered

    @property
    def rendered(self) -> int:
        return self.rendered_ok + self.rendered_bad

    @property
    def to_send(self) -> int:
        """Readable rows not done, less the share of them that would fail to render."""
        if not self.rendered:
            return 0
        if self.rendered_bad == 0:
            return self.pending
        return round(self.pending * self.rendered_ok / self.rendered)


def _documents_input(files: list[Path]) -> bool:
    return bool(files) and files[0].name.lower().endswith(DOCUMENT_SUFFIXES)


def _open_store(job: Job, notes: list[str]) -> Store | None:
    if not Path(job.output.db).exists():
        return None
    try:
        return Store(job.output.db, read_only=True)
    except StoreError as exc:
        notes.append(f"{exc}; rows already done are not subtracted")
        return None


def _read_rows(
    job: Job,
    renderer: Renderer,
    store: Store | None,
    source: RowSource,
    sample_limit: int,
    fingerprints: list[Fingerprint] | None,
) -> _Counts:
    """Plan every row as a run would, in one read; render the rows to send whose request key
    falls in the sample (and always the first), the sample thinned by doubling its stride
    whenever it grows past twice ``sample_limit``."""
    ph = renderer.prompt_hash
    results = ResultBuilder(
        job=job.name,
        run_id="",  # no run: only other runs' results and open batches count
        prompt_hash=ph,
        provider=job.request.provider,
        model=job.request.model,
    )
    planner = Planner(
        renderer,
        results,
        lookup=None if store is None else store.results,
        context_window=job.request.context_tokens,
        look_up_first=store is not None and store.results.has_results(ph),
        track_duplicates=False,
    )
    counts = _Counts()
    limit = max(sample_limit, 1)
    # The sampled rows: (key hash, estimated tokens, or None for a row that failed to render).
    sample: list[tuple[int, int | None]] = []
    first: tuple[int, int | None] | None = None

    def sampled(key: str) -> bool:
        return first is None or int(key[:8], 16) % counts.stride == 0

    def keep(key: str, tokens: int | None) -> None:
        nonlocal first, sample
        entry = (int(key[:8], 16), tokens)
        if first is None:
            first = entry
            return
        if entry[0] % counts.stride:
            return  # rendered before the stride last doubled, in the same chunk
        sample.append(entry)
        if len(sample) > 2 * limit:
            counts.stride *= 2
            sample = [e for e in sample if e[0] % counts.stride == 0]

    for chunk in source.chunks(_CHUNK, fingerprints=fingerprints):
        counts.total += len(chunk)
        for item in planner.plan(chunk, render=sampled):
            if isinstance(item, Skip):
                if item.reason == "pending":
                    counts.in_batches += 1
                else:
                    counts.done += 1
            elif isinstance(item, Unrendered):
                counts.pending += 1
            elif isinstance(item, Send):
                counts.pending += 1
                keep(item.request.request_key, item.request.est_input_tokens)
            elif item.rendered:
                counts.pending += 1
                keep(item.result.request_key, None)
            else:
                counts.bad += 1
    for _, tokens in (*([first] if first is not None else []), *sample):
        if tokens is None:
            counts.rendered_bad += 1
        else:
            counts.rendered_ok += 1
            counts.tokens += tokens
    return counts


def _cost(
    price: Price | None,
    input_tokens: int,
    output_tokens: int,
    cached: int = 0,
    rows: int = 0,
    first_request: str = "read",
) -> float | None:
    """Tokens times ``price``; with ``cached`` prefix tokens per row, the first of ``rows``
    writes them to the cache (``first_request="write"``, Anthropic) or pays them as input."""
    reads = cached * max(rows - 1, 0)
    writes = cached if first_request == "write" and rows else 0
    usage = Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=min(reads, input_tokens),
        cache_write_tokens=min(writes, max(input_tokens - reads, 0)),
    )
    return cost_usd(price, usage)


# -- printing ---------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _latency(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def _lines(est: Estimate) -> Iterable[str]:
    yield (
        f"estimate for job {est.job} · {est.provider} {est.model} · mode {est.mode} "
        f"· request version {est.prompt_hash}"
    )
    yield (
        f"rows: {est.rows_total:,} in the input · {est.rows_done:,} already done · "
        + (f"{est.rows_in_batches:,} in open batches · " if est.rows_in_batches else "")
        + f"{est.rows_input_error:,} bad input · {est.rows_to_send:,} to send"
    )
    if not est.rows_to_send:
        how = "no row to send"
    elif est.sampled:
        how = f"a sample of {est.rows_rendered:,} rows rendered, scaled up"
    else:
        how = "every row rendered"
    cache = (
        f"{est.cached_tokens_per_row:,} a row from the prompt cache in the expected cost"
        if est.cached_tokens_per_row
        else "no prompt cache"
    )
    yield (
        f"input tokens: ~{est.input_tokens:,} ({est.input_tokens_per_row:,.1f} a row; {how}; "
        f"{cache})"
    )
    yield (
        f"output tokens: ~{est.output_tokens_expected:,} expected "
        f"({est.output_tokens_per_row:,.1f} a row: {est.output_basis}) · "
        f"{est.output_tokens_worst:,} at most (max_tokens)"
    )
    if est.price_source is None:
        yield "cost: unknown price"
    else:
        yield (
            f"cost online: {format_usd(est.cost_online_expected)} expected, "
            f"{format_usd(est.cost_online_worst)} worst case"
        )
        yield (
            f"cost batch:  {format_usd(est.cost_batch_expected)} expected, "
            f"{format_usd(est.cost_batch_worst)} worst case (half price, within 24 h)"
        )
        yield f"price: {est.price_source}"
    if est.fallback is not None:
        yield (
            f"fallback {est.fallback}: {format_usd(est.cost_fallback_worst)} worst case if every "
            "row goes to it (the online worst case above is the dearer of the two)"
        )
    rate = "–" if est.rows_per_minute is None else f"{est.rows_per_minute:,.0f} rows/min"
    yield (
        f"time online: ~{_duration(est.time_s)} at {rate}, limited by {est.limited_by} "
        f"(latency {_latency(est.latency_s)}: {est.latency_basis}; retries not counted)"
    )
    if est.mode == "batch":
        yield f"time batch: up to {_duration(BATCH_WINDOW_S)} (the providers' batch window)"
    for note in est.notes:
        yield f"note: {note}"


def render_estimate(est: Estimate, console: Console) -> None:
    """Print ``est`` as a few plain lines."""
    for line in _lines(est):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
