"""Documents and images on Gemini: the limits and token formulas Google publishes, the parts a
request carries, and document jobs end to end on the fake, online and in Batch Mode.

Every document is made here (tests/test_documents.py's helpers); nothing binary is committed.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from test_documents import INVOICE, SCHEMA, make_pdf

from pipeline import documents
from pipeline.errors import InputError
from pipeline.fake import _gemini


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
