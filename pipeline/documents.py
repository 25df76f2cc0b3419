"""Documents and images as input: what a file is, what the providers allow, what it costs.

A job's ``[request] attachments`` are templates that name, for each row, files (PDF, PNG, JPEG,
GIF, WebP) or http(s) URLs sent before the prompt text. This module knows them by their headers
only, so that planning a row never holds its bytes:

- ``sniff`` tells the type from the first bytes (the extension is not trusted);
- ``inspect_file`` reads what the headers say (Pillow: pixel size; pypdf: pages, their sizes,
  and how many characters each page's text operators draw, counted in its content stream
  without laying the text out) and the SHA-256 of the content, streaming, and caches it by
  path, size and mtime;
- ``check`` applies the provider's documented limits (``LIMITS``: OpenAI, Anthropic, Gemini) to
  one request's files and raises ``InputError`` naming the file and the limit;
- ``image_tokens`` / ``pdf_tokens`` are the providers' published token formulas;
- ``read_base64`` reads a file when its request body is built for sending, and refuses one whose
  content changed since it was planned (its request key no longer describes it).

The limits and formulas, with where they come from, are listed in README.md ("Documents and
images"). Pillow and pypdf are imported when a document is first looked at: a text job never
loads them.
"""

from __future__ import annotations

import atexit
import base64
import hashlib
import math
import os
import select
import stat
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal

import orjson

from .errors import InputError
from .records import Attachment

__all__ = [
    "DOCUMENT_SUFFIXES",
    "IMAGE_TYPES",
    "LIMITS",
    "MAX_ATTACHMENT_BYTES",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "PDF_PAGE_TEXT_TOKENS",
    "FileFacts",
    "PdfReader",
    "ProviderLimits",
    "attachment",
    "check",
    "confine",
    "document_fields",
    "facts_tokens",
    "image_tokens",
    "inspect_file",
    "pdf_tokens",
    "read_base64",
    "sniff",
    "url_attachment",
]

PDF = "application/pdf"
IMAGE_TYPES: Final = ("image/png", "image/jpeg", "image/gif", "image/webp")
DOCUMENT_SUFFIXES: Final = (".pdf", ".png", ".jpg", ".jpeg", ".gif", ".webp")
_BY_SUFFIX: Final = {
    ".pdf": PDF,
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}

# Text of a PDF page whose content stream cannot be read (a dense page of prose is about 2,000
# characters, ~500 tokens). The rate limiter settles every reservation with the real usage.
PDF_PAGE_TEXT_TOKENS: Final = 500
# Pages are rendered to images by the providers; neither publishes the resolution. Anthropic's
# page images come out at its largest image size (~1,600 tokens for a Letter or A4 page), which
# rendering at 150 dpi reproduces; OpenAI sends them at low detail.
_ANTHROPIC_PAGE_DPI: Final = 150
_OPENAI_PAGE_DPI: Final = 72

_HASH_BLOCK: Final = 1 << 20
_CACHE_SIZE: Final = 16_384
MB: Final = 1_000_000


def sniff(head: bytes) -> str | None:
    """The media type the first bytes of a file announce, or None when it is none of ours."""
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(head) >= 12 and head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "image/webp"
    return None


# -- what a file is ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileFacts:
    """What a document's headers say, and the hash of its content."""

    path: str
    media_type: str
    size_bytes: int
    sha256: str
    width: int = 0  # images: pixels
    height: int = 0
    animated: bool = False  # a GIF with more than one frame
    page_sizes: tuple[tuple[float, float], ...] = ()  # PDFs: (width, height) in points
    encrypted: bool = False
    text_chars: int = -1  # PDFs: characters the pages' text operators draw (-1: unknown)

    @property
    def kind(self) -> Literal["image", "pdf"]:
        return "pdf" if self.media_type == PDF else "image"

    @property
    def pages(self) -> int:
        return len(self.page_sizes)


_cache: OrderedDict[tuple[str, int, int, int], FileFacts | tuple[str, str]] = OrderedDict()
_cache_lock = threading.Lock()

