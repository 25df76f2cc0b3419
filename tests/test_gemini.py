"""Gemini: the request and answer shapes, Google's errors, and whole jobs on the fake, online and
in Batch Mode (inline and through an uploaded file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import ThreadedFakeProvider
from test_batch_runner import batch_accounting, make_job, results, run_state

from pipeline.cli import main
from pipeline.errors import FatalProviderError, RateLimitError, TransientError
from pipeline.fake import FakeConfig, running_fake_provider
from pipeline.job.pricing import cost_usd, lookup_price
from pipeline.limits.retry import classify_http_error
from pipeline.providers import api_key_from_env
from pipeline.providers._batch import BatchPart
from pipeline.providers.gemini import generate_body, parse_generate
from pipeline.providers.gemini_batch import GeminiBatchProvider
from pipeline.records import AnswerSchema, Framing, Request, Usage
from pipeline.redact import redact

# A key shaped like a real Google API key: it must never reach the database, a log or a file.
GEMINI_KEY = "AIza" + "SyD-gemini-SECRET-0123456789abcdefghi"


def request(**changes: Any) -> Request:
    base: dict[str, Any] = {
        "row_id": "r1",
        "request_key": "k1",
        "prompt_hash": "h",
        "provider": "gemini",
        "model": "gemini-2.5-flash",
        "system": "Be brief.",
        "prompt": "I love it",
        "max_tokens": 64,
        "temperature": 0.0,
        "est_input_tokens": 10,
    }
    return Request(**{**base, **changes})


# -- shapes ---------------------------------------------------------------------------------


def test_a_request_is_a_generate_content_body_with_system_examples_and_schema() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    framing = Framing(examples=(("hi", "hello"),), answer=AnswerSchema(schema, "answer"))
    body = generate_body(request(framing=framing, followups=(("bad", "fix it"),)))
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [(c["role"], c["parts"][0]["text"]) for c in body["contents"]] == [
        ("user", "hi"),
        ("model", "hello"),
        ("user", "I love it"),
        ("model", "bad"),
        ("user", "fix it"),
    ]
    assert body["generationConfig"] == {
        "maxOutputTokens": 64,
        "temperature": 0.0,
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }
    json_only = Framing(answer=AnswerSchema(schema, "answer", enforce=False))
    config = generate_body(request(framing=json_only))["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert "responseJsonSchema" not in config


def test_usage_metadata_lands_in_the_usual_columns() -> None:
    body = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"text": "thinking...", "thought": True}, {"text": "positive"}],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 1200,
            "cachedContentTokenCount": 1024,
            "candidatesTokenCount": 2,
            "thoughtsTokenCount": 30,
            "totalTokenCount": 1232,
        },
    }
    text, finish, usage = parse_generate(body)
    assert (text, finish) == ("positive", "STOP")
    assert usage == Usage(
        input_tokens=1200, output_tokens=32, cache_read_tokens=1024, reasoning_tokens=30
    )
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {}}
    assert parse_generate(blocked)[:2] == ("", "SAFETY")
    with pytest.raises(TransientError) as caught:
        parse_generate({"candidates": []})
    assert caught.value.error_type == "bad_response"


def _google(status: int, message: str, *details: dict[str, Any]) -> bytes:
    return orjson.dumps({"error": {"code": status, "message": message, "details": list(details)}})


def test_googles_errors_feed_the_same_retry_and_stop_rules() -> None:
    retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}
    per_minute = {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}],
    }
    limited = classify_http_error("gemini", 429, _google(429, "quota", per_minute, retry), {})
    assert isinstance(limited, RateLimitError) and limited.retry_after == 37.0
    per_day = {**per_minute, "violations": [{"quotaId": "GenerateRequestsPerDayPerProject"}]}
    daily = classify_http_error("gemini", 429, _google(429, "quota", per_day, retry), {})
    assert isinstance(daily, FatalProviderError) and daily.error_type == "insufficient_quota"
    bad_key = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
    denied = classify_http_error("gemini", 400, _google(400, "API key not valid", bad_key), {})
    assert isinstance(denied, FatalProviderError) and denied.error_type == "auth_failed"
    assert "GEMINI_API_KEY" in str(denied)
    busy = classify_http_error("gemini", 503, _google(503, "The model is overloaded."), {})
    assert busy.transient and busy.error_type == "overloaded"


def test_the_key_comes_from_gemini_api_key_or_google_api_key_and_is_redacted() -> None:
    assert api_key_from_env("gemini", {"GEMINI_API_KEY": "a-key"}) == "a-key"
    assert api_key_from_env("gemini", {"GOOGLE_API_KEY": "g-key"}) == "g-key"
    # Both set: GOOGLE_API_KEY, as the official SDK does.
    both = {"GEMINI_API_KEY": "a-key", "GOOGLE_API_KEY": "g-key"}
    assert api_key_from_env("gemini", both) == "g-key"
    assert redact(f"url?x=1 header {GEMINI_KEY} end") == "url?x=1 header [REDACTED] end"


# -- the fake's checks ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_fake_refuses_what_the_real_api_refuses() -> None:
    async with running_fake_provider() as fake, httpx.AsyncClient(base_url=fake.url) as client:
        url = "/v1beta/models/gemini-2.5-flash:generateContent"
        good = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        no_key = await client.post(url, json=good)
        assert no_key.status_code == 403
        assert no_key.json()["error"]["status"] == "PERMISSION_DENIED"
        headers = {"x-goog-api-key": "k"}
        snake = {**good, "generationConfig": {"max_output_tokens": 5}}
        refused = await client.post(url, json=snake, headers=headers)
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT"
        assert 'Unknown name "max_output_tokens"' in error["message"]
        bad_role = {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}
        assert (await client.post(url, json=bad_role, headers=headers)).status_code == 400
        schema_without_json = {
            **good,
            "generationConfig": {"responseJsonSchema": {"type": "object"}},
        }
        assert (
            await client.post(url, json=schema_without_json, headers=headers)
        ).status_code == 400
        answered = await client.post(url, json=good, headers=headers)
        assert answered.status_code == 200
        assert answered.json()["usageMetadata"]["promptTokenCount"] > 0
        fake.update_config(fail_model="gemini-2.5-flash")
        down = await client.post(url, json=good, headers=headers)
        assert (down.status_code, down.json()["error"]["status"]) == (503, "UNAVAILABLE")
        other = "/v1beta/models/gemini-2.5-flash-lite:generateContent"
        assert (await client.post(other, json=good, headers=headers)).status_code == 200


# -- whole jobs -----------------------------------------------------------------------------


def test_a_gemini_job_runs_online_with_usage_and_cost_and_no_key_anywhere(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    job = make_job(tmp_path, "gemini", 60)
    text = job.read_text().replace('mode = "batch"', 'mode = "online"')
    # gemini-2.5-flash thinks before it answers: its thoughts count against max_tokens.
    text = text.replace("gemini-2.5-flash-lite", "gemini-2.5-flash")
    job.write_text(text.replace("max_tokens = 5", "max_tokens = 64"))
    url = threaded_fake.base_url("gemini")
    assert main(["run", str(job), "--base-url", url, "--quiet"]) == 0
    rows = results(tmp_path)
    assert len(rows) == 60 and {r["status"] for r in rows} == {"ok"}
    assert {(r["provider"], r["model"], r["mode"]) for r in rows} == {
        ("gemini", "gemini-2.5-flash", "online")
    }
    assert {r["finish_reason"] for r in rows} == {"STOP"}
    assert {r["output_text"] for r in rows if int(r["row_id"][1:]) % 3 == 1} == {"negative"}
    price = lookup_price("gemini", "gemini-2.5-flash")
    assert price is not None and price.input_mtok > 0
    for r in rows:
        assert r["reasoning_tokens"] > 0 and r["output_tokens"] > r["reasoning_tokens"]
        usage = Usage(
            input_tokens=r["input_tokens"],
            output_tokens=r["output_tokens"],
            cache_read_tokens=r["cache_read_tokens"],
        )
        assert r["cost_usd"] == pytest.approx(cost_usd(price, usage))
    assert threaded_fake.accounting()["duplicates_paid"] == 0
    for path in [tmp_path / "r.duckdb", *(tmp_path / "runs").iterdir()]:
        if path.is_file():
            assert GEMINI_KEY.encode() not in path.read_bytes(), path


def test_the_rows_an_expired_gemini_batch_did_not_answer_go_online_paid_once(
    tmp_path: Path, threaded_fake: ThreadedFakeProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    threaded_fake.update_config(batch_expire_after=0.5)
    job = make_job(tmp_path, "gemini", 30, batch='on_unfinished = "online"')
    assert main(["run", str(job), "--base-url", threaded_fake.base_url("gemini"), "--quiet"]) == 0
    rows = results(tmp_path)
    assert len(rows) == 30 and {r["status"] for r in rows} == {"ok"}
    modes = [r["mode"] for r in rows]
    assert modes.count("batch") == 15 and modes.count("online") == 15
    assert batch_accounting(threaded_fake)["batches_created"]["gemini"] == 1
    assert threaded_fake.accounting()["duplicates_paid"] == 0
    assert run_state(tmp_path) == "completed"


@pytest.mark.anyio
async def test_a_large_part_is_uploaded_as_a_file_and_read_back_from_the_responses_file(
    tmp_path: Path,
) -> None:
    instant = FakeConfig(batch_validating_s=0, batch_in_progress_s=0, batch_finalizing_s=0)
    async with running_fake_provider(instant) as fake:
        client = GeminiBatchProvider(
            httpx.AsyncHTTPTransport(),
            base_url=fake.gemini_base_url,
            api_key="k",
            model="gemini-2.5-flash-lite",
            inline_max_bytes=0,  # every part goes through the Files API
        )
        texts = ["I love it", "terrible, want a refund", "it arrived"]
        path = tmp_path / "part-0001.jsonl"
        lines = [
            client.line(request(request_key=f"k{i}", prompt=t, model="gemini-2.5-flash-lite"))
            for i, t in enumerate(texts)
        ]
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        part = BatchPart(1, path, 3, path.stat().st_size, "k0", "k2")
        metadata = {"run_id": "run-1", "job": "g"}
        submitted = await client.submit(part, metadata=metadata)
        assert submitted.input_file_id is not None
        assert submitted.input_file_id.startswith("files/")
        again = await client.find_submitted(part, metadata=metadata, since=0, known=())
        assert again is not None and again.batch_id == submitted.batch_id
        other = await client.find_submitted(part, metadata={"run_id": "run-2"}, since=0, known=())
        assert other is None
        state = await client.poll(submitted.batch_id)
        assert state.status == "BATCH_STATE_SUCCEEDED" and state.succeeded == 3
        assert state.output_file_id is not None
        got = {line.custom_id: line async for line in client.results(state)}
        assert {k: v.reply.text for k, v in got.items() if v.reply} == {
            "k0": "positive",
            "k1": "negative",
            "k2": "neutral",
        }
        accounting = fake.batch_accounting()
        assert accounting["files_uploaded"] == 1
        assert accounting["lines_paid"]["gemini"] == 3
        await client.aclose()
