"""Turn one input row into a provider-neutral ``Request``.

The job's ``[request]`` table is compiled once into a ``Renderer``; ``Renderer.render`` then fills
the prompt template from a row's fields and attaches the two keys that make reruns cheap:

- ``prompt_hash(spec)`` names the request *version*: provider, model, system prompt, prompt
  template, max_tokens and temperature. Changing any of them makes every row new work; changing
  only ``base_url`` (where requests go) does not.
- ``request_key(row_id, prompt_hash)`` names one row under one version. A row whose key already
  has a result in the store is not sent again.

Both are SHA-256 based, so they are the same in every process and on every machine.

Token counts here are *estimates* for rate-limit budgeting (see ``estimate_tokens``); billing
uses the usage the provider reports.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping
from typing import Any

import orjson

from .config import RequestSpec
from .errors import ConfigError, InputError
from .records import Request, Row

__all__ = [
    "MESSAGE_OVERHEAD_TOKENS",
    "REPLY_OVERHEAD_TOKENS",
    "Renderer",
    "estimate_tokens",
    "prompt_hash",
    "request_key",
    "template_fields",
]

# Chat formats wrap every message in a few tokens of framing (role, separators) and prime the
# reply with a few more; OpenAI documents 3 + 3. Rounded up so the estimate errs high.
MESSAGE_OVERHEAD_TOKENS = 4
REPLY_OVERHEAD_TOKENS = 3

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
    payload = orjson.dumps(
        [
            _RENDER_VERSION,
            spec.provider,
            spec.model,
            spec.system,
            spec.prompt,
            int(spec.max_tokens),
            temperature,
        ]
    )
    return hashlib.sha256(payload).hexdigest()[:16]


def request_key(row_id: str, prompt_hash: str) -> str:
    """24 hex chars naming one row under one request version."""
    return hashlib.sha256(f"{prompt_hash}\x1f{row_id}".encode()).hexdigest()[:24]


class Renderer:
    """A job's ``[request]`` table, compiled once; ``render`` turns rows into ``Request``\\ s.

    Templates use ``{field}`` for a row field (``{{`` / ``}}`` for literal braces); conversions
    and format specs (``{n:>5}``, ``{x!r}``) work as in ``str.format``. Attribute and index access
    (``{a.b}``, ``{a[0]}``) and positional ``{}`` are refused with ``ConfigError``. A field holding
    an object or a list is written as compact JSON, not as a Python repr; any other value via
    ``format``. The system prompt is used as written (it is not a template).
    """

    __slots__ = (
        "_fixed_tokens",
        "_template",
        "fields",
        "max_tokens",
        "model",
        "prompt_hash",
        "provider",
        "spec",
        "system",
        "temperature",
    )

    def __init__(self, spec: RequestSpec) -> None:
        self.spec = spec
        self.fields: tuple[str, ...] = template_fields(spec.prompt)
        self._template = spec.prompt
        self.prompt_hash = prompt_hash(spec)
        self.provider = spec.provider
        self.model = spec.model
        self.system = spec.system
        self.max_tokens = spec.max_tokens
        self.temperature = spec.temperature
        messages = 2 if spec.system else 1
        system_tokens = estimate_tokens(spec.system) if spec.system else 0
        self._fixed_tokens = (
            system_tokens + messages * MESSAGE_OVERHEAD_TOKENS + REPLY_OVERHEAD_TOKENS
        )

    def render(self, row: Row) -> Request:
        """The request for one row. Raises InputError if the row cannot fill the template."""
        values = row.fields
        for name in self.fields:
            if name not in values:
                raise self._missing(row, name)
            if type(values[name]) in _STRUCTURED:
                values = _with_json(values, self.fields)
                break
        try:
            prompt = self._template.format_map(values)
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"{_where(row)}: cannot format the row into [request].prompt ({exc}); "
                "fix the field's value or the format spec in the template",
                error_type="bad_field",
            ) from exc
        row_id = row.row_id
        return Request(
            row_id,
            request_key(row_id, self.prompt_hash),
            self.prompt_hash,
            self.provider,
            self.model,
            self.system,
            prompt,
            self.max_tokens,
            self.temperature,
            self._fixed_tokens + (len(prompt) + 3) // 4,
            row.source,
            row.line,
        )

    def _missing(self, row: Row, name: str) -> InputError:
        have = sorted(str(k) for k in row.fields)
        listed = ", ".join(have[:12]) + (", ..." if len(have) > 12 else "")
        return InputError(
            f"{_where(row)}: no field {name!r}, used by [request].prompt; add it to the row or "
            f"change the template (the row has: {listed or 'no fields'})",
            error_type="missing_field",
        )


def template_fields(template: str) -> tuple[str, ...]:
    """The row fields a prompt template uses, in order of first use.

    Raises ConfigError (key ``request.prompt``) for positional ``{}``, attribute or index
    access, or a malformed template.
    """
    found: dict[str, None] = {}
    _collect_fields(template, found, depth=0)
    return tuple(found)


def _collect_fields(template: str, found: dict[str, None], depth: int) -> None:
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
        if format_spec and "{" in format_spec and depth == 0:
            _collect_fields(format_spec, found, depth + 1)


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
