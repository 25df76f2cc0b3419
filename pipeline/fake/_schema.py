"""Schema-valid example values: the fake's "structured output". Pure and deterministic.

``example_for_schema(schema, seed, hint=...)`` returns a JSON value that validates against a JSON
Schema, chosen by a ``random.Random(seed)``: the same schema and seed always give the same value.

Understood: ``type`` (one type or a list), ``enum``, ``const``, ``properties`` / ``required``
(every listed property is filled in, as OpenAI's strict mode requires), ``minProperties`` /
``maxProperties``, ``items`` / ``prefixItems`` / ``minItems`` / ``maxItems`` / ``uniqueItems``,
``minimum`` / ``maximum`` / ``exclusiveMinimum`` / ``exclusiveMaximum`` / ``multipleOf``,
``minLength`` / ``maxLength``, a few string ``format`` values (date-time, date, time, email, uri,
uuid, ipv4, hostname), ``anyOf`` / ``oneOf`` (the first branch that is not ``null`` is used),
``allOf`` (merged) and local ``$ref`` (``#/$defs/...``, ``#/definitions/...``, any JSON pointer).
Not understood: ``pattern``, ``not``, ``if``/``then``/``else``, ``contains``, ``dependent*`` and
``patternProperties``; schemas that rely on them may get an invalid value.

``hint`` (the sentiment word of the request) is used where it fits: when it is one of an
``enum``'s values, and for a free string property named like a label (``sentiment``, ``label``,
``category`` ...), so a classification schema gets the same answer the plain-text mode gives.

``value_from_text(schema, text, seed)`` is the fake's reading of a document: each top-level
property is taken from a ``Label: value`` line whose label is the property's name (case and
``_`` / space ignored), and an array of objects from a table whose header row names the item's
properties (cells split on ``|``); values are converted to the property's type. What the text
does not hold is made up as above. It is no model: it reads what a document states in that
form, and nothing else.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Mapping
from typing import Any, Final, TypeGuard

import orjson

__all__ = ["example_for_schema", "value_from_text"]

# Beyond this depth only required properties and minItems items are produced, so recursive
# schemas end; beyond the hard limit a recursive schema that requires itself gives up.
_SOFT_DEPTH: Final = 8
_HARD_DEPTH: Final = 32

_LABEL_NAMES: Final = frozenset(
    {"sentiment", "label", "category", "classification", "class", "polarity", "verdict"}
)
_WORDS: Final = (
    "quality",
    "delivery",
    "price",
    "service",
    "product",
    "support",
    "battery",
    "design",
    "value",
    "package",
    "order",
    "update",
)


def example_for_schema(schema: Any, seed: int, *, hint: str | None = None) -> Any:
    """A value valid against ``schema``, the same every time for the same ``seed``."""
    return _Generator(schema, random.Random(seed), hint).value(schema, 0, None)


def value_from_text(schema: Any, text: str, seed: int, *, hint: str | None = None) -> Any:
    """A value for ``schema`` read from ``text`` where it says it (see the module docstring)."""
    value = example_for_schema(schema, seed, hint=hint)
    if not isinstance(value, dict) or not isinstance(schema, dict):
        return value
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return value
    lines = [line.strip() for line in text.splitlines()]
    labelled: dict[str, str] = {}
    for line in lines:
        label, sep, rest = line.partition(":")
        if sep and label and "|" not in label:
            labelled.setdefault(_norm(label), rest.strip())
    for name, sub in properties.items():
        if not isinstance(sub, dict):
            continue
        if _pick_type(sub) == "array" and isinstance(sub.get("items"), dict):
            rows = _table(lines, sub["items"])
            if rows is not None:
                value[name] = rows
            continue
        found = labelled.get(_norm(name))
        if found is not None:
            converted = _convert(found, sub)
            if converted is not _NOTHING:
                value[name] = converted
    return value


_NOTHING = object()


def _norm(label: str) -> str:
    return " ".join("".join(c if c.isalnum() else " " for c in label.lower()).split())


def _convert(text: str, schema: Mapping[str, Any]) -> Any:
    """``text`` as a value of ``schema``'s type, or ``_NOTHING`` when it is not one."""
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or ["string"])
    if "null" in kinds and text.lower() in ("", "none", "null", "n/a", "-"):
        return None
    enum = schema.get("enum")
    if isinstance(enum, list):
        return text if text in enum else _NOTHING
    if "number" in kinds or "integer" in kinds:
        cleaned = "".join(c for c in text if c.isdigit() or c in ".-")
        try:
            number = float(cleaned)
        except ValueError:
            return _NOTHING
        if "integer" in kinds and number.is_integer():
            return int(number)
        return number if "number" in kinds else _NOTHING
    if "boolean" in kinds:
        lowered = text.lower()
        return (
            True
            if lowered in ("yes", "true")
            else False
            if lowered in ("no", "false")
            else _NOTHING
        )
    if "string" in kinds and text:
        return text
    return _NOTHING


