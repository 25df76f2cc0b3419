"""A cheap imitation of the providers' prompt caches. Pure: the caller passes the clock.

Anthropic
    A prompt prefix ending at a ``cache_control`` breakpoint of at least ``MIN_CACHEABLE_TOKENS``
    is written on first sight (``cache_creation_input_tokens``) and read by later requests with
    the same model and prefix within ``ttl_s`` (``cache_read_input_tokens``). A read refreshes it.

OpenAI
    A prompt of at least ``MIN_CACHEABLE_TOKENS`` whose first ``MIN_CACHEABLE_TOKENS`` tokens were
    seen (same model) within ``ttl_s`` reports as cached the prefix it shares with the prompt seen
    last, in multiples of ``OPENAI_CACHE_INCREMENT`` tokens. Every eligible prompt is remembered.
"""

from __future__ import annotations

from typing import Final, TypeVar

from ._answers import estimate_tokens, truncate_to_tokens

__all__ = ["MIN_CACHEABLE_TOKENS", "OPENAI_CACHE_INCREMENT", "PromptCache"]

MIN_CACHEABLE_TOKENS: Final = 1024
OPENAI_CACHE_INCREMENT: Final = 128

_V = TypeVar("_V", float, tuple[str, float])


class PromptCache:
    """Remembered prompt prefixes of both providers, each with an expiry time."""

    __slots__ = ("_anthropic", "_max_entries", "_openai", "_ttl_s")

    def __init__(self, ttl_s: float = 300.0, max_entries: int = 4096) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._anthropic: dict[tuple[str, str], float] = {}
        self._openai: dict[tuple[str, str], tuple[str, float]] = {}

    def clear(self) -> None:
        self._anthropic.clear()
        self._openai.clear()

    def anthropic_hit(self, model: str, prefix: str, now: float) -> bool:
        """True when ``prefix`` is cached (a read); otherwise it is written and False."""
        key = (model, prefix)
        expires = self._anthropic.pop(key, None)
        self._anthropic[key] = now + self._ttl_s
        self._evict(self._anthropic, now)
        return expires is not None and expires > now

    def openai_cached_tokens(self, model: str, prompt: str, prompt_tokens: int, now: float) -> int:
        """Cached tokens to report for ``prompt`` (0 on a miss); remembers the prompt."""
        if prompt_tokens < MIN_CACHEABLE_TOKENS:
            return 0
        key = (model, truncate_to_tokens(prompt, MIN_CACHEABLE_TOKENS))
        seen = self._openai.pop(key, None)
        self._openai[key] = (prompt, now + self._ttl_s)
        self._evict(self._openai, now)
        if seen is None or seen[1] <= now:
            return 0
        shared = estimate_tokens(prompt[: _common_prefix_length(seen[0], prompt)])
        cached = max(shared, MIN_CACHEABLE_TOKENS)
        cached = min(cached, prompt_tokens)
        return cached - cached % OPENAI_CACHE_INCREMENT

    def _evict(self, entries: dict[tuple[str, str], _V], now: float) -> None:
        if len(entries) <= self._max_entries:
            return
        for key in [k for k, v in entries.items() if _expiry(v) <= now]:
            del entries[key]
        # Still too many live entries: forget the least recently used half.
        if len(entries) > self._max_entries:
            for key in list(entries)[: len(entries) // 2]:
                del entries[key]


def _expiry(value: float | tuple[str, float]) -> float:
    return value[1] if isinstance(value, tuple) else value


def _common_prefix_length(a: str, b: str) -> int:
    """Length of the longest common prefix, by binary search on slice equality (C speed)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
