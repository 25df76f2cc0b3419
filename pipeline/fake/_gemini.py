"""Gemini ``generateContent``: request checks, answers and Google's error bodies. Pure: no I/O.

Shared by the online endpoint and the batch requests (``_gemini_batches``): a batch request is
checked and answered by exactly the functions here.

``parse_generate_request`` checks a decoded body as the Developer API does: field names are
camelCase protobuf names and an unknown one is refused (``Invalid JSON payload received.
Unknown name "max_output_tokens" at 'generation_config': Cannot find field.``), ``contents``
must be non-empty with roles ``user`` / ``model`` and parts that carry data
(``text``, ``inlineData`` with ``mimeType`` and base64 ``data``, ``fileData``),
``responseJsonSchema`` needs ``responseMimeType: application/json``, and so on; a refusal is
``GeminiInvalid`` (400 ``INVALID_ARGUMENT``). ``answer`` decides the reply; ``response_body``
builds a ``GenerateContentResponse``.

Images and documents (``_documents``): ``inlineData`` images and PDFs are decoded and checked
(types, bytes, pages) and charged by Gemini's formulas (258 tokens an image up to 384 x 384 px,
258 a crop of a larger one, 258 a PDF page), reported as the ``IMAGE`` and ``DOCUMENT``
modalities; a schema job is answered from what they say (a PDF's text layer, a PNG's
``Description``), as for the other providers. A body over ``REQUEST_BYTES`` is refused (400).

Thinking: models that think by default (the ``gemini-2.5-flash`` and ``-pro`` family, not
``-lite``) spend ``THOUGHT_TOKENS`` on thinking first, unless
``generationConfig.thinkingConfig.thinkingBudget`` is 0; thoughts count against
``maxOutputTokens`` and are reported as ``thoughtsTokenCount``, as the real models do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from ._answers import (
    MESSAGE_OVERHEAD_TOKENS,
    NON_TEXT_PART_TOKENS,
    PROMPT_OVERHEAD_TOKENS,
    estimate_tokens,
    seed_of,
    sentiment,
    truncate_to_tokens,
)
from ._documents import DocumentInvalid, Seen, gemini_blob, gemini_file, gemini_totals
from ._schema import example_for_schema, value_from_text

__all__ = [
    "BAD_KEY",
    "NO_KEY",
    "REQUEST_BYTES",
    "THOUGHT_TOKENS",
    "GeminiInvalid",
    "GenerateRequest",
    "answer",
    "api_key",
    "error_body",
    "error_object",
    "parse_generate_request",
    "quota_body",
    "rate_limit_body",
    "response_body",
]

THOUGHT_TOKENS: Final = 12
# The largest body generateContent takes: 20 MB, read as 20 MiB (Google's own 400 names the
# limit as "20971520 bytes").
REQUEST_BYTES: Final = 20 * 1024 * 1024

_STATUS_NAMES: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES: Final = {
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "The request timed out. Please try again.",
}
_TOP_FIELDS: Final = frozenset(
    (
        "contents",
        "systemInstruction",
        "generationConfig",
        "safetySettings",
        "tools",
        "toolConfig",
        "cachedContent",
        "labels",
        "model",
    )
)
_CONFIG_FIELDS: Final = frozenset(
    (
        "maxOutputTokens",
        "temperature",
        "topP",
        "topK",
        "candidateCount",
        "stopSequences",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
        "responseMimeType",
        "responseSchema",
        "responseJsonSchema",
        "responseModalities",
        "responseLogprobs",
        "logprobs",
        "thinkingConfig",
        "mediaResolution",
        "speechConfig",
    )
)
# A part's data, by its JSON name and its proto field name: the API takes both spellings (its
# own curl examples write inline_data, and the official SDK sends a Blob's fields as mime_type).
_PART_DATA: Final = {
    "text": "text",
    "inlineData": "inlineData",
    "inline_data": "inlineData",
    "fileData": "fileData",
    "file_data": "fileData",
    "functionCall": "functionCall",
    "function_call": "functionCall",
    "functionResponse": "functionResponse",
    "function_response": "functionResponse",
}
_MIME_TYPES: Final = ("text/plain", "application/json", "text/x.enum")
_GOOGLE: Final = "type.googleapis.com/google.rpc."
_METRIC: Final = "generativelanguage.googleapis.com/generate_content_requests"


def error_object(
    status: int, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Google's error envelope, decoded."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return {"error": error}


def error_body(
    status: int, message: str | None = None, details: list[dict[str, Any]] | None = None
) -> bytes:
    """Google's error envelope; ``message`` defaults to the real API's for the status."""
    return orjson.dumps(error_object(status, message or _MESSAGES.get(status, "Error"), details))


NO_KEY: Final = error_body(
    403,
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API.",
)
# The real API names the key's problem in an ErrorInfo reason and echoes no part of the key.
BAD_KEY: Final = error_body(
    400,
    "API key not valid. Please pass a valid API key.",
    [
        {
            "@type": _GOOGLE + "ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
            "metadata": {"service": "generativelanguage.googleapis.com"},
        }
    ],
)


def _retry(seconds: float) -> dict[str, Any]:
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return {"@type": _GOOGLE + "RetryInfo", "retryDelay": f"{text}s"}


def rate_limit_body(model: str, kind: str, limit: int, retry_after_s: float) -> bytes:
    """The 429 of a per-minute limit: ``QuotaFailure`` names it, ``RetryInfo`` says when."""
    quota = (
        "GenerateRequestsPerMinutePerProjectPerModel"
        if kind == "requests"
        else ("GenerateContentInputTokensPerModelPerMinute")
    )
    return error_body(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more "
        "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.",
        [
            {
                "@type": _GOOGLE + "QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": _METRIC,
                        "quotaId": quota,
                        "quotaDimensions": {"model": model, "location": "global"},
                        "quotaValue": str(limit),
                    }
                ],
            },
            _retry(retry_after_s),
        ],
    )


def quota_body(model: str) -> bytes:
    """The 429 of an exhausted daily quota (``quota_exhausted``)."""
    return error_body(
        429,
        "You exceeded your current quota, please check your plan and billing details.",
        [
            {
                "@type": _GOOGLE + "QuotaFailure",
                "violations": [
                    {
                        "quotaMetric": _METRIC,
                        "quotaId": "GenerateRequestsPerDayPerProjectPerModel",
                        "quotaDimensions": {"model": model, "location": "global"},
                    }
                ],
            },
            _retry(60.0),
        ],
    )


def api_key(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """The key: ``x-goog-api-key``, or the ``key`` query parameter the API also accepts."""
    return (headers.get("x-goog-api-key") or query.get("key") or "").strip()


class GeminiInvalid(Exception):
    """A request the real API would answer with 400 ``INVALID_ARGUMENT``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> bytes:
        return error_body(400, self.message)


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """The parts of a valid ``generateContent`` request the fake acts on."""

    model: str
    prompt_tokens: int
    prompt_text: str  # system instruction and contents, for the prompt cache
    last_user_text: str
    max_tokens: int | None
    json_mode: bool
    schema: Any  # responseJsonSchema (or responseSchema); None when absent
    thoughts: int  # thinking tokens this model spends before answering
    documents_text: str = ""  # the text of the images and PDFs the request attaches
    image_tokens: int = 0  # of prompt_tokens: images
    document_tokens: int = 0  # of prompt_tokens: PDF pages


