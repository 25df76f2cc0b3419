"""Anthropic messages: request checks, answers and error bodies. Pure: no I/O.

``parse_messages_request`` checks a decoded ``POST /v1/messages`` body and raises
``AnthropicInvalid`` (a 400 ``invalid_request_error`` whose message names the field, as the real
API's do); ``answer`` decides the content blocks; ``message_body`` builds a ``Message``.

Token estimate: system text, message contents and (when tools are given) the tools' JSON plus
``TOOL_OVERHEAD_TOKENS`` for the tool-use system prompt the real API adds. The cacheable prefix is
the tools plus the system blocks up to the last one carrying ``cache_control``, or, when a
message content block carries one, the tools, the whole system and the messages up to it.

Shared by the online endpoint and the batch requests (``_batches``): a batch request's ``params``
are checked and answered by exactly the functions here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ._answers import (
    MESSAGE_OVERHEAD_TOKENS,
    NON_TEXT_PART_TOKENS,
    PROMPT_OVERHEAD_TOKENS,
    content_text,
    content_tokens,
    estimate_tokens,
    seed_of,
    sentiment,
    truncate_to_tokens,
)
from ._documents import DocumentInvalid, Seen, anthropic_block
from ._schema import example_for_schema, value_from_text

__all__ = [
    "QUOTA_MESSAGE",
    "TOOL_OVERHEAD_TOKENS",
    "AnthropicInvalid",
    "MessagesRequest",
    "answer",
    "api_key",
    "auth_failure",
    "error_body",
    "error_object",
    "message_body",
    "parse_messages_request",
]

TOOL_OVERHEAD_TOKENS: Final = 300
IMAGES_PER_REQUEST: Final = 100
PAGES_PER_REQUEST: Final = 100
REQUEST_BYTES: Final = 32_000_000  # the Messages API's request size limit (413 above it)
QUOTA_MESSAGE: Final = (
    "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing "
    "to upgrade or purchase credits."
)


def error_object(type_: str, message: str, request_id: str | None) -> dict[str, Any]:
    """Anthropic's error envelope, decoded."""
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id}


def error_body(type_: str, message: str, request_id: str) -> bytes:
    """Anthropic's error envelope."""
    return orjson.dumps(error_object(type_, message, request_id))


def api_key(headers: Mapping[str, str]) -> str:
    """The API key: ``x-api-key``, or ``Authorization: Bearer`` as the newer official SDK sends."""
    key = headers.get("x-api-key", "").strip()
    if not key:
        authorization = headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            key = authorization[7:].strip()
    return key


def auth_failure(headers: Mapping[str, str], auth_fail: bool) -> tuple[int, str, str] | None:
    """``(status, error type, message)`` of the answer to a request with these headers when
    they do not pass (no key, ``auth_fail``, no ``anthropic-version``), else None."""
    if not api_key(headers):
        return 401, "authentication_error", "x-api-key header is required"
    if auth_fail:
        return 401, "authentication_error", "invalid x-api-key"
    if not headers.get("anthropic-version"):
        return 400, "invalid_request_error", "anthropic-version: header is required"
    return None


