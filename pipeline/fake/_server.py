"""The fake provider's HTTP server (aiohttp) and its lifecycle.

Routes
    ``POST /v1/chat/completions``   OpenAI chat completions
    ``POST /v1/messages``           Anthropic messages
    ``POST /v1beta/models/{model}:generateContent``
                                    Gemini (Developer API)
    ``/v1/files...``, ``/v1/batches...``, ``/v1/messages/batches...``
                                    the batch APIs of OpenAI and Anthropic (``_batch_routes``)
    ``/v1beta/models/{model}:batchGenerateContent``, ``/v1beta/batches...``,
    ``/upload/v1beta/files``, ``/v1beta/files...``
                                    Gemini's Batch Mode and Files API (``_gemini_batches``)
    ``GET  /_fake/health``          200 ``{"ok": true}``
    ``GET  /_fake/accounting``      the ``AccountingSnapshot``
    ``GET  /_fake/accounting/batches``  the ``BatchAccountingSnapshot``
    ``POST /_fake/reset``           forget everything seen (accounting, buckets, prompt cache, RNG,
                                    files and batches)
    ``GET  /_fake/config``          the current knobs
    ``POST /_fake/config``          change knobs: a JSON object of ``FakeConfig`` fields
    anything else                   404 in the provider's shape (Anthropic's when
                                    ``anthropic-version`` or ``x-api-key`` is sent, Google's
                                    when ``x-goog-api-key`` is)

One request on a provider route goes: count it → auth → decode and check the body → quota →
rate limits → draw faults → latency → answer. Rate-limit headers are sent once the buckets have
been consulted, on every such response, and only for the limits that are configured (an unlimited
fake sends none). Everything runs on one event loop: no locks.

The batch APIs answer each line with the same helpers as the online routes
(``_openai_completion``, ``_anthropic_message``), so a line gets the online answer and usage;
nothing about batches sits on the online request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import os
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import anyio
import orjson
from aiohttp import web

from . import _anthropic, _gemini, _openai
from ._accounting import (
    CLIENT_CLOSED,
    DROPPED,
    HUNG,
    Accounting,
    AccountingSnapshot,
    BatchAccountingSnapshot,
)
from ._batch_routes import BatchAPI
from ._cache import MIN_CACHEABLE_TOKENS, PromptCache
from ._config import FakeConfig, config_from_mapping
from ._gemini_batches import GeminiBatchAPI
from ._limits import RateLimits, Refusal, go_duration

__all__ = ["FakeProvider", "create_app", "running_fake_provider", "serve_forever"]

_JSON: Final = "application/json"
_MAX_BODY_BYTES: Final = 32 * 1024 * 1024
_SHUTDOWN_TIMEOUT_S: Final = 2.0

_OPENAI_ERRORS: Final = {
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
    504: "Gateway timeout.",
}
_ANTHROPIC_ERRORS: Final = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: (
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Rate limited"),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}
_RATE_LIMITS_DOCS: Final = "https://platform.openai.com/account/rate-limits"


class FakeProvider:
    """One fake provider: its knobs, its memory (accounting, buckets, cache) and its server.

    Use ``running_fake_provider()`` to run one on the current event loop, or ``app`` to mount it
    in any aiohttp runner. ``port`` and the base URLs are known once it has started.
    """

    def __init__(self, config: FakeConfig | None = None) -> None:
        self._config = config if config is not None else FakeConfig()
        self._accounting = Accounting()
        self._cache = PromptCache()
        self._rng = random.Random(self._config.seed)
        self._limits = self._new_limits(self._config)
        self._sleepers: set[asyncio.Future[bool]] = set()
        self._closing = False
        self._request_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._id_prefix = os.urandom(6).hex()
        self._counter = 0
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._batches = BatchAPI(
            config=lambda: self._config,
            next_id=self._next_id,
            accounting=self._accounting,
            openai_completion=self._openai_completion,
            anthropic_message=self._anthropic_message,
            sleep=self._sleep,
        )
        self._gemini_batches = GeminiBatchAPI(
            config=lambda: self._config,
            next_id=self._next_id,
            accounting=self._accounting,
            gemini_response=self._gemini_response,
        )
        self.app: Final = self._build_app()

    # -- public ----------------------------------------------------------------------------

    @property
    def config(self) -> FakeConfig:
        return self._config

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fake provider is not running")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, for ``OPENAI_BASE_URL`` / ``AsyncOpenAI(base_url=)``."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """``http://127.0.0.1:PORT``, for ``ANTHROPIC_BASE_URL`` / ``AsyncAnthropic(base_url=)``."""
        return self.url

    @property
    def gemini_base_url(self) -> str:
        """``http://127.0.0.1:PORT``, for ``GOOGLE_GEMINI_BASE_URL`` / google-genai's
        ``HttpOptions(base_url=)``."""
        return self.url

    def base_url(self, provider: str) -> str:
        """The base URL a client of ``provider`` (openai, anthropic, gemini) is given."""
        return self.openai_base_url if provider == "openai" else self.url

    def accounting(self) -> AccountingSnapshot:
        """What the fake saw and charged so far (the JSON of ``GET /_fake/accounting``).

        Batches are caught up to now first, so lines that are due count as paid.
        """
        self._batches.advance_all()
        self._gemini_batches.advance_all()
        return self._accounting.snapshot()

    def batch_accounting(self) -> BatchAccountingSnapshot:
        """What only batches have: batches created, files uploaded, the batch share of the paid
        lines and tokens (the JSON of ``GET /_fake/accounting/batches``)."""
        self._batches.advance_all()
        self._gemini_batches.advance_all()
        return self._accounting.batch_snapshot()

    async def wait_for_requests(self, count: int) -> None:
        """Return once ``count`` requests (since the last reset) have reached a provider route.

        For tests that must act while requests are in progress (stop the server, change knobs).
        """
        if self._accounting.requests >= count:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._request_waiters.append((count, waiter))
        try:
            await waiter
        finally:
            self._request_waiters = [w for w in self._request_waiters if w[1] is not waiter]

    def _arrived(self, client_id: str | None) -> None:
        accounting = self._accounting
        accounting.arrival(client_id)
        if self._request_waiters:
            for count, waiter in self._request_waiters:
                if accounting.requests >= count and not waiter.done():
                    waiter.set_result(None)

    def reset(self) -> None:
        """Forget everything seen: accounting, rate-limit buckets, prompt cache, files and
        batches; reseed the RNG.

        The knobs stay as they are. Meant for quiet moments: a request in flight during a reset
        still records its outcome afterwards.
        """
        self._accounting.clear()
        self._cache.clear()
        self._batches.clear()
        self._gemini_batches.clear()
        self._rng.seed(self._config.seed)
        self._limits = self._new_limits(self._config)

    def update_config(self, **knobs: object) -> FakeConfig:
        """Change knobs at runtime; unknown names or bad values raise ``ValueError``.

        Changing a rate or ``burst_s`` starts fresh, full buckets; changing ``seed`` reseeds.
        """
        old = self._config
        new = config_from_mapping(old, knobs)
        self._config = new
        if new.seed != old.seed:
            self._rng.seed(new.seed)
        if (new.requests_per_second, new.tokens_per_second, new.burst_s) != (
            old.requests_per_second,
            old.tokens_per_second,
            old.burst_s,
        ):
            self._limits = self._new_limits(new)
        return new

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (loopback only; port 0 picks a free port)."""
        if self._runner is not None:
            raise RuntimeError("the fake provider is already running")
        host = _loopback_host(host)
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
            keepalive_timeout=75.0,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, backlog=4096)
            await site.start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()
            raise
        self._runner = runner
        self._closing = False
        self._host = host
        self._port = int(runner.addresses[0][1])

    async def aclose(self) -> None:
        """Stop: wake every sleeping request (they end without an answer), close connections."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        with anyio.CancelScope(shield=True):
            self._wake_sleepers()
            await runner.cleanup()
        self._port = None

    # -- app -------------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY_BYTES, middlewares=[self._gemini_paths])
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_post("/v1/messages", self._anthropic_messages)
        app.router.add_post("/{version:v1beta|v1}/models/{action}", self._gemini_models)
        self._batches.add_routes(app.router)
        app.router.add_get("/_fake/health", self._health)
        app.router.add_get("/_fake/accounting", self._get_accounting)
        app.router.add_get("/_fake/accounting/batches", self._get_batch_accounting)
        app.router.add_post("/_fake/reset", self._post_reset)
        app.router.add_get("/_fake/config", self._get_config)
        app.router.add_post("/_fake/config", self._post_config)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_shutdown(self, app: web.Application) -> None:
        self._wake_sleepers()

    @staticmethod
    def _new_limits(config: FakeConfig) -> dict[str, RateLimits]:
        now = time.monotonic()
        return {
            api: RateLimits(
                config.requests_per_second, config.tokens_per_second, config.burst_s, now
            )
            for api in ("openai", "anthropic", "gemini")
        }

    def _next_id(self) -> str:
        self._counter += 1
        return f"{self._id_prefix}{self._counter:012x}"

    # -- sleeping that shutdown can interrupt ------------------------------------------------

    async def _sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; False when shutdown woke us early (or has begun)."""
        if self._closing:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        handle = loop.call_later(delay, _wake, waiter, True)
        self._sleepers.add(waiter)
        try:
            return await waiter
        finally:
            handle.cancel()
            self._sleepers.discard(waiter)

    def _wake_sleepers(self) -> None:
        self._closing = True
        for waiter in list(self._sleepers):
            _wake(waiter, False)

    # -- shared request path -----------------------------------------------------------------

    def _draw_fault(self, config: FakeConfig) -> str | None:
        rng = self._rng
        if config.drop_rate and rng.random() < config.drop_rate:
            return "drop"
        if config.hang_rate and rng.random() < config.hang_rate:
            return "hang"
        if config.error_rate and rng.random() < config.error_rate:
            return "error"
        if config.malformed_rate and rng.random() < config.malformed_rate:
            return "malformed"
        if config.empty_rate and rng.random() < config.empty_rate:
            return "empty"
        return None

    async def _disrupt(self, request: web.BaseRequest, config: FakeConfig) -> str | None:
        """Draw this request's fault and wait its latency.

        Returns the fault still to be acted on (``error``, ``malformed``, ``empty``), None for a
        normal answer, or ``"gone"`` when the connection has already been closed (drop, hang,
        shutdown) and nothing must be written.
        """
        accounting = self._accounting
        fault = self._draw_fault(config)
        if fault is not None:
            accounting.fault(fault)
        if fault == "drop":
            accounting.outcome(DROPPED)
            _close(request)
            return "gone"
        if fault == "hang":
            accounting.outcome(HUNG)
            await self._sleep(config.hang_s)
            _close(request)
            return "gone"
        delay_ms = config.latency_ms
        if config.jitter_ms:
            delay_ms += config.jitter_ms * self._rng.random()
        if delay_ms > 0:
            try:
                finished = await self._sleep(delay_ms / 1000.0)
            except asyncio.CancelledError:
                if not self._closing:
                    accounting.outcome(CLIENT_CLOSED)
                raise
            if not finished:
                _close(request)
                return "gone"
        return fault

    def _respond(self, status: int, body: bytes, headers: dict[str, str]) -> web.Response:
        self._accounting.outcome(status)
        return web.Response(body=body, status=status, headers=headers)

    # -- OpenAI ------------------------------------------------------------------------------

    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        accounting = self._accounting
        client_id = request.headers.get("x-client-request-id")
        self._arrived(client_id)
        config = self._config
        ident = self._next_id()
        headers = {"Content-Type": _JSON, "x-request-id": f"req_{ident}"}

        denied = _openai.auth_failure(request.headers, config.auth_fail)
        if denied is not None:
            return self._respond(401, denied, headers)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._respond(400, _openai.BAD_JSON_BODY, headers)
        try:
            chat = _openai.parse_chat_request(body)
        except _openai.OpenAIInvalid as invalid:
            return self._respond(400, invalid.body(), headers)
        if config.quota_exhausted:
            return self._respond(429, _openai.QUOTA_BODY, headers)
        if config.fails(chat.model):
            self._accounting.fault("fail_model")
            status = config.error_status or 503
            message = _OPENAI_ERRORS.get(status, f"Injected error {status}.")
            error_type = "server_error" if status >= 500 else "invalid_request_error"
            return self._respond(status, _openai.error_body(message, error_type), headers)

        limits = self._limits["openai"]
        if limits.active:
            cost = chat.prompt_tokens + (chat.max_tokens or _openai.DEFAULT_OUTPUT_CHARGE)
            refusal = limits.acquire(cost, time.monotonic())
            headers.update(limits.openai_headers())
            if refusal is not None:
                headers["retry-after"] = _retry_after(refusal)
                return self._respond(429, _openai_rate_limit_body(chat.model, refusal), headers)

        fault = await self._disrupt(request, config)
        if fault is not None:
            if fault == "gone":
                return web.Response()
            if fault == "error":
                status = config.error_status or 500
                message = _OPENAI_ERRORS.get(status, f"Injected error {status}.")
                error_type = "server_error" if status >= 500 else "invalid_request_error"
                return self._respond(status, _openai.error_body(message, error_type), headers)

        payload, cached = self._openai_completion(chat, ident)
        raw = orjson.dumps(payload)
        if fault == "malformed":
            return self._respond(200, raw[: len(raw) // 2], headers)
        if fault == "empty":
            return self._respond(200, b"", headers)
        usage = payload["usage"]
        accounting.payment(client_id, chat.prompt_tokens, usage["completion_tokens"], cached, 0)
        return self._respond(200, raw, headers)

    def _openai_completion(
        self, chat: _openai.ChatRequest, ident: str
    ) -> tuple[dict[str, Any], int]:
        """The ``chat.completion`` answering ``chat`` and its cached prompt tokens (online and
        batch lines alike)."""
        content, completion_tokens, finish_reason = _openai.answer(chat)
        cached = 0
        if chat.prompt_tokens >= MIN_CACHEABLE_TOKENS:
            cached = self._cache.openai_cached_tokens(
                chat.model, _openai.prompt_text(chat), chat.prompt_tokens, time.monotonic()
            )
        payload = _openai.completion_body(
            chat,
            completion_id=f"chatcmpl-{ident}",
            created=int(time.time()),
            content=content,
            completion_tokens=completion_tokens,
            finish_reason=finish_reason,
            cached_tokens=cached,
        )
        return payload, cached

    # -- Anthropic ---------------------------------------------------------------------------

    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        accounting = self._accounting
        client_id = request.headers.get("x-client-request-id")
        self._arrived(client_id)
        config = self._config
        ident = self._next_id()
        request_id = f"req_{ident}"
        headers = {"Content-Type": _JSON, "request-id": request_id}

        denied = _anthropic.auth_failure(request.headers, config.auth_fail)
        if denied is not None:
            status, error_type, text = denied
            body = _anthropic.error_body(error_type, text, request_id)
            return self._respond(status, body, headers)
        raw_body = await request.read()
        if len(raw_body) > _anthropic.REQUEST_BYTES:
            body = _anthropic.error_body(
                "request_too_large",
                f"Request exceeds the maximum allowed number of bytes ({len(raw_body)} > "
                f"{_anthropic.REQUEST_BYTES}).",
                request_id,
            )
            return self._respond(413, body, headers)
        try:
            decoded = orjson.loads(raw_body)
        except orjson.JSONDecodeError:
            body = _anthropic.error_body(
                "invalid_request_error", "There was an error parsing the body as JSON", request_id
            )
            return self._respond(400, body, headers)
        try:
            message = _anthropic.parse_messages_request(decoded)
        except _anthropic.AnthropicInvalid as invalid:
            body = _anthropic.error_body("invalid_request_error", invalid.message, request_id)
            return self._respond(400, body, headers)
        if config.quota_exhausted:
            body = _anthropic.error_body(
                "invalid_request_error", _anthropic.QUOTA_MESSAGE, request_id
            )
            return self._respond(400, body, headers)
        if config.fails(message.model):
            self._accounting.fault("fail_model")
            status = config.error_status or 529
            error_type, text = _ANTHROPIC_ERRORS.get(
                status, ("api_error" if status >= 500 else "invalid_request_error", "Error")
            )
            return self._respond(
                status, _anthropic.error_body(error_type, text, request_id), headers
            )

        limits = self._limits["anthropic"]
        if limits.active:
            refusal = limits.acquire(message.input_tokens + message.max_tokens, time.monotonic())
            headers.update(limits.anthropic_headers(time.time()))
            if refusal is not None:
                headers["retry-after"] = _retry_after(refusal)
                body = _anthropic.error_body(
                    "rate_limit_error", _anthropic_rate_limit_message(refusal), request_id
                )
                return self._respond(429, body, headers)

        fault = await self._disrupt(request, config)
        if fault is not None:
            if fault == "gone":
                return web.Response()
            if fault == "error":
                status = config.error_status or 529
                error_type, text = _ANTHROPIC_ERRORS.get(
                    status, ("api_error" if status >= 500 else "invalid_request_error", "Error")
                )
                body = _anthropic.error_body(error_type, text, request_id)
                return self._respond(status, body, headers)

        payload, output_tokens, cache_read, cache_write = self._anthropic_message(message, ident)
        raw = orjson.dumps(payload)
        if fault == "malformed":
            return self._respond(200, raw[: len(raw) // 2], headers)
        if fault == "empty":
            return self._respond(200, b"", headers)
        accounting.payment(client_id, message.input_tokens, output_tokens, cache_read, cache_write)
        return self._respond(200, raw, headers)

    def _anthropic_message(
        self, message: _anthropic.MessagesRequest, ident: str
    ) -> tuple[dict[str, Any], int, int, int]:
        """The ``Message`` answering ``message``, with its output tokens, cache reads and cache
        writes (online and batch lines alike)."""
        content, output_tokens, stop_reason = _anthropic.answer(message, f"toolu_{ident}")
        cache_read = cache_write = 0
        if message.cache_prefix_tokens >= MIN_CACHEABLE_TOKENS:
            if self._cache.anthropic_hit(message.model, message.cache_prefix, time.monotonic()):
                cache_read = message.cache_prefix_tokens
            else:
                cache_write = message.cache_prefix_tokens
        payload = _anthropic.message_body(
            message,
            message_id=f"msg_{ident}",
            content=content,
            output_tokens=output_tokens,
            stop_reason=stop_reason,
            cache_read=cache_read,
            cache_write=cache_write,
        )
        return payload, output_tokens, cache_read, cache_write

    # -- Gemini ------------------------------------------------------------------------------

    @web.middleware
    async def _gemini_paths(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Gemini's batches and files (their ``v1`` paths are OpenAI's too: told apart by the
        key header, before routing)."""
        if self._gemini_batches.handles(request):
            return await self._gemini_batches.dispatch(request)
        response: web.StreamResponse = await handler(request)
        return response

    async def _gemini_models(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1beta/models/{model}:generateContent`` (and ``:batchGenerateContent``)."""
        model, _, method = request.match_info["action"].partition(":")
        if method == "batchGenerateContent":
            return await self._gemini_batches.create(request, model)
        if method != "generateContent":
            return await self._not_found(request)
        accounting = self._accounting
        client_id = request.headers.get("x-client-request-id")
        self._arrived(client_id)
        config = self._config
        ident = self._next_id()
        headers = {"Content-Type": _JSON, "x-goog-request-id": ident}
        key = _gemini.api_key(request.headers, request.query)
        if not key:
            return self._respond(403, _gemini.NO_KEY, headers)
        if config.auth_fail:
            return self._respond(400, _gemini.BAD_KEY, headers)
        raw_body = await request.read()
        if len(raw_body) > _gemini.REQUEST_BYTES:
            body = _gemini.error_body(
                400, f"Request payload size exceeds the limit: {_gemini.REQUEST_BYTES} bytes."
            )
            return self._respond(400, body, headers)
        try:
            decoded = orjson.loads(raw_body)
        except orjson.JSONDecodeError:
            body = _gemini.error_body(400, "Invalid JSON payload received. Unexpected token.")
            return self._respond(400, body, headers)
        try:
            generate = _gemini.parse_generate_request(model, decoded)
        except _gemini.GeminiInvalid as invalid:
            return self._respond(400, invalid.body(), headers)
        if config.quota_exhausted:
            return self._respond(429, _gemini.quota_body(generate.model), headers)
        if config.fails(generate.model):
            accounting.fault("fail_model")
            return self._respond(
                config.error_status or 503, _gemini.error_body(config.error_status or 503), headers
            )

        limits = self._limits["gemini"]
        if limits.active:
            cost = generate.prompt_tokens + (generate.max_tokens or _openai.DEFAULT_OUTPUT_CHARGE)
            refusal = limits.acquire(cost, time.monotonic())
            if refusal is not None:
                # Gemini sends no rate-limit headers: the wait is in the body's RetryInfo.
                body = _gemini.rate_limit_body(
                    generate.model, refusal.kind, refusal.limit_per_minute, refusal.retry_after_s
                )
                return self._respond(429, body, headers)

        fault = await self._disrupt(request, config)
        if fault is not None:
            if fault == "gone":
                return web.Response()
            if fault == "error":
                status = config.error_status or 503
                return self._respond(status, _gemini.error_body(status), headers)

        payload, cached = self._gemini_response(generate, ident)
        raw = orjson.dumps(payload)
        if fault == "malformed":
            return self._respond(200, raw[: len(raw) // 2], headers)
        if fault == "empty":
            return self._respond(200, b"", headers)
        usage = payload["usageMetadata"]
        output = usage["candidatesTokenCount"] + usage.get("thoughtsTokenCount", 0)
        accounting.payment(client_id, generate.prompt_tokens, output, cached, 0)
        return self._respond(200, raw, headers)

    def _gemini_response(
        self, generate: _gemini.GenerateRequest, ident: str
    ) -> tuple[dict[str, Any], int]:
        """The ``GenerateContentResponse`` answering ``generate`` and its cached prompt tokens
        (online and batch requests alike). Gemini 2.5 caches long prompts by itself, like
        OpenAI: the same cache imitation serves both."""
        text, tokens, thoughts, finish = _gemini.answer(generate)
        cached = 0
        if generate.prompt_tokens >= MIN_CACHEABLE_TOKENS:
            cached = self._cache.openai_cached_tokens(
                f"gemini/{generate.model}",
                generate.prompt_text,
                generate.prompt_tokens,
                time.monotonic(),
            )
        payload = _gemini.response_body(
            generate,
            response_id=ident,
            text=text,
            candidates_tokens=tokens,
            thoughts=thoughts,
            finish_reason=finish,
            cached_tokens=cached,
        )
        return payload, cached

    # -- control routes ----------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return _json_response({"ok": True})

    async def _get_accounting(self, request: web.Request) -> web.Response:
        await self._batches.catch_up_all()
        return _json_response(self.accounting())

    async def _get_batch_accounting(self, request: web.Request) -> web.Response:
        await self._batches.catch_up_all()
        return _json_response(self.batch_accounting())

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json_response({"ok": True})

    async def _get_config(self, request: web.Request) -> web.Response:
        return _json_response(self._config)

    async def _post_config(self, request: web.Request) -> web.Response:
        try:
            knobs = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json_response({"error": "the body must be a JSON object of knobs"}, 400)
        if not isinstance(knobs, dict):
            return _json_response({"error": "the body must be a JSON object of knobs"}, 400)
        try:
            config = self.update_config(**knobs)
        except ValueError as error:
            return _json_response({"error": str(error)}, 400)
        return _json_response(config)

    async def _not_found(self, request: web.Request) -> web.Response:
        where = f"{request.method} {request.path}"
        if "x-goog-api-key" in request.headers:
            body = _gemini.error_body(404, f"Method not found: {where}")
        elif "anthropic-version" in request.headers or "x-api-key" in request.headers:
            body = _anthropic.error_body(
                "not_found_error", f"Not found: {where}", f"req_{self._next_id()}"
            )
        else:
            body = _openai.error_body(f"Invalid URL ({where})", "invalid_request_error")
        return web.Response(body=body, status=404, content_type=_JSON)


def _wake(waiter: asyncio.Future[bool], finished: bool) -> None:
    if not waiter.done():
        waiter.set_result(finished)


def _close(request: web.BaseRequest) -> None:
    """Close the connection under a request without answering it."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def _json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type=_JSON)


def _retry_after(refusal: Refusal) -> str:
    return str(max(1, math.ceil(refusal.retry_after_s)))


def _openai_rate_limit_body(model: str, refusal: Refusal) -> bytes:
    if refusal.kind == "requests":
        message = (
            f"Rate limit reached for {model} in organization org-fake on requests per min (RPM): "
            f"Limit {refusal.limit_per_minute}, Used {refusal.limit_per_minute}, Requested 1. "
            f"Please try again in {go_duration(refusal.retry_after_s)}. "
            f"Visit {_RATE_LIMITS_DOCS} to learn more."
        )
    elif refusal.too_large:
        message = (
            f"Request too large for {model} in organization org-fake on tokens per min (TPM): "
            f"Limit {refusal.limit_per_minute}, Requested {refusal.requested}. The input or "
            f"output tokens must be reduced in order to run successfully. "
            f"Visit {_RATE_LIMITS_DOCS} to learn more."
        )
    else:
        used = max(refusal.limit_per_minute - refusal.remaining, 0)
        message = (
            f"Rate limit reached for {model} in organization org-fake on tokens per min (TPM): "
            f"Limit {refusal.limit_per_minute}, Used {used}, Requested {refusal.requested}. "
            f"Please try again in {go_duration(refusal.retry_after_s)}. "
            f"Visit {_RATE_LIMITS_DOCS} to learn more."
        )
    return _openai.error_body(message, refusal.kind, None, "rate_limit_exceeded")


def _anthropic_rate_limit_message(refusal: Refusal) -> str:
    unit = "requests" if refusal.kind == "requests" else "tokens"
    if refusal.too_large:
        return (
            f"This request would exceed the rate limit for your organization of "
            f"{refusal.limit_per_minute} {unit} per minute on its own ({refusal.requested} "
            f"{unit} requested). Please reduce the prompt length or the maximum tokens requested."
        )
    return (
        f"This request would exceed the rate limit for your organization of "
        f"{refusal.limit_per_minute} {unit} per minute. You can see the response headers for "
        f"current usage. Please reduce the prompt length or the maximum tokens requested, or "
        f"try again later."
    )


def _loopback_host(host: str) -> str:
    """The address to bind: only loopback is allowed (``localhost`` means ``127.0.0.1``)."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(
            f"the fake provider binds to loopback only (127.0.0.1, ::1, localhost), not {host!r}"
        )
    return str(address)


def create_app(config: FakeConfig | None = None) -> web.Application:
    """An aiohttp application serving a fresh fake provider.

    Use ``FakeProvider(config).app`` instead when you also need the provider object (accounting,
    ``update_config``) from Python.
    """
    return FakeProvider(config).app


@contextlib.asynccontextmanager
async def running_fake_provider(
    config: FakeConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[FakeProvider]:
    """Run a fake provider on the current event loop for the duration of the block."""
    provider = FakeProvider(config)
    await provider.start(host, port)
    try:
        yield provider
    finally:
        await provider.aclose()


def serve_forever(
    config: FakeConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    ready: Callable[[FakeProvider], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM (blocking), on uvloop when it is installed.

    When listening, ``ready(provider)`` is called; by default it prints one line with the URLs.
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            async with running_fake_provider(config, host, port) as provider:
                (ready or _print_ready)(provider)
                await stop.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())


def _print_ready(provider: FakeProvider) -> None:
    print(
        f"fake provider listening: OPENAI_BASE_URL={provider.openai_base_url} "
        f"ANTHROPIC_BASE_URL={provider.anthropic_base_url} "
        f"GOOGLE_GEMINI_BASE_URL={provider.gemini_base_url}",
        flush=True,
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
