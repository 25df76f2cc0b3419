"""Finding the batch of a part whose create reached the provider but whose answer was lost.

Unit tests pin the matching rules and the paging against ``httpx.MockTransport`` (list pages
checked against OpenAI's ``Batch`` schema and the Anthropic SDK's ``MessageBatch``). Integration
tests create batches on the fake provider over loopback, some with ``batch_create_lost`` (the
batch is made, the create is never answered), and check through the fake's accounting that a
part found is not paid for twice.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from _openapi import openai_validator
from anthropic.types.messages import MessageBatch
from structlog.testing import capture_logs

from pipeline.errors import TransientError
from pipeline.fake import FakeConfig, FakeProvider, running_fake_provider
from pipeline.providers._base import make_transport
from pipeline.providers._batch import CLOCK_SLACK_S, BatchPart, BatchProvider, BatchState
from pipeline.providers.anthropic_batch import AnthropicBatchProvider
from pipeline.providers.openai_batch import OpenAIBatchProvider
from pipeline.records import Request

pytestmark = pytest.mark.anyio

KEY = "sk" + "-test-0123456789abcdefghijklmnop"
OPENAI_URL = "http://fake.test/v1"
ANTHROPIC_URL = "http://fake.test"
SINCE = 1_750_000_000.0  # when the part was recorded, in the unit tests
MINE = {"run_id": "run-1", "part": "2", "job": "reviews"}

Handler = Callable[[httpx.Request], httpx.Response]


def part_file(folder: Path, keys: Sequence[str], *, index: int = 2) -> BatchPart:
    path = folder / f"part-{index:04d}.jsonl"
    data = b"".join(orjson.dumps({"custom_id": key}) + b"\n" for key in keys)
    path.write_bytes(data)
    return BatchPart(index, path, len(keys), len(data), keys[0], keys[-1])


def paged(pages: Sequence[Sequence[dict[str, Any]]], seen: list[str], **more: Handler) -> Handler:
    """Answers ``GET`` of a list with ``pages`` in turn (the cursor names the last id of the
    page before), and any other path with the handler ``more`` has for its last segment."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}?{request.url.query.decode()}")
        last = request.url.path.rsplit("/", 1)[-1]
        if last in more:
            return more[last](request)
        cursor = request.url.params.get("after") or request.url.params.get("after_id")
        index = 0
        if cursor is not None:
            index = next(i + 1 for i, page in enumerate(pages) if page and page[-1]["id"] == cursor)
        page = list(pages[index])
        return httpx.Response(
            200,
            json={
                "object": "list",
                "data": page,
                "has_more": index + 1 < len(pages),
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
            },
        )

    return handler


# -- OpenAI: the rules ----------------------------------------------------------------------------


def listed(batch_id: str, created_at: float, **extra: Any) -> dict[str, Any]:
    """A listed OpenAI ``batch`` object (checked against the spec's ``Batch``)."""
    body: dict[str, Any] = {
        "id": batch_id,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": f"file-{batch_id}",
        "completion_window": "24h",
        "status": "in_progress",
        "created_at": int(created_at),
        "expires_at": int(created_at) + 86_400,
        "request_counts": {"total": 3, "completed": 0, "failed": 0},
        "metadata": None,
        **extra,
    }
    openai_validator("Batch").validate(body)
    return body


def openai_on(handler: Handler) -> OpenAIBatchProvider:
    return OpenAIBatchProvider(httpx.MockTransport(handler), base_url=OPENAI_URL, api_key=KEY)


async def test_openai_finds_the_batch_with_the_parts_run_and_part_paging_back(
    tmp_path: Path,
) -> None:
    part = part_file(tmp_path, ["k1", "k2", "k3"])
    pages = [
        [
            listed("batch_other_run", SINCE + 50, metadata={**MINE, "run_id": "run-2"}),
            listed("batch_known", SINCE + 40, metadata=MINE),
            listed("batch_other_part", SINCE + 30, metadata={**MINE, "part": "1"}),
        ],
        [listed("batch_mine", SINCE + 10, metadata=MINE)],
    ]
    seen: list[str] = []
    provider = openai_on(paged(pages, seen))
    found = await provider.find_submitted(part, metadata=MINE, since=SINCE, known={"batch_known"})
    assert found is not None
    assert (found.batch_id, found.input_file_id) == ("batch_mine", "file-batch_mine")
    assert seen == [
        "GET /v1/batches?limit=100",
        "GET /v1/batches?limit=100&after=batch_other_part",
    ]


