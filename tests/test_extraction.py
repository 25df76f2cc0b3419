"""Structured extraction: job keys, request bodies, answer checks, follow-ups, typed views.

Pure parts (``pipeline.extract``, the body builders) are tested directly; the runner against
``httpx.MockTransport`` (to script exactly which answer comes back) and against the fake
provider (which answers schema-valid JSON for an enforced schema); the demo job end to end
through ``pipeline.cli.main``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pytest
import structlog

import pipeline
from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.execution import RunOutcome
from pipeline.extract import (
    Extractor,
    check_schema,
    extract_view_name,
    openai_strict,
    sql_columns,
    unwrap_fence,
)
from pipeline.job import RequestSpec, parse_job
from pipeline.job.pricing import cost_usd, lookup_price
from pipeline.providers import make_batch_provider
from pipeline.providers.anthropic import messages_body, parse_message
from pipeline.providers.openai import chat_body
from pipeline.records import Request, Row, Usage
from pipeline.render import Renderer, prompt_hash
from pipeline.store import Store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``pipeline run`` configures structlog globally (to a log file it closes on exit): put
    the configuration back for the tests that come after."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


INVOICE_SCHEMA = orjson.loads((ROOT / "jobs" / "schemas" / "invoice.json").read_bytes())

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string"},
        "total": {"type": "number"},
        "paid": {"type": "boolean"},
        "items": {"type": "integer", "minimum": 0},
        "lines": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["vendor", "total", "paid", "items", "lines"],
    "additionalProperties": False,
}
VALID = {"vendor": "Acme", "total": 12.5, "paid": True, "items": 2, "lines": ["a", "b"]}


def spec(**overrides: Any) -> RequestSpec:
    values: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "prompt": "Document: {text}",
        "system": "You extract invoices.",
        "max_tokens": 200,
        "temperature": 0.0,
        "schema": SCHEMA,
        **overrides,
    }
    return RequestSpec(**values)


def render(request_spec: RequestSpec, text: str = "Invoice from Acme, total 12.50") -> Request:
    return Renderer(request_spec).render(Row("r1", {"text": text}, "in.jsonl", 1))


def job_text(tmp_path: Path, request: str, *, name: str = "extract", rows: str = "") -> str:
    return f"""
name = "{name}"

[input]
path = "{rows or tmp_path / "in.jsonl"}"
id = "id"

[request]
{request}

[limits]
concurrency = 4
max_attempts = 2
timeout_s = 5

[output]
db = "{tmp_path / "out.duckdb"}"
"""


# -- job keys --------------------------------------------------------------------------------------


def test_a_schema_file_examples_and_retries_load(tmp_path: Path) -> None:
    schema_file = tmp_path / "s.json"
    schema_file.write_bytes(orjson.dumps(SCHEMA))
    job = parse_job(
        job_text(
            tmp_path,
            f"""provider = "openai"
model = "gpt-4o-mini"
prompt = "{{text}}"
schema = "{schema_file}"
invalid_retries = 1
examples = [
  {{ input = "one", output = '{orjson.dumps(VALID).decode()}' }},
  {{ input = "two", output = {{ vendor = "B", total = 1, paid = false, items = 0, lines = [] }} }},
]""",
        )
    )
    r = job.request
    assert r.schema == SCHEMA
    assert r.schema_path == str(schema_file)
    assert r.schema_mode == "enforce"
    assert r.invalid_retries == 1
    assert r.examples[0] == ("one", orjson.dumps(VALID).decode())
    assert orjson.loads(r.examples[1][1]) == {
        "vendor": "B",
        "total": 1,
        "paid": False,
        "items": 0,
        "lines": [],
    }


def test_an_inline_schema_table_loads(tmp_path: Path) -> None:
    job = parse_job(
        job_text(
            tmp_path,
            """provider = "anthropic"
model = "claude-sonnet-4-5"
prompt = "{text}"
schema_mode = "json"

[request.schema]
type = "object"
required = ["label"]

