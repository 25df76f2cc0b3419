"""``pipeline report --html``: one self-contained page whose charts a browser really draws.

The browser tests open the page in headless Chromium (Debian's ``chromium``; ``make test``
installs it where it may). Where no browser can be installed (no root, no apt), they skip and
say so: the rest of the report is still checked without one.
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from rich.console import Console

from pipeline.cli import main
from pipeline.job.pricing import Price, lookup_price
from pipeline.records import RowResult
from pipeline.reporting.html import (
    PALETTE,
    collect_html_report,
    latency_bins,
    nice_ticks,
    render_html,
)
from pipeline.reporting.text import format_usd, render_report
from pipeline.store import RunRecord, Store

T0 = 1_763_000_000.0  # 2025-11-13 02:13 UTC
DAY = 86_400.0


def _result(
    i: int,
    *,
    model: str = "gpt-4o-mini",
    provider: str = "openai",
    day: int = 0,
    cost: float | None = 0.0002,
    status: str = "ok",
    error_type: str | None = None,
    error: str | None = None,
    cache_read: int = 0,
    cache_write: int = 0,
    latency_ms: float | None = None,
    run_id: str | None = None,
) -> RowResult:
    ok = status == "ok"
    return RowResult(
        job="reviews",
        run_id=run_id or f"run-{model}",  # one run per model, as `pipeline run` makes them
        row_id=f"r{i}",
        request_key=f"k{i}",
        prompt_hash="p",
        status=status,
        provider=provider,
        model=model,
        mode="online",
        output_text="positive" if ok else None,
        finish_reason="stop" if ok else None,
        error_type=error_type,
        error=error,
        attempts=1,
        input_tokens=1_000 if ok else 0,
        output_tokens=10 if ok else 0,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=0,
        cost_usd=cost if ok else None,
        latency_ms=(latency_ms if latency_ms is not None else 200.0 + (i * 37) % 400)
        if ok
        else None,
        finished_at=T0 + day * DAY + i,
        source="in.jsonl",
        line=i + 1,
    )


def _db(
    tmp_path: Path, results: list[RowResult], prices: dict[str, Price | None] | None = None
) -> Path:
    """A database of ``results`` whose runs record their prices as ``pipeline run`` does:
    ``prices`` by run id, else the genai-prices price of each run's model (none if unknown)."""
    db = tmp_path / "results.duckdb"
    runs = {r.run_id: (r.provider, r.model) for r in results} or {"run-1": ("openai", "m")}
    with Store(db) as store:
        for run_id, (provider, model) in runs.items():
            store.runs.start(RunRecord(run_id=run_id, job="reviews", started_at=T0))
            price = lookup_price(provider, model) if prices is None else prices.get(run_id)
            store.runs.record_prices(run_id, {"online": price})
        if results:
            store.results.write(results)
        for run_id in runs:
            store.runs.finish(run_id, "completed", finished_at=T0 + 3 * DAY)
    return db


def _html(db: Path) -> str:
    with Store(db, read_only=True) as store:
        return render_html(collect_html_report(store, db_path=str(db)))


def _text(db: Path) -> str:
    buffer = io.StringIO()
    with Store(db, read_only=True) as store:
        render_report(store.queries.report(), Console(file=buffer, width=200))
    return buffer.getvalue()


def _tile(html: str, name: str) -> tuple[str, str]:
    """The value and the detail line of one of the page's tiles."""
    found = re.search(
        rf'data-tile="{name}"><div class="k">[^<]*</div><div class="v">([^<]*)</div>'
        r'<div class="d">([^<]*)</div>',
        html,
    )
    assert found, f"no tile {name!r}"
    return found.group(1), found.group(2)


def _busy_results() -> list[RowResult]:
    """Three days of two priced models with cache reads, a model of unknown price, three kinds
    of failure and one very slow answer."""
    results: list[RowResult] = []
    for day in range(3):
        for _ in range(30 + 10 * day):
            results.append(_result(len(results), day=day, cache_read=400))
        for _ in range(10):
            results.append(
                _result(
                    len(results),
                    model="claude-3-5-haiku-latest",
                    provider="anthropic",
                    day=day,
                    cost=0.001,
                    cache_read=800,
                )
            )
        for _ in range(3):
            results.append(_result(len(results), model="mystery-model", day=day, cost=None))
    failures = [("failed", "server_error")] * 6 + [("failed", "timeout")] * 3
    failures += [("input_error", "missing_field")] * 2
    for status, error_type in failures:
        results.append(
            _result(
                len(results),
                day=1,
                status=status,
                error_type=error_type,
                error=f"{error_type}: the provider said no",
            )
        )
    results.append(_result(len(results), day=2, latency_ms=30_000.0))
    return results


