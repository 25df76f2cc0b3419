"""The fake provider's batch APIs as their users meet them: the official SDKs over loopback.

Each test runs its own server on 127.0.0.1, port 0, with phase times of a few hundredths of a
second, and waits for a batch's state by polling it in a bounded loop."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import anthropic
import anyio
import openai
import orjson
import pytest
from _openapi import openai_validator
from anthropic.types.messages import MessageBatch, MessageBatchIndividualResponse
from openai.types import Batch

from pipeline.fake import FakeConfig, FakeProvider, running_fake_provider

pytestmark = pytest.mark.anyio

FAST = {
    "batch_validating_s": 0.02,
    "batch_in_progress_s": 0.05,
    "batch_finalizing_s": 0.02,
    "batch_cancelling_s": 0.02,
}
OPENAI_ENDED = ("completed", "failed", "expired", "cancelled")
REVIEWS = [
    "Great blender, I love it and would recommend it to anyone.",
    "Terrible. It arrived broken and support was awful; I want a refund.",
    "It is a blender. It blends.",
    "Amazing price, perfect size, happy with it.",
    "The worst purchase I made this year, poor quality.",
    "Delivered on Tuesday in a brown box.",
]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["sentiment", "stars"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module", autouse=True)
def _load_openai_schemas() -> None:
    """Load OpenAI's spec (about a second) before any batch's clock starts."""
    for name in ("Batch", "OpenAIFile", "ListBatchesResponse", "CreateChatCompletionResponse"):
        openai_validator(name)


def config(**knobs: Any) -> FakeConfig:
    return FakeConfig(**{**FAST, **knobs})


def chat_body(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Classify the sentiment of the review."},
            {"role": "user", "content": text},
        ],
        **extra,
    }


def params(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-haiku-4-5",
        "max_tokens": 64,
        "system": "Classify the sentiment of the review.",
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def request_line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def jsonl(lines: Iterable[Any]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def rows(count: int, prefix: str = "row") -> list[dict[str, Any]]:
    return [
        request_line(f"{prefix}-{i}", chat_body(REVIEWS[i % len(REVIEWS)])) for i in range(count)
    ]


def without_ids(blocks: Iterable[Any]) -> list[dict[str, Any]]:
    """Content blocks as dicts, without the ``toolu_...`` ids (fresh on every answer)."""
    return [{k: v for k, v in block.model_dump().items() if k != "id"} for block in blocks]


def read_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


@asynccontextmanager
async def openai_fake(**knobs: Any) -> AsyncIterator[tuple[FakeProvider, openai.AsyncOpenAI]]:
    async with (
        running_fake_provider(config(**knobs)) as fake,
        openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0) as client,
    ):
        yield fake, client


@asynccontextmanager
async def anthropic_fake(
    **knobs: Any,
) -> AsyncIterator[tuple[FakeProvider, anthropic.AsyncAnthropic]]:
    async with (
        running_fake_provider(config(**knobs)) as fake,
        anthropic.AsyncAnthropic(
            base_url=fake.anthropic_base_url, api_key="k", max_retries=0
        ) as client,
    ):
        yield fake, client


async def retrieve(client: openai.AsyncOpenAI, batch_id: str) -> Batch:
    """The batch through the SDK, its raw JSON checked against OpenAI's ``Batch`` schema."""
    raw = await client.batches.with_raw_response.retrieve(batch_id)
    openai_validator("Batch").validate(raw.http_response.json())
    return raw.parse()


async def wait_openai(
    client: openai.AsyncOpenAI,
    batch_id: str,
    done: Callable[[Batch], bool] = lambda batch: batch.status in OPENAI_ENDED,
    seen: list[str] | None = None,
) -> Batch:
    """Poll until ``done(batch)`` (at most 10 s), noting each status seen."""
    with anyio.fail_after(10):
        while True:
            batch = await retrieve(client, batch_id)
            if seen is not None and (not seen or seen[-1] != batch.status):
                seen.append(batch.status)
            if done(batch):
                return batch
            await anyio.sleep(0.005)


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds (at most 10 s)."""
    with anyio.fail_after(10):
        while True:
            if condition():
                return
            await anyio.sleep(0.005)


async def retrieve_anthropic(client: anthropic.AsyncAnthropic, batch_id: str) -> MessageBatch:
    """The batch through the SDK, its raw JSON checked with the SDK's ``MessageBatch``."""
    raw = await client.messages.batches.with_raw_response.retrieve(batch_id)
    MessageBatch.model_validate(raw.http_response.json())
    return await raw.parse()


