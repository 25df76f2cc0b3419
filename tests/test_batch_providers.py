"""The batch clients: wire format against httpx.MockTransport, then whole batches on the fake.

Unit tests pin each request's shape (checked against OpenAI's published schemas where there is
one, against the official Anthropic SDK's types otherwise) and how every answer maps onto
``BatchState`` / ``BatchLine``. Integration tests run the fake provider on loopback through the
production transport: submit, poll until ended (a bounded loop on the batch's state), collect,
and compare each answer with what the online endpoint gives for the same request.
"""

from __future__ import annotations

import email.parser
import email.policy
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from _openapi import openai_validator
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from pipeline.errors import (
    FatalProviderError,
    RowRejectedError,
    TransientError,
    UnreachableError,
)
from pipeline.fake import FakeConfig, FakeProvider, running_fake_provider
from pipeline.providers._base import iter_lines, make_transport
from pipeline.providers._batch import BatchLine, BatchPart, BatchProvider, BatchState
from pipeline.providers.anthropic import AnthropicProvider, messages_body
from pipeline.providers.anthropic_batch import AnthropicBatchProvider
from pipeline.providers.openai import OpenAIProvider, chat_body
from pipeline.providers.openai_batch import OpenAIBatchProvider
from pipeline.records import Request

KEY = "sk" + "-test-0123456789abcdefghijklmnop"
OPENAI_URL = "http://fake.test/v1"
ANTHROPIC_URL = "http://fake.test"

Handler = Callable[[httpx.Request], httpx.Response]


def make_request(key: str = "k" * 24, **overrides: Any) -> Request:
    fields: dict[str, Any] = dict(
        row_id=key,
        request_key=key,
        prompt_hash="p" * 16,
        provider="openai",
        model="gpt-4o-mini",
        system="Classify the sentiment of the review.",
        prompt="Review: great kettle",
        max_tokens=16,
        temperature=0.0,
        est_input_tokens=12,
    )
    fields.update(overrides)
    return Request(**fields)


def write_part(
    folder: Path, lines: Sequence[bytes], *, name: str = "part-00001.jsonl"
) -> BatchPart:
    path = folder / name
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(data)
    return BatchPart(index=1, path=path, count=len(lines), bytes=len(data))


def openai_provider(handler: Handler, **kwargs: Any) -> OpenAIBatchProvider:
    return OpenAIBatchProvider(
        httpx.MockTransport(handler), base_url=OPENAI_URL, api_key=KEY, **kwargs
    )


def anthropic_provider(handler: Handler, **kwargs: Any) -> AnthropicBatchProvider:
    return AnthropicBatchProvider(
        httpx.MockTransport(handler), base_url=ANTHROPIC_URL, api_key=KEY, **kwargs
    )


async def collect(provider: BatchProvider, state: BatchState) -> list[BatchLine]:
    async with aclosing(provider.results(state)) as lines:  # type: ignore[type-var]
        return [line async for line in lines]


def jsonl(items: Iterable[Any]) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


# -- OpenAI shapes ------------------------------------------------------------------------------


def openai_batch(status: str = "validating", **extra: Any) -> dict[str, Any]:
    """A ``batch`` object as OpenAI documents it (checked against the spec's ``Batch``)."""
    body: dict[str, Any] = {
        "id": "batch_1",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-in",
        "completion_window": "24h",
        "status": status,
        "created_at": 1_700_000_000,
        "expires_at": 1_700_086_400,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": {"job": "reviews"},
        **extra,
    }
    openai_validator("Batch").validate(body)
    return body


def chat_completion(text: str, **usage: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {"role": "assistant", "content": text, "refusal": None},
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12, **usage},
    }


def output_line(custom_id: str, status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": f"req_{custom_id}", "body": body},
        "error": None,
    }


def openai_error(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


# OpenAI's spec used to define the input line as ``BatchRequestInput`` (custom_id, method: POST,
# url); the copy in tests/specs no longer has it. When it is missing, the line is checked
# against that published definition (made stricter: every field required) and its body
# against the spec's ``CreateChatCompletionRequest``.
BATCH_REQUEST_INPUT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "custom_id": {"type": "string", "minLength": 1},
        "method": {"type": "string", "enum": ["POST"]},
        "url": {"type": "string", "enum": ["/v1/chat/completions"]},
        "body": {"type": "object"},
    },
    "required": ["custom_id", "method", "url", "body"],
    "additionalProperties": False,
}


def check_openai_input_line(line: dict[str, Any]) -> None:
    try:
        openai_validator("BatchRequestInput").validate(line)
    except KeyError:
        Draft202012Validator(BATCH_REQUEST_INPUT).validate(line)
    openai_validator("CreateChatCompletionRequest").validate(line["body"])


