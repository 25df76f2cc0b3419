"""Documents and images on Gemini: the limits and token formulas Google publishes, the parts a
request carries, and document jobs end to end on the fake, online and in Batch Mode.

Every document is made here (tests/test_documents.py's helpers); nothing binary is committed.
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
from conftest import ThreadedFakeProvider
from test_batch_runner import batch_accounting
from test_documents import INVOICE, SCHEMA, folder, make_pdf, render, results

from pipeline import documents
from pipeline.cli import main
from pipeline.errors import InputError
from pipeline.estimates import estimate_job
from pipeline.fake import _gemini
from pipeline.job import load_job
from pipeline.job.pricing import cost_usd, lookup_price
from pipeline.providers.gemini import generate_body
from pipeline.providers.gemini_batch import INLINE_MAX_BYTES
from pipeline.records import Usage


def facts(**changes: Any) -> documents.FileFacts:
    base: dict[str, Any] = {
        "path": "x.png",
        "media_type": "image/png",
        "size_bytes": 1000,
        "sha256": "",
        "width": 10,
        "height": 10,
    }
    return documents.FileFacts(**{**base, **changes})


# -- Google's figures -------------------------------------------------------------------------


def test_image_and_page_tokens_follow_googles_published_rules() -> None:
    def tokens(width: int, height: int) -> int:
        return documents.image_tokens("gemini", "gemini-2.5-flash", width, height, None)

    assert tokens(384, 384) == tokens(100, 20) == 258  # both sides <= 384 px: one tile
    assert tokens(385, 385) == 4 * 258  # crops of 256 px (the smallest): 2 x 2
    assert tokens(1024, 1024) == 4 * 258  # crops of 682 px
    assert tokens(827, 1169) == 6 * 258  # an A4 scan at 100 dpi: crops of 551 px, 2 x 3
    assert tokens(1000, 200) == 4 * 258  # crops of 256 px, 4 x 1
    assert tokens(3072, 3072) == 16 * 258  # crops of 768 px (the largest)
    assert tokens(8000, 8000) == 16 * 258  # scaled down to 3,072 x 3,072 first
    a4 = [(595.0, 842.0)] * 3
    # A page is 258 tokens whatever its size and text.
    assert documents.pdf_tokens("gemini", "gemini-2.5-flash", a4, text_tokens=900) == 3 * 258
    assert documents.pdf_tokens("gemini", "gemini-2.5-flash", [(2000.0, 3000.0)]) == 258


def test_geminis_limits_name_the_file_and_the_figure() -> None:
    with pytest.raises(InputError, match=r"x.gif: a GIF image; gemini takes only PNG, JPEG") as e:
        documents.check("gemini", [facts(path="x.gif", media_type="image/gif")])
    assert e.value.error_type == "attachment_unsupported"
    documents.check("openai", [facts(media_type="image/gif")])  # the others take GIFs
    documents.check("gemini", [facts(media_type="image/webp", width=9000, height=9000)])
    letter = (612.0, 792.0)
    long = facts(path="long.pdf", media_type="application/pdf", page_sizes=(letter,) * 1001)
    with pytest.raises(InputError, match=r"long.pdf: 1001 PDF pages .* at most 1000") as e:
        documents.check("gemini", [long])
    assert e.value.error_type == "too_many_pages"
    documents.check("gemini", [facts(media_type="application/pdf", page_sizes=(letter,) * 1000)])
    big = facts(path="scan.png", size_bytes=14_900_000)  # 19,866,668 bytes as base64
    with pytest.raises(InputError, match=r"scan.png: .* about 20,.* at most 20,000,000") as e:
        documents.check("gemini", [big], text_bytes=200_000)
    assert e.value.error_type == "request_too_large"
    documents.check("gemini", [big], text_bytes=100)


def test_urls_go_to_gemini_as_file_data_except_where_google_says_they_cannot() -> None:
    image = documents.url_attachment("https://x.org/a.png?v=2", "gemini", "gemini-2.5-flash", None)
    assert (image.kind, image.media_type, image.url) == ("image", "image/png", True)
    assert image.tokens == 16 * 258  # never fetched: counted as the largest image
    pdf = documents.url_attachment("https://x.org/a.pdf", "gemini", "gemini-2.5-pro", None)
    assert (pdf.kind, pdf.tokens) == ("pdf", 258)
    with pytest.raises(InputError, match=r"https://x.org/a.pdf: Gemini 2.0 models do not") as e:
        documents.url_attachment("https://x.org/a.pdf", "gemini", "gemini-2.0-flash", None)
    assert e.value.error_type == "attachment_url"
    with pytest.raises(InputError, match=r"https://x.org/a.gif: a GIF URL; Gemini fetches"):
        documents.url_attachment("https://x.org/a.gif", "gemini", "gemini-2.5-flash", None)


# -- the fake checks and charges parts as Google documents them ------------------------------


def _png(size: tuple[int, int] = (20, 10), text: str = "", fmt: str = "PNG") -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if text:
        info.add_text("Description", text)
    out = io.BytesIO()
    Image.new("L", size, 255).save(out, format=fmt, pnginfo=info)
    return out.getvalue()


def _generate(*parts: dict[str, Any], model: str = "gemini-2.5-flash", **body: Any) -> Any:
    contents = [{"role": "user", "parts": [*parts, {"text": "Extract the invoice."}]}]
    return _gemini.parse_generate_request(model, {"contents": contents, **body})


def _inline(data: bytes, mime: str) -> dict[str, Any]:
    return {"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}}


def test_the_fake_charges_images_and_pages_by_googles_rules_and_reads_them(
    tmp_path: Path,
) -> None:
    plain = _generate()
    small = _generate(_inline(_png(), "image/png"))
    assert small.prompt_tokens - plain.prompt_tokens == 258
    scan = _generate(_inline(_png((827, 1169), "\n".join(INVOICE)), "image/png"))
    assert scan.prompt_tokens - plain.prompt_tokens == 6 * 258
    assert "Invoice number: ACM-0042" in scan.documents_text
    pdf = make_pdf(tmp_path / "a.pdf", INVOICE, pages=2).read_bytes()
    both = _generate(_inline(pdf, "application/pdf"), _inline(_png(), "image/png"))
    assert both.prompt_tokens - plain.prompt_tokens == 2 * 258 + 258
    assert (both.image_tokens, both.document_tokens) == (258, 516)
    url_safe = base64.urlsafe_b64encode(pdf).decode().rstrip("=")  # proto3 JSON takes it too
    assert _generate({"inlineData": {"mimeType": "application/pdf", "data": url_safe}})
    url = {"fileData": {"mimeType": "application/pdf", "fileUri": "https://x.org/a.pdf"}}
    assert _generate(url).prompt_tokens - plain.prompt_tokens == 258  # never fetched: a page
    schema = orjson.loads(SCHEMA.read_text())
    config = {"responseMimeType": "application/json", "responseJsonSchema": schema}
    read = _generate(_inline(pdf, "application/pdf"), generationConfig=config)
    answer = orjson.loads(_gemini.answer(read)[0])
    assert (answer["invoice_number"], answer["vendor"]) == ("ACM-0042", "Acme Tools Ltd")
    body = _gemini.response_body(
        read,
        response_id="r",
        text="{}",
        candidates_tokens=1,
        thoughts=0,
        finish_reason="STOP",
        cached_tokens=0,
    )
    details = body["usageMetadata"]["promptTokensDetails"]
    assert details == [
        {"modality": "TEXT", "tokenCount": read.prompt_tokens - 516},
        {"modality": "DOCUMENT", "tokenCount": 516},
    ]


@pytest.mark.parametrize(
    ("part", "model", "message"),
    [
        (_inline(_png(fmt="GIF"), "image/gif"), None, "Unsupported MIME type: image/gif"),
        (_inline(_png(fmt="JPEG"), "image/png"), None, "Unable to process input image"),
        (_inline(b"plain text", "application/pdf"), None, "not a PDF"),
        ({"inlineData": {"mimeType": "image/png", "data": "@@@"}}, None, "Base64 decoding"),
        ({"inlineData": {"data": "AAAA"}}, None, "mime_type: Field required"),
        (
            {"fileData": {"mimeType": "image/png", "fileUri": "https://x.org/a.png"}},
            "gemini-2.0-flash",
            "external URLs are not supported",
        ),
        (
            {"fileData": {"mimeType": "image/gif", "fileUri": "https://x.org/a.gif"}},
            None,
            "Unsupported MIME type for a URL",
        ),
    ],
)
def test_the_fake_refuses_parts_google_refuses(
    part: dict[str, Any], model: str | None, message: str
) -> None:
    with pytest.raises(_gemini.GeminiInvalid, match=message):
        _generate(part, model=model or "gemini-2.5-flash")


def test_the_fake_refuses_a_body_over_20_mib_as_google_does() -> None:
    from pipeline.fake import FakeConfig, running_fake_provider

    async def post() -> httpx.Response:
        async with running_fake_provider(FakeConfig()) as fake:
            data = base64.b64encode(bytes(16 * 1024 * 1024)).decode()  # 21.3 MiB as base64
            body = {
                "contents": [{"parts": [{"inlineData": {"mimeType": "text/plain", "data": data}}]}]
            }
            async with httpx.AsyncClient(base_url=fake.gemini_base_url) as client:
                return await client.post(
                    "/v1beta/models/gemini-2.5-flash:generateContent",
                    json=body,
                    headers={"x-goog-api-key": "k"},
                )

    answer = anyio.run(post)
    assert answer.status_code == 400
    assert answer.json()["error"]["message"] == (
        "Request payload size exceeds the limit: 20971520 bytes."
    )


def test_the_fake_takes_parts_in_either_spelling_as_the_api_does() -> None:
    # Google's curl examples write inline_data / mime_type; the official SDK sends a Blob's and
    # a FileData's fields as mime_type / file_uri inside inlineData / fileData.
    plain = _generate()
    snake = _generate({"inline_data": {"mime_type": "image/png", "data": _b64(_png())}})
    mixed = _generate({"inlineData": {"mime_type": "image/png", "data": _b64(_png())}})
    url = _generate({"file_data": {"mime_type": "application/pdf", "file_uri": "https://x.org/a"}})
    assert snake.prompt_tokens - plain.prompt_tokens == 258 == mixed.image_tokens
    assert url.prompt_tokens - plain.prompt_tokens == 258 == url.document_tokens


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- request bodies -----------------------------------------------------------------------------


def gemini_job(tmp: Path, *, attach: str = '["{path}"]', extra: str = "", inputs: str = "") -> str:
    inputs = inputs or f'path = "{tmp / "docs"}/*"'
    return f"""
