"""Turn one input row into a provider-neutral ``Request``.

The job's ``[request]`` table is compiled once into a ``Renderer``; ``Renderer.render`` then fills
the prompt template from a row's fields and attaches the two keys that make reruns cheap:

- ``prompt_hash(spec)`` names the request *version*: provider, model, system prompt, prompt
  template, max_tokens and temperature, and, when the job has them, the answer schema (and
  ``schema_mode``) and the few-shot examples. Changing any of them makes every row new work;
  changing only ``base_url`` (where requests go) or ``invalid_retries`` does not.
- ``request_key(row_id, prompt_hash)`` names one row under one version. A row whose key already
  has a result in the store is not sent again.

Both are SHA-256 based, so they are the same in every process and on every machine.

Documents and images
    A job with ``attachments`` gets, for each row, the files (or URLs) its templates name, by
    reference (``Attachment``: headers only, see ``pipeline.documents``), checked against the
    provider's limits: a missing, unreadable, unsupported or oversized file is the row's
    ``InputError``. Their tokens (the providers' formulas) are part of the prompt estimate. A
    row's request key also covers the SHA-256 of every file it attaches (``Renderer.key``): the
    same content under the same name is done once; a file replaced by other content is new work.

Token counts here are *estimates* for rate-limit budgeting (see ``estimate_tokens``); billing
uses the usage the provider reports.

Structured answers and the prompt cache
    A job with a schema or few-shot examples gets one ``Framing`` shared by all its requests
    (``Request.framing``): the examples, the answer schema as the provider is told it
    (``pipeline.extract``), and where Anthropic's ``cache_control`` breakpoints go. The stable
    part of every request (tools, system prompt, examples) comes first, so both providers can
    cache it. Anthropic caches only what is marked, and only from a minimum length
    (``pipeline.extract.anthropic_cache_minimum``: 1,024 tokens for Sonnet/Opus-class models,
    2,048 for Haiku-class): the system prompt is marked when the tool schema plus the system
    prompt reach that minimum by this module's estimate, and the last example when everything up
    to it does. OpenAI caches prompts of 1,024 tokens or more by itself. ``Renderer.warm_cache``
    says the prefix is long enough to be cached: the runner then sends one request alone
    first, so the rest read the cache instead of all writing it at once.
"""

from __future__ import annotations

import hashlib
import os
import string
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson

from . import documents
from .errors import ConfigError, InputError
from .extract import (
    anthropic_cache_minimum,
    json_instruction,
    openai_strict,
    schema_name,
)
from .job import RequestSpec
from .job.config import format_spec_problem
from .records import AnswerSchema, Attachment, BadRow, Framing, Request, Row

__all__ = [
    "ANTHROPIC_TOOL_PROMPT_TOKENS",
    "MESSAGE_OVERHEAD_TOKENS",
    "OPENAI_CACHE_MINIMUM",
    "REPLY_OVERHEAD_TOKENS",
    "Renderer",
    "cached_prefix_tokens",
    "estimate_tokens",
    "framing",
    "prompt_hash",
    "request_key",
    "template_fields",
]

# Chat formats wrap every message in a few tokens of framing (role, separators) and prime the
# reply with a few more; OpenAI documents 3 + 3. Rounded up so the estimate errs high.
MESSAGE_OVERHEAD_TOKENS = 4
REPLY_OVERHEAD_TOKENS = 3
# Anthropic adds a system prompt of its own when a tool is forced: 313 to 346 tokens by model,
# as its tool-use documentation lists; the larger figure, for estimates and rate budgets.
ANTHROPIC_TOOL_PROMPT_TOKENS = 346

# OpenAI caches prompts from this many tokens on (automatically, no marking).
OPENAI_CACHE_MINIMUM = 1024

# Bump when the meaning of a rendered request changes (e.g. how fields are formatted), so that
# reruns do not reuse results made under the old rendering.
_RENDER_VERSION = "render-v1"

