"""Validators for OpenAI's published OpenAPI schemas, for tests.

``openai_validator("CreateChatCompletionResponse").validate(body)`` checks a decoded body against
``#/components/schemas/<name>`` of OpenAI's official ``openapi.yaml`` (JSON Schema Draft 2020-12,
internal ``$ref``s resolved through ``referencing``). The YAML is loaded once per process (about a
second); each validator is built once.

The document is ``tests/specs/openai-openapi.yaml``, a copy of the file in the public repository
openai/openai-openapi (MIT licence, ``tests/specs/openai-openapi.LICENSE``), so a fresh clone
has everything it needs; ``$OPENAI_OPENAPI_SPEC`` points the tests at another copy.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = ["openai_validator"]

_DEFAULT_SPEC = Path(__file__).resolve().parent / "specs" / "openai-openapi.yaml"
_SPEC_URI = "urn:openai:openapi"


def _spec_path() -> Path:
    configured = os.environ.get("OPENAI_OPENAPI_SPEC")
    return Path(configured) if configured else _DEFAULT_SPEC


@functools.lru_cache(maxsize=1)
def _spec() -> tuple[dict[str, Any], Registry]:
    path = _spec_path()
    if not path.is_file():
        pytest.fail(f"OpenAI's openapi.yaml not found at {path} (set OPENAI_OPENAPI_SPEC)")
    with path.open("rb") as handle:
        document = yaml.load(handle, Loader=yaml.CSafeLoader)
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    return document, Registry().with_resource(_SPEC_URI, resource)


@functools.cache
def openai_validator(schema_name: str) -> Draft202012Validator:
    """A Draft 2020-12 validator for ``#/components/schemas/<schema_name>`` of OpenAI's spec."""
    document, registry = _spec()
    if schema_name not in document["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in OpenAI's openapi.yaml")
    return Draft202012Validator(
        {"$ref": f"{_SPEC_URI}#/components/schemas/{schema_name}"}, registry=registry
    )
