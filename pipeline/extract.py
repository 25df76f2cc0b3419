"""Structured answers: a job's ``[request].schema``, checked once, applied to every answer.

Pure and synchronous: no I/O. ``pipeline.job`` uses it to check a schema and the few-shot
examples when a job file is loaded; ``pipeline.render`` to decide how providers are asked for the
schema; the runners to check every answer.

What an answer goes through (``Extractor.check``)::

    finish_reason length / max_tokens ──▶ invalid, error_type "truncated" (no follow-up: the
                                          same max_tokens would cut it off again)
    ```json fence around it ──────────▶ unwrapped
    not JSON ─────────────────────────▶ invalid, error_type "invalid_json"
    JSON that breaks the schema ──────▶ invalid, error_type "schema_violation"
    otherwise ────────────────────────▶ ok; the value, as compact JSON, goes to output_json

Invalid answers (but not truncated ones) get up to ``[request].invalid_retries`` follow-up turns
(``followup_prompt``) before the row is recorded with status ``invalid``.

OpenAI's strict mode (``openai_strict``) takes only a subset of JSON Schema; a schema outside it
is still sent, with ``"strict": false``, and every answer is validated here either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = [
    "ANSWER_TOOL",
    "SCHEMA_MODES",
    "SQL_TYPES",
    "TRUNCATED",
    "Extractor",
    "Verdict",
    "anthropic_cache_minimum",
    "check_schema",
    "extract_view_name",
    "followup_prompt",
    "json_instruction",
    "openai_strict",
    "schema_name",
    "sql_columns",
    "unwrap_fence",
]

SCHEMA_MODES: Final = ("enforce", "json")
"""``enforce``: the provider is made to follow the schema (OpenAI ``json_schema`` response
format, Anthropic forced tool); ``json``: the model is asked for JSON in the system prompt (OpenAI
``json_object``), for schemas a provider cannot enforce. Answers are validated here either way."""

ANSWER_TOOL: Final = "record"
"""The name of the one tool an Anthropic request must call in ``enforce`` mode."""

TRUNCATED: Final = frozenset({"length", "max_tokens", "MAX_TOKENS"})  # OpenAI, Anthropic, Gemini
"""Finish reasons that mean the answer was cut off (OpenAI, Anthropic)."""

SQL_TYPES: Final = ("VARCHAR", "BIGINT", "DOUBLE", "BOOLEAN", "JSON")

_SCALAR_SQL: Final = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "number": "DOUBLE",
    "boolean": "BOOLEAN",
}

# Keywords outside the subset of JSON Schema that OpenAI's strict mode accepts.
_NOT_STRICT: Final = frozenset(
    {
        "allOf",
        "oneOf",
        "not",
        "if",
        "then",
        "else",
        "dependentRequired",
        "dependentSchemas",
        "patternProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "contains",
        "minContains",
        "maxContains",
        "uniqueItems",
    }
)
_SUBSCHEMA_MAPS: Final = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS: Final = ("anyOf", "prefixItems")

# ```json ... ``` (or ``` ... ```) anywhere in the text; the first fence wins. The closing fence
# is one on a line of its own (so ``` inside a JSON string does not end it), else any ```.
_FENCE = re.compile(
    r"```[ \t]*(?:json5?|JSON|jsonc)?[ \t]*\r?\n(.*?)\r?\n[ \t]*```[ \t]*(?:\r?\n|$)", re.S
)
_LOOSE_FENCE = re.compile(r"```[ \t]*(?:json5?|JSON|jsonc)?[ \t]*\r?\n?(.*?)```", re.S)
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_MAX_ERRORS = 3
_MAX_MESSAGE = 300


def unwrap_fence(text: str) -> str:
    """The text inside the first markdown code fence (```json ... ```), or ``text`` itself when
    it starts like JSON or has no fence."""
    stripped = text.strip()
    if stripped[:1] in ("{", "[") or "```" not in stripped:
        return stripped
    found = _FENCE.search(stripped) or _LOOSE_FENCE.search(stripped)
    return found.group(1).strip() if found else stripped


@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``Extractor.check`` made of one answer: ``value_json`` (compact JSON) when it is
    valid, else ``error_type`` (``truncated``, ``invalid_json``, ``schema_violation``) and
    ``error``."""

    value_json: str | None
    error_type: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None

    @property
    def retryable(self) -> bool:
        """Whether a follow-up turn could fix it (a truncated answer would be cut off again)."""
        return self.error_type is not None and self.error_type != "truncated"