# -- pure arithmetic --------------------------------------------------------------------------


@given(st.floats(min_value=1e-6, max_value=1e9))
def test_axis_ticks_start_at_zero_cover_the_top_in_a_few_round_steps(top: float) -> None:
    ticks = nice_ticks(top)
    assert ticks[0] == 0 and ticks[-1] >= top * (1 - 1e-9)
    assert 2 <= len(ticks) <= 7
    step = ticks[1]
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5, 10))


@given(st.floats(min_value=0, max_value=1e6), st.floats(min_value=0, max_value=1e6))
@example(1.0, 0.375)  # float rounding once put p99 on the last bin's edge
def test_latency_bins_hold_everything_up_to_the_99th_percentile(a: float, b: float) -> None:
    low, p99 = min(a, b), max(a, b)
    start, width, bins = latency_bins(low, p99)
    assert start <= low < start + width * bins + 1e-9
    assert start + width * bins > p99  # p99 is in a regular bin, not the overflow one
    assert 1 <= bins <= 41


# -- the page ---------------------------------------------------------------------------------


def test_every_value_from_the_database_is_escaped(tmp_path: Path) -> None:
    evil = "<script>alert('x')</script>"
    db = _db(
        tmp_path,
        [
            _result(0, model=evil),
            _result(1, model=evil, status="failed", error_type="<b>bold</b>", error='"><img>'),
        ],
    )
    html = _html(db)
    assert "<script" not in html and "<img" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html


def test_one_day_one_unpriced_model_no_failures_no_cache_says_so(tmp_path: Path) -> None:
    db = _db(tmp_path, [_result(i, model="mystery-model", cost=None) for i in range(5)])
    html = _html(db)
    assert "2025-11-13" in html  # the one day
    assert "No row has a known price, so there is nothing to chart" in html
    assert 'data-chart="cost-per-day"' not in html
    assert "5 rows used a model whose price is unknown" in html
    assert "No failures: every row was answered." in html
    assert "No prompt-cache reads in these results, so caching saved nothing." in html
    assert 'data-chart="latency"' in html  # the answers still have latencies
    assert "$0.0" not in html  # an unknown price is never shown as zero dollars
    assert "unknown price" in html


# A model with a cache-write premium: reads at a tenth of the input price, writes at 125%.
CACHED = Price(
    input_mtok=1.0, output_mtok=5.0, cache_read_mtok=0.1, cache_write_mtok=1.25, source="test"
)


def _cached_results() -> list[RowResult]:
    """Run run-m-a (price CACHED): 2 rows write 800 tokens to the cache, 10 read 800 each.
    Run run-m-b: 5 rows read 800 each."""
    results = [_result(i, model="m-a", cache_write=800) for i in range(2)]
    results += [_result(i, model="m-a", cache_read=800) for i in range(2, 12)]
    results += [_result(i, model="m-b", cache_read=800) for i in range(12, 17)]
    return results


def _text_saving(text: str) -> str:
    found = re.search(r"saving (\$[\d.,]+) against the full input price", text)
    assert found, text
    return found.group(1)


def test_both_reports_print_one_cache_saving_net_of_writes_at_the_recorded_prices(
    tmp_path: Path,
) -> None:
    db = _db(tmp_path, _cached_results(), prices={"run-m-a": CACHED, "run-m-b": CACHED})
    # reads: 15 x 800 tokens at $0.90/M less than input; writes: 2 x 800 at $0.25/M more
    expected = format_usd((15 * 800 * 0.9 - 2 * 800 * 0.25) / 1e6)
    assert expected == "$0.010400"
    html = _html(db)
    assert _text_saving(_text(db)) == expected
    assert _tile(html, "cache") == (expected, "12,000 tokens read from cache")
    parser = _Charts()
    parser.feed(html)
    bars = {b["data-series"]: b["data-value"] for b in parser.charts["cache-savings"].bars}
    assert bars == {"m-a": "0.006800", "m-b": "0.003600"}  # 0.0072 - 0.0004; 0.0036
    assert "1,600 tokens were written to the cache" in html
    assert "genai-prices list price" not in html