async def test_openai_stops_at_a_page_older_than_the_part_and_finds_nothing(
    tmp_path: Path,
) -> None:
    part = part_file(tmp_path, ["k1", "k2", "k3"])
    too_old = SINCE - CLOCK_SLACK_S - 1
    pages = [
        [listed("batch_new", SINCE + 5, metadata={**MINE, "run_id": "run-2"})],
        [listed("batch_before_the_part", too_old, metadata=MINE)],  # not this attempt's
        [listed("batch_never_asked", too_old - 10, metadata=MINE)],
    ]
    seen: list[str] = []
    found = await openai_on(paged(pages, seen)).find_submitted(
        part, metadata=MINE, since=SINCE, known=()
    )
    assert found is None
    assert len(seen) == 2


async def test_openai_a_clock_behind_the_providers_by_less_than_the_slack_still_finds_it(
    tmp_path: Path,
) -> None:
    part = part_file(tmp_path, ["k1"])
    pages = [[listed("batch_mine", SINCE - CLOCK_SLACK_S + 1, metadata=MINE)]]
    found = await openai_on(paged(pages, [])).find_submitted(
        part, metadata=MINE, since=SINCE, known=()
    )
    assert found is not None and found.batch_id == "batch_mine"


async def test_openai_without_a_run_and_part_there_is_nothing_to_look_for(tmp_path: Path) -> None:
    seen: list[str] = []
    provider = openai_on(paged([[listed("batch_x", SINCE, metadata=MINE)]], seen))
    part = part_file(tmp_path, ["k1"])
    assert await provider.find_submitted(part, metadata={}, since=SINCE, known=()) is None
    assert seen == []


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(500, json={"error": {"message": "boom", "type": "server_error"}}),
        httpx.Response(200, content=b"<html>"),
        httpx.Response(200, json={"object": "list", "data": {"id": "batch_1"}}),
    ],
)
async def test_a_list_that_cannot_be_read_is_raised_never_taken_for_nothing_found(
    tmp_path: Path, answer: httpx.Response
) -> None:
    part = part_file(tmp_path, ["k1"])
    for provider in (
        openai_on(lambda request: answer),
        AnthropicBatchProvider(
            httpx.MockTransport(lambda request: answer), base_url=ANTHROPIC_URL, api_key=KEY
        ),
    ):
        with pytest.raises(TransientError):
            await provider.find_submitted(part, metadata=MINE, since=SINCE, known=())


# -- Anthropic: the rules -------------------------------------------------------------------------


def rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


def message_batch(batch_id: str, created_at: float, count: int, *, ended: bool) -> dict[str, Any]:
    """A listed ``message_batch`` (checked with the official SDK's ``MessageBatch``)."""
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    counts["succeeded" if ended else "processing"] = count
    body = {
        "id": batch_id,
        "type": "message_batch",
        "processing_status": "ended" if ended else "in_progress",
        "request_counts": counts,
        "created_at": rfc3339(created_at),
        "expires_at": rfc3339(created_at + 86_400),
        "ended_at": rfc3339(created_at + 60) if ended else None,
        "cancel_initiated_at": None,
        "archived_at": None,
        "results_url": (
            f"{ANTHROPIC_URL}/v1/messages/batches/{batch_id}/results" if ended else None
        ),
    }
    MessageBatch.model_validate(body)
    return body


def results_of(keys: Sequence[str]) -> Handler:
    lines = [{"custom_id": key, "result": {"type": "expired"}} for key in keys]
    return lambda request: httpx.Response(200, content=b"\n".join(map(orjson.dumps, lines)))


def anthropic_on(handler: Handler) -> AnthropicBatchProvider:
    return AnthropicBatchProvider(httpx.MockTransport(handler), base_url=ANTHROPIC_URL, api_key=KEY)


async def test_anthropic_an_ended_batch_is_the_parts_when_its_results_hold_its_first_and_last_keys(
    tmp_path: Path,
) -> None:
    part = part_file(tmp_path, ["k1", "k2", "k3"])
    pages = [
        [
            message_batch("msgbatch_known", SINCE + 50, 3, ended=True),
            message_batch("msgbatch_other", SINCE + 40, 3, ended=True),
            message_batch("msgbatch_bigger", SINCE + 30, 4, ended=False),
            message_batch("msgbatch_mine", SINCE + 20, 3, ended=True),
            message_batch("msgbatch_old", SINCE - CLOCK_SLACK_S - 1, 3, ended=True),
        ]
    ]
    seen: list[str] = []
    handler = paged(
        pages,
        seen,
        results=lambda request: {
            "msgbatch_known": results_of(["k1", "k2", "k3"]),
            "msgbatch_other": results_of(["x3", "x1", "x2"]),  # another run: same count
            "msgbatch_mine": results_of(["k3", "k1", "k2"]),  # in any order
            "msgbatch_old": results_of(["k1", "k2", "k3"]),
        }[request.url.path.split("/")[-2]](request),
    )
    found = await anthropic_on(handler).find_submitted(
        part, metadata=MINE, since=SINCE, known={"msgbatch_known"}
    )
    assert found is not None and found.batch_id == "msgbatch_mine"
    assert seen == [
        "GET /v1/messages/batches?limit=100",
        "GET /v1/messages/batches/msgbatch_other/results?",
        "GET /v1/messages/batches/msgbatch_mine/results?",
    ]