async def wait_anthropic(
    client: anthropic.AsyncAnthropic,
    batch_id: str,
    done: Callable[[MessageBatch], bool] = lambda batch: batch.processing_status == "ended",
) -> MessageBatch:
    with anyio.fail_after(10):
        while True:
            batch = await retrieve_anthropic(client, batch_id)
            if done(batch):
                return batch
            await anyio.sleep(0.005)


async def submit(client: openai.AsyncOpenAI, lines: Iterable[Any] | bytes, **extra: Any) -> Batch:
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    uploaded = await client.files.create(file=("input.jsonl", data), purpose="batch")
    return await client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        **extra,
    )


async def file_lines(client: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    content = await client.files.content(file_id)
    return read_jsonl(content.content)


async def results(
    client: anthropic.AsyncAnthropic, batch_id: str
) -> list[MessageBatchIndividualResponse]:
    """Result lines through the SDK (which follows ``results_url``), each checked raw too."""
    found = []
    async for line in await client.messages.batches.results(batch_id):
        MessageBatchIndividualResponse.model_validate(line.model_dump())
        found.append(line)
    return found


# -- OpenAI ---------------------------------------------------------------------------------------


async def test_openai_batch_goes_through_each_status_and_completes() -> None:
    timing = {"batch_validating_s": 0.15, "batch_in_progress_s": 0.3, "batch_finalizing_s": 0.15}
    async with openai_fake(**timing) as (_fake, client):
        created = await submit(client, rows(6), metadata={"job": "reviews"})
        assert created.status == "validating"
        assert created.request_counts is not None and created.request_counts.total == 0
        seen: list[str] = []
        batch = await wait_openai(client, created.id, seen=seen)
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    assert batch.object == "batch" and batch.id.startswith("batch_")
    assert batch.endpoint == "/v1/chat/completions" and batch.completion_window == "24h"
    assert batch.metadata == {"job": "reviews"}
    assert batch.model == "gpt-4o-mini"
    assert batch.request_counts is not None
    assert batch.request_counts.model_dump() == {"total": 6, "completed": 6, "failed": 0}
    assert batch.output_file_id is not None and batch.error_file_id is None
    assert batch.errors is None and batch.failed_at is None and batch.cancelled_at is None
    stamps = [batch.in_progress_at, batch.finalizing_at, batch.completed_at]
    assert all(isinstance(stamp, int) for stamp in stamps)
    assert batch.created_at <= stamps[0] <= stamps[1] <= stamps[2]  # type: ignore[operator]
    assert batch.expires_at == batch.created_at + 24 * 3600
    assert batch.usage is not None and batch.usage.input_tokens > 0
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens


async def test_openai_output_joined_on_custom_id_equals_the_online_answers() -> None:
    bodies = {
        "plain-0": chat_body(REVIEWS[0]),
        "plain-1": chat_body(REVIEWS[1], max_completion_tokens=32),
        "plain-2": chat_body(REVIEWS[2]),
        "cut": chat_body(REVIEWS[3], max_tokens=1),
        "schema": chat_body(
            REVIEWS[4],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "review", "schema": SCHEMA, "strict": True},
            },
        ),
        "object": chat_body(
            f"Answer in JSON. {REVIEWS[5]}", response_format={"type": "json_object"}
        ),
        "two": chat_body(REVIEWS[0], n=2),
    }
    async with openai_fake() as (_fake, client):
        online = {
            custom_id: (await client.chat.completions.with_raw_response.create(**body)).parse()
            for custom_id, body in bodies.items()
        }
        batch = await wait_openai(
            client, (await submit(client, [request_line(k, v) for k, v in bodies.items()])).id
        )
        output = await file_lines(client, batch.output_file_id)
    assert batch.status == "completed"
    assert [line["custom_id"] for line in output] != list(bodies)  # not the input order
    assert sorted(line["custom_id"] for line in output) == sorted(bodies)
    response_schema = openai_validator("CreateChatCompletionResponse")
    for line in output:
        assert line["id"].startswith("batch_req_")
        assert line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"].startswith("req_")
        body = response["body"]
        response_schema.validate(body)
        expected = online[line["custom_id"]]
        assert body["model"] == expected.model
        assert [(c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
            (c.message.content, c.finish_reason) for c in expected.choices
        ]
        assert expected.usage is not None
        assert body["usage"] == expected.usage.model_dump(exclude_none=True)
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(
        o.usage.prompt_tokens for o in online.values() if o.usage
    )
    assert batch.usage.output_tokens == sum(
        o.usage.completion_tokens for o in online.values() if o.usage
    )


async def test_openai_validation_failure_names_each_bad_line() -> None:
    good = request_line("a", chat_body(REVIEWS[0]))
    lines = [
        orjson.dumps(good),
        b'{"custom_id": "b", "method": "POST", "url": ',
        orjson.dumps({**good, "custom_id": None}),
        orjson.dumps(good),
        orjson.dumps({**good, "custom_id": "c", "url": "/v1/embeddings"}),
        orjson.dumps({**good, "custom_id": "d", "method": "GET"}),
        orjson.dumps({**good, "custom_id": "e", "body": {**chat_body("x"), "model": "gpt-4o"}}),
        orjson.dumps({**good, "custom_id": "f"}),
    ]
    async with openai_fake() as (fake, client):
        batch = await wait_openai(client, (await submit(client, b"\n".join(lines))).id)
        batches = fake.batch_accounting()
    assert batch.status == "failed"
    assert batch.failed_at is not None and batch.in_progress_at is None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.errors is not None and batch.errors.data is not None
    found = [(error.line, error.code, error.param) for error in batch.errors.data]
    assert found == [
        (2, "invalid_json_line", None),
        (3, "missing_required_parameter", "custom_id"),
        (4, "duplicate_custom_id", "custom_id"),
        (5, "url_mismatch", "url"),
        (6, "invalid_value", "method"),
        (7, "model_mismatch", "body.model"),
    ]
    assert all(error.message for error in batch.errors.data)
    assert batches["batches_created"]["openai"] == 1
    assert batches["lines_paid"]["openai"] == 0


async def test_openai_batch_fail_validation_knob_fails_a_valid_batch() -> None:
    async with openai_fake(batch_fail_validation=True) as (fake, client):
        batch = await wait_openai(client, (await submit(client, rows(2))).id)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data
    assert fake.accounting()["paid_total"] == 0


async def test_openai_empty_input_file_fails_validation() -> None:
    async with openai_fake() as (_fake, client):
        batch = await wait_openai(client, (await submit(client, b"\n")).id)
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    assert [error.code for error in batch.errors.data] == ["empty_file"]


async def test_openai_input_over_the_line_limit_fails_validation() -> None:
    async with openai_fake(openai_batch_max_requests=3) as (_fake, client):
        at_limit = await wait_openai(client, (await submit(client, rows(3))).id)
        over = await wait_openai(client, (await submit(client, rows(4))).id)
    assert at_limit.status == "completed"
    assert over.status == "failed"
    assert over.errors is not None and over.errors.data is not None
    assert [(e.code, e.line) for e in over.errors.data] == [("too_many_tasks", None)]


async def test_openai_upload_over_the_byte_limit_is_a_400() -> None:
    async with openai_fake(openai_batch_max_bytes=1000) as (fake, client):
        fits = await client.files.create(file=("in.jsonl", b"x" * 1000), purpose="batch")
        assert fits.bytes == 1000
        with pytest.raises(openai.BadRequestError) as caught:
            await client.files.create(file=("in.jsonl", b"x" * 1001), purpose="batch")
        batches = fake.batch_accounting()
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error"
    assert body["message"].startswith("File is too large.")
    assert batches["files_uploaded"] == 1


async def test_openai_cancel_keeps_the_lines_already_answered() -> None:
    async with openai_fake(batch_in_progress_s=1.0, batch_cancelling_s=0.05) as (fake, client):
        created = await submit(client, rows(20))
        running = await wait_openai(
            client,
            created.id,
            lambda b: b.request_counts is not None and b.request_counts.completed >= 3,
        )
        assert running.status == "in_progress"
        cancelling = await client.batches.cancel(created.id)
        assert cancelling.status == "cancelling"
        assert cancelling.cancelling_at is not None and cancelling.cancelled_at is None
        batch = await wait_openai(client, created.id)
        output = await file_lines(client, batch.output_file_id)
        paid = fake.accounting()["paid"]
        with pytest.raises(openai.BadRequestError):
            await client.batches.cancel(created.id)  # it has ended
    assert batch.status == "cancelled"
    assert batch.cancelled_at is not None and batch.completed_at is None
    assert batch.request_counts is not None
    done = batch.request_counts.completed
    assert 3 <= done < 20
    assert batch.request_counts.total == 20 and batch.request_counts.failed == 0
    assert len(output) == done
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert paid == {line["custom_id"]: 1 for line in output}
    assert batch.error_file_id is None


async def test_openai_expiry_keeps_finished_lines_and_lists_the_rest_as_expired() -> None:
    async with openai_fake(batch_expire_after=0.5) as (fake, client):
        batch = await wait_openai(client, (await submit(client, rows(10))).id)
        output = await file_lines(client, batch.output_file_id)
        errors = await file_lines(client, batch.error_file_id)
        paid = fake.accounting()["paid"]
    assert batch.status == "expired"
    assert batch.expired_at is not None and batch.completed_at is None
    assert batch.request_counts is not None
    assert batch.request_counts.model_dump() == {"total": 10, "completed": 5, "failed": 5}
    assert len(output) == 5 and len(errors) == 5
    for line in errors:
        assert line["response"] is None
        assert line["error"]["code"] == "batch_expired" and line["error"]["message"]
        assert line["id"].startswith("batch_req_")
    ids = {line["custom_id"] for line in output} | {line["custom_id"] for line in errors}
    assert ids == {f"row-{i}" for i in range(10)}
    assert set(paid) == {line["custom_id"] for line in output}


async def test_openai_error_rate_sends_seeded_server_errors_to_the_error_file() -> None:
    async def run() -> tuple[Batch, list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
        async with openai_fake(batch_error_rate=0.3, seed=7) as (fake, client):
            batch = await wait_openai(client, (await submit(client, rows(40))).id)
            output = await file_lines(client, batch.output_file_id)
            errors = await file_lines(client, batch.error_file_id)
            return batch, output, errors, fake.accounting()["paid"]

    batch, output, errors, paid = await run()
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert batch.request_counts.model_dump() == {
        "total": 40,
        "completed": len(output),
        "failed": len(errors),
    }
    assert 5 <= len(errors) <= 25
    for line in errors:
        assert line["error"] is None
        assert line["response"]["status_code"] == 500
        assert line["response"]["body"]["error"]["type"] == "server_error"
    assert set(paid) == {line["custom_id"] for line in output}
    again = await run()  # the same knobs and calls fail the same lines
    assert {line["custom_id"] for line in again[2]} == {line["custom_id"] for line in errors}


async def test_openai_line_the_online_endpoint_would_refuse_is_a_400_line() -> None:
    lines = [*rows(2), request_line("bad", {"model": "gpt-4o-mini", "messages": "oops"})]
    async with openai_fake() as (fake, client):
        batch = await wait_openai(client, (await submit(client, lines)).id)
        errors = await file_lines(client, batch.error_file_id)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{fake.openai_base_url}/chat/completions",
                json={"model": "gpt-4o-mini", "messages": "oops"},
                headers={"Authorization": "Bearer k"},
            ) as response,
        ):
            assert response.status == 400
            online_error = await response.json()
    assert batch.status == "completed"
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
    [line] = errors
    assert line["custom_id"] == "bad" and line["error"] is None
    assert line["response"]["status_code"] == 400
    assert line["response"]["body"] == online_error