def test_a_run_without_recorded_prices_is_left_out_of_both_reports_alike(
    tmp_path: Path,
) -> None:
    db = _db(tmp_path, _cached_results(), prices={"run-m-a": CACHED})
    html, text = _html(db), _text(db)
    assert _text_saving(text) == "$0.006800"  # run-m-b's reads are not in it
    assert _tile(html, "cache") == (
        "$0.006800",
        "12,000 tokens read from cache, some at an unknown price",
    )
    assert "5 rows with cache tokens belong to runs that recorded no price" in html

    db_unpriced = _db(tmp_path / "none", _cached_results(), prices={})
    assert "what it saved is unknown (no run recorded its price)" in _text(db_unpriced)
    assert _tile(_html(db_unpriced), "cache") == ("unknown price", "12,000 cached tokens")


def test_an_empty_database_renders_a_page_that_says_there_is_nothing_yet(tmp_path: Path) -> None:
    html = _html(_db(tmp_path, []))
    assert "<svg" not in html
    assert "No results yet" in html
    assert "No ok rows with a latency yet." in html
    assert "unknown price" not in html and "$" not in html  # no cost, rather than a made-up one


def test_the_cli_writes_one_self_contained_file_and_prints_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _db(tmp_path, _busy_results())
    out = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--html", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>")
    # nothing to fetch when it is opened: no scripts, stylesheets, images, fonts or links
    for needle in ("<script", "<link", "<img", "src=", "href=", "@import", "http:", "https:"):
        assert needle not in html, needle
    assert "url(" not in html.replace("url(#tail)", "")


def test_the_cli_says_when_it_cannot_write_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _db(tmp_path, [_result(0)])
    target = tmp_path / "no-such-dir" / "report.html"
    assert main(["report", "--db", str(db), "--html", str(target)]) == 2
    assert f"cannot write {target}" in capsys.readouterr().err


# -- in a real browser ------------------------------------------------------------------------


def _chromium() -> str:
    path = shutil.which(os.environ.get("CHROMIUM", "chromium"))
    if path is None:
        pytest.skip(
            "chromium is not installed, so the HTML report is not checked in a browser here: "
            "'make test' installs it when run as root, or 'apt-get install -y chromium'"
        )
    return path


def _browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *args,
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )


@dataclass
class _Chart:
    bars: list[dict[str, str]] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)  # (class, text)
    markers: list[str] = field(default_factory=list)