class Extractor:
    """A job's schema, compiled once: ``check`` parses and validates one answer.

    The validator is the one the schema's ``$schema`` names (Draft 2020-12 by default), with
    ``format`` checked (``date``, ``email`` ...), so a date the schema asks for is a real date.
    """

    __slots__ = ("_validator", "columns", "schema")

    def __init__(self, schema: Mapping[str, Any]) -> None:
        from jsonschema.validators import Draft202012Validator, validator_for

        cls = validator_for(schema, default=Draft202012Validator)
        self.schema = schema
        self._validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
        self.columns = sql_columns(schema)

    def check(self, text: str, finish_reason: str | None) -> Verdict:
        """Parse and validate one answer (see the module docstring for the order of checks)."""
        if finish_reason in TRUNCATED:
            return Verdict(
                None,
                "truncated",
                f"the answer was cut off at max_tokens (finish reason {finish_reason!r}); "
                "raise [request].max_tokens",
            )
        try:
            value = orjson.loads(unwrap_fence(text))
        except orjson.JSONDecodeError as exc:
            return Verdict(None, "invalid_json", f"the answer is not valid JSON ({exc})")
        problems = self.errors(value)
        if problems:
            return Verdict(None, "schema_violation", problems)
        return Verdict(orjson.dumps(value).decode())

    def errors(self, value: Any) -> str | None:
        """The first few ways ``value`` breaks the schema, most relevant first, or None."""
        from jsonschema.exceptions import relevance

        found = sorted(self._validator.iter_errors(value), key=relevance)
        if not found:
            return None
        parts = [f"{error.json_path}: {_short(error.message)}" for error in found[:_MAX_ERRORS]]
        if len(found) > _MAX_ERRORS:
            parts.append(f"and {len(found) - _MAX_ERRORS} more")
        return "; ".join(parts)


def _short(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 1] + "…"


def check_schema(schema: Any) -> str | None:
    """Why ``schema`` cannot be a job's answer schema, or None when it can.

    It must be a valid JSON Schema (``check_schema`` of the validator its ``$schema`` names,
    Draft 2020-12 by default) whose root is an object (``"type": "object"``): an answer is a
    record, its top-level properties become the typed columns of the job's extract view.
    """
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import Draft202012Validator, validator_for

    if not isinstance(schema, Mapping):
        return "must be a JSON object (a JSON Schema)"
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as exc:
        where = exc.json_path if exc.path else "the root"
        return f"not a valid JSON Schema: {_short(exc.message)} (at {where})"
    if schema.get("type") != "object":
        return (
            'its root must be an object (type = "object"): an answer is one record; wrap a '
            "list or a single value in an object property"
        )
    return None


def schema_name(schema: Mapping[str, Any], fallback: str | None = None) -> str:
    """A name for the schema as OpenAI wants one (``[A-Za-z0-9_-]{1,64}``): its ``title``, else
    ``fallback`` (the file's stem), else ``record``."""
    for candidate in (schema.get("title"), fallback):
        if isinstance(candidate, str):
            name = _NAME_CHARS.sub("_", candidate).strip("_")[:64]
            if name:
                return name
    return ANSWER_TOOL


def openai_strict(schema: Mapping[str, Any]) -> bool:
    """Whether OpenAI's strict mode can take ``schema`` as it is.

    Strict mode needs every object, at every level, to list all its properties in ``required``
    and to set ``additionalProperties`` to false, and takes only a subset of JSON Schema (no
    ``allOf``, ``oneOf``, ``not``, ``if``, ``patternProperties``, ``minProperties``,
    ``uniqueItems`` ...). A schema that qualifies is sent with ``"strict": true``; any other with
    ``"strict": false`` (the model is guided by it, and the answer is validated here).
    """
    if schema.get("type") != "object":
        return False
    return all(_strict_node(node) for node in _subschemas(schema))