MAX_ATTACHMENT_BYTES: Final = 50 * MB
"""No provider takes a larger file in one request (Gemini's 50 MB a PDF is the largest figure
of ``LIMITS``): a larger one is refused by its size, before a byte of it is read."""
MAX_IMAGE_BYTES: Final = 20 * MB
"""No provider takes a larger image (OpenAI's 20 MB a file is the largest figure): refused by
its size, before its header is read."""
MAX_IMAGE_PIXELS: Final = 64_000_000
"""An image whose header claims more pixels is refused before anything decodes it (Anthropic
refuses more than 8000 x 8000; OpenAI and Gemini scale images down to 2,048 and 3,072 px). It
is below Pillow's own decompression-bomb threshold, which therefore never fires."""
PDF_READ_TIMEOUT_S: Final = 20.0
"""Seconds one PDF may take to read (hash, pages, text) before it is given up as corrupt."""
PDF_READ_MEMORY_BYTES: Final = 1 << 30
"""Address space of the process that reads PDFs (``pipeline._pdfchild``)."""


def confine(path: str, root: str) -> str:
    """The real path of ``path`` (relative to the working directory, symlinks resolved) when
    it is inside the folder ``root`` (a real path); else InputError ``attachment_outside_root``.
    Nothing is opened: only the names on the way are looked up."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        raise InputError(
            f"{_shown(path)}: not a usable file path; fix the path or the attachments template",
            error_type="attachment_missing",
        ) from None
    if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
        return real
    raise InputError(
        f"{_shown(path)}: outside the attachments folder {root} (absolute, '..' or a symlink "
        "leading out of it), so it is not read; move the file into the folder, or set "
        "[input] attachments_root (or allow_any_path = true) in the job file",
        error_type="attachment_outside_root",
    )


def _shown(path: str) -> str:
    """A path as an error message names it: as given, cut to one short line."""
    text = path if path.isprintable() else repr(path)
    return text if len(text) <= 200 else text[:197] + "..."


def inspect_file(path: str) -> FileFacts:
    """The facts of one file, from its headers (cached by path, size, mtime and inode; so is
    the reason a file was refused, which is given again without reading it again).

    Raises InputError (naming the file) when it is missing, unreadable, of another type, too
    large, or corrupt where its headers are. No message quotes the file's content.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(
            f"{_shown(path)}: no such file (relative paths are relative to the directory "
            "pipeline runs in); fix the path or the attachments template",
            error_type="attachment_missing",
        ) from None
    except ValueError:  # a NUL in the name
        raise InputError(
            f"{_shown(path)}: not a usable file path; fix the path or the attachments template",
            error_type="attachment_missing",
        ) from None
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{_shown(path)}: not a file", error_type="attachment_missing")
    key = (path, st.st_size, st.st_mtime_ns, st.st_ino)
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
    if isinstance(found, FileFacts):
        return found
    if found is not None:
        message, error_type = found
        raise InputError(message, error_type=error_type)
    try:
        facts: FileFacts | tuple[str, str] = _inspect(path, st.st_size)
    except InputError as exc:
        facts = (str(exc), exc.error_type)
    with _cache_lock:
        _cache[key] = facts
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    if isinstance(facts, tuple):
        raise InputError(facts[0], error_type=facts[1])
    return facts


def _unreadable(path: str, exc: OSError) -> InputError:
    return InputError(
        f"{_shown(path)}: cannot read the file ({exc.strerror or type(exc).__name__}); check "
        "its permissions",
        error_type="attachment_unreadable",
    )


