"""OpenAI chat completions: request checks, answers and error bodies. Pure: no I/O.

Shared by the online endpoint and the batch lines (``_batches``): a batch line is checked and
answered by exactly the functions here.

``parse_chat_request`` checks a decoded body the way ``POST /v1/chat/completions`` does and
raises ``OpenAIInvalid`` (a 400 ``invalid_request_error`` naming the ``param``); ``answer``
decides the reply text; ``completion_body`` builds a ``chat.completion`` object. Parameters the
fake does not use (``seed``, ``top_p``, ``stop``, ``tools`` ...) are accepted and ignored.
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
from ._documents import DocumentInvalid, Seen, openai_part, openai_totals
from ._schema import example_for_schema, value_from_text

__all__ = [
    "BAD_JSON_BODY",
    "BAD_KEY_BODY",
    "DEFAULT_OUTPUT_CHARGE",
    "NO_KEY_BODY",
    "QUOTA_BODY",
    "ChatRequest",
    "OpenAIInvalid",
    "answer",
    "auth_failure",
    "completion_body",
    "error_body",
    "error_object",
    "parse_chat_request",
    "prompt_text",
]

# Tokens charged against the token bucket for the output when the request sets no limit.
DEFAULT_OUTPUT_CHARGE: Final = 256

_ROLES: Final = ("system", "developer", "user", "assistant", "tool")
_ROLES_TEXT: Final = (
    "'system', 'assistant', 'user', 'function', 'tool', and 'developer'"  # as the API says it
)
_FORMATS_TEXT: Final = "'json_object', 'json_schema', and 'text'"
SYSTEM_FINGERPRINT: Final = "fp_fake0c0ffee"


class OpenAIInvalid(Exception):
    """A request the real API would answer with 400 ``invalid_request_error``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> bytes:
        return orjson.dumps(self.error_object())

    def error_object(self) -> dict[str, Any]:
        return error_object(self.message, "invalid_request_error", self.param, self.code)