_STRUCTURED = (dict, list)


def estimate_tokens(text: str) -> int:
    """A cheap, deterministic token estimate: ``ceil(len(text) / 4)`` characters per token.

    Four characters per token is the usual figure for English with GPT and Claude tokenizers.
    It is 0 for the empty string, at least 1 otherwise, and never decreases as text grows. It
    underestimates text that is mostly CJK, emoji or unusual symbols (closer to one token per
    character); rate limits then see fewer tokens than the provider counts.
    """
    return (len(text) + 3) // 4


def prompt_hash(spec: RequestSpec) -> str:
    """16 hex chars naming the request version (everything that shapes the answer, not base_url)."""
    temperature = None if spec.temperature is None else float(spec.temperature)
    parts: list[Any] = [
        _RENDER_VERSION,
        spec.provider,
        spec.model,
        spec.system,
        spec.prompt,
        int(spec.max_tokens),
        temperature,
    ]
    # Only present when used, so that a text job's version stays what it always was.
    if spec.schema is not None:
        parts += ["schema", spec.schema, spec.schema_mode, _schema_name(spec)]
    if spec.examples:
        parts += ["examples", [list(pair) for pair in spec.examples]]
    if spec.attachments:
        parts += ["attachments", list(spec.attachments), spec.image_detail]
    payload = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()[:16]


def _schema_name(spec: RequestSpec) -> str:
    assert spec.schema is not None
    stem = spec.schema_path.rsplit("/", 1)[-1].split(".")[0] if spec.schema_path else None
    return schema_name(spec.schema, stem)


def framing(spec: RequestSpec) -> tuple[Framing | None, str | None, int, int]:
    """What every request of the job shares: ``(framing, system prompt as sent, tokens of the
    stable prefix, tokens the framing adds to each prompt)``.

    The framing is None for a plain text job whose prefix is too short to cache. In ``json``
    mode the system prompt gains the instruction to answer with JSON only, and the schema.
    """
    system = spec.system
    answer: AnswerSchema | None = None
    schema_tokens = 0
    if spec.schema is not None:
        enforce = spec.schema_mode == "enforce"
        description = spec.schema.get("description")
        answer = AnswerSchema(
            schema=spec.schema,
            name=_schema_name(spec),
            enforce=enforce,
            strict=enforce and openai_strict(spec.schema),
            description=description if isinstance(description, str) else "",
        )
        if enforce:
            schema_tokens = estimate_tokens(orjson.dumps(spec.schema).decode())
            if spec.provider == "anthropic":
                schema_tokens += ANTHROPIC_TOOL_PROMPT_TOKENS
        else:
            instruction = json_instruction(spec.schema)
            system = f"{system}\n\n{instruction}" if system else instruction
    system_tokens = estimate_tokens(system) if system else 0
    example_tokens = sum(
        estimate_tokens(user) + estimate_tokens(reply) + 2 * MESSAGE_OVERHEAD_TOKENS
        for user, reply in spec.examples
    )
    prefix_tokens = schema_tokens + system_tokens + example_tokens
    cache_system = cache_examples = False
    if spec.provider == "anthropic":
        minimum = anthropic_cache_minimum(spec.model)
        cache_system = bool(system) and schema_tokens + system_tokens >= minimum
        cache_examples = bool(spec.examples) and prefix_tokens >= minimum
    if answer is None and not spec.examples and not cache_system:
        return None, system, prefix_tokens, 0
    shared = Framing(
        examples=spec.examples,
        answer=answer,
        cache_system=cache_system,
        cache_examples=cache_examples,
    )
    return shared, system, prefix_tokens, schema_tokens + example_tokens


