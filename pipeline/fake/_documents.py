"""Images and PDFs in requests: the real APIs' checks, their token formulas, the text inside.

Pure (no I/O): a part or block is decoded from the request body itself.

Checked as the providers document them (README, "Documents and images", lists the sources):

- OpenAI ``image_url`` parts: a base64 data URL of a PNG, JPEG, WebP or non-animated GIF whose
  bytes are what the URL says, at most 20 MB; or an http(s) URL. ``file`` parts: a
  ``data:application/pdf;base64,`` ``file_data`` (``file_id`` is refused: the fake keeps no
  uploaded files for chat), 100 pages and 32 MB of PDF a request at most.
- Anthropic ``image`` blocks: a ``base64`` source with one of the four image media types, the
  bytes being of that type, at most 5 MB of base64 and 8000 px a side (2000 px when a request
  has more than 20 images), at most 100 images; or a ``url`` source. ``document`` blocks: a
  ``base64`` PDF, a ``text`` source, or a ``url`` source; 100 PDF pages a request at most.
- Gemini parts: ``inlineData`` of a PNG, JPEG, WebP, HEIC or HEIF image (not GIF) or a PDF,
  the bytes being of the type its ``mimeType`` says (other types, text, audio and video, are
  passed through unread); ``fileData`` whose ``fileUri`` is an http(s) URL of a PNG, JPEG,
  WebP, BMP or PDF file (not for Gemini 2.0 models), or any other URI (a Files API or Cloud
  Storage file, passed through); at most 3,600 images and 1,000 PDF pages a request.

A URL is never fetched: it is charged as the provider's largest image (or one page) and has no
text. Token usage follows the published formulas: OpenAI's 512 px tiles (per detail level) or
32 px patches by model, Anthropic's ``width x height / 750`` after its resizing, Gemini's 258
tokens an image up to 384 x 384 px and 258 a crop of larger ones; a PDF page is an image of
the page (Anthropic at 150 dpi, OpenAI at detail low) plus the tokens of its text, or 258
tokens flat on Gemini.

The text a document holds is what the fake "reads": a PDF's text layer (pypdf), and for an
image, which the fake cannot see, the PNG ``Description`` text chunk if there is one (the demo's
scans carry their text there, standing in for OCR).
"""

from __future__ import annotations

import binascii
import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "MB",
    "DocumentInvalid",
    "Seen",
    "anthropic_block",
    "gemini_blob",
    "gemini_file",
    "gemini_totals",
    "openai_part",
    "openai_totals",
]

MB: Final = 1_000_000
IMAGE_TYPES: Final = ("image/jpeg", "image/png", "image/gif", "image/webp")
PDF: Final = "application/pdf"
PAGES_PER_REQUEST: Final = 100


class DocumentInvalid(Exception):
    """A part or block the real API refuses (400); ``param`` / ``code`` for OpenAI's envelope."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class Seen:
    """One image or document of a request: its prompt tokens, the text it holds, its pages."""

    kind: str  # "image" or "pdf"
    tokens: int
    text: str = ""
    pages: int = 0
    raw_bytes: int = 0


def _sniff(data: bytes) -> str | None:
    if data.startswith(b"%PDF-"):
        return PDF
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _b64(text: str) -> bytes | None:
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def _image(data: bytes) -> tuple[int, int, bool, str]:
    """(width, height, animated, text chunk) of an image's bytes; ValueError if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            animated = bool(getattr(image, "is_animated", False))
            text = image.info.get("Description", "")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(str(exc)) from exc
    return width, height, animated, text if isinstance(text, str) else ""