class AnthropicInvalid(Exception):
    """A request the real API would answer with 400 ``invalid_request_error``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class MessagesRequest:
    """The parts of a valid messages request the fake acts on."""

    model: str
    max_tokens: int
    input_tokens: int
    last_user_text: str
    cache_prefix: str  # "" when no cache_control breakpoint
    cache_prefix_tokens: int
    tool: dict[str, Any] | None  # the tool the answer must call, if any
    documents_text: str = ""  # the text of the images and documents the request attaches


def _require(body: dict[str, Any], name: str) -> Any:
    value = body.get(name)
    if value is None:
        raise AnthropicInvalid(f"{name}: Field required")
    return value


def _system(system: Any) -> tuple[int, str, int]:
    """(tokens, cacheable prefix text, cacheable prefix tokens) of the ``system`` field."""
    if system is None:
        return 0, "", 0
    if isinstance(system, str):
        return MESSAGE_OVERHEAD_TOKENS + estimate_tokens(system), "", 0
    if not isinstance(system, list):
        raise AnthropicInvalid("system: Input should be a valid string or a list of text blocks")
    tokens = MESSAGE_OVERHEAD_TOKENS
    texts: list[str] = []
    prefix_end = -1
    prefix_tokens = 0
    for index, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise AnthropicInvalid(f"system.{index}.type: Input should be 'text'")
        text = block.get("text")
        if not isinstance(text, str):
            raise AnthropicInvalid(f"system.{index}.text: Field required")
        tokens += estimate_tokens(text)
        texts.append(text)
        if block.get("cache_control") is not None:
            prefix_end = index
            prefix_tokens = tokens
    if prefix_end < 0:
        return tokens, "", 0
    return tokens, "\n".join(texts[: prefix_end + 1]), prefix_tokens


def _messages(messages: Any, seen: list[Seen]) -> tuple[int, str, str, int]:
    """(tokens, text of the last user message, text and tokens of the messages up to the last
    block carrying ``cache_control``) of a checked ``messages`` list; the images and documents
    it holds are checked and added to ``seen``."""
    if not isinstance(messages, list):
        raise AnthropicInvalid("messages: Input should be a valid list")
    if not messages:
        raise AnthropicInvalid("messages: at least one message is required")
    images = sum(
        1
        for message in messages
        if isinstance(message, dict) and isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "image"
    )
    if images > IMAGES_PER_REQUEST:
        raise AnthropicInvalid(
            f"messages: Too many images: {images} images; the maximum is {IMAGES_PER_REQUEST} "
            "images per request"
        )
    max_side = 2000 if images > 20 else 8000
    tokens = 0
    last_user = ""
    previous = None
    prefix_texts: list[str] = []
    prefix_end, prefix_tokens = -1, 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise AnthropicInvalid(f"messages.{index}: Input should be a valid dictionary")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise AnthropicInvalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        if index == 0 and role != "user":
            raise AnthropicInvalid('messages: first message must use the "user" role')
        if role == previous:
            raise AnthropicInvalid(
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        previous = role
        content = message.get("content")
        if content is None:
            raise AnthropicInvalid(f"messages.{index}.content: Field required")
        if isinstance(content, list):
            for part_index, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise AnthropicInvalid(
                        f"messages.{index}.content.{part_index}.type: Field required"
                    )
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise AnthropicInvalid(
                        f"messages.{index}.content.{part_index}.text: Field required"
                    )
                try:
                    found = anthropic_block(
                        part, f"messages.{index}.content.{part_index}.{part['type']}", max_side
                    )
                except DocumentInvalid as invalid:
                    raise AnthropicInvalid(invalid.message) from None
                if found is not None:
                    seen.append(found)
                    tokens += found.tokens - NON_TEXT_PART_TOKENS
        elif not isinstance(content, str):
            raise AnthropicInvalid(
                f"messages.{index}.content: Input should be a valid string or a list of blocks"
            )
        tokens += MESSAGE_OVERHEAD_TOKENS + content_tokens(content)
        prefix_texts.append(content_text(content))
        if isinstance(content, list) and any(
            isinstance(part, dict) and part.get("cache_control") is not None for part in content
        ):
            prefix_end, prefix_tokens = index, tokens
        if role == "user":
            last_user = content_text(content)
    prefix = "\n".join(prefix_texts[: prefix_end + 1]) if prefix_end >= 0 else ""
    return tokens, last_user, prefix, prefix_tokens


def _tools(body: dict[str, Any]) -> tuple[int, str, dict[str, Any] | None]:
    """(tokens, JSON text, forced tool) of ``tools`` and ``tool_choice``."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None:
        if isinstance(choice, dict) and choice.get("type") in ("tool", "any"):
            raise AnthropicInvalid("tool_choice: tool_choice requires tools to be provided")
        return 0, "", None
    if not isinstance(tools, list):
        raise AnthropicInvalid("tools: Input should be a valid list")
    by_name: dict[str, dict[str, Any]] = {}
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise AnthropicInvalid(f"tools.{index}: Input should be a valid dictionary")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise AnthropicInvalid(f"tools.{index}.name: Field required")
        if "type" in tool and tool["type"] not in (None, "custom"):
            continue  # server tools (web search ...) carry no input_schema
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise AnthropicInvalid(f"tools.{index}.input_schema: Field required")
        if schema.get("type") != "object":
            raise AnthropicInvalid(f"tools.{index}.input_schema.type: Input should be 'object'")
        by_name[name] = tool
    text = orjson.dumps(tools).decode()
    tokens = TOOL_OVERHEAD_TOKENS + estimate_tokens(text)
    forced: dict[str, Any] | None = None
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in (
            "auto",
            "any",
            "tool",
            "none",
        ):
            raise AnthropicInvalid(
                "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"
            )
        if choice["type"] == "tool":
            name = choice.get("name")
            if not isinstance(name, str):
                raise AnthropicInvalid("tool_choice.name: Field required")
            if name not in by_name:
                raise AnthropicInvalid(f"tool_choice: Tool '{name}' not found in provided tools")
            forced = by_name[name]
        elif choice["type"] == "any" and by_name:
            forced = next(iter(by_name.values()))
    return tokens, text, forced