def multipart_fields(request: httpx.Request) -> dict[str, tuple[str | None, bytes]]:
    """``{name: (filename, bytes)}`` of a multipart/form-data body, read by the stdlib parser."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    assert message.is_multipart()
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(name, str) and isinstance(payload, bytes)
        fields[name] = (part.get_filename(), payload)
    return fields


class RecordingTransport(httpx.AsyncBaseTransport):
    """Reads each request body chunk by chunk, as a network transport would, and answers with
    ``answer``; keeps the requests and the size of every chunk sent."""

    def __init__(self, answer: Callable[[httpx.Request, bytes], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []
        self.chunks: list[list[int]] = []
        self.bodies: list[bytes] = []
        self.closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sizes: list[int] = []
        data = bytearray()
        assert isinstance(request.stream, httpx.AsyncByteStream)
        async for chunk in request.stream:
            sizes.append(len(chunk))
            data += chunk
        self.requests.append(request)
        self.chunks.append(sizes)
        self.bodies.append(bytes(data))
        return self.answer(request, bytes(data))

    async def aclose(self) -> None:
        self.closed = True


# -- OpenAI: requests ---------------------------------------------------------------------------


def test_openai_line_is_a_batch_request_input_around_the_online_body() -> None:
    provider = openai_provider(lambda r: httpx.Response(500))
    request = make_request(key="row-0001")
    raw = provider.line(request)
    assert not raw.endswith(b"\n")
    line = orjson.loads(raw)
    check_openai_input_line(line)
    assert line == {
        "custom_id": "row-0001",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": chat_body(request),
    }


@pytest.mark.anyio
@pytest.mark.parametrize("metadata", [{"job": "reviews", "part": "1"}, {}])
async def test_openai_submit_uploads_the_part_then_creates_a_batch_over_it(
    tmp_path: Path, metadata: dict[str, str]
) -> None:
    provider = openai_provider(lambda r: httpx.Response(500))
    part = write_part(tmp_path, [provider.line(make_request(key=f"row-{i}")) for i in range(3)])
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/files":
            return httpx.Response(
                200,
                json={
                    "id": "file-in",
                    "object": "file",
                    "bytes": part.bytes,
                    "created_at": 1,
                    "filename": "part-00001.jsonl",
                    "purpose": "batch",
                },
            )
        return httpx.Response(200, json=openai_batch())

    provider = openai_provider(handler)
    submitted = await provider.submit(part, metadata=metadata)
    assert (submitted.batch_id, submitted.input_file_id) == ("batch_1", "file-in")

    upload, create = seen
    assert (upload.method, str(upload.url)) == ("POST", f"{OPENAI_URL}/files")
    assert upload.headers["authorization"] == f"Bearer {KEY}"
    assert upload.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert int(upload.headers["content-length"]) == len(upload.content)
    fields = multipart_fields(upload)
    assert fields == {
        "purpose": (None, b"batch"),
        "file": ("part-00001.jsonl", part.path.read_bytes()),
    }

    assert (create.method, str(create.url)) == ("POST", f"{OPENAI_URL}/batches")
    assert create.headers["authorization"] == f"Bearer {KEY}"
    assert create.headers["content-type"] == "application/json"
    body = orjson.loads(create.content)
    openai_validator("CreateBatchRequest").validate(body)
    expected: dict[str, Any] = {
        "input_file_id": "file-in",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    if metadata:
        expected["metadata"] = metadata
    assert body == expected


@pytest.mark.anyio
async def test_openai_upload_streams_the_file_in_bounded_chunks_with_its_exact_length(
    tmp_path: Path,
) -> None:
    pad = "x" * 200
    lines = [orjson.dumps({"custom_id": f"r{i}", "body": {"pad": pad}}) for i in range(20_000)]
    part = write_part(tmp_path, lines, name="big part?.txt")  # ~4.5 MB, an awkward name

    def answer(request: httpx.Request, data: bytes) -> httpx.Response:
        if request.url.path.endswith("/files"):
            assert int(request.headers["content-length"]) == len(data)
            assert "transfer-encoding" not in request.headers
            return httpx.Response(200, json={"id": "file-big", "object": "file"})
        return httpx.Response(200, json=openai_batch())

    transport = RecordingTransport(answer)
    provider = OpenAIBatchProvider(transport, base_url=OPENAI_URL, api_key=KEY)
    await provider.submit(part, metadata={})
    upload_chunks = transport.chunks[0]
    assert part.bytes > 4 * 2**20
    assert len(upload_chunks) >= 5
    assert max(upload_chunks) <= 2**20  # never the whole file in one piece
    upload = httpx.Request(
        "POST", OPENAI_URL, headers=transport.requests[0].headers, content=transport.bodies[0]
    )
    assert multipart_fields(upload)["file"] == ("big_part_.txt.jsonl", part.path.read_bytes())


def upload_then(create: Handler, listing: Handler, seen: list[str]) -> Handler:
    """A handler that accepts the upload as ``file-in``, then answers create and list."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}?{request.url.query.decode()}")
        if request.url.path == "/v1/files":
            return httpx.Response(200, json={"id": "file-in", "object": "file"})
        if request.method == "POST":
            return create(request)
        return listing(request)

    return handler


def timed_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


@pytest.mark.anyio
async def test_openai_create_whose_answer_was_lost_finds_the_batch_it_made(
    tmp_path: Path,
) -> None:
    part = write_part(tmp_path, [b"{}"])
    now = int(time.time())
    listing = {
        "object": "list",
        "data": [
            openai_batch("in_progress", id="batch_other", input_file_id="file-o", created_at=now),
            openai_batch("validating", id="batch_made", input_file_id="file-in", created_at=now),
        ],
        "has_more": False,
    }
    seen: list[str] = []
    handler = upload_then(timed_out, lambda r: httpx.Response(200, json=listing), seen)
    submitted = await openai_provider(handler).submit(part, metadata={})
    assert (submitted.batch_id, submitted.input_file_id) == ("batch_made", "file-in")
    assert seen == ["POST /v1/files?", "POST /v1/batches?", "GET /v1/batches?limit=100"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "listing",
    [
        httpx.Response(200, json={"object": "list", "data": [], "has_more": False}),
        httpx.Response(500, json=openai_error("The server had an error", "server_error")),
        httpx.Response(200, content=b"<html>"),
    ],
)
async def test_openai_create_that_failed_unseen_raises_its_own_error(
    tmp_path: Path, listing: httpx.Response
) -> None:
    part = write_part(tmp_path, [b"{}"])
    seen: list[str] = []
    handler = upload_then(timed_out, lambda r: listing, seen)
    with pytest.raises(TransientError) as caught:
        await openai_provider(handler).submit(part, metadata={})
    assert caught.value.error_type == "timeout"
    assert seen[-1] == "GET /v1/batches?limit=100"


@pytest.mark.anyio
async def test_openai_create_refused_for_good_is_not_looked_for(tmp_path: Path) -> None:
    part = write_part(tmp_path, [b"{}"])
    seen: list[str] = []
    refused = httpx.Response(400, json=openai_error("Invalid 'metadata'", "invalid_request_error"))
    handler = upload_then(lambda r: refused, lambda r: httpx.Response(500), seen)
    with pytest.raises(RowRejectedError):
        await openai_provider(handler).submit(part, metadata={"k": "v"})
    assert seen == ["POST /v1/files?", "POST /v1/batches?"]


@pytest.mark.anyio
async def test_openai_part_over_the_limits_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    part = write_part(tmp_path, [b"{}"] * 3)
    with pytest.raises(RowRejectedError) as too_many:
        await openai_provider(handler, max_requests=2).submit(part, metadata={})
    with pytest.raises(RowRejectedError) as too_big:
        await openai_provider(handler, max_bytes=part.bytes - 1).submit(part, metadata={})
    assert too_many.value.error_type == too_big.value.error_type == "request_too_large"
    assert "at most 2 requests" in str(too_many.value)
    assert sent == []


# -- OpenAI: states -----------------------------------------------------------------------------

OPENAI_STATUSES = [
    # status, ended, failed
    ("validating", False, False),
    ("in_progress", False, False),
    ("finalizing", False, False),
    ("cancelling", False, False),
    ("completed", True, False),
    ("failed", True, True),
    ("expired", True, False),
    ("cancelled", True, False),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "ended", "failed"), OPENAI_STATUSES)
async def test_openai_poll_maps_every_status(status: str, ended: bool, failed: bool) -> None:
    seen: list[httpx.Request] = []
    counts = {"total": 5, "completed": 3, "failed": 1}
    files = {"output_file_id": "file-out", "error_file_id": "file-err"} if ended else {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=openai_batch(status, request_counts=counts, **files))

    state = await openai_provider(handler).poll("batch_1")
    assert (seen[0].method, str(seen[0].url)) == ("GET", f"{OPENAI_URL}/batches/batch_1")
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert (state.batch_id, state.status, state.ended, state.failed) == (
        "batch_1",
        status,
        ended,
        failed,
    )
    assert (state.total, state.succeeded, state.errored) == (5, 3, 1)
    assert dict(state.raw_counts) == counts
    assert (state.output_file_id, state.error_file_id) == (
        files.get("output_file_id"),
        files.get("error_file_id"),
    )
    assert state.errors == ()


