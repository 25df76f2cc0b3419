"""Deterministic answers and token counts: pure functions, no I/O.

Token estimate
    ``estimate_tokens(text) = max(ceil(len(text) / 4), number of whitespace-separated words)``:
    about one token per four characters of English, and never fewer tokens than words (short words
    and punctuation-heavy text cost more per character). Growing a text never lowers its estimate.
    A chat message costs its content plus ``MESSAGE_OVERHEAD_TOKENS``; a prompt costs its messages
    plus ``PROMPT_OVERHEAD_TOKENS`` (the real APIs add a few tokens per message for the chat
    format and to prime the reply). Non-text content parts (images, files) cost a flat
    ``NON_TEXT_PART_TOKENS``.

Answers
    A plain-text answer is one sentiment word, ``positive``, ``negative`` or ``neutral``, decided
    by counting cue words in the last user message (``sentiment``). It costs
    ``estimate_tokens(answer)`` output tokens; a ``max_tokens`` below that cuts the text
    (``truncate_to_tokens``) and the provider reports ``length`` / ``max_tokens``.
    Negations ("not good") are not understood: only the cue words count.
"""

from __future__ import annotations

import string
import zlib
from collections.abc import Iterable
from typing import Any, Final, Literal

__all__ = [
    "MESSAGE_OVERHEAD_TOKENS",
    "NEGATIVE_CUES",
    "NON_TEXT_PART_TOKENS",
    "POSITIVE_CUES",
    "PROMPT_OVERHEAD_TOKENS",
    "Sentiment",
    "content_text",
    "content_tokens",
    "estimate_tokens",
    "seed_of",
    "sentiment",
    "truncate_to_tokens",
]

Sentiment = Literal["positive", "negative", "neutral"]

MESSAGE_OVERHEAD_TOKENS: Final = 3
PROMPT_OVERHEAD_TOKENS: Final = 3
NON_TEXT_PART_TOKENS: Final = 85

POSITIVE_CUES: Final = frozenset(
    {
        "good",
        "great",
        "love",
        "loved",
        "loves",
        "excellent",
        "amazing",
        "happy",
        "perfect",
        "recommend",
        "recommended",
    }
)
NEGATIVE_CUES: Final = frozenset(
    {
        "bad",
        "terrible",
        "awful",
        "hate",
        "hated",
        "hates",
        "broken",
        "poor",
        "worst",
        "refund",
        "disappointed",
        "disappointing",
    }
)

# Punctuation becomes a word break, so "great!" and "(bad)" are cue words too.
_PUNCTUATION_TO_SPACE: Final = str.maketrans(string.punctuation, " " * len(string.punctuation))


def estimate_tokens(text: str) -> int:
    """A deterministic token estimate: ~4 characters a token, at least one token a word."""
    if not text:
        return 0
    by_chars = (len(text) + 3) // 4
    words = len(text.split())
    return by_chars if by_chars >= words else words


def truncate_to_tokens(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose estimate is at most ``limit`` tokens."""
    if limit <= 0:
        return ""
    if estimate_tokens(text) <= limit:
        return text
    # The estimate only grows with the prefix length, so a binary search finds the cut.
    low, high = 0, min(len(text), 4 * limit)
    if estimate_tokens(text[:high]) <= limit:
        return text[:high]
    while high - low > 1:
        middle = (low + high) // 2
        if estimate_tokens(text[:middle]) <= limit:
            low = middle
        else:
            high = middle
    return text[:low]


def sentiment(text: str) -> Sentiment:
    """``positive`` / ``negative`` when that side has more cue words, else ``neutral``."""
    positive = negative = 0
    for word in text.lower().translate(_PUNCTUATION_TO_SPACE).split():
        if word in POSITIVE_CUES:
            positive += 1
        elif word in NEGATIVE_CUES:
            negative += 1
    if positive > negative:
        return "positive"
    if negative > positive:
        return "negative"
    return "neutral"


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text_parts(content))
    return ""


def _text_parts(parts: Iterable[Any]) -> Iterable[str]:
    for part in parts:
        if isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, str):
                yield text


def content_tokens(content: Any) -> int:
    """Estimated tokens of one message's content (string or list of parts)."""
    if isinstance(content, str):
        return estimate_tokens(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            text = part.get("text") if isinstance(part, dict) else None
            if isinstance(text, str):
                total += estimate_tokens(text)
            else:
                total += NON_TEXT_PART_TOKENS
    return total


def seed_of(*parts: str) -> int:
    """A stable 32-bit seed from text (the same across processes, unlike ``hash``)."""
    crc = 0
    for part in parts:
        crc = zlib.crc32(part.encode("utf-8", "surrogatepass"), crc)
    return crc
