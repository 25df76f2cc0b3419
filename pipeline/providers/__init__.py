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
from .gemini import GeminiProvider
from .openai import OpenAIProvider

__all__ = [
    "API_KEY_ENV",
    "AnthropicProvider",
    "BatchProvider",
    "GeminiProvider",
    "OpenAIProvider",
    "Provider",
    "api_key_from_env",
    "make_batch_provider",
    "make_provider",
    "make_transport",
]

API_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
}
# Other variables a provider's key is read from, after the one above (as its official SDK does).
API_KEY_ENV_ALSO = {"gemini": ("GOOGLE_API_KEY",)}


def api_key_from_env(provider: str, env: Mapping[str, str] | None = None) -> str:
    """The provider's key, from the environment only; a clear ConfigError when it is missing.

    Gemini's key is ``GEMINI_API_KEY``, else ``GOOGLE_API_KEY`` (the google-genai SDK reads
    both; it prefers ``GOOGLE_API_KEY`` when both are set, and so does this).
    """
    env = os.environ if env is None else env
    names = (API_KEY_ENV[provider], *API_KEY_ENV_ALSO.get(provider, ()))
    for name in reversed(names):
        key = env.get(name, "").strip()
        if key:
            return key
    raise ConfigError(
        f"{' or '.join(names)} is not set; export it in the environment (keys are never read "
        "from job files), or run against the built-in fake provider with --fake"
    )


def make_provider(
    job: Job,
    *,
    api_key: str,
    base_url: str,
    transport: httpx.AsyncBaseTransport | None = None,
    fallback: bool = False,
) -> Provider:
    """The provider a job asks for (``fallback``: its ``[request.fallback]``): on aiohttp
    directly, at most ``[limits] concurrency`` connections, or through the httpx ``transport``
    given (tests). A job with attachments reads its files within a byte window of
    ``[limits] documents_in_flight_mb``."""
    provider, model = job.request.provider, job.request.model
    if fallback:
        spec = job.request.fallback
        if spec is None:
            raise ValueError(f"job {job.name!r} has no [request.fallback]")
        provider, model = spec.provider, spec.model
    timeout_s = job.limits.timeout_s
    connections = job.limits.concurrency
    window = None
    if job.request.attachments:
        window = ByteWindow(round(job.limits.documents_in_flight_mb * 1_000_000))
    if provider == "gemini":
        return GeminiProvider(
            transport,
            base_url=base_url,
            api_key=api_key,
            model=model,
            timeout_s=timeout_s,
            max_connections=connections,
            documents_window=window,
        )
    cls = OpenAIProvider if provider == "openai" else AnthropicProvider
    return cls(
        transport,
        base_url=base_url,
        api_key=api_key,
        timeout_s=timeout_s,
        max_connections=connections,
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
    if job.request.provider == "gemini":
        from .gemini_batch import GeminiBatchProvider

        return GeminiBatchProvider(
            http,
            base_url=base_url,
            api_key=api_key,
            model=job.request.model,
            timeout_s=job.limits.timeout_s,
            **limits,
        )
    if job.request.provider == "openai":
        from .openai_batch import OpenAIBatchProvider

        return OpenAIBatchProvider(
            http, base_url=base_url, api_key=api_key, timeout_s=job.limits.timeout_s, **limits
        )
    from .anthropic_batch import AnthropicBatchProvider

    return AnthropicBatchProvider(
        http, base_url=base_url, api_key=api_key, timeout_s=job.limits.timeout_s, **limits
    )