[request.schema.properties.label]
type = "string"
enum = ["a", "b"]""",
        )
    )
    assert job.request.schema == {
        "type": "object",
        "required": ["label"],
        "properties": {"label": {"type": "string", "enum": ["a", "b"]}},
    }
    assert job.request.schema_mode == "json"
    assert job.request.invalid_retries == 2


@pytest.mark.parametrize(
    ("request_lines", "files", "message"),
    [
        ('schema = "nope.json"', {}, r"\[request\.schema\] schema file 'nope\.json' not found"),
        ('schema = "s.json"', {"s.json": b"{not json"}, r"'s\.json' is not valid JSON"),
        (
            'schema = "s.json"',
            {"s.json": b'{"type": "object", "properties": {"a": {"type": "strin"}}}'},
            r"schema file 's\.json': not a valid JSON Schema: .*strin.* \(at \$\.properties\.a",
        ),
        ('schema = "s.json"', {"s.json": b'{"type": "array"}'}, r"root must be an object"),
        ("schema = 3", {}, r"must be the path of a JSON Schema file or an inline table"),
        ('schema_mode = "json"', {}, r"\[request\.schema_mode\] only answers with a schema"),
        ("invalid_retries = 1", {}, r"\[request\.invalid_retries\] only answers with a schema"),
        (
            'schema = "s.json"\ninvalid_retries = -1',
            {"s.json": orjson.dumps(SCHEMA)},
            r"must be 0 or more",
        ),
        (
            'schema = "s.json"\nschema_mode = "strict"',
            {"s.json": orjson.dumps(SCHEMA)},
            r"'strict' is not one of: enforce, json",
        ),
        ('examples = "hi"', {}, r"\[request\.examples\] must be a list of tables"),
        ('examples = [{ input = "a" }]', {}, r"example 1 must be a table with exactly"),
        ('examples = [{ input = "", output = "x" }]', {}, r"example 1: input must be"),
        ('examples = [{ input = "a", output = 3 }]', {}, r"example 1: output must be"),
        (
            'schema = "s.json"\nexamples = [{ input = "a", output = \'{"vendor": 1}\' }]',
            {"s.json": orjson.dumps(SCHEMA)},
            r"example 1: output does not match the schema \(\$\.vendor: 1 is not of type",
        ),
        (
            'schema = "s.json"\nexamples = [{ input = "a", output = "not json" }]',
            {"s.json": orjson.dumps(SCHEMA)},
            r"example 1: output does not match the schema \(the answer is not valid JSON",
        ),
    ],
)
def test_mistakes_are_refused_at_load_naming_the_file_and_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request_lines: str,
    files: dict[str, bytes],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    text = job_text(
        tmp_path,
        f'provider = "openai"\nmodel = "gpt-4o-mini"\nprompt = "{{text}}"\n{request_lines}',
    )
    with pytest.raises(ConfigError, match=message) as info:
        parse_job(text, path="jobs/x.toml")
    assert str(info.value).startswith("jobs/x.toml: [request.")


def test_the_schema_and_examples_are_part_of_the_request_version() -> None:
    text_only = spec(schema=None)
    # A text job's version is what it always was (results of earlier runs stay done).
    legacy = orjson.dumps(["render-v1", "openai", "gpt-4o-mini", "You extract invoices."])
    legacy = legacy[:-1] + b',"Document: {text}",200,0.0]'
    assert prompt_hash(text_only) == hashlib.sha256(legacy).hexdigest()[:16]

    base = prompt_hash(spec())
    assert base != prompt_hash(text_only)
    assert base != prompt_hash(spec(schema={**SCHEMA, "required": ["vendor"]}))
    assert base != prompt_hash(spec(schema_mode="json"))
    assert base != prompt_hash(spec(examples=(("a", "{}"),)))
    assert prompt_hash(spec(examples=(("a", "{}"),))) != prompt_hash(spec(examples=(("b", "{}"),)))
    assert base == prompt_hash(spec(invalid_retries=0))
    # Key order inside the schema does not make a new version.
    reordered = dict(reversed(list(SCHEMA.items())))
    assert base == prompt_hash(spec(schema=reordered))


# -- request bodies --------------------------------------------------------------------------------


def test_openai_strict_only_for_schemas_strict_mode_takes() -> None:
    assert openai_strict(SCHEMA)
    assert openai_strict(INVOICE_SCHEMA)
    not_all_required = {**SCHEMA, "required": ["vendor"]}
    assert not openai_strict(not_all_required)
    open_object = {k: v for k, v in SCHEMA.items() if k != "additionalProperties"}
    assert not openai_strict(open_object)
    nested = {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {"type": "object", "properties": {"a": {"type": "string"}}},
            }
        },
        "required": ["items"],
        "additionalProperties": False,
    }
    assert not openai_strict(nested)  # the nested object is open and its "a" optional
    nested["properties"]["items"]["items"].update(required=["a"], additionalProperties=False)
    assert openai_strict(nested)
    for keyword, value in (("oneOf", [{"type": "string"}]), ("uniqueItems", True)):
        tweaked = {**SCHEMA, "properties": {**SCHEMA["properties"], "x": {keyword: value}}}
        tweaked["required"] = [*SCHEMA["required"], "x"]
        assert not openai_strict(tweaked), keyword


def test_openai_bodies_ask_for_the_schema_and_validate_against_the_published_spec() -> None:
    from _openapi import openai_validator

    validator = openai_validator("CreateChatCompletionRequest")
    strict = chat_body(render(spec()))
    assert strict["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "record", "schema": SCHEMA, "strict": True},
    }
    loose = chat_body(render(spec(schema={**SCHEMA, "required": ["vendor"], "title": "Inv 1"})))
    assert loose["response_format"]["json_schema"]["strict"] is False
    assert loose["response_format"]["json_schema"]["name"] == "Inv_1"
    json_mode = chat_body(render(spec(schema_mode="json")))
    assert json_mode["response_format"] == {"type": "json_object"}
    system = json_mode["messages"][0]["content"]
    assert system.startswith("You extract invoices.\n\n") and "JSON" in system
    assert orjson.dumps(SCHEMA).decode() in system
    with_turns = render(spec(examples=(("u1", "a1"), ("u2", "a2"))))
    followed = chat_body(
        Request(**{**_fields(with_turns), "followups": (("bad answer", "fix it"),)})
    )
    for body in (strict, loose, json_mode, followed):
        assert list(validator.iter_errors(body)) == []


def _fields(request: Request) -> dict[str, Any]:
    return {name: getattr(request, name) for name in Request.__dataclass_fields__}


def test_examples_come_before_the_row_and_follow_ups_after_it() -> None:
    request = render(spec(examples=(("u1", "a1"), ("u2", "a2"))))
    request = Request(**{**_fields(request), "followups": (("bad", "why"),)})
    openai_turns = [(m["role"], m["content"]) for m in chat_body(request)["messages"]]
    row = ("user", "Document: Invoice from Acme, total 12.50")
    assert openai_turns == [
        ("system", "You extract invoices."),
        ("user", "u1"),
        ("assistant", "a1"),
        ("user", "u2"),
        ("assistant", "a2"),
        row,
        ("assistant", "bad"),
        ("user", "why"),
    ]
    claude = spec(
        provider="anthropic", model="claude-sonnet-4-5", examples=(("u1", "a1"), ("u2", "a2"))
    )
    followed = {**_fields(render(claude)), "followups": (("bad", "why"),)}
    anthropic = messages_body(Request(**followed))
    assert [(m["role"], m["content"]) for m in anthropic["messages"]] == openai_turns[1:]
    assert anthropic["system"] == "You extract invoices."


def test_anthropic_is_made_to_call_one_tool_whose_input_is_the_answer() -> None:
    body = messages_body(render(spec(provider="anthropic", model="claude-sonnet-4-5")))
    assert body["tools"] == [
        {
            "name": "record",
            "description": "Record the answer: call this tool once, with input that follows "
            "its schema.",
            "input_schema": SCHEMA,
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "record"}
    assert body["messages"][-1]["role"] == "user"
    # json mode: no tool, the instruction in the system prompt, and no assistant prefill
    json_mode = messages_body(
        render(spec(provider="anthropic", model="claude-sonnet-4-5", schema_mode="json"))
    )
    assert "tools" not in json_mode and "tool_choice" not in json_mode
    assert "one JSON object" in json_mode["system"]
    assert json_mode["messages"][-1]["role"] == "user"

    text, stop, usage = parse_message(
        {
            "content": [{"type": "tool_use", "id": "t1", "name": "record", "input": VALID}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 5},
        }
    )
    assert orjson.loads(text) == VALID and stop == "tool_use" and usage.output_tokens == 5


def test_batch_lines_carry_the_same_bodies() -> None:
    job = parse_job(job_text(Path("/tmp"), 'provider = "openai"\nmodel = "m"\nprompt = "{text}"'))
    request = render(spec())
    openai_batch = make_batch_provider(job, api_key="k", base_url="http://127.0.0.1:1/v1")
    assert orjson.loads(openai_batch.line(request))["body"] == orjson.loads(
        orjson.dumps(chat_body(request))
    )
    anthropic_job = parse_job(
        job_text(Path("/tmp"), 'provider = "anthropic"\nmodel = "m"\nprompt = "{text}"')
    )
    anthropic_request = render(spec(provider="anthropic", model="claude-sonnet-4-5"))
    anthropic_batch = make_batch_provider(anthropic_job, api_key="k", base_url="http://x")
    params = orjson.loads(anthropic_batch.line(anthropic_request))["params"]
    assert params["tool_choice"] == {"type": "tool", "name": "record"}


# -- checking answers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "inner"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ('  ```json\n{"a": 1}\n```  ', '{"a": 1}'),
        ('```\n{"a": 1}\n```', '{"a": 1}'),
        ("```JSON\r\n[1, 2]\r\n```", "[1, 2]"),
        ('Here it is:\n```json\n{"a": "```"}\n```\nDone.', '{"a": "```"}'),
        ('{"code": "```json\\n1\\n```"}', '{"code": "```json\\n1\\n```"}'),
        ("no fence at all", "no fence at all"),
        ('```json {"a": 1}```', '{"a": 1}'),
    ],
)
def test_fences_are_unwrapped(text: str, inner: str) -> None:
    assert unwrap_fence(text) == inner


def test_answers_are_parsed_validated_or_refused_with_the_reason() -> None:
    extractor = Extractor(SCHEMA)
    ok = extractor.check("```json\n" + orjson.dumps(VALID).decode() + "\n```", "stop")
    assert ok.ok and orjson.loads(ok.value_json or "") == VALID
    assert ok.value_json == orjson.dumps(VALID).decode()

    cut = extractor.check('{"vendor": "Ac', "length")
    assert (cut.error_type, cut.retryable) == ("truncated", False)
    assert extractor.check(orjson.dumps(VALID).decode(), "max_tokens").error_type == "truncated"

    not_json = extractor.check("The vendor is Acme.", "stop")
    assert (not_json.error_type, not_json.retryable) == ("invalid_json", True)

    wrong = extractor.check(orjson.dumps({**VALID, "items": -1, "extra": 1}).decode(), "stop")
    assert wrong.error_type == "schema_violation"
    assert "$.items: -1 is less than the minimum of 0" in (wrong.error or "")
    assert "'extra' was unexpected" in (wrong.error or "")

    dated = Extractor({"type": "object", "properties": {"d": {"type": "string", "format": "date"}}})
    assert dated.check('{"d": "2024-02-30"}', "stop").error_type == "schema_violation"
    assert dated.check('{"d": "2024-02-29"}', "stop").ok


def test_schemas_the_job_cannot_use_are_explained() -> None:
    assert check_schema(SCHEMA) is None
    assert "root must be an object" in (check_schema({"type": "string"}) or "")
    assert "not a valid JSON Schema" in (check_schema({"type": "object", "required": 3}) or "")
    assert check_schema([]) == "must be a JSON object (a JSON Schema)"


def test_typed_columns_follow_the_top_level_properties() -> None:
    schema = {
        "type": "object",
        "$defs": {"money": {"type": "number"}},
        "properties": {
            "s": {"type": "string"},
            "maybe": {"type": ["integer", "null"]},
            "n": {"type": "number"},
            "b": {"type": "boolean"},
            "o": {"type": "object"},
            "a": {"type": "array"},
            "either": {"type": ["string", "number"]},
            "label": {"enum": ["x", "y"]},
            "ref": {"$ref": "#/$defs/money"},
            "any": {},
        },
    }
    assert sql_columns(schema) == (
        ("s", "VARCHAR"),
        ("maybe", "BIGINT"),
        ("n", "DOUBLE"),
        ("b", "BOOLEAN"),
        ("o", "JSON"),
        ("a", "JSON"),
        ("either", "JSON"),
        ("label", "VARCHAR"),
        ("ref", "DOUBLE"),
        ("any", "JSON"),
    )
    assert extract_view_name("Invoice Extraction-v2") == "extract_invoice_extraction_v2"
    assert extract_view_name("!!!") == "extract_job"


# -- the runner: follow-up turns, invalid and truncated answers ------------------------------------


def completion(content: str, finish: str = "stop", tokens: tuple[int, int] = (100, 20)) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": tokens[0],
                "completion_tokens": tokens[1],
                "total_tokens": sum(tokens),
            },
        }
    )


def run_scripted(
    tmp_path: Path,
    answers: Callable[[dict[str, Any], int], bytes],
    *,
    request_lines: str = "",
    rows: int = 1,
) -> tuple[RunOutcome, list[dict[str, Any]], list[httpx.Request]]:
    """One run of a schema job whose every answer comes from ``answers(body, n)`` (``n``:
    the request's number, from 0); the results and the requests sent."""

    (tmp_path / "s.json").write_bytes(orjson.dumps(SCHEMA))
    (tmp_path / "in.jsonl").write_bytes(
        b"".join(orjson.dumps({"id": f"r{i}", "text": f"doc {i}"}) + b"\n" for i in range(rows))
    )
    job = parse_job(
        job_text(
            tmp_path,
            f"""provider = "openai"
model = "gpt-4o-mini"
prompt = "Document: {{text}}"
schema = "{tmp_path / "s.json"}"
max_tokens = 300
{request_lines}""",
        )
    )
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, content=answers(orjson.loads(request.content), len(sent) - 1))

    outcome = pipeline.run(
        job, transport=httpx.MockTransport(handler), base_url="http://mock/v1", api_key="k"
    )
    with Store(job.output.db, read_only=True) as store:
        results = store.query("SELECT * EXCLUDE (finished_at) FROM results ORDER BY row_id")
    return outcome, results, sent


