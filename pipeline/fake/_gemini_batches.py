"""Gemini's Batch Mode and Files API, as the fake serves them.

Batches
    ``POST   /v1beta/models/{model}:batchGenerateContent``  create: ``{"batch": {"displayName",
             "inputConfig": {"requests": {"requests": [{"request", "metadata": {"key"}}]}}
             | {"fileName": "files/..."}}}`` → the batch's long-running operation
    ``GET    /v1beta/batches``                   list, newest first (``pageSize`` 1-100,
                                                 ``pageToken``) → ``operations``, ``nextPageToken``
    ``GET    /v1beta/batches/{id}``              the operation
    ``POST   /v1beta/batches/{id}:cancel``      cancel
    ``DELETE /v1beta/batches/{id}``              forget it
Files
    ``POST   /upload/v1beta/files``              resumable upload: ``X-Goog-Upload-Command:
             start`` answers an ``X-Goog-Upload-URL``; chunks are POSTed there with ``upload``
             (``upload, finalize`` for the last) at ``X-Goog-Upload-Offset``
    ``GET    /v1beta/files/{id}``                the file
    ``GET    /v1beta/files/{id}:download?alt=media`` (also under ``/download/v1beta/``) its bytes
    ``DELETE /v1beta/files/{id}``
Every path is served under ``v1`` too (the official SDK 3.x uses it), when the request carries
``x-goog-api-key`` (OpenAI's ``/v1/batches`` and ``/v1/files`` are the same paths).

The operation (``{"name": "batches/...", "metadata": {... "state", "batchStats", "output"},
"done"}``) moves ``BATCH_STATE_PENDING`` → ``RUNNING`` → ``SUCCEEDED`` (or ``FAILED`` when the
input file does not validate, ``CANCELLED``, ``EXPIRED``), on the same clock as the other
providers' batches (``_batches.BatchJob`` and the ``batch_*`` knobs). Results come back the way
the input came: inline requests as ``output.inlinedResponses.inlinedResponses`` in request
order (each with its ``metadata``), a file as ``output.responsesFile``, a JSONL file of ``{"key",
"response"}`` or ``{"key", "error"}`` lines. An expired or cancelled batch keeps what it
answered (Google documents no partial output of an expired batch; the fake does what OpenAI's
does, so that what was paid comes back). Each request is checked and
answered by the online endpoint's code (``_gemini``) and paid under its ``key``. An inline
create over ``INLINE_MAX_BYTES`` is refused (400), as the real API refuses bodies over 20 MB.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

import orjson
from aiohttp import web

from . import _gemini
from ._accounting import Accounting
from ._answers import seed_of
from ._batches import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    EXPIRED,
    FAILED,
    FINALIZING,
    IN_PROGRESS,
    VALIDATING,
    BatchJob,
    BatchLine,
    BatchTiming,
    LineServices,
    rfc3339,
)
from ._config import FakeConfig

__all__ = ["INLINE_MAX_BYTES", "GeminiBatch", "GeminiBatchAPI"]

INLINE_MAX_BYTES: Final = 20 * 1024 * 1024
FILE_TTL_S: Final = 48 * 3600  # uploaded files are deleted after 48 hours
_JSON: Final = "application/json"
_PATH: Final = re.compile(
    r"/(?P<where>upload/|download/)?(?P<version>v1beta|v1)/(?P<kind>batches|files)"
    r"(?:/(?P<tail>[^/]+))?"
)
_TYPE: Final = "type.googleapis.com/google.ai.generativelanguage.v1main."
_STATES: Final = {
    VALIDATING: "BATCH_STATE_PENDING",
    IN_PROGRESS: "BATCH_STATE_RUNNING",
    FINALIZING: "BATCH_STATE_RUNNING",
    CANCELLING: "BATCH_STATE_RUNNING",
    COMPLETED: "BATCH_STATE_SUCCEEDED",
    FAILED: "BATCH_STATE_FAILED",
    CANCELLED: "BATCH_STATE_CANCELLED",
    EXPIRED: "BATCH_STATE_EXPIRED",
}

GeminiResponse = Callable[[_gemini.GenerateRequest, str], tuple[dict[str, Any], int]]


class _Refusal(Exception):
    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(message)
        self.body = _gemini.error_body(status, message)
        self.status = status


@dataclass(slots=True)
class _File:
    name: str  # files/...
    display_name: str
    mime_type: str
    data: bytes
    created: float  # wall seconds
    generated: bool = False

    def to_json(self, origin: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "displayName": self.display_name,
            "mimeType": self.mime_type,
            "sizeBytes": str(len(self.data)),
            "createTime": rfc3339(self.created),
            "updateTime": rfc3339(self.created),
            "expirationTime": rfc3339(self.created + FILE_TTL_S),
            "sha256Hash": base64.b64encode(hashlib.sha256(self.data).digest()).decode(),
            "uri": f"{origin}/v1beta/{self.name}",
            "state": "ACTIVE",
            "source": "GENERATED" if self.generated else "UPLOADED",
        }
        if self.generated:
            body["downloadUri"] = f"{origin}/download/v1beta/{self.name}:download?alt=media"
        return body


@dataclass(slots=True)
class _Upload:
    display_name: str
    mime_type: str
    declared: int | None
    data: bytearray


class GeminiBatch(BatchJob):
    """One ``batchGenerateContent`` batch: inline requests, or the lines of an uploaded file."""

    def __init__(
        self,
        *,
        api: GeminiBatchAPI,
        model: str,
        display_name: str,
        inline: list[BatchLine] | None,
        file_name: str | None,
        file_data: bytes | None,
        fail_validation: bool,
        **job: Any,
    ) -> None:
        super().__init__(services=cast(LineServices, api), **job)  # the hooks below use api
        self.api = api
        self.model = model
        self.display_name = display_name
        self.inline = inline
        self.file_name = file_name
        self.file_data = file_data
        self.fail_validation = fail_validation
        self.error: dict[str, Any] | None = None
        self.responses_file: str | None = None
        self.inlined: list[dict[str, Any]] | None = None
        self.index: dict[str, int] = {}

    def _validate(self) -> list[dict[str, Any]]:
        if self.fail_validation:
            return [{"message": "The batch failed validation (batch_fail_validation is set)."}]
        if self.inline is not None:
            self.lines = self.inline
        else:
            data, self.file_data = self.file_data or b"", None
            lines: list[BatchLine] = []
            for number, raw in enumerate(data.split(b"\n"), 1):
                if not raw.strip():
                    continue
                try:
                    doc = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    return [{"message": f"Line {number} of {self.file_name} is not valid JSON."}]
                if not isinstance(doc, dict) or not isinstance(doc.get("request"), dict):
                    return [
                        {"message": f"Line {number} of {self.file_name} has no 'request' object."}
                    ]
                key = doc.get("key")
                lines.append(
                    BatchLine(key if isinstance(key, str) else str(number), doc["request"])
                )
            if not lines:
                return [{"message": f"The input file {self.file_name} holds no request."}]
            self.lines = lines
        self.index = {line.custom_id: i for i, line in enumerate(self.lines)}
        return []

    def _failed(self, errors: list[dict[str, Any]]) -> None:
        self.error = {"code": 400, "message": errors[0]["message"], "status": "INVALID_ARGUMENT"}

    def _answer(self, line: BatchLine, inject_error: bool) -> tuple[bool, bytes]:
        result = self.api.answer_line(self.model, line.custom_id, line.body, inject_error)
        return "response" in result, orjson.dumps(result)

    def _finish(self, moment: float) -> None:
        if self.inline is not None:
            answered = [orjson.loads(raw) for _, raw in self.results]
            answered.sort(key=lambda item: self.index.get(item["key"], 0))
            self.inlined = [
                {
                    **{k: v for k, v in item.items() if k != "key"},
                    "metadata": {"key": item["key"]},
                }
                for item in answered
            ]
            return
        data = b"".join(raw + b"\n" for _, raw in self.results)
        self.responses_file = self.api.store_output(self.id, data, self.wall(moment))

    def to_json(self) -> dict[str, Any]:
        """The batch as its long-running operation."""
        done = self.ended
        total = len(self.lines)
        pending = total - self.succeeded - self.errored if self.phase != FAILED else 0
        metadata: dict[str, Any] = {
            "@type": _TYPE + "GenerateContentBatch",
            "model": f"models/{self.model}",
            "displayName": self.display_name,
            "createTime": rfc3339(self.wall(self.created)),
            "updateTime": rfc3339(self.wall(max(self.at.values(), default=self.created))),
            "batchStats": {
                "requestCount": str(total),
                "successfulRequestCount": str(self.succeeded),
                "failedRequestCount": str(self.errored),
                "pendingRequestCount": str(max(pending, 0)),
            },
            "state": _STATES[self.phase],
            "name": self.id,
        }
        if self.file_name is not None:
            metadata["inputConfig"] = {"fileName": self.file_name}
        output: dict[str, Any] | None = None
        if self.responses_file is not None:
            output = {"responsesFile": self.responses_file}
        elif self.inlined is not None:
            output = {"inlinedResponses": {"inlinedResponses": self.inlined}}
        if done:
            ended = next(
                (self.at[p] for p in (COMPLETED, FAILED, CANCELLED, EXPIRED) if p in self.at),
                self.created,
            )
            metadata["endTime"] = rfc3339(self.wall(ended))
            if output is not None:
                metadata["output"] = output
        body: dict[str, Any] = {"name": self.id, "metadata": metadata, "done": done}
        if done and self.error is not None:
            body["error"] = self.error
        elif done and output is not None:
            body["response"] = {"@type": _TYPE + "GenerateContentBatchOutput", **output}
        return body


class GeminiBatchAPI:
    """The batches and files of one fake provider's Gemini API, and their handlers."""

    def __init__(
        self,
        *,
        config: Callable[[], FakeConfig],
        next_id: Callable[[], str],
        accounting: Accounting,
        gemini_response: GeminiResponse,
    ) -> None:
        self._config = config
        self._next_id = next_id
        self._accounting = accounting
        self._response = gemini_response
        self._batches: dict[str, GeminiBatch] = {}
        self._files: dict[str, _File] = {}
        self._uploads: dict[str, _Upload] = {}
        self._serial = 0

    def handles(self, request: web.Request) -> bool:
        """Whether ``request`` is for Gemini's batches or files: a ``v1beta``, ``upload/`` or
        ``download/`` path, or a ``v1`` one with Google's key header (OpenAI's ``/v1/batches``
        and ``/v1/files`` share those paths; the official SDK 3.x speaks ``v1``)."""
        match = _PATH.match(request.path)
        if match is None:
            return False
        return (
            match["version"] == "v1beta"
            or match["where"] is not None  # upload/, download/: Google's only
            or "x-goog-api-key" in request.headers
        )

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Answer a request ``handles`` claimed."""
        match = _PATH.match(request.path)
        assert match is not None
        kind, tail, method = match["kind"], match["tail"] or "", request.method
        if kind == "batches":
            if not tail and method == "GET":
                return await self._list(request)
            if tail and method == "GET":
                return await self._get(request, tail)
            if tail and method == "POST":
                return await self._post_batch(request, tail)
            if tail and method == "DELETE":
                return await self._delete(request, tail)
        elif match["where"] == "upload/" and not tail and method == "POST":
            return await self._upload(request)
        elif tail and method == "GET":
            return await self._get_file(request, tail, download=match["where"] == "download/")
        elif tail and method == "DELETE":
            return await self._delete_file(request, tail)
        body = _gemini.error_body(404, f"Method not found: {method} {request.path}")
        return _error(404, body)

    def clear(self) -> None:
        self._batches.clear()
        self._files.clear()
        self._uploads.clear()
        self._serial = 0

    def advance_all(self) -> None:
        now = time.monotonic()
        for job in self._batches.values():
            if not job.ended:
                job.advance(now)

    # -- what a batch asks of the server ----------------------------------------------------

    def new_id(self) -> str:
        return self._next_id()

    def answer_line(self, model: str, key: str, request: Any, inject_error: bool) -> dict[str, Any]:
        """``{"key", "response"}`` (paid for) or ``{"key", "error"}`` for one request."""
        accounting = self._accounting
        accounting.line_arrival(key)
        ident = self._next_id()
        if inject_error:
            accounting.line_failed("gemini")
            return {"key": key, **_gemini.error_object(503, "The model is overloaded.")}
        try:
            generate = _gemini.parse_generate_request(model, request)
        except _gemini.GeminiInvalid as invalid:
            accounting.line_failed("gemini")
            return {"key": key, **_gemini.error_object(400, invalid.message)}
        payload, cached = self._response(generate, ident)
        usage = payload["usageMetadata"]
        output = usage["candidatesTokenCount"] + usage.get("thoughtsTokenCount", 0)
        accounting.line_paid("gemini", key, generate.prompt_tokens, output, cached, 0)
        return {"key": key, "response": payload}

    def store_output(self, batch_name: str, data: bytes, wall: float) -> str:
        name = f"files/batch-{batch_name.removeprefix('batches/')}"
        self._files[name] = _File(name, name, "application/jsonl", data, wall, generated=True)
        return name

    # -- handlers ---------------------------------------------------------------------------

    def _allowed(self, request: web.Request) -> None:
        if not _gemini.api_key(request.headers, request.query):
            raise _Refusal(403, orjson.loads(_gemini.NO_KEY)["error"]["message"])
        if self._config().auth_fail:
            raise _Refusal(400, "API key not valid. Please pass a valid API key.")

    async def create(self, request: web.Request, model: str) -> web.Response:
        """``POST /v1beta/models/{model}:batchGenerateContent``."""
        config = self._config()
        try:
            self._allowed(request)
            raw = await request.read()
            if len(raw) > INLINE_MAX_BYTES:
                raise _Refusal(
                    400,
                    f"Request payload size exceeds the limit: {INLINE_MAX_BYTES} bytes.",
                )
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise _Refusal(400, "Invalid JSON payload received.") from None
            if config.quota_exhausted:
                return _error(429, _gemini.quota_body(model.removeprefix("models/")))
            batch = body.get("batch") if isinstance(body, dict) else None
            if not isinstance(batch, dict):
                raise _Refusal(400, "* BatchGenerateContentRequest.batch: batch is required")
            source = batch.get("inputConfig")
            if not isinstance(source, dict):
                raise _Refusal(400, "* GenerateContentBatch.input_config: input_config is required")
            inline, file_name, file_data = self._source(source)
        except _Refusal as refusal:
            return _error(refusal.status, refusal.body)
        self._serial += 1
        batch_id = f"batches/{self._next_id()}"
        now = time.monotonic()
        job = GeminiBatch(
            api=self,
            model=model.removeprefix("models/"),
            display_name=str(batch.get("displayName") or batch_id),
            inline=inline,
            file_name=file_name,
            file_data=file_data,
            fail_validation=config.batch_fail_validation,
            batch_id=batch_id,
            created=now,
            wall_offset=time.time() - now,
            timing=BatchTiming(
                config.batch_validating_s,
                config.batch_in_progress_s,
                config.batch_finalizing_s,
                config.batch_cancelling_s,
            ),
            error_rate=config.batch_error_rate,
            expire_after=config.batch_expire_after,
            seed=seed_of(str(config.seed), "gemini", str(self._serial)),
        )
        self._batches[batch_id] = job
        self._accounting.batch_created("gemini")
        job.advance(now)
        return _json(job.to_json())

    def _source(
        self, source: dict[str, Any]
    ) -> tuple[list[BatchLine] | None, str | None, bytes | None]:
        requests = source.get("requests")
        file_name = source.get("fileName")
        if (requests is None) == (file_name is None):
            raise _Refusal(
                400, "* GenerateContentBatch.input_config: exactly one of requests or file_name"
            )
        if file_name is not None:
            stored = self._files.get(str(file_name))
            if stored is None:
                raise _Refusal(404, f"File {file_name} not found.")
            return None, stored.name, stored.data
        items = requests.get("requests") if isinstance(requests, dict) else None
        if not isinstance(items, list) or not items:
            raise _Refusal(400, "* InlinedRequests.requests: requests must not be empty")
        lines: list[BatchLine] = []
        for index, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
                raise _Refusal(400, f"* requests[{index}].request: request is required")
            metadata = item.get("metadata")
            key = metadata.get("key") if isinstance(metadata, dict) else None
            lines.append(BatchLine(str(key) if key is not None else str(index), item["request"]))
        return lines, None, None

    def _batch(self, request: web.Request, tail: str) -> tuple[GeminiBatch, str]:
        self._allowed(request)
        name, _, method = tail.partition(":")
        job = self._batches.get(f"batches/{name}")
        if job is None:
            raise _Refusal(404, f"Batch batches/{name} not found.")
        if not job.ended:
            job.advance(time.monotonic())
        return job, method

    async def _get(self, request: web.Request, tail: str) -> web.Response:
        try:
            job, method = self._batch(request, tail)
            if method:
                raise _Refusal(404, f"Method not found: GET {request.path}")
        except _Refusal as refusal:
            return _error(refusal.status, refusal.body)
        return _json(job.to_json())

    async def _post_batch(self, request: web.Request, tail: str) -> web.Response:
        try:
            job, method = self._batch(request, tail)
            if method != "cancel":
                raise _Refusal(404, f"Method not found: POST {request.path}")
            if not job.cancel(time.monotonic()):
                raise _Refusal(400, f"Batch {job.id} has already ended and cannot be cancelled.")
        except _Refusal as refusal:
            return _error(refusal.status, refusal.body)
        return _json({})

    async def _delete(self, request: web.Request, tail: str) -> web.Response:
        try:
            job, _ = self._batch(request, tail)
        except _Refusal as refusal:
            return _error(refusal.status, refusal.body)
        del self._batches[job.id]
        return _json({})

    async def _list(self, request: web.Request) -> web.Response:
        try:
            self._allowed(request)
            size = int(request.query.get("pageSize", "50"))
            start = int(request.query.get("pageToken") or 0)
            if not 1 <= size <= 100:
                raise ValueError(size)
        except ValueError:
            return _error(400, _gemini.error_body(400, "Invalid pageSize or pageToken."))
        except _Refusal as refusal:
            return _error(refusal.status, refusal.body)
        newest_first = list(reversed(self._batches.values()))
        page = newest_first[start : start + size]
        now = time.monotonic()
        for job in page:
            if not job.ended:
                job.advance(now)
        listing: dict[str, Any] = {"operations": [job.to_json() for job in page]}
        if start + size < len(newest_first):
            listing["nextPageToken"] = str(start + size)
        return _json(listing)

    async def _upload(self, request: web.Request) -> web.Response:
        """Both steps of a resumable upload (``start``, then ``upload`` chunks)."""
        try:
            upload_id = request.query.get("upload_id")
            if upload_id is None:
                self._allowed(request)  # later steps: the upload id is the credential
            command = request.headers.get("X-Goog-Upload-Command", "")
            commands = {c.strip() for c in command.split(",")}
            if upload_id is None:
                if (
                    "start" not in commands
                    or request.headers.get("X-Goog-Upload-Protocol") != "resumable"
                ):
                    raise _Refusal(
                        400, "Only resumable uploads are supported (X-Goog-Upload-Command: start)."
                    )
                declared = request.headers.get("X-Goog-Upload-Header-Content-Length")
                raw = await request.read()
                meta = orjson.loads(raw).get("file", {}) if raw.strip() else {}
                upload_id = self._next_id()
                self._uploads[upload_id] = _Upload(
                    str(meta.get("displayName") or ""),
                    request.headers.get("X-Goog-Upload-Header-Content-Type")
                    or str(meta.get("mimeType") or "application/octet-stream"),
                    int(declared) if declared and declared.isdigit() else None,
                    bytearray(),
                )
                query = f"upload_id={upload_id}&upload_protocol=resumable"
                url = f"{request.url.origin()}{request.path}?{query}"
                return web.Response(
                    body=b"",
                    headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"},
                )
            upload = self._uploads.get(upload_id)
            if upload is None:
                raise _Refusal(404, f"No upload session {upload_id}.")
            offset = request.headers.get("X-Goog-Upload-Offset", "0")
            if not offset.isdigit() or int(offset) != len(upload.data):
                raise _Refusal(400, f"X-Goog-Upload-Offset {offset} is not {len(upload.data)}.")
            upload.data += await request.read()
            if "finalize" not in commands:
                return web.Response(body=b"", headers={"X-Goog-Upload-Status": "active"})
            del self._uploads[upload_id]
            if upload.declared is not None and upload.declared != len(upload.data):
                raise _Refusal(
                    400,
                    f"Upload of {len(upload.data)} bytes does not match the declared "
                    f"{upload.declared}.",
                )
        except _Refusal as refusal:
            return _error(refusal.status, refusal.body)
        name = f"files/{self._next_id()}"
        stored = _File(
            name, upload.display_name or name, upload.mime_type, bytes(upload.data), time.time()
        )
        self._files[name] = stored
        self._accounting.file_uploaded()
        return web.Response(
            body=orjson.dumps({"file": stored.to_json(str(request.url.origin()))}),
            content_type=_JSON,
            headers={"X-Goog-Upload-Status": "final"},
        )

    async def _get_file(self, request: web.Request, tail: str, *, download: bool) -> web.Response:
        try:
            self._allowed(request)
            name, _, method = tail.partition(":")
            stored = self._files.get(f"files/{name}")
            if stored is None:
                raise _Refusal(404, f"File files/{name} not found.")
        except _Refusal as refusal:
            return _error(refusal.status, refusal.body)
        if method == "download" or download:
            return web.Response(body=stored.data, content_type="application/octet-stream")
        return _json(stored.to_json(str(request.url.origin())))

    async def _delete_file(self, request: web.Request, tail: str) -> web.Response:
        try:
            self._allowed(request)
            name = tail
            if self._files.pop(f"files/{name}", None) is None:
                raise _Refusal(404, f"File files/{name} not found.")
        except _Refusal as refusal:
            return _error(refusal.status, refusal.body)
        return _json({})


def _json(value: Any) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type=_JSON)


def _error(status: int, body: bytes) -> web.Response:
    return web.Response(body=body, status=status, content_type=_JSON)