@pytest.mark.anyio
async def test_openai_failed_validation_reports_each_bad_line_by_number() -> None:
    errors = {
        "object": "list",
        "data": [
            {
                "code": "invalid_json_line",
                "message": "This line is not parseable as valid JSON.",
                "param": None,
                "line": 2,
            },
            {
                "code": "duplicate_custom_id",
                "message": "The custom_id for this request is a duplicate of another request.",
                "param": "custom_id",
                "line": 4,
            },
            {"code": "empty_file", "message": "The batch input file is empty.", "line": None},
        ],
    }
    body = openai_batch("failed", errors=errors, failed_at=1_700_000_001)
    state = await openai_provider(lambda r: httpx.Response(200, json=body)).poll("batch_1")
    assert state.ended and state.failed
    assert [(e.line, e.code) for e in state.errors] == [
        (2, "invalid_json_line"),
        (4, "duplicate_custom_id"),
        (None, "empty_file"),
    ]
    assert state.errors[1].message.startswith("The custom_id for this request is a duplicate")
    assert await collect(openai_provider(lambda r: httpx.Response(500)), state) == []


@pytest.mark.anyio
async def test_openai_cancel_posts_to_the_batch_and_returns_its_state() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=openai_batch("cancelling", cancelling_at=1_700_000_002))

    state = await openai_provider(handler).cancel("batch_1")
    assert (seen[0].method, str(seen[0].url)) == ("POST", f"{OPENAI_URL}/batches/batch_1/cancel")
    assert (state.status, state.ended) == ("cancelling", False)


@pytest.mark.anyio
async def test_openai_answer_that_is_not_a_batch_is_transient() -> None:
    provider = openai_provider(lambda r: httpx.Response(200, json={"object": "batch"}))
    with pytest.raises(TransientError, match="lacks 'id'") as caught:
        await provider.poll("batch_1")
    assert caught.value.error_type == "bad_response"


# -- OpenAI: results ----------------------------------------------------------------------------


def ended_openai(
    output_file_id: str | None = "file-out", error_file_id: str | None = "file-err"
) -> BatchState:
    return BatchState(
        batch_id="batch_1",
        status="completed",
        ended=True,
        output_file_id=output_file_id,
        error_file_id=error_file_id,
    )