name = "docs"
[input]
{inputs}
[request]
provider = "gemini"
model = "gemini-2.5-flash"
system = "You are an accounts-payable clerk."
prompt = "Extract the invoice."
attachments = {attach}
schema = "{SCHEMA}"
max_tokens = 600
{extra}
[output]
db = "{tmp / "r.duckdb"}"
"""


def test_files_go_before_the_prompt_as_parts_the_sdk_accepts_and_the_fake_reads(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider
) -> None:
    from google import genai
    from google.genai import types

    docs = folder(tmp_path)
    pdf = make_pdf(docs / "a.pdf", INVOICE)
    png = docs / "b.png"
    png.write_bytes(_png((827, 1169), "\n".join(INVOICE)))
    text = gemini_job(tmp_path, attach='["{path}", "https://example.com/scans/c.webp"]')
    bodies = [generate_body(render(text, str(p))) for p in (pdf, png)]
    for body, path, mime in zip(bodies, (pdf, png), ("application/pdf", "image/png"), strict=True):
        (user,) = body["contents"]
        assert user["role"] == "user"
        first, url, prompt = user["parts"]
        assert first["inlineData"]["mimeType"] == mime
        assert base64.b64decode(first["inlineData"]["data"]) == path.read_bytes()
        assert url == {
            "fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/scans/c.webp"}
        }
        assert prompt == {"text": "Extract the invoice."}  # the text goes last
        # The SDK's own types take every part of the body (they forbid unknown fields).
        content = types.Content.model_validate(user)
        assert content.parts is not None and content.parts[0].inline_data is not None
        assert content.parts[0].inline_data.data == path.read_bytes()
        types.Content.model_validate(body["systemInstruction"])
        types.GenerateContentConfig.model_validate(body["generationConfig"])

    options = types.HttpOptions(
        base_url=threaded_fake.provider.gemini_base_url,
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    answers = []
    with genai.Client(api_key="k", http_options=options) as sdk:
        for body in bodies:
            config = types.GenerateContentConfig.model_validate(
                {**body["generationConfig"], "systemInstruction": body["systemInstruction"]}
            )
            contents = [types.Content.model_validate(c) for c in body["contents"]]
            answers.append(
                sdk.models.generate_content(
                    model="gemini-2.5-flash", contents=contents, config=config
                )
            )
    for answer in answers:
        assert orjson.loads(answer.text or "")["invoice_number"] == "ACM-0042"
        usage = answer.usage_metadata
        assert usage is not None and usage.prompt_tokens_details is not None
        modalities = {d.modality: d.token_count for d in usage.prompt_tokens_details}
        assert modalities[types.MediaModality.IMAGE] >= 16 * 258  # the URL: the largest image
    pdf_usage = answers[0].usage_metadata
    assert pdf_usage is not None and pdf_usage.prompt_tokens_details is not None
    assert {d.modality: d.token_count for d in pdf_usage.prompt_tokens_details}[
        types.MediaModality.DOCUMENT
    ] == 258


# -- whole jobs on the fake ---------------------------------------------------------------------


def test_a_gemini_document_job_reads_its_files_and_refuses_only_the_rows_google_would(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    docs = folder(tmp_path)
    table: list[dict[str, str]] = []
    for i in range(4):
        lines = [*INVOICE[:2], f"Invoice number: G-{i}", *INVOICE[3:]]
        name = f"inv-{i}.pdf" if i % 2 else f"scan-{i}.png"
        if i % 2:
            make_pdf(docs / name, lines, pages=1 + i // 2)
        else:
            (docs / name).write_bytes(_png((827 + 100 * i, 1169), "\n".join(lines)))
        table.append({"id": name, "doc": str(docs / name)})
    (docs / "anim.gif").write_bytes(_png(fmt="GIF"))
    big = docs / "huge.png"  # 16 MB without compression: 21.3 MB as base64
    from PIL import Image

    Image.frombytes("L", (4000, 4000), os.urandom(16_000_000)).save(big, compress_level=0)
    table += [
        {"id": "anim.gif", "doc": str(docs / "anim.gif")},
        {"id": "huge.png", "doc": str(big)},
        {"id": "web-scan", "doc": "https://example.com/scans/7.png"},
        {"id": "web-gif", "doc": "https://example.com/scans/8.gif"},
    ]
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in table))
    job = tmp_path / "job.toml"
    inputs = f'path = "{rows_file}"\nid = "id"'
    job.write_text(gemini_job(tmp_path, attach='["{doc}"]', inputs=inputs))

    estimate = estimate_job(load_job(job))
    assert (estimate.rows_to_send, estimate.rows_input_error) == (5, 3)
    url = threaded_fake.provider.gemini_base_url
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0
    rows = results(tmp_path)
    assert len(rows) == 8
    gif = rows["anim.gif"]
    assert (gif["status"], gif["error_type"]) == ("input_error", "attachment_unsupported")
    assert "anim.gif: a GIF image; gemini takes only PNG, JPEG, WebP, HEIC or HEIF" in gif["error"]
    huge = rows["huge.png"]
    assert (huge["status"], huge["error_type"]) == ("input_error", "request_too_large")
    assert "huge.png" in huge["error"] and "at most 20,000,000 bytes" in huge["error"]
    web_gif = rows["web-gif"]
    assert (web_gif["status"], web_gif["error_type"]) == ("input_error", "attachment_unsupported")
    assert "https://example.com/scans/8.gif: a GIF URL; Gemini fetches only" in web_gif["error"]

    ok = {k: r for k, r in rows.items() if r["status"] == "ok"}
    assert set(ok) == {"scan-0.png", "inv-1.pdf", "scan-2.png", "inv-3.pdf", "web-scan"}
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as con:
        read = dict(con.execute("SELECT row_id, invoice_number FROM extract_docs").fetchall())
    assert {k: read[k] for k in ok if k != "web-scan"} == {
        "scan-0.png": "G-0",
        "inv-1.pdf": "G-1",
        "scan-2.png": "G-2",
        "inv-3.pdf": "G-3",
    }
    price = lookup_price("gemini", "gemini-2.5-flash")
    assert price is not None
    for r in ok.values():
        usage = Usage(r["input_tokens"], r["output_tokens"], r["cache_read_tokens"])
        assert r["cost_usd"] == pytest.approx(cost_usd(price, usage)) and r["cost_usd"] > 0
    # Google's figures, as the fake charges them: a PDF page is 258 tokens (inv-3.pdf has 2
    # pages, inv-1.pdf 1), a 1,027 x 1,169 scan 2 x 2 crops of 684 px, a URL the largest image
    # (16 crops); the rest of each request is the same.
    base = ok["inv-1.pdf"]["input_tokens"]
    assert ok["inv-3.pdf"]["input_tokens"] - base == 258
    assert ok["scan-2.png"]["input_tokens"] - base == 4 * 258 - 258
    assert ok["web-scan"]["input_tokens"] - base == 16 * 258 - 258
    actual = sum(r["input_tokens"] for r in ok.values())
    ratio = estimate.input_tokens / actual
    print(f"gemini: estimated {estimate.input_tokens:,} input tokens, fake {actual:,}")
    assert 0.75 <= ratio <= 1.25, ratio
    assert threaded_fake.accounting()["duplicates_paid"] == 0


def test_a_gemini_batch_of_documents_splits_by_bytes_inline_and_by_file(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    docs = folder(tmp_path)
    # Three PDFs of about 4.5 MB (6 MB as base64): two fill a part of at most 14 MB, over the
    # 10 MiB that goes inline; the third starts the next part, with the small ones.
    for i in range(3):
        make_pdf(docs / f"a-big-{i}.pdf", [*INVOICE[:2], f"Invoice number: L-{i}"], pad_kb=4400)
    for i in range(10):
        lines = [*INVOICE[:2], f"Invoice number: B-{i}", *INVOICE[3:]]
        make_pdf(docs / f"inv-{i:02d}.pdf", lines, pad_kb=30)
    extra = 'mode = "batch"\n[batch]\npoll_interval_s = 0.2\nmax_bytes = 14000000'
    job = tmp_path / "job.toml"
    job.write_text(gemini_job(tmp_path, extra=extra))
    url = threaded_fake.provider.gemini_base_url
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0
    with duckdb.connect(str(tmp_path / "r.duckdb"), read_only=True) as con:
        parts = con.execute(
            "SELECT requests, bytes, input_file_id FROM batches ORDER BY part"
        ).fetchall()
        read = dict(con.execute("SELECT row_id, invoice_number FROM extract_docs").fetchall())
    assert sum(n for n, _, _ in parts) == 13 and all(b <= 14_000_000 for _, b, _ in parts)
    big = [p for p in parts if p[1] > INLINE_MAX_BYTES]
    small = [p for p in parts if p[1] <= INLINE_MAX_BYTES]
    assert big and all(p[2] is not None for p in big)  # uploaded through the Files API
    assert small and all(p[2] is None for p in small)  # sent inline
    assert {Path(k).name: v for k, v in read.items()} == {
        **{f"a-big-{i}.pdf": f"L-{i}" for i in range(3)},
        **{f"inv-{i:02d}.pdf": f"B-{i}" for i in range(10)},
    }
    rows = results(tmp_path).values()
    assert {(r["status"], r["mode"]) for r in rows} == {("ok", "batch")}
    price = lookup_price("gemini", "gemini-2.5-flash")
    assert price is not None
    for r in rows:
        usage = Usage(r["input_tokens"], r["output_tokens"], r["cache_read_tokens"])
        assert r["cost_usd"] == pytest.approx(cost_usd(price, usage) / 2)  # the batch price
    assert batch_accounting(threaded_fake)["files_uploaded"] == len(big)
