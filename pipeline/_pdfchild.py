"""The process that reads PDFs for ``pipeline.documents``, run as a script of its own.

A PDF is parsed by pypdf, pure Python that a hostile file can keep busy for minutes or make
allocate gigabytes (a broken cross-reference table makes it scan the whole file; a content
stream may inflate a thousandfold). So the parsing happens here, in a child process that
``pipeline.documents`` starts once and talks to over its stdin and stdout, one JSON line each
way per file, and that it kills when an answer takes too long. The child caps its own address
space (``RLIMIT_AS``) before it imports pypdf, so a file that needs more memory ends in a
``MemoryError`` here (or the child's death), never in the run's process.

The file is read once, here: its SHA-256 and its facts come from the same bytes. What goes
back is counts, page sizes and the kind of error; pypdf's log messages go back too, for the
run's log (never the terminal: the child's stderr is discarded).

Run as ``python -I _pdfchild.py MEMORY_BYTES``; it imports only the standard library and pypdf
(never ``pipeline``), so it starts in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import resource
import sys
import warnings
from typing import Any

# Characters of a page whose content stream cannot be read (``documents.PDF_PAGE_TEXT_TOKENS``
# tokens of four characters).
UNREADABLE_PAGE_CHARS = 2000
# A page size beyond which a page is taken to be a Letter page: the PDF specification's largest
# user-space page is 14,400 units (200 inches).
_MAX_SIDE_PT = 14_400.0
_LETTER = (612.0, 792.0)
# More pages than any provider takes (Gemini: 1,000 a request) by far: not walked, reported.
MAX_PAGES = 10_000
# The strings a content stream's text operators draw: literal (...) and hexadecimal <...>
# strings (two bytes a glyph for the CID fonts hexadecimal strings are used with).
_LITERAL = re.compile(rb"\((?:[^()\\]|\\.)*\)", re.S)
_HEX = re.compile(rb"<([0-9A-Fa-f\s]*)>")


def text_chars(page: Any) -> int:
    """Characters a page's text operators draw, counted in its (inflated) content stream: no
    fonts, no layout, no images. A page whose stream cannot be read counts as a full page."""
    try:
        contents = page.get_contents()
        data: bytes = b"" if contents is None else contents.get_data()
    except MemoryError:
        raise
    except Exception:  # a damaged stream: the estimate falls back to a dense page
        return UNREADABLE_PAGE_CHARS
    literal = sum(len(m) - 2 for m in _LITERAL.findall(data))
    return literal + sum(len(m.replace(b" ", b"")) // 4 for m in _HEX.findall(data))


def _side(value: Any, default: float) -> float:
    try:
        side = abs(float(value))
    except (TypeError, ValueError, OverflowError):
        return default
    return side if math.isfinite(side) and 0 < side <= _MAX_SIDE_PT else default


def facts(path: str) -> dict[str, Any]:
    """What one PDF is: its hash, whether it is encrypted, its pages' sizes and text."""
    from pypdf import PdfReader

    with open(path, "rb") as fh:
        data = fh.read()
    out: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        return {**out, "encrypted": True}
    count = len(reader.pages)
    if count > MAX_PAGES:
        return {**out, "error": "too_many_pages", "pages": count}
    sizes: list[tuple[float, float]] = []
    chars = 0
    for page in reader.pages:
        box = page.mediabox
        sizes.append((_side(box.width, _LETTER[0]), _side(box.height, _LETTER[1])))
        chars += text_chars(page)
    return {**out, "encrypted": False, "page_sizes": sizes, "text_chars": chars}


class _Collect(logging.Handler):
    """Keeps what pypdf logs about one file, for the parent to put in the run's log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.messages) < MAX_MESSAGES:
            try:
                message = record.getMessage()
            except Exception:
                message = str(record.msg)
            self.messages.append(message[:300])


MAX_MESSAGES = 20
_COLLECT = _Collect()


def answer(path: str) -> dict[str, Any]:
    """``facts``, or what went wrong, by kind only, and pypdf's messages (for the log)."""
    _COLLECT.messages = []
    reply = _answer(path)
    if _COLLECT.messages:
        reply["messages"] = _COLLECT.messages
    return reply


def _answer(path: str) -> dict[str, Any]:
    try:
        return facts(path)
    except MemoryError:
        return {"error": "memory"}
    except RecursionError:
        return {"error": "corrupt", "what": "RecursionError"}
    except OSError as exc:
        return {"error": "unreadable", "what": exc.strerror or type(exc).__name__}
    except Exception as exc:
        return {"error": "corrupt", "what": type(exc).__name__}


def main(argv: list[str]) -> int:
    memory = int(argv[1]) if len(argv) > 1 else 0
    if memory > 0:
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = memory if hard == resource.RLIM_INFINITY else min(memory, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    warnings.simplefilter("ignore")
    pypdf_log = logging.getLogger("pypdf")
    pypdf_log.addHandler(_COLLECT)
    pypdf_log.propagate = False
    out = sys.stdout
    for line in sys.stdin:
        path = json.loads(line)["path"]
        reply = answer(path)
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if reply.get("error") == "memory":
            return 0  # what pypdf left half-built is not worth keeping: a new child is started
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