@pytest.mark.anyio
async def test_openai_results_read_the_output_then_the_error_file_and_map_each_line() -> None:
    usage = {
        "prompt_tokens": 1300,
        "completion_tokens": 20,
        "total_tokens": 1320,
        "prompt_tokens_details": {"cached_tokens": 1152, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }
    output = jsonl(
        [
            output_line("ok-1", 200, chat_completion("positive", **usage)),
            output_line("ok-2", 200, chat_completion("negative")),
        ]
    )
    output = output.replace(b"\n", b"\n\n", 1)  # a blank line is skipped
    errors = jsonl(
        [
            output_line(
                "limited",
                429,
                openai_error("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
            ),
            output_line(
                "bad",
                400,
                openai_error("Invalid value: 'hot' for temperature.", "invalid_request_error"),
            ),
            output_line("broken", 500, openai_error("The server had an error", "server_error")),
            {
                "id": "batch_req_x",
                "custom_id": "late",
                "response": None,
                "error": {
                    "code": "batch_expired",
                    "message": "This request could not be executed before the completion "
                    "window expired.",
                },
            },
        ]
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        files = {"/v1/files/file-out/content": output, "/v1/files/file-err/content": errors}
        return httpx.Response(200, content=files[request.url.path])

    lines = await collect(openai_provider(handler), ended_openai())
    assert [(r.method, r.url.path) for r in seen] == [
        ("GET", "/v1/files/file-out/content"),
        ("GET", "/v1/files/file-err/content"),
    ]
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in seen)
    by_id = {line.custom_id: line for line in lines}
    assert list(by_id) == ["ok-1", "ok-2", "limited", "bad", "broken", "late"]

    reply = by_id["ok-1"].reply
    assert reply is not None and by_id["ok-1"].error_type is None
    assert (reply.text, reply.finish_reason, reply.request_id) == ("positive", "stop", "req_ok-1")
    # Normalised exactly as online: cached tokens are part of input, reasoning part of output.
    u = reply.usage
    assert (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens) == (1300, 1152, 0)
    assert (u.output_tokens, u.reasoning_tokens) == (20, 12)
    assert by_id["ok-2"].reply is not None and by_id["ok-2"].reply.text == "negative"

    failures = {
        key: (line.error_type, line.error) for key, line in by_id.items() if line.reply is None
    }
    assert failures == {
        "limited": ("rate_limited", "openai HTTP 429: Rate limit reached for requests"),
        "bad": ("invalid_request", "openai HTTP 400: Invalid value: 'hot' for temperature."),
        "broken": ("server_error", "openai HTTP 500: The server had an error"),
        "late": (
            "expired",
            "openai: This request could not be executed before the completion window expired.",
        ),
    }


@pytest.mark.anyio
async def test_openai_results_skip_a_file_the_batch_does_not_have() -> None:
    line = jsonl([output_line("only", 200, chat_completion("neutral"))])
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, content=line)

    provider = openai_provider(handler)
    assert [x.custom_id for x in await collect(provider, ended_openai(error_file_id=None))] == [
        "only"
    ]
    assert [x.custom_id for x in await collect(provider, ended_openai(output_file_id=None))] == [
        "only"
    ]
    assert seen == ["/v1/files/file-out/content", "/v1/files/file-err/content"]
    with pytest.raises(ValueError, match="has not ended"):
        await collect(provider, BatchState(batch_id="b", status="in_progress", ended=False))


class ChunkStream(httpx.AsyncByteStream):
    """A response body that arrives in the given chunks; counts how many were read."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        self.chunks = chunks
        self.read = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.anyio
async def test_openai_results_stream_line_by_line_as_the_file_arrives() -> None:
    data = jsonl(output_line(f"r{i}", 200, chat_completion(f"answer {i}")) for i in range(50))
    chunks = [data[i : i + 100] for i in range(0, len(data), 100)]  # lines cut mid-way
    stream = ChunkStream(chunks)
    provider = openai_provider(lambda r: httpx.Response(200, stream=stream))

    async with aclosing(provider.results(ended_openai(error_file_id=None))) as results:
        first = await anext(results)
        assert first.custom_id == "r0"
        assert stream.read < len(chunks) / 10  # only what the first line needed was read
        rest = [line async for line in results]
    assert [line.custom_id for line in rest] == [f"r{i}" for i in range(1, 50)]
    assert [line.reply.text for line in rest if line.reply] == [f"answer {i}" for i in range(1, 50)]
    assert stream.closed


@pytest.mark.anyio
async def test_openai_results_stopped_early_release_the_response() -> None:
    data = jsonl(output_line(f"r{i}", 200, chat_completion("x")) for i in range(10))
    stream = ChunkStream([data[i : i + 50] for i in range(0, len(data), 50)])
    provider = openai_provider(lambda r: httpx.Response(200, stream=stream))
    async with aclosing(provider.results(ended_openai(error_file_id=None))) as results:
        await anext(results)
    assert stream.closed


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (b'{"custom_id": "r2", "response": {"status_code": 200, "bo', "not valid JSON"),
        (b'["not", "an", "object"]', "no custom_id"),
        (b'{"custom_id": "r2", "response": null, "error": null}', "neither a response"),
        (b'{"custom_id": "r2", "response": {"body": {}}}', "without a status_code"),
    ],
)
async def test_openai_unreadable_result_line_is_transient_naming_file_and_line(
    bad: bytes, why: str
) -> None:
    good = orjson.dumps(output_line("r1", 200, chat_completion("x")))
    data = good + b"\n" + bad + b"\n" + good + b"\n"
    provider = openai_provider(lambda r: httpx.Response(200, content=data))
    seen: list[str] = []
    with pytest.raises(TransientError) as caught:
        async with aclosing(provider.results(ended_openai(error_file_id=None))) as results:
            async for line in results:
                seen.append(line.custom_id)
    assert seen == ["r1"]
    message = str(caught.value)
    assert "line 2 of batch file file-out" in message and why in message
    assert caught.value.error_type == "bad_response"


@pytest.mark.anyio
async def test_openai_200_line_that_is_not_a_chat_completion_fails_only_its_row() -> None:
    data = jsonl(
        [
            output_line("odd", 200, {"object": "chat.completion", "choices": []}),
            output_line("fine", 200, chat_completion("positive")),
        ]
    )
    provider = openai_provider(lambda r: httpx.Response(200, content=data))
    odd, fine = await collect(provider, ended_openai(error_file_id=None))
    assert (odd.custom_id, odd.reply, odd.error_type) == ("odd", None, "bad_response")
    assert odd.error is not None and "line 1 of file file-out" in odd.error
    assert fine.reply is not None and fine.reply.text == "positive"


# -- OpenAI: failures ---------------------------------------------------------------------------


async def call_each(provider: BatchProvider, part: BatchPart, operation: str) -> object:
    if operation == "submit":
        return await provider.submit(part, metadata={})
    if operation == "poll":
        return await provider.poll("batch_1")
    if operation == "cancel":
        return await provider.cancel("batch_1")
    ended = BatchState(batch_id="batch_1", status="ended", ended=True, output_file_id="file-out")
    return await collect(provider, ended)


OPERATIONS = ["submit", "poll", "results", "cancel"]


@pytest.mark.anyio
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_openai_401_is_fatal_and_never_shows_the_key(tmp_path: Path, operation: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            401,
            json=openai_error(
                f"Incorrect API key provided: {KEY}. You can find your API key at ...",
                "invalid_request_error",
                "invalid_api_key",
            ),
        )

    part = write_part(tmp_path, [b"{}"])
    with pytest.raises(FatalProviderError) as caught:
        await call_each(openai_provider(handler), part, operation)
    assert caught.value.status_code == 401 and caught.value.error_type == "auth_failed"
    assert KEY not in str(caught.value) and "sk-test" not in str(caught.value)
    assert "OPENAI_API_KEY" in str(caught.value)


@pytest.mark.anyio
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_openai_errors_go_through_the_online_classification(
    tmp_path: Path, operation: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429,
            json=openai_error(
                "You exceeded your current quota", "insufficient_quota", "insufficient_quota"
            ),
        )

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    def dropped(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset by peer")

    part = write_part(tmp_path, [b"{}"])
    with pytest.raises(FatalProviderError) as quota:
        await call_each(openai_provider(handler), part, operation)
    assert quota.value.error_type == "insufficient_quota"
    with pytest.raises(UnreachableError) as unreachable:
        await call_each(openai_provider(refused), part, operation)
    assert unreachable.value.transient
    assert "cannot connect to http://" in str(unreachable.value)
    with pytest.raises(TransientError) as network:
        await call_each(openai_provider(dropped), part, operation)
    assert network.value.error_type == "connection_error"


@pytest.mark.anyio
async def test_aclose_closes_the_transport() -> None:
    for cls in (OpenAIBatchProvider, AnthropicBatchProvider):
        transport = RecordingTransport(lambda r, d: httpx.Response(500))
        await cls(transport, base_url="http://x", api_key=KEY).aclose()
        assert transport.closed


@given(
    st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b)),
    st.booleans(),
    st.booleans(),
    st.lists(st.integers(min_value=1, max_value=17), min_size=1),
)
def test_iter_lines_gives_the_same_lines_however_the_bytes_are_cut(
    lines: list[bytes], crlf: bool, final_newline: bool, cuts: list[int]
) -> None:
    end = b"\r\n" if crlf else b"\n"
    data = end.join(lines) + (end if final_newline and lines else b"")
    chunks: list[bytes] = []
    position, index = 0, 0
    while position < len(data):
        size = cuts[index % len(cuts)]
        chunks.append(data[position : position + size])
        position += size
        index += 1

    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def run() -> list[bytes]:
        return [line async for line in iter_lines(source())]

    pieces = data.split(end)
    expected = pieces[:-1] if pieces[-1] == b"" else pieces  # text after the last newline
    assert anyio.run(run) == expected


# -- Anthropic shapes ---------------------------------------------------------------------------

COUNTS_ZERO = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}


def message_batch(status: str = "in_progress", **extra: Any) -> dict[str, Any]:
    """A ``message_batch`` object (checked with the official SDK's ``MessageBatch``)."""
    ended = status == "ended"
    body: dict[str, Any] = {
        "id": "msgbatch_1",
        "type": "message_batch",
        "processing_status": status,
        "request_counts": {**COUNTS_ZERO, "processing": 0 if ended else 4},
        "created_at": "2025-01-01T00:00:00.000000Z",
        "expires_at": "2025-01-02T00:00:00.000000Z",
        "ended_at": "2025-01-01T00:10:00.000000Z" if ended else None,
        "cancel_initiated_at": None,
        "archived_at": None,
        "results_url": f"{ANTHROPIC_URL}/v1/messages/batches/msgbatch_1/results" if ended else None,
        **extra,
    }
    MessageBatch.model_validate(body)
    return body


def message(text: str, **usage: Any) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 2, **usage},
    }


def result(custom_id: str, kind: str, **fields: Any) -> dict[str, Any]:
    line = {"custom_id": custom_id, "result": {"type": kind, **fields}}
    MessageBatchIndividualResponse.model_validate(line)
    return line


def errored(custom_id: str, error_type: str, text: str) -> dict[str, Any]:
    error = {"type": "error", "error": {"type": error_type, "message": text}, "request_id": None}
    return result(custom_id, "errored", error=error)