def test_an_invalid_answer_is_followed_up_with_the_validation_error(tmp_path: Path) -> None:
    bad = '```json\n{"vendor": "Acme", "total": "12.50"}\n```'
    good = orjson.dumps(VALID).decode()
    outcome, results, sent = run_scripted(
        tmp_path, lambda body, n: completion(bad if n == 0 else good, tokens=(100 + n, 20))
    )
    assert outcome.state == "completed" and outcome.stats.rows_ok == 1
    [row] = results
    assert row["status"] == "ok" and row["attempts"] == 2
    assert orjson.loads(row["output_json"]) == VALID
    assert row["output_text"] == good
    assert (row["input_tokens"], row["output_tokens"]) == (201, 40)  # both answers were paid
    price = lookup_price("openai", "gpt-4o-mini")
    assert row["cost_usd"] == pytest.approx(
        cost_usd(price, Usage(input_tokens=201, output_tokens=40))
    )
    first, second = (orjson.loads(r.content) for r in sent)
    assert len(second["messages"]) == len(first["messages"]) + 2
    assert second["messages"][:-2] == first["messages"]
    assert second["messages"][-2] == {"role": "assistant", "content": bad}
    follow_up = second["messages"][-1]
    assert follow_up["role"] == "user"
    assert "$.total: '12.50' is not of type 'number'" in follow_up["content"]
    assert "'paid' is a required property" in follow_up["content"]
    assert second["response_format"] == first["response_format"]
    # the follow-up is another paid request: its own client id, tied to the row's key
    key = row["request_key"]
    assert [r.headers["x-client-request-id"] for r in sent] == [key, f"{key}.1"]


