"""Anthropic messages (``POST {base_url}/v1/messages``).

The system prompt is the top-level ``system``; ``max_tokens`` is required. Few-shot examples are
user/assistant turns before the row, follow-up turns come after it. An answer schema in
``enforce`` mode is one tool, ``record``, whose ``input_schema`` is the schema, and
``tool_choice`` forces it: the answer is that ``tool_use`` block's ``input`` (``parse_message``
returns it as JSON text). In ``json`` mode the system prompt asks for JSON only (no prefill).

Prompt caching: when the renderer says the stable prefix is long enough (``Framing``), the system
prompt is sent as a text block with ``cache_control: {"type": "ephemeral"}``, and so is the last
example's answer: Anthropic then caches tools + system (+ examples) and later rows read them at a
tenth of the input price.

Usage is normalised so that ``input_tokens`` counts every prompt token: Anthropic reports
uncached, cache-write and cache-read input tokens separately.

A row's attachments go before its prompt text in the same user message, as Anthropic recommends:
images as ``image`` blocks and PDFs as ``document`` blocks, each with a ``base64`` source (and its
``media_type``) or a ``url`` source. Files are read and encoded here, when the body is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import orjson

from ..documents import read_base64
from ..extract import ANSWER_TOOL
from ..limits import ByteWindow
from ..records import AnswerSchema, Attachment, Request, Usage
from . import _answers as answers
from ._base import BodyEncoder, JSONProvider

__all__ = [
    "ANTHROPIC_VERSION",
    "AnthropicProvider",
    "answer_tool",
    "content_block",
    "messages_bodies",
    "messages_body",
    "parse_message",
]

ANTHROPIC_VERSION = "2023-06-01"
EPHEMERAL: dict[str, str] = {"type": "ephemeral"}


def content_block(attachment: Attachment) -> dict[str, Any]:
    """One attachment as a content block (its file is read now)."""
    kind = "document" if attachment.kind == "pdf" else "image"
    if attachment.url:
        return {"type": kind, "source": {"type": "url", "url": attachment.location}}
    source = {
        "type": "base64",
        "media_type": attachment.media_type,
        "data": read_base64(attachment),
    }
    return {"type": kind, "source": source}


def _user_content(request: Request) -> str | list[dict[str, Any]]:
    if not request.attachments:
        return request.prompt
    blocks = [content_block(a) for a in request.attachments]
    blocks.append({"type": "text", "text": request.prompt})
    return blocks


def _shared(request: Request) -> dict[str, Any]:
    """What every request of a job shares: model, limits, system prompt (with its cache
    breakpoint), the answer tool and the examples (the messages, last, continue with the
    row's)."""
    framing = request.framing
    body: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens}
    if request.system:
        if framing is not None and framing.cache_system:
            body["system"] = [{"type": "text", "text": request.system, "cache_control": EPHEMERAL}]
        else:
            body["system"] = request.system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if framing is not None and framing.answer is not None and framing.answer.enforce:
        body["tools"] = [answer_tool(framing.answer)]
        body["tool_choice"] = {"type": "tool", "name": ANSWER_TOOL}
    messages: list[dict[str, Any]] = []
    if framing is not None:
        last = len(framing.examples) - 1
        for index, (user, assistant) in enumerate(framing.examples):
            messages.append({"role": "user", "content": user})
            if index == last and framing.cache_examples:
                block = {"type": "text", "text": assistant, "cache_control": EPHEMERAL}
                messages.append({"role": "assistant", "content": [block]})
            else:
                messages.append({"role": "assistant", "content": assistant})
    body["messages"] = messages
    return body


def _row(request: Request) -> list[dict[str, Any]]:
    """The row's messages: its prompt (with its attachments), then any follow-up turns."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": _user_content(request)}]
    for assistant, user in request.followups:
        messages.append({"role": "assistant", "content": assistant})
        messages.append({"role": "user", "content": user})
    return messages


def messages_bodies() -> BodyEncoder:
    """Messages bodies, the part a job's requests share encoded once."""
    return BodyEncoder(_shared, _row)


_BODIES = messages_bodies()


def messages_body(request: Request) -> dict[str, Any]:
    """The JSON body of a messages request for one row."""
    return _BODIES.body(request)


def answer_tool(answer: AnswerSchema) -> dict[str, Any]:
    """The one tool an ``enforce``-mode request must call; its input is the answer."""
    description = answer.description or (
        "Record the answer: call this tool once, with input that follows its schema."
    )
    return {"name": ANSWER_TOOL, "description": description, "input_schema": answer.schema}


def parse_message(body: Mapping[str, Any]) -> tuple[str, str | None, Usage]:
    """Text, stop reason and usage of a ``message`` object.

    The text is that of the text blocks; when the message calls a tool (a structured answer),
    it is the first ``tool_use`` block's ``input``, as JSON. A body that is not a message
    (missing parts, wrong types, counts that are no counts) is a ``TransientError``
    (``bad_response``).
    """
    try:
        texts: list[str] = []
        tool_input: Any = None
        content = body["content"]
        if not isinstance(content, list):
            raise TypeError("content")
        for block in content:
            kind = block.get("type")
            if kind == "text":
                texts.append(answers.text("anthropic", block.get("text"), "a text block"))
            elif kind == "tool_use" and tool_input is None:
                tool_input = block["input"]
        text = "".join(texts) if tool_input is None else orjson.dumps(tool_input).decode()
        usage = body["usage"]
        if not isinstance(usage, Mapping):
            raise TypeError("usage")
        stop = answers.finish("anthropic", body.get("stop_reason"), "stop_reason")
    except (KeyError, TypeError, AttributeError, orjson.JSONEncodeError) as exc:
        raise answers.bad_answer("anthropic", f"answer lacks {exc!s} (not a message)") from exc
    uncached = answers.count("anthropic", usage, "input_tokens", required=True)
    write = answers.count("anthropic", usage, "cache_creation_input_tokens")
    read = answers.count("anthropic", usage, "cache_read_input_tokens")
    result = Usage(
        input_tokens=uncached + write + read,
        output_tokens=answers.count("anthropic", usage, "output_tokens", required=True),
        cache_read_tokens=read,
        cache_write_tokens=write,
    )
    return text, stop, result


class AnthropicProvider(JSONProvider):
    name = "anthropic"
    request_id_header = "request-id"

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None,
        *,
        base_url: str,
        api_key: str,
        timeout_s: float = 60.0,
        max_connections: int | None = None,
        documents_window: ByteWindow | None = None,
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
            max_connections=max_connections,
            documents_window=documents_window,
            bodies=messages_bodies(),
        )

    def parse(self, body: Mapping[str, Any]) -> tuple[str, str | None, Usage]:
        return parse_message(body)