def _unknown(fields: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    for name in fields:
        if name not in known:
            at = f" at '{where}'" if where else ""
            raise GeminiInvalid(
                f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.'
            )


def _parts(parts: Any, where: str, model: str, seen: list[Seen]) -> tuple[int, str, str]:
    """(tokens, text, text with a mark for each file) of a checked ``parts`` list; the images
    and documents among them are checked and added to ``seen``."""
    if not isinstance(parts, list) or not parts:
        raise GeminiInvalid(f"* {where}.parts: contents.parts must not be empty.")
    tokens = 0
    texts: list[str] = []
    marked: list[str] = []
    for index, part in enumerate(parts):
        here = f"{where}.parts[{index}]"
        if not isinstance(part, dict):
            raise GeminiInvalid(f"Invalid value at '{here}', must be an object.")
        data = [name for name in part if name in _PART_DATA]
        if not data:
            raise GeminiInvalid(
                f"* {here}.data: required oneof field 'data' must have one initialized field"
            )
        if len(data) > 1:
            raise GeminiInvalid(
                f"* {here}.data: oneof field 'data' is already set. Cannot set '{data[1]}'"
            )
        if "text" in part:
            if not isinstance(part["text"], str):
                raise GeminiInvalid(f"Invalid value at '{here}.text' (TYPE_STRING)")
            tokens += estimate_tokens(part["text"])
            texts.append(part["text"])
            marked.append(part["text"])
            continue
        kind = _PART_DATA[data[0]]
        try:
            if kind == "inlineData":
                found = gemini_blob(part[data[0]], here)
            elif kind == "fileData":
                found = gemini_file(part[data[0]], here, model)
            else:
                found = None
        except DocumentInvalid as invalid:
            raise GeminiInvalid(invalid.message) from None
        if found is None:
            tokens += NON_TEXT_PART_TOKENS
            continue
        seen.append(found)
        tokens += found.tokens
        # What the prompt cache keys on: the file's place and content, not only the text.
        digest = hashlib.sha256(orjson.dumps(part, option=orjson.OPT_SORT_KEYS)).hexdigest()
        marked.append(f"[{found.kind} {digest[:16]}]")
    return tokens, "\n".join(texts), "\n".join(marked)


def _config(config: Any, model: str) -> tuple[int | None, bool, Any, int]:
    """(maxOutputTokens, JSON asked for, schema, thinking tokens) of ``generationConfig``."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise GeminiInvalid("Invalid value at 'generation_config', must be an object.")
    _unknown(config, _CONFIG_FIELDS, "generation_config")
    limit = config.get("maxOutputTokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise GeminiInvalid(
            f"Invalid value at 'generation_config.max_output_tokens' (TYPE_INT32), {limit!r}"
            if not isinstance(limit, int) or isinstance(limit, bool)
            else "* GenerateContentRequest.generation_config.max_output_tokens: must be positive"
        )
    temperature = config.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise GeminiInvalid(
                f"Invalid value at 'generation_config.temperature' (TYPE_FLOAT), {temperature!r}"
            )
        if not 0 <= temperature <= 2:
            raise GeminiInvalid(
                "* GenerateContentRequest.generation_config.temperature: temperature must be "
                "between 0 and 2"
            )
    mime = config.get("responseMimeType")
    if mime is not None and mime not in _MIME_TYPES:
        raise GeminiInvalid(
            f"* GenerateContentRequest.generation_config.response_mime_type: allowed mimetypes "
            f"are {', '.join(repr(m) for m in _MIME_TYPES)}, but got: {mime!r}"
        )
    schema = config.get("responseJsonSchema")
    if schema is not None and config.get("responseSchema") is not None:
        raise GeminiInvalid(
            "* GenerateContentRequest.generation_config: response_schema and "
            "response_json_schema cannot both be set"
        )
    schema = schema if schema is not None else config.get("responseSchema")
    if schema is not None:
        if not isinstance(schema, dict):
            raise GeminiInvalid(
                "Invalid value at 'generation_config.response_json_schema', must be an object."
            )
        if mime != "application/json":
            raise GeminiInvalid(
                "* GenerateContentRequest.generation_config.response_mime_type: it must be "
                "application/json when a response schema is set"
            )
    thinking = config.get("thinkingConfig")
    budget = thinking.get("thinkingBudget") if isinstance(thinking, dict) else None
    thoughts = THOUGHT_TOKENS if _thinks(model) and budget != 0 else 0
    if isinstance(budget, int) and not isinstance(budget, bool) and budget > 0:
        thoughts = min(thoughts or THOUGHT_TOKENS, budget)
    return limit, mime == "application/json", schema, thoughts


def _thinks(model: str) -> bool:
    """Whether the model thinks unless told not to (2.5 Flash and Pro, not Flash-Lite)."""
    name = model.removeprefix("models/")
    return name.startswith(("gemini-2.5-flash", "gemini-2.5-pro", "gemini-3")) and (
        "lite" not in name
    )


def parse_generate_request(model: str, body: Any) -> GenerateRequest:
    """Check a decoded body for ``model``; raise ``GeminiInvalid`` where the real API 400s."""
    if not isinstance(body, dict):
        raise GeminiInvalid("Invalid JSON payload received. Expected an object.")
    _unknown(body, _TOP_FIELDS, "")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise GeminiInvalid("* GenerateContentRequest.contents: contents is not specified")
    tokens = PROMPT_OVERHEAD_TOKENS
    texts: list[str] = []
    seen: list[Seen] = []
    system = body.get("systemInstruction")
    if system is not None:
        if not isinstance(system, dict):
            raise GeminiInvalid("Invalid value at 'system_instruction', must be an object.")
        part_tokens, _text, marked = _parts(system.get("parts"), "system_instruction", model, seen)
        tokens += MESSAGE_OVERHEAD_TOKENS + part_tokens
        texts.append(marked)
    last_user = ""
    for index, content in enumerate(contents):
        where = f"contents[{index}]"
        if not isinstance(content, dict):
            raise GeminiInvalid(f"Invalid value at '{where}', must be an object.")
        _unknown(content, frozenset(("role", "parts")), where)
        role = content.get("role", "user")
        if role not in ("user", "model"):
            raise GeminiInvalid(
                f"Please use a valid role: user, model. Got {role!r} in {where}.role."
            )
        part_tokens, text, marked = _parts(content.get("parts"), where, model, seen)
        tokens += MESSAGE_OVERHEAD_TOKENS + part_tokens
        texts.append(f"{role}\n{marked}")
        if role == "user":
            last_user = text
    try:
        gemini_totals(seen)
    except DocumentInvalid as invalid:
        raise GeminiInvalid(invalid.message) from None
    limit, json_mode, schema, thoughts = _config(body.get("generationConfig"), model)
    if schema is not None:
        tokens += estimate_tokens(orjson.dumps(schema).decode())
    return GenerateRequest(
        model=model.removeprefix("models/"),
        prompt_tokens=tokens,
        prompt_text="\n".join(texts),
        last_user_text=last_user,
        max_tokens=limit,
        json_mode=json_mode,
        schema=schema,
        thoughts=thoughts,
        documents_text="\n".join(s.text for s in seen if s.text),
        image_tokens=sum(s.tokens for s in seen if s.kind == "image"),
        document_tokens=sum(s.tokens for s in seen if s.kind == "pdf"),
    )


def answer(request: GenerateRequest) -> tuple[str, int, int, str]:
    """``(text, candidates tokens, thoughts tokens, finishReason)``. Thoughts come first and
    count against ``maxOutputTokens``: what is left may cut the answer (``MAX_TOKENS``)."""
    word = sentiment(request.last_user_text)
    if request.schema is not None:
        if request.documents_text:
            seed = seed_of("gemini", request.last_user_text, request.documents_text)
            value = value_from_text(request.schema, request.documents_text, seed, hint=word)
        else:
            seed = seed_of("gemini", request.last_user_text)
            value = example_for_schema(request.schema, seed, hint=word)
        text = orjson.dumps(value).decode()
    elif request.json_mode:
        text = orjson.dumps({"sentiment": word}).decode()
    else:
        text = word
    tokens = estimate_tokens(text)
    thoughts = request.thoughts
    limit = request.max_tokens
    if limit is not None:
        thoughts = min(thoughts, limit)
        room = limit - thoughts
        if tokens > room:
            return truncate_to_tokens(text, room), room, thoughts, "MAX_TOKENS"
    return text, tokens, thoughts, "STOP"


def response_body(
    request: GenerateRequest,
    *,
    response_id: str,
    text: str,
    candidates_tokens: int,
    thoughts: int,
    finish_reason: str,
    cached_tokens: int,
) -> dict[str, Any]:
    """A ``GenerateContentResponse``; ``promptTokenCount`` includes the cached tokens."""
    media = request.image_tokens + request.document_tokens
    details = [{"modality": "TEXT", "tokenCount": request.prompt_tokens - media}]
    if request.image_tokens:
        details.append({"modality": "IMAGE", "tokenCount": request.image_tokens})
    if request.document_tokens:
        details.append({"modality": "DOCUMENT", "tokenCount": request.document_tokens})
    usage: dict[str, Any] = {
        "promptTokenCount": request.prompt_tokens,
        "candidatesTokenCount": candidates_tokens,
        "totalTokenCount": request.prompt_tokens + candidates_tokens + thoughts,
        "promptTokensDetails": details,
    }
    if cached_tokens:
        usage["cachedContentTokenCount"] = cached_tokens
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached_tokens}]
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    parts = [{"text": text}] if text else []
    return {
        "candidates": [
            {
                "content": {"parts": parts, "role": "model"},
                "finishReason": finish_reason,
                "index": 0,
            }
        ],
        "usageMetadata": usage,
        "modelVersion": request.model,
        "responseId": response_id,
    }
