"""Gemini's Batch Mode (half price, a 24-hour target; a batch not done in 48 hours expires).

::

    part ≤ INLINE_MAX_BYTES ──POST {base}/v1beta/models/{model}:batchGenerateContent
                               {"batch": {"displayName", "inputConfig": {"requests": {"requests":
                               [{"request", "metadata": {"key"}}, ...]}}}}──> batches/{id}
    larger part ──POST {base}/upload/v1beta/files (resumable: start, then the file)──> files/{id}
                ──POST ...:batchGenerateContent {"inputConfig": {"fileName": "files/{id}"}}──>
    GET {base}/v1beta/batches/{id} ... until metadata.state is SUCCEEDED | FAILED | CANCELLED |
                                       EXPIRED
    results: inline, in the operation's metadata.output.inlinedResponses; or
             GET {base}/download/v1beta/{responsesFile}:download?alt=media, one JSONL line each

A part file holds one ``{"key", "request"}`` line per row: the request key is the ``key`` (in a
file) or ``metadata.key`` (inline), which results carry back. Each response is parsed with the
online client's ``parse_generate`` and each error (``{"code", "message", "status"}``) classified
with ``classify_http_error``, so a batch row looks exactly like the same row sent online.

A batch is found again (``find_submitted``) by its ``displayName``, which carries the run id and
part number, in ``GET {base}/v1beta/batches`` (every page is read: Google documents no order).
Rows an ended batch did not answer (it expired, was cancelled, or answered them with an error)
are left for the online pass, or recorded, as for the other providers.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping
from contextlib import aclosing
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote, urlencode

import anyio
import httpx
import orjson

from ..errors import RowRejectedError, TransientError
from ..limits.retry import classify_http_error
from ..records import Reply, Request
from ._base import APIClient, iter_lines
from ._batch import CLOCK_SLACK_S, BatchLine, BatchPart, BatchState, LineError, Submitted
from .gemini import API_VERSION, generate_bodies, model_path, parse_generate

__all__ = ["INLINE_MAX_BYTES", "GeminiBatchProvider", "batch_state", "result_line"]

# Parts up to this size go inline: Google refuses a request body over 20 MB, and the inline
# envelope adds a few bytes a line. Larger parts are uploaded (a file may be up to 2 GB).
INLINE_MAX_BYTES: Final = 10 * 1024 * 1024
_ENDED: Final = frozenset(
    ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED")
)
_CHUNK: Final = 1 << 20
_LIST_PAGE: Final = 100
_MAX_PAGES: Final = 100  # 10,000 batches looked at, at most, when finding one again


class GeminiBatchProvider:
    """``BatchProvider`` for Gemini's Batch Mode, for one model."""

    name = "gemini"

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str,
        api_key: str,
        model: str,
        timeout_s: float = 60.0,
        max_requests: int = 50_000,
        max_bytes: int = 2_000_000_000,
        inline_max_bytes: int = INLINE_MAX_BYTES,
    ) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._bodies = generate_bodies()
        self.inline_max_bytes = inline_max_bytes
        self.model = model
        self._http = APIClient(
            transport,
            provider=self.name,
            base_url=base_url,
            headers={"x-goog-api-key": api_key},
            timeout_s=timeout_s,
        )

    def line(self, request: Request) -> bytes:
        """``{"key", "request"}``, the body spliced in as encoded."""
        return b"".join(
            (
                b'{"key":',
                orjson.dumps(request.request_key),
                b',"request":',
                self._bodies.encode(request),
                b"}",
            )
        )

    async def submit(self, part: BatchPart, *, metadata: Mapping[str, str]) -> Submitted:
        """Create the part's batch: its requests inline when the part is small, else the part
        file uploaded first. Its ``displayName`` names the run and part (``find_submitted``)."""
        if part.count > self.max_requests or part.bytes > self.max_bytes:
            raise RowRejectedError(
                f"gemini: batch part {part.index} has {part.count} requests and {part.bytes} "
                f"bytes; a batch may have at most {self.max_requests} requests and "
                f"{self.max_bytes} bytes",
                error_type="request_too_large",
            )
        name = display_name(metadata, part.index)
        file_name: str | None = None
        if part.bytes <= self.inline_max_bytes:
            source: dict[str, Any] = {"requests": {"requests": await _inline(part)}}
        else:
            file_name = await self._upload(part, name)
            source = {"fileName": file_name}
        body = {"batch": {"displayName": name, "inputConfig": source}}
        path = f"/{API_VERSION}/{model_path(self.model)}:batchGenerateContent"
        operation = await self._http.call("POST", path, json=body)
        return Submitted(batch_state(operation).batch_id, file_name)

    async def _upload(self, part: BatchPart, name: str) -> str:
        """The part file through the Files API's resumable upload: ``start`` (which answers the
        upload URL), then the whole file with ``upload, finalize``, streamed from disk."""
        size = part.bytes  # the part file as written (PartWriter counts every byte)
        started = await self._http.respond(
            "POST",
            f"/upload/{API_VERSION}/files",
            json={"file": {"displayName": f"{name}.jsonl"}},
            headers={
                "X-Goog-Upload-Protocol": "resumable",
                "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(size),
                "X-Goog-Upload-Header-Content-Type": "application/jsonl",
            },
        )
        url = started.headers.get("x-goog-upload-url")
        if not url:
            raise TransientError(
                "gemini: the upload was not started (no X-Goog-Upload-URL in the answer)",
                error_type="upload_failed",
            )
        async with await anyio.open_file(part.path, "rb") as handle:
            done = await self._http.respond(
                "POST",
                url,
                content=_chunks(handle),
                headers={
                    "X-Goog-Upload-Command": "upload, finalize",
                    "X-Goog-Upload-Offset": "0",
                    "content-length": str(size),
                },
            )
        try:
            file = orjson.loads(done.content)["file"]
            file_name = file["name"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise TransientError(
                "gemini: the upload's answer names no file", error_type="upload_failed"
            ) from exc
        if done.headers.get("x-goog-upload-status") != "final" or not isinstance(file_name, str):
            raise TransientError("gemini: the upload did not finish", error_type="upload_failed")
        return file_name

    async def find_submitted(
        self,
        part: BatchPart,
        *,
        metadata: Mapping[str, str],
        since: float,
        known: Collection[str],
    ) -> Submitted | None:
        """The batch whose ``displayName`` is this part's, created no earlier than ``since -
        CLOCK_SLACK_S`` and not in ``known``; None when there is none (or ``metadata`` has no
        ``run_id``: nothing to tell the part's batch by)."""
        if not metadata.get("run_id"):
            return None
        wanted = display_name(metadata, part.index)
        oldest = since - CLOCK_SLACK_S
        token: str | None = None
        for _ in range(_MAX_PAGES):
            query = {"pageSize": str(_LIST_PAGE)}
            if token:
                query["pageToken"] = token
            listing = await self._http.call("GET", f"/{API_VERSION}/batches?{urlencode(query)}")
            operations = listing.get("operations") or []
            if not isinstance(operations, list):
                raise TransientError(
                    "gemini: the list of batches is not a list", error_type="bad_response"
                )
            for operation in operations:
                if not isinstance(operation, Mapping):
                    continue
                meta = operation.get("metadata")
                meta = meta if isinstance(meta, Mapping) else {}
                name = operation.get("name")
                if (
                    isinstance(name, str)
                    and name not in known
                    and meta.get("displayName") == wanted
                    and _seconds(meta.get("createTime")) >= oldest
                ):
                    return Submitted(name, _input_file(meta))
            token = listing.get("nextPageToken")
            if not isinstance(token, str) or not token:
                return None
        return None

    async def poll(self, batch_id: str) -> BatchState:
        return batch_state(await self._http.call("GET", _batch_path(batch_id)))

    async def results(self, state: BatchState) -> AsyncGenerator[BatchLine, None]:
        """Every answered request of an ended batch: the lines of its responses file,
        streamed, or its inline responses (read again from the batch)."""
        if not state.ended:
            raise ValueError(f"batch {state.batch_id} has not ended (status {state.status!r})")
        if state.output_file_id is not None:
            path = f"/download/{API_VERSION}/{quote(state.output_file_id, safe='/')}:download"
            number = 0
            async with aclosing(self._http.lines(f"{path}?alt=media")) as lines:
                async for raw in lines:
                    number += 1
                    if not raw.strip():
                        continue
                    try:
                        doc = orjson.loads(raw)
                    except orjson.JSONDecodeError as exc:
                        raise _bad_line(state.batch_id, number, "not valid JSON") from exc
                    yield result_line(doc, batch_id=state.batch_id, number=number)
            return
        operation = await self._http.call("GET", _batch_path(state.batch_id))
        meta = operation.get("metadata")
        output = meta.get("output") if isinstance(meta, Mapping) else None
        inlined = output.get("inlinedResponses") if isinstance(output, Mapping) else None
        items = inlined.get("inlinedResponses") if isinstance(inlined, Mapping) else None
        for number, item in enumerate(items or (), 1):
            yield result_line(item, batch_id=state.batch_id, number=number)

    async def cancel(self, batch_id: str) -> BatchState:
        await self._http.call("POST", f"{_batch_path(batch_id)}:cancel")
        return await self.poll(batch_id)

    async def aclose(self) -> None:
        await self._http.aclose()


def display_name(metadata: Mapping[str, str], part: int) -> str:
    """The ``displayName`` of a part's batch: the run and the part, to find it again by."""
    return f"pipeline {metadata.get('run_id', '')} part {part}".strip()


async def _inline(part: BatchPart) -> list[dict[str, Any]]:
    """The part file's ``{"key", "request"}`` lines as inline requests."""
    requests: list[dict[str, Any]] = []
    async with await anyio.open_file(part.path, "rb") as handle:
        async for line in iter_lines(_chunks(handle)):
            if line.strip():
                doc = orjson.loads(line)
                requests.append({"request": doc["request"], "metadata": {"key": doc["key"]}})
    return requests


async def _chunks(handle: anyio.AsyncFile[bytes]) -> AsyncIterator[bytes]:
    while chunk := await handle.read(_CHUNK):
        yield chunk


def _batch_path(batch_id: str) -> str:
    name = batch_id if batch_id.startswith("batches/") else f"batches/{batch_id}"
    return f"/{API_VERSION}/{quote(name, safe='/')}"


def _input_file(meta: Mapping[str, Any]) -> str | None:
    config = meta.get("inputConfig")
    name = config.get("fileName") if isinstance(config, Mapping) else None
    return name if isinstance(name, str) else None


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    try:
        return int(value)  # int64 counts come as JSON strings
    except (TypeError, ValueError):
        return 0


def _seconds(value: Any) -> float:
    """An RFC 3339 time (``createTime``) as unix seconds; 0 when unreadable."""
    if not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def batch_state(operation: Mapping[str, Any]) -> BatchState:
    """A batch's long-running operation as a ``BatchState``."""
    name = operation.get("name")
    meta = operation.get("metadata")
    if not isinstance(name, str) or not name or not isinstance(meta, Mapping):
        raise TransientError(
            "gemini: answer lacks 'name' or 'metadata' (not a batch operation)",
            error_type="bad_response",
        )
    status = meta.get("state")
    if not isinstance(status, str):
        raise TransientError("gemini: batch has no state", error_type="bad_response")
    stats = meta.get("batchStats")
    stats = stats if isinstance(stats, Mapping) else {}
    counts = {key: _int(value) for key, value in stats.items()}
    output = meta.get("output")
    responses = output.get("responsesFile") if isinstance(output, Mapping) else None
    error = operation.get("error")
    errors: tuple[LineError, ...] = ()
    if isinstance(error, Mapping):
        message = error.get("message")
        code = error.get("status")
        errors = (
            LineError(
                None,
                code if isinstance(code, str) else None,
                message if isinstance(message, str) and message else "the batch failed",
            ),
        )
    return BatchState(
        batch_id=name,
        status=status,
        ended=status in _ENDED or operation.get("done") is True,
        failed=status == "BATCH_STATE_FAILED",
        total=counts.get("requestCount", 0),
        succeeded=counts.get("successfulRequestCount", 0),
        errored=counts.get("failedRequestCount", 0),
        output_file_id=responses if isinstance(responses, str) and responses else None,
        errors=errors,
        raw_counts=counts,
    )


def result_line(item: Any, *, batch_id: str, number: int) -> BatchLine:
    """One result: a responses-file line ``{"key", "response" | "error"}`` or an inline
    response ``{"response" | "error", "metadata": {"key"}}`` (``number`` is 1-based)."""
    if not isinstance(item, Mapping):
        raise _bad_line(batch_id, number, "not an object")
    key = item.get("key")
    if key is None and isinstance(item.get("metadata"), Mapping):
        key = item["metadata"].get("key")
    if not isinstance(key, str):
        raise _bad_line(batch_id, number, "no key")
    response = item.get("response")
    if isinstance(response, Mapping):
        try:
            text, finish, usage = parse_generate(response)
        except TransientError as exc:
            where = f"result {number} of batch {batch_id}"
            return BatchLine(key, error_type=exc.error_type, error=f"{exc} ({where})")
        return BatchLine(
            key,
            reply=Reply(
                text=text,
                finish_reason=finish,
                usage=usage,
            ),
        )
    error = item.get("error")
    if isinstance(error, Mapping):
        code = error.get("code")
        status = code if isinstance(code, int) and not isinstance(code, bool) else 500
        err = classify_http_error("gemini", status, orjson.dumps({"error": error}), {})
        return BatchLine(key, error_type=err.error_type, error=str(err))
    raise _bad_line(batch_id, number, "neither a response nor an error")


def _bad_line(batch_id: str, number: int, why: str) -> TransientError:
    return TransientError(
        f"gemini: cannot read result {number} of batch {batch_id}: {why}",
        error_type="bad_response",
    )