def ended_anthropic(results_url: str | None = None) -> BatchState:
    return BatchState(batch_id="msgbatch_1", status="ended", ended=True, output_file_id=results_url)


# -- Anthropic: requests ------------------------------------------------------------------------


def test_anthropic_line_is_the_custom_id_and_the_online_params() -> None:
    provider = anthropic_provider(lambda r: httpx.Response(500))
    request = make_request(key="row-0001", provider="anthropic", model="claude-haiku-4-5")
    raw = provider.line(request)
    assert not raw.endswith(b"\n")
    assert orjson.loads(raw) == {"custom_id": "row-0001", "params": messages_body(request)}


@pytest.mark.anyio
async def test_anthropic_submit_streams_the_part_file_as_the_requests_array(
    tmp_path: Path,
) -> None:
    provider = anthropic_provider(lambda r: httpx.Response(500))
    pad = "y" * 300
    requests = [
        make_request(key=f"row-{i}", provider="anthropic", model="claude-haiku-4-5", prompt=pad)
        for i in range(8_000)
    ]
    lines = [provider.line(request) for request in requests]
    part = write_part(tmp_path, lines)
    # CRLF line ends, blank lines and a missing last newline are all tolerated.
    part.path.write_bytes(b"\r\n".join(lines[:3]) + b"\r\n\n  \n" + b"\n".join(lines[3:]))

    def answer(request: httpx.Request, data: bytes) -> httpx.Response:
        return httpx.Response(200, json=message_batch())

    transport = RecordingTransport(answer)
    provider = AnthropicBatchProvider(transport, base_url=ANTHROPIC_URL, api_key=KEY)
    submitted = await provider.submit(part, metadata={"job": "ignored: the API has none"})
    assert (submitted.batch_id, submitted.input_file_id) == ("msgbatch_1", None)

    (sent,) = transport.requests
    assert (sent.method, str(sent.url)) == ("POST", f"{ANTHROPIC_URL}/v1/messages/batches")
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    body = orjson.loads(transport.bodies[0])
    assert body == {"requests": [orjson.loads(line) for line in lines]}
    chunks = transport.chunks[0]
    assert len(transport.bodies[0]) > 2 * 2**20
    assert len(chunks) >= 3 and max(chunks) <= 2 * 2**20  # streamed, never whole


@pytest.mark.anyio
async def test_anthropic_part_over_the_limits_is_refused_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    part = write_part(tmp_path, [b"{}"] * 3)
    with pytest.raises(RowRejectedError) as too_many:
        await anthropic_provider(handler, max_requests=2).submit(part, metadata={})
    with pytest.raises(RowRejectedError) as too_big:
        await anthropic_provider(handler, max_bytes=part.bytes - 1).submit(part, metadata={})
    assert too_many.value.error_type == too_big.value.error_type == "request_too_large"
    assert sent == []


# -- Anthropic: states --------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "ended"), [("in_progress", False), ("canceling", False), ("ended", True)]
)
async def test_anthropic_poll_maps_every_processing_status(status: str, ended: bool) -> None:
    counts = (
        {"processing": 0, "succeeded": 5, "errored": 1, "canceled": 2, "expired": 3}
        if ended
        else {**COUNTS_ZERO, "processing": 11}
    )
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=message_batch(status, request_counts=counts))

    state = await anthropic_provider(handler).poll("msgbatch_1")
    assert (seen[0].method, str(seen[0].url)) == (
        "GET",
        f"{ANTHROPIC_URL}/v1/messages/batches/msgbatch_1",
    )
    assert seen[0].headers["x-api-key"] == KEY
    assert seen[0].headers["anthropic-version"] == "2023-06-01"
    assert (state.batch_id, state.status, state.ended, state.failed) == (
        "msgbatch_1",
        status,
        ended,
        False,
    )
    assert state.total == 11
    assert (state.succeeded, state.errored) == ((5, 6) if ended else (0, 0))
    assert dict(state.raw_counts) == counts
    expected_url = f"{ANTHROPIC_URL}/v1/messages/batches/msgbatch_1/results" if ended else None
    assert state.output_file_id == expected_url
    assert state.error_file_id is None and state.errors == ()


@pytest.mark.anyio
async def test_anthropic_cancel_posts_to_the_batch_and_returns_its_state() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        body = message_batch("canceling", cancel_initiated_at="2025-01-01T00:01:00.000000Z")
        return httpx.Response(200, json=body)

    state = await anthropic_provider(handler).cancel("msgbatch_1")
    assert (seen[0].method, seen[0].url.path) == (
        "POST",
        "/v1/messages/batches/msgbatch_1/cancel",
    )
    assert (state.status, state.ended) == ("canceling", False)


# -- Anthropic: results -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_anthropic_results_map_every_result_type() -> None:
    usage = {
        "input_tokens": 50,
        "cache_creation_input_tokens": 1100,
        "cache_read_input_tokens": 2048,
        "output_tokens": 7,
        "service_tier": "batch",
    }
    data = jsonl(
        [
            result("ok", "succeeded", message=message("positive", **usage)),
            errored("bad", "invalid_request_error", "max_tokens: Field required"),
            errored("busy", "overloaded_error", "Overloaded"),
            errored("broke", "api_error", "Internal server error"),
            errored("poor", "invalid_request_error", "Your credit balance is too low"),
            result("stopped", "canceled"),
            result("late", "expired"),
        ]
    )
    provider = anthropic_provider(lambda r: httpx.Response(200, content=data))
    lines = await collect(provider, ended_anthropic())
    by_id = {line.custom_id: line for line in lines}
    assert list(by_id) == ["ok", "bad", "busy", "broke", "poor", "stopped", "late"]

    reply = by_id["ok"].reply
    assert reply is not None and by_id["ok"].error_type is None
    assert (reply.text, reply.finish_reason) == ("positive", "end_turn")
    # Normalised exactly as online: input counts uncached, cache-write and cache-read tokens.
    u = reply.usage
    assert (u.input_tokens, u.cache_write_tokens, u.cache_read_tokens) == (3198, 1100, 2048)
    assert (u.output_tokens, u.reasoning_tokens) == (7, 0)

    failures = {
        key: (line.error_type, line.error) for key, line in by_id.items() if line.reply is None
    }
    assert failures == {
        "bad": ("invalid_request", "anthropic invalid_request_error: max_tokens: Field required"),
        "busy": ("overloaded", "anthropic overloaded_error: Overloaded"),
        "broke": ("server_error", "anthropic api_error: Internal server error"),
        "poor": (
            "insufficient_quota",
            "anthropic invalid_request_error: quota exhausted: Your credit balance is too low",
        ),
        "stopped": (
            "canceled",
            "anthropic: the batch was canceled before this request was processed",
        ),
        "late": ("expired", "anthropic: the batch expired before this request was processed"),
    }


