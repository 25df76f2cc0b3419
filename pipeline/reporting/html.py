"""``pipeline report --html``: the report as one self-contained HTML page of charts.

Two steps, so the drawing can be tested without a database::

    with Store(db, read_only=True) as store:
        data = collect_html_report(store, job=None, run_id=None, db_path=db)
    Path("report.html").write_text(render_html(data), encoding="utf-8")

:func:`collect_html_report` asks the store for numbers (``store.queries``: ``report()``,
``chart_data()``, ``latency_histogram()``);
:func:`render_html` is pure: plain data in, an HTML string out. The charts are inline SVG drawn
here; the page has no script, no font, no stylesheet and no image to fetch, so it opens the
same offline, from a mail attachment or a CI artefact. Every value from the database is
HTML-escaped.

Charts: cost per day and model (stacked columns), the latency of ok rows (a histogram with p50
and p95 marked), rows that failed by error type, and what the prompt cache saved compared with
paying the full input price for every prompt token: cache reads x (input price - cache-read
price), less cache writes x (cache-write price - input price), at the prices each run recorded
(table ``run_prices``). That figure is ``Report.cache`` (``store.queries.cache_savings``), the
same the text report prints; a run that recorded no price has an unknown saving.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import Final

from ..store import CacheSaving, ModelGroup, Report, Store
from .text import ANALYSIS_SQL, UNKNOWN_PRICE, format_usd

__all__ = [
    "DayCost",
    "FailureType",
    "HtmlReport",
    "LatencyBin",
    "LatencySummary",
    "collect_html_report",
    "latency_bins",
    "nice_ticks",
    "render_html",
]

_EPOCH: Final = date(1970, 1, 1)
_HIST_TARGET_BINS: Final = 20

# Tableau 10: tells ten series apart, colour-blind friendlier than most, prints well.
PALETTE: Final = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#b07aa1",
    "#76b7b2",
    "#edc948",
    "#ff9da7",
    "#9c755f",
    "#e15759",
    "#bab0ac",
)
# Rows that are not ok, by status: colour and what the status means.
_STATUSES: Final = {
    "failed": ("#e15759", "the provider refused the row or its attempts ran out"),
    "input_error": ("#f28e2b", "bad input: unreadable line, missing field, prompt too long"),
    "invalid": ("#b07aa1", "the answer did not match the job's schema"),
}
_OTHER_STATUS_COLOUR: Final = "#9c755f"
_LATENCY_COLOUR: Final = "#4e79a7"
_SAVED_COLOUR: Final = "#59a14f"


# --------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True, slots=True)
class DayCost:
    """What one model cost on one day (UTC). ``cost_usd`` is ``None`` when no row of that
    day and model had a known price; ``unpriced_rows`` used tokens at an unknown price."""

    day: date
    provider: str | None
    model: str | None
    rows: int
    cost_usd: float | None
    unpriced_rows: int = 0


@dataclass(frozen=True, slots=True)
class LatencyBin:
    """Ok rows whose latency was in ``[start_ms, end_ms)``; ``end_ms`` ``None``: from
    ``start_ms`` up (the slow tail beyond the 99th percentile)."""

    start_ms: float
    end_ms: float | None
    rows: int


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency of the ok rows: percentiles and a histogram (empty when no ok row had one)."""

    rows: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    bins: tuple[LatencyBin, ...] = ()


@dataclass(frozen=True, slots=True)
class FailureType:
    """Rows that were not ok with one ``status`` and ``error_type``, and one of their errors."""

    status: str
    error_type: str
    rows: int
    example: str | None = None


@dataclass(frozen=True, slots=True)
class HtmlReport:
    """Everything :func:`render_html` draws, as plain data."""

    report: Report
    cost_by_day: tuple[DayCost, ...]
    latency: LatencySummary
    failures: tuple[FailureType, ...]
    generated_at: datetime = field(default_factory=lambda: datetime.now(tz=UTC))
    db_path: str | None = None

    @property
    def cache(self) -> tuple[CacheSaving, ...]:
        """The prompt cache by (provider, model, mode): the report's own figures."""
        return self.report.cache


# --------------------------------------------------------------------------------------------
# Pure arithmetic


