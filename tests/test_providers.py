"""The provider modules against httpx.MockTransport: wire format in, normalised reply out."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import orjson
import pytest

from pipeline.errors import FatalProviderError, RateLimitError, RowRejectedError, TransientError
from pipeline.providers import AnthropicProvider, OpenAIProvider
from pipeline.providers._base import BodyEncoder
from pipeline.providers.anthropic import messages_bodies, messages_body
from pipeline.providers.anthropic_batch import AnthropicBatchProvider
from pipeline.providers.gemini import generate_bodies
from pipeline.providers.openai import chat_bodies, chat_body
from pipeline.providers.openai_batch import OpenAIBatchProvider
from pipeline.records import AnswerSchema, Framing, Request

KEY = "sk" + "-test-0123456789abcdefghijklmnop"


def make_request(**overrides: object) -> Request:
    fields: dict[str, object] = dict(
        row_id="r1",
        request_key="k" * 24,
        prompt_hash="p" * 16,
        provider="openai",
        model="gpt-4o-mini",
        system="Be terse.",
        prompt="Review: great kettle",
        max_tokens=5,
        temperature=0.0,
        est_input_tokens=12,
    )
    fields.update(overrides)
    return Request(**fields)  # type: ignore[arg-type]


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


OPENAI_OK = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "positive", "refusal": None},
        }
    ],
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 9,
        "total_tokens": 1209,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "completion_tokens_details": {"reasoning_tokens": 8},
    },
}


@pytest.mark.anyio
async def test_openai_sends_the_system_prompt_first_and_normalises_usage() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json=OPENAI_OK,
            headers={
                "x-request-id": "req_1",
                "x-ratelimit-remaining-tokens": "999",
                "x-ratelimit-reset-tokens": "6m0s",
            },
        )

    provider = OpenAIProvider(mock_client(handler), base_url="http://fake/v1", api_key=KEY)
    reply = await provider.send(make_request())
    await provider.aclose()

    sent = seen[0]
    assert sent.url == "http://fake/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["x-client-request-id"] == "k" * 24
    body = orjson.loads(sent.content)
    assert body["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Review: great kettle"},
    ]
    assert body["max_completion_tokens"] == 5
    assert reply.text == "positive"
    assert reply.finish_reason == "stop"
    assert (reply.usage.input_tokens, reply.usage.cache_read_tokens) == (1200, 1024)
    assert (reply.usage.output_tokens, reply.usage.reasoning_tokens) == (9, 8)
    assert reply.request_id == "req_1"
    assert reply.rate_limit is not None
    assert reply.rate_limit.remaining_tokens == 999
    assert reply.rate_limit.reset_tokens_s == pytest.approx(360)


@pytest.mark.anyio
async def test_anthropic_uses_top_level_system_and_counts_every_input_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "m",
                "content": [{"type": "text", "text": "nega"}, {"type": "text", "text": "tive"}],
                "stop_reason": "max_tokens",
                "stop_sequence": None,
                "usage": {
                    "input_tokens": 20,
                    "output_tokens": 5,
                    "cache_creation_input_tokens": 1100,
                    "cache_read_input_tokens": 0,
                },
            },
        )

    provider = AnthropicProvider(mock_client(handler), base_url="http://fake", api_key=KEY)
    reply = await provider.send(make_request(provider="anthropic", model="claude-3-5-haiku"))

    sent = seen[0]
    assert sent.url == "http://fake/v1/messages"
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    body = orjson.loads(sent.content)
    assert body["system"] == "Be terse."
    assert body["messages"] == [{"role": "user", "content": "Review: great kettle"}]
    assert body["max_tokens"] == 5
    assert reply.text == "negative"
    assert reply.finish_reason == "max_tokens"
    assert reply.usage.input_tokens == 1120
    assert reply.usage.cache_write_tokens == 1100


def test_bodies_leave_out_what_the_job_did_not_set() -> None:
    request = make_request(system=None, temperature=None)
    assert "temperature" not in chat_body(request)
    assert [m["role"] for m in chat_body(request)["messages"]] == ["user"]
    assert "system" not in messages_body(request)
    assert "temperature" not in messages_body(request)


SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["label"],
    "additionalProperties": False,
}


def requests_of_every_shape() -> list[Request]:
    """Requests as jobs make them: plain, without system prompt or temperature, with examples,
    an answer schema (enforced or JSON mode), cache breakpoints, follow-up turns, odd text."""
    enforce = AnswerSchema(schema=SCHEMA, name="label", enforce=True, strict=True)
    examples = (("Review: awful", '{"label": "negative"}'), ("Review: fine", "positive"))
    framings = [
        None,
        Framing(examples=examples),
        Framing(answer=enforce),
        Framing(answer=AnswerSchema(schema=SCHEMA, name="label", enforce=False)),
        Framing(examples=examples, answer=enforce, cache_system=True, cache_examples=True),
    ]
    out = []
    for framing in framings:
        for system, temperature in (("Be terse.", 0.0), (None, None), ('Sé breve \u2603 "', 0.7)):
            out.append(make_request(framing=framing, system=system, temperature=temperature))
    out.append(
        make_request(prompt='quotes " and \\ and \n and 😀', followups=(("maybe", "again"),))
    )
    return out


@pytest.mark.parametrize(
    "bodies", [chat_bodies, messages_bodies, generate_bodies], ids=["openai", "anthropic", "gemini"]
)
def test_bodies_spliced_from_a_shared_part_are_the_bodies_byte_for_byte(
    bodies: Callable[[], BodyEncoder],
) -> None:
    encoder = bodies()
    for request in requests_of_every_shape() * 2:  # the second time from the shared parts
        body = encoder.body(request)
        assert encoder.encode(request) == orjson.dumps(body)
        assert orjson.loads(encoder.encode(request)) == body


def test_batch_lines_splice_the_same_bodies() -> None:
    request = make_request(framing=Framing(examples=(("a", "b"),)))
    openai_line = orjson.loads(
        OpenAIBatchProvider(mock_client(print), base_url="x", api_key=KEY).line(request)
    )
    assert openai_line == {
        "custom_id": request.request_key,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": chat_body(request),
    }
    anthropic_line = AnthropicBatchProvider(mock_client(print), base_url="x", api_key=KEY).line(
        request
    )
    assert orjson.loads(anthropic_line) == {
        "custom_id": request.request_key,
        "params": messages_body(request),
    }


def test_openai_bodies_validate_against_the_published_schema() -> None:
    from _openapi import openai_validator

    validator = openai_validator("CreateChatCompletionRequest")
    for request in requests_of_every_shape():
        errors = list(validator.iter_errors(orjson.loads(chat_bodies().encode(request))))
        assert errors == []


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind"),
    [
        (
            429,
            {
                "error": {
                    "message": "Rate limit reached",
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
            {"retry-after": "2"},
            RateLimitError,
        ),
        (
            429,
            {
                "error": {
                    "message": "You exceeded your current quota",
                    "type": "insufficient_quota",
                    "param": None,
                    "code": "insufficient_quota",
                }
            },
            {},
            FatalProviderError,
        ),
        (
            401,
            {
                "error": {
                    "message": "Incorrect API key provided",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            },
            {},
            FatalProviderError,
        ),
        (
            400,
            {
                "error": {
                    "message": "bad temperature",
                    "type": "invalid_request_error",
                    "param": "temperature",
                    "code": None,
                }
            },
            {},
            RowRejectedError,
        ),
        (
            503,
            {
                "error": {
                    "message": "overloaded",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            },
            {},
            TransientError,
        ),
    ],
)
@pytest.mark.anyio
async def test_openai_errors_are_classified_for_the_runner(
    status: int, body: object, headers: dict[str, str], kind: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    provider = OpenAIProvider(mock_client(handler), base_url="http://fake/v1", api_key=KEY)
    with pytest.raises(kind) as info:
        await provider.send(make_request())
    assert KEY not in str(info.value)
    if kind is RateLimitError:
        assert info.value.retry_after == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("content", [b"", b'{"choices": [', b'{"choices": []}', b"[1]"])
@pytest.mark.anyio
async def test_empty_or_malformed_answers_are_transient(content: bytes) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=content)

    provider = OpenAIProvider(mock_client(handler), base_url="http://fake/v1", api_key=KEY)
    with pytest.raises(TransientError):
        await provider.send(make_request())


@pytest.mark.anyio
async def test_connection_failures_are_transient() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("Server disconnected", request=request)

    provider = AnthropicProvider(mock_client(handler), base_url="http://fake", api_key=KEY)
    with pytest.raises(TransientError) as info:
        await provider.send(make_request(provider="anthropic"))
    assert info.value.error_type == "connection_error"