@pytest.mark.anyio
async def test_anthropic_results_follow_results_url_on_the_apis_own_origin() -> None:
    seen: list[str] = []
    data = jsonl([result("ok", "succeeded", message=message("x"))])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        assert request.headers["x-api-key"] == KEY
        return httpx.Response(200, content=data)

    provider = anthropic_provider(handler)
    given = f"{ANTHROPIC_URL}/v1/messages/batches/msgbatch_1/results?page=1"
    default = f"{ANTHROPIC_URL}/v1/messages/batches/msgbatch_1/results"
    for results_url in (given, None, "https://api.anthropic.com/v1/messages/batches/x/results"):
        assert len(await collect(provider, ended_anthropic(results_url))) == 1
    # A results_url elsewhere (behind a gateway: the API's own host) is not followed: the
    # configured base_url is asked, and the key never leaves it.
    assert seen == [given, default, default]
    with pytest.raises(ValueError, match="has not ended"):
        await collect(provider, BatchState(batch_id="b", status="in_progress", ended=False))


@pytest.mark.anyio
async def test_anthropic_results_follow_redirects_without_taking_the_key_elsewhere() -> None:
    data = jsonl([result("ok", "succeeded", message=message("x"))])
    seen: list[httpx.Request] = []
    moves = {
        "/v1/messages/batches/msgbatch_1/results": f"{ANTHROPIC_URL}/moved/results",
        "/moved/results": "http://storage.test/signed/results?sig=abc",
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path in moves:
            return httpx.Response(302, headers={"location": moves[request.url.path]})
        return httpx.Response(200, content=data)

    lines = await collect(anthropic_provider(handler), ended_anthropic())
    assert [line.custom_id for line in lines] == ["ok"]
    assert [str(r.url) for r in seen] == [
        f"{ANTHROPIC_URL}/v1/messages/batches/msgbatch_1/results",
        f"{ANTHROPIC_URL}/moved/results",
        "http://storage.test/signed/results?sig=abc",
    ]
    assert [r.headers.get("x-api-key") for r in seen] == [KEY, KEY, None]
    assert all(r.headers["accept"] == "application/binary" for r in seen)


@pytest.mark.anyio
async def test_a_redirect_loop_is_a_transient_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"location": str(request.url)})

    with pytest.raises(TransientError, match="more than 5 redirects"):
        await collect(anthropic_provider(handler), ended_anthropic())
    with pytest.raises(TransientError, match="more than 5 redirects"):
        await collect(openai_provider(handler), ended_openai())


@pytest.mark.anyio
async def test_anthropic_results_stream_line_by_line_as_they_arrive() -> None:
    data = jsonl(result(f"r{i}", "succeeded", message=message(f"answer {i}")) for i in range(50))
    chunks = [data[i : i + 100] for i in range(0, len(data), 100)]
    stream = ChunkStream(chunks)
    provider = anthropic_provider(lambda r: httpx.Response(200, stream=stream))
    async with aclosing(provider.results(ended_anthropic())) as results:
        first = await anext(results)
        assert first.custom_id == "r0"
        assert stream.read < len(chunks) / 10
        rest = [line async for line in results]
    assert [line.reply.text for line in rest if line.reply] == [f"answer {i}" for i in range(1, 50)]
    assert stream.closed


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (b'{"custom_id": "r2", "result": {"type": "succ', "not valid JSON"),
        (b'{"result": {"type": "canceled"}}', "no custom_id"),
        (b'{"custom_id": "r2", "result": null}', "no result type"),
    ],
)
async def test_anthropic_unreadable_result_line_is_transient_naming_batch_and_line(
    bad: bytes, why: str
) -> None:
    good = orjson.dumps(result("r1", "expired"))
    data = good + b"\n" + bad + b"\n" + good + b"\n"
    provider = anthropic_provider(lambda r: httpx.Response(200, content=data))
    with pytest.raises(TransientError) as caught:
        await collect(provider, ended_anthropic())
    message_text = str(caught.value)
    assert "line 2 of the results of batch msgbatch_1" in message_text and why in message_text
    assert caught.value.error_type == "bad_response"


@pytest.mark.anyio
async def test_anthropic_succeeded_line_without_a_message_fails_only_its_row() -> None:
    data = jsonl(
        [
            {"custom_id": "odd", "result": {"type": "succeeded", "message": {"content": []}}},
            result("fine", "succeeded", message=message("positive")),
        ]
    )
    provider = anthropic_provider(lambda r: httpx.Response(200, content=data))
    odd, fine = await collect(provider, ended_anthropic())
    assert (odd.custom_id, odd.reply, odd.error_type) == ("odd", None, "bad_response")
    assert odd.error is not None and "line 1 of the results of batch msgbatch_1" in odd.error
    assert fine.reply is not None and fine.reply.text == "positive"


@pytest.mark.anyio
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_anthropic_401_is_fatal_and_never_shows_the_key(
    tmp_path: Path, operation: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {
            "type": "error",
            "error": {"type": "authentication_error", "message": f"invalid x-api-key {KEY}"},
            "request_id": "req_1",
        }
        return httpx.Response(401, json=body)

    part = write_part(tmp_path, [b"{}"])
    with pytest.raises(FatalProviderError) as caught:
        await call_each(anthropic_provider(handler), part, operation)
    assert caught.value.status_code == 401 and caught.value.error_type == "auth_failed"
    assert KEY not in str(caught.value) and "sk-test" not in str(caught.value)
    assert "ANTHROPIC_API_KEY" in str(caught.value)


@pytest.mark.anyio
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_anthropic_errors_go_through_the_online_classification(
    tmp_path: Path, operation: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
            "request_id": "req_1",
        }
        return httpx.Response(529, json=body, headers={"retry-after": "3"})

    part = write_part(tmp_path, [b"{}"])
    with pytest.raises(TransientError) as caught:
        await call_each(anthropic_provider(handler), part, operation)
    assert (caught.value.error_type, caught.value.retry_after) == ("overloaded", 3.0)


# -- against the fake provider ------------------------------------------------------------------
# Each test runs its own fake on 127.0.0.1 (port 0) with phase times of a few hundredths of a
# second, and talks to it through the production (aiohttp) transport.

FAST = {
    "batch_validating_s": 0.02,
    "batch_in_progress_s": 0.05,
    "batch_finalizing_s": 0.02,
    "batch_cancelling_s": 0.02,
}
REVIEWS = [
    "Great blender, I love it and would recommend it to anyone.",
    "Terrible. It arrived broken and support was awful; I want a refund.",
    "It is a blender. It blends.",
    "Amazing price, perfect size, happy with it.",
    "The worst purchase I made this year, poor quality.",
    "Delivered on Tuesday in a brown box.",
]
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}


def review_requests(provider: str, count: int = len(REVIEWS), **overrides: Any) -> list[Request]:
    return [
        make_request(
            key=f"row-{i:04d}",
            provider=provider,
            model=MODELS[provider],
            prompt=f"Review: {REVIEWS[i % len(REVIEWS)]}",
            **overrides,
        )
        for i in range(count)
    ]


