"""The fake provider as its users meet it: over loopback HTTP, with the official SDKs and raw
aiohttp. Each test runs its own server on 127.0.0.1, port 0, and stops it on the way out."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import anthropic
import jsonschema
import openai
import orjson
import pytest
from _openapi import openai_validator
from aiohttp import web
from anthropic.types import Message

import pipeline.fake
from pipeline.fake import FakeConfig, FakeProvider, create_app, running_fake_provider

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


POSITIVE_REVIEW = "Great blender, I love it and would recommend it to anyone."
NEGATIVE_REVIEW = "Terrible. It arrived broken and support was awful; I want a refund."
OPENAI_HEADERS = {"Authorization": "Bearer test-key"}
ANTHROPIC_HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
CLASSIFY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "topics": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 3},
        "details": {
            "type": "object",
            "properties": {"stars": {"type": "integer", "minimum": 1, "maximum": 5}},
            "required": ["stars"],
            "additionalProperties": False,
        },
    },
    "required": ["sentiment", "confidence", "topics", "details"],
    "additionalProperties": False,
}


def chat_body(text: str = POSITIVE_REVIEW, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Classify the sentiment of the review."},
            {"role": "user", "content": text},
        ],
        **extra,
    }


def messages_body(text: str = POSITIVE_REVIEW, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "system": "Classify the sentiment of the review.",
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


class Reply:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: Any,
    headers: Mapping[str, str],
    **kwargs: Any,
) -> Reply:
    async with session.post(url, data=orjson.dumps(body), headers=dict(headers), **kwargs) as r:
        return Reply(r.status, r.headers, await r.read())


async def post_openai(
    fake: FakeProvider, body: Any, headers: Mapping[str, str] = OPENAI_HEADERS, **kwargs: Any
) -> Reply:
    async with aiohttp.ClientSession() as session:
        return await post(
            session, f"{fake.openai_base_url}/chat/completions", body, headers, **kwargs
        )


async def post_anthropic(
    fake: FakeProvider, body: Any, headers: Mapping[str, str] = ANTHROPIC_HEADERS, **kwargs: Any
) -> Reply:
    async with aiohttp.ClientSession() as session:
        return await post(
            session, f"{fake.anthropic_base_url}/v1/messages", body, headers, **kwargs
        )


async def post_raw(fake: FakeProvider, url: str, data: bytes) -> Reply:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers=OPENAI_HEADERS) as response,
    ):
        return Reply(response.status, response.headers, await response.read())


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string such as ``12ms``, ``1.5s``, ``6m0s`` or ``1h2m3s``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)ms|(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)", text)
    assert match, f"not a Go duration: {text!r}"
    millis, hours, minutes, seconds = match.groups()
    if millis is not None:
        return float(millis) / 1000
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)


# -- the public surface ---------------------------------------------------------------------------


def test_public_api_is_exactly_all() -> None:
    public = {name for name in dir(pipeline.fake) if not name.startswith("_")}
    assert set(pipeline.fake.__all__) == public - {"annotations"}
    assert sorted(pipeline.fake.__all__) == [
        "AccountingSnapshot",
        "FakeConfig",
        "FakeProvider",
        "create_app",
        "running_fake_provider",
        "serve_forever",
    ]


async def test_refuses_to_listen_beyond_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        async with running_fake_provider(host="0.0.0.0"):
            pass


async def test_base_urls_point_at_the_running_server() -> None:
    async with running_fake_provider() as fake:
        assert fake.port > 0
        assert fake.openai_base_url == f"http://127.0.0.1:{fake.port}/v1"
        assert fake.anthropic_base_url == f"http://127.0.0.1:{fake.port}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{fake.anthropic_base_url}/_fake/health") as response,
        ):
            assert response.status == 200


async def test_create_app_serves_requests_under_any_runner() -> None:
    runner = web.AppRunner(create_app(FakeConfig()))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            reply = await post(session, url, chat_body(), OPENAI_HEADERS)
        assert reply.status == 200
        assert reply.json()["choices"][0]["message"]["content"] == "positive"
    finally:
        await runner.cleanup()


# -- the official SDKs ----------------------------------------------------------------------------


async def test_openai_sdk_gets_a_parsed_completion_with_usage() -> None:
    async with (
        running_fake_provider() as fake,
        openai.AsyncOpenAI(
            base_url=fake.openai_base_url, api_key="test-key", max_retries=0
        ) as client,
    ):
        completion = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": POSITIVE_REVIEW}],
            max_tokens=16,
        )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.content == "positive"
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens > 10
    assert usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_anthropic_sdk_gets_a_parsed_message_with_usage() -> None:
    async with (
        running_fake_provider() as fake,
        anthropic.AsyncAnthropic(
            base_url=fake.anthropic_base_url, api_key="test-key", max_retries=0
        ) as client,
    ):
        message = await client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=64,
            system="Classify the sentiment.",
            messages=[{"role": "user", "content": NEGATIVE_REVIEW}],
        )
    assert message.id.startswith("msg_")
    assert message.stop_reason == "end_turn"
    assert message.content[0].type == "text"
    assert message.content[0].text == "negative"
    assert message.usage.input_tokens > 10
    assert message.usage.output_tokens > 0
    assert message.usage.service_tier == "standard"


async def test_anthropic_sdk_forced_tool_call_returns_schema_valid_input() -> None:
    async with (
        running_fake_provider() as fake,
        anthropic.AsyncAnthropic(
            base_url=fake.anthropic_base_url, api_key="test-key", max_retries=0
        ) as client,
    ):
        message = await client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=256,
            messages=[{"role": "user", "content": NEGATIVE_REVIEW}],
            tools=[
                {"name": "classify", "description": "Record it.", "input_schema": CLASSIFY_SCHEMA}
            ],
            tool_choice={"type": "tool", "name": "classify"},
        )
    assert message.stop_reason == "tool_use"
    assert len(message.content) == 1
    block = message.content[0]
    assert block.type == "tool_use"
    assert block.name == "classify"
    assert block.id.startswith("toolu_")
    jsonschema.validate(block.input, CLASSIFY_SCHEMA)
    assert isinstance(block.input, dict)
    assert block.input["sentiment"] == "negative"


async def test_openai_json_schema_response_format_gives_schema_valid_json() -> None:
    async with (
        running_fake_provider() as fake,
        openai.AsyncOpenAI(
            base_url=fake.openai_base_url, api_key="test-key", max_retries=0
        ) as client,
    ):
        completion = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": POSITIVE_REVIEW}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "classify", "schema": CLASSIFY_SCHEMA, "strict": True},
            },
        )
        as_object = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Answer in JSON. {POSITIVE_REVIEW}"}],
            response_format={"type": "json_object"},
        )
    content = completion.choices[0].message.content
    assert content is not None
    value = orjson.loads(content)
    jsonschema.validate(value, CLASSIFY_SCHEMA)
    assert value["sentiment"] == "positive"
    assert isinstance(orjson.loads(as_object.choices[0].message.content or ""), dict)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_auth_failure_raises_the_sdks_authentication_error(sdk: str) -> None:
    secret = "sk" + "-live-0123456789abcdefSECRET"
    async with running_fake_provider(FakeConfig(auth_fail=True)) as fake:
        if sdk == "openai":
            async with openai.AsyncOpenAI(
                base_url=fake.openai_base_url, api_key=secret, max_retries=0
            ) as client:
                with pytest.raises(openai.AuthenticationError) as caught:
                    await client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
                    )
            body = caught.value.body
            assert isinstance(body, dict)
            assert body["code"] == "invalid_api_key"
            assert body["type"] == "invalid_request_error"
        else:
            async with anthropic.AsyncAnthropic(
                base_url=fake.anthropic_base_url, api_key=secret, max_retries=0
            ) as aclient:
                with pytest.raises(anthropic.AuthenticationError) as acaught:
                    await aclient.messages.create(
                        model="claude-haiku-4-5",
                        max_tokens=10,
                        messages=[{"role": "user", "content": "hi"}],
                    )
            body = acaught.value.body
            assert isinstance(body, dict)
            assert body["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
            assert body["request_id"].startswith("req_")
        # No part of the key is echoed back.
        assert "SECRET" not in orjson.dumps(body).decode()
        assert fake.accounting()["by_status"] == {"401": 1}


async def test_missing_api_key_is_a_401_in_each_providers_shape() -> None:
    async with running_fake_provider() as fake:
        openai_reply = await post_openai(fake, chat_body(), headers={})
        anthropic_reply = await post_anthropic(
            fake, messages_body(), headers={"anthropic-version": "2023-06-01"}
        )
    assert openai_reply.status == 401
    error = openai_reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "API key" in error["message"]
    assert anthropic_reply.status == 401
    assert anthropic_reply.json()["error"] == {
        "type": "authentication_error",
        "message": "x-api-key header is required",
    }


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
async def test_rate_limit_raises_the_sdks_rate_limit_error_with_retry_after(sdk: str) -> None:
    config = FakeConfig(requests_per_second=0.5, burst_s=2.0)  # one request, then a 2 s wait
    async with running_fake_provider(config) as fake:
        if sdk == "openai":
            async with openai.AsyncOpenAI(
                base_url=fake.openai_base_url, api_key="test-key", max_retries=0
            ) as client:
                await client.chat.completions.create(**chat_body())
                with pytest.raises(openai.RateLimitError) as caught:
                    await client.chat.completions.create(**chat_body())
            headers = caught.value.response.headers
            body = caught.value.body
            assert isinstance(body, dict)
            assert body["type"] == "requests"
            assert body["code"] == "rate_limit_exceeded"
            assert "requests per min (RPM): Limit 30" in body["message"]
            assert headers["x-ratelimit-limit-requests"] == "30"
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert 1.0 < parse_go_duration(headers["x-ratelimit-reset-requests"]) <= 2.0
        else:
            async with anthropic.AsyncAnthropic(
                base_url=fake.anthropic_base_url, api_key="test-key", max_retries=0
            ) as aclient:
                await aclient.messages.create(**messages_body())
                with pytest.raises(anthropic.RateLimitError) as acaught:
                    await aclient.messages.create(**messages_body())
            headers = acaught.value.response.headers
            body = acaught.value.body
            assert isinstance(body, dict)
            assert body["type"] == "error"
            assert body["error"]["type"] == "rate_limit_error"
            assert headers["anthropic-ratelimit-requests-limit"] == "30"
            assert headers["anthropic-ratelimit-requests-remaining"] == "0"
            reset = datetime.fromisoformat(headers["anthropic-ratelimit-requests-reset"])
            assert reset.tzinfo is not None
            assert timedelta(0) < reset - datetime.now(UTC) <= timedelta(seconds=4)
        assert headers["retry-after"] == "2"


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_burst_beyond_the_bucket_gets_429s_with_retry_after(api: str) -> None:
    config = FakeConfig(requests_per_second=20, burst_s=1)
    async with running_fake_provider(config) as fake, aiohttp.ClientSession() as session:
        if api == "openai":
            url, body, headers = (
                f"{fake.openai_base_url}/chat/completions",
                chat_body(),
                OPENAI_HEADERS,
            )
        else:
            url, body, headers = (
                f"{fake.anthropic_base_url}/v1/messages",
                messages_body(),
                ANTHROPIC_HEADERS,
            )
        replies = await asyncio.gather(*(post(session, url, body, headers) for _ in range(60)))
    ok = [r for r in replies if r.status == 200]
    limited = [r for r in replies if r.status == 429]
    assert len(ok) + len(limited) == 60
    assert 20 <= len(ok) <= 23
    for reply in limited:
        assert int(reply.headers["retry-after"]) >= 1
        if api == "openai":
            error = reply.json()["error"]
            assert error["type"] == "requests"
            assert error["code"] == "rate_limit_exceeded"
            assert error["param"] is None
            assert re.search(r"Please try again in [0-9.]+m?s\.", error["message"])
            assert parse_go_duration(reply.headers["x-ratelimit-reset-requests"]) > 0
        else:
            assert reply.json()["error"]["type"] == "rate_limit_error"
            datetime.fromisoformat(reply.headers["anthropic-ratelimit-requests-reset"])
    for reply in ok:  # the limit headers ride on successful answers too
        prefix = "x-ratelimit-" if api == "openai" else "anthropic-ratelimit-"
        assert any(name.lower().startswith(prefix) for name in reply.headers)
    assert fake.accounting()["by_status"] == {"200": len(ok), "429": len(limited)}


async def test_token_bucket_refuses_with_type_tokens() -> None:
    # 100 tokens/s with a 1 s burst: a request charging ~20 prompt + 60 max_tokens fits once.
    async with running_fake_provider(FakeConfig(tokens_per_second=100)) as fake:
        first = await post_openai(fake, chat_body(max_tokens=60))
        second = await post_openai(fake, chat_body(max_tokens=60))
        too_large = await post_openai(fake, chat_body(max_tokens=500))
    assert first.status == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "6000"
    assert second.status == 429
    assert second.json()["error"]["type"] == "tokens"
    assert "tokens per min (TPM)" in second.json()["error"]["message"]
    assert parse_go_duration(second.headers["x-ratelimit-reset-tokens"]) > 0
    assert too_large.status == 429
    assert too_large.json()["error"]["message"].startswith("Request too large")


async def test_unlimited_fake_sends_no_rate_limit_headers() -> None:
    async with running_fake_provider() as fake:
        reply = await post_openai(fake, chat_body())
    assert reply.status == 200
    assert reply.headers["x-request-id"].startswith("req_")
    assert not any(name.lower().startswith("x-ratelimit-") for name in reply.headers)


# -- published shapes -----------------------------------------------------------------------------


async def test_openai_answers_validate_against_the_published_schema() -> None:
    validator = openai_validator("CreateChatCompletionResponse")
    request_validator = openai_validator("CreateChatCompletionRequest")
    bodies = [
        chat_body(),
        chat_body(max_tokens=1),
        chat_body(n=2, temperature=0.5),
        chat_body(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "classify", "schema": CLASSIFY_SCHEMA},
            }
        ),
    ]
    async with running_fake_provider() as fake:
        for body in bodies:
            request_validator.validate(body)
            reply = await post_openai(fake, body)
            assert reply.status == 200
            validator.validate(reply.json())


async def test_openai_schema_check_catches_a_broken_answer() -> None:
    validator = openai_validator("CreateChatCompletionResponse")
    async with running_fake_provider() as fake:
        answer = (await post_openai(fake, chat_body())).json()
    answer["choices"][0]["finish_reason"] = "done"
    assert not validator.is_valid(answer)


async def test_anthropic_answers_validate_as_sdk_messages() -> None:
    bodies = [
        messages_body(),
        messages_body(max_tokens=1),
        messages_body(
            tools=[{"name": "classify", "input_schema": CLASSIFY_SCHEMA}],
            tool_choice={"type": "tool", "name": "classify"},
        ),
    ]
    async with running_fake_provider() as fake:
        for body in bodies:
            reply = await post_anthropic(fake, body)
            assert reply.status == 200
            message = Message.model_validate(reply.json())
            assert message.type == "message"
            assert message.role == "assistant"
            assert message.stop_sequence is None
            assert reply.headers["request-id"].startswith("req_")


# -- faults ---------------------------------------------------------------------------------------


async def test_error_rate_one_fails_every_request_in_each_providers_way() -> None:
    async with running_fake_provider(FakeConfig(error_rate=1.0)) as fake:
        openai_replies = [await post_openai(fake, chat_body()) for _ in range(3)]
        anthropic_replies = [await post_anthropic(fake, messages_body()) for _ in range(3)]
        async with openai.AsyncOpenAI(
            base_url=fake.openai_base_url, api_key="test-key", max_retries=0
        ) as client:
            with pytest.raises(openai.InternalServerError):
                await client.chat.completions.create(**chat_body())
    for reply in openai_replies:
        assert reply.status == 500
        assert reply.json()["error"]["type"] == "server_error"
    for reply in anthropic_replies:
        assert reply.status == 529
        assert reply.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert fake.accounting()["paid_total"] == 0


async def test_error_status_forces_the_status() -> None:
    async with running_fake_provider(FakeConfig(error_rate=1.0, error_status=503)) as fake:
        openai_reply = await post_openai(fake, chat_body())
        anthropic_reply = await post_anthropic(fake, messages_body())
    assert openai_reply.status == 503
    assert openai_reply.json()["error"]["type"] == "server_error"
    assert anthropic_reply.status == 503
    assert anthropic_reply.json()["type"] == "error"


async def test_drop_rate_one_closes_the_connection_without_an_answer() -> None:
    async with running_fake_provider(FakeConfig(drop_rate=1.0)) as fake:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post_openai(fake, chat_body())
        async with openai.AsyncOpenAI(
            base_url=fake.openai_base_url, api_key="test-key", max_retries=0
        ) as client:
            with pytest.raises(openai.APIConnectionError):
                await client.chat.completions.create(**chat_body())
    assert fake.accounting()["by_status"] == {"dropped": 2}


@pytest.mark.parametrize(
    ("knob", "expected"), [("malformed_rate", "truncated"), ("empty_rate", "")]
)
async def test_malformed_and_empty_bodies(knob: str, expected: str) -> None:
    async with running_fake_provider(FakeConfig(**{knob: 1.0})) as fake:
        openai_reply = await post_openai(fake, chat_body())
        anthropic_reply = await post_anthropic(fake, messages_body())
    for reply in (openai_reply, anthropic_reply):
        assert reply.status == 200
        if expected == "":
            assert reply.body == b""
        else:
            assert reply.body.startswith(b"{")
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(reply.body)
    accounting = fake.accounting()
    assert accounting["by_status"] == {"200": 2}
    assert accounting["paid_total"] == 0  # an unreadable answer is not counted as paid


async def test_hang_outlasts_a_client_timeout_and_does_not_block_shutdown() -> None:
    started = time.monotonic()
    async with running_fake_provider(FakeConfig(hang_rate=1.0)) as fake:
        with pytest.raises(TimeoutError):
            await post_openai(fake, chat_body(), timeout=aiohttp.ClientTimeout(total=0.2))
        # A second hanging request is still in progress when the server stops.
        async with aiohttp.ClientSession() as session:
            pending = asyncio.ensure_future(
                post(
                    session, f"{fake.openai_base_url}/chat/completions", chat_body(), OPENAI_HEADERS
                )
            )
            await fake.wait_for_requests(2)
            await fake.aclose()
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await pending
    assert time.monotonic() - started < 5  # hang_s is an hour
    assert fake.accounting()["by_status"] == {"hung": 2}


async def test_latency_holds_nothing_256_requests_in_flight() -> None:
    """All 256 requests reach the fake while the first is still in its minute of latency: it
    serves them side by side, not one at a time (which would take 256 minutes)."""
    async with running_fake_provider(FakeConfig(latency_ms=60_000)) as fake:
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = f"{fake.openai_base_url}/chat/completions"
            sent = asyncio.gather(
                *(post(session, url, chat_body(), OPENAI_HEADERS) for _ in range(256)),
                return_exceptions=True,
            )
            await fake.wait_for_requests(256)
            await fake.aclose()  # wakes every one of them, unanswered
            replies = await sent
    assert len(replies) == 256
    assert all(isinstance(r, aiohttp.ServerDisconnectedError) for r in replies)


async def test_shutdown_wakes_requests_sleeping_in_latency() -> None:
    config = FakeConfig(latency_ms=60_000)
    async with running_fake_provider(config) as fake, aiohttp.ClientSession() as session:
        url = f"{fake.openai_base_url}/chat/completions"
        pending = asyncio.ensure_future(post(session, url, chat_body(), OPENAI_HEADERS))
        await fake.wait_for_requests(1)
        started = time.monotonic()
        await fake.aclose()
        assert time.monotonic() - started < 3
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await pending


# -- request validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "code"),  # every body here also fails OpenAI's published request schema
    [
        ({"model": "gpt-4o-mini"}, "messages", "missing_required_parameter"),
        ({"model": "gpt-4o-mini", "messages": []}, "messages", "empty_array"),
        ({"model": "gpt-4o-mini", "messages": "oops"}, "messages", "invalid_type"),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "hi"}]},
            "messages[0].role",
            "invalid_value",
        ),
        (
            {"model": "gpt-4o-mini", "messages": [{"content": "hi"}]},
            "messages[0].role",
            "missing_required_parameter",
        ),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "user"}]},
            "messages[0].content",
            "missing_required_parameter",
        ),
        (chat_body(temperature="hot"), "temperature", "invalid_type"),
        (chat_body(temperature=2.5), "temperature", "decimal_above_max_value"),
        (chat_body(max_completion_tokens="10"), "max_completion_tokens", "invalid_type"),
        ({"messages": [{"role": "user", "content": "hi"}]}, None, None),
    ],
)
async def test_openai_rejects_bad_requests_like_the_real_api(
    body: dict[str, Any], param: str | None, code: str | None
) -> None:
    assert not openai_validator("CreateChatCompletionRequest").is_valid(body)
    async with running_fake_provider() as fake:
        reply = await post_openai(fake, body)
    assert reply.status == 400
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert error["message"]


async def test_openai_rejects_max_tokens_below_one() -> None:
    # The published schema sets no minimum here, but the API answers this 400.
    async with running_fake_provider() as fake:
        reply = await post_openai(fake, chat_body(max_tokens=0))
    assert reply.status == 400
    error = reply.json()["error"]
    assert (error["param"], error["code"]) == ("max_tokens", "integer_below_min_value")
    assert error["message"] == (
        "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, "
        "but got 0 instead."
    )


async def test_openai_rejects_a_body_that_is_not_json() -> None:
    async with running_fake_provider() as fake:
        reply = await post_raw(fake, f"{fake.openai_base_url}/chat/completions", b"{oops")
    assert reply.status == 400
    error = reply.json()["error"]
    assert "could not parse the JSON body" in error["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]},
            "max_tokens: Field required",
        ),
        (
            {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
            "model: Field required",
        ),
        (messages_body(max_tokens="ten"), "max_tokens: Input should be a valid integer"),
        (
            messages_body(messages=[{"role": "assistant", "content": "hi"}]),
            'messages: first message must use the "user" role',
        ),
        (
            messages_body(
                messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
            ),
            'messages: roles must alternate between "user" and "assistant", '
            'but found multiple "user" roles in a row',
        ),
        (
            messages_body(messages=[{"role": "system", "content": "a"}]),
            "messages.0.role: Input should be 'user' or 'assistant'",
        ),
        (messages_body(temperature=1.5), "temperature: Input should be less than or equal to 1"),
        (
            messages_body(
                tools=[{"name": "t", "input_schema": {"type": "object"}}],
                tool_choice={"type": "tool", "name": "other"},
            ),
            "tool_choice: Tool 'other' not found in provided tools",
        ),
    ],
)
async def test_anthropic_rejects_bad_requests_like_the_real_api(
    body: dict[str, Any], message: str
) -> None:
    async with running_fake_provider() as fake:
        reply = await post_anthropic(fake, body)
    assert reply.status == 400
    payload = reply.json()
    assert payload["type"] == "error"
    assert payload["error"] == {"type": "invalid_request_error", "message": message}
    assert payload["request_id"].startswith("req_")
    assert payload["request_id"] == reply.headers["request-id"]


async def test_anthropic_requires_the_version_header() -> None:
    async with running_fake_provider() as fake:
        reply = await post_anthropic(fake, messages_body(), headers={"x-api-key": "test-key"})
    assert reply.status == 400
    assert reply.json()["error"]["message"] == "anthropic-version: header is required"


async def test_unknown_paths_are_404_in_the_providers_shape() -> None:
    async with running_fake_provider() as fake, aiohttp.ClientSession() as session:
        missing = await post(session, f"{fake.openai_base_url}/embeddingz", {}, OPENAI_HEADERS)
        anthropic_missing = await post(
            session, f"{fake.anthropic_base_url}/v1/complete", {}, ANTHROPIC_HEADERS
        )
    assert missing.status == 404
    assert missing.json()["error"]["message"] == "Invalid URL (POST /v1/embeddingz)"
    assert anthropic_missing.status == 404
    assert anthropic_missing.json()["error"]["type"] == "not_found_error"


# -- answers --------------------------------------------------------------------------------------


async def test_the_same_request_always_gets_the_same_answer() -> None:
    schema_body = chat_body(
        NEGATIVE_REVIEW,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "classify", "schema": CLASSIFY_SCHEMA},
        },
    )
    async with running_fake_provider() as fake:
        texts = [
            (await post_openai(fake, body)).json()["choices"][0]["message"]["content"]
            for body in (chat_body(), chat_body(), chat_body(NEGATIVE_REVIEW), schema_body)
        ]
    async with running_fake_provider(FakeConfig(seed=99)) as other:
        again = (await post_openai(other, schema_body)).json()["choices"][0]["message"]["content"]
    assert texts[:3] == ["positive", "positive", "negative"]
    assert texts[3] == again
    assert orjson.loads(again)["sentiment"] == "negative"


async def test_max_tokens_truncates_the_answer() -> None:
    async with running_fake_provider() as fake:
        full = (await post_openai(fake, chat_body())).json()
        cut = (await post_openai(fake, chat_body(max_tokens=1))).json()
        message_cut = (await post_anthropic(fake, messages_body(max_tokens=1))).json()
    full_text = full["choices"][0]["message"]["content"]
    cut_text = cut["choices"][0]["message"]["content"]
    assert full["usage"]["completion_tokens"] > 1
    assert cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 1
    assert cut_text and full_text.startswith(cut_text) and cut_text != full_text
    assert message_cut["stop_reason"] == "max_tokens"
    assert message_cut["usage"]["output_tokens"] == 1
    assert full_text.startswith(message_cut["content"][0]["text"])


async def test_anthropic_prompt_cache_writes_then_reads_a_long_system_prefix() -> None:
    long_system = "You are a careful annotator of product reviews. " * 100  # ~1200 tokens
    body = messages_body(
        system=[
            {"type": "text", "text": long_system, "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Answer with one word."},
        ]
    )
    async with running_fake_provider() as fake:
        first = (await post_anthropic(fake, body)).json()["usage"]
        second = (await post_anthropic(fake, body)).json()["usage"]
        short = (await post_anthropic(fake, messages_body())).json()["usage"]
    assert first["cache_creation_input_tokens"] >= 1024
    assert first["cache_read_input_tokens"] == 0
    assert second["cache_creation_input_tokens"] == 0
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["input_tokens"] == first["input_tokens"] < 100  # cached parts excluded
    assert short["cache_creation_input_tokens"] == short["cache_read_input_tokens"] == 0
    assert fake.accounting()["tokens"]["cache_read"] == second["cache_read_input_tokens"]


async def test_openai_prompt_cache_reports_cached_tokens_in_steps_of_128() -> None:
    long_system = "You are a careful annotator of product reviews. " * 120  # ~1450 tokens
    body = chat_body(
        messages=[
            {"role": "system", "content": long_system},
            {"role": "user", "content": POSITIVE_REVIEW},
        ]
    )
    async with running_fake_provider() as fake:
        first = (await post_openai(fake, body)).json()["usage"]
        second = (await post_openai(fake, body)).json()["usage"]
        short = (await post_openai(fake, chat_body())).json()["usage"]
    assert first["prompt_tokens"] >= 1024
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 1024
    assert cached % 128 == 0
    assert cached <= second["prompt_tokens"] == first["prompt_tokens"]
    assert short["prompt_tokens_details"]["cached_tokens"] == 0


# -- accounting and control -----------------------------------------------------------------------


async def test_accounting_counts_paid_answers_per_client_request_id() -> None:
    async with running_fake_provider() as fake:
        for key in ("row-1", "row-1", "row-2"):
            reply = await post_openai(
                fake, chat_body(), {**OPENAI_HEADERS, "x-client-request-id": key}
            )
            assert reply.status == 200
        await post_anthropic(
            fake, messages_body(), {**ANTHROPIC_HEADERS, "x-client-request-id": "row-3"}
        )
        bad = await post_openai(
            fake, {"model": "m"}, {**OPENAI_HEADERS, "x-client-request-id": "row-4"}
        )
        assert bad.status == 400
        await post_openai(fake, chat_body())  # no id: paid, but not attributed
        expected = {
            "requests": 6,
            "by_status": {"200": 5, "400": 1},
            "faults": {},
            "arrived": {"row-1": 2, "row-2": 1, "row-3": 1, "row-4": 1},
            "paid": {"row-1": 2, "row-2": 1, "row-3": 1},
            "paid_total": 5,
            "duplicates_paid": 1,
        }
        snapshot = fake.accounting()
        assert {k: v for k, v in snapshot.items() if k != "tokens"} == expected
        assert snapshot["tokens"]["input"] > 0 and snapshot["tokens"]["output"] > 0
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{fake.anthropic_base_url}/_fake/accounting") as response:
                assert orjson.loads(await response.read()) == snapshot
            async with session.post(f"{fake.anthropic_base_url}/_fake/reset") as response:
                assert response.status == 200
        cleared = fake.accounting()
        assert cleared["requests"] == 0
        assert cleared["paid"] == {}
        assert cleared["duplicates_paid"] == 0


async def test_knobs_change_at_runtime_over_http_and_from_python() -> None:
    async with running_fake_provider() as fake, aiohttp.ClientSession() as session:
        config_url = f"{fake.anthropic_base_url}/_fake/config"
        async with session.post(
            config_url, json={"error_rate": 1, "error_status": 502}
        ) as response:
            assert response.status == 200
            assert orjson.loads(await response.read())["error_rate"] == 1.0
        assert (await post_openai(fake, chat_body())).status == 502
        async with session.post(config_url, json={"error_rate": 0}) as response:
            assert response.status == 200
        assert (await post_openai(fake, chat_body())).status == 200
        async with session.post(config_url, json={"eror_rate": 1}) as response:
            assert response.status == 400
            assert "eror_rate" in orjson.loads(await response.read())["error"]
        async with session.post(config_url, json={"drop_rate": 2}) as response:
            assert response.status == 400
        fake.update_config(quota_exhausted=True)
        quota = await post_openai(fake, chat_body())
        assert quota.status == 429
        assert quota.json()["error"]["code"] == "insufficient_quota"
        assert quota.json()["error"]["type"] == "insufficient_quota"
        broke = await post_anthropic(fake, messages_body())
        assert broke.status == 400
        assert "credit balance is too low" in broke.json()["error"]["message"]
        with pytest.raises(ValueError, match="unknown"):
            fake.update_config(speed=11)
        async with session.get(config_url) as response:
            assert orjson.loads(await response.read())["quota_exhausted"] is True


def test_serve_forever_prints_its_urls_and_stops_on_sigterm() -> None:
    code = "from pipeline.fake import serve_forever; serve_forever(port=0)"
    server = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = re.search(
            r"OPENAI_BASE_URL=(http://127\.0\.0\.1:\d+/v1) ANTHROPIC_BASE_URL=(\S+)", line
        )
        assert match, line
        with urllib.request.urlopen(f"{match.group(2)}/_fake/health", timeout=10) as response:
            assert response.status == 200
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for stream in (server.stdout, server.stderr):
            if stream is not None:
                stream.close()