async def test_openai_files_can_be_read_back_and_deleted() -> None:
    data = jsonl(rows(2))
    async with openai_fake() as (fake, client):
        raw = await client.files.with_raw_response.create(file=("in.jsonl", data), purpose="batch")
        openai_validator("OpenAIFile").validate(raw.http_response.json())
        uploaded = raw.parse()
        assert uploaded.id.startswith("file-")
        assert (uploaded.object, uploaded.purpose, uploaded.status) == (
            "file",
            "batch",
            "processed",
        )
        assert (uploaded.bytes, uploaded.filename) == (len(data), "in.jsonl")
        assert uploaded.expires_at == uploaded.created_at + 30 * 24 * 3600
        assert (await client.files.retrieve(uploaded.id)) == uploaded
        assert (await client.files.content(uploaded.id)).content == data
        batch = await wait_openai(client, (await submit(client, rows(2))).id)
        assert batch.output_file_id is not None
        output = await client.files.retrieve(batch.output_file_id)
        assert output.purpose == "batch_output"
        deleted = await client.files.with_raw_response.delete(uploaded.id)
        openai_validator("DeleteFileResponse").validate(deleted.http_response.json())
        assert deleted.parse().deleted is True
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(uploaded.id)
        with pytest.raises(openai.BadRequestError, match=r"Must be \.jsonl"):
            await client.files.create(file=("in.csv", data), purpose="batch")
        assert fake.batch_accounting()["files_uploaded"] == 2


