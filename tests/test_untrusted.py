"""Untrusted input (issue 19): rows, files and options that other people wrote.

A row must never be able to send a file from the machine to the provider, exhaust the
process's memory, or end the run with a traceback; an option must be refused in one line
before anything happens. Each test here is one case a user (or an attacker) tried, run the way
they ran it: ``pipeline run`` / ``pipeline estimate`` through ``pipeline.cli.main``, or, for the
cases that could grow memory, a whole ``pipeline`` process under ``RLIMIT_AS`` and a timeout.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import duckdb
import orjson
import pytest
import structlog
from test_documents import make_pdf, make_png

from pipeline import documents
from pipeline.cli import main
from pipeline.errors import ConfigError, InputError
from pipeline.execution import RunStats
from pipeline.execution.journal import Journal
from pipeline.execution.online import OnlineExecutor
from pipeline.execution.sink import ResultSink
from pipeline.job import parse_job
from pipeline.job.config import MAX_CONCURRENCY
from pipeline.limits import LocalRateBudget, RunBudget
from pipeline.records import Reply, Request, ResultBuilder, Usage

ROOT = Path(__file__).resolve().parent.parent
SECRET = "root:x:0:0:root:/root:/bin/bash\n"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL",
        "GOOGLE_GEMINI_BASE_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


# -- every file this process opens, while a test watches ---------------------------------------

_opened: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def opened() -> Iterator[list[str]]:
    """The paths ``open`` was called with (in any thread of this process) during the test."""
    global _opened
    _opened = []
    yield _opened
    _opened = None


# -- helpers ------------------------------------------------------------------------------------


def job_file(
    path: str,
    *,
    attachments: str | None = '["{path}"]',
    prompt: str = "Describe the file.",
    extra_input: str = "",
    extra: str = "",
    provider: str = "anthropic",
    model: str = "claude-sonnet-4-5",
) -> Path:
    attach = f"attachments = {attachments}\n" if attachments else ""
    text = f"""name = "untrusted"
[input]
path = "{path}"
{extra_input}
[request]
provider = "{provider}"
model = "{model}"
prompt = "{prompt}"
{attach}max_tokens = 20
{extra}
[output]
db = "out/results.duckdb"
"""
    job = Path("job.toml")
    job.write_text(text)
    return job


def results() -> dict[str, dict[str, Any]]:
    with duckdb.connect("out/results.duckdb", read_only=True) as con:
        cur = con.execute("SELECT row_id, status, error_type, error, output_text FROM results")
        names = [d[0] for d in cur.description]
        return {row[0]: dict(zip(names, row, strict=True)) for row in cur.fetchall()}


def only_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG of a hundred bytes whose header claims ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def run_limited(
    argv: list[str], *, memory_mb: int, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline ARGV`` in its own process, its address space capped."""

    def cap() -> None:
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *argv],
        preexec_fn=cap,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )


# -- 1. nothing outside the attachments root is read -------------------------------------------