async def test_anthropic_the_one_running_candidate_left_is_taken_on_count_and_time(
    tmp_path: Path,
) -> None:
    part = part_file(tmp_path, ["k1", "k2", "k3"])
    pages = [
        [
            message_batch("msgbatch_running", SINCE + 30, 3, ended=False),
            message_batch("msgbatch_other", SINCE + 20, 3, ended=True),
        ]
    ]
    handler = paged(pages, [], results=results_of(["x1", "x2", "x3"]))
    with capture_logs() as logs:
        found = await anthropic_on(handler).find_submitted(
            part, metadata=MINE, since=SINCE, known=()
        )
    assert found is not None and found.batch_id == "msgbatch_running"
    assert [(e["event"], e["batch_id"]) for e in logs] == [
        ("batch_matched_by_count", "msgbatch_running")
    ]


async def test_anthropic_several_running_candidates_are_named_and_none_is_taken(
    tmp_path: Path,
) -> None:
    part = part_file(tmp_path, ["k1", "k2", "k3"])
    pages = [
        [
            message_batch("msgbatch_a", SINCE + 30, 3, ended=False),
            message_batch("msgbatch_b", SINCE + 20, 3, ended=False),
        ]
    ]
    with capture_logs() as logs:
        found = await anthropic_on(paged(pages, [])).find_submitted(
            part, metadata=MINE, since=SINCE, known=()
        )
    assert found is None
    [warning] = logs
    assert (warning["event"], warning["log_level"]) == ("batch_candidates_ambiguous", "warning")
    assert warning["candidates"] == ["msgbatch_a", "msgbatch_b"]
    assert warning["part"] == 2


async def test_anthropic_a_candidate_deleted_before_its_results_are_read_is_not_taken(
    tmp_path: Path,
) -> None:
    part = part_file(tmp_path, ["k1", "k2", "k3"])
    gone = httpx.Response(
        404, json={"type": "error", "error": {"type": "not_found_error", "message": "gone"}}
    )
    pages = [[message_batch("msgbatch_gone", SINCE + 30, 3, ended=True)]]
    handler = paged(pages, [], results=lambda request: gone)
    assert (
        await anthropic_on(handler).find_submitted(part, metadata=MINE, since=SINCE, known=())
        is None
    )


async def test_anthropic_pages_with_after_id_until_a_page_is_older_than_the_part(
    tmp_path: Path,
) -> None:
    part = part_file(tmp_path, ["k1", "k2", "k3"])
    pages = [
        [message_batch("msgbatch_new", SINCE + 30, 5, ended=False)],
        [message_batch("msgbatch_old", SINCE - CLOCK_SLACK_S - 1, 3, ended=False)],
        [message_batch("msgbatch_older", SINCE - CLOCK_SLACK_S - 60, 3, ended=False)],
    ]
    seen: list[str] = []
    found = await anthropic_on(paged(pages, seen)).find_submitted(
        part, metadata=MINE, since=SINCE, known=()
    )
    assert found is None
    assert seen == [
        "GET /v1/messages/batches?limit=100",
        "GET /v1/messages/batches?limit=100&after_id=msgbatch_new",
    ]


async def test_anthropic_a_batch_without_a_readable_creation_time_is_raised(
    tmp_path: Path,
) -> None:
    part = part_file(tmp_path, ["k1"])
    item = {**message_batch("msgbatch_1", SINCE, 1, ended=False), "created_at": "yesterday"}
    with pytest.raises(TransientError, match="created_at"):
        await anthropic_on(paged([[item]], [])).find_submitted(
            part, metadata=MINE, since=SINCE, known=()
        )


# -- against the fake provider ------------------------------------------------------------------

FAST = {
    "batch_validating_s": 0.02,
    "batch_in_progress_s": 0.05,
    "batch_finalizing_s": 0.02,
    "batch_cancelling_s": 0.02,
}
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}


def requests(api: str, count: int, prefix: str) -> list[Request]:
    return [
        Request(
            row_id=f"{prefix}-{i}",
            request_key=f"{prefix}-{i:04d}",
            prompt_hash="p" * 16,
            provider=api,
            model=MODELS[api],
            system="Classify the sentiment of the review.",
            prompt=f"Review {i}: great kettle",
            max_tokens=16,
            temperature=0.0,
            est_input_tokens=12,
        )
        for i in range(count)
    ]