@asynccontextmanager
async def on_fake(
    api: str, **knobs: Any
) -> AsyncIterator[tuple[FakeProvider, BatchProvider, OpenAIProvider | AnthropicProvider]]:
    """A fake provider with ``knobs``, and the batch and online clients of ``api`` on it."""
    async with running_fake_provider(FakeConfig(**{**FAST, **knobs})) as fake:
        batch: BatchProvider
        online: OpenAIProvider | AnthropicProvider
        if api == "openai":
            base_url = fake.openai_base_url
            batch = OpenAIBatchProvider(make_transport(), base_url=base_url, api_key=KEY)
            online = OpenAIProvider(make_transport(), base_url=base_url, api_key=KEY)
        else:
            base_url = fake.anthropic_base_url
            batch = AnthropicBatchProvider(make_transport(), base_url=base_url, api_key=KEY)
            online = AnthropicProvider(make_transport(), base_url=base_url, api_key=KEY)
        try:
            yield fake, batch, online
        finally:
            await batch.aclose()
            await online.aclose()


async def wait_for(
    provider: BatchProvider,
    batch_id: str,
    done: Callable[[BatchState], bool] = lambda state: state.ended,
    seen: list[str] | None = None,
) -> BatchState:
    """Poll until ``done(state)`` (at most 10 s), noting each status seen."""
    with anyio.fail_after(10):
        while True:
            state = await provider.poll(batch_id)
            if seen is not None and (not seen or seen[-1] != state.status):
                seen.append(state.status)
            if done(state):
                return state
            await anyio.sleep(0.005)


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (at most 10 s), looking every few milliseconds."""
    with anyio.fail_after(10):
        while True:
            if condition():
                return
            await anyio.sleep(0.005)


async def run_batch(
    provider: BatchProvider, folder: Path, requests: Sequence[Request], **kwargs: Any
) -> tuple[BatchState, dict[str, BatchLine]]:
    """Submit ``requests`` as one part, wait for the batch to end, collect its lines."""
    part = write_part(folder, [provider.line(request) for request in requests])
    submitted = await provider.submit(part, metadata={"job": "reviews", "part": "1"})
    state = await wait_for(provider, submitted.batch_id, **kwargs)
    lines = await collect(provider, state)
    by_id = {line.custom_id: line for line in lines}
    assert len(by_id) == len(lines), "a custom_id came back twice"
    return state, by_id


@pytest.mark.anyio
@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_batch_round_trip_gives_exactly_the_online_answers(
    tmp_path: Path, api: str
) -> None:
    requests = review_requests(api)
    requests[3] = make_request(
        key="row-cut", provider=api, model=MODELS[api], prompt="Review: fine", max_tokens=1
    )
    async with on_fake(api) as (fake, batch, online):
        seen: list[str] = []
        state, lines = await run_batch(batch, tmp_path, requests, seen=seen)
        paid = fake.batch_accounting()
        base_url = fake.anthropic_base_url
        expected = {request.request_key: await online.send(request) for request in requests}

    assert state.ended and not state.failed
    assert seen[-1] == ("completed" if api == "openai" else "ended")
    assert (state.total, state.succeeded, state.errored) == (len(requests), len(requests), 0)
    assert sorted(lines) == sorted(expected)
    for key, answer in expected.items():
        line = lines[key]
        assert line.error_type is None and line.reply is not None, line
        got = line.reply
        assert (got.text, got.finish_reason, got.usage) == (
            answer.text,
            answer.finish_reason,
            answer.usage,
        )
    assert lines["row-cut"].reply is not None
    assert lines["row-cut"].reply.finish_reason in ("length", "max_tokens")
    if api == "anthropic":  # the results came from the results_url the fake gave
        assert state.output_file_id == f"{base_url}/v1/messages/batches/{state.batch_id}/results"
    assert paid["batches_created"][api] == 1
    assert paid["lines_paid"][api] == len(requests)
    assert paid["files_uploaded"] == (1 if api == "openai" else 0)


@pytest.mark.anyio
async def test_openai_batch_keeps_the_metadata_given_at_submit(tmp_path: Path) -> None:
    async with on_fake("openai") as (fake, batch, _online):
        part = write_part(tmp_path, [batch.line(r) for r in review_requests("openai", 2)])
        submitted = await batch.submit(part, metadata={"job": "reviews", "part": "7"})
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {KEY}"}) as client:
            url = f"{fake.openai_base_url}/batches/{submitted.batch_id}"
            raw = (await client.get(url)).json()
            uploaded = await client.get(f"{fake.openai_base_url}/files/{raw['input_file_id']}")
    assert raw["metadata"] == {"job": "reviews", "part": "7"}
    assert raw["input_file_id"] == submitted.input_file_id
    assert uploaded.json()["bytes"] == part.bytes
    assert uploaded.json()["filename"] == "part-00001.jsonl"


@pytest.mark.anyio
async def test_openai_cancel_keeps_the_lines_answered_before_it(tmp_path: Path) -> None:
    requests = review_requests("openai", 30)
    async with on_fake("openai", batch_in_progress_s=3.0) as (_fake, batch, _online):
        part = write_part(tmp_path, [batch.line(request) for request in requests])
        submitted = await batch.submit(part, metadata={})
        await wait_for(batch, submitted.batch_id, lambda state: state.succeeded >= 2)
        cancelling = await batch.cancel(submitted.batch_id)
        state = await wait_for(batch, submitted.batch_id)
        lines = await collect(batch, state)
    assert cancelling.status in ("cancelling", "cancelled")
    assert (state.status, state.ended, state.failed) == ("cancelled", True, False)
    assert 2 <= state.succeeded < len(requests)
    assert len(lines) == state.succeeded
    assert all(line.reply is not None for line in lines)
    assert {line.custom_id for line in lines} < {request.request_key for request in requests}


@pytest.mark.anyio
async def test_anthropic_cancel_marks_the_unanswered_requests_canceled(tmp_path: Path) -> None:
    requests = review_requests("anthropic", 30)
    async with on_fake("anthropic", batch_in_progress_s=3.0) as (fake, batch, _online):
        part = write_part(tmp_path, [batch.line(request) for request in requests])
        submitted = await batch.submit(part, metadata={})
        await until(lambda: fake.batch_accounting()["lines_paid"]["anthropic"] >= 2)
        cancelling = await batch.cancel(submitted.batch_id)
        state = await wait_for(batch, submitted.batch_id)
        lines = await collect(batch, state)
    assert cancelling.status in ("canceling", "ended")
    assert (state.status, state.ended) == ("ended", True)
    assert sorted(line.custom_id for line in lines) == [r.request_key for r in requests]
    answered = [line for line in lines if line.reply is not None]
    canceled = [line for line in lines if line.error_type == "canceled"]
    assert len(answered) + len(canceled) == len(requests)
    assert len(answered) >= 2 and canceled
    assert state.raw_counts["canceled"] == len(canceled)
    assert state.succeeded == len(answered)


@pytest.mark.anyio
@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_an_expired_batch_gives_its_finished_lines_and_the_rest_expired(
    tmp_path: Path, api: str
) -> None:
    requests = review_requests(api, 6)
    async with on_fake(api, batch_expire_after=0.5) as (_fake, batch, online):
        state, lines = await run_batch(batch, tmp_path, requests)
        expected = {r.request_key: await online.send(r) for r in requests}
    assert state.status == ("expired" if api == "openai" else "ended")
    assert state.ended and not state.failed
    assert sorted(lines) == sorted(expected)  # every request is accounted for
    answered = {key: line.reply for key, line in lines.items() if line.reply is not None}
    expired = [line for line in lines.values() if line.error_type == "expired"]
    assert len(answered) == 3 and len(expired) == 3
    assert all(line.error and "expire" in line.error for line in expired)
    for key, reply in answered.items():
        assert (reply.text, reply.usage) == (expected[key].text, expected[key].usage)
    assert state.succeeded == 3
    if api == "anthropic":
        assert state.raw_counts["expired"] == 3


@pytest.mark.anyio
async def test_openai_failed_validation_names_each_bad_line(tmp_path: Path) -> None:
    requests = review_requests("openai", 4)
    requests[2] = requests[0]  # line 3 repeats line 1's custom_id
    requests[3] = make_request(key="row-other", model="gpt-4o")  # line 4: another model
    async with on_fake("openai") as (_fake, batch, _online):
        state, lines = await run_batch(batch, tmp_path, requests)
    assert (state.status, state.ended, state.failed) == ("failed", True, True)
    assert [(error.line, error.code) for error in state.errors] == [
        (3, "duplicate_custom_id"),
        (4, "model_mismatch"),
    ]
    assert lines == {}


@pytest.mark.anyio
async def test_fail_validation_knob_fails_the_openai_batch_and_refuses_the_anthropic_one(
    tmp_path: Path,
) -> None:
    async with on_fake("openai", batch_fail_validation=True) as (_fake, batch, _online):
        state, lines = await run_batch(batch, tmp_path, review_requests("openai", 2))
    assert state.failed and state.errors and lines == {}
    assert state.errors[0].code == "invalid_request"
    async with on_fake("anthropic", batch_fail_validation=True) as (_fake, batch, _online):
        part = write_part(tmp_path, [batch.line(r) for r in review_requests("anthropic", 2)])
        with pytest.raises(RowRejectedError) as refused:
            await batch.submit(part, metadata={})
    assert (refused.value.status_code, refused.value.error_type) == (400, "invalid_request")


@pytest.mark.anyio
@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_batch_lines_fail_as_the_same_requests_fail_online(tmp_path: Path, api: str) -> None:
    good = review_requests(api, 3)
    bad = make_request(key="row-bad", provider=api, model=MODELS[api], max_tokens=0)
    async with on_fake(api) as (_fake, batch, online):
        state, lines = await run_batch(batch, tmp_path, [*good, bad])
        with pytest.raises(RowRejectedError) as refused:
            await online.send(bad)
    assert (state.succeeded, state.errored) == (3, 1)
    assert lines["row-bad"].reply is None
    assert lines["row-bad"].error_type == refused.value.error_type == "invalid_request"
    assert all(lines[r.request_key].reply is not None for r in good)


@pytest.mark.anyio
@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_batch_server_errors_come_back_as_server_error_lines(
    tmp_path: Path, api: str
) -> None:
    requests = review_requests(api, 4)
    async with on_fake(api, batch_error_rate=1.0) as (_fake, batch, _online):
        state, lines = await run_batch(batch, tmp_path, requests)
    assert state.ended and (state.succeeded, state.errored) == (0, 4)
    assert {line.error_type for line in lines.values()} == {"server_error"}
    assert sorted(lines) == [r.request_key for r in requests]


@pytest.mark.anyio
@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_refused_key_is_fatal_against_the_fake_and_never_shown(
    tmp_path: Path, api: str
) -> None:
    async with on_fake(api, auth_fail=True) as (_fake, batch, _online):
        part = write_part(tmp_path, [batch.line(r) for r in review_requests(api, 1)])
        with pytest.raises(FatalProviderError) as submit:
            await batch.submit(part, metadata={})
        with pytest.raises(FatalProviderError) as poll:
            await batch.poll("batch_unknown")
    for caught in (submit, poll):
        assert caught.value.error_type == "auth_failed"
        assert KEY not in str(caught.value) and "sk-test" not in str(caught.value)


@pytest.mark.anyio
async def test_parts_over_the_providers_own_limits_are_refused_for_good(tmp_path: Path) -> None:
    async with on_fake("openai", openai_batch_max_bytes=100) as (_fake, batch, _online):
        part = write_part(tmp_path, [batch.line(r) for r in review_requests("openai", 2)])
        with pytest.raises(RowRejectedError) as upload:
            await batch.submit(part, metadata={})
    assert upload.value.status_code == 400 and "too large" in str(upload.value)
    async with on_fake("anthropic", anthropic_batch_max_requests=2) as (_fake, batch, _online):
        part = write_part(tmp_path, [batch.line(r) for r in review_requests("anthropic", 3)])
        with pytest.raises(RowRejectedError) as create:
            await batch.submit(part, metadata={})
    assert (create.value.status_code, create.value.error_type) == (413, "request_too_large")


@pytest.mark.anyio
async def test_polling_an_unknown_batch_stops_the_run_not_retried() -> None:
    for api in ("openai", "anthropic"):
        async with on_fake(api) as (_fake, batch, _online):
            with pytest.raises(FatalProviderError) as caught:
                await batch.poll("batch_nope")
        assert (caught.value.status_code, caught.value.error_type) == (404, "not_found")


class LosesOneAnswer(httpx.AsyncBaseTransport):
    """Forwards every request; the answer to the first ``POST .../batches`` is read and then
    lost, as when a connection drops after the server acted."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path.endswith("/batches") and not self.lost:
            await response.aread()
            await response.aclose()
            self.lost += 1
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.anyio
async def test_openai_submit_whose_answer_is_lost_still_pays_for_the_part_once(
    tmp_path: Path,
) -> None:
    requests = review_requests("openai", 3)
    async with running_fake_provider(FakeConfig(**FAST)) as fake:
        transport = LosesOneAnswer(make_transport())
        batch = OpenAIBatchProvider(transport, base_url=fake.openai_base_url, api_key=KEY)
        try:
            part = write_part(tmp_path, [batch.line(request) for request in requests])
            submitted = await batch.submit(part, metadata={})
            state = await wait_for(batch, submitted.batch_id)
            lines = await collect(batch, state)
        finally:
            await batch.aclose()
        paid = fake.batch_accounting()
    assert transport.lost == 1
    assert state.status == "completed" and len(lines) == 3
    assert paid["batches_created"]["openai"] == 1 and paid["lines_paid"]["openai"] == 3