def test_a_rows_path_outside_the_input_folder_is_refused_and_never_opened(
    tmp_path: Path, opened: list[str], capfd: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    key = secret / "id_rsa"  # PNG bytes, no extension: it would have been sent as an image
    make_png(key, (40, 40))
    passwd = secret / "passwd"
    passwd.write_text(SECRET)
    inside = Path("in")
    inside.mkdir()
    make_png(inside / "ok.png", (40, 40))
    (inside / "link.png").symlink_to(key)
    write_rows(
        inside / "rows.jsonl",
        [
            {"id": "absolute", "path": str(key)},
            {"id": "dotdot", "path": "in/../../secret/id_rsa"},
            {"id": "symlink", "path": "in/link.png"},
            {"id": "passwd", "path": str(passwd)},
            {"id": "ok", "path": "in/ok.png"},
            {"id": "url", "path": "https://example.com/scan.png"},
        ],
    )
    job = job_file("in/rows.jsonl", extra_input='id = "id"')

    opened.clear()
    assert main(["run", str(job), "--fake", "--quiet"]) == 0
    got = results()
    for row in ("absolute", "dotdot", "symlink", "passwd"):
        assert got[row]["status"] == "input_error", row
        assert got[row]["error_type"] == "attachment_outside_root", row
        assert "outside the attachments folder" in got[row]["error"]
    assert got["ok"]["status"] == "ok"
    assert got["url"]["status"] == "ok"  # a URL is not a file: passed on, never fetched
    real = {os.path.realpath(p) for p in opened}
    assert str(key) not in real and str(passwd) not in real
    assert "Traceback" not in capfd.readouterr().err


def test_a_symlink_out_of_a_documents_folder_is_its_rows_input_error(
    tmp_path: Path, opened: list[str]
) -> None:
    secret = tmp_path / "secret.pdf"
    make_pdf(secret, ["Vendor: Secret Ltd"])
    docs = Path("docs")
    docs.mkdir()
    make_pdf(docs / "a.pdf", ["Vendor: Acme"])
    (docs / "b.pdf").symlink_to(secret)
    (docs / "c.pdf").symlink_to(docs.resolve() / "a.pdf")  # inside the folder: fine
    job = job_file("docs/*.pdf")

    opened.clear()
    assert main(["run", str(job), "--fake", "--quiet"]) == 0
    got = results()
    assert got["docs/b.pdf"]["error_type"] == "attachment_outside_root"
    assert got["docs/a.pdf"]["status"] == "ok"
    assert got["docs/c.pdf"]["status"] == "ok"  # a link inside the folder is followed
    assert str(secret) not in {os.path.realpath(p) for p in opened}


def test_opting_out_is_explicit_and_the_estimate_says_so(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    make_png(elsewhere / "scan.png", (40, 40))
    write_rows(Path("in/rows.jsonl"), [{"path": str(elsewhere / "scan.png")}])

    job_file("in/rows.jsonl", extra_input="allow_any_path = true")
    assert main(["estimate", "job.toml"]) == 0
    out = capfd.readouterr().out
    assert "allow_any_path = true" in out and "read from wherever" in out
    assert main(["run", "job.toml", "--fake", "--quiet"]) == 0
    assert [r["status"] for r in results().values()] == ["ok"]

    # ... or names the folder the files are in
    Path("out/results.duckdb").unlink()
    job_file("in/rows.jsonl", extra_input=f'attachments_root = "{elsewhere}"')
    assert main(["run", "job.toml", "--fake", "--quiet"]) == 0
    assert [r["status"] for r in results().values()] == ["ok"]
    capfd.readouterr()
    job_file("in/rows.jsonl", extra_input='attachments_root = "nowhere"')
    assert main(["estimate", "job.toml"]) == 2
    assert "input.attachments_root" in only_line(capfd.readouterr().err)


def test_no_error_quotes_a_files_bytes() -> None:
    docs = Path("docs")
    docs.mkdir()
    (docs / "passwd.png").write_text(SECRET)
    (docs / "key.pdf").write_bytes(b"%PDF-1.4\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNz\n")
    (docs / "env.gif").write_bytes(b"GIF89a" + b"OPENAI_API_KEY=sk-secret\0" * 4)
    job = job_file("docs/*")

    assert main(["run", str(job), "--fake", "--quiet"]) == 0
    got = results()
    assert {r["status"] for r in got.values()} == {"input_error"}
    errors = " ".join(r["error"] for r in got.values())
    for fragment in ("root:x", "BEGIN OP", "OPENSSH", "b3Bl", "OPENAI_A", "sk-secret"):
        assert fragment not in errors


# -- 2. bounded decoding ------------------------------------------------------------------------


def test_a_decompression_bomb_and_a_huge_pdf_in_a_documents_folder_do_not_stop_the_job(
    tmp_path: Path,
) -> None:
    docs = Path("docs")
    docs.mkdir()
    (docs / "bomb.png").write_bytes(png_header(20_000, 20_000))
    with open(docs / "sparse.pdf", "wb") as fh:  # 200 MB on paper, a few KB on disk
        fh.write(b"%PDF-1.4\n")
        fh.truncate(200 << 20)
    with open(docs / "huge.png", "wb") as fh:  # a 30 MB image: more than any provider takes
        fh.write(png_header(4000, 4000))
        fh.truncate(30 << 20)
    make_png(docs / "ok.png", (40, 40))
    job = job_file("docs/*")

    started = time.monotonic()
    done = run_limited(["run", str(job), "--fake", "--quiet"], memory_mb=1200, timeout_s=90)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 60
    assert done.stderr.strip() == ""  # no traceback, no library's message
    got = results()
    assert got["docs/bomb.png"]["error_type"] == "attachment_too_large"
    assert "20,000 x 20,000" in got["docs/bomb.png"]["error"]
    assert got["docs/sparse.pdf"]["error_type"] == "attachment_too_large"
    assert got["docs/huge.png"]["error_type"] == "attachment_too_large"
    assert got["docs/ok.png"]["status"] == "ok"


def flate_pdf(path: Path, *, pages: int, inflated_mb: int) -> Path:
    """A small PDF whose pages' content streams each inflate to ``inflated_mb`` MB."""
    packer = zlib.compressobj(9)
    block = b"\0" * (1 << 20)
    stream = b"".join(packer.compress(block) for _ in range(inflated_mb)) + packer.flush()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
    for i in range(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            + f"/Contents {4 + 2 * i} 0 R >>".encode()
        )
        objects.append(
            f"<< /Length {len(stream)} /Filter /FlateDecode >>\nstream\n".encode()
            + stream
            + b"\nendstream"
        )
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\n".encode()
    out += f"startxref\n{xref}\n%%EOF\n".encode()
    path.write_bytes(bytes(out))
    return path


def test_a_pdf_that_needs_too_much_memory_is_given_up_in_its_own_process(tmp_path: Path) -> None:
    bomb = flate_pdf(tmp_path / "bomb.pdf", pages=1, inflated_mb=70)
    reader = documents.PdfReader(memory_bytes=150 << 20)
    try:
        reply = reader.read(str(bomb))
        assert reply["error"] == "memory"
        # the reader goes on with the next file in a new process
        fine = make_pdf(tmp_path / "fine.pdf", ["Total: 1.00"])
        assert reader.read(str(fine))["page_sizes"] == [[595.28, 841.89]]
    finally:
        reader.close()


def test_a_pdf_that_takes_too_long_is_given_up_and_the_reader_killed(tmp_path: Path) -> None:
    slow = flate_pdf(tmp_path / "slow.pdf", pages=60, inflated_mb=70)  # 4 GB to inflate
    reader = documents.PdfReader(timeout_s=1.5)
    try:
        started = time.monotonic()
        assert reader.read(str(slow)) == {"error": "timeout"}
        assert time.monotonic() - started < 5
    finally:
        reader.close()
    hung = documents.PdfReader(
        timeout_s=0.5, argv=[sys.executable, "-c", "import time; time.sleep(60)"]
    )
    try:
        assert hung.read(str(slow)) == {"error": "timeout"}
        assert hung._process is None  # killed, not left behind
    finally:
        hung.close()


def test_a_hostile_pdf_is_read_once_under_a_memory_cap_and_pypdf_says_nothing(
    tmp_path: Path,
) -> None:
    bomb = flate_pdf(tmp_path / "bomb.pdf", pages=2, inflated_mb=70)
    script = f"""
import time
from pipeline import documents
from pipeline.errors import InputError
calls = []
real = documents._PDF_READER.read
documents._PDF_READER.read = lambda path: calls.append(path) or real(path)
started = time.monotonic()
for _ in range(3):  # planning asks again: the answer is cached, the file is read once
    try:
        documents.inspect_file({str(bomb)!r})
    except InputError as exc:
        print(exc.error_type)
print(len(calls), round(time.monotonic() - started) < 30)
"""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (700 << 20, 700 << 20))

    done = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=cap,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.split()
    # pypdf stops each stream at its own 75 MB limit, or the reader's cap stops it: either way
    # a verdict, once.
    assert lines[-2:] == ["1", "True"]


def test_what_pypdf_says_goes_to_the_runs_log_not_the_terminal(
    capfd: pytest.CaptureFixture[str],
) -> None:
    docs = Path("docs")
    docs.mkdir()
    broken = make_pdf(docs / "a.pdf", ["Total: 1.00"])
    content = broken.read_bytes()
    broken.write_bytes(content[: content.rindex(b"startxref")] + b"startxref\n12345\n%%EOF\n")
    job = job_file("docs/*.pdf")

    assert main(["run", str(job), "--fake", "--quiet"]) == 0
    assert results()["docs/a.pdf"]["status"] == "ok"  # pypdf recovered, and said so
    assert "startxref" not in capfd.readouterr().err
    log = next(Path("out/runs").glob("*.log.jsonl")).read_bytes()
    events = [orjson.loads(line) for line in log.splitlines()]
    said = [e for e in events if e["event"] == "library_message" and e["library"] == "pypdf"]
    assert any("startxref" in e["message"] for e in said)


# -- 3. templates -------------------------------------------------------------------------------


def test_a_format_spec_a_row_can_size_is_refused_in_one_line(
    capfd: pytest.CaptureFixture[str],
) -> None:
    write_rows(Path("rows.jsonl"), [{"text": "hi", "w": 1_000_000_000_000}])
    job_file("rows.jsonl", attachments=None, prompt="{text:>{w}}")
    assert main(["run", "job.toml", "--fake"]) == 2
    line = only_line(capfd.readouterr().err)
    assert "request.prompt" in line and "may not use a row field" in line
    job_file("rows.jsonl", attachments=None, prompt="{text:>1000000000000}")
    assert main(["run", "job.toml", "--fake"]) == 2
    assert "100,000" in only_line(capfd.readouterr().err)
    job_file("rows.jsonl", attachments=None, prompt="[{text:>6}] {text:.1}")
    assert main(["run", "job.toml", "--fake", "--quiet"]) == 0
    assert not Path("runs").exists()


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_a_field_no_row_has_is_a_job_error_before_anything_is_sent(
    kind: str, capfd: pytest.CaptureFixture[str]
) -> None:
    rows = [{"id": str(i), "text": f"review {i}"} for i in range(5)]
    if kind == "jsonl":
        write_rows(Path("rows.jsonl"), rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), "rows.parquet")
    job_file(f"rows.{kind}", attachments=None, prompt="Review: {txet}")

    assert main(["run", "job.toml", "--fake", "--quiet"]) == 2
    line = only_line(capfd.readouterr().err)
    assert "{txet}" in line and f"rows.{kind}" in line and "text" in line
    assert not Path("out/results.duckdb").exists()  # refused before anything was opened
    assert main(["estimate", "job.toml"]) == 2
    assert "{txet}" in only_line(capfd.readouterr().err)


