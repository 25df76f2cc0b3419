"""The official google-genai SDK against the fake provider: what it sends, the fake accepts, and
what the fake answers, the SDK parses (online, errors, Batch Mode inline and by file, Files)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ThreadedFakeProvider
from google import genai
from google.genai import errors, types


@pytest.fixture
def client(threaded_fake: ThreadedFakeProvider) -> Iterator[genai.Client]:
    options = types.HttpOptions(
        base_url=threaded_fake.provider.gemini_base_url,
        retry_options=types.HttpRetryOptions(attempts=1),  # the test sees every answer
    )
    with genai.Client(api_key="test-key", http_options=options) as sdk:
        yield sdk


def test_generate_content_with_system_instruction_config_and_usage(client: genai.Client) -> None:
    response = client.models.generate_content(
        model="gemini-2.5-flash",
        contents="Review: I love this kettle, great value.",
        config=types.GenerateContentConfig(
            system_instruction="Reply with one word.", max_output_tokens=64, temperature=0
        ),
    )
    assert response.text == "positive"
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count and usage.prompt_token_count > 0
    assert usage.candidates_token_count and usage.candidates_token_count > 0
    assert usage.thoughts_token_count and usage.thoughts_token_count > 0  # 2.5 Flash thinks


def test_a_json_schema_answer_parses_and_follows_the_schema(client: genai.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}},
        "required": ["sentiment"],
    }
    response = client.models.generate_content(
        model="gemini-2.5-flash-lite",
        contents="Terrible, it arrived broken.",
        config=types.GenerateContentConfig(
            response_mime_type="application/json", response_json_schema=schema
        ),
    )
    assert json.loads(response.text or "") in ({"sentiment": "positive"}, {"sentiment": "negative"})


def test_errors_reach_the_sdk_in_googles_shape(
    client: genai.Client, threaded_fake: ThreadedFakeProvider
) -> None:
    threaded_fake.update_config(fail_model="gemini-2.5-pro")
    with pytest.raises(errors.ServerError) as down:
        client.models.generate_content(model="gemini-2.5-pro", contents="hi")
    assert (down.value.code, down.value.status) == (503, "UNAVAILABLE")
    threaded_fake.update_config(requests_per_second=0.001, burst_s=1000)  # one request, then 429
    client.models.generate_content(model="gemini-2.5-flash-lite", contents="hi")
    with pytest.raises(errors.ClientError) as limited:
        client.models.generate_content(model="gemini-2.5-flash-lite", contents="hi")
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert "retryDelay" in json.dumps(limited.value.details)
    threaded_fake.update_config(requests_per_second=None, auth_fail=True)
    with pytest.raises(errors.ClientError) as denied:
        client.models.generate_content(model="gemini-2.5-flash-lite", contents="hi")
    assert denied.value.code == 400 and "API key not valid" in str(denied.value.message)


def _instant(fake: ThreadedFakeProvider) -> None:
    fake.update_config(batch_validating_s=0, batch_in_progress_s=0, batch_finalizing_s=0)


def test_an_inline_batch_is_created_listed_and_read(
    client: genai.Client, threaded_fake: ThreadedFakeProvider
) -> None:
    _instant(threaded_fake)
    texts = {"a": "I love it", "b": "terrible, want a refund"}
    job = client.batches.create(
        model="gemini-2.5-flash-lite",
        src=[
            {"contents": [{"role": "user", "parts": [{"text": t}]}], "metadata": {"key": k}}
            for k, t in texts.items()
        ],
        config={"display_name": "sdk-inline"},
    )
    assert job.name is not None and job.name.startswith("batches/")
    done = client.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.display_name == "sdk-inline"
    assert done.dest is not None and done.dest.inlined_responses is not None
    answers = {
        (r.metadata or {})["key"]: r.response.text
        for r in done.dest.inlined_responses
        if r.response is not None
    }
    assert answers == {"a": "positive", "b": "negative"}
    assert job.name in [b.name for b in client.batches.list(config={"page_size": 10})]


def test_a_file_batch_uploads_runs_and_downloads_its_responses_file(
    client: genai.Client, threaded_fake: ThreadedFakeProvider, tmp_path: Path
) -> None:
    _instant(threaded_fake)
    lines = [
        {"key": f"k{i}", "request": {"contents": [{"role": "user", "parts": [{"text": t}]}]}}
        for i, t in enumerate(["great, I love it", "worst one, refund", "it arrived"])
    ]
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    uploaded = client.files.upload(file=path, config={"mime_type": "application/jsonl"})
    assert uploaded.name is not None and uploaded.name.startswith("files/")
    assert uploaded.size_bytes == path.stat().st_size
    job = client.batches.create(model="gemini-2.5-flash-lite", src=uploaded.name)
    assert job.name is not None
    done = client.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.file_name is not None
    content = client.files.download(file=done.dest.file_name)
    got = {}
    for raw in content.decode().splitlines():
        line = json.loads(raw)
        got[line["key"]] = line["response"]["candidates"][0]["content"]["parts"][0]["text"]
    assert got == {"k0": "positive", "k1": "negative", "k2": "neutral"}
    accounting = threaded_fake.call(threaded_fake.provider.batch_accounting)
    assert accounting["files_uploaded"] == 1 and accounting["lines_paid"]["gemini"] == 3


def test_a_running_batch_can_be_cancelled(
    client: genai.Client, threaded_fake: ThreadedFakeProvider
) -> None:
    threaded_fake.update_config(batch_in_progress_s=600)
    job = client.batches.create(
        model="gemini-2.5-flash-lite",
        src=[{"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}],
    )
    assert job.name is not None
    client.batches.cancel(name=job.name)
    threaded_fake.update_config(batch_cancelling_s=0)
    state = client.batches.get(name=job.name).state
    assert state in (types.JobState.JOB_STATE_RUNNING, types.JobState.JOB_STATE_CANCELLED)