async def test_openai_create_refuses_what_the_real_api_refuses() -> None:
    async with openai_fake() as (fake, client):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(rows(1))), purpose="batch")
        with pytest.raises(openai.NotFoundError) as missing:
            await client.batches.create(
                input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
            )
        with pytest.raises(openai.BadRequestError) as window:
            await client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="48h",  # type: ignore[arg-type]
            )
        with pytest.raises(openai.BadRequestError) as endpoint:
            await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
            )
        with pytest.raises(openai.NotFoundError):
            await client.batches.retrieve("batch_nope")
        assert fake.batch_accounting()["batches_created"]["openai"] == 0
    for caught, param in ((missing, "input_file_id"), (window, "completion_window")):
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["type"] == "invalid_request_error" and body["param"] == param
    body = endpoint.value.body
    assert isinstance(body, dict) and body["param"] == "endpoint"


async def test_openai_batches_list_pages_newest_first() -> None:
    async with openai_fake() as (_fake, client):
        ids = [(await submit(client, rows(1, prefix=f"b{i}"))).id for i in range(5)]
        raw = await client.batches.with_raw_response.list(limit=2)
        listing = raw.http_response.json()
        openai_validator("ListBatchesResponse").validate(listing)
        everything = [batch.id async for batch in client.batches.list(limit=2)]
        after = await client.batches.list(after=ids[2], limit=10)
    assert [item["id"] for item in listing["data"]] == [ids[4], ids[3]]
    assert (listing["first_id"], listing["last_id"], listing["has_more"]) == (ids[4], ids[3], True)
    assert everything == ids[::-1]
    assert [batch.id for batch in after.data] == [ids[1], ids[0]]
    assert after.has_more is False