def cached_prefix_tokens(spec: RequestSpec) -> int:
    """Prompt tokens of each request that a warm prompt cache serves (0: nothing is cached).

    Anthropic caches what the job marks (system prompt and tool schema, then the examples, see
    ``framing``); OpenAI caches prompts of ``OPENAI_CACHE_MINIMUM`` tokens or more by itself,
    in steps of 128 tokens.
    """
    shared, _system, prefix_tokens, framing_tokens = framing(spec)
    if spec.provider == "anthropic":
        if shared is None:
            return 0
        if shared.cache_examples:
            return prefix_tokens
        if shared.cache_system:
            return prefix_tokens - (framing_tokens - _schema_tokens(spec))
        return 0
    if prefix_tokens < OPENAI_CACHE_MINIMUM:
        return 0
    return prefix_tokens // 128 * 128


def _schema_tokens(spec: RequestSpec) -> int:
    if spec.schema is None or spec.schema_mode != "enforce":
        return 0
    tokens = estimate_tokens(orjson.dumps(spec.schema).decode())
    return tokens + (ANTHROPIC_TOOL_PROMPT_TOKENS if spec.provider == "anthropic" else 0)


def request_key(row_id: str, prompt_hash: str) -> str:
    """24 hex chars naming one row under one request version."""
    return hashlib.sha256(f"{prompt_hash}\x1f{row_id}".encode()).hexdigest()[:24]