def _inspect(path: str, size: int) -> FileFacts:
    if size > MAX_ATTACHMENT_BYTES:
        raise _oversized(path, size, MAX_ATTACHMENT_BYTES, "a file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            media_type = sniff(head)
            if media_type is None:
                raise InputError(
                    f"{_shown(path)}: not a PDF, PNG, JPEG, GIF or WebP file (its first bytes "
                    "are none of theirs); convert it, or leave it out of the input",
                    error_type="attachment_unsupported",
                )
            if media_type == PDF:
                fh.close()
                return _pdf_facts(path, size)
            if size > MAX_IMAGE_BYTES:
                raise _oversized(path, size, MAX_IMAGE_BYTES, "an image")
            width, height = _image_size(media_type, fh)
            _check_pixels(path, media_type, width, height)
            fh.seek(0)
            digest = hashlib.sha256()
            while block := fh.read(_HASH_BLOCK):
                digest.update(block)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    return _image_facts(path, media_type, size, digest.hexdigest())


def _oversized(path: str, size: int, limit: int, what: str) -> InputError:
    return InputError(
        f"{_shown(path)}: {size:,} bytes; no provider takes {what} over {limit:,} bytes in a "
        "request, so it is not read; compress, scale down or split it",
        error_type="attachment_too_large",
    )


def _check_pixels(path: str, media_type: str, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"{_shown(path)}: its {_TYPE_NAMES.get(media_type, media_type)} header says "
            f"{width:,} x {height:,} pixels, more than {MAX_IMAGE_PIXELS:,}, so it is not "
            "decoded; scale it down",
            error_type="attachment_too_large",
        )


def _image_facts(path: str, media_type: str, size: int, sha: str) -> FileFacts:
    _quiet_libraries()
    from PIL import Image, UnidentifiedImageError

    name = _TYPE_NAMES.get(media_type, media_type)
    try:
        with Image.open(path, formats=[_PIL_FORMATS[media_type]]) as image:
            # Only the header is read: nothing is decoded.
            width, height = image.size
            _check_pixels(path, media_type, width, height)
            animated = bool(getattr(image, "is_animated", False))
    except Image.DecompressionBombError:
        raise InputError(
            f"{_shown(path)}: a {name} image of more than {MAX_IMAGE_PIXELS:,} pixels, so it is "
            "not decoded; scale it down",
            error_type="attachment_too_large",
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InputError(
            f"{_shown(path)}: a {name} file whose header cannot be read "
            f"({type(exc).__name__}); re-save it",
            error_type="attachment_corrupt",
        ) from exc
    return FileFacts(path, media_type, size, sha, width, height, animated)


_PIL_FORMATS: Final = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
}


def _image_size(media_type: str, fh: BinaryIO) -> tuple[int, int]:
    """Width and height as the image's header states them, read without Pillow (so that a
    header claiming billions of pixels is refused before any library looks at it); (0, 0)
    when this reader does not find them (Pillow then reads the header, and its size is
    checked all the same)."""
    fh.seek(0)
    data = fh.read(64)
    if media_type == "image/png":
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return 0, 0
    if media_type == "image/gif":
        return _gif_size(data, fh)
    if media_type == "image/webp":
        return _webp_size(data)
    return _jpeg_size(fh)


def _gif_size(data: bytes, fh: BinaryIO) -> tuple[int, int]:
    """The logical screen of a GIF, grown to its first frame (as Pillow does)."""
    if len(data) < 13:
        return 0, 0
    width, height = int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    flags = data[10]
    offset = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    left = _MAX_BLOCKS  # blocks and sub-blocks looked at, in all
    while left > 0:
        left -= 1
        fh.seek(offset)
        kind = fh.read(1)
        if kind == b"\x21":  # an extension: its label, then sub-blocks up to an empty one
            offset += 2
            while left > 0:
                left -= 1
                fh.seek(offset)
                length = fh.read(1)
                if not length:
                    return width, height
                offset += 1 + length[0]
                if length[0] == 0:
                    break
            continue
        if kind == b"\x2c":  # the first image descriptor
            frame = fh.read(8)
            if len(frame) == 8:
                left, top, w, h = (int.from_bytes(frame[i : i + 2], "little") for i in (0, 2, 4, 6))
                width, height = max(width, left + w), max(height, top + h)
        return width, height
    return width, height


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30:
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        return width, int.from_bytes(data[28:30], "little") & 0x3FFF
    return 0, 0


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): not DHT (C4), JPG
# (C8) or DAC (CC).
_SOF: Final = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_MAX_BLOCKS: Final = 4096  # segments or blocks looked at before the size is left to Pillow


def _jpeg_size(fh: BinaryIO) -> tuple[int, int]:
    """The size in a JPEG's first start-of-frame segment, found by walking the segments."""
    offset = 2
    for _ in range(_MAX_BLOCKS):
        fh.seek(offset)
        marker = fh.read(2)
        if len(marker) < 2 or marker[0] != 0xFF:
            return 0, 0
        kind = marker[1]
        if kind == 0xFF:  # fill byte
            offset += 1
            continue
        if kind == 0x01 or 0xD0 <= kind <= 0xD8:  # markers without a length
            offset += 2
            continue
        if kind in (0xD9, 0xDA):  # end of image, start of scan: no frame header before it
            return 0, 0
        segment = fh.read(7)
        if len(segment) < 7:
            return 0, 0
        if kind in _SOF:
            return int.from_bytes(segment[5:7], "big"), int.from_bytes(segment[3:5], "big")
        offset += 2 + int.from_bytes(segment[0:2], "big")
    return 0, 0