# -- 4. every option checked --------------------------------------------------------------------

GOOD = """name = "t"
[input]
path = "rows.jsonl"
[request]
provider = "openai"
model = "gpt-4o-mini"
prompt = "{text}"
"""


@pytest.mark.parametrize(
    ("table", "key", "value", "hint"),
    [
        ("limits", "concurrency", "100000000", f"at most {MAX_CONCURRENCY:,}"),
        ("limits", "concurrency", "0", "greater than 0"),
        ("limits", "timeout_s", "inf", "finite"),
        ("limits", "timeout_s", "nan", "finite"),
        ("limits", "timeout_s", "1e9", "at most 86,400"),
        ("limits", "budget_usd", "nan", "finite"),
        ("limits", "budget_usd", "-5", "greater than 0"),
        ("limits", "requests_per_minute", "inf", "finite"),
        ("limits", "tokens_per_minute", "-1", "greater than 0"),
        ("limits", "max_attempts", "1000000", "at most 100"),
        ("limits", "documents_in_flight_mb", "1e12", "at most 4,096"),
        ("limits", "concurrency", "1" + "0" * 400, "at most"),
        ("limits", "timeout_s", "1" + "0" * 400, "too large"),
        ("request", "max_tokens", "10000000000", "at most 1,000,000"),
        ("request", "context_window", "0", "greater than 0"),
        ("batch", "poll_interval_s", "nan", "finite"),
        ("batch", "max_requests", "60000", "at most 50,000"),
        ("batch", "max_bytes", "300000000", "at most 200,000,000"),
        ("cluster", "workers", "100000", "at most 256"),
    ],
)
def test_a_number_out_of_bounds_is_refused_in_one_line(
    table: str, key: str, value: str, hint: str, capfd: pytest.CaptureFixture[str]
) -> None:
    write_rows(Path("rows.jsonl"), [{"text": "x"}] * 5)
    if table == "request":
        text = GOOD.replace('prompt = "{text}"', f'prompt = "{{text}}"\n{key} = {value}')
    else:
        text = GOOD + f"[{table}]\n{key} = {value}\n"
    Path("job.toml").write_text(text)

    started = time.monotonic()
    assert main(["run", "job.toml", "--fake"]) == 2
    line = only_line(capfd.readouterr().err)
    assert f"{table}.{key}" in line and hint in line, line
    assert time.monotonic() - started < 5
    assert not Path("runs").exists()