class Renderer:
    """A job's ``[request]`` table, compiled once; ``render`` turns rows into ``Request``\\ s.

    Templates use ``{field}`` for a row field (``{{`` / ``}}`` for literal braces); conversions
    and fixed format specs (``{n:>5}``, ``{x!r}``) work as in ``str.format``. Attribute and
    index access (``{a.b}``, ``{a[0]}``), positional ``{}``, a field inside a format spec
    (``{text:>{w}}``: a row's value would size the prompt) and a width or precision over
    ``MAX_FORMAT_WIDTH`` are refused with ``ConfigError``. A field holding
    an object or a list is written as compact JSON, not as a Python repr; any other value via
    ``format``. The system prompt is used as written (it is not a template).
    """

    __slots__ = (
        "_attachment_fields",
        "_attachments",
        "_fixed_tokens",
        "_root",
        "_template",
        "fields",
        "framing",
        "max_tokens",
        "model",
        "prompt_hash",
        "provider",
        "spec",
        "system",
        "temperature",
        "warm_cache",
    )

    def __init__(self, spec: RequestSpec) -> None:
        self.spec = spec
        self.fields: tuple[str, ...] = template_fields(spec.prompt)
        self._template = spec.prompt
        self.prompt_hash = prompt_hash(spec)
        self.provider = spec.provider
        self.model = spec.model
        self.framing, self.system, prefix_tokens, framing_tokens = framing(spec)
        self.max_tokens = spec.max_tokens
        self.temperature = spec.temperature
        self._attachments = spec.attachments
        found: dict[str, None] = {}
        for template in spec.attachments:
            found.update(dict.fromkeys(template_fields(template)))
        self._attachment_fields = tuple(found)
        root = spec.attachments_root
        self._root = None if root is None else os.path.realpath(root)
        messages = 2 if self.system else 1
        system_tokens = estimate_tokens(self.system) if self.system else 0
        self._fixed_tokens = (
            system_tokens
            + framing_tokens
            + messages * MESSAGE_OVERHEAD_TOKENS
            + REPLY_OVERHEAD_TOKENS
        )
        if spec.provider == "anthropic":
            self.warm_cache = self.framing is not None and (
                self.framing.cache_system or self.framing.cache_examples
            )
        else:
            self.warm_cache = prefix_tokens >= OPENAI_CACHE_MINIMUM

    def render(self, row: Row, key: str | None = None) -> Request:
        """The request for one row. Raises InputError if the row cannot fill the template.

        ``key``: the row's request key when the caller has it already (``key(row)``, which the
        planner computes for every row to look it up), so that it is not hashed twice."""
        values = row.fields
        structured = False
        for name in self.fields:
            if name not in values:
                raise self._missing(row, name)
            if type(values[name]) in _STRUCTURED:
                structured = True
        if structured:
            values = _with_json(values, self.fields)
        try:
            prompt = self._template.format_map(values)
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"{_where(row)}: cannot format the row into [request].prompt ({exc}); "
                "fix the field's value or the format spec in the template",
                error_type="bad_field",
            ) from exc
        row_id = row.row_id
        est = self._fixed_tokens + (len(prompt) + 3) // 4
        attachments: tuple[Attachment, ...] = ()
        if self._attachments:
            attachments = self._resolve(row, text_bytes=len(prompt) + len(self.system or ""))
            est += sum(a.tokens for a in attachments)
            if key is None:
                key = self._key(row_id, attachments)
        elif key is None:
            key = request_key(row_id, self.prompt_hash)
        return Request(
            row_id=row_id,
            request_key=key,
            prompt_hash=self.prompt_hash,
            provider=self.provider,
            model=self.model,
            system=self.system,
            prompt=prompt,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            est_input_tokens=est,
            source=row.source,
            line=row.line,
            framing=self.framing,
            attachments=attachments,
        )

    def retarget(self, request: Request, primary: Renderer) -> Request:
        """``request`` (rendered by ``primary``) for this renderer's provider and model, keeping
        its request key and version: the same row sent to ``[request.fallback]``, so that an
        answer from the fallback counts as the row's answer under the job's version."""
        return replace(
            request,
            provider=self.provider,
            model=self.model,
            system=self.system,
            framing=self.framing,
            est_input_tokens=request.est_input_tokens - primary._fixed_tokens + self._fixed_tokens,
        )

    def key(self, item: Row | BadRow) -> str:
        """The request key of a row, as ``render`` gives it, without rendering the prompt: the
        row id under this request version and, for a job with attachments, the content hash of
        every file the row attaches (a row whose files cannot be read keys by its id alone)."""
        if not self._attachments or isinstance(item, BadRow):
            return request_key(item.row_id, self.prompt_hash)
        try:
            attachments = self._resolve(item, text_bytes=None)
        except InputError:
            return request_key(item.row_id, self.prompt_hash)
        return self._key(item.row_id, attachments)

    def _key(self, row_id: str, attachments: tuple[Attachment, ...]) -> str:
        content = "\x1f".join(a.sha256 or a.location for a in attachments)
        return request_key(f"{row_id}\x1f{content}", self.prompt_hash)

    def _resolve(self, row: Row, *, text_bytes: int | None) -> tuple[Attachment, ...]:
        """The row's attachments, by reference, checked against the provider's limits (when
        ``text_bytes``, the size of the request's text, is given). A file must resolve into
        the spec's ``attachments_root`` (symlinks followed) before it is looked at; its
        ``Attachment`` names the real path, which is the one read when the request is sent.
        Raises InputError."""
        values = row.fields
        for name in self._attachment_fields:
            if name not in values:
                raise self._missing(row, name, "[request].attachments")
        provider, model, detail = self.provider, self.model, self.spec.image_detail
        out: list[Attachment] = []
        files: list[documents.FileFacts] = []
        urls = 0
        given: list[str] = []  # the files as the row names them
        for location in self._locations(row):
            try:
                if location.startswith(("http://", "https://")):
                    found = documents.url_attachment(location, provider, model, detail)
                    urls += found.kind == "image"
                else:
                    path = location
                    if self._root is not None:  # never opened unless it is inside the root
                        path = documents.confine(location, self._root)
                    facts = documents.inspect_file(path)
                    files.append(facts)
                    given.append(location)
                    found = documents.attachment(facts, provider, model, detail)
            except InputError as exc:
                raise _about(row, exc, location) from exc
            out.append(found)
        if text_bytes is not None:
            try:
                documents.check(provider, files, urls=urls, text_bytes=text_bytes)
            except InputError as exc:
                raise _about(row, exc, given[0] if len(given) == 1 else "") from exc
        return tuple(out)

    def _locations(self, row: Row) -> list[str]:
        """What the attachment templates name for a row: a template that is one field holding a
        list of strings names each of them."""
        out: list[str] = []
        for template in self._attachments:
            fields = template_fields(template)
            value = row.fields.get(fields[0]) if len(fields) == 1 else None
            if isinstance(value, list) and template.strip() == f"{{{fields[0]}}}":
                items = [str(v).strip() for v in value]
            else:
                try:
                    items = [template.format_map(_with_json(row.fields, fields)).strip()]
                except (ValueError, TypeError) as exc:
                    raise InputError(
                        f"{_where(row)}: cannot format the row into [request].attachments "
                        f"({exc}); fix the field's value or the template",
                        error_type="bad_field",
                    ) from exc
            for item in items:
                if not item:
                    raise InputError(
                        f"{_where(row)}: the attachment template {template!r} names no file "
                        "for this row (an empty value)",
                        error_type="missing_field",
                    )
                out.append(item)
        return out

    def _missing(self, row: Row, name: str, where: str = "[request].prompt") -> InputError:
        have = sorted(str(k) for k in row.fields)
        listed = ", ".join(have[:12]) + (", ..." if len(have) > 12 else "")
        return InputError(
            f"{_where(row)}: no field {name!r}, used by {where}; add it to the row or "
            f"change the template (the row has: {listed or 'no fields'})",
            error_type="missing_field",
        )


