"""The fake LLM provider: OpenAI chat completions and Anthropic messages on loopback.

No machine here can reach a real provider, so the product ships this one. It answers like the
real APIs (shapes, headers, errors, rate limits; the official SDKs accept it), deterministically
(the same request gets the same answer), and misbehaves on request (latency, 429s, 5xx, hangs,
dropped connections, malformed bodies) so the pipeline's retries can be shown to work. It counts
what it would have charged, per ``x-client-request-id``, so tests can prove nothing was paid
twice.

    async with running_fake_provider(FakeConfig(latency_ms=50, error_rate=0.1)) as fake:
        client = openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="test-key")
        ...
        fake.update_config(error_rate=0.0)
        assert fake.accounting()["duplicates_paid"] == 0

It also serves both providers' batch APIs (OpenAI ``/v1/files`` and ``/v1/batches``, Anthropic
``/v1/messages/batches``): batches move through their statuses on a clock set by the
``batch_*`` knobs (about a second by default), each line is answered exactly as the online
endpoint would answer it and paid under its ``custom_id``, and ``fake.batch_accounting()`` counts
the batches created and files uploaded:

    async with running_fake_provider(FakeConfig(batch_expire_after=0.5)) as fake:
        ...  # client.files.create(...), client.batches.create(...), poll, read the files
        assert fake.batch_accounting()["batches_created"]["openai"] == 1

From a shell: ``pipeline fake-provider --port 8765`` (``serve_forever``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._accounting import AccountingSnapshot
from ._config import FakeConfig

if TYPE_CHECKING:
    from ._server import FakeProvider, create_app, running_fake_provider, serve_forever

# The server (and aiohttp.web under it) is imported when first used: the `pipeline` command
# reads FakeConfig's knobs for its flags on every start, and serves nothing most of the time.
_SERVER_NAMES = ("FakeProvider", "create_app", "running_fake_provider", "serve_forever")


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        from . import _server

        return getattr(_server, name)
    raise AttributeError(f"module 'pipeline.fake' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})


__all__ = [
    "AccountingSnapshot",
    "FakeConfig",
    "FakeProvider",
    "create_app",
    "running_fake_provider",
    "serve_forever",
]
