"""Documents and images as input: request bodies, per-row checks, tokens, memory, batches, reruns.

Every document is made here, in the test's temporary folder (fpdf2 for PDFs, Pillow for
images); nothing binary is committed.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import anyio
import duckdb
import httpx
import orjson
import pytest
from _openapi import openai_validator
from conftest import ThreadedFakeProvider

from pipeline import documents
from pipeline.cli import main
from pipeline.errors import ConfigError, InputError
from pipeline.estimates import estimate_job
from pipeline.execution.parts import PartWriter
from pipeline.fake import _anthropic, _openai
from pipeline.job import load_job, parse_job
from pipeline.limits import ByteWindow
from pipeline.providers import make_provider
from pipeline.providers.anthropic import messages_body
from pipeline.providers.anthropic_batch import AnthropicBatchProvider
from pipeline.providers.openai import chat_body
from pipeline.records import BadRow, Row
from pipeline.render import Renderer
from pipeline.sources import iter_row_chunks

MODELS = {"openai": "gpt-4o", "anthropic": "claude-sonnet-4-5"}
SCHEMA = Path(__file__).resolve().parent.parent / "jobs" / "schemas" / "invoice.json"


# -- making documents --------------------------------------------------------------------------


def make_pdf(path: Path, lines: list[str], *, pages: int = 1, pad_kb: int = 0) -> Path:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(False)
    for page in range(pages):
        pdf.add_page()
        pdf.set_font("Helvetica", size=11)
        for line in lines if page == 0 else [f"Page {page + 1}"]:
            pdf.cell(0, 7, line, new_x="LMARGIN", new_y="NEXT")
    if pad_kb:
        from PIL import Image

        side = int((pad_kb * 1024) ** 0.5)
        noise = io.BytesIO()
        Image.frombytes("L", (side, side), os.urandom(side * side)).save(noise, format="PNG")
        noise.seek(0)
        pdf.image(noise, x=20, y=200, w=50)
    pdf.output(str(path))
    return path


def make_png(path: Path, size: tuple[int, int] = (850, 1100), text: str = "") -> Path:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("Description", text)
    Image.new("L", size, 255).save(path, format="PNG", pnginfo=info)
    return path


INVOICE = [
    "Acme Tools Ltd",
    "Vendor: Acme Tools Ltd",
    "Invoice number: ACM-0042",
    "Date: 2024-05-17",
    "Currency: GBP",
    "Description | Quantity | Unit price | Amount",
    "Hammer | 2 | 12.50 | 25.00",
    "Total: 30.00",
]


def doc_job(tmp: Path, provider: str, *, extra: str = "", attach: str = '["{path}"]') -> str:
    return f"""