def parse_messages_request(body: Any) -> MessagesRequest:
    """Check a decoded request body; raise ``AnthropicInvalid`` where the real API would 400."""
    if not isinstance(body, dict):
        raise AnthropicInvalid("Input should be a valid dictionary")
    model = _require(body, "model")
    if not isinstance(model, str):
        raise AnthropicInvalid("model: Input should be a valid string")
    max_tokens = _require(body, "max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise AnthropicInvalid("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise AnthropicInvalid("max_tokens: Input should be greater than or equal to 1")
    messages = _require(body, "messages")
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise AnthropicInvalid("temperature: Input should be a valid number")
        if temperature < 0:
            raise AnthropicInvalid("temperature: Input should be greater than or equal to 0")
        if temperature > 1:
            raise AnthropicInvalid("temperature: Input should be less than or equal to 1")
    if body.get("stream"):
        raise AnthropicInvalid("stream: the fake provider does not stream; send stream=false")
    system_tokens, system_prefix, system_prefix_tokens = _system(body.get("system"))
    seen: list[Seen] = []
    message_tokens, last_user, message_prefix, message_prefix_tokens = _messages(messages, seen)
    pages = sum(s.pages for s in seen)
    if pages > PAGES_PER_REQUEST:
        raise AnthropicInvalid(f"A maximum of {PAGES_PER_REQUEST} PDF pages may be provided.")
    tool_tokens, tool_text, forced = _tools(body)
    input_tokens = PROMPT_OVERHEAD_TOKENS + system_tokens + message_tokens + tool_tokens
    if message_prefix:  # a breakpoint in the messages caches everything before it too
        cache_prefix = f"{tool_text}\n{system_prefix}\n{message_prefix}"
        cache_prefix_tokens = tool_tokens + system_tokens + message_prefix_tokens
    elif system_prefix:
        cache_prefix = f"{tool_text}\n{system_prefix}"
        cache_prefix_tokens = tool_tokens + system_prefix_tokens
    else:
        cache_prefix, cache_prefix_tokens = "", 0
    return MessagesRequest(
        model=model,
        max_tokens=max_tokens,
        input_tokens=input_tokens,
        last_user_text=last_user,
        cache_prefix=cache_prefix,
        cache_prefix_tokens=cache_prefix_tokens,
        tool=forced,
        documents_text="\n".join(s.text for s in seen if s.text),
    )


def answer(request: MessagesRequest, tool_use_id: str) -> tuple[list[dict[str, Any]], int, str]:
    """The reply ``(content blocks, output_tokens, stop_reason)`` for a request.

    A forced tool gets one ``tool_use`` block whose input fits the tool's ``input_schema``; when
    ``max_tokens`` is too small for it, the content is empty and ``stop_reason`` is
    ``max_tokens`` (the block would have been cut off).
    """
    word = sentiment(request.last_user_text)
    limit = request.max_tokens
    tool = request.tool
    if tool is not None:
        name = tool["name"]
        seed = seed_of(name, request.last_user_text, request.documents_text)
        if request.documents_text:
            value = value_from_text(tool["input_schema"], request.documents_text, seed, hint=word)
        else:
            value = example_for_schema(tool["input_schema"], seed, hint=word)
        tokens = estimate_tokens(name) + estimate_tokens(orjson.dumps(value).decode())
        if tokens > limit:
            return [], limit, "max_tokens"
        block = {"type": "tool_use", "id": tool_use_id, "name": name, "input": value}
        return [block], tokens, "tool_use"
    tokens = estimate_tokens(word)
    if tokens > limit:
        return [{"type": "text", "text": truncate_to_tokens(word, limit)}], limit, "max_tokens"
    return [{"type": "text", "text": word}], tokens, "end_turn"


def message_body(
    request: MessagesRequest,
    *,
    message_id: str,
    content: list[dict[str, Any]],
    output_tokens: int,
    stop_reason: str,
    cache_read: int,
    cache_write: int,
) -> dict[str, Any]:
    """A ``Message`` object; ``input_tokens`` excludes cache reads and writes, as the API's."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": request.input_tokens - cache_read - cache_write,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache_write,
                "ephemeral_1h_input_tokens": 0,
            },
            "service_tier": "standard",
        },
    }