def _about(row: Row, exc: InputError, location: str) -> InputError:
    """``exc`` with the row it is about, unless the row is that very file (a glob of
    documents)."""
    if row.source and row.source != location:
        return InputError(f"{_where(row)}: {exc}", error_type=exc.error_type)
    return InputError(str(exc), error_type=exc.error_type)


def template_fields(template: str) -> tuple[str, ...]:
    """The row fields a prompt template uses, in order of first use.

    Raises ConfigError (key ``request.prompt``) for positional ``{}``, attribute or index
    access, a format spec that names a field or has a width over ``MAX_FORMAT_WIDTH``, or a
    malformed template.
    """
    found: dict[str, None] = {}
    _collect_fields(template, found)
    return tuple(found)


def _collect_fields(template: str, found: dict[str, None]) -> None:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(
            f"bad template ({exc}); write {{{{ or }}}} for a literal brace", key="request.prompt"
        ) from exc
    for _literal, name, format_spec, conversion in parsed:
        if name is None:
            continue
        if conversion not in (None, "r", "s", "a"):
            raise ConfigError(
                f"{{{name}!{conversion}}}: unknown conversion; use !s, !r or !a, or none",
                key="request.prompt",
            )
        if name == "" or name.isdigit():
            raise ConfigError(
                "positional {} placeholders are not allowed; name a row field, e.g. {text}, "
                "and write {{ or }} for a literal brace",
                key="request.prompt",
            )
        if "." in name or "[" in name:
            raise ConfigError(
                f"{{{name}}} uses attribute or index access, which is not supported; "
                "use a plain {field} (flatten nested data into its own field)",
                key="request.prompt",
            )
        found.setdefault(name, None)
        if format_spec:
            problem = format_spec_problem(name, format_spec)
            if problem is not None:
                raise ConfigError(problem, key="request.prompt")


def _with_json(values: Mapping[str, Any], used: tuple[str, ...]) -> dict[str, Any]:
    """The used fields, with objects and lists written as compact JSON."""
    out: dict[str, Any] = {}
    for name in used:
        value = values[name]
        if type(value) in _STRUCTURED:
            value = orjson.dumps(value, default=str).decode()
        out[name] = value
    return out


def _where(row: Row) -> str:
    if row.source:
        return f"{row.source} line {row.line} (row {row.row_id})"
    return f"row {row.row_id}"