@pytest.mark.parametrize(
    ("option", "hint"),
    [
        (["--budget-usd", "-5"], "--budget-usd must be greater than 0"),
        (["--budget-usd", "nan"], "--budget-usd must be a finite number"),
        (["--budget-usd", "inf"], "--budget-usd must be a finite number"),
        (["--workers", "0"], "--workers must be"),
        (["--base-url", "localhost:8000"], "--base-url: 'localhost:8000' is not an http(s) URL"),
    ],
)
def test_command_line_overrides_are_checked_like_the_job_file(
    option: list[str], hint: str, capfd: pytest.CaptureFixture[str]
) -> None:
    write_rows(Path("rows.jsonl"), [{"text": "x"}])
    Path("job.toml").write_text(GOOD)
    assert main(["run", "job.toml", "--fake", *option]) == 2
    assert hint in only_line(capfd.readouterr().err)


@pytest.mark.anyio
async def test_workers_start_as_requests_arrive_never_more_than_there_are(tmp_path: Path) -> None:
    """A cap of 10,000 with five requests starts five workers, not 10,000 tasks."""
    import asyncio

    in_flight: list[int] = []

    class Provider:
        name = "openai"

        async def send(self, request: Request) -> Reply:
            in_flight.append(len(asyncio.all_tasks()))
            await anyio.sleep(0.01)
            return Reply(
                text="ok", finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=1)
            )

        async def aclose(self) -> None:
            return None

    results_builder = ResultBuilder(
        job="j", run_id="r", prompt_hash="p", provider="openai", model="m"
    )
    written: list[Any] = []
    stats = RunStats()
    journal = Journal(tmp_path / "runs", run_id="r", db="d")
    sink = ResultSink(
        lambda path: written.extend(path.read_bytes().splitlines()[1:]),
        stats=stats,
        journal=journal,
    )
    executor = OnlineExecutor(
        provider=Provider(),
        budget=RunBudget(rate=LocalRateBudget(), concurrency=MAX_CONCURRENCY),
        sink=sink,
        results=results_builder,
        stats=stats,
        price=None,
        max_attempts=1,
        url="http://127.0.0.1:9",
    )
    send, receive = anyio.create_memory_object_stream[Request](16)
    before = len(asyncio.all_tasks())
    async with anyio.create_task_group() as tg:
        tg.start_soon(sink.run)
        async with send, anyio.create_task_group() as work:
            work.start_soon(executor.run, receive)
            for i in range(5):
                await send.send(request(str(i)))
            await send.aclose()
        sink.close()
    assert len(written) == 5
    # this test, the sink, the executor's task group and five workers at most
    assert max(in_flight) <= before + 2 + 5