def error_object(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error envelope, decoded."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> bytes:
    """OpenAI's error envelope."""
    return orjson.dumps(error_object(message, type_, param, code))


NO_KEY_BODY: Final = error_body(
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
    "https://platform.openai.com/account/api-keys.",
    "invalid_request_error",
)
# The real API echoes a masked key; the fake echoes none of it.
BAD_KEY_BODY: Final = error_body(
    "Incorrect API key provided. You can find your API key at "
    "https://platform.openai.com/account/api-keys.",
    "invalid_request_error",
    None,
    "invalid_api_key",
)
BAD_JSON_BODY: Final = error_body(
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was "
    "not valid JSON.)",
    "invalid_request_error",
)
QUOTA_BODY: Final = error_body(
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors.",
    "insufficient_quota",
    None,
    "insufficient_quota",
)


def auth_failure(headers: Mapping[str, str], auth_fail: bool) -> bytes | None:
    """The body of the 401 a request with these headers gets, or None when it may pass."""
    authorization = headers.get("Authorization", "")
    if not authorization.startswith("Bearer ") or not authorization[7:].strip():
        return NO_KEY_BODY
    if auth_fail:
        return BAD_KEY_BODY
    return None


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a valid chat completion request the fake acts on."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    n: int
    prompt_tokens: int
    last_user_text: str
    response_format: str  # "text", "json_object" or "json_schema"
    schema: Any  # the json_schema's "schema" (None when absent)
    schema_name: str
    documents_text: str = ""  # the text of the images and PDFs the request attaches


def _kind(value: object) -> str:
    """The JSON type of ``value`` with its article, as OpenAI's messages spell it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _optional_int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OpenAIInvalid(
            f"Invalid type for '{name}': expected an integer, but got {_kind(value)} instead.",
            name,
            "invalid_type",
        )
    if value < minimum:
        raise OpenAIInvalid(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {minimum}, "
            f"but got {value} instead.",
            name,
            "integer_below_min_value",
        )
    return value


def _check_content(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise OpenAIInvalid(
            f"Invalid type for '{where}': expected one of a string or array of objects, "
            f"but got {_kind(content)} instead.",
            where,
            "invalid_type",
        )
    if not content:
        raise OpenAIInvalid(
            f"Invalid '{where}': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            where,
            "empty_array",
        )
    for index, part in enumerate(content):
        here = f"{where}[{index}]"
        if not isinstance(part, dict):
            raise OpenAIInvalid(
                f"Invalid type for '{here}': expected an object, but got {_kind(part)} instead.",
                here,
                "invalid_type",
            )
        if "type" not in part:
            raise OpenAIInvalid(
                f"Missing required parameter: '{here}.type'.",
                f"{here}.type",
                "missing_required_parameter",
            )
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise OpenAIInvalid(
                f"Missing required parameter: '{here}.text'.",
                f"{here}.text",
                "missing_required_parameter",
            )


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise OpenAIInvalid(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list):
        raise OpenAIInvalid(
            "Invalid type for 'messages': expected an array of objects, "
            f"but got {_kind(messages)} instead.",
            "messages",
            "invalid_type",
        )
    if not messages:
        raise OpenAIInvalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            "messages",
            "empty_array",
        )
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise OpenAIInvalid(
                f"Invalid type for '{where}': expected an object, but got {_kind(message)} "
                "instead.",
                where,
                "invalid_type",
            )
        role = message.get("role")
        if role is None:
            raise OpenAIInvalid(
                f"Missing required parameter: '{where}.role'.",
                f"{where}.role",
                "missing_required_parameter",
            )
        if role not in _ROLES:
            raise OpenAIInvalid(
                f"Invalid value: {_quote(role)}. Supported values are: {_ROLES_TEXT}.",
                f"{where}.role",
                "invalid_value",
            )
        content = message.get("content")
        if content is None:
            if role == "assistant" and (message.get("tool_calls") or "refusal" in message):
                continue
            raise OpenAIInvalid(
                f"Missing required parameter: '{where}.content'.",
                f"{where}.content",
                "missing_required_parameter",
            )
        _check_content(content, f"{where}.content")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise OpenAIInvalid(
                f"Missing required parameter: '{where}.tool_call_id'.",
                f"{where}.tool_call_id",
                "missing_required_parameter",
            )
    return messages


def _quote(value: object) -> str:
    return f"'{value}'" if isinstance(value, str) else orjson.dumps(value).decode()


def _check_response_format(value: Any) -> tuple[str, Any, str]:
    if value is None:
        return "text", None, ""
    if not isinstance(value, dict):
        raise OpenAIInvalid(
            f"Invalid type for 'response_format': expected an object, but got {_kind(value)} "
            "instead.",
            "response_format",
            "invalid_type",
        )
    kind = value.get("type")
    if kind is None:
        raise OpenAIInvalid(
            "Missing required parameter: 'response_format.type'.",
            "response_format.type",
            "missing_required_parameter",
        )
    if kind not in ("text", "json_object", "json_schema"):
        raise OpenAIInvalid(
            f"Invalid value: {_quote(kind)}. Supported values are: {_FORMATS_TEXT}.",
            "response_format.type",
            "invalid_value",
        )
    if kind != "json_schema":
        return kind, None, ""
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise OpenAIInvalid(
            "Missing required parameter: 'response_format.json_schema'.",
            "response_format.json_schema",
            "missing_required_parameter",
        )
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise OpenAIInvalid(
            "Missing required parameter: 'response_format.json_schema.name'.",
            "response_format.json_schema.name",
            "missing_required_parameter",
        )
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise OpenAIInvalid(
            "Invalid type for 'response_format.json_schema.schema': expected an object, "
            f"but got {_kind(schema)} instead.",
            "response_format.json_schema.schema",
            "invalid_type",
        )
    return "json_schema", schema, name


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a decoded request body; raise ``OpenAIInvalid`` where the real API would 400."""
    if not isinstance(body, dict):
        raise OpenAIInvalid(
            f"Invalid type for request body: expected an object, but got {_kind(body)} instead.",
            None,
            "invalid_type",
        )
    model = body.get("model")
    if model is None:
        raise OpenAIInvalid("you must provide a model parameter")
    if not isinstance(model, str):
        raise OpenAIInvalid(
            f"Invalid type for 'model': expected a string, but got {_kind(model)} instead.",
            "model",
            "invalid_type",
        )
    messages = _check_messages(body.get("messages"))
    max_tokens = _optional_int(body, "max_completion_tokens", 1)
    legacy_max = _optional_int(body, "max_tokens", 1)
    if max_tokens is None:
        max_tokens = legacy_max
    n = _optional_int(body, "n", 1) or 1
    if n > 128:
        raise OpenAIInvalid(
            f"Invalid 'n': integer above maximum value. Expected a value <= 128, but got {n} "
            "instead.",
            "n",
            "integer_above_max_value",
        )
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise OpenAIInvalid(
                "Invalid type for 'temperature': expected a decimal, but got "
                f"{_kind(temperature)} instead.",
                "temperature",
                "invalid_type",
            )
        if temperature < 0:
            raise OpenAIInvalid(
                "Invalid 'temperature': decimal below minimum value. Expected a value >= 0, "
                f"but got {temperature} instead.",
                "temperature",
                "decimal_below_min_value",
            )
        if temperature > 2:
            raise OpenAIInvalid(
                "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, "
                f"but got {temperature} instead.",
                "temperature",
                "decimal_above_max_value",
            )
    if body.get("stream"):
        raise OpenAIInvalid(
            "The fake provider does not stream: send 'stream': false.",
            "stream",
            "unsupported_value",
        )
    response_format, schema, schema_name = _check_response_format(body.get("response_format"))

    prompt_tokens = PROMPT_OVERHEAD_TOKENS
    last_user: Any = ""
    seen: list[Seen] = []
    for index, message in enumerate(messages):
        content = message.get("content")
        prompt_tokens += MESSAGE_OVERHEAD_TOKENS + content_tokens(content)
        if isinstance(content, list):
            prompt_tokens += _attached_tokens(content, f"messages[{index}].content", model, seen)
        if message["role"] == "user":
            last_user = content
    if seen:
        try:
            openai_totals(seen)
        except DocumentInvalid as invalid:
            raise OpenAIInvalid(invalid.message, invalid.param, invalid.code) from None
    if schema is not None:
        prompt_tokens += estimate_tokens(orjson.dumps(schema).decode())
    return ChatRequest(
        model=model,
        messages=messages,
        max_tokens=max_tokens,
        n=n,
        prompt_tokens=prompt_tokens,
        last_user_text=content_text(last_user),
        response_format=response_format,
        schema=schema,
        schema_name=schema_name,
        documents_text="\n".join(s.text for s in seen if s.text),
    )


def _attached_tokens(parts: list[Any], where: str, model: str, seen: list[Seen]) -> int:
    """Tokens the images and files among ``parts`` add (beyond the flat charge
    ``content_tokens`` gave every non-text part); each is checked as the API does."""
    extra = 0
    for index, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") == "text":
            continue
        try:
            found = openai_part(part, f"{where}[{index}]", model)
        except DocumentInvalid as invalid:
            raise OpenAIInvalid(invalid.message, invalid.param, invalid.code) from None
        if found is not None:
            seen.append(found)
            extra += found.tokens - NON_TEXT_PART_TOKENS
    return extra


def prompt_text(chat: ChatRequest) -> str:
    """The prompt as one string (for the prompt cache), in message order."""
    return "".join(
        f"{message['role']}\n{content_text(message.get('content'))}\n" for message in chat.messages
    )


def answer(chat: ChatRequest) -> tuple[str, int, str]:
    """The reply ``(content, completion_tokens, finish_reason)`` for a request."""
    word = sentiment(chat.last_user_text)
    if chat.response_format == "json_schema" and chat.schema is not None:
        seed = seed_of(chat.schema_name, chat.last_user_text, chat.documents_text)
        if chat.documents_text:
            value = value_from_text(chat.schema, chat.documents_text, seed, hint=word)
        else:
            value = example_for_schema(chat.schema, seed, hint=word)
        text = orjson.dumps(value).decode()
    elif chat.response_format != "text":
        text = orjson.dumps({"sentiment": word}).decode()
    else:
        text = word
    tokens = estimate_tokens(text)
    limit = chat.max_tokens
    if limit is not None and tokens > limit:
        return truncate_to_tokens(text, limit), limit, "length"
    return text, tokens, "stop"


def completion_body(
    chat: ChatRequest,
    *,
    completion_id: str,
    created: int,
    content: str,
    completion_tokens: int,
    finish_reason: str,
    cached_tokens: int,
) -> dict[str, Any]:
    """A ``chat.completion`` object (``n`` identical choices)."""
    choices: list[dict[str, Any]] = [
        {
            "index": index,
            "message": {
                "role": "assistant",
                "content": content,
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        for index in range(chat.n)
    ]
    completion_tokens *= chat.n
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": chat.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": chat.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": chat.prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