def test_answers_that_stay_invalid_are_recorded_invalid_with_the_raw_text(tmp_path: Path) -> None:
    outcome, results, sent = run_scripted(
        tmp_path,
        lambda body, n: completion(f"Sorry, attempt {n}: no JSON here."),
        request_lines="invalid_retries = 2",
        rows=2,
    )
    assert outcome.state == "completed"
    assert (outcome.stats.rows_ok, outcome.stats.rows_invalid) == (0, 2)
    assert len(sent) == 6  # 1 + 2 follow-ups per row
    for row in results:
        assert row["status"] == "invalid" and row["error_type"] == "invalid_json"
        assert row["output_text"].startswith("Sorry, attempt") and row["output_json"] is None
        assert "not valid JSON" in row["error"]
        assert row["attempts"] == 3 and row["input_tokens"] == 300
        assert row["cost_usd"] > 0


def test_no_follow_up_when_invalid_retries_is_0(tmp_path: Path) -> None:
    _, [row], sent = run_scripted(
        tmp_path, lambda body, n: completion('{"vendor": 3}'), request_lines="invalid_retries = 0"
    )
    assert len(sent) == 1
    assert (row["status"], row["error_type"], row["attempts"]) == ("invalid", "schema_violation", 1)


def test_a_truncated_answer_is_invalid_at_once(tmp_path: Path) -> None:
    _, [row], sent = run_scripted(tmp_path, lambda body, n: completion('{"vendor": "Ac', "length"))
    assert len(sent) == 1
    assert (row["status"], row["error_type"], row["finish_reason"]) == (
        "invalid",
        "truncated",
        "length",
    )
    assert row["output_text"] == '{"vendor": "Ac'
    assert "max_tokens" in row["error"]