def request(row_id: str) -> Request:
    return Request(
        row_id=row_id,
        request_key=f"k{row_id}",
        prompt_hash="p",
        provider="openai",
        model="m",
        system=None,
        prompt="hi",
        max_tokens=5,
        temperature=None,
        est_input_tokens=3,
        source="in.jsonl",
        line=int(row_id) + 1,
    )


# -- 5. no credentials in URLs ------------------------------------------------------------------

KEY = "sk-live-DO-NOT-PRINT-0123456789"


@pytest.mark.parametrize(
    "where",
    ["job", "fallback", "option", "environment", "address"],
)
def test_a_url_with_a_user_and_password_is_refused_without_echoing_it(
    where: str, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    write_rows(Path("rows.jsonl"), [{"text": "x"}])
    url = f"http://user:{KEY}@127.0.0.1:9/v1"
    text, argv = GOOD, ["run", "job.toml"]
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    if where == "job":
        text = GOOD + f'base_url = "{url}"\n'
    elif where == "fallback":
        text = GOOD + f'[request.fallback]\nmodel = "gpt-4o"\nbase_url = "{url}"\n'
    elif where == "option":
        argv += ["--base-url", url]
    elif where == "environment":
        monkeypatch.setenv("OPENAI_BASE_URL", url)
    else:
        argv += ["--address", f"ray://admin:{KEY}@head:10001", "--engine", "ray"]
    Path("job.toml").write_text(text)

    assert main(argv) == 2
    out, err = capfd.readouterr()
    line = only_line(err)
    assert "user name or password" in line
    assert KEY not in out + err and "DO-NOT-PRINT" not in out + err
    assert not Path("runs").exists() and not Path("out").exists()


# -- 6. row ids ---------------------------------------------------------------------------------


def test_an_id_column_that_changes_type_overnight_sends_nothing_again(
    capfd: pytest.CaptureFixture[str],
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_rows(Path("rows.jsonl"), [{"id": i, "text": f"review {i}"} for i in range(1, 6)])
    job_file("rows.jsonl", attachments=None, prompt="{text}", extra_input='id = "id"')
    assert main(["run", "job.toml", "--fake", "--quiet"]) == 0
    assert set(results()) == {"1", "2", "3", "4", "5"}

    # upstream now writes the ids as strings, then pandas writes them as floats (a null crept in)
    write_rows(Path("rows.jsonl"), [{"id": str(i), "text": f"review {i}"} for i in range(1, 6)])
    assert main(["run", "job.toml", "--fake", "--quiet"]) == 0
    floats = pa.table(
        {"id": [1.0, 2.0, 3.0, 4.0, 5.0, None], "text": [f"review {i}" for i in range(1, 7)]}
    )
    pq.write_table(floats, "rows.parquet")
    job_file("rows.parquet", attachments=None, prompt="{text}", extra_input='id = "id"')
    assert main(["run", "job.toml", "--fake", "--quiet"]) == 0
    out = capfd.readouterr().out
    assert out.count("0 ok") == 2 and "5 already done" in out
    got = results()
    assert {k: v["status"] for k, v in got.items() if v["status"] != "ok"} == {
        "rows.parquet:6": "input_error"  # the null id
    }


def test_1_and_string_1_in_one_input_are_one_row_sent_once() -> None:
    write_rows(Path("rows.jsonl"), [{"id": 1, "text": "a"}, {"id": "1", "text": "b"}])
    job_file("rows.jsonl", attachments=None, prompt="{text}", extra_input='id = "id"')
    assert main(["run", "job.toml", "--fake", "--quiet"]) == 0
    with duckdb.connect("out/results.duckdb", read_only=True) as con:
        statuses = con.execute("SELECT status, error_type FROM results ORDER BY line").fetchall()
    assert statuses == [("ok", None), ("input_error", "duplicate_id")]


# -- the checks are one function each, for the library too --------------------------------------


def test_the_checks_refuse_the_same_things_for_a_library_caller(tmp_path: Path) -> None:
    from pipeline.plan import check_fields
    from pipeline.render import Renderer

    write_rows(Path("rows.jsonl"), [{"text": "x"}])
    job = parse_job(GOOD.replace("{text}", "{nope}"), path="inline.toml")
    with pytest.raises(ConfigError, match=r"\{nope\}.*rows\.jsonl"):
        check_fields(job)
    spec = parse_job(GOOD).request
    import dataclasses

    with pytest.raises(ConfigError):
        Renderer(dataclasses.replace(spec, prompt="{text:{w}}"))
    with pytest.raises(InputError) as info:
        documents.confine("/etc/passwd", str(tmp_path.resolve()))
    assert info.value.error_type == "attachment_outside_root"
    assert job.with_overrides(input_path="elsewhere/rows.jsonl").request.attachments_root == (
        "elsewhere"
    )


# -- run ids and what is written ----------------------------------------------------------------


@pytest.mark.parametrize("run_id", ["../../x", "/tmp/abs", "a/b", "..", ".hidden", "x" * 129])
def test_a_run_id_that_could_name_a_file_elsewhere_is_refused(
    run_id: str, capfd: pytest.CaptureFixture[str]
) -> None:
    write_rows(Path("rows.jsonl"), [{"id": "1", "text": "t"}])
    job_file("rows.jsonl", attachments=None, prompt="Review: {text}")
    assert main(["run", "job.toml", "--fake", "--quiet", "--run-id", run_id]) == 2
    assert "is not allowed" in only_line(capfd.readouterr().err)
    assert not Path("out").exists() and not Path("/tmp/abs.manifest.json").exists()


def test_a_manifest_naming_a_run_id_outside_runs_is_not_resumed(
    capfd: pytest.CaptureFixture[str],
) -> None:
    write_rows(Path("rows.jsonl"), [{"id": "1", "text": "t"}])
    job_file("rows.jsonl", attachments=None, prompt="Review: {text}")
    assert main(["run", "job.toml", "--fake", "--quiet", "--run-id", "r1"]) == 0
    capfd.readouterr()
    manifest = Path("out/runs/r1.manifest.json")
    doc = orjson.loads(manifest.read_bytes())
    crafted = Path("crafted.manifest.json")
    crafted.write_bytes(orjson.dumps({**doc, "run_id": "../../escaped"}))
    assert main(["resume", str(crafted)]) == 2
    assert "is not allowed" in only_line(capfd.readouterr().err)
    assert not list(Path("..").glob("escaped*"))


def test_nothing_shaped_like_a_key_reaches_a_manifest_or_the_database(
    capfd: pytest.CaptureFixture[str],
) -> None:
    leaked = "sk-proj-" + "Q" * 24
    write_rows(Path("rows.jsonl"), [{"id": "1", "text": "t"}])
    job_file("rows.jsonl", attachments=None, prompt=f"Review: {{text}} ({leaked})")
    assert main(["run", "job.toml", "--fake", "--quiet"]) == 0
    for path in Path("out").rglob("*"):
        if path.is_file() and not path.name.endswith(".duckdb"):
            assert leaked.encode() not in path.read_bytes(), path
    with duckdb.connect("out/results.duckdb", read_only=True) as con:
        (text,) = con.execute("SELECT job_text || manifest FROM runs").fetchone()  # type: ignore[misc]
    assert leaked not in text and "[REDACTED]" in text