name = "docs"
[input]
path = "{tmp / "docs"}/*"
[request]
provider = "{provider}"
model = "{MODELS[provider]}"
prompt = "Extract the invoice."
attachments = {attach}
schema = "{SCHEMA}"
max_tokens = 600
{extra}
[output]
db = "{tmp / "r.duckdb"}"
"""


def write_job(tmp: Path, text: str) -> Path:
    path = tmp / "job.toml"
    path.write_text(text)
    return path


def folder(tmp: Path) -> Path:
    docs = tmp / "docs"
    docs.mkdir(exist_ok=True)
    return docs


def results(tmp: Path) -> dict[str, dict[str, Any]]:
    with duckdb.connect(str(tmp / "r.duckdb"), read_only=True) as con:
        cur = con.execute("SELECT * EXCLUDE (finished_at) FROM results")
        names = [d[0] for d in cur.description]
        return {
            row[names.index("row_id")]: dict(zip(names, row, strict=True)) for row in cur.fetchall()
        }


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-openai")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key-anthropic")


def render(job_text: str, path: str) -> Any:
    renderer = Renderer(parse_job(job_text).request)
    return renderer.render(Row(path, {"path": path}, path, 1))


# -- request bodies are what the providers accept -----------------------------------------------


def test_openai_bodies_validate_against_the_openapi_spec_and_the_sdk_types(
    tmp_path: Path,
) -> None:
    from openai.types.chat import completion_create_params
    from pydantic import TypeAdapter

    docs = folder(tmp_path)
    pdf = make_pdf(docs / "a.pdf", INVOICE)
    png = make_png(docs / "b.png")
    text = doc_job(
        tmp_path,
        "openai",
        attach='["{path}", "https://example.com/scan.jpg"]',
        extra='image_detail = "high"',
    )
    validator = openai_validator("CreateChatCompletionRequest")
    sdk = TypeAdapter(completion_create_params.CompletionCreateParamsNonStreaming)
    for path in (pdf, png):
        body = chat_body(render(text, str(path)))
        validator.validate(body)
        sdk.validate_python(body)
        parts = body["messages"][-1]["content"]
        assert parts[-1] == {"type": "text", "text": "Extract the invoice."}  # text goes last
        assert parts[1] == {
            "type": "image_url",
            "image_url": {"url": "https://example.com/scan.jpg", "detail": "high"},
        }
    pdf_part = chat_body(render(text, str(pdf)))["messages"][-1]["content"][0]
    assert pdf_part["type"] == "file" and pdf_part["file"]["filename"] == "a.pdf"
    data = pdf_part["file"]["file_data"].removeprefix("data:application/pdf;base64,")
    assert base64.b64decode(data) == pdf.read_bytes()
    png_part = chat_body(render(text, str(png)))["messages"][-1]["content"][0]
    assert png_part["image_url"]["url"].startswith("data:image/png;base64,")


@pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
def test_anthropic_bodies_are_built_through_the_sdk_types_and_answered_by_the_sdk(
    tmp_path: Path,
) -> None:
    import anthropic
    from anthropic.types import message_create_params
    from pydantic import TypeAdapter

    docs = folder(tmp_path)
    pdf = make_pdf(docs / "a.pdf", INVOICE)
    jpeg = docs / "c.jpg"
    from PIL import Image

    Image.new("RGB", (640, 480), "white").save(jpeg, format="JPEG")
    text = doc_job(tmp_path, "anthropic", attach='["{path}", "https://example.com/x.pdf"]')
    sdk = TypeAdapter(message_create_params.MessageCreateParamsNonStreaming)
    bodies = [messages_body(render(text, str(p))) for p in (pdf, jpeg)]
    for body in bodies:
        sdk.validate_python(body)
        blocks = body["messages"][-1]["content"]
        assert blocks[1] == {
            "type": "document",
            "source": {"type": "url", "url": "https://example.com/x.pdf"},
        }
        assert blocks[-1]["type"] == "text"
    assert bodies[0]["messages"][-1]["content"][0]["source"]["media_type"] == "application/pdf"
    image = bodies[1]["messages"][-1]["content"][0]
    assert image["type"] == "image" and image["source"]["media_type"] == "image/jpeg"

    async def through_the_sdk() -> list[Any]:
        from pipeline.fake import FakeConfig, running_fake_provider

        async with running_fake_provider(FakeConfig()) as fake:
            client = anthropic.AsyncAnthropic(
                api_key="k", base_url=fake.anthropic_base_url, max_retries=0
            )
            answers = [await client.messages.create(**body) for body in bodies]
            await client.close()
            return answers

    answers = anyio.run(through_the_sdk)
    assert answers[0].content[0].type == "tool_use"
    assert answers[0].content[0].input["invoice_number"] == "ACM-0042"  # read from the PDF


# -- checked before sending, per row ------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_bad_files_are_their_rows_input_errors_naming_the_file_and_the_limit(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None, provider: str
) -> None:
    docs = folder(tmp_path)
    make_pdf(docs / "good.pdf", INVOICE)
    make_png(docs / "good.png", text="\n".join(INVOICE))
    (docs / "notes.png").write_text("this is text, not an image")
    make_pdf(docs / "long.pdf", INVOICE, pages=101)
    make_png(docs / "huge.png", size=(8001, 8))
    table = tmp_path / "rows.jsonl"
    table.write_text(
        orjson.dumps({"id": "gone", "image": str(docs / "missing.png")}).decode() + "\n"
    )
    job = write_job(tmp_path, doc_job(tmp_path, provider))
    url = threaded_fake.base_url(provider)
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0
    rows = results(tmp_path)
    by_name = {Path(k).name: v for k, v in rows.items()}
    assert by_name["good.pdf"]["status"] == "ok" and by_name["good.png"]["status"] == "ok"
    notes = by_name["notes.png"]
    assert (notes["status"], notes["error_type"]) == ("input_error", "attachment_unsupported")
    assert "notes.png" in notes["error"] and "not a PDF, PNG, JPEG, GIF or WebP" in notes["error"]
    long = by_name["long.pdf"]
    assert (long["status"], long["error_type"]) == ("input_error", "too_many_pages")
    assert "long.pdf" in long["error"] and "at most 100" in long["error"]
    huge = by_name["huge.png"]
    if provider == "anthropic":
        assert (huge["status"], huge["error_type"]) == ("input_error", "image_too_large")
        assert "8001x8" in huge["error"] and "8000x8000" in huge["error"]
    else:
        assert huge["status"] == "ok"  # OpenAI scales large images down instead
    # A table of image paths: a missing file is that row's error, naming the file.
    table_job = doc_job(tmp_path, provider, attach='["{image}"]').replace(
        f'path = "{tmp_path / "docs"}/*"', f'path = "{table}"\nid = "id"'
    )
    job = write_job(tmp_path, table_job)
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0
    gone = results(tmp_path)["gone"]
    assert (gone["status"], gone["error_type"]) == ("input_error", "attachment_missing")
    assert "missing.png: no such file" in gone["error"] and "line 1" in gone["error"]
    assert threaded_fake.accounting()["duplicates_paid"] == 0


def test_provider_limits_name_the_file_and_the_figure() -> None:
    def facts(**kw: Any) -> documents.FileFacts:
        base: dict[str, Any] = {
            "path": "x.png",
            "media_type": "image/png",
            "size_bytes": 1000,
            "sha256": "",
        }
        return documents.FileFacts(**{**base, **kw})

    with pytest.raises(InputError, match=r"x.png: .*base64.*at most 5,000,000") as err:
        documents.check("anthropic", [facts(size_bytes=3_800_000, width=10, height=10)])
    assert err.value.error_type == "attachment_too_large"
    documents.check("openai", [facts(size_bytes=3_800_000, width=10, height=10)])
    with pytest.raises(InputError, match="more than 20 images"):
        documents.check("anthropic", [facts(width=2001, height=10)] * 21)
    documents.check("anthropic", [facts(width=2001, height=10)] * 20)
    with pytest.raises(InputError, match="animated GIF"):
        documents.check("openai", [facts(media_type="image/gif", animated=True)])
    pdf = facts(path="big.pdf", media_type="application/pdf", size_bytes=24_000_000)
    with pytest.raises(InputError, match=r"big.pdf: the request would be about .* 32,000,000"):
        documents.check("anthropic", [pdf])
    with pytest.raises(InputError, match=r"at most 32,000,000"):
        documents.check("openai", [pdf, pdf])
    with pytest.raises(InputError, match="encrypted"):
        documents.check("openai", [facts(media_type="application/pdf", encrypted=True)])
    with pytest.raises(InputError, match="not by URL"):
        documents.url_attachment("https://x.org/a.pdf", "openai", "gpt-4o", None)


# -- tokens: the published formulas, and the estimate against what the fake reports -------------


def test_image_tokens_follow_the_published_examples() -> None:
    tokens = documents.image_tokens
    assert tokens("openai", "gpt-4o", 1024, 1024, "high") == 765
    assert tokens("openai", "gpt-4o", 2048, 4096, None) == 1105
    assert tokens("openai", "gpt-4o", 4096, 8192, "low") == 85
    assert tokens("openai", "gpt-4.1-mini", 1024, 1024, None) == 1659  # 1,024 patches x 1.62
    assert tokens("openai", "gpt-4.1-mini", 1800, 2400, "low") == 2353  # 1,452 patches x 1.62
    assert tokens("anthropic", "claude-sonnet-4-5", 1000, 1000, None) == 1334
    assert tokens("anthropic", "claude-sonnet-4-5", 1092, 1092, None) == 1590
    assert tokens("anthropic", "claude-sonnet-4-5", 200, 200, None) == 54
    assert tokens("anthropic", "claude-sonnet-4-5", 4000, 3000, None) == 1600  # scaled down
    a4 = [(595.0, 842.0)] * 3
    assert documents.pdf_tokens("anthropic", "m", a4, text_tokens=0) == 3 * 1600
    assert documents.pdf_tokens("openai", "gpt-4o", a4, text_tokens=0) == 3 * 85


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_the_estimate_is_within_a_quarter_of_what_the_fake_then_reports(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None, provider: str
) -> None:
    docs = folder(tmp_path)
    for i in range(6):
        lines = [*INVOICE[:2], f"Invoice number: ACM-{i:04d}", *INVOICE[3:]]
        make_pdf(docs / f"inv-{i}.pdf", lines, pages=1 + i % 2)
        make_png(docs / f"scan-{i}.png", size=(827, 1169), text="\n".join(lines))
    job_path = write_job(tmp_path, doc_job(tmp_path, provider))
    estimate = estimate_job(load_job(job_path))
    assert estimate.rows_to_send == 12
    url = threaded_fake.base_url(provider)
    assert main(["run", str(job_path), "--base-url", url, "--quiet"]) == 0
    rows = results(tmp_path).values()
    assert {r["status"] for r in rows} == {"ok"}
    actual = sum(r["input_tokens"] for r in rows)
    ratio = estimate.input_tokens / actual
    print(f"{provider}: estimated {estimate.input_tokens:,} input tokens, fake {actual:,}")
    assert 0.75 <= ratio <= 1.25, ratio


# -- memory: references in the plan, bytes read at send time within a window ------------------


def test_planned_requests_hold_no_file_content_and_sends_stay_within_the_byte_window(
    tmp_path: Path,
) -> None:
    docs = folder(tmp_path)
    paths = [make_pdf(docs / f"d{i}.pdf", INVOICE, pad_kb=40) for i in range(24)]
    job = parse_job(doc_job(tmp_path, "anthropic", extra="[limits]\ndocuments_in_flight_mb = 0.2"))
    renderer = Renderer(job.request)
    requests = [renderer.render(Row(str(p), {"path": str(p)}, str(p), 1)) for p in paths]
    for request in requests:
        assert all(len(repr(a)) < 1000 for a in request.attachments)  # a reference, no bytes
        assert request.attachment_bytes > 40_000
    in_flight = 0
    most = 0

    async def handler(http: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += len(http.content)
        most = max(most, in_flight)
        await anyio.sleep(0.01)
        in_flight -= len(http.content)
        body = {
            "content": [{"type": "text", "text": "{}"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 1, "output_tokens": 1},
        }
        return httpx.Response(200, json=body)

    async def send_all() -> ByteWindow:
        provider = make_provider(
            job, api_key="k", base_url="http://fake.invalid", transport=httpx.MockTransport(handler)
        )
        window = provider._window  # type: ignore[attr-defined]
        assert isinstance(window, ByteWindow) and window.capacity == 200_000
        async with anyio.create_task_group() as tg:
            for request in requests:
                tg.start_soon(provider.send, request)
        return window

    window = anyio.run(send_all)
    assert window.peak <= window.capacity and window.held == 0
    assert most <= window.capacity + 24 * 2_000  # bodies in flight: the window, plus JSON
    assert most > requests[0].attachment_bytes  # more than one at a time


def test_a_file_removed_or_changed_after_planning_is_the_rows_input_error(
    tmp_path: Path,
) -> None:
    docs = folder(tmp_path)
    pdf = make_pdf(docs / "a.pdf", INVOICE)
    png = make_png(docs / "b.png")
    text = doc_job(tmp_path, "anthropic")
    changed, removed = render(text, str(pdf)), render(text, str(png))
    make_pdf(pdf, [*INVOICE, "a new line"])
    png.unlink()
    with pytest.raises(InputError, match="changed after the row was planned") as err:
        messages_body(changed)
    assert err.value.error_type == "attachment_changed"
    with pytest.raises(InputError, match="removed after the row was planned"):
        messages_body(removed)


# -- rows from a glob of documents; the content is part of the request key ----------------------


def test_a_glob_of_documents_makes_one_row_per_file(tmp_path: Path) -> None:
    docs = folder(tmp_path)
    make_pdf(docs / "a.pdf", INVOICE, pages=3)
    make_png(docs / "b.jpg")  # a PNG named .jpg: the content decides
    job = parse_job(doc_job(tmp_path, "openai"))
    rows = [r for chunk in iter_row_chunks(job.input) for r in chunk]
    assert [r.row_id for r in rows] == [str(docs / "a.pdf"), str(docs / "b.jpg")]
    first, second = (r.fields for r in rows if isinstance(r, Row))
    assert first == {
        "path": str(docs / "a.pdf"),
        "name": "a.pdf",
        "size_bytes": (docs / "a.pdf").stat().st_size,
        "media_type": "application/pdf",
        "pages": 3,
    }
    assert second["media_type"] == "image/png" and "pages" not in second
    (docs / "rows.jsonl").write_text("{}\n")
    with pytest.raises(ConfigError, match="both documents and row files"):
        list(iter_row_chunks(job.input))


def test_a_rerun_skips_done_documents_and_sends_a_replaced_one_again(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None
) -> None:
    docs = folder(tmp_path)
    for i in range(4):
        make_pdf(docs / f"inv-{i}.pdf", [*INVOICE[:2], f"Invoice number: N-{i}", *INVOICE[3:]])
    job = write_job(tmp_path, doc_job(tmp_path, "anthropic"))
    url = threaded_fake.anthropic_base_url
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0
    assert threaded_fake.accounting()["requests"] == 4
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0
    assert threaded_fake.accounting()["requests"] == 4  # nothing sent again
    replaced = docs / "inv-2.pdf"
    make_pdf(replaced, [*INVOICE[:2], "Invoice number: N-2-CORRECTED", *INVOICE[3:]])
    os.utime(docs / "inv-1.pdf")  # touched, same content: still done
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0
    assert threaded_fake.accounting()["requests"] == 5
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as con:
        numbers = con.execute(
            "SELECT invoice_number FROM extract_docs WHERE row_id = ?", [str(replaced)]
        ).fetchall()
    assert numbers == [("N-2-CORRECTED",)]  # the view shows the latest answer


def test_key_without_readable_files_is_the_row_id_alone(tmp_path: Path) -> None:
    renderer = Renderer(parse_job(doc_job(tmp_path, "openai")).request)
    missing = Row("x", {"path": str(tmp_path / "nope.pdf")}, "t.jsonl", 1)
    bad = BadRow("t.jsonl:2", "t.jsonl", 2, "bad", "bad_json")
    from pipeline.render import request_key

    assert renderer.key(missing) == request_key("x", renderer.prompt_hash)
    assert renderer.key(bad) == request_key("t.jsonl:2", renderer.prompt_hash)


# -- batch mode: parts split by bytes, written streaming -----------------------------------------


def test_batch_parts_of_documents_stay_under_the_byte_limit(tmp_path: Path) -> None:
    docs = folder(tmp_path)
    paths = [make_pdf(docs / f"d{i}.pdf", INVOICE, pad_kb=60) for i in range(20)]
    job = parse_job(doc_job(tmp_path, "anthropic"))
    renderer = Renderer(job.request)
    provider = AnthropicBatchProvider(
        httpx.MockTransport(lambda r: httpx.Response(500)),
        **{
            "base_url": "http://x.invalid",
            "api_key": "k",
        },
    )
    limit = 300_000
    writer = PartWriter(tmp_path / "parts", max_requests=1000, max_bytes=limit)
    closed = []
    for p in paths:
        request = renderer.render(Row(str(p), {"path": str(p)}, str(p), 1))
        line = provider.line(request)
        assert len(line) > 60_000  # the document is in the line, base64
        done = writer.add(request.request_key, request.row_id, str(p), 1, line)
        if done is not None:
            closed.append(done)
    last = writer.close()
    assert last is not None
    closed.append(last)
    assert len(closed) >= 5
    assert sum(part.count for part, _ in closed) == 20
    for part, _rows in closed:
        assert part.bytes <= limit and part.path.stat().st_size <= limit


def test_a_batch_document_job_is_split_by_bytes_and_answered_in_full(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None
) -> None:
    docs = folder(tmp_path)
    for i in range(12):
        lines = [*INVOICE[:2], f"Invoice number: B-{i}", *INVOICE[3:]]
        make_pdf(docs / f"inv-{i:02d}.pdf", lines, pad_kb=30)
    extra = 'mode = "batch"\n[batch]\npoll_interval_s = 0.2\nmax_bytes = 200000'
    job = write_job(tmp_path, doc_job(tmp_path, "anthropic", extra=extra))
    threaded_fake.update_config(anthropic_batch_max_bytes=200_000)
    url = threaded_fake.anthropic_base_url
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as con:
        parts = con.execute("SELECT requests, bytes FROM batches ORDER BY part").fetchall()
        numbers = dict(con.execute("SELECT row_id, invoice_number FROM extract_docs").fetchall())
    assert len(parts) >= 3 and all(nbytes <= 200_000 for _, nbytes in parts)
    assert sum(n for n, _ in parts) == 12
    assert {Path(k).name: v for k, v in numbers.items()}["inv-07.pdf"] == "B-7"
    assert {r["mode"] for r in results(tmp_path).values()} == {"batch"}


# -- the fake provider checks parts and blocks as the APIs do ------------------------------------


def _png_b64(size: tuple[int, int] = (20, 10)) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", size, 255).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _anthropic_body(block: dict[str, Any]) -> dict[str, Any]:
    content = [block, {"type": "text", "text": "What is it?"}]
    return {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"type": "base64", "media_type": "image/png", "data": "%%%"}, "invalid base64"),
        ({"type": "base64", "media_type": "image/jpeg", "data": _png_b64()}, "image/jpeg media"),
        ({"type": "base64", "media_type": "image/bmp", "data": _png_b64()}, "Input should be"),
        ({"type": "base64", "media_type": "image/png", "data": _png_b64((8001, 2))}, "8000"),
        ({"type": "url", "url": "ftp://example.com/a.png"}, "valid URL"),
        ({"type": "base64", "media_type": "image/png", "data": "A" * 5_300_000}, "5 MB"),
    ],
)
def test_the_fake_refuses_bad_anthropic_images_as_the_api_does(
    source: dict[str, Any], message: str
) -> None:
    with pytest.raises(_anthropic.AnthropicInvalid, match=message):
        _anthropic.parse_messages_request(_anthropic_body({"type": "image", "source": source}))


def test_the_fake_charges_images_and_pdfs_by_the_published_formulas(tmp_path: Path) -> None:
    ok = _anthropic.parse_messages_request(
        _anthropic_body(
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": _png_b64()},
            }
        )
    )
    plain = _anthropic.parse_messages_request(
        {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "What is it?"}]}
    )
    assert ok.input_tokens - plain.input_tokens == 1  # 20 x 10 / 750, rounded up
    url = _anthropic.parse_messages_request(
        _anthropic_body({"type": "image", "source": {"type": "url", "url": "https://x.org/a"}})
    )
    assert url.input_tokens - plain.input_tokens == 1600  # not fetched: the largest image
    pdf = base64.b64encode(make_pdf(tmp_path / "a.pdf", INVOICE).read_bytes()).decode()
    chat = _openai.parse_chat_request(
        {
            "model": "gpt-4o",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "file",
                            "file": {
                                "filename": "a.pdf",
                                "file_data": f"data:application/pdf;base64,{pdf}",
                            },
                        },
                        {"type": "text", "text": "x"},
                    ],
                }
            ],
        }
    )
    assert "ACM-0042" in chat.documents_text
    assert chat.prompt_tokens > 85  # one page image at detail low, plus the page's text
    for bad, code in (
        ({"type": "file", "file": {"file_data": "data:text/plain;base64,eA=="}}, "invalid_value"),
        ({"type": "file", "file": {"file_id": "file-1"}}, "invalid_value"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}, "invalid_image"),
        (
            {"type": "image_url", "image_url": {"url": f"data:image/gif;base64,{_png_b64()}"}},
            "invalid_image_format",
        ),
    ):
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": [bad]}]}
        with pytest.raises(_openai.OpenAIInvalid) as err:
            _openai.parse_chat_request(body)
        assert err.value.code is not None and err.value.code.startswith(code)


def test_rerun_failed_sends_again_only_the_documents_that_failed(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, env: None
) -> None:
    docs = folder(tmp_path)
    for i in range(3):
        make_pdf(docs / f"inv-{i}.pdf", [*INVOICE[:2], f"Invoice number: R-{i}", *INVOICE[3:]])
    job = write_job(tmp_path, doc_job(tmp_path, "anthropic", extra="[limits]\nmax_attempts = 1"))
    url = threaded_fake.anthropic_base_url
    threaded_fake.update_config(error_rate=1.0)
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0
    assert {r["status"] for r in results(tmp_path).values()} == {"failed"}
    run_id = next((tmp_path / "runs").glob("*.manifest.json")).name.split(".")[0]
    threaded_fake.reset()
    rerun = ["rerun", run_id, "--failed", "--db", str(tmp_path / "r.duckdb"), "--base-url", url]
    assert main([*rerun, "--quiet"]) == 0
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as con:
        ok = con.execute("SELECT count(*) FROM results WHERE status = 'ok'").fetchone()
        numbers = {n for (n,) in con.execute("SELECT invoice_number FROM extract_docs").fetchall()}
    assert ok == (3,) and numbers == {"R-0", "R-1", "R-2"}
    assert threaded_fake.accounting()["requests"] == 3  # after the reset: each document once
