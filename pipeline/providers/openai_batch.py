"""OpenAI's Batch API for chat completions (half price, answered within 24 hours).

::

    part file ──POST {base_url}/files (multipart, streamed from disk)──> input_file_id
              ──POST {base_url}/batches──> batch_id
    GET {base_url}/batches/{id} ... until completed | failed | expired | cancelled
    GET {base_url}/files/{output_file_id}/content   200 answers, one JSONL line each
    GET {base_url}/files/{error_file_id}/content    non-200 answers and expired requests

Output lines are ``{"custom_id", "response": {"status_code", "request_id", "body"}, "error"}``;
a request the batch never ran (it expired) has ``"response": null`` and an ``error`` object.
Answers are parsed with the online client's ``parse_chat_completion`` and errors classified
with ``classify_http_error``, so a batch row looks exactly like the same row sent online.

A batch is found again (``find_submitted``, and within ``submit`` after a create whose answer
was lost) in ``GET {base_url}/batches``, newest first: by the ``run_id`` and ``part`` of the
metadata the runner gives every batch, or by the part's uploaded input file.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping
from contextlib import aclosing
from typing import Any, Final
from urllib.parse import quote

import anyio
import httpx
import orjson

from ..errors import ProviderError, RowRejectedError, TransientError
from ..limits.retry import classify_http_error
from ..records import Reply, Request
from ._base import APIClient
from ._batch import CLOCK_SLACK_S, BatchLine, BatchPart, BatchState, LineError, Submitted
from .openai import chat_bodies, parse_chat_completion

__all__ = ["ENDPOINT", "OpenAIBatchProvider", "batch_state", "result_line"]

ENDPOINT: Final = "/v1/chat/completions"
_ENDED: Final = frozenset(("completed", "failed", "expired", "cancelled"))
# ``error.code`` of an output line the batch never ran -> the pipeline's error_type.
_LINE_ERROR_TYPES: Final = {"batch_expired": "expired", "batch_cancelled": "canceled"}
_CHUNK: Final = 1 << 20  # bytes read from the part file at a time
_LIST_LIMIT: Final = 100  # batches per page when looking for one (the API's maximum)
_UNSAFE_FILENAME: Final = re.compile(r"[^A-Za-z0-9._-]")
_LINE_MIDDLE: Final = b',"method":"POST","url":' + orjson.dumps(ENDPOINT) + b',"body":'


class OpenAIBatchProvider:
    """``BatchProvider`` for OpenAI: ``/files`` and ``/batches`` under ``base_url`` (which ends
    in ``/v1``, as for the online client)."""

    name = "openai"

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str,
        api_key: str,
        timeout_s: float = 60.0,
        max_requests: int = 50_000,
        max_bytes: int = 200_000_000,  # "200 MB", read as decimal: the stricter reading
    ) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._bodies = chat_bodies()
        self._http = APIClient(
            transport,
            provider=self.name,
            base_url=base_url,
            headers={"authorization": f"Bearer {api_key}"},
            timeout_s=timeout_s,
        )

    def line(self, request: Request) -> bytes:
        """``{"custom_id", "method", "url", "body"}``, the body spliced in as encoded."""
        return b"".join(
            (
                b'{"custom_id":',
                orjson.dumps(request.request_key),
                _LINE_MIDDLE,
                self._bodies.encode(request),
                b"}",
            )
        )

    async def submit(self, part: BatchPart, *, metadata: Mapping[str, str]) -> Submitted:
        """Upload the part file, then create a batch over it.

        When creating fails transiently (a timeout, a dropped connection, a 5xx), the batch may
        exist with only the answer lost: the batches created since this call began are searched
        for one over the file it uploaded (or with its metadata) before the create's error is
        raised, so that the caller does not pay for the part twice. Any other failure after the
        upload leaves the uploaded file behind (OpenAI deletes batch files after 30 days); a
        second ``submit`` uploads the part again.
        """
        started = time.time()
        if part.count > self.max_requests or part.bytes > self.max_bytes:
            raise RowRejectedError(
                f"openai: batch part {part.index} has {part.count} requests and {part.bytes} "
                f"bytes; a batch input file may have at most {self.max_requests} requests and "
                f"{self.max_bytes} bytes",
                error_type="request_too_large",
            )
        uploaded = await self._upload(part)
        input_file_id = _required_str(uploaded, "id", "file")
        body: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
        }
        if metadata:
            body["metadata"] = dict(metadata)
        try:
            batch = await self._http.call("POST", "/batches", json=body)
        except TransientError:
            try:
                found = await self._find(metadata, input_file_id, since=started, known=())
            except ProviderError:
                found = None  # the create's own error says more
            if found is None:
                raise
            return found
        return Submitted(_required_str(batch, "id", "batch"), input_file_id)

    async def find_submitted(
        self,
        part: BatchPart,
        *,
        metadata: Mapping[str, str],
        since: float,
        known: Collection[str],
    ) -> Submitted | None:
        """The batch whose metadata has this ``metadata``'s ``run_id`` and ``part``, created no
        earlier than ``since - CLOCK_SLACK_S`` and not in ``known``; None when the batches
        created since then hold none (or ``metadata`` has no ``run_id`` and ``part``: nothing to
        tell this part's batch by).

        The list is read newest first, a page of 100 at a time, until a page reaches back
        before that time. Raises what ``GET /batches`` raises (``TransientError`` for a
        timeout, a 5xx or an answer that is not a list page).
        """
        return await self._find(metadata, None, since=since, known=known)

    async def _find(
        self,
        metadata: Mapping[str, str],
        input_file_id: str | None,
        *,
        since: float,
        known: Collection[str],
    ) -> Submitted | None:
        """A batch created since ``since - CLOCK_SLACK_S``, not in ``known``, over
        ``input_file_id`` or with ``metadata``'s ``run_id`` and ``part``."""
        run_id, part = metadata.get("run_id"), metadata.get("part")
        tag = (run_id, part) if run_id and part else None
        if input_file_id is None and tag is None:
            return None
        oldest = since - CLOCK_SLACK_S
        pages = self._http.pages("/batches", cursor="after", limit=_LIST_LIMIT)
        async with aclosing(pages):
            async for page in pages:
                for item in page:
                    batch_id = item.get("id")
                    created = item.get("created_at")
                    if (
                        isinstance(batch_id, str)
                        and batch_id not in known
                        and isinstance(created, int | float)
                        and created >= oldest
                        and _made_for(item, tag, input_file_id)
                    ):
                        return Submitted(batch_id, _optional_str(item.get("input_file_id")))
                created = page[-1].get("created_at") if page else None
                if isinstance(created, int | float) and created < oldest:
                    return None  # newest first: every later page is older still
        return None

    async def poll(self, batch_id: str) -> BatchState:
        return batch_state(await self._http.call("GET", f"/batches/{quote(batch_id, safe='')}"))

    async def results(self, state: BatchState) -> AsyncGenerator[BatchLine, None]:
        """The output file's lines, then the error file's, each streamed as it downloads.

        Raises ``TransientError`` (naming the file and line) for a line that is not an output
        line at all; a line whose 200 body is not a chat completion fails only its own row
        (``error_type`` ``bad_response``).
        """
        if not state.ended:
            raise ValueError(f"batch {state.batch_id} has not ended (status {state.status!r})")
        for file_id in (state.output_file_id, state.error_file_id):
            if file_id is None:
                continue
            number = 0
            path = f"/files/{quote(file_id, safe='')}/content"
            async with aclosing(self._http.lines(path)) as lines:
                async for raw in lines:
                    number += 1
                    line = result_line(raw, file_id=file_id, number=number)
                    if line is not None:
                        yield line

    async def cancel(self, batch_id: str) -> BatchState:
        path = f"/batches/{quote(batch_id, safe='')}/cancel"
        return batch_state(await self._http.call("POST", path))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _upload(self, part: BatchPart) -> Mapping[str, Any]:
        """``POST /files`` as multipart/form-data (``purpose=batch``, then ``file``), the file
        streamed from disk in ``_CHUNK`` pieces behind an exact ``content-length``."""
        boundary = secrets.token_hex(16)
        filename = _UNSAFE_FILENAME.sub("_", part.path.name)
        if not filename.endswith(".jsonl"):
            filename += ".jsonl"  # OpenAI refuses batch input files named otherwise
        head = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="purpose"\r\n\r\n'
            "batch\r\n"
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        async with await anyio.open_file(part.path, "rb") as handle:
            size = os.fstat(handle.wrapped.fileno()).st_size
            return await self._http.call(
                "POST",
                "/files",
                content=_multipart(head, handle, size, tail, part),
                headers={
                    "content-type": f"multipart/form-data; boundary={boundary}",
                    "content-length": str(len(head) + size + len(tail)),
                },
            )


async def _multipart(
    head: bytes, handle: anyio.AsyncFile[bytes], size: int, tail: bytes, part: BatchPart
) -> AsyncIterator[bytes]:
    yield head
    sent = 0
    while chunk := await handle.read(min(_CHUNK, size - sent)):
        sent += len(chunk)
        yield chunk
    if sent != size:
        raise TransientError(
            f"openai: batch part file {part.path} changed while it was uploaded "
            f"({sent} of {size} bytes read)",
            error_type="upload_failed",
        )
    yield tail


def _made_for(
    item: Mapping[str, Any], tag: tuple[str, str] | None, input_file_id: str | None
) -> bool:
    """Whether a listed batch is over ``input_file_id`` or has the metadata ``run_id`` and
    ``part`` of ``tag``."""
    if input_file_id is not None and item.get("input_file_id") == input_file_id:
        return True
    metadata = item.get("metadata")
    if tag is None or not isinstance(metadata, Mapping):
        return False
    return (metadata.get("run_id"), metadata.get("part")) == tag


def batch_state(body: Mapping[str, Any]) -> BatchState:
    """A ``batch`` object as a ``BatchState``."""
    batch_id = _required_str(body, "id", "batch")
    status = _required_str(body, "status", "batch")
    counts = body.get("request_counts")
    raw_counts = _int_values(counts if isinstance(counts, Mapping) else {})
    errors = body.get("errors")
    data = errors.get("data") if isinstance(errors, Mapping) else None
    return BatchState(
        batch_id=batch_id,
        status=status,
        ended=status in _ENDED,
        failed=status == "failed",
        total=raw_counts.get("total", 0),
        succeeded=raw_counts.get("completed", 0),
        errored=raw_counts.get("failed", 0),
        output_file_id=_optional_str(body.get("output_file_id")),
        error_file_id=_optional_str(body.get("error_file_id")),
        errors=tuple(_line_error(item) for item in data or () if isinstance(item, Mapping)),
        raw_counts=raw_counts,
    )


def result_line(raw: bytes, *, file_id: str, number: int) -> BatchLine | None:
    """One line of an output or error file (``number`` is 1-based); None for a blank line."""
    if not raw.strip():
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad_line(file_id, number, "not valid JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("custom_id"), str):
        raise _bad_line(file_id, number, "no custom_id")
    custom_id: str = doc["custom_id"]
    response = doc.get("response")
    error = doc.get("error")
    if isinstance(response, dict):
        status = response.get("status_code")
        if not isinstance(status, int) or isinstance(status, bool):
            raise _bad_line(file_id, number, "response without a status_code")
        body = response.get("body")
        if status != 200:
            content = orjson.dumps(body) if body is not None else b""
            err = classify_http_error("openai", status, content, {})
            return BatchLine(custom_id, error_type=err.error_type, error=str(err))
        try:
            if not isinstance(body, dict):
                raise TransientError(
                    "openai: answer is not a JSON object", error_type="bad_response"
                )
            text, finish, usage = parse_chat_completion(body)
        except TransientError as exc:
            where = f"line {number} of file {file_id}"
            return BatchLine(custom_id, error_type=exc.error_type, error=f"{exc} ({where})")
        request_id = response.get("request_id")
        return BatchLine(
            custom_id,
            reply=Reply(
                text=text,
                finish_reason=finish,
                usage=usage,
                request_id=request_id if isinstance(request_id, str) else None,
            ),
        )
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        error_type = _LINE_ERROR_TYPES.get(code, code) if isinstance(code, str) and code else None
        text = message if isinstance(message, str) and message else (code or "no message")
        return BatchLine(custom_id, error_type=error_type or "batch_error", error=f"openai: {text}")
    raise _bad_line(file_id, number, "neither a response nor an error")


def _bad_line(file_id: str, number: int, why: str) -> TransientError:
    return TransientError(
        f"openai: cannot read line {number} of batch file {file_id}: {why}",
        error_type="bad_response",
    )


def _line_error(item: Mapping[str, Any]) -> LineError:
    line = item.get("line")
    code = item.get("code")
    message = item.get("message")
    return LineError(
        line=line if isinstance(line, int) and not isinstance(line, bool) else None,
        code=code if isinstance(code, str) else None,
        message=message if isinstance(message, str) and message else str(code or "no message"),
    )


def _required_str(body: Mapping[str, Any], key: str, kind: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise TransientError(
            f"openai: {kind} object lacks {key!r} (not a {kind})", error_type="bad_response"
        )
    return value


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int_values(counts: Mapping[str, Any]) -> dict[str, int]:
    return {
        key: value
        for key, value in counts.items()
        if isinstance(value, int) and not isinstance(value, bool)
    }