def _strict_node(node: Any) -> bool:
    if not isinstance(node, Mapping):
        return False  # boolean schemas (true / false) are not in the strict subset
    if _NOT_STRICT.intersection(node):
        return False
    kind = node.get("type")
    is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
    if is_object or "properties" in node:
        properties = node.get("properties", {})
        required = node.get("required", [])
        if node.get("additionalProperties") is not False:
            return False
        if not isinstance(properties, Mapping) or not isinstance(required, list):
            return False
        if set(required) != set(properties):
            return False
    return True


def _subschemas(node: Any) -> Iterator[Any]:
    """``node`` and every schema nested in it (properties, items, $defs, anyOf ...)."""
    yield node
    if not isinstance(node, Mapping):
        return
    for key in _SUBSCHEMA_MAPS:
        children = node.get(key)
        if isinstance(children, Mapping):
            for child in children.values():
                yield from _subschemas(child)
    for key in _SUBSCHEMA_LISTS:
        children = node.get(key)
        if isinstance(children, list):
            for child in children:
                yield from _subschemas(child)
    for key in ("items", "additionalProperties"):
        child = node.get(key)
        if isinstance(child, Mapping):
            yield from _subschemas(child)


def json_instruction(schema: Mapping[str, Any]) -> str:
    """What the system prompt says in ``json`` mode: answer with JSON only, and the schema."""
    return (
        "Answer with one JSON object and nothing else: no prose before or after it, no "
        "markdown code fence. The JSON must validate against this JSON Schema:\n"
        + orjson.dumps(schema).decode()
    )


def followup_prompt(verdict: Verdict) -> str:
    """The user turn that answers an invalid answer: what was wrong, and what to send."""
    return (
        f"Your answer was not valid: {verdict.error}. Answer again with the whole corrected "
        "JSON object and nothing else."
    )


def sql_columns(schema: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(property, DuckDB type) for each top-level property of ``schema``, in schema order.

    ``string`` → VARCHAR, ``integer`` → BIGINT, ``number`` → DOUBLE, ``boolean`` → BOOLEAN;
    objects, arrays and anything else (several types, ``anyOf``) → JSON. A ``"null"`` next to
    one other type is ignored (``["string", "null"]`` is a nullable VARCHAR). A property that
    is a local ``$ref`` is typed by what it points to.
    """
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return ()
    return tuple((str(name), _sql_type(schema, sub)) for name, sub in properties.items())


def _sql_type(root: Mapping[str, Any], sub: Any) -> str:
    if isinstance(sub, Mapping) and isinstance(sub.get("$ref"), str):
        sub = _local_ref(root, sub["$ref"])
    if not isinstance(sub, Mapping):
        return "JSON"
    kind = sub.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
    if kind is None:
        enum = sub.get("enum")
        if isinstance(enum, list) and enum and all(isinstance(v, str) for v in enum):
            return "VARCHAR"
        return "JSON"
    return _SCALAR_SQL.get(kind, "JSON") if isinstance(kind, str) else "JSON"


def _local_ref(root: Mapping[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for raw in ref[2:].split("/"):
        key = raw.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def anthropic_cache_minimum(model: str) -> int:
    """The fewest prompt tokens Anthropic caches for ``model`` (its prompt-caching docs).

    1,024 for Sonnet- and Opus-class models (Claude Sonnet 4.5, Sonnet 4, Sonnet 3.7, Opus 4.1,
    Opus 4, Opus 3); 2,048 for Haiku-class models (Claude Haiku 3.5, Haiku 3) and Sonnet 4.6;
    4,096 for Claude Haiku 4.5 and Opus 4.5 and later. A shorter prefix marked for caching is
    sent and billed as usual, without being cached.
    """
    name = model.lower()
    if re.search(r"haiku-4|opus-4-[5-9]|opus-[5-9]", name):
        return 4096
    if "haiku" in name or re.search(r"sonnet-4-[6-9]", name):
        return 2048
    return 1024


def extract_view_name(job: str) -> str:
    """``extract_<job>``: the job's name lowercased, every run of characters other than a-z and
    0-9 made one ``_`` (``Invoice Extraction`` → ``extract_invoice_extraction``)."""
    slug = re.sub(r"[^a-z0-9]+", "_", job.lower()).strip("_")
    return f"extract_{slug or 'job'}"
