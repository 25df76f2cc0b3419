"""Documents and images on Gemini: the limits and token formulas Google publishes, the parts a
request carries, and document jobs end to end on the fake, online and in Batch Mode.

Every document is made here (tests/test_documents.py's helpers); nothing binary is committed.
"""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import documents
from pipeline.errors import InputError


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