class _Charts(HTMLParser):
    """The SVG charts of a DOM dump: their bars (with data-* attributes) and their texts."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, _Chart] = {}
        self._chart: _Chart | None = None
        self._text_class: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "svg" and "data-chart" in a:
            self._chart = self.charts.setdefault(a["data-chart"], _Chart())
        elif self._chart is not None and tag == "rect" and a.get("class") == "bar":
            self._chart.bars.append(a)
        elif self._chart is not None and tag == "line" and "data-marker" in a:
            self._chart.markers.append(a["data-marker"])
        elif self._chart is not None and tag == "text":
            self._text_class = a.get("class", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._chart = None
        elif tag == "text":
            self._text_class = None

    def handle_data(self, data: str) -> None:
        if self._chart is not None and self._text_class is not None:
            self._chart.texts.append((self._text_class, data))


def _pixels(png: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit, non-interlaced RGB(A) PNG (what Chromium
    writes), with the standard library only."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, body = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, (depth, colour_type)
    bpp = 4 if colour_type == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * bpp
    previous = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for x in range(stride):
            left = line[x - bpp] if x >= bpp else 0
            up = previous[x]
            upper_left = previous[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - upper_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else upper_left
                line[x] = (line[x] + pred) & 0xFF
        pixels.extend((line[i], line[i + 1], line[i + 2]) for i in range(0, stride, bpp))
        previous = line
    return width, height, pixels


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return (int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16))


@pytest.fixture
def busy_page(tmp_path: Path) -> Path:
    db = _db(tmp_path, _busy_results())
    page = tmp_path / "report.html"
    assert main(["report", "--db", str(db), "--html", str(page)]) == 0
    return page


def test_chromium_draws_every_chart_with_its_bars_and_labels(
    busy_page: Path, tmp_path: Path
) -> None:
    dom = _browse(busy_page, tmp_path, "--dump-dom").stdout
    parser = _Charts()
    parser.feed(dom)
    charts = parser.charts
    assert set(charts) == {"cost-per-day", "latency", "failures", "cache-savings"}

    # cost: three days x two priced models; the model of unknown price has no bar
    cost = charts["cost-per-day"]
    assert sorted((b["data-day"], b["data-series"]) for b in cost.bars) == sorted(
        (day, model)
        for day in ("2025-11-13", "2025-11-14", "2025-11-15")
        for model in ("claude-3-5-haiku-latest", "gpt-4o-mini")
    )
    ticks = [t for cls, t in cost.texts if cls == "tick"]
    assert {"Nov 13", "Nov 14", "Nov 15"} <= set(ticks)
    assert "$0" in ticks  # the y axis starts at zero dollars
    # a total above each day's column: 30/40/51 rows x $0.0002 plus 10 x $0.001
    assert [t for cls, t in cost.texts if cls == "value"] == ["$0.016", "$0.018", "$0.0202"]

    # latency: every ok row is in one bar; the 30 s answer is alone in the slow tail
    latency = charts["latency"]
    assert sum(int(b["data-rows"]) for b in latency.bars) == 30 + 40 + 50 + 3 * (10 + 3) + 1
    assert int(latency.bars[-1]["data-rows"]) == 1
    assert sorted(latency.markers) == ["p50", "p95"]
    assert any(t.startswith("p50 ") for _, t in latency.texts)

    # failures: one bar per error type, most frequent first, each with its count
    failures = charts["failures"]
    assert [b["data-error-type"] for b in failures.bars] == [
        "server_error",
        "timeout",
        "missing_field",
    ]
    values = [t for cls, t in failures.texts if cls == "value"]
    assert values[0].startswith("6 rows") and values[2].startswith("2 rows")

    # cache savings: the two priced models, at the prices their runs recorded (no writes)
    cache = {b["data-series"]: float(b["data-value"]) for b in charts["cache-savings"].bars}
    mini, haiku = (
        lookup_price("openai", "gpt-4o-mini"),
        lookup_price("anthropic", "claude-3-5-haiku-latest"),
    )
    assert mini is not None and haiku is not None
    assert mini.cache_read_mtok is not None and haiku.cache_read_mtok is not None
    assert cache["gpt-4o-mini"] == pytest.approx(
        120 * 400 * (mini.input_mtok - mini.cache_read_mtok) / 1e6, abs=1e-6
    )
    assert cache["claude-3-5-haiku-latest"] == pytest.approx(
        30 * 800 * (haiku.input_mtok - haiku.cache_read_mtok) / 1e6, abs=1e-6
    )

    # the summary table names every model, the unpriced one as such
    assert re.search(r"mystery-model</td>.*?unknown price", dom, flags=re.S)


def test_chromium_screenshot_shows_the_charts_in_colour(busy_page: Path, tmp_path: Path) -> None:
    shot, blank_shot = tmp_path / "report.png", tmp_path / "blank.png"
    _browse(busy_page, tmp_path, f"--screenshot={shot}", "--window-size=1200,2000")
    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><title>blank</title>", encoding="utf-8")
    _browse(blank, tmp_path, f"--screenshot={blank_shot}", "--window-size=1200,2000")

    width, height, pixels = _pixels(shot.read_bytes())
    assert (width, height) == (1200, 2000)
    colours = Counter(pixels)
    _, _, blank_pixels = _pixels(blank_shot.read_bytes())
    assert len(set(blank_pixels)) == 1  # the reference really is one flat colour
    assert len(colours) > 50  # text, bars, lines: not one flat colour
    assert shot.stat().st_size > 10 * blank_shot.stat().st_size
    # the bars are painted in the series colours (claude first: it cost more; gpt-4o-mini)
    # and the failures in red: thousands of pixels each, not a stray anti-aliased edge
    for colour in (PALETTE[0], PALETTE[1], "#e15759"):
        assert colours[_rgb(colour)] > 2_000, colour