# -- against the fake provider ---------------------------------------------------------------------


def test_json_mode_on_the_fake_is_validated_and_followed_up(tmp_path: Path) -> None:
    """The fake answers JSON mode with {"sentiment": ...}: never a valid invoice."""
    (tmp_path / "in.jsonl").write_bytes(
        b"".join(orjson.dumps({"id": f"r{i}", "text": f"doc {i}"}) + b"\n" for i in range(3))
    )
    job = tmp_path / "job.toml"
    job.write_text(
        job_text(
            tmp_path,
            f"""provider = "openai"
model = "gpt-4o-mini"
prompt = "Document: {{text}}"
schema = "{ROOT / "jobs" / "schemas" / "invoice.json"}"
schema_mode = "json"
invalid_retries = 1""",
            name="json-mode",
        )
    )
    db = tmp_path / "out.duckdb"
    assert main(["run", str(job), "--fake", "--db", str(db), "--quiet"]) == 0
    with Store(db, read_only=True) as store:
        rows = store.query("SELECT status, error_type, error, attempts, output_text FROM results")
    assert len(rows) == 3
    for row in rows:
        assert (row["status"], row["error_type"], row["attempts"]) == (
            "invalid",
            "schema_violation",
            2,
        )
        assert "'vendor' is a required property" in row["error"]
        assert orjson.loads(row["output_text"]).keys() == {"sentiment"}


