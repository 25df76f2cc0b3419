"""Providers: the only modules that touch the network.

Each provider takes an ``httpx`` transport (tests inject ``httpx.MockTransport``; jobs use the
aiohttp transport) and turns a normalised ``Request`` into a normalised ``Reply``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import httpx

from ..errors import ConfigError
from ..job import Job
from ..limits import ByteWindow
from ._base import Provider, make_transport
from ._batch import BatchProvider
from .anthropic import AnthropicProvider
from .openai import OpenAIProvider

__all__ = [
    "API_KEY_ENV",
    "AnthropicProvider",
    "BatchProvider",
    "OpenAIProvider",
    "Provider",
    "api_key_from_env",
    "make_batch_provider",
    "make_provider",
    "make_transport",
]

API_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def api_key_from_env(provider: str, env: Mapping[str, str] | None = None) -> str:
    """The provider's key, from the environment only; a clear ConfigError when it is missing."""
    env = os.environ if env is None else env
    name = API_KEY_ENV[provider]
    key = env.get(name, "").strip()
    if not key:
        raise ConfigError(
            f"{name} is not set; export it in the environment (keys are never read from "
            "job files), or run against the built-in fake provider with --fake"
        )
    return key


def make_provider(
    job: Job,
    *,
    api_key: str,
    base_url: str,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Provider:
    """The provider a job asks for, on the given (or a fresh aiohttp) transport."""
    http = transport or make_transport(max_connections=job.limits.concurrency)
    cls = OpenAIProvider if job.request.provider == "openai" else AnthropicProvider
    window = None
    if job.request.attachments:
        window = ByteWindow(round(job.limits.documents_in_flight_mb * 1_000_000))
    return cls(
        http,
        base_url=base_url,
        api_key=api_key,
        timeout_s=job.limits.timeout_s,
        documents_window=window,
    )


def make_batch_provider(
    job: Job,
    *,
    api_key: str,
    base_url: str,
    transport: httpx.AsyncBaseTransport | None = None,
) -> BatchProvider:
    """The batch endpoints of the job's provider, within the job's [batch] size limits."""
    http = transport or make_transport(max_connections=8)
    limits: dict[str, int] = {}
    if job.batch.max_requests is not None:
        limits["max_requests"] = job.batch.max_requests
    if job.batch.max_bytes is not None:
        limits["max_bytes"] = job.batch.max_bytes
    if job.request.provider == "openai":
        from .openai_batch import OpenAIBatchProvider

        return OpenAIBatchProvider(
            http, base_url=base_url, api_key=api_key, timeout_s=job.limits.timeout_s, **limits
        )
    from .anthropic_batch import AnthropicBatchProvider

    return AnthropicBatchProvider(
        http, base_url=base_url, api_key=api_key, timeout_s=job.limits.timeout_s, **limits
    )