def _pdf_facts(path: str, size: int) -> FileFacts:
    reply = _PDF_READER.read(path)
    messages = reply.get("messages")
    if isinstance(messages, list) and messages:
        from .logs import library_messages

        library_messages("pypdf", [str(m) for m in messages], file=path)
    error = reply.get("error")
    if error is None and isinstance(reply.get("sha256"), str):
        sha = reply["sha256"]
        if reply.get("encrypted"):
            return FileFacts(path, PDF, size, sha, encrypted=True)
        sizes = tuple((float(w), float(h)) for w, h in reply.get("page_sizes", ()))
        chars = int(reply.get("text_chars", -1))
        return FileFacts(path, PDF, size, sha, page_sizes=sizes, text_chars=chars)
    if error == "too_many_pages":
        raise InputError(
            f"{_shown(path)}: a PDF of {int(reply.get('pages', 0)):,} pages; no provider takes "
            "more than 1,000 pages in a request; split the document",
            error_type="too_many_pages",
        )
    if error == "memory":
        raise InputError(
            f"{_shown(path)}: a PDF that needs more than {PDF_READ_MEMORY_BYTES >> 20:,} MB to "
            "read, so it was given up; re-export it",
            error_type="attachment_too_large",
        )
    if error == "timeout":
        raise InputError(
            f"{_shown(path)}: a PDF that takes more than {_PDF_READER.timeout_s:g} s to read, "
            "so it was given up; re-export it",
            error_type="attachment_corrupt",
        )
    if error == "unreadable":
        raise InputError(
            f"{_shown(path)}: cannot read the file ({reply.get('what', 'error')}); check its "
            "permissions",
            error_type="attachment_unreadable",
        )
    raise InputError(
        f"{_shown(path)}: a PDF that cannot be read ({reply.get('what', 'unreadable')}); "
        "re-export it",
        error_type="attachment_corrupt",
    )