def test_the_demo_job_runs_end_to_end_on_the_fake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # the job's paths are relative to the repository
    subset = tmp_path / "invoices.jsonl"
    subset.write_bytes(
        b"".join((ROOT / "data" / "invoices.jsonl").read_bytes().splitlines(True)[:40])
    )
    db = tmp_path / "demo.duckdb"
    argv = ["run", "jobs/invoice_extraction.toml", "--fake", "--db", str(db), "--quiet"]
    assert main([*argv, "--input", str(subset)]) == 0

    con = duckdb.connect(str(db), read_only=True)
    try:
        statuses = con.execute("SELECT status, count(*) FROM results GROUP BY 1").fetchall()
        assert statuses == [("ok", 40)]
        types = dict(
            con.execute(
                "SELECT column_name, column_type FROM (DESCRIBE extract_invoices)"
            ).fetchall()
        )
        assert types == {
            "row_id": "VARCHAR",
            "run_id": "VARCHAR",
            "vendor": "VARCHAR",
            "invoice_number": "VARCHAR",
            "date": "VARCHAR",
            "currency": "VARCHAR",
            "line_items": "JSON",
            "total": "DOUBLE",
        }
        by_vendor = con.execute(
            "SELECT vendor, sum(total) AS total FROM extract_invoices GROUP BY 1 ORDER BY 1"
        ).fetchall()
        total = con.execute("SELECT sum((output_json ->> '$.total')::DOUBLE) FROM results")
        assert sum(n for _, n in by_vendor) == pytest.approx(total.fetchall()[0][0])
        assert len(by_vendor) > 1 and all(isinstance(v, str) for v, _ in by_vendor)
        extractor = Extractor(INVOICE_SCHEMA)
        for (text,) in con.execute("SELECT output_json::VARCHAR FROM results").fetchall():
            assert extractor.errors(orjson.loads(text)) is None
        assert con.execute("SELECT count(*) FROM extract_invoices").fetchone() == (40,)
    finally:
        con.close()


