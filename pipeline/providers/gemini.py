"""Google Gemini, the Developer API (``POST {base_url}/v1beta/models/{model}:generateContent``).

The key goes in the ``x-goog-api-key`` header, never in the URL's ``?key=`` (URLs end up in
logs). The system prompt is ``systemInstruction``; few-shot examples, the row and follow-up
turns are ``contents`` with the roles ``user`` and ``model``, each a list of ``parts``. An answer
schema becomes ``generationConfig.responseMimeType = "application/json"`` plus, in ``enforce``
mode, ``responseJsonSchema`` (the schema as JSON Schema); ``json`` mode asks for JSON only.

Usage (``usageMetadata``) is normalised as for the other providers: ``input_tokens`` is
``promptTokenCount`` (cached content included) plus ``toolUsePromptTokenCount``;
``cache_read_tokens`` is ``cachedContentTokenCount`` (Gemini's implicit and explicit caches);
``output_tokens`` is ``candidatesTokenCount`` plus ``thoughtsTokenCount`` (thinking is billed
as output), and ``reasoning_tokens`` the thoughts. The finish reason is kept as Gemini spells
it (``STOP``, ``MAX_TOKENS``, ``SAFETY`` ...); a prompt blocked before any candidate gives its
``promptFeedback.blockReason``.

A row's attachments go before its prompt text in the same user turn, as parts of their own:
files as ``inlineData`` (``mimeType`` and the base64 ``data``), read and encoded here when the
body is built; an http(s) URL as ``fileData`` (``mimeType`` and ``fileUri``), which Gemini
fetches itself (its file input methods guide, "External HTTP / signed URLs").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import httpx

from ..documents import read_base64
from ..limits import ByteWindow
from ..records import Attachment, Request, Usage
from . import _answers as answers
from ._base import BodyEncoder, JSONProvider

__all__ = [
    "API_VERSION",
    "GeminiProvider",
    "generate_bodies",
    "generate_body",
    "model_path",
    "parse_generate",
    "part",
]

API_VERSION = "v1beta"


def model_path(model: str) -> str:
    """``models/{model}`` as it goes into a URL (a ``models/`` prefix is accepted)."""
    return "models/" + quote(model.removeprefix("models/"), safe="-._")


def _text(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "parts": [{"text": text}]}


def part(attachment: Attachment) -> dict[str, Any]:
    """One attachment as a part (its file is read now)."""
    if attachment.url:
        return {"fileData": {"mimeType": attachment.media_type, "fileUri": attachment.location}}
    return {"inlineData": {"mimeType": attachment.media_type, "data": read_base64(attachment)}}


def _row(request: Request) -> dict[str, Any]:
    if not request.attachments:
        return _text("user", request.prompt)
    parts = [part(a) for a in request.attachments]
    parts.append({"text": request.prompt})
    return {"role": "user", "parts": parts}


def _shared(request: Request) -> dict[str, Any]:
    """What every request of a job shares: the generation config, the system instruction and
    the examples (the contents, last, continue with the row's)."""
    framing = request.framing
    config: dict[str, Any] = {"maxOutputTokens": request.max_tokens}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if framing is not None and framing.answer is not None:
        config["responseMimeType"] = "application/json"
        if framing.answer.enforce:
            config["responseJsonSchema"] = framing.answer.schema
    body: dict[str, Any] = {"generationConfig": config}
    if request.system:
        body["systemInstruction"] = {"parts": [{"text": request.system}]}
    contents: list[dict[str, Any]] = []
    if framing is not None:
        for user, answer in framing.examples:
            contents.append(_text("user", user))
            contents.append(_text("model", answer))
    body["contents"] = contents
    return body


def _turns(request: Request) -> list[dict[str, Any]]:
    """The row's turns: its prompt (with its attachments), then any follow-ups."""
    contents = [_row(request)]
    for answer, user in request.followups:
        contents.append(_text("model", answer))
        contents.append(_text("user", user))
    return contents


def generate_bodies() -> BodyEncoder:
    """``generateContent`` bodies, the part a job's requests share encoded once."""
    return BodyEncoder(_shared, _turns)


_BODIES = generate_bodies()


def generate_body(request: Request) -> dict[str, Any]:
    """The JSON body of a ``generateContent`` request for one row (the model is in the URL)."""
    return _BODIES.body(request)


def _count(usage: Mapping[str, Any], key: str) -> int:
    # int64 counts may come as JSON strings (protobuf's JSON mapping)
    return answers.count("gemini", usage, key, strings=True)


def parse_generate(body: Mapping[str, Any]) -> tuple[str, str | None, Usage]:
    """Text, finish reason and usage of a ``GenerateContentResponse``. A body that is not one
    (missing parts, wrong types, counts that are no counts) is a ``TransientError``
    (``bad_response``)."""
    try:
        usage = body["usageMetadata"]
        if not isinstance(usage, Mapping):
            raise TypeError("usageMetadata")
        candidates = body.get("candidates") or []
        if not isinstance(candidates, list):
            raise TypeError("candidates")
        finish: str | None = None
        texts: list[str] = []
        if candidates:
            candidate = candidates[0]
            finish = answers.finish("gemini", candidate.get("finishReason"), "finishReason")
            for part in (candidate.get("content") or {}).get("parts") or ():
                if isinstance(part.get("text"), str) and not part.get("thought"):
                    texts.append(part["text"])
        else:
            feedback = body.get("promptFeedback") or {}
            finish = answers.finish("gemini", feedback.get("blockReason"), "blockReason")
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise answers.bad_answer(
            "gemini", f"answer lacks {exc!s} (not a GenerateContentResponse)"
        ) from exc
    thoughts = _count(usage, "thoughtsTokenCount")
    result = Usage(
        input_tokens=_count(usage, "promptTokenCount") + _count(usage, "toolUsePromptTokenCount"),
        output_tokens=_count(usage, "candidatesTokenCount") + thoughts,
        cache_read_tokens=_count(usage, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )
    return "".join(texts), finish, result


class GeminiProvider(JSONProvider):
    name = "gemini"
    request_id_header = "x-goog-request-id"  # not documented; None when absent

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None,
        *,
        base_url: str,
        api_key: str,
        model: str,
        timeout_s: float = 60.0,
        max_connections: int | None = None,
        documents_window: ByteWindow | None = None,
    ) -> None:
        super().__init__(
            transport,
            url=f"{base_url.rstrip('/')}/{API_VERSION}/{model_path(model)}:generateContent",
            headers={"x-goog-api-key": api_key, "content-type": "application/json"},
            timeout_s=timeout_s,
            max_connections=max_connections,
            documents_window=documents_window,
            bodies=generate_bodies(),
        )

    def parse(self, body: Mapping[str, Any]) -> tuple[str, str | None, Usage]:
        return parse_generate(body)
