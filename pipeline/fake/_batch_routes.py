"""The batch and file endpoints of both providers, and the batches and files the fake keeps.

OpenAI
    ``POST   /v1/files``                     upload (multipart ``file`` + ``purpose``)
    ``GET    /v1/files/{id}``                the file object
    ``GET    /v1/files/{id}/content``        the file's bytes
    ``DELETE /v1/files/{id}``                forget it
    ``POST   /v1/batches``                   create (``input_file_id``, ``endpoint``,
                                             ``completion_window: "24h"``, ``metadata``)
    ``GET    /v1/batches``                   list, newest first (``after``, ``limit`` 1-100)
    ``GET    /v1/batches/{id}``              the batch object
    ``POST   /v1/batches/{id}/cancel``       cancel

Anthropic
    ``POST   /v1/messages/batches``          create (``requests: [{custom_id, params}]``)
    ``GET    /v1/messages/batches``          list, newest first (``after_id``, ``before_id``,
                                             ``limit`` 1-1000)
    ``GET    /v1/messages/batches/{id}``     the batch object
    ``POST   /v1/messages/batches/{id}/cancel``
    ``DELETE /v1/messages/batches/{id}``     only once ended
    ``GET    /v1/messages/batches/{id}/results``  JSONL, streamed, only once ended

Where the limits bite, as on the real APIs: an upload over ``openai_batch_max_bytes`` is a 400
("File is too large.") and a ``purpose=batch`` file must be named ``*.jsonl``; an input file with
more than ``openai_batch_max_requests`` lines uploads fine, but its batch fails validation with
``too_many_tasks``. An Anthropic batch over ``anthropic_batch_max_requests`` requests or
``anthropic_batch_max_bytes`` of body is a 413 ``request_too_large``. Anthropic checks the shape
of the requests (``custom_id`` pattern, uniqueness, ``params`` an object) at creation; the
``params`` themselves are checked when each request is answered (an ``errored`` result), as the
real API does.

Each line is answered by the online endpoints' code (``_openai`` / ``_anthropic`` and the
provider's answer helpers, prompt cache included): the same params get the same answer and the
same usage, and a line answered with a message is paid under its ``custom_id``. Batch lines do
not go through the online faults or rate limits: batches have their own knobs
(``batch_error_rate``, ``batch_expire_after``, ``batch_fail_validation``, and
``batch_create_lost``, which creates a batch but never answers the create). Nothing runs in
the background (see ``_batches``): catching up happens when a batch is looked at, in slices of
``_SLICE_LINES`` answered lines with a checkpoint in between, so a big batch does not hold up the
online requests served meanwhile. (Validating an input file is still done in one go: about
0.2 s for 50,000 lines.)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

import anyio
import anyio.lowlevel
import orjson
from aiohttp import BodyPartReader, web

from . import _anthropic, _openai
from ._accounting import Accounting
from ._answers import seed_of
from ._anthropic import MessagesRequest
from ._batches import (
    ANTHROPIC_CUSTOM_ID,
    AnthropicBatch,
    BatchJob,
    BatchLine,
    BatchTiming,
    OpenAIBatch,
    StoredFile,
)
from ._config import FakeConfig
from ._openai import ChatRequest

__all__ = ["BatchAPI"]

_JSON: Final = "application/json"
_CHUNK: Final = 1 << 16
_SLICE_LINES: Final = 500  # lines answered between two checkpoints (about 15 ms)
_MAX_UPLOAD_BYTES: Final = 512_000_000  # OpenAI's limit for any file, whatever its purpose
_PURPOSES: Final = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_ENDPOINT: Final = "/v1/chat/completions"
_SERVER_ERROR: Final = "The server had an error while processing your request. Sorry about that!"

_Job = TypeVar("_Job", bound=BatchJob)

OpenAICompletion = Callable[[ChatRequest, str], tuple[dict[str, Any], int]]
AnthropicMessage = Callable[[MessagesRequest, str], tuple[dict[str, Any], int, int, int]]


class _Refusal(Exception):
    """An OpenAI error answer that ends a handler early: status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class _AnthropicRefusal(Exception):
    """An Anthropic error answer that ends a handler early (the request id is added later)."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message


def _openai_refusal(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    type_: str = "invalid_request_error",
) -> _Refusal:
    return _Refusal(status, _openai.error_body(message, type_, param, code))


class BatchAPI:
    """Batches and files of one fake provider, and the handlers that serve them.

    Implements ``_batches.LineServices`` for its batches. Runs on the server's event loop only.
    """

    def __init__(
        self,
        *,
        config: Callable[[], FakeConfig],
        next_id: Callable[[], str],
        accounting: Accounting,
        openai_completion: OpenAICompletion,
        anthropic_message: AnthropicMessage,
        sleep: Callable[[float], Awaitable[bool]],
    ) -> None:
        self._config = config
        self._sleep = sleep
        self._next_id = next_id
        self._accounting = accounting
        self._openai_completion = openai_completion
        self._anthropic_message = anthropic_message
        self._files: dict[str, StoredFile] = {}
        self._openai: dict[str, OpenAIBatch] = {}
        self._anthropic: dict[str, AnthropicBatch] = {}
        self._serial = 0
        self._generation = 0  # bumped by ``clear``: forgotten batches stop catching up

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/files", self._upload_file)
        router.add_get("/v1/files/{file_id}", self._get_file)
        router.add_delete("/v1/files/{file_id}", self._delete_file)
        router.add_get("/v1/files/{file_id}/content", self._file_content)
        router.add_post("/v1/batches", self._create_openai)
        router.add_get("/v1/batches", self._list_openai)
        router.add_get("/v1/batches/{batch_id}", self._get_openai)
        router.add_post("/v1/batches/{batch_id}/cancel", self._cancel_openai)
        router.add_post("/v1/messages/batches", self._create_anthropic)
        router.add_get("/v1/messages/batches", self._list_anthropic)
        router.add_get("/v1/messages/batches/{batch_id}", self._get_anthropic)
        router.add_delete("/v1/messages/batches/{batch_id}", self._delete_anthropic)
        router.add_post("/v1/messages/batches/{batch_id}/cancel", self._cancel_anthropic)
        router.add_get("/v1/messages/batches/{batch_id}/results", self._anthropic_results)

    def clear(self) -> None:
        """Forget every file and batch (``FakeProvider.reset``)."""
        self._files.clear()
        self._openai.clear()
        self._anthropic.clear()
        self._serial = 0
        self._generation += 1

    def advance_all(self) -> None:
        """Catch every unfinished batch up to now, in one go (before accounting is read)."""
        now = time.monotonic()
        for job in (*self._openai.values(), *self._anthropic.values()):
            if not job.ended:
                job.advance(now)

    async def catch_up_all(self) -> None:
        """``advance_all`` in slices, letting other requests in between."""
        await self._catch_up((*self._openai.values(), *self._anthropic.values()))

    async def _catch_up(self, jobs: Iterable[BatchJob]) -> None:
        """Catch ``jobs`` up to now, ``_SLICE_LINES`` answered lines at a time, with a
        checkpoint in between; stop if the provider is reset meanwhile."""
        now = time.monotonic()
        generation = self._generation
        for job in jobs:
            while not job.ended and not job.advance(now, _SLICE_LINES):
                await anyio.lowlevel.checkpoint()
                if self._generation != generation:
                    return

    # -- LineServices ---------------------------------------------------------------------------

    def new_id(self) -> str:
        return self._next_id()

    def answer_openai_line(
        self, custom_id: str, body: Any, inject_error: bool
    ) -> tuple[int, dict[str, Any], str]:
        accounting = self._accounting
        accounting.line_arrival(custom_id)
        ident = self._next_id()
        if inject_error:
            accounting.line_failed("openai")
            return 500, _openai.error_object(_SERVER_ERROR, "server_error"), ident
        try:
            chat = _openai.parse_chat_request(body)
        except _openai.OpenAIInvalid as invalid:
            accounting.line_failed("openai")
            return 400, invalid.error_object(), ident
        payload, cached = self._openai_completion(chat, ident)
        completion_tokens = payload["usage"]["completion_tokens"]
        accounting.line_paid("openai", custom_id, chat.prompt_tokens, completion_tokens, cached, 0)
        return 200, payload, ident

    def answer_anthropic_line(
        self, custom_id: str, params: Any, inject_error: bool
    ) -> dict[str, Any]:
        accounting = self._accounting
        accounting.line_arrival(custom_id)
        ident = self._next_id()
        request_id = f"req_{ident}"
        if inject_error:
            accounting.line_failed("anthropic")
            error = _anthropic.error_object("api_error", "Internal server error", request_id)
            return {"type": "errored", "error": error}
        try:
            message = _anthropic.parse_messages_request(params)
        except _anthropic.AnthropicInvalid as invalid:
            accounting.line_failed("anthropic")
            error = _anthropic.error_object("invalid_request_error", invalid.message, request_id)
            return {"type": "errored", "error": error}
        payload, output_tokens, cache_read, cache_write = self._anthropic_message(message, ident)
        payload["usage"]["service_tier"] = "batch"
        accounting.line_paid(
            "anthropic", custom_id, message.input_tokens, output_tokens, cache_read, cache_write
        )
        return {"type": "succeeded", "message": payload}

    def store_file(self, filename: str, data: bytes, created_at: int) -> str:
        file_id = f"file-{self._next_id()}"
        self._files[file_id] = StoredFile(file_id, filename, "batch_output", data, created_at)
        return file_id

    # -- shared ---------------------------------------------------------------------------------

    def _job_settings(self, config: FakeConfig, api: str, batch_id: str) -> dict[str, Any]:
        """The arguments every ``BatchJob`` takes, from the knobs as they are now."""
        self._serial += 1
        now = time.monotonic()
        return {
            "batch_id": batch_id,
            "created": now,
            "wall_offset": time.time() - now,
            "timing": BatchTiming(
                config.batch_validating_s,
                config.batch_in_progress_s,
                config.batch_finalizing_s,
                config.batch_cancelling_s,
            ),
            "error_rate": config.batch_error_rate,
            "expire_after": config.batch_expire_after,
            "seed": seed_of(str(config.seed), api, str(self._serial)),
            "services": self,
        }

    async def _lose_answer(self, request: web.Request, config: FakeConfig) -> web.Response:
        """``batch_create_lost``: the batch exists, its answer never leaves. Hold the request
        ``hang_s`` seconds (less if the server stops), then close its connection."""
        self._accounting.fault("batch_create_lost")
        if config.hang_s > 0:
            await self._sleep(config.hang_s)
        transport = request.transport
        if transport is not None:
            transport.abort()
        return web.Response()  # never sent: the connection is gone

    # -- OpenAI: files --------------------------------------------------------------------------

    async def _upload_file(self, request: web.Request) -> web.Response:
        config = self._config()
        ident = self._next_id()
        try:
            _openai_allowed(request, config)
            filename, data, size, purpose = await _read_upload(request)
            if filename is None:
                raise _openai_refusal(
                    400, "Missing required parameter: 'file'.", "file", "missing_required_parameter"
                )
            if purpose is None:
                raise _openai_refusal(
                    400,
                    "Missing required parameter: 'purpose'.",
                    "purpose",
                    "missing_required_parameter",
                )
            if purpose not in _PURPOSES:
                supported = ", ".join(f"'{p}'" for p in _PURPOSES)
                raise _openai_refusal(
                    400,
                    f"Invalid value: '{purpose}'. Supported values are: {supported}.",
                    "purpose",
                    "invalid_value",
                )
            limit = config.openai_batch_max_bytes if purpose == "batch" else _MAX_UPLOAD_BYTES
            if size > limit or data is None:
                raise _openai_refusal(
                    400,
                    f"File is too large. The maximum size for purpose '{purpose}' is "
                    f"{limit} bytes; this file has {size} bytes.",
                    "file",
                )
            if purpose == "batch" and not filename.endswith(".jsonl"):
                raise _openai_refusal(
                    400, "Invalid file format for Batch API. Must be .jsonl", "file"
                )
        except _Refusal as refusal:
            return _openai_response(refusal.status, refusal.body, ident)
        file_id = f"file-{ident}"
        stored = StoredFile(file_id, filename, purpose, data, int(time.time()))
        self._files[file_id] = stored
        self._accounting.file_uploaded()
        return _openai_json(stored.to_json(), ident)

    def _file(self, request: web.Request) -> StoredFile:
        _openai_allowed(request, self._config())
        file_id = request.match_info["file_id"]
        stored = self._files.get(file_id)
        if stored is None:
            raise _openai_refusal(404, f"No such File object: {file_id}", "id")
        return stored

    async def _get_file(self, request: web.Request) -> web.Response:
        ident = self._next_id()
        try:
            stored = self._file(request)
        except _Refusal as refusal:
            return _openai_response(refusal.status, refusal.body, ident)
        return _openai_json(stored.to_json(), ident)

    async def _delete_file(self, request: web.Request) -> web.Response:
        ident = self._next_id()
        try:
            stored = self._file(request)
        except _Refusal as refusal:
            return _openai_response(refusal.status, refusal.body, ident)
        del self._files[stored.id]
        return _openai_json({"id": stored.id, "object": "file", "deleted": True}, ident)

    async def _file_content(self, request: web.Request) -> web.Response:
        ident = self._next_id()
        try:
            stored = self._file(request)
        except _Refusal as refusal:
            return _openai_response(refusal.status, refusal.body, ident)
        return web.Response(
            body=stored.data,
            content_type="application/octet-stream",
            headers={"x-request-id": f"req_{ident}"},
        )

    # -- OpenAI: batches ------------------------------------------------------------------------

    async def _create_openai(self, request: web.Request) -> web.Response:
        config = self._config()
        ident = self._next_id()
        try:
            _openai_allowed(request, config)
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                raise _Refusal(400, _openai.BAD_JSON_BODY) from None
            input_file_id, endpoint, window, metadata = _check_create_openai(body)
            stored = self._files.get(input_file_id)
            if stored is None:
                raise _openai_refusal(404, f"No such File object: {input_file_id}", "input_file_id")
            if stored.purpose != "batch":
                raise _openai_refusal(
                    400,
                    f"Invalid 'input_file_id': file {input_file_id} has purpose "
                    f"'{stored.purpose}'; a batch input file must be uploaded with purpose "
                    "'batch'.",
                    "input_file_id",
                )
            if config.quota_exhausted:
                raise _Refusal(429, _openai.QUOTA_BODY)
        except _Refusal as refusal:
            return _openai_response(refusal.status, refusal.body, ident)
        batch_id = f"batch_{ident}"
        job = OpenAIBatch(
            input_file_id=input_file_id,
            input_data=stored.data,
            endpoint=endpoint,
            completion_window=window,
            metadata=metadata,
            max_requests=config.openai_batch_max_requests,
            fail_validation=config.batch_fail_validation,
            **self._job_settings(config, "openai", batch_id),
        )
        self._openai[batch_id] = job
        self._accounting.batch_created("openai")
        await self._catch_up((job,))
        if config.batch_create_lost:
            return await self._lose_answer(request, config)
        return _openai_json(job.to_json(), ident)

    async def _openai_batch(self, request: web.Request) -> OpenAIBatch:
        """The batch named in the path, caught up to now."""
        _openai_allowed(request, self._config())
        batch_id = request.match_info["batch_id"]
        job = self._openai.get(batch_id)
        if job is None:
            raise _openai_refusal(404, f"No such Batch object: {batch_id}", "batch_id")
        await self._catch_up((job,))
        return job

    async def _get_openai(self, request: web.Request) -> web.Response:
        ident = self._next_id()
        try:
            job = await self._openai_batch(request)
        except _Refusal as refusal:
            return _openai_response(refusal.status, refusal.body, ident)
        return _openai_json(job.to_json(), ident)

    async def _cancel_openai(self, request: web.Request) -> web.Response:
        ident = self._next_id()
        try:
            job = await self._openai_batch(request)
            if not job.cancel(time.monotonic()):
                raise _openai_refusal(400, f"Cannot cancel a batch with status '{job.phase}'.")
        except _Refusal as refusal:
            return _openai_response(refusal.status, refusal.body, ident)
        return _openai_json(job.to_json(), ident)

    async def _list_openai(self, request: web.Request) -> web.Response:
        ident = self._next_id()
        try:
            _openai_allowed(request, self._config())
            try:
                limit = _limit(request, 20, 100)
            except ValueError as error:
                raise _openai_refusal(
                    400, f"Invalid 'limit': {error}.", "limit", "invalid_value"
                ) from None
        except _Refusal as refusal:
            return _openai_response(refusal.status, refusal.body, ident)
        newest_first = list(reversed(self._openai.values()))
        page, has_more = _page_after(newest_first, request.query.get("after"), limit)
        await self._catch_up(page)
        data = [job.to_json() for job in page]
        listing: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
        if data:
            listing["first_id"] = data[0]["id"]
            listing["last_id"] = data[-1]["id"]
        return _openai_json(listing, ident)

    # -- Anthropic ------------------------------------------------------------------------------

    async def _create_anthropic(self, request: web.Request) -> web.Response:
        config = self._config()
        ident = self._next_id()
        request_id = f"req_{ident}"
        try:
            _anthropic_allowed(request, config)
            limit = config.anthropic_batch_max_bytes
            raw = await _read_capped(request, limit)
            if raw is None:
                raise _anthropic_refusal(
                    413,
                    "request_too_large",
                    f"Request exceeds the maximum allowed number of bytes for a message batch "
                    f"({limit}).",
                )
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise _anthropic_refusal(
                    400, "invalid_request_error", "There was an error parsing the body as JSON"
                ) from None
            lines = _check_create_anthropic(body, config.anthropic_batch_max_requests)
            if config.quota_exhausted:
                raise _anthropic_refusal(400, "invalid_request_error", _anthropic.QUOTA_MESSAGE)
            if config.batch_fail_validation:
                raise _anthropic_refusal(
                    400,
                    "invalid_request_error",
                    "requests: the batch failed validation (batch_fail_validation is set)",
                )
        except _AnthropicRefusal as refusal:
            return _anthropic_error(refusal, request_id)
        batch_id = f"msgbatch_{ident}"
        job = AnthropicBatch(lines=lines, **self._job_settings(config, "anthropic", batch_id))
        self._anthropic[batch_id] = job
        self._accounting.batch_created("anthropic")
        await self._catch_up((job,))
        if config.batch_create_lost:
            return await self._lose_answer(request, config)
        return _anthropic_json(job.to_json(_origin(request)), request_id)

    async def _anthropic_batch(self, request: web.Request) -> AnthropicBatch:
        """The batch named in the path, caught up to now."""
        _anthropic_allowed(request, self._config())
        batch_id = request.match_info["batch_id"]
        job = self._anthropic.get(batch_id)
        if job is None:
            raise _anthropic_refusal(
                404, "not_found_error", f"No message batch found with id {batch_id}"
            )
        await self._catch_up((job,))
        return job

    async def _get_anthropic(self, request: web.Request) -> web.Response:
        request_id = f"req_{self._next_id()}"
        try:
            job = await self._anthropic_batch(request)
        except _AnthropicRefusal as refusal:
            return _anthropic_error(refusal, request_id)
        return _anthropic_json(job.to_json(_origin(request)), request_id)

    async def _cancel_anthropic(self, request: web.Request) -> web.Response:
        request_id = f"req_{self._next_id()}"
        try:
            job = await self._anthropic_batch(request)
            if not job.cancel(time.monotonic()):
                raise _anthropic_refusal(
                    400,
                    "invalid_request_error",
                    f"Message batch {job.id} has already ended and cannot be canceled.",
                )
        except _AnthropicRefusal as refusal:
            return _anthropic_error(refusal, request_id)
        return _anthropic_json(job.to_json(_origin(request)), request_id)

    async def _delete_anthropic(self, request: web.Request) -> web.Response:
        request_id = f"req_{self._next_id()}"
        try:
            job = await self._anthropic_batch(request)
            if not job.ended:
                raise _anthropic_refusal(
                    400,
                    "invalid_request_error",
                    f"Message batch {job.id} is still being processed; cancel it and wait for "
                    "it to end before deleting it.",
                )
        except _AnthropicRefusal as refusal:
            return _anthropic_error(refusal, request_id)
        del self._anthropic[job.id]
        return _anthropic_json({"id": job.id, "type": "message_batch_deleted"}, request_id)

    async def _anthropic_results(self, request: web.Request) -> web.StreamResponse:
        request_id = f"req_{self._next_id()}"
        try:
            job = await self._anthropic_batch(request)
            data = job.results_data
            if data is None:
                raise _anthropic_refusal(
                    400,
                    "invalid_request_error",
                    f"Message batch {job.id} has not ended yet; its results are available "
                    "once its processing_status is 'ended'.",
                )
        except _AnthropicRefusal as refusal:
            return _anthropic_error(refusal, request_id)
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-jsonl", "request-id": request_id}
        )
        await response.prepare(request)
        for offset in range(0, len(data), _CHUNK):
            await response.write(data[offset : offset + _CHUNK])
        await response.write_eof()
        return response

    async def _list_anthropic(self, request: web.Request) -> web.Response:
        request_id = f"req_{self._next_id()}"
        try:
            _anthropic_allowed(request, self._config())
            try:
                limit = _limit(request, 20, 1000)
            except ValueError as error:
                raise _anthropic_refusal(400, "invalid_request_error", f"limit: {error}") from None
        except _AnthropicRefusal as refusal:
            return _anthropic_error(refusal, request_id)
        newest_first = list(reversed(self._anthropic.values()))
        before = request.query.get("before_id")
        if before is not None:
            page, has_more = _page_before(newest_first, before, limit)
        else:
            page, has_more = _page_after(newest_first, request.query.get("after_id"), limit)
        await self._catch_up(page)
        origin = _origin(request)
        data = [job.to_json(origin) for job in page]
        listing = {
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
        return _anthropic_json(listing, request_id)


# -- request checks ----------------------------------------------------------------------------


def _openai_allowed(request: web.Request, config: FakeConfig) -> None:
    denied = _openai.auth_failure(request.headers, config.auth_fail)
    if denied is not None:
        raise _Refusal(401, denied)


def _anthropic_allowed(request: web.Request, config: FakeConfig) -> None:
    denied = _anthropic.auth_failure(request.headers, config.auth_fail)
    if denied is not None:
        status, type_, message = denied
        raise _anthropic_refusal(status, type_, message)


def _anthropic_refusal(status: int, type_: str, message: str) -> _AnthropicRefusal:
    return _AnthropicRefusal(status, type_, message)


async def _read_upload(request: web.Request) -> tuple[str | None, bytes | None, int, str | None]:
    """``(filename, data, size, purpose)`` of a multipart upload; ``data`` is None when the file
    is over ``_MAX_UPLOAD_BYTES`` (the rest is read and dropped)."""
    if not request.content_type.startswith("multipart/"):
        raise _openai_refusal(
            400,
            f"Invalid Content-Type header ({request.content_type}), expected multipart/form-data.",
        )
    reader = await request.multipart()
    filename: str | None = None
    purpose: str | None = None
    chunks: list[bytes] = []
    size = 0
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            await part.release()
            continue
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file":
            filename = part.filename or "upload"
            while chunk := await part.read_chunk(_CHUNK):
                size += len(chunk)
                if size <= _MAX_UPLOAD_BYTES:
                    chunks.append(chunk)
        else:
            await part.release()
    data = b"".join(chunks) if size <= _MAX_UPLOAD_BYTES else None
    return filename, data, size, purpose


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` bytes (the rest is read and dropped, so the
    client gets the answer rather than a reset connection)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    return b"".join(chunks) if size <= limit else None


def _check_create_openai(body: Any) -> tuple[str, str, str, dict[str, str] | None]:
    """``(input_file_id, endpoint, completion_window, metadata)`` of a create request."""
    if not isinstance(body, dict):
        raise _openai_refusal(
            400, "Invalid type for request body: expected an object.", None, "invalid_type"
        )
    values: list[str] = []
    for name in ("input_file_id", "endpoint", "completion_window"):
        value = body.get(name)
        if value is None:
            raise _openai_refusal(
                400, f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
            )
        if not isinstance(value, str):
            raise _openai_refusal(
                400, f"Invalid type for '{name}': expected a string.", name, "invalid_type"
            )
        values.append(value)
    input_file_id, endpoint, window = values
    if window != "24h":
        raise _openai_refusal(
            400,
            f"Invalid value: '{window}'. Supported values are: '24h'.",
            "completion_window",
            "invalid_value",
        )
    if endpoint != _ENDPOINT:
        raise _openai_refusal(
            400,
            f"Invalid value: '{endpoint}'. The fake provider supports only '{_ENDPOINT}'.",
            "endpoint",
            "invalid_value",
        )
    metadata = body.get("metadata")
    if metadata is not None and not _valid_metadata(metadata):
        raise _openai_refusal(
            400,
            "Invalid 'metadata': expected an object of at most 16 string values, keys of at "
            "most 64 characters and values of at most 512.",
            "metadata",
            "invalid_value",
        )
    return input_file_id, endpoint, window, metadata


def _valid_metadata(metadata: Any) -> bool:
    return (
        isinstance(metadata, dict)
        and len(metadata) <= 16
        and all(
            isinstance(key, str) and isinstance(value, str) and len(key) <= 64 and len(value) <= 512
            for key, value in metadata.items()
        )
    )


def _check_create_anthropic(body: Any, max_requests: int) -> list[BatchLine]:
    """The requests of a create request, checked as the real API checks them at creation."""
    if not isinstance(body, dict):
        raise _anthropic_refusal(400, "invalid_request_error", "Input should be a valid dictionary")
    requests = body.get("requests")
    if requests is None:
        raise _anthropic_refusal(400, "invalid_request_error", "requests: Field required")
    if not isinstance(requests, list):
        raise _anthropic_refusal(
            400, "invalid_request_error", "requests: Input should be a valid list"
        )
    if not requests:
        raise _anthropic_refusal(
            400,
            "invalid_request_error",
            "requests: List should have at least 1 item after validation, not 0",
        )
    if len(requests) > max_requests:
        raise _anthropic_refusal(
            413,
            "request_too_large",
            f"A message batch can hold at most {max_requests} requests; this one has "
            f"{len(requests)}.",
        )
    lines: list[BatchLine] = []
    seen: set[str] = set()
    for index, item in enumerate(requests):
        where = f"requests.{index}"
        if not isinstance(item, dict):
            raise _anthropic_refusal(
                400, "invalid_request_error", f"{where}: Input should be a valid dictionary"
            )
        custom_id = item.get("custom_id")
        if custom_id is None:
            raise _anthropic_refusal(
                400, "invalid_request_error", f"{where}.custom_id: Field required"
            )
        if not isinstance(custom_id, str) or not ANTHROPIC_CUSTOM_ID.fullmatch(custom_id):
            raise _anthropic_refusal(
                400,
                "invalid_request_error",
                f"{where}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'",
            )
        if custom_id in seen:
            raise _anthropic_refusal(
                400,
                "invalid_request_error",
                f"{where}.custom_id: duplicate custom_id '{custom_id}'; each custom_id must be "
                "unique within a message batch",
            )
        params = item.get("params")
        if params is None:
            raise _anthropic_refusal(
                400, "invalid_request_error", f"{where}.params: Field required"
            )
        if not isinstance(params, dict):
            raise _anthropic_refusal(
                400, "invalid_request_error", f"{where}.params: Input should be a valid dictionary"
            )
        seen.add(custom_id)
        lines.append(BatchLine(custom_id, params))
    return lines


def _limit(request: web.Request, default: int, maximum: int) -> int:
    """The ``limit`` query parameter; ValueError (with a message) when it is not valid."""
    text = request.query.get("limit")
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected an integer, got '{text}'") from None
    if not 1 <= value <= maximum:
        raise ValueError(f"expected a value between 1 and {maximum}, got {value}")
    return value


def _page_after(
    newest_first: Sequence[_Job], after: str | None, limit: int
) -> tuple[list[_Job], bool]:
    """The ``limit`` batches listed after ``after`` (older than it), and whether more follow.

    An unknown cursor gives an empty page."""
    start = 0
    if after is not None:
        ids = [job.id for job in newest_first]
        if after not in ids:
            return [], False
        start = ids.index(after) + 1
    rest = newest_first[start:]
    return list(rest[:limit]), len(rest) > limit


def _page_before(newest_first: Sequence[_Job], before: str, limit: int) -> tuple[list[_Job], bool]:
    """The ``limit`` batches listed just before ``before`` (newer than it), and whether more
    precede them."""
    ids = [job.id for job in newest_first]
    if before not in ids:
        return [], False
    rest = newest_first[: ids.index(before)]
    return list(rest[-limit:]), len(rest) > limit


# -- responses ---------------------------------------------------------------------------------


def _origin(request: web.Request) -> str:
    """``http://host:port`` as the client reached us (for ``results_url``)."""
    return str(request.url.origin())


def _openai_response(status: int, body: bytes, ident: str) -> web.Response:
    return web.Response(
        body=body, status=status, content_type=_JSON, headers={"x-request-id": f"req_{ident}"}
    )


def _openai_json(value: Any, ident: str) -> web.Response:
    return _openai_response(200, orjson.dumps(value), ident)


def _anthropic_error(refusal: _AnthropicRefusal, request_id: str) -> web.Response:
    body = _anthropic.error_body(refusal.type, refusal.message, request_id)
    return web.Response(
        body=body, status=refusal.status, content_type=_JSON, headers={"request-id": request_id}
    )


def _anthropic_json(value: Any, request_id: str) -> web.Response:
    return web.Response(
        body=orjson.dumps(value), content_type=_JSON, headers={"request-id": request_id}
    )