async def test_openai_batch_routes_check_the_api_key() -> None:
    async with openai_fake(auth_fail=True) as (_fake, client):
        with pytest.raises(openai.AuthenticationError):
            await client.batches.list()
        with pytest.raises(openai.AuthenticationError):
            await client.files.create(file=("in.jsonl", b"{}\n"), purpose="batch")


# -- Anthropic ------------------------------------------------------------------------------------


def anthropic_requests(count: int, prefix: str = "row") -> list[dict[str, Any]]:
    return [
        {"custom_id": f"{prefix}-{i}", "params": params(REVIEWS[i % len(REVIEWS)])}
        for i in range(count)
    ]


async def test_anthropic_batch_ends_and_results_match_the_online_answers() -> None:
    tool = {"name": "record", "description": "Record it.", "input_schema": SCHEMA}
    requests = [
        *anthropic_requests(4),
        {
            "custom_id": "tool",
            "params": params(
                REVIEWS[1], tools=[tool], tool_choice={"type": "tool", "name": "record"}
            ),
        },
        {"custom_id": "short", "params": params(REVIEWS[3], max_tokens=1)},
    ]
    async with anthropic_fake(batch_in_progress_s=0.2) as (fake, client):
        online = {
            item["custom_id"]: await client.messages.create(**item["params"]) for item in requests
        }
        created = await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        assert created.id.startswith("msgbatch_") and created.type == "message_batch"
        assert created.processing_status == "in_progress"
        assert created.results_url is None and created.ended_at is None
        assert created.request_counts.model_dump() == {
            "processing": 6,
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        with pytest.raises(anthropic.AnthropicError, match="results_url"):
            await client.messages.batches.results(created.id)  # the SDK refuses: no results_url
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{fake.url}/v1/messages/batches/{created.id}/results",
                headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
            ) as early,
        ):
            assert early.status == 400
            assert (await early.json())["error"]["type"] == "invalid_request_error"
        batch = await wait_anthropic(client, created.id)
        found = await results(client, created.id)
        port = fake.port
    assert batch.ended_at is not None and batch.ended_at >= batch.created_at
    assert batch.cancel_initiated_at is None and batch.archived_at is None
    assert (batch.expires_at - batch.created_at).total_seconds() == 24 * 3600
    assert batch.results_url == (f"http://127.0.0.1:{port}/v1/messages/batches/{batch.id}/results")
    assert batch.request_counts.model_dump() == {
        "processing": 0,
        "succeeded": 6,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert [line.custom_id for line in found] != [item["custom_id"] for item in requests]
    assert sorted(line.custom_id for line in found) == sorted(online)
    for line in found:
        assert line.result.type == "succeeded"
        message = line.result.message
        expected = online[line.custom_id]
        assert without_ids(message.content) == without_ids(expected.content)
        assert message.stop_reason == expected.stop_reason
        assert message.usage.input_tokens == expected.usage.input_tokens
        assert message.usage.output_tokens == expected.usage.output_tokens
        assert message.usage.service_tier == "batch"


async def test_anthropic_cancel_marks_the_unanswered_requests_canceled() -> None:
    async with anthropic_fake(batch_in_progress_s=1.0, batch_cancelling_s=0.05) as (fake, client):
        created = await client.messages.batches.create(requests=anthropic_requests(20))  # type: ignore[arg-type]
        await wait_anthropic(
            client, created.id, lambda _: fake.batch_accounting()["lines_paid"]["anthropic"] >= 3
        )
        canceling = await client.messages.batches.cancel(created.id)
        assert canceling.processing_status == "canceling"
        assert canceling.cancel_initiated_at is not None and canceling.results_url is None
        assert canceling.request_counts.processing == 20
        batch = await wait_anthropic(client, created.id)
        found = await results(client, created.id)
        paid = fake.accounting()["paid"]
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.batches.cancel(created.id)  # it has ended
    counts = batch.request_counts
    assert 3 <= counts.succeeded < 20
    assert counts.canceled == 20 - counts.succeeded
    assert counts.processing == counts.errored == counts.expired == 0
    kinds = {line.custom_id: line.result.type for line in found}
    assert len(kinds) == 20
    assert set(paid) == {key for key, kind in kinds.items() if kind == "succeeded"}
    assert sum(kind == "canceled" for kind in kinds.values()) == counts.canceled


async def test_anthropic_expiry_and_errors_show_in_results_and_counts() -> None:
    requests = [
        *anthropic_requests(19),
        {"custom_id": "bad-params", "params": {"model": "claude-haiku-4-5", "messages": []}},
    ]
    knobs = {"batch_expire_after": 0.5, "batch_error_rate": 0.3, "seed": 3}
    async with anthropic_fake(**knobs) as (fake, client):
        created = await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        batch = await wait_anthropic(client, created.id)
        found = await results(client, created.id)
        batches = fake.batch_accounting()
    counts = batch.request_counts
    assert counts.expired == 10
    assert counts.succeeded + counts.errored == 10
    assert counts.errored >= 1
    kinds = [line.result.type for line in found]
    assert kinds.count("expired") == 10
    assert kinds.count("succeeded") == counts.succeeded
    for line in found:
        if line.result.type == "errored":
            assert line.result.error.type == "error"
            assert line.result.error.error.type in ("api_error", "invalid_request_error")
            assert line.result.error.error.message
    assert batches["lines_paid"]["anthropic"] == counts.succeeded
    assert batches["lines_failed"]["anthropic"] == counts.errored


async def test_anthropic_limits_are_413_request_too_large() -> None:
    async with anthropic_fake(anthropic_batch_max_requests=3, anthropic_batch_max_bytes=2000) as (
        fake,
        client,
    ):
        fits = await client.messages.batches.create(requests=anthropic_requests(3))  # type: ignore[arg-type]
        with pytest.raises(anthropic.APIStatusError) as too_many:
            await client.messages.batches.create(requests=anthropic_requests(4))  # type: ignore[arg-type]
        big = [{"custom_id": "big", "params": params("x" * 2000)}]
        with pytest.raises(anthropic.APIStatusError) as too_big:
            await client.messages.batches.create(requests=big)  # type: ignore[arg-type]
        batches = fake.batch_accounting()
    assert fits.request_counts.processing == 3
    for caught in (too_many, too_big):
        assert caught.value.status_code == 413
        body = caught.value.body
        assert isinstance(body, dict)
        assert body["type"] == "error" and body["error"]["type"] == "request_too_large"
        assert body["request_id"].startswith("req_")
    assert batches["batches_created"]["anthropic"] == 1


async def test_anthropic_create_checks_custom_ids_and_the_fail_knob() -> None:
    async with anthropic_fake() as (fake, client):
        duplicate = [*anthropic_requests(2), anthropic_requests(1)[0]]
        with pytest.raises(anthropic.BadRequestError, match="duplicate"):
            await client.messages.batches.create(requests=duplicate)  # type: ignore[arg-type]
        bad_id = [{"custom_id": "has space", "params": params("hi")}]
        with pytest.raises(anthropic.BadRequestError, match="custom_id"):
            await client.messages.batches.create(requests=bad_id)  # type: ignore[arg-type]
        fake.update_config(batch_fail_validation=True)
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.batches.create(requests=anthropic_requests(1))  # type: ignore[arg-type]
        assert fake.batch_accounting()["batches_created"]["anthropic"] == 0


async def test_anthropic_list_pages_and_delete_only_once_ended() -> None:
    async with anthropic_fake(batch_in_progress_s=5.0) as (_fake, client):
        ids = [
            (await client.messages.batches.create(requests=anthropic_requests(1))).id  # type: ignore[arg-type]
            for _ in range(5)
        ]
        first = await client.messages.batches.list(limit=2)
        everything = [batch.id async for batch in client.messages.batches.list(limit=2)]
        before = await client.messages.batches.list(before_id=ids[1], limit=2)
        for batch in first.data:
            MessageBatch.model_validate(batch.model_dump())
        with pytest.raises(anthropic.BadRequestError):
            await client.messages.batches.delete(ids[0])
        await client.messages.batches.cancel(ids[0])
        await wait_anthropic(client, ids[0])
        deleted = await client.messages.batches.delete(ids[0])
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.retrieve(ids[0])
    assert [batch.id for batch in first.data] == [ids[4], ids[3]]
    assert (first.first_id, first.last_id, first.has_more) == (ids[4], ids[3], True)
    assert everything == ids[::-1]
    assert [batch.id for batch in before.data] == [ids[3], ids[2]]
    assert before.has_more is True
    assert (deleted.id, deleted.type) == (ids[0], "message_batch_deleted")


# -- accounting across online and batch ---------------------------------------------------------


async def test_accounting_pays_batch_lines_under_their_custom_id() -> None:
    async with running_fake_provider(config()) as fake:
        async with openai.AsyncOpenAI(
            base_url=fake.openai_base_url, api_key="k", max_retries=0
        ) as client:
            await client.chat.completions.create(
                **chat_body(REVIEWS[0]), extra_headers={"x-client-request-id": "row-1"}
            )
            batch = await wait_openai(client, (await submit(client, rows(3))).id)
        async with anthropic.AsyncAnthropic(
            base_url=fake.anthropic_base_url, api_key="k", max_retries=0
        ) as aclient:
            created = await aclient.messages.batches.create(
                requests=anthropic_requests(2, prefix="claude")  # type: ignore[arg-type]
            )
            await wait_anthropic(aclient, created.id)
        snapshot = fake.accounting()
        batches = fake.batch_accounting()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{fake.url}/_fake/accounting/batches") as response,
        ):
            assert orjson.loads(await response.read()) == batches
        fake.reset()
        cleared = fake.batch_accounting()
        with pytest.raises(openai.NotFoundError):
            async with openai.AsyncOpenAI(
                base_url=fake.openai_base_url, api_key="k", max_retries=0
            ) as client:
                await client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    # One online request; batch lines are not HTTP requests.
    assert snapshot["requests"] == 1 and snapshot["by_status"] == {"200": 1}
    assert snapshot["paid"] == {
        "row-0": 1,
        "row-1": 2,  # online and batch: bought twice, and the accounting shows it
        "row-2": 1,
        "claude-0": 1,
        "claude-1": 1,
    }
    assert snapshot["duplicates_paid"] == 1
    assert snapshot["paid_total"] == 6
    assert snapshot["arrived"]["row-1"] == 2
    assert batches["batches_created"] == {"openai": 1, "anthropic": 1, "gemini": 0}
    assert batches["files_uploaded"] == 1
    assert batches["lines_paid"] == {"openai": 3, "anthropic": 2, "gemini": 0}
    assert batches["lines_failed"] == {"openai": 0, "anthropic": 0, "gemini": 0}
    assert 0 < batches["tokens"]["input"] < snapshot["tokens"]["input"]
    assert cleared["batches_created"] == {"openai": 0, "anthropic": 0, "gemini": 0}
    assert cleared["files_uploaded"] == 0