def test_the_view_shows_each_rows_latest_ok_answer(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(
        b"".join(orjson.dumps({"id": f"r{i}", "text": f"doc {i}"}) + b"\n" for i in range(4))
    )
    db = tmp_path / "out.duckdb"
    for prompt in ("Document: {text}", "Invoice: {text}"):  # two request versions
        job = tmp_path / "job.toml"
        job.write_text(
            job_text(
                tmp_path,
                f"""provider = "anthropic"
model = "claude-sonnet-4-5"
prompt = "{prompt}"
schema = "{ROOT / "jobs" / "schemas" / "invoice.json"}" """,
                name="Invoices v2",
            )
        )
        assert main(["run", str(job), "--fake", "--db", str(db), "--quiet"]) == 0
    with Store(db, read_only=True) as store:
        assert store.query("SELECT count(*) AS n FROM results") == [{"n": 8}]
        latest = store.query("SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 1")
        latest = latest[0]["run_id"]
        view = store.query("SELECT row_id, run_id FROM extract_invoices_v2 ORDER BY row_id")
    assert [r["row_id"] for r in view] == ["r0", "r1", "r2", "r3"]
    assert {r["run_id"] for r in view} == {latest}


def test_batch_mode_checks_answers_too(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(
        b"".join(orjson.dumps({"id": f"r{i}", "text": f"doc {i}"}) + b"\n" for i in range(5))
    )
    job = tmp_path / "job.toml"
    job.write_text(
        job_text(
            tmp_path,
            f"""provider = "openai"
model = "gpt-4o-mini"
prompt = "Document: {{text}}"
mode = "batch"
schema = "{ROOT / "jobs" / "schemas" / "invoice.json"}" """,
        )
    )
    db = tmp_path / "out.duckdb"
    assert main(["run", str(job), "--fake", "--db", str(db), "--quiet"]) == 0
    with Store(db, read_only=True) as store:
        rows = store.query("SELECT mode, status, output_json::VARCHAR AS j FROM results")
    assert len(rows) == 5
    extractor = Extractor(INVOICE_SCHEMA)
    for row in rows:
        assert (row["mode"], row["status"]) == ("batch", "ok")
        assert extractor.errors(orjson.loads(row["j"])) is None


# -- the store: status invalid and output_json in an old database ----------------------------------


_V1_ROW_RESULTS = """
CREATE TABLE row_results (
    job VARCHAR NOT NULL, run_id VARCHAR NOT NULL, row_id VARCHAR NOT NULL,
    request_key VARCHAR NOT NULL, prompt_hash VARCHAR,
    status VARCHAR NOT NULL CHECK (status IN ('ok', 'failed', 'input_error')),
    provider VARCHAR, model VARCHAR, mode VARCHAR, output_text VARCHAR, finish_reason VARCHAR,
    error_type VARCHAR, error VARCHAR, attempts INTEGER, input_tokens BIGINT,
    output_tokens BIGINT, cache_read_tokens BIGINT, cache_write_tokens BIGINT,
    reasoning_tokens BIGINT, cost_usd DOUBLE, latency_ms DOUBLE,
    finished_at TIMESTAMPTZ NOT NULL, source VARCHAR, line BIGINT
)
"""


def test_a_version_1_database_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    from pipeline.records import RowResult

    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TIMESTAMPTZ)")
    con.execute("INSERT INTO schema_version VALUES (1, now())")
    con.execute(_V1_ROW_RESULTS)
    con.execute(
        "INSERT INTO row_results VALUES ('j', 'run-1', 'r1', 'k1', 'h', 'ok', 'openai', 'm', "
        "'online', 'positive', 'stop', NULL, NULL, 1, 10, 1, 0, 0, 0, 0.5, 12.0, now(), "
        "'in.jsonl', 1)"
    )
    con.close()

    base = dict(
        job="j", run_id="run-2", row_id="r2", request_key="k2", prompt_hash="h",
        provider="openai", model="m", mode="online", output_text='{"a": 1}',
        finish_reason="stop", error_type="schema_violation", error="$.a: wrong", attempts=3,
        input_tokens=30, output_tokens=3, cache_read_tokens=0, cache_write_tokens=0,
        reasoning_tokens=0, cost_usd=0.1, latency_ms=5.0, finished_at=1.7e9,
        source="in.jsonl", line=2,
    )  # fmt: skip
    with Store(db) as store:
        store.results.write([RowResult(status="invalid", **base)])
        store.results.write(
            [RowResult(status="ok", **{**base, "row_id": "r3", "output_json": '{"a":1}'})]
        )
        rows = store.query(
            "SELECT row_id, status, output_json, fallback_from FROM results ORDER BY row_id"
        )
        versions = store.query("SELECT version FROM schema_version ORDER BY version")
    assert [(r["row_id"], r["status"]) for r in rows] == [
        ("r1", "ok"),
        ("r2", "invalid"),
        ("r3", "ok"),
    ]
    assert rows[0]["output_json"] is None and orjson.loads(rows[2]["output_json"]) == {"a": 1}
    assert versions == [{"version": v} for v in (1, 2, 3, 4)]
    assert {r["fallback_from"] for r in rows} == {None}  # version 3's column, added empty
    with Store(db) as store:  # opening again changes nothing
        assert store.query("SELECT count(*) AS n FROM schema_version") == [{"n": 4}]
        with pytest.raises(Exception, match="CHECK"):
            store.results.write([RowResult(status="maybe", **base)])


def test_rerun_failed_sends_invalid_rows_again(tmp_path: Path) -> None:
    outcome, results, _ = run_scripted(
        tmp_path, lambda body, n: completion("nope"), request_lines="invalid_retries = 0"
    )
    with Store(tmp_path / "out.duckdb", read_only=True) as store:
        keys, lines = store.results.not_ok_rows(outcome.run_id)
    assert keys == {results[0]["request_key"]} and lines == set()


def test_resuming_a_run_whose_schema_file_changed_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema_file = tmp_path / "s.json"
    schema_file.write_bytes(orjson.dumps(INVOICE_SCHEMA))
    (tmp_path / "in.jsonl").write_bytes(b'{"id": "r0", "text": "doc"}\n')
    job = tmp_path / "job.toml"
    job.write_text(
        job_text(
            tmp_path,
            f"""provider = "openai"
model = "gpt-4o-mini"
prompt = "Document: {{text}}"
schema = "{schema_file}" """,
        )
    )
    db = tmp_path / "out.duckdb"
    assert main(["run", str(job), "--fake", "--db", str(db), "--quiet"]) == 0
    with Store(db, read_only=True) as store:
        run_id = store.query("SELECT run_id FROM runs")[0]["run_id"]
    capsys.readouterr()
    assert main(["resume", run_id, "--db", str(db), "--fake", "--quiet"]) == 0
    schema_file.write_bytes(orjson.dumps({**INVOICE_SCHEMA, "title": "changed"}))
    assert main(["resume", run_id, "--db", str(db), "--fake", "--quiet"]) == 2
    assert f"the schema file {schema_file} of run {run_id} changed" in capsys.readouterr().err