def _nice_step(raw: float, *, whole: bool = False) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is at least ``raw`` (> 0); with ``whole``, a
    whole number (no 2.5, nothing below 1), for counts."""
    if whole and raw <= 1:
        return 1.0
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        step = factor * power
        if whole and (factor == 2.5 and power < 10):
            continue
        if step >= raw * (1 - 1e-9):
            return step
    return 10 * power  # pragma: no cover - the loop always returns


def nice_ticks(top: float, count: int = 5, *, whole: bool = False) -> list[float]:
    """Axis ticks from 0 in round steps, the last at or above ``top``: ``0, 0.05, 0.1, ...``;
    with ``whole``, whole numbers only (for counts of rows)."""
    if not math.isfinite(top) or top <= 0:
        return [0.0, 1.0]
    step = _nice_step(top / count, whole=whole)
    n = math.ceil(top / step - 1e-9)
    return [round(i * step, 12) for i in range(n + 1)]


def latency_bins(min_ms: float, p99_ms: float) -> tuple[float, float, int]:
    """``(start_ms, width_ms, bins)``: about 20 round-width bins from ``min_ms`` to ``p99_ms``
    (latencies above them go to one last bin, so one slow outlier cannot squash the chart)."""
    span = p99_ms - min_ms
    if span > 0:  # bins no narrower than a microsecond
        width = _nice_step(max(span / _HIST_TARGET_BINS, 0.001))
    else:
        width = _nice_step(max(abs(p99_ms), 1.0) / 10)
    start = math.floor(min_ms / width) * width
    bins = max(1, math.floor((p99_ms - start) / width) + 1)
    while start + width * bins <= p99_ms:  # float rounding can leave p99 on the last edge
        bins += 1
    return start, width, bins


# --------------------------------------------------------------------------------------------
# Collecting


def collect_html_report(
    store: Store,
    *,
    job: str | None = None,
    run_id: str | None = None,
    db_path: str | None = None,
    now: datetime | None = None,
) -> HtmlReport:
    """Ask ``store`` for everything the HTML report shows (optionally one job and/or run)."""
    report = store.queries.report(job=job, run_id=run_id)
    raw = store.queries.chart_data(job=job, run_id=run_id)
    cost_by_day = tuple(
        DayCost(
            day=_EPOCH + timedelta(days=r["day"]),
            provider=r["provider"],
            model=r["model"],
            rows=r["rows"],
            cost_usd=r["cost_usd"],
            unpriced_rows=r["unpriced_rows"],
        )
        for r in raw["cost_by_day"]
    )
    failures = tuple(
        FailureType(r["status"], r["error_type"], r["rows"], r["example"]) for r in raw["failures"]
    )
    lat = raw["latency"][0]
    latency = LatencySummary()
    if lat["rows"]:
        start, width, n = latency_bins(lat["min_ms"], lat["p99_ms"])
        counts = store.queries.latency_histogram(
            start_ms=start, width_ms=width, bins=n, job=job, run_id=run_id
        )
        bins = [
            LatencyBin(start + i * width, start + (i + 1) * width, c)
            for i, c in enumerate(counts[:n])
        ]
        if counts[n]:
            bins.append(LatencyBin(start + n * width, None, counts[n]))
        latency = LatencySummary(
            rows=lat["rows"],
            p50_ms=lat["p50_ms"],
            p95_ms=lat["p95_ms"],
            p99_ms=lat["p99_ms"],
            max_ms=lat["max_ms"],
            bins=tuple(bins),
        )
    return HtmlReport(
        report=report,
        cost_by_day=cost_by_day,
        latency=latency,
        failures=failures,
        generated_at=now or datetime.now(tz=UTC),
        db_path=db_path,
    )


# --------------------------------------------------------------------------------------------
# Formatting


def _e(value: object) -> str:
    """``value`` as text, safe inside HTML and SVG elements and attributes."""
    return escape(str(value), quote=True)


def _usd_short(value: float) -> str:
    """A dollar amount for an axis or a bar: three significant digits, no exponent."""
    if value == 0:
        return "$0"
    if abs(value) >= 100:
        return f"${value:,.0f}"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    decimals = min(8, 2 - math.floor(math.log10(abs(value))))
    return f"${value:.{decimals}f}".rstrip("0")


def _count_short(value: float) -> str:
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:.3g}M"
    if abs(value) >= 10_000:
        return f"{value / 1_000:.3g}k"
    return f"{value:,.0f}"


def _tokens(value: int) -> str:
    return f"{value:,}" if value < 1_000_000 else f"{value / 1_000_000:.2f}M"


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 100:
        return f"{value:,.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def _edge(value: float, width: float) -> str:
    """A bin edge with as many decimals as the bin width needs."""
    decimals = 0
    while decimals < 4 and abs(round(width, decimals) - width) > 1e-9 * max(1.0, width):
        decimals += 1
    return f"{value:,.{decimals}f}"


def _n_rows(n: int) -> str:
    return "1 row" if n == 1 else f"{n:,} rows"


def _pct(part: float, whole: float) -> str:
    if whole <= 0:
        return "–"
    share = 100 * part / whole
    return f"{share:.1f}%" if share < 99.95 else "100%"


def _day(d: date, *, with_year: bool) -> str:
    return f"{d:%b} {d.day}, {d.year}" if with_year else f"{d:%b} {d.day}"


def _text_width(text: str, size: float) -> float:
    """Rough width of ``text`` in a sans-serif font of ``size`` px (for layout only)."""
    return len(text) * size * 0.58


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------
# Series (one per provider and model, coloured the same in every chart)


@dataclass(frozen=True, slots=True)
class _Series:
    key: tuple[str | None, str | None]
    label: str
    colour: str


def _series(report: HtmlReport) -> dict[tuple[str | None, str | None], _Series]:
    """Every (provider, model), most expensive first, with its label and colour."""
    cost: dict[tuple[str | None, str | None], float] = {}
    for g in report.report.groups:
        key = (g.provider, g.model)
        cost[key] = cost.get(key, 0.0) + (g.cost_usd or 0.0)
    for d in report.cost_by_day:
        cost.setdefault((d.provider, d.model), 0.0)
    for c in report.cache:
        cost.setdefault((c.provider, c.model), 0.0)
    keys = sorted(cost, key=lambda k: (-cost[k], k[1] or "", k[0] or ""))
    names = [k[1] for k in keys]
    out = {}
    for i, key in enumerate(keys):
        provider, model = key
        label = model or "(no model)"
        if names.count(model) > 1 and provider:
            label = f"{provider}/{label}"
        out[key] = _Series(key, label, PALETTE[i % len(PALETTE)])
    return out


# --------------------------------------------------------------------------------------------
# SVG charts

_W: Final = 960  # viewBox width of every chart; the page scales it to its column


def _svg(chart: str, height: float, body: Iterable[str], label: str) -> str:
    return (
        f'<svg class="chart" data-chart="{chart}" viewBox="0 0 {_W} {height:.0f}" '
        f'role="img" aria-label="{_e(label)}">' + "".join(body) + "</svg>"
    )


def _text(
    x: float, y: float, text: str, *, cls: str, anchor: str = "middle", extra: str = ""
) -> str:
    return (
        f'<text class="{cls}" x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>'
        f"{_e(text)}</text>"
    )


def _bar(
    x: float, y: float, w: float, h: float, colour: str, title: str, data: dict[str, str]
) -> str:
    attrs = "".join(f' data-{k}="{_e(v)}"' for k, v in data.items())
    return (
        f'<rect class="bar" x="{x:.2f}" y="{y:.2f}" width="{max(w, 0.5):.2f}" '
        f'height="{max(h, 0.0):.2f}" fill="{colour}"{attrs}><title>{_e(title)}</title></rect>'
    )


def _y_axis(
    ticks: Sequence[float],
    fmt: Callable[[float], str],
    *,
    left: float,
    right: float,
    y_of: Callable[[float], float],
    title: str,
) -> list[str]:
    out = []
    for t in ticks:
        y = y_of(t)
        cls = "axis" if t == 0 else "grid"
        out.append(f'<line class="{cls}" x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(_text(left - 8, y + 4, fmt(t), cls="tick", anchor="end"))
    top = y_of(ticks[-1])
    out.append(_text(left - 8, top - 14, title, cls="axis-title", anchor="end"))
    return out


def _cost_chart(report: HtmlReport, series: dict[tuple[str | None, str | None], _Series]) -> str:
    """Stacked columns: one per day from the first to the last, one segment per model."""
    days = sorted({d.day for d in report.cost_by_day})
    first, last = days[0], days[-1]
    all_days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    by_day: dict[date, list[DayCost]] = {d: [] for d in all_days}
    for cost in report.cost_by_day:
        by_day[cost.day].append(cost)
    order = list(series)
    totals = {d: sum(c.cost_usd or 0.0 for c in by_day[d]) for d in all_days}
    ticks = nice_ticks(max(totals.values()))

    left, right, top, bottom = 84.0, _W - 16.0, 34.0, 290.0
    height = bottom + 44
    plot_h = bottom - top

    def y_of(v: float) -> float:
        return bottom - plot_h * v / ticks[-1]

    out = _y_axis(ticks, _usd_short, left=left, right=right, y_of=y_of, title="US dollars")
    slot = (right - left) / len(all_days)
    bar_w = min(slot * 0.72, 96.0)
    label_every = max(1, math.ceil(len(all_days) / max(1, int((right - left) // 96))))
    with_year = first.year != last.year
    for i, d in enumerate(all_days):
        x = left + slot * i + (slot - bar_w) / 2
        y = bottom
        for c in sorted(by_day[d], key=lambda c: order.index((c.provider, c.model))):
            if not c.cost_usd:
                continue
            s = series[(c.provider, c.model)]
            h = plot_h * c.cost_usd / ticks[-1]
            y -= h
            title = f"{s.label}, {d.isoformat()}: {format_usd(c.cost_usd)} ({_n_rows(c.rows)})"
            data = {"series": s.label, "day": d.isoformat(), "value": f"{c.cost_usd:.6f}"}
            out.append(_bar(x, y, bar_w, h, s.colour, title, data))
        unpriced = sum(c.unpriced_rows for c in by_day[d])
        if slot >= 44 and by_day[d]:
            label = _usd_short(totals[d]) if totals[d] or not unpriced else "?"
            out.append(_text(x + bar_w / 2, y - 6, label, cls="value"))
        if i % label_every == 0:
            out.append(
                _text(
                    left + slot * (i + 0.5), bottom + 18, _day(d, with_year=with_year), cls="tick"
                )
            )
    out.append(_text((left + right) / 2, bottom + 40, "day (UTC)", cls="axis-title"))
    return _svg("cost-per-day", height, out, "Cost per day and model")


def _histogram(latency: LatencySummary) -> str:
    """Columns side by side, one per latency bin; p50 and p95 drawn as dashed lines."""
    bins = latency.bins
    regular = [b for b in bins if b.end_ms is not None]
    width = (regular[0].end_ms or 0.0) - regular[0].start_ms
    ticks = nice_ticks(max(b.rows for b in bins), whole=True)
    left, right, top, bottom = 84.0, _W - 16.0, 34.0, 290.0
    height = bottom + 44
    plot_h = bottom - top
    slot = (right - left) / len(bins)

    def y_of(v: float) -> float:
        return bottom - plot_h * v / ticks[-1]

    def x_of(ms: float) -> float:
        return left + slot * (ms - bins[0].start_ms) / width

    out = _y_axis(ticks, _count_short, left=left, right=right, y_of=y_of, title="rows")
    gap = 1.0 if slot > 6 else 0.0
    for i, b in enumerate(bins):
        x = left + slot * i
        h = max(plot_h * b.rows / ticks[-1], 1.5 if b.rows else 0.0)  # 1 row stays visible
        if b.end_ms is None:
            span = f"{_edge(b.start_ms, width)} ms and slower"
            colour = "url(#tail)"
        else:
            span = f"{_edge(b.start_ms, width)}–{_edge(b.end_ms, width)} ms"
            colour = _LATENCY_COLOUR
        data = {"start-ms": f"{b.start_ms:g}", "rows": str(b.rows)}
        if b.rows:
            out.append(
                _bar(
                    x + gap,
                    bottom - h,
                    slot - 2 * gap,
                    h,
                    colour,
                    f"{span}: {_n_rows(b.rows)}",
                    data,
                )
            )
            if slot >= 30:
                out.append(_text(x + slot / 2, bottom - h - 6, _count_short(b.rows), cls="value"))
    label_every = max(1, math.ceil((len(regular) + 1) / max(1, int((right - left) // 64))))
    for i in range(0, len(regular) + 1, label_every):
        edge = bins[0].start_ms + i * width
        x = left + slot * i
        out.append(
            f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{bottom}" y2="{bottom + 5}"/>'
        )
        out.append(_text(x, bottom + 18, _edge(edge, width), cls="tick"))
    if len(bins) > len(regular):
        x = left + slot * (len(bins) - 0.5)
        out.append(_text(x, bottom + 34, "slower", cls="tick"))
    for name, value, anchor, dx in (
        ("p50", latency.p50_ms, "end", -5),
        ("p95", latency.p95_ms, "start", 5),
    ):
        if value is None:
            continue
        x = min(x_of(value), left + slot * len(regular))
        label = f"{name} {_ms(value)}"
        y = top - 6
        room = (x - left) if anchor == "end" else (right - x)
        if _text_width(label, 12) + 5 > room:  # no room on its side: the other side, lower
            anchor, dx, y = ("start", 5, y + 14) if anchor == "end" else ("end", -5, y + 14)
        out.append(
            f'<line class="marker" data-marker="{name}" x1="{x:.1f}" x2="{x:.1f}" '
            f'y1="{top - 16}" y2="{bottom}"/>'
        )
        out.append(_text(x + dx, y, label, cls="marker-label", anchor=anchor))
    out.append(_text((left + right) / 2, bottom + 40, "latency (ms)", cls="axis-title"))
    defs = (
        '<defs><pattern id="tail" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#a9c0da"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{_LATENCY_COLOUR}" stroke-width="3"/>'
        "</pattern></defs>"
    )
    return _svg("latency", height, [defs, *out], "Latency of ok rows")


@dataclass(frozen=True, slots=True)
class _HBar:
    label: str
    value: float | None  # None: no bar (e.g. unknown price), the text says why
    text: str
    colour: str
    title: str
    data: dict[str, str]


def _hbar_chart(
    chart: str,
    items: Sequence[_HBar],
    fmt: Callable[[float], str],
    label: str,
    *,
    whole: bool = False,
) -> str:
    """Horizontal bars, one per item, labelled on the left, valued on the right."""
    row_h, top = 34.0, 8.0
    label_w = min(280.0, max(_text_width(i.label, 13) for i in items) + 16)
    text_w = min(340.0, max(_text_width(i.text, 13) for i in items) + 16)
    left, right = label_w, _W - text_w
    bottom = top + row_h * len(items)
    height = bottom + 40
    ticks = nice_ticks(max((i.value or 0.0) for i in items), whole=whole)

    def x_of(v: float) -> float:
        return left + (right - left) * v / ticks[-1]

    out = []
    for t in ticks:
        x = x_of(t)
        cls = "axis" if t == 0 else "grid"
        out.append(f'<line class="{cls}" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}"/>')
        out.append(_text(x, bottom + 18, fmt(t), cls="tick"))
    for n, item in enumerate(items):
        y = top + row_h * n
        out.append(
            _text(
                left - 10,
                y + row_h / 2 + 4.5,
                _shorten(item.label, int((label_w - 16) / (13 * 0.58))),
                cls="label",
                anchor="end",
            )
        )
        end = left
        if item.value is not None and item.value > 0:
            end = max(x_of(item.value), left + 2)  # a small count stays visible
            out.append(
                _bar(left, y + 6, end - left, row_h - 12, item.colour, item.title, item.data)
            )
        out.append(_text(end + 8, y + row_h / 2 + 4.5, item.text, cls="value", anchor="start"))
    return _svg(chart, height, out, label)


def _status_colour(status: str) -> str:
    return _STATUSES.get(status, (_OTHER_STATUS_COLOUR, ""))[0]


def _failures_chart(report: HtmlReport) -> str:
    rows = report.report.totals.rows
    items = [
        _HBar(
            label=f.error_type,
            value=f.rows,
            text=f"{_n_rows(f.rows)} · {_pct(f.rows, rows)}",
            colour=_status_colour(f.status),
            title=f"{f.error_type} ({f.status}): {_n_rows(f.rows)}",
            data={"error-type": f.error_type, "status": f.status, "value": str(f.rows)},
        )
        for f in report.failures
    ]
    return _hbar_chart(
        "failures", items, _count_short, "Rows that failed, by error type", whole=True
    )


def _cache_chart(report: HtmlReport, series: dict[tuple[str | None, str | None], _Series]) -> str:
    items = []
    for c in report.cache:
        s = series[(c.provider, c.model)]
        label = s.label + (" (batch)" if c.mode == "batch" else "")
        share = _pct(c.cache_read_tokens, c.input_tokens)
        use = f"{_tokens(c.cache_read_tokens)} cached tokens ({share} of input)"
        if c.cache_write_tokens:
            use += f", {_tokens(c.cache_write_tokens)} written"
        if c.saved_usd is None:
            text = f"{UNKNOWN_PRICE} · {use}"
            title = f"{label}: {use}; its runs recorded no price"
        else:
            text = f"{format_usd(c.saved_usd)} saved · {use}"
            title = (
                f"{label}: {format_usd(c.saved_usd)} saved by {c.cache_read_tokens:,} cached tokens"
            )
            if c.cache_write_tokens:
                premium = (c.read_saved_usd or 0.0) - c.saved_usd
                title += f", after {format_usd(premium)} paid above the input price for writes"
            if c.unpriced_rows:
                title += f"; {_n_rows(c.unpriced_rows)} of runs without a recorded price left out"
        items.append(
            _HBar(
                label=label,
                value=c.saved_usd,
                text=text,
                colour=s.colour,
                title=title,
                data={
                    "series": label,
                    "value": "" if c.saved_usd is None else f"{c.saved_usd:.6f}",
                },
            )
        )
    return _hbar_chart("cache-savings", items, _usd_short, "Net savings from the prompt cache")


# --------------------------------------------------------------------------------------------
# HTML

_CSS: Final = """
:root { --fg: #1f2328; --muted: #5b636d; --line: #e3e6ea; --grid: #eceef1; --bg: #f5f6f8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
    "DejaVu Sans", sans-serif; -webkit-font-smoothing: antialiased; }
