"""The batch state machine and input checks of the fake provider, on a clock the test holds."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.fake import FakeConfig
from pipeline.fake._batches import (
    AnthropicBatch,
    BatchLine,
    BatchTiming,
    OpenAIBatch,
    check_openai_input,
    processing_order,
    rfc3339,
)
from pipeline.fake._config import config_from_mapping

# Created at t=100 (monotonic) = 1,000,000 (wall): validating until 101, lines due from 101 to 111
# (one a second for ten lines), finalizing until 113; cancelling takes 3 s.
TIMING = BatchTiming(validating_s=1.0, in_progress_s=10.0, finalizing_s=2.0, cancelling_s=3.0)
T0 = 100.0
WALL = 1_000_000.0


class Services:
    """Answers every line 200 (or 500 when told to inject an error) and keeps the files."""

    def __init__(self) -> None:
        self.answered: list[str] = []
        self.files: dict[str, bytes] = {}
        self.counter = 0

    def new_id(self) -> str:
        self.counter += 1
        return f"{self.counter:04d}"

    def answer_openai_line(
        self, custom_id: str, body: Any, inject_error: bool
    ) -> tuple[int, dict[str, Any], str]:
        self.answered.append(custom_id)
        if inject_error:
            return 500, {"error": {"message": "boom", "type": "server_error"}}, self.new_id()
        usage = {
            "prompt_tokens": 10,
            "completion_tokens": 2,
            "total_tokens": 12,
            "prompt_tokens_details": {"cached_tokens": 0},
        }
        return 200, {"object": "chat.completion", "usage": usage}, self.new_id()

    def answer_anthropic_line(
        self, custom_id: str, params: Any, inject_error: bool
    ) -> dict[str, Any]:
        self.answered.append(custom_id)
        if inject_error:
            return {"type": "errored", "error": {"type": "error", "error": {"type": "api_error"}}}
        return {"type": "succeeded", "message": {"id": f"msg_{custom_id}"}}

    def store_file(self, filename: str, data: bytes, created_at: int) -> str:
        file_id = f"file-{len(self.files)}"
        self.files[file_id] = data
        return file_id


def input_file(count: int) -> bytes:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    return b"".join(
        orjson.dumps(
            {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        )
        + b"\n"
        for i in range(count)
    )


def openai_batch(
    count: int = 10,
    *,
    services: Services | None = None,
    error_rate: float = 0.0,
    expire_after: float | None = None,
    max_requests: int = 50_000,
    fail_validation: bool = False,
    timing: BatchTiming = TIMING,
) -> OpenAIBatch:
    return OpenAIBatch(
        input_file_id="file-in",
        input_data=input_file(count),
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=None,
        max_requests=max_requests,
        fail_validation=fail_validation,
        batch_id="batch_1",
        created=T0,
        wall_offset=WALL - T0,
        timing=timing,
        error_rate=error_rate,
        expire_after=expire_after,
        seed=1,
        services=services or Services(),
    )


def anthropic_batch(count: int = 4, services: Services | None = None) -> AnthropicBatch:
    return AnthropicBatch(
        lines=[BatchLine(f"r{i}", {}) for i in range(count)],
        batch_id="msgbatch_1",
        created=T0,
        wall_offset=WALL - T0,
        timing=TIMING,
        error_rate=0.0,
        expire_after=None,
        seed=1,
        services=services or Services(),
    )


def lines_of(data: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in data.splitlines()]


# -- the schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "status", "done"),
    [
        (100.0, "validating", 0),
        (100.99, "validating", 0),
        (101.0, "in_progress", 0),
        (101.99, "in_progress", 0),
        (102.0, "in_progress", 1),
        (106.5, "in_progress", 5),
        (110.99, "in_progress", 9),
        (111.0, "finalizing", 10),
        (112.99, "finalizing", 10),
        (113.0, "completed", 10),
    ],
)
def test_lines_fall_due_evenly_over_the_in_progress_phase(
    now: float, status: str, done: int
) -> None:
    batch = openai_batch()
    batch.advance(now)
    body = batch.to_json()
    assert body["status"] == status
    assert body["request_counts"]["completed"] == done
    assert body["request_counts"]["total"] == (0 if status == "validating" else 10)


def test_timestamps_are_the_schedules_not_the_moment_of_the_look() -> None:
    stepwise, at_once = openai_batch(), openai_batch()
    for now in (100.5, 103.7, 111.2, 500.0):
        stepwise.advance(now)
    at_once.advance(500.0)
    for batch in (stepwise, at_once):
        body = batch.to_json()
        assert body["created_at"] == 1_000_000
        assert body["in_progress_at"] == 1_000_001
        assert body["finalizing_at"] == 1_000_011
        assert body["completed_at"] == 1_000_013
        assert body["expires_at"] == 1_000_000 + 24 * 3600
        assert "failed_at" not in body and "cancelled_at" not in body
    assert stepwise.results == at_once.results


def test_lines_are_answered_in_a_shuffled_order_which_is_the_output_order() -> None:
    services = Services()
    batch = openai_batch(services=services)
    batch.advance(500.0)
    assert batch.output_file_id is not None
    output = [line["custom_id"] for line in lines_of(services.files[batch.output_file_id])]
    assert output == services.answered
    assert sorted(output) == sorted(f"r{i}" for i in range(10))
    assert output != [f"r{i}" for i in range(10)]


@given(st.integers(0, 200), st.integers())
def test_processing_order_is_a_permutation_and_never_the_input_order(count: int, seed: int) -> None:
    order = processing_order(count, random.Random(seed))
    assert sorted(order) == list(range(count))
    if count >= 2:
        assert order != list(range(count))
    assert order == processing_order(count, random.Random(seed))


def test_a_budget_catches_up_in_slices_to_the_same_end() -> None:
    sliced, whole = openai_batch(), openai_batch()
    calls = 0
    while not sliced.advance(500.0, budget=3):
        calls += 1
        assert sliced.done == 3 * calls
        assert sliced.to_json()["status"] == "in_progress"
    assert calls == 3  # 3 + 3 + 3 lines, then the last one and the remaining phases
    assert whole.advance(500.0)
    assert sliced.to_json() == whole.to_json()
    assert [raw for _, raw in sliced.results] == [raw for _, raw in whole.results]


def test_zero_in_progress_time_answers_every_line_at_the_start() -> None:
    timing = BatchTiming(validating_s=0.0, in_progress_s=0.0, finalizing_s=0.0, cancelling_s=0.0)
    batch = openai_batch(timing=timing)
    batch.advance(T0)
    assert batch.to_json()["status"] == "completed"
    assert batch.done == 10


# -- cancel and expiry --------------------------------------------------------------------------


def test_cancel_keeps_the_lines_due_by_then_and_ends_after_cancelling_s() -> None:
    services = Services()
    batch = openai_batch(services=services)
    assert batch.cancel(105.5)
    cancelling = batch.to_json()
    assert cancelling["status"] == "cancelling"
    assert cancelling["cancelling_at"] == 1_000_005
    batch.advance(108.49)
    assert batch.to_json()["status"] == "cancelling"
    batch.advance(200.0)
    body = batch.to_json()
    assert body["status"] == "cancelled" and body["cancelled_at"] == 1_000_008
    assert body["request_counts"] == {"total": 10, "completed": 4, "failed": 0}
    assert len(services.answered) == 4
    assert len(lines_of(services.files[body["output_file_id"]])) == 4
    assert "error_file_id" not in body
    assert not batch.cancel(300.0)  # ended: nothing to cancel
    assert batch.to_json()["status"] == "cancelled"


def test_cancel_before_validation_ends_with_no_lines() -> None:
    batch = openai_batch()
    assert batch.cancel(100.5)
    batch.advance(200.0)
    body = batch.to_json()
    assert body["status"] == "cancelled"
    assert body["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert "in_progress_at" not in body and "output_file_id" not in body


def test_expiry_after_a_share_of_lines_puts_the_rest_in_the_error_file() -> None:
    services = Services()
    batch = openai_batch(services=services, expire_after=0.35)
    batch.advance(103.99)
    assert batch.to_json()["status"] == "in_progress"
    batch.advance(500.0)
    body = batch.to_json()
    assert body["status"] == "expired"
    assert body["expired_at"] == 1_000_004  # when the third line was done
    assert body["request_counts"] == {"total": 10, "completed": 3, "failed": 7}
    assert len(services.answered) == 3
    errors = lines_of(services.files[body["error_file_id"]])
    assert [line["error"]["code"] for line in errors] == ["batch_expired"] * 7
    assert {line["custom_id"] for line in errors}.isdisjoint(services.answered)


def test_expire_after_zero_expires_at_the_start_with_nothing_answered() -> None:
    batch = openai_batch(expire_after=0.0)
    batch.advance(101.0)
    body = batch.to_json()
    assert body["status"] == "expired" and body["expired_at"] == 1_000_001
    assert "output_file_id" not in body


def test_error_draws_are_seeded() -> None:
    def failed(seed_batch: OpenAIBatch) -> list[str]:
        seed_batch.advance(500.0)
        return [
            orjson.loads(raw)["custom_id"] for succeeded, raw in seed_batch.results if not succeeded
        ]

    first = failed(openai_batch(error_rate=0.5))
    assert 0 < len(first) < 10
    assert failed(openai_batch(error_rate=0.5)) == first


# -- validation ---------------------------------------------------------------------------------


def test_input_checks_number_physical_lines_and_skip_blank_ones() -> None:
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}
    data = b"\n".join([orjson.dumps(line), b"", b"   ", orjson.dumps(line), b"[1, 2]", b""])
    lines, errors = check_openai_input(data, "/v1/chat/completions", 10)
    assert lines == []
    assert [(e["line"], e["code"]) for e in errors] == [
        (4, "duplicate_custom_id"),
        (5, "invalid_json_line"),
    ]


def test_input_checks_report_at_most_100_errors() -> None:
    _, errors = check_openai_input(b"nope\n" * 500, "/v1/chat/completions", 1000)
    assert len(errors) == 100
    assert errors[-1]["line"] == 100


def test_input_checks_count_requests_against_the_limit_before_parsing() -> None:
    _, errors = check_openai_input(b"nope\n" * 4, "/v1/chat/completions", 3)
    assert [(e["code"], e["line"], e["param"]) for e in errors] == [("too_many_tasks", None, None)]


def test_validation_failure_fails_at_the_end_of_validating() -> None:
    batch = openai_batch(max_requests=5)
    batch.advance(100.5)
    assert batch.to_json()["status"] == "validating"
    batch.advance(101.0)
    body = batch.to_json()
    assert body["status"] == "failed" and body["failed_at"] == 1_000_001
    assert body["errors"]["object"] == "list"
    assert [e["code"] for e in body["errors"]["data"]] == ["too_many_tasks"]
    assert "usage" not in body and "in_progress_at" not in body


def test_forced_validation_failure() -> None:
    batch = openai_batch(fail_validation=True)
    batch.advance(101.0)
    assert batch.to_json()["status"] == "failed"


# -- Anthropic ----------------------------------------------------------------------------------


def test_anthropic_counts_stay_processing_until_the_batch_ends() -> None:
    services = Services()
    batch = anthropic_batch(services=services)
    batch.advance(106.0)  # two of four lines done
    body = batch.to_json("http://127.0.0.1:1")
    assert body["processing_status"] == "in_progress"
    assert body["request_counts"]["processing"] == 4
    assert body["request_counts"]["succeeded"] == 0
    assert body["results_url"] is None and body["ended_at"] is None
    assert len(services.answered) == 2
    batch.advance(113.0)
    body = batch.to_json("http://127.0.0.1:1")
    assert body["processing_status"] == "ended"
    assert body["request_counts"] == {
        "processing": 0,
        "succeeded": 4,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert body["ended_at"] == rfc3339(1_000_013.0) == "1970-01-12T13:46:53.000000Z"
    assert body["results_url"] == "http://127.0.0.1:1/v1/messages/batches/msgbatch_1/results"


def test_anthropic_cancel_before_the_start_cancels_every_request() -> None:
    batch = anthropic_batch()
    assert batch.cancel(100.5)
    assert batch.to_json("http://h")["processing_status"] == "canceling"
    batch.advance(103.5)
    body = batch.to_json("http://h")
    assert body["processing_status"] == "ended"
    assert body["request_counts"]["canceled"] == 4
    assert body["cancel_initiated_at"] == rfc3339(1_000_000.5)
    assert batch.results_data is not None
    kinds = [line["result"]["type"] for line in lines_of(batch.results_data)]
    assert kinds == ["canceled"] * 4


# -- knobs --------------------------------------------------------------------------------------


def test_batch_knobs_have_well_behaved_defaults() -> None:
    config = FakeConfig()
    assert config.batch_error_rate == 0 and config.batch_expire_after is None
    assert not config.batch_fail_validation and not config.batch_create_lost
    phases = config.batch_validating_s + config.batch_in_progress_s + config.batch_finalizing_s
    assert 0.5 <= phases <= 1.5  # a batch ends in about a second
    assert (config.openai_batch_max_requests, config.openai_batch_max_bytes) == (
        50_000,
        200_000_000,
    )
    assert (config.anthropic_batch_max_requests, config.anthropic_batch_max_bytes) == (
        100_000,
        256_000_000,
    )


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"batch_expire_after": 2}, "batch_expire_after"),
        ({"batch_error_rate": 1.5}, "batch_error_rate"),
        ({"batch_in_progress_s": -1}, "batch_in_progress_s"),
        ({"anthropic_batch_max_bytes": 0}, "anthropic_batch_max_bytes"),
        ({"openai_batch_max_requests": 2.5}, "openai_batch_max_requests must be an integer"),
        ({"batch_fail_validation": 1}, "batch_fail_validation must be true or false"),
        ({"batch_create_lost": "yes"}, "batch_create_lost must be true or false"),
    ],
)
def test_batch_knobs_are_checked(knobs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        config_from_mapping(FakeConfig(), knobs)


def test_batch_knobs_come_from_json() -> None:
    changed = config_from_mapping(
        FakeConfig(),
        {"batch_expire_after": 0.5, "batch_in_progress_s": 2, "openai_batch_max_requests": 10},
    )
    assert changed.batch_expire_after == 0.5
    assert changed.batch_in_progress_s == 2.0 and isinstance(changed.batch_in_progress_s, float)
    assert changed.openai_batch_max_requests == 10
    assert config_from_mapping(changed, {"batch_expire_after": None}).batch_expire_after is None