def _pdf(data: bytes) -> tuple[list[tuple[float, float]], list[str]]:
    """Page sizes (points) and page texts of a PDF; ValueError if it cannot be read."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ValueError("the PDF is encrypted")
        sizes: list[tuple[float, float]] = []
        texts: list[str] = []
        for page in reader.pages:
            sizes.append((float(page.mediabox.width), float(page.mediabox.height)))
            texts.append(page.extract_text() or "")
    except (PyPdfError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc
    return sizes, texts


# -- token formulas (the providers' published ones) ------------------------------------------

_PATCH_MODELS: Final = (
    ("gpt-4.1-mini", 1.62),
    ("gpt-4.1-nano", 2.46),
    ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46),
    ("o4-mini", 1.72),
)
_TILE_MODELS: Final = (
    ("gpt-4o-mini", 2833, 5667),
    ("o1", 75, 150),
    ("o3", 75, 150),
    ("computer-use", 65, 129),
)


def openai_image_tokens(model: str, width: int, height: int, detail: str | None) -> int:
    name = model.lower()
    for prefix, multiplier in _PATCH_MODELS:
        if name.startswith(prefix):
            patches = math.ceil(width / 32) * math.ceil(height / 32)
            if patches > 1536:
                shrink = math.sqrt(1536 * 1024 / (width * height))
                w, h = width * shrink, height * shrink
                fit = max(math.floor(w / 32), 1) / (w / 32)
                patches = min(1536, math.ceil(w * fit / 32) * math.ceil(h * fit / 32))
            return math.ceil(patches * multiplier)
    base, tile = 85, 170
    for prefix, b, t in _TILE_MODELS:
        if name.startswith(prefix):
            base, tile = b, t
            break
    if detail == "low":
        return base
    w, h = float(width), float(height)
    fit = min(1.0, 2048 / max(w, h))
    w, h = w * fit, h * fit
    short = min(1.0, 768 / min(w, h))
    w, h = w * short, h * short
    return base + tile * math.ceil(w / 512) * math.ceil(h / 512)


def anthropic_image_tokens(width: int, height: int) -> int:
    scale = min(1.0, 1568 / max(width, height))
    return min(math.ceil(width * scale * height * scale / 750), 1600)


def _page_tokens(
    sizes: list[tuple[float, float]],
    texts: list[str],
    image: Callable[[int, int], int],
    dpi: int,
) -> int:
    """Every page as an image rendered at ``dpi``, plus the tokens of its text."""
    from ._answers import estimate_tokens

    total = 0
    for (width_pt, height_pt), text in zip(sizes, texts, strict=True):
        width = max(1, round(width_pt / 72 * dpi))
        height = max(1, round(height_pt / 72 * dpi))
        total += image(width, height) + estimate_tokens(text)
    return total


# -- OpenAI ----------------------------------------------------------------------------------


def openai_part(part: dict[str, Any], where: str, model: str) -> Seen | None:
    """Check one non-text content part; None for a part type the fake ignores."""
    kind = part.get("type")
    if kind == "image_url":
        return _openai_image(part.get("image_url"), f"{where}.image_url", model)
    if kind == "file":
        return _openai_file(part.get("file"), f"{where}.file", model)
    return None


def _openai_image(spec: Any, where: str, model: str) -> Seen:
    if not isinstance(spec, dict) or not isinstance(spec.get("url"), str):
        raise DocumentInvalid(
            f"Missing required parameter: '{where}.url'.",
            f"{where}.url",
            "missing_required_parameter",
        )
    detail = spec.get("detail")
    if detail not in (None, "low", "high", "auto"):
        raise DocumentInvalid(
            f"Invalid value: '{detail}'. Supported values are: 'low', 'high', and 'auto'.",
            f"{where}.detail",
            "invalid_value",
        )
    url: str = spec["url"]
    if url.startswith(("https://", "http://")):
        return Seen("image", openai_image_tokens(model, 2048, 2048, detail))
    declared, data = _data_url(url)
    if data is None or declared is None:
        raise DocumentInvalid(
            f"Invalid '{where}.url': expected an http(s) URL or a base64-encoded data URL of "
            "an image (data:image/png;base64,...).",
            f"{where}.url",
            "invalid_image_url",
        )
    actual = _sniff(data)
    if actual not in IMAGE_TYPES or actual != declared:
        raise DocumentInvalid(
            "You uploaded an unsupported image. Please make sure your image is below 20 MB in "
            "size and is of one the following formats: ['png', 'jpeg', 'gif', 'webp'].",
            f"{where}.url",
            "invalid_image_format",
        )
    if len(data) > 20 * MB:
        raise DocumentInvalid(
            f"Image is too large: {len(data)} bytes; the limit is 20 MB per image.",
            f"{where}.url",
            "image_too_large",
        )
    try:
        width, height, animated, text = _image(data)
    except ValueError:
        raise DocumentInvalid(
            "The image data you provided does not represent a valid image. Please check your "
            "input and try again.",
            f"{where}.url",
            "invalid_image",
        ) from None
    if animated:
        raise DocumentInvalid(
            "Animated GIFs are not supported; send a single frame.",
            f"{where}.url",
            "invalid_image_format",
        )
    return Seen("image", openai_image_tokens(model, width, height, detail), text, 0, len(data))


def _openai_file(spec: Any, where: str, model: str) -> Seen:
    if not isinstance(spec, dict):
        raise DocumentInvalid(
            f"Missing required parameter: '{where}'.", where, "missing_required_parameter"
        )
    if "file_id" in spec:
        raise DocumentInvalid(
            f"Invalid '{where}.file_id': the fake provider keeps no uploaded files for chat; "
            "send file_data.",
            f"{where}.file_id",
            "invalid_value",
        )
    file_data = spec.get("file_data")
    if not isinstance(file_data, str):
        raise DocumentInvalid(
            f"Missing required parameter: '{where}.file_data'.",
            f"{where}.file_data",
            "missing_required_parameter",
        )
    declared, data = _data_url(file_data)
    if data is None or declared != PDF or _sniff(data) != PDF:
        raise DocumentInvalid(
            f"Invalid file data: '{where}.file_data'. Expected a base64-encoded data URL with "
            "MIME type 'application/pdf', e.g. 'data:application/pdf;base64,...'.",
            f"{where}.file_data",
            "invalid_value",
        )
    try:
        sizes, texts = _pdf(data)
    except ValueError as exc:
        raise DocumentInvalid(
            f"The file {spec.get('filename') or 'file'} could not be read as a PDF ({exc}).",
            f"{where}.file_data",
            "invalid_value",
        ) from None
    tokens = _page_tokens(sizes, texts, lambda w, h: openai_image_tokens(model, w, h, "low"), 72)
    return Seen("pdf", tokens, "\n".join(texts), len(sizes), len(data))


def _data_url(url: str) -> tuple[str | None, bytes | None]:
    if not url.startswith("data:"):
        return None, None
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        return None, None
    return head[5 : -len(";base64")], _b64(payload)


def openai_totals(seen: list[Seen]) -> None:
    """Request-wide limits of what a chat request attaches."""
    pdfs = [s for s in seen if s.kind == "pdf"]
    pages = sum(s.pages for s in pdfs)
    if pages > PAGES_PER_REQUEST:
        raise DocumentInvalid(
            f"Too many PDF pages: {pages}; a request may include at most {PAGES_PER_REQUEST}.",
            "messages",
            "invalid_value",
        )
    if sum(s.raw_bytes for s in pdfs) > 32 * MB:
        raise DocumentInvalid(
            "The PDFs of a request may be at most 32 MB together.", "messages", "invalid_value"
        )
    images = [s for s in seen if s.kind == "image"]
    if len(images) > 500 or sum(s.raw_bytes for s in images) > 50 * MB:
        raise DocumentInvalid(
            "Too many images: at most 500 images and 50 MB of images per request.",
            "messages",
            "invalid_value",
        )


# -- Anthropic -------------------------------------------------------------------------------


def anthropic_block(block: dict[str, Any], where: str, max_side: int) -> Seen | None:
    """Check one ``image`` or ``document`` block (None for other block types). ``max_side``:
    8000, or 2000 when the request has more than 20 images."""
    kind = block.get("type")
    if kind not in ("image", "document"):
        return None
    source = block.get("source")
    if not isinstance(source, dict):
        raise DocumentInvalid(f"{where}.source: Field required")
    source_type = source.get("type")
    if source_type == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise DocumentInvalid(f"{where}.source.url: Input should be a valid URL")
        if kind == "image":
            return Seen("image", 1600)
        return Seen("pdf", _page_tokens([(612.0, 792.0)], [""], anthropic_image_tokens, 150), "", 1)
    if kind == "document" and source_type == "text":
        from ._answers import estimate_tokens

        data = source.get("data")
        if not isinstance(data, str) or source.get("media_type") != "text/plain":
            raise DocumentInvalid(f"{where}.source.text: media_type must be 'text/plain'")
        return Seen("text", estimate_tokens(data), data)
    if source_type != "base64":
        raise DocumentInvalid(
            f"{where}.source.type: Input should be 'base64', 'url'"
            + (" or 'text'" if kind == "document" else "")
        )
    data_text = source.get("data")
    if not isinstance(data_text, str):
        raise DocumentInvalid(f"{where}.source.base64.data: Field required")
    media_type = source.get("media_type")
    if kind == "document":
        if media_type != PDF:
            raise DocumentInvalid(
                f"{where}.source.base64.media_type: Input should be 'application/pdf'"
            )
        data = _b64(data_text)
        if data is None:
            raise DocumentInvalid(f"{where}.source.base64.data: invalid base64 data")
        if _sniff(data) != PDF:
            raise DocumentInvalid(f"{where}.source.base64.data: The PDF specified was not valid.")
        try:
            sizes, texts = _pdf(data)
        except ValueError:
            raise DocumentInvalid(
                f"{where}.source.base64.data: The PDF specified was not valid."
            ) from None
        tokens = _page_tokens(sizes, texts, anthropic_image_tokens, 150)
        return Seen("pdf", tokens, "\n".join(texts), len(sizes), len(data))
    if media_type not in IMAGE_TYPES:
        raise DocumentInvalid(
            f"{where}.source.base64.media_type: Input should be 'image/jpeg', 'image/png', "
            "'image/gif' or 'image/webp'"
        )
    if len(data_text) > 5 * 1024 * 1024:
        raise DocumentInvalid(
            f"{where}.source.base64: image exceeds 5 MB maximum: {len(data_text)} bytes > "
            f"{5 * 1024 * 1024} bytes"
        )
    data = _b64(data_text)
    if data is None:
        raise DocumentInvalid(f"{where}.source.base64.data: invalid base64 data")
    actual = _sniff(data)
    if actual != media_type:
        raise DocumentInvalid(
            f"{where}.source.base64.data: The image was specified using the {media_type} media "
            f"type, but the image appears to be a {actual or 'unknown'} image"
        )
    try:
        width, height, _animated, text = _image(data)
    except ValueError:
        raise DocumentInvalid(f"{where}.source.base64.data: Could not process image") from None
    if max(width, height) > max_side:
        raise DocumentInvalid(
            f"{where}.source.base64.data: At least one of the image dimensions exceed max "
            f"allowed size: {max_side} pixels"
        )
    return Seen("image", anthropic_image_tokens(width, height), text, 0, len(data))


# -- Gemini ----------------------------------------------------------------------------------

GEMINI_IMAGE_TYPES: Final = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")
GEMINI_URL_TYPES: Final = ("image/png", "image/jpeg", "image/webp", "image/bmp", PDF)
GEMINI_IMAGES: Final = 3600
GEMINI_PAGES: Final = 1000
_GEMINI_TILE: Final = 258
_URL_SAFE: Final = bytes.maketrans(b"-_", b"+/")
_FILES_API: Final = re.compile(r"^https?://[^/]+/v1(?:beta)?/files/[^/?#]+$")


def gemini_image_tokens(width: int, height: int) -> int:
    """258 up to 384 x 384 px; else fit in 3,072 x 3,072 and cut into crops of the short side /
    1.5 (256 to 768 px), 258 each."""
    if width <= 384 and height <= 384:
        return _GEMINI_TILE
    fit = min(1.0, 3072 / max(width, height))
    w, h = width * fit, height * fit
    crop = min(max(math.floor(min(w, h) / 1.5), 256), 768)
    return _GEMINI_TILE * math.ceil(w / crop) * math.ceil(h / crop)


def gemini_bytes(text: str) -> bytes | None:
    """A protobuf ``bytes`` field in JSON: standard or URL-safe base64, padded or not."""
    try:
        raw = text.encode("ascii").translate(_URL_SAFE)
    except UnicodeEncodeError:
        return None
    raw += b"=" * (-len(raw) % 4)
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        return None


def _either(fields: dict[str, Any], camel: str, snake: str) -> Any:
    """A field by its JSON name or its proto name (the API takes both)."""
    return fields.get(camel, fields.get(snake))


def gemini_blob(blob: Any, where: str) -> Seen | None:
    """Check one ``inlineData``; None for a type the fake does not read (text, audio, video)."""
    mime = _either(blob, "mimeType", "mime_type") if isinstance(blob, dict) else None
    if not isinstance(mime, str):
        raise DocumentInvalid(f"* {where}.inline_data.mime_type: Field required")
    data = gemini_bytes(str(blob.get("data", "")))
    if data is None:
        raise DocumentInvalid(
            f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
        )
    if mime == PDF:
        if _sniff(data) != PDF:
            raise DocumentInvalid(f"{where}: the document has no pages (not a PDF).")
        try:
            sizes, texts = _pdf(data)
        except ValueError as exc:
            raise DocumentInvalid(
                f"{where}: unable to process the input document ({exc})."
            ) from None
        return Seen("pdf", _GEMINI_TILE * len(sizes), "\n".join(texts), len(sizes), len(data))
    if not mime.startswith("image/"):
        return None
    if mime not in GEMINI_IMAGE_TYPES:
        raise DocumentInvalid(f"Unsupported MIME type: {mime}")
    if mime in ("image/heic", "image/heif"):
        return Seen("image", _GEMINI_TILE, "", 0, len(data))  # Pillow reads no HEIC headers
    try:
        if _sniff(data) != mime:
            raise ValueError(f"the bytes are {_sniff(data) or 'no image'}")
        width, height, _animated, text = _image(data)
    except ValueError:
        raise DocumentInvalid(
            "Unable to process input image. Please retry or report in "
            "https://developers.generativeai.google/guide/troubleshooting"
        ) from None
    return Seen("image", gemini_image_tokens(width, height), text, 0, len(data))


def gemini_file(spec: Any, where: str, model: str) -> Seen | None:
    """Check one ``fileData``: an http(s) URL (never fetched: charged as the largest image, or
    one page); None for another URI (a Files API or Cloud Storage file)."""
    uri = _either(spec, "fileUri", "file_uri") if isinstance(spec, dict) else None
    if not isinstance(uri, str):
        raise DocumentInvalid(f"* {where}.file_data.file_uri: Field required")
    if not uri.startswith(("https://", "http://")) or _FILES_API.search(uri):
        return None
    if model.removeprefix("models/").startswith("gemini-2.0"):
        raise DocumentInvalid(
            f"* {where}.file_data.file_uri: external URLs are not supported by {model}"
        )
    mime = _either(spec, "mimeType", "mime_type")
    if mime not in GEMINI_URL_TYPES:
        raise DocumentInvalid(
            f"* {where}.file_data.mime_type: Unsupported MIME type for a URL: {mime}"
        )
    if mime == PDF:
        return Seen("pdf", _GEMINI_TILE, "", 1)
    return Seen("image", gemini_image_tokens(3072, 3072))


def gemini_totals(seen: list[Seen]) -> None:
    """Request-wide limits of what a request attaches."""
    images = sum(1 for s in seen if s.kind == "image")
    if images > GEMINI_IMAGES:
        raise DocumentInvalid(
            f"Too many images: {images}; a request may include at most {GEMINI_IMAGES}."
        )
    pages = sum(s.pages for s in seen)
    if pages > GEMINI_PAGES:
        raise DocumentInvalid(
            f"Too many document pages: {pages}; a request may include at most {GEMINI_PAGES}."
        )