main { max-width: 1040px; margin: 0 auto; padding: 32px 24px 56px; }
header h1 { font-size: 28px; line-height: 1.2; margin: 0 0 6px; letter-spacing: -0.01em; }
.sub, .note, figcaption { color: var(--muted); }
.sub { margin: 0; font-size: 14px; }
.tiles { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 14px;
  margin: 24px 0 0; }
.tile { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 14px 18px; }
.tile .k { font-size: 13px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.tile .v { font-size: 26px; font-weight: 650; font-variant-numeric: tabular-nums;
  line-height: 1.25; margin-top: 4px; overflow-wrap: anywhere; }
.tile .d { font-size: 13px; color: var(--muted); }
section { background: #fff; border: 1px solid var(--line); border-radius: 10px;
  padding: 20px 24px 22px; margin-top: 18px; }
section h2 { font-size: 18px; margin: 0 0 2px; }
section > p { margin: 0 0 10px; font-size: 14px; }
.note { font-size: 13px; margin: 8px 0 0; }
.empty { margin: 14px 0 4px; padding: 18px; border: 1px dashed #cfd4da; border-radius: 8px;
  color: var(--muted); text-align: center; }
table { border-collapse: collapse; width: 100%; font-size: 14px; margin-top: 8px; }
th, td { padding: 7px 10px; border-bottom: 1px solid var(--grid); text-align: left;
  vertical-align: top; }
th { font-weight: 600; color: var(--muted); font-size: 12.5px; text-transform: uppercase;
  letter-spacing: .03em; border-bottom: 1px solid var(--line); }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.n.wrap { white-space: normal; }
td.nw, td code { white-space: nowrap; }
.unk { font-size: 12.5px; font-weight: 400; color: var(--muted); }
.scroll { overflow-x: auto; }
tfoot td { font-weight: 600; border-top: 1px solid var(--line); border-bottom: 0; }
td.msg { color: var(--muted); font-size: 13px; overflow-wrap: anywhere; }
code { font: 12.5px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono",
  monospace; background: #f0f2f4; padding: 1px 5px; border-radius: 4px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 6px 0 4px; padding: 0;
  list-style: none; font-size: 13.5px; }
.legend li { display: flex; align-items: center; gap: 7px; }
.sw { display: inline-block; width: 12px; height: 12px; border-radius: 3px; flex: none; }
.sw.unknown { background: repeating-linear-gradient(45deg, #c8cdd3 0 3px, #fff 3px 6px);
  border: 1px solid #aab1b9; }
svg.chart { display: block; width: 100%; height: auto; margin-top: 6px; overflow: visible; }
svg text { font-family: inherit; fill: var(--fg); }
svg .tick { font-size: 12px; fill: var(--muted); font-variant-numeric: tabular-nums; }
svg .axis-title { font-size: 12px; fill: var(--muted); }
svg .value { font-size: 12.5px; font-weight: 600; font-variant-numeric: tabular-nums; }
svg .label { font-size: 13px; }
svg .marker-label { font-size: 12px; font-weight: 600; fill: #b8432f; }
svg line.grid { stroke: var(--grid); }
svg line.axis { stroke: #8c959f; }
svg line.marker { stroke: #b8432f; stroke-width: 1.5; stroke-dasharray: 5 4; }
svg rect.bar:hover { opacity: .85; }
footer { margin-top: 22px; font-size: 13px; color: var(--muted); }
@media (max-width: 720px) { .tiles { grid-template-columns: repeat(2, minmax(0, 1fr)); } }
@media print { body { background: #fff; } section, .tile { break-inside: avoid; } }
"""


def _tile(key: str, value: str, detail: str, name: str) -> str:
    return (
        f'<div class="tile" data-tile="{name}"><div class="k">{_e(key)}</div>'
        f'<div class="v">{_e(value)}</div><div class="d">{_e(detail)}</div></div>'
    )


def _section(name: str, title: str, intro: str, body: str) -> str:
    return (
        f'<section id="{name}"><h2>{_e(title)}</h2>'
        + (f"<p class=sub>{_e(intro)}</p>" if intro else "")
        + body
        + "</section>"
    )


def _empty(text: str) -> str:
    return f'<p class="empty">{_e(text)}</p>'


def _scope(report: Report) -> str:
    parts = []
    if report.job:
        parts.append(f"job {report.job}")
    if report.run_id:
        parts.append(f"run {report.run_id}")
    return ", ".join(parts) or "all jobs"


def _tiles(data: HtmlReport) -> str:
    t = data.report.totals
    saved = data.report.cache_saved_usd  # the figure the text report prints
    unknown_saved = any(c.saved_usd is None or c.unpriced_rows for c in data.cache)
    if saved is not None:
        saved_text = format_usd(saved)
        saved_detail = f"{_tokens(t.cache_read_tokens)} tokens read from cache"
        if unknown_saved:
            saved_detail += ", some at an unknown price"
    elif data.cache:
        saved_text, saved_detail = UNKNOWN_PRICE, f"{_tokens(t.cache_read_tokens)} cached tokens"
    else:
        saved_text, saved_detail = "$0", "no prompt-cache reads"
    cost = UNKNOWN_PRICE if t.cost_usd is None else format_usd(t.cost_usd)
    cost_detail = f"{_tokens(t.input_tokens)} tokens in · {_tokens(t.output_tokens)} out"
    if t.unpriced_rows and t.cost_usd is not None:
        cost_detail = f"+ {_n_rows(t.unpriced_rows)} at an unknown price"
    if not t.rows:
        cost, cost_detail, saved_text, saved_detail = "–", "no results yet", "–", "no results yet"
    lat = data.latency
    return (
        '<div class="tiles">'
        + _tile("Cost", cost, cost_detail, "cost")
        + _tile(
            "Rows",
            f"{t.rows:,}",
            f"{t.ok:,} ok · {t.failed:,} failed ({_pct(t.failed, t.rows)})",
            "rows",
        )
        + _tile(
            "Median latency",
            _ms(lat.p50_ms),
            f"p95 {_ms(lat.p95_ms)} · ok rows" if lat.rows else "no ok rows",
            "latency",
        )
        + _tile("Saved by cache", saved_text, saved_detail, "cache")
        + "</div>"
    )


def _cost_cell(cost: float | None, unpriced_rows: int) -> str:
    """A table cell: the cost, and under it the rows whose price is unknown (not in it)."""
    if cost is None:
        return f'<td class="n">{UNKNOWN_PRICE}</td>'
    extra = f'<br><span class="unk">+ {unpriced_rows:,} unpriced rows</span>'
    return f'<td class="n wrap">{_e(format_usd(cost))}{extra if unpriced_rows else ""}</td>'


def _model_table(data: HtmlReport, series: dict[tuple[str | None, str | None], _Series]) -> str:
    by_model: dict[tuple[str | None, str | None], list[ModelGroup]] = {}
    for g in data.report.groups:
        by_model.setdefault((g.provider, g.model), []).append(g)
    head = "".join(
        f'<th class="{"n" if i > 1 else ""}">{name}</th>'
        for i, name in enumerate(
            ("model", "provider", "rows", "failed", "tokens in", "tokens out", "cost", "p50", "p95")
        )
    )
    body = []
    for key, s in series.items():
        groups = by_model.get(key)
        if not groups:
            continue
        rows = sum(g.rows for g in groups)
        failed = sum(g.rows for g in groups if g.status != "ok")
        costs = [g.cost_usd for g in groups if g.cost_usd is not None]
        unpriced = sum(g.unpriced_rows for g in groups)
        ok = next((g for g in groups if g.status == "ok"), None)
        cost = _cost_cell(sum(costs) if costs else None, unpriced)
        cells = [
            f'<td class="nw"><span class="sw" style="background:{s.colour}"></span> '
            f"{_e(s.label)}</td>",
            f"<td>{_e(key[0] or '–')}</td>",
            f'<td class="n">{rows:,}</td>',
            f'<td class="n">{failed:,}</td>',
            f'<td class="n">{sum(g.input_tokens for g in groups):,}</td>',
            f'<td class="n">{sum(g.output_tokens for g in groups):,}</td>',
            cost,
            f'<td class="n">{_ms(ok.latency_p50_ms if ok else None)}</td>',
            f'<td class="n">{_ms(ok.latency_p95_ms if ok else None)}</td>',
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    t = data.report.totals
    foot = (
        f'<tr><td>total</td><td></td><td class="n">{t.rows:,}</td><td class="n">{t.failed:,}</td>'
        f'<td class="n">{t.input_tokens:,}</td><td class="n">{t.output_tokens:,}</td>'
        f"{_cost_cell(t.cost_usd, t.unpriced_rows)}"
        f'<td class="n">{_ms(data.latency.p50_ms)}</td>'
        f'<td class="n">{_ms(data.latency.p95_ms)}</td></tr>'
    )
    return (
        f'<div class="scroll"><table class="summary"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody><tfoot>{foot}</tfoot></table></div>"
    )


def _legend(data: HtmlReport, series: dict[tuple[str | None, str | None], _Series]) -> str:
    cost: dict[tuple[str | None, str | None], float | None] = {}
    for d in data.cost_by_day:
        key = (d.provider, d.model)
        if d.cost_usd is not None:
            cost[key] = (cost.get(key) or 0.0) + d.cost_usd
        else:
            cost.setdefault(key, None)
    items = []
    for key, s in series.items():
        if key not in cost:
            continue
        value = cost[key]
        if value is None:
            items.append(f'<li><span class="sw unknown"></span>{_e(s.label)}: {UNKNOWN_PRICE}</li>')
        else:
            items.append(
                f'<li><span class="sw" style="background:{s.colour}"></span>'
                f"{_e(s.label)}: {_e(format_usd(value))}</li>"
            )
    return f'<ul class="legend">{"".join(items)}</ul>'


def _cost_section(data: HtmlReport, series: dict[tuple[str | None, str | None], _Series]) -> str:
    intro = "What each day's rows cost, stacked by model (days in UTC)."
    if not data.cost_by_day:
        return _section("cost", "Cost per day and model", intro, _empty("No results yet."))
    priced = any(d.cost_usd for d in data.cost_by_day)
    unpriced = sum(d.unpriced_rows for d in data.cost_by_day)
    body = _legend(data, series)
    if priced:
        body += _cost_chart(data, series)
    else:
        body += _empty(
            "No row has a known price, so there is nothing to chart: the models' prices are "
            "not in genai-prices and the job gave none."
        )
    if unpriced:
        body += (
            f'<p class="note">{_n_rows(unpriced)} used a model whose price is unknown; their '
            "cost is NULL and not in the bars.</p>"
        )
    return _section("cost", "Cost per day and model", intro, body)


def _latency_section(data: HtmlReport) -> str:
    lat = data.latency
    title = "Latency"
    if not lat.bins:
        return _section(title.lower(), title, "", _empty("No ok rows with a latency yet."))
    intro = (
        f"Time of the successful attempt, {_n_rows(lat.rows)} ok: p50 {_ms(lat.p50_ms)} · "
        f"p95 {_ms(lat.p95_ms)} · p99 {_ms(lat.p99_ms)} · slowest {_ms(lat.max_ms)}."
    )
    body = _histogram(lat)
    if lat.bins[-1].end_ms is None:
        body += (
            f'<p class="note">The last (hatched) column: {_n_rows(lat.bins[-1].rows)} slower '
            f"than {_ms(lat.bins[-1].start_ms)}, beyond the 99th percentile.</p>"
        )
    return _section("latency", title, intro, body)


def _failures_section(data: HtmlReport) -> str:
    title = "Failures by type"
    t = data.report.totals
    if not data.failures:
        text = "No failures: every row was answered." if t.rows else "No results yet."
        return _section("failures", title, "", _empty(text))
    intro = f"{t.failed:,} of {_n_rows(t.rows)} were not ok ({_pct(t.failed, t.rows)})."
    statuses = dict.fromkeys(f.status for f in data.failures)
    legend = "".join(
        f'<li><span class="sw" style="background:{_status_colour(status)}"></span>'
        f"<span><b>{_e(status)}</b>"
        f"{_e(': ' + _STATUSES[status][1] if status in _STATUSES else '')}</span></li>"
        for status in statuses
    )
    rows = "".join(
        f"<tr><td>{_e(f.error_type)}</td>"
        f'<td class="nw"><span class="sw" style="background:{_status_colour(f.status)}"></span> '
        f"{_e(f.status)}</td>"
        f'<td class="n">{f.rows:,}</td>'
        f'<td class="msg">{_e(_shorten(f.example or "", 240))}</td></tr>'
        for f in data.failures
    )
    table = (
        '<table class="failures"><thead><tr><th>error type</th><th>status</th>'
        '<th class="n">rows</th><th>for example</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )
    body = f'<ul class="legend">{legend}</ul>' + _failures_chart(data) + table
    return _section("failures", title, intro, body)


def _cache_section(data: HtmlReport, series: dict[tuple[str | None, str | None], _Series]) -> str:
    title = "Cache savings"
    intro = (
        "What the prompt cache saved against paying the full input price for every prompt "
        "token: cache reads × (input price − cache-read price), less cache writes × "
        "(cache-write price − input price), at the prices each run recorded. The same figure "
        "as 'pipeline report' and the view cache_savings."
    )
    if not data.cache:
        text = (
            "No prompt-cache reads in these results, so caching saved nothing."
            if data.report.totals.rows
            else "No results yet."
        )
        return _section("cache", title, intro, _empty(text))
    body = _cache_chart(data, series)
    writes = sum(c.cache_write_tokens for c in data.cache)
    if writes:
        body += (
            f'<p class="note">{writes:,} tokens were written to the cache; what writing cost '
            "above the input price is subtracted.</p>"
        )
    unpriced = sum(c.unpriced_rows for c in data.cache)
    if unpriced:
        body += (
            f'<p class="note">{_n_rows(unpriced)} with cache tokens belong to runs that recorded '
            "no price: their saving is unknown and left out.</p>"
        )
    return _section("cache", title, intro, body)


def _runs_section(report: Report) -> str:
    if not report.runs or report.run_id:
        return ""
    rows = "".join(
        f"<tr><td><code>{_e(r.run_id)}</code></td><td>{_e(r.job)}</td>"
        f"<td>{_e(r.model or '–')}</td><td class=nw>{r.started_at:%Y-%m-%d %H:%M}</td>"
        f"<td>{_e(r.state)}</td><td class=n>{r.rows_ok:,}</td><td class=n>{r.rows_failed:,}</td>"
        f"<td class=n>{_e(format_usd(r.cost_usd) if r.rows_ok + r.rows_failed else '–')}</td></tr>"
        for r in report.runs
    )
    table = (
        "<table class=runs><thead><tr><th>run</th><th>job</th><th>model</th><th>started (UTC)</th>"
        "<th>state</th><th class=n>ok</th><th class=n>failed</th><th class=n>cost</th></tr>"
        f"</thead><tbody>{rows}</tbody></table>"
    )
    return _section("runs", "Latest runs", "", table)


def render_html(data: HtmlReport) -> str:
    """The whole report as one HTML document: inline CSS and SVG, nothing to fetch."""
    series = _series(data)
    scope = _scope(data.report)
    t = data.report.totals
    days = sorted({d.day for d in data.cost_by_day})
    period = ""
    if days:
        period = (
            days[0].isoformat()
            if days[0] == days[-1]
            else f"{days[0].isoformat()} to {days[-1].isoformat()}"
        )
    sub = " · ".join(
        p
        for p in (
            f"{_n_rows(t.rows)}",
            period,
            f"database {data.db_path}" if data.db_path else "",
            f"generated {data.generated_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
        )
        if p
    )
    if t.rows:
        summary = _section("models", "By model", "", _model_table(data, series))
    else:
        summary = _section("models", "By model", "", _empty("No results yet: run a job first."))
    query = f'duckdb -readonly {data.db_path or "data/results.duckdb"} "{ANALYSIS_SQL}"'
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>LLM pipeline report: {_e(scope)}</title>"
        f"<style>{_CSS}</style></head><body><main>"
        f"<header><h1>Results: {_e(scope)}</h1><p class=sub>{_e(sub)}</p></header>"
        + _tiles(data)
        + summary
        + _cost_section(data, series)
        + _latency_section(data)
        + _failures_section(data)
        + _cache_section(data, series)
        + _runs_section(data.report)
        + f"<footer>Ask your own questions: <code>{_e(query)}</code></footer>"
        + "</main></body></html>\n"
    )
