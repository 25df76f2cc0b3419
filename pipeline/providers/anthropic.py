"""Anthropic messages (``POST {base_url}/v1/messages``).

The system prompt is the top-level ``system``; ``max_tokens`` is required. Usage is normalised so
that ``input_tokens`` counts every prompt token: Anthropic reports uncached, cache-write and
cache-read input tokens separately.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from ..errors import TransientError
from ..records import Request, Usage
from ._base import JSONProvider

__all__ = ["ANTHROPIC_VERSION", "AnthropicProvider", "messages_body", "parse_message"]

ANTHROPIC_VERSION = "2023-06-01"


def messages_body(request: Request) -> dict[str, Any]:
    """The JSON body of a messages request for one row."""
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": [{"role": "user", "content": request.prompt}],
    }
    if request.system:
        body["system"] = request.system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


def parse_message(body: Mapping[str, Any]) -> tuple[str, str | None, Usage]:
    """Text, stop reason and usage of a ``message`` object."""
    try:
        blocks = body["content"]
        text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
        usage = body["usage"]
        uncached = int(usage["input_tokens"])
        write = int(usage.get("cache_creation_input_tokens") or 0)
        read = int(usage.get("cache_read_input_tokens") or 0)
        result = Usage(
            input_tokens=uncached + write + read,
            output_tokens=int(usage["output_tokens"]),
            cache_read_tokens=read,
            cache_write_tokens=write,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TransientError(
            f"anthropic: answer lacks {exc!s} (not a message)", error_type="bad_response"
        ) from exc
    return text, body.get("stop_reason"), result


class AnthropicProvider(JSONProvider):
    name = "anthropic"
    request_id_header = "request-id"

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str,
        api_key: str,
        timeout_s: float = 60.0,
    ) -> None:
        super().__init__(
            transport,
            url=base_url.rstrip("/") + "/v1/messages",
            headers={
                "x-api-key": api_key,
                "anthropic-version": ANTHROPIC_VERSION,
                "content-type": "application/json",
            },
            timeout_s=timeout_s,
        )

    def body(self, request: Request) -> dict[str, Any]:
        return messages_body(request)

    def parse(self, body: Mapping[str, Any]) -> tuple[str, str | None, Usage]:
        return parse_message(body)