def _table(lines: list[str], items: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The rows of the first table whose header names ``items``' properties, or None."""
    properties = items.get("properties")
    if not isinstance(properties, dict) or not properties:
        return None
    wanted = {_norm(name): name for name in properties}
    for start, line in enumerate(lines):
        if "|" not in line:
            continue
        header = [_norm(cell) for cell in line.split("|")]
        if not set(wanted) <= set(header):
            continue
        rows: list[dict[str, Any]] = []
        for row_line in lines[start + 1 :]:
            if "|" not in row_line:
                break
            cells = [cell.strip() for cell in row_line.split("|")]
            if len(cells) != len(header):
                break
            row: dict[str, Any] = {}
            for label, cell in zip(header, cells, strict=True):
                name = wanted.get(label)
                if name is None:
                    continue
                converted = _convert(cell, properties[name])
                if converted is _NOTHING:
                    return None
                row[name] = converted
            rows.append(row)
        return rows
    return None


class _Generator:
    __slots__ = ("_hint", "_rng", "_root")

    def __init__(self, root: Any, rng: random.Random, hint: str | None) -> None:
        self._root = root
        self._rng = rng
        self._hint = hint

    # -- dispatch ---------------------------------------------------------------------------

    def value(self, schema: Any, depth: int, name: str | None) -> Any:
        if depth > _HARD_DEPTH:
            return None
        if not isinstance(schema, dict):
            # ``true`` (or a missing schema) accepts anything.
            return self._phrase()
        schema = self._expand(schema)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            if self._hint is not None and self._hint in enum:
                return self._hint
            return self._rng.choice(enum)
        kind = _pick_type(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "string":
            return self._string(schema, name)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self._rng.random() < 0.5
        return None

    def _expand(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Resolve ``$ref``, ``allOf``, ``anyOf`` and ``oneOf`` into one flat schema."""
        for _ in range(_HARD_DEPTH):
            ref = schema.get("$ref")
            if isinstance(ref, str):
                rest = {k: v for k, v in schema.items() if k != "$ref"}
                target = self._resolve(ref)
                schema = _merge(target, rest) if isinstance(target, dict) else rest
                continue
            all_of = schema.get("allOf")
            if isinstance(all_of, list):
                merged = {k: v for k, v in schema.items() if k != "allOf"}
                for sub in all_of:
                    if isinstance(sub, dict):
                        merged = _merge(merged, sub)
                schema = merged
                continue
            for keyword in ("anyOf", "oneOf"):
                options = schema.get(keyword)
                if isinstance(options, list) and options:
                    chosen = next(
                        (o for o in options if isinstance(o, dict) and o.get("type") != "null"),
                        options[0],
                    )
                    rest = {k: v for k, v in schema.items() if k != keyword}
                    schema = _merge(rest, chosen) if isinstance(chosen, dict) else rest
                    break
            else:
                return schema
        return schema

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return True  # remote references are not fetched: anything goes
        node: Any = self._root
        for raw in ref[1:].split("/"):
            if not raw:
                continue
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return True
        return node

    # -- kinds ------------------------------------------------------------------------------

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required_list = schema.get("required")
        required = set(required_list) if isinstance(required_list, list) else set()
        shallow = depth < _SOFT_DEPTH
        out: dict[str, Any] = {}
        for key, sub in properties.items():
            if shallow or key in required:
                out[key] = self.value(sub, depth + 1, key)
        extra = schema.get("additionalProperties", True)
        for key in sorted(k for k in required if k not in out and isinstance(k, str)):
            out[key] = self.value(extra, depth + 1, key)
        min_properties = schema.get("minProperties")
        if isinstance(min_properties, int) and extra is not False:
            index = 0
            while len(out) < min_properties:
                key = f"extra_{index}"
                index += 1
                if key not in out:
                    out[key] = self.value(extra, depth + 1, key)
        max_properties = schema.get("maxProperties")
        if isinstance(max_properties, int):
            for key in [k for k in out if k not in required][::-1]:
                if len(out) <= max_properties:
                    break
                del out[key]
        return out

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        min_items = schema.get("minItems")
        min_items = min_items if isinstance(min_items, int) else 0
        max_items = schema.get("maxItems")
        count = max(self._rng.randint(1, 3), min_items) if depth < _SOFT_DEPTH else min_items
        if isinstance(max_items, int):
            count = min(count, max_items)
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items", True)
        if items is False:
            count = min(count, len(prefix))
        unique = schema.get("uniqueItems") is True
        out: list[Any] = []
        seen: set[bytes] = set()
        attempts = 0
        while len(out) < count and attempts < 10 * count + 10:
            attempts += 1
            index = len(out)
            sub = prefix[index] if index < len(prefix) else items
            item = self.value(sub, depth + 1, None)
            if unique:
                key = orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
                if key in seen:
                    continue
                seen.add(key)
            out.append(item)
        return out

    def _string(self, schema: Mapping[str, Any], name: str | None) -> str:
        rng = self._rng
        fmt = schema.get("format")
        text: str
        if fmt == "date-time":
            day = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
            text = f"{day}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
        elif fmt == "date":
            text = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        elif fmt == "time":
            text = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z"
        elif fmt == "email":
            text = f"{rng.choice(_WORDS)}{rng.randint(1, 999)}@example.com"
        elif fmt in ("uri", "url", "iri"):
            text = f"https://example.com/{rng.choice(_WORDS)}"
        elif fmt == "uuid":
            text = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        elif fmt == "ipv4":
            text = f"192.0.2.{rng.randint(1, 254)}"
        elif fmt == "hostname":
            text = f"{rng.choice(_WORDS)}.example.com"
        elif self._hint is not None and name is not None and name.lower() in _LABEL_NAMES:
            text = self._hint
        else:
            text = self._phrase()
        max_length = schema.get("maxLength")
        if isinstance(max_length, int) and len(text) > max_length:
            text = text[:max_length]
        min_length = schema.get("minLength")
        if isinstance(min_length, int) and len(text) < min_length:
            text += "x" * (min_length - len(text))
        return text

    def _phrase(self) -> str:
        return f"{self._rng.choice(_WORDS)} {self._rng.choice(_WORDS)}"

    def _integer(self, schema: Mapping[str, Any]) -> int:
        low: int | None = None
        high: int | None = None
        minimum, exclusive_min = schema.get("minimum"), schema.get("exclusiveMinimum")
        maximum, exclusive_max = schema.get("maximum"), schema.get("exclusiveMaximum")
        if _is_number(minimum):
            low = math.ceil(minimum)
        if _is_number(exclusive_min):
            above = math.floor(exclusive_min) + 1
            low = above if low is None else max(low, above)
        if _is_number(maximum):
            high = math.floor(maximum)
        if _is_number(exclusive_max):
            below = math.ceil(exclusive_max) - 1
            high = below if high is None else min(high, below)
        low, high = _default_range(low, high)
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool) and step > 0:
            first, last = -(-low // step), high // step
            if first <= last:
                return self._rng.randint(first, last) * step
        if high < low:
            return low  # unsatisfiable bounds: nothing valid exists
        return self._rng.randint(low, high)

    def _number(self, schema: Mapping[str, Any]) -> float | int:
        low, high = -math.inf, math.inf
        low_strict = high_strict = False
        minimum, exclusive_min = schema.get("minimum"), schema.get("exclusiveMinimum")
        maximum, exclusive_max = schema.get("maximum"), schema.get("exclusiveMaximum")
        if _is_number(minimum):
            low = float(minimum)
        if _is_number(exclusive_min) and exclusive_min >= low:
            low, low_strict = float(exclusive_min), True
        if _is_number(maximum):
            high = float(maximum)
        if _is_number(exclusive_max) and exclusive_max <= high:
            high, high_strict = float(exclusive_max), True

        bound_low, bound_high = low, high

        def fits(value: float) -> bool:
            above = value > bound_low if low_strict else value >= bound_low
            below = value < bound_high if high_strict else value <= bound_high
            return above and below

        if low == -math.inf and high == math.inf:
            low, high = 0.0, 100.0
        elif low == -math.inf:
            low = high - 100.0
        elif high == math.inf:
            high = low + 100.0
        step = schema.get("multipleOf")
        if _is_number(step) and step > 0:
            first, last = math.ceil(low / step), math.floor(high / step)
            for _ in range(20):
                if first > last:
                    break
                multiple = self._rng.randint(first, last) * step
                if fits(multiple) and _is_multiple(multiple, step):
                    return multiple
            if fits(0) and _is_multiple(0, step):
                return 0
        drawn = self._rng.uniform(low, high)
        for candidate in (round(drawn, 2), drawn, (low + high) / 2):
            if fits(candidate):
                return candidate
        return low


def _pick_type(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, str):
        return kind
    if isinstance(kind, list) and kind:
        return next((k for k in kind if k != "null" and isinstance(k, str)), "null")
    if "properties" in schema or "required" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema or "minItems" in schema:
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return "number"
    return "string"


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if key == "properties" and isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = {**merged[key], **value}
        elif key == "required" and isinstance(merged.get(key), list) and isinstance(value, list):
            merged[key] = [*merged[key], *(v for v in value if v not in merged[key])]
        else:
            merged[key] = value
    return merged


def _default_range(low: int | None, high: int | None) -> tuple[int, int]:
    if low is None and high is None:
        return 0, 100
    if low is None:
        assert high is not None
        return (0 if high >= 0 else high - 100), high
    if high is None:
        return low, low + 100
    return low, high


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_multiple(value: float, step: float) -> bool:
    """The check jsonschema makes for ``multipleOf`` (exact for ints, quotient for floats)."""
    if isinstance(step, float) or isinstance(value, float):
        quotient = value / step
        return math.isfinite(quotient) and int(quotient) == quotient
    return value % step == 0
