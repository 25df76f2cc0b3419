"""OpenAI chat completions (``POST {base_url}/chat/completions``).

The system prompt is the first message, with role ``system``; few-shot examples follow as
user/assistant turns, then the row, then any follow-up turns: the stable part first, so that
OpenAI's automatic prompt cache can reuse it. An answer schema becomes the ``response_format``:
``json_schema`` (``strict`` when the schema qualifies) in ``enforce`` mode, ``json_object`` in
``json`` mode. Usage keeps cached prompt tokens (part of ``prompt_tokens``) and reasoning tokens
(part of ``completion_tokens``).

A row's attachments go before its prompt text in the same user message: images as ``image_url``
parts (a base64 data URL, or the https URL as given; ``detail`` when the job sets one), PDFs as
``file`` parts (``filename`` and a ``data:application/pdf;base64,`` ``file_data``). Files are read
and encoded here, when the body is built for sending.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from ..documents import read_base64
from ..limits import ByteWindow
from ..records import AnswerSchema, Attachment, Request, Usage
from . import _answers as answers
from ._base import BodyEncoder, JSONProvider

__all__ = [
    "OpenAIProvider",
    "chat_bodies",
    "chat_body",
    "content_part",
    "parse_chat_completion",
    "response_format",
]


def content_part(attachment: Attachment) -> dict[str, Any]:
    """One attachment as a chat-completions content part (its file is read now)."""
    if attachment.kind == "pdf":
        data = read_base64(attachment)
        name = attachment.location.replace("\\", "/").rsplit("/", 1)[-1]
        return {
            "type": "file",
            "file": {"filename": name, "file_data": f"data:application/pdf;base64,{data}"},
        }
    if attachment.url:
        url = attachment.location
    else:
        url = f"data:{attachment.media_type};base64,{read_base64(attachment)}"
    image: dict[str, str] = {"url": url}
    if attachment.detail:
        image["detail"] = attachment.detail
    return {"type": "image_url", "image_url": image}


def _user_content(request: Request) -> str | list[dict[str, Any]]:
    if not request.attachments:
        return request.prompt
    parts = [content_part(a) for a in request.attachments]
    parts.append({"type": "text", "text": request.prompt})
    return parts


def _shared(request: Request) -> dict[str, Any]:
    """What every request of a job shares: model, limits, answer format, system prompt and
    examples (the messages, last, continue with the row's)."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    framing = request.framing
    if framing is not None:
        for user, assistant in framing.examples:
            messages.append({"role": "user", "content": user})
            messages.append({"role": "assistant", "content": assistant})
    body: dict[str, Any] = {"model": request.model, "max_completion_tokens": request.max_tokens}
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if framing is not None and framing.answer is not None:
        body["response_format"] = response_format(framing.answer)
    body["messages"] = messages
    return body


def _row(request: Request) -> list[dict[str, Any]]:
    """The row's messages: its prompt (with its attachments), then any follow-up turns."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": _user_content(request)}]
    for assistant, user in request.followups:
        messages.append({"role": "assistant", "content": assistant})
        messages.append({"role": "user", "content": user})
    return messages


def chat_bodies() -> BodyEncoder:
    """Chat-completions bodies, the part a job's requests share encoded once."""
    return BodyEncoder(_shared, _row)


_BODIES = chat_bodies()


def chat_body(request: Request) -> dict[str, Any]:
    """The JSON body of a chat-completions request for one row."""
    return _BODIES.body(request)


def response_format(answer: AnswerSchema) -> dict[str, Any]:
    """The ``response_format`` asking for ``answer``: its JSON Schema in ``enforce`` mode (strict
    only when the schema qualifies), JSON mode otherwise (the system prompt then says JSON)."""
    if not answer.enforce:
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": answer.name, "schema": answer.schema, "strict": answer.strict}
    if answer.description:
        spec["description"] = answer.description
    return {"type": "json_schema", "json_schema": spec}


def _details(usage: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = usage.get(key)
    return value if isinstance(value, Mapping) else {}


def parse_chat_completion(body: Mapping[str, Any]) -> tuple[str, str | None, Usage]:
    """Text, finish reason and usage of a ``chat.completion`` object. A body that is not one
    (missing parts, wrong types, counts that are no counts) is a ``TransientError``
    (``bad_response``)."""
    try:
        choice = body["choices"][0]
        message = choice["message"]
        usage = body["usage"]
        if not isinstance(usage, Mapping) or not isinstance(message, Mapping):
            raise TypeError("usage" if not isinstance(usage, Mapping) else "message")
        content = answers.text("openai", message.get("content"), "message.content")
        refusal = answers.text("openai", message.get("refusal"), "message.refusal")
        text = content or refusal
        finish = answers.finish("openai", choice.get("finish_reason"), "finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise answers.bad_answer("openai", f"answer lacks {exc!s} (not a chat.completion)") from exc
    result = Usage(
        input_tokens=answers.count("openai", usage, "prompt_tokens", required=True),
        output_tokens=answers.count("openai", usage, "completion_tokens", required=True),
        cache_read_tokens=answers.count(
            "openai", _details(usage, "prompt_tokens_details"), "cached_tokens"
        ),
        reasoning_tokens=answers.count(
            "openai", _details(usage, "completion_tokens_details"), "reasoning_tokens"
        ),
    )
    return text, finish, result


class OpenAIProvider(JSONProvider):
    name = "openai"
    request_id_header = "x-request-id"

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
            url=base_url.rstrip("/") + "/chat/completions",
            headers={
                "authorization": f"Bearer {api_key}",
                "content-type": "application/json",
            },
            timeout_s=timeout_s,
            max_connections=max_connections,
            documents_window=documents_window,
            bodies=chat_bodies(),
        )

    def parse(self, body: Mapping[str, Any]) -> tuple[str, str | None, Usage]:
        return parse_chat_completion(body)