async def test_batches_are_paid_when_due_even_if_nobody_polls() -> None:
    async with openai_fake() as (fake, client):
        created = await submit(client, rows(3))
        await until(lambda: fake.batch_accounting()["lines_paid"]["openai"] == 3)
        assert set(fake.accounting()["paid"]) == {"row-0", "row-1", "row-2"}
        assert (await retrieve(client, created.id)).status in ("finalizing", "completed")


async def test_batch_knobs_are_checked_and_change_at_runtime() -> None:
    with pytest.raises(ValueError, match="batch_expire_after"):
        FakeConfig(batch_expire_after=1.5)
    with pytest.raises(ValueError, match="openai_batch_max_requests"):
        FakeConfig(openai_batch_max_requests=0)
    with pytest.raises(ValueError, match="batch_error_rate"):
        FakeConfig(batch_error_rate=-0.1)
    async with running_fake_provider() as fake, aiohttp.ClientSession() as session:
        async with session.post(
            f"{fake.url}/_fake/config",
            json={"batch_expire_after": 0.25, "batch_fail_validation": True},
        ) as response:
            assert response.status == 200
        assert fake.config.batch_expire_after == 0.25
        assert fake.config.batch_fail_validation is True


async def test_openai_create_lost_makes_the_batch_but_never_answers() -> None:
    async with openai_fake(batch_create_lost=True, hang_s=0) as (fake, client):
        uploaded = await client.files.create(file=("in.jsonl", jsonl(rows(3))), purpose="batch")
        started = int(time.time())
        with pytest.raises(openai.APIConnectionError):
            await client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"run_id": "r1", "part": "1"},
            )
        raw = await client.batches.with_raw_response.list(limit=100)
        listing = raw.http_response.json()
        openai_validator("ListBatchesResponse").validate(listing)
        await until(lambda: fake.batch_accounting()["lines_paid"]["openai"] == 3)
        paid = fake.batch_accounting()
        faults = fake.accounting()["faults"]
    [batch] = listing["data"]
    assert batch["input_file_id"] == uploaded.id
    assert batch["metadata"] == {"run_id": "r1", "part": "1"}
    assert started <= batch["created_at"] <= time.time()
    assert paid["batches_created"]["openai"] == 1
    assert faults == {"batch_create_lost": 1}


async def test_anthropic_create_lost_makes_the_batch_but_never_answers() -> None:
    async with anthropic_fake(batch_create_lost=True, hang_s=0) as (fake, client):
        started = time.time()
        with pytest.raises(anthropic.APIConnectionError):
            await client.messages.batches.create(requests=anthropic_requests(3))  # type: ignore[arg-type]
        listing = await client.messages.batches.list(limit=100)
        fake.update_config(batch_create_lost=False)
        answered = await client.messages.batches.create(requests=anthropic_requests(2))  # type: ignore[arg-type]
        paid = fake.batch_accounting()
    [batch] = listing.data
    MessageBatch.model_validate(batch.model_dump())
    assert batch.request_counts.processing == 3
    assert started - 0.001 <= batch.created_at.timestamp() <= time.time()
    assert answered.id != batch.id
    assert paid["batches_created"]["anthropic"] == 2