def write_part(
    provider: BatchProvider, folder: Path, rows: Sequence[Request], *, index: int = 1
) -> BatchPart:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"part-{index:04d}.jsonl"
    data = b"".join(provider.line(row) + b"\n" for row in rows)
    path.write_bytes(data)
    keys = rows[0].request_key, rows[-1].request_key
    return BatchPart(index, path, len(rows), len(data), *keys)


@asynccontextmanager
async def on_fake(api: str, **knobs: Any) -> AsyncIterator[tuple[FakeProvider, BatchProvider]]:
    async with running_fake_provider(FakeConfig(**{**FAST, **knobs})) as fake:
        provider: BatchProvider
        if api == "openai":
            provider = OpenAIBatchProvider(
                make_transport(), base_url=fake.openai_base_url, api_key=KEY
            )
        else:
            provider = AnthropicBatchProvider(
                make_transport(), base_url=fake.anthropic_base_url, api_key=KEY
            )
        try:
            yield fake, provider
        finally:
            await provider.aclose()


async def ended(provider: BatchProvider, batch_id: str) -> BatchState:
    """Poll until the batch has ended (at most 10 s)."""
    with anyio.fail_after(10):
        while True:
            state = await provider.poll(batch_id)
            if state.ended:
                return state
            await anyio.sleep(0.005)


def created(fake: FakeProvider, api: str) -> int:
    return fake.batch_accounting()["batches_created"][api]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_create_whose_answer_was_lost_is_found_and_not_made_again(
    tmp_path: Path, api: str
) -> None:
    rows = requests(api, 4, "row")
    async with on_fake(api, batch_create_lost=True, hang_s=0) as (fake, provider):
        part = write_part(provider, tmp_path, rows)
        since = time.time()
        if api == "anthropic":
            with pytest.raises(TransientError):  # the batch is made; its answer never comes
                await provider.submit(part, metadata=MINE)
            in_call = None
        else:  # OpenAI's submit looks for the batch over its own file before it gives up
            in_call = await provider.submit(part, metadata=MINE)
        fake.update_config(batch_create_lost=False)
        running = await provider.find_submitted(part, metadata=MINE, since=since, known=())
        assert running is not None
        state = await ended(provider, running.batch_id)
        again = await provider.find_submitted(part, metadata=MINE, since=since, known=())
        async with aclosing(provider.results(state)) as lines:  # type: ignore[type-var]
            keys = sorted([line.custom_id async for line in lines])
        assert created(fake, api) == 1
        assert fake.accounting()["faults"] == {"batch_create_lost": 1}
    if in_call is not None:
        assert in_call.batch_id == running.batch_id
    assert again is not None and again.batch_id == running.batch_id  # confirmed once ended
    assert keys == [row.request_key for row in rows]


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_part_never_created_is_not_found_beside_another_runs_batch_of_its_size(
    tmp_path: Path, api: str
) -> None:
    async with on_fake(api) as (fake, provider):
        since = time.time()
        mine = write_part(provider, tmp_path, requests(api, 4, "row"), index=2)
        assert await provider.find_submitted(mine, metadata=MINE, since=since, known=()) is None
        other_run = {**MINE, "run_id": "run-other"}
        other = write_part(provider, tmp_path / "other", requests(api, 4, "other"), index=2)
        submitted = await provider.submit(other, metadata=other_run)
        await ended(provider, submitted.batch_id)
        found = await provider.find_submitted(mine, metadata=MINE, since=since, known=())
        assert created(fake, api) == 1
    assert found is None


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_a_known_batch_is_never_found(tmp_path: Path, api: str) -> None:
    async with on_fake(api, batch_in_progress_s=5.0) as (fake, provider):
        since = time.time()
        part = write_part(provider, tmp_path, requests(api, 3, "row"))
        submitted = await provider.submit(part, metadata=MINE)
        unknown = await provider.find_submitted(part, metadata=MINE, since=since, known=())
        known = await provider.find_submitted(
            part, metadata=MINE, since=since, known={submitted.batch_id}
        )
        assert created(fake, api) == 1
    assert unknown is not None and unknown.batch_id == submitted.batch_id
    assert known is None


async def test_anthropic_two_running_batches_of_the_parts_size_are_left_alone(
    tmp_path: Path,
) -> None:
    async with on_fake("anthropic", batch_in_progress_s=5.0) as (fake, provider):
        since = time.time()
        first = write_part(provider, tmp_path, requests("anthropic", 3, "row"))
        second = write_part(provider, tmp_path / "b", requests("anthropic", 3, "twin"))
        made = [(await provider.submit(p, metadata={})).batch_id for p in (first, second)]
        with capture_logs() as logs:
            found = await provider.find_submitted(first, metadata={}, since=since, known=())
        assert created(fake, "anthropic") == 2
    assert found is None
    assert [entry["candidates"] for entry in logs] == [made[::-1]]