class PdfReader:
    """The child process that reads PDFs (``pipeline._pdfchild``), started on first use and
    again after it was killed: one file at a time, each within ``timeout_s`` and the child's
    ``memory_bytes`` of address space. ``argv`` replaces the command (tests)."""

    def __init__(
        self,
        *,
        timeout_s: float = PDF_READ_TIMEOUT_S,
        memory_bytes: int = PDF_READ_MEMORY_BYTES,
        argv: Sequence[str] | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._argv = argv
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def read(self, path: str) -> dict[str, Any]:
        """The child's answer for one file: its facts, or ``{"error": kind}``."""
        with self._lock:
            for _attempt in range(2):
                try:
                    process = self._started()
                except OSError as exc:
                    return {"error": "unreadable", "what": f"cannot start the PDF reader: {exc}"}
                assert process.stdin is not None
                try:
                    process.stdin.write(orjson.dumps({"path": path}) + b"\n")
                    process.stdin.flush()
                except OSError:
                    self._stop()  # it died after its last answer (a memory error): again
                    continue
                return self._answer(process)
            return {"error": "memory"}

    def _started(self) -> subprocess.Popen[bytes]:
        process = self._process
        if process is not None and process.poll() is None:
            return process
        self._stop()
        argv = self._argv or (
            sys.executable,
            "-I",
            str(Path(__file__).with_name("_pdfchild.py")),
            str(self.memory_bytes),
        )
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        return self._process

    def _answer(self, process: subprocess.Popen[bytes]) -> dict[str, Any]:
        assert process.stdout is not None
        fd = process.stdout.fileno()
        deadline = time.monotonic() + self.timeout_s
        line = bytearray()
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._stop()
                return {"error": "timeout"}
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # it died: out of memory, most likely
                self._stop()
                return {"error": "memory"}
            line += chunk
        try:
            reply = orjson.loads(line)
        except orjson.JSONDecodeError:
            reply = None
        if not isinstance(reply, dict):
            self._stop()
            return {"error": "corrupt", "what": "no answer"}
        if reply.get("error") == "memory":
            self._stop()  # it exits after a memory error: the next file gets a new one
        return reply

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    def close(self) -> None:
        with self._lock:
            self._stop()


_PDF_READER = PdfReader()
atexit.register(_PDF_READER.close)


def _quiet_libraries() -> None:
    """Pillow and pypdf log through ``logging``, which prints on stderr when nothing else is
    set up: their messages go to the run's log instead (``pipeline.logs``), never the
    terminal."""
    from .logs import quiet_libraries

    quiet_libraries()


def document_fields(path: str) -> dict[str, object]:
    """The fields of a row that is one document (an input glob of PDFs or images): ``path``,
    ``name``, ``size_bytes``, ``media_type`` (by content) and, for a PDF, ``pages``. A file whose
    headers cannot be read still gets a row (with what could be told of it without reading it
    again); sending it records why."""
    fields: dict[str, object] = {"path": path, "name": os.path.basename(path)}
    real = os.path.realpath(path)
    try:
        facts = inspect_file(real)
    except InputError:
        try:
            with open(real, "rb") as fh:
                head = fh.read(16)
            fields["size_bytes"] = os.path.getsize(real)
        except (OSError, ValueError):
            head = b""
        fields["media_type"] = sniff(head)
        return fields
    fields["size_bytes"] = facts.size_bytes
    fields["media_type"] = facts.media_type
    if facts.kind == "pdf" and not facts.encrypted:
        fields["pages"] = facts.pages
    return fields


def read_base64(attachment: Attachment) -> str:
    """The file's content as base64, read now (when its request body is built). Raises
    InputError when it cannot be read, or when its content is no longer what was planned."""
    path = attachment.location
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(
            f"{_shown(path)}: the file was removed after the row was planned; restore it and "
            "run the job again",
            error_type="attachment_missing",
        ) from None
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    if attachment.sha256 and hashlib.sha256(data).hexdigest() != attachment.sha256:
        raise InputError(
            f"{_shown(path)}: the file changed after the row was planned; run the job again to "
            "send the new content (a document's content is part of its request key)",
            error_type="attachment_changed",
        )
    return base64.b64encode(data).decode("ascii")


def url_attachment(url: str, provider: str, model: str, detail: str | None) -> Attachment:
    """An http(s) URL, passed to the provider as a URL source and never downloaded: a ``.pdf``
    path is a document, anything else an image. Its tokens are the provider's largest image
    (or one page of a PDF), as nothing here knows its size. Raises InputError for a URL the
    provider does not take (README, "Documents and images")."""
    suffix = os.path.splitext(url.split("?", 1)[0].split("#", 1)[0])[1].lower()
    media_type = _BY_SUFFIX.get(suffix, "image/jpeg")
    if provider == "gemini":
        _gemini_url(url, model, media_type)
    if media_type == PDF:
        if provider == "openai":
            raise InputError(
                f"{url}: OpenAI chat completions take PDFs as file data only, not by URL; "
                "download it and attach the file",
                error_type="attachment_url",
            )
        tokens = pdf_tokens(provider, model, ((612.0, 792.0),))
        return Attachment("pdf", url, PDF, url=True, pages=0, tokens=tokens)
    side = _GEMINI_MAX_SIDE if provider == "gemini" else 2048
    tokens = image_tokens(provider, model, side, side, detail)
    return Attachment("image", url, media_type, url=True, tokens=tokens, detail=detail)


# Gemini fetches public http(s) URLs given as ``fileData.fileUri`` (its *File input methods*
# guide, "External HTTP / signed URLs"), except for the Gemini 2.0 models, and only for these
# content types among ours.
_GEMINI_URL_TYPES: Final = ("image/jpeg", "image/png", "image/webp", PDF)


def _gemini_url(url: str, model: str, media_type: str) -> None:
    if model.removeprefix("models/").startswith("gemini-2.0"):
        raise InputError(
            f"{url}: Gemini 2.0 models do not fetch files by URL (Gemini's file input methods "
            "guide); use a later model, or download it and attach the file",
            error_type="attachment_url",
        )
    if media_type not in _GEMINI_URL_TYPES:
        raise InputError(
            f"{url}: a {_TYPE_NAMES.get(media_type, media_type)} URL; Gemini fetches only "
            "PNG, JPEG, WebP and PDF files by URL; convert it, or attach a file",
            error_type="attachment_unsupported",
        )


# -- the providers' limits -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """What one provider accepts in one request (README lists where each figure comes from).

    Sizes are decimal megabytes (the stricter reading). ``image_bytes`` applies to the file,
    ``image_base64_bytes`` to its base64 text; ``request_bytes`` to the whole JSON body;
    ``pdf_bytes`` to all PDFs of one request together. ``image_types``: the media types of the
    images it takes.
    """

    image_bytes: int | None
    image_base64_bytes: int | None
    images_bytes: int | None  # all images of one request
    images: int
    max_side: int | None  # pixels
    max_side_many: int | None  # pixels, when more than ``many_images`` images
    many_images: int
    pdf_pages: int
    pdf_bytes: int | None
    request_bytes: int | None
    animated_gif: bool
    image_types: tuple[str, ...] = IMAGE_TYPES


_TYPE_NAMES: Final = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/gif": "GIF",
    "image/webp": "WebP",
    "image/heic": "HEIC",
    "image/heif": "HEIF",
    PDF: "PDF",
}
LIMITS: Final = {
    "anthropic": ProviderLimits(
        image_bytes=None,
        image_base64_bytes=5 * MB,
        images_bytes=None,
        images=100,
        max_side=8000,
        max_side_many=2000,
        many_images=20,
        pdf_pages=100,
        pdf_bytes=None,
        request_bytes=32 * MB,
        animated_gif=True,
    ),
    "openai": ProviderLimits(
        image_bytes=20 * MB,
        image_base64_bytes=None,
        images_bytes=50 * MB,
        images=500,
        max_side=None,
        max_side_many=None,
        many_images=0,
        pdf_pages=100,
        pdf_bytes=32 * MB,
        request_bytes=None,
        animated_gif=False,
    ),
    # Inline data: the whole request under 20 MB (the figure the image, document and Files API
    # guides give; the newer file input methods guide says 100 MB, 50 MB for PDFs: the stricter
    # one is kept). No per-image size or pixel limit (large images are scaled down).
    "gemini": ProviderLimits(
        image_bytes=None,
        image_base64_bytes=None,
        images_bytes=None,
        images=3600,
        max_side=None,
        max_side_many=None,
        many_images=0,
        pdf_pages=1000,
        pdf_bytes=50 * MB,
        request_bytes=20 * MB,
        animated_gif=False,
        image_types=("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"),
    ),
}


def check(provider: str, files: Sequence[FileFacts], *, urls: int = 0, text_bytes: int = 0) -> None:
    """Raise InputError when one request with these files would be refused by ``provider``
    (README, "Documents and images", lists the limits and their sources). ``urls``: images
    passed by URL, which count against the number of images; ``text_bytes``: the rest of the
    body (prompt, system prompt, schema, examples)."""
    limits = LIMITS.get(provider)
    if limits is None:
        return
    images = [f for f in files if f.kind == "image"]
    pdfs = [f for f in files if f.kind == "pdf"]
    count = len(images) + urls
    if count > limits.images:
        raise InputError(
            f"{count} images in one request; {provider} takes at most {limits.images}",
            error_type="too_many_images",
        )
    side = limits.max_side
    if limits.max_side_many is not None and count > limits.many_images:
        side = limits.max_side_many
    for f in images:
        if f.media_type not in limits.image_types:
            names = [_TYPE_NAMES.get(t, t) for t in limits.image_types]
            raise InputError(
                f"{f.path}: a {_TYPE_NAMES.get(f.media_type, f.media_type)} image; {provider} "
                f"takes only {', '.join(names[:-1])} or {names[-1]} images; convert it to PNG",
                error_type="attachment_unsupported",
            )
        if limits.image_bytes is not None and f.size_bytes > limits.image_bytes:
            raise _too_large(f, f.size_bytes, limits.image_bytes, provider, "an image file")
        encoded = (f.size_bytes + 2) // 3 * 4
        if limits.image_base64_bytes is not None and encoded > limits.image_base64_bytes:
            raise _too_large(
                f, encoded, limits.image_base64_bytes, provider, "an image (base64-encoded)"
            )
        if side is not None and max(f.width, f.height) > side:
            many = (
                f" when a request has more than {limits.many_images} images"
                if side != (limits.max_side)
                else ""
            )
            raise InputError(
                f"{f.path}: {f.width}x{f.height} pixels; {provider} refuses images over "
                f"{side}x{side}{many}; scale it down",
                error_type="image_too_large",
            )
        if f.animated and not limits.animated_gif:
            raise InputError(
                f"{f.path}: an animated GIF; {provider} takes only non-animated GIFs; send one "
                "frame as PNG",
                error_type="attachment_unsupported",
            )
    total_images = sum(f.size_bytes for f in images)
    if limits.images_bytes is not None and total_images > limits.images_bytes:
        raise InputError(
            f"{_names(images)}: {total_images:,} bytes of images in one request; {provider} "
            f"takes at most {limits.images_bytes:,}",
            error_type="request_too_large",
        )
    for f in pdfs:
        if f.encrypted:
            raise InputError(
                f"{f.path}: an encrypted PDF; the providers take only standard PDFs without a "
                "password: save an unencrypted copy",
                error_type="attachment_unsupported",
            )
    pages = sum(f.pages for f in pdfs)
    if pages > limits.pdf_pages:
        raise InputError(
            f"{_names(pdfs)}: {pages} PDF pages in one request; {provider} takes at most "
            f"{limits.pdf_pages}; split the document",
            error_type="too_many_pages",
        )
    pdf_bytes = sum(f.size_bytes for f in pdfs)
    if limits.pdf_bytes is not None and pdf_bytes > limits.pdf_bytes:
        raise InputError(
            f"{_names(pdfs)}: {pdf_bytes:,} bytes of PDF in one request; {provider} takes at "
            f"most {limits.pdf_bytes:,}",
            error_type="request_too_large",
        )
    if limits.request_bytes is not None:
        body = text_bytes + sum((f.size_bytes + 2) // 3 * 4 for f in files) + 1024
        if body > limits.request_bytes:
            raise InputError(
                f"{_names(files)}: the request would be about {body:,} bytes with the files "
                f"base64-encoded; {provider} takes at most {limits.request_bytes:,} bytes a "
                "request",
                error_type="request_too_large",
            )


def _too_large(f: FileFacts, size: int, limit: int, provider: str, what: str) -> InputError:
    return InputError(
        f"{f.path}: {size:,} bytes as {what}; {provider} takes at most {limit:,}; compress or "
        "scale it down",
        error_type="attachment_too_large",
    )


def _names(files: Sequence[FileFacts]) -> str:
    names = [f.path for f in files[:3]]
    return ", ".join(names) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


# -- what it costs: the providers' published formulas --------------------------------------------

# OpenAI (images and vision guide, "Calculating costs"): tile models cost a base plus a price per
# 512 px tile at detail "high" (the base alone at "low"); patch models cost 32 px patches (at
# most 1,536) times a multiplier, whatever the detail. Matched by model-name prefix, most
# specific first; other models count as GPT-4o.
_OPENAI_PATCH: Final = (
    ("gpt-4.1-mini", 1.62),
    ("gpt-4.1-nano", 2.46),
    ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46),
    ("o4-mini", 1.72),
)
_OPENAI_TILE: Final = (
    ("gpt-4o-mini", 2833, 5667),
    ("o1", 75, 150),
    ("o3", 75, 150),
    ("computer-use", 65, 129),
)
_OPENAI_DEFAULT_TILE: Final = (85, 170)
_PATCH_CAP: Final = 1536

# Anthropic (vision guide): tokens = width x height / 750, after an image whose long edge passes
# 1,568 px, or that would cost more than about 1,600 tokens, is scaled down to fit.
_ANTHROPIC_LONG_EDGE: Final = 1568
_ANTHROPIC_CAP: Final = 1600

# Gemini (token guide, "Count multimodal tokens"; image guide, "Technical details"): an image
# with both sides at most 384 px is 258 tokens; a larger one, scaled down to fit 3,072 x 3,072
# first, is cut into square crops of its short side / 1.5 (at least 256 px, at most 768 px),
# each scaled to 768 x 768 and 258 tokens. A PDF page is 258 tokens, whatever its size or text
# (document guide, "Technical details").
_GEMINI_TILE_TOKENS: Final = 258
_GEMINI_SMALL: Final = 384
_GEMINI_MAX_SIDE: Final = 3072
_GEMINI_CROP: Final = (256, 768)


def image_tokens(provider: str, model: str, width: int, height: int, detail: str | None) -> int:
    """Prompt tokens of one image of ``width`` x ``height`` pixels, by the provider's formula."""
    if width <= 0 or height <= 0:
        return 0
    if provider == "gemini":
        return _gemini_image_tokens(width, height)
    if provider == "anthropic":
        scale = min(1.0, _ANTHROPIC_LONG_EDGE / max(width, height))
        tokens = math.ceil(width * scale * height * scale / 750)
        return min(tokens, _ANTHROPIC_CAP)
    name = model.lower()
    for prefix, multiplier in _OPENAI_PATCH:
        if name.startswith(prefix):
            return math.ceil(_patches(width, height) * multiplier)
    base, tile = next(((b, t) for p, b, t in _OPENAI_TILE if name.startswith(p)), None) or (
        _OPENAI_DEFAULT_TILE
    )
    if detail == "low":
        return base
    w, h = float(width), float(height)
    fit = min(1.0, 2048 / max(w, h))
    w, h = w * fit, h * fit
    short = min(1.0, 768 / min(w, h))
    w, h = w * short, h * short
    return base + tile * math.ceil(w / 512) * math.ceil(h / 512)


def _gemini_image_tokens(width: int, height: int) -> int:
    if width <= _GEMINI_SMALL and height <= _GEMINI_SMALL:
        return _GEMINI_TILE_TOKENS
    fit = min(1.0, _GEMINI_MAX_SIDE / max(width, height))
    w, h = width * fit, height * fit
    low, high = _GEMINI_CROP
    crop = min(max(math.floor(min(w, h) / 1.5), low), high)
    return _GEMINI_TILE_TOKENS * math.ceil(w / crop) * math.ceil(h / crop)


def _patches(width: int, height: int) -> int:
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches <= _PATCH_CAP:
        return patches
    # Scaled to fit the cap, then a little more so that the width is a whole number of patches.
    shrink = math.sqrt(_PATCH_CAP * 32 * 32 / (width * height))
    w, h = width * shrink, height * shrink
    fit = max(math.floor(w / 32), 1) / (w / 32)
    return min(_PATCH_CAP, math.ceil(w * fit / 32) * math.ceil(h * fit / 32))


def pdf_tokens(
    provider: str, model: str, page_sizes: Sequence[tuple[float, float]], *, text_tokens: int = -1
) -> int:
    """Prompt tokens of one PDF: every page as an image (at the resolution the provider renders
    pages, README) plus its text, ``PDF_PAGE_TEXT_TOKENS`` a page unless ``text_tokens`` (the
    whole document's) is known. Gemini: a flat 258 tokens a page, its text included."""
    if provider == "gemini":
        return _GEMINI_TILE_TOKENS * len(page_sizes)
    total = 0
    for width_pt, height_pt in page_sizes:
        if provider == "anthropic":
            dpi, detail = _ANTHROPIC_PAGE_DPI, None
        else:
            dpi, detail = _OPENAI_PAGE_DPI, "low"
        width = max(1, round(width_pt / 72 * dpi))
        height = max(1, round(height_pt / 72 * dpi))
        total += image_tokens(provider, model, width, height, detail)
    if text_tokens < 0:
        text_tokens = PDF_PAGE_TEXT_TOKENS * len(page_sizes)
    return total + text_tokens


def facts_tokens(provider: str, model: str, facts: FileFacts, detail: str | None) -> int:
    """Prompt tokens of one inspected file."""
    if facts.kind == "pdf":
        text = -1 if facts.text_chars < 0 else (facts.text_chars + 3) // 4
        return pdf_tokens(provider, model, facts.page_sizes, text_tokens=text)
    return image_tokens(provider, model, facts.width, facts.height, detail)


def attachment(facts: FileFacts, provider: str, model: str, detail: str | None) -> Attachment:
    """The ``Attachment`` a request carries for an inspected file."""
    return Attachment(
        facts.kind,
        facts.path,
        facts.media_type,
        size_bytes=facts.size_bytes,
        width=facts.width,
        height=facts.height,
        pages=facts.pages,
        sha256=facts.sha256,
        tokens=facts_tokens(provider, model, facts, detail),
        detail=detail if facts.kind == "image" else None,
    )
