"""Anthropic's Message Batches API (half price, answered within 24 hours).

::

    part file ──POST {base_url}/v1/messages/batches {"requests": [lines...]}──> msgbatch_id
    GET {base_url}/v1/messages/batches/{id} ... until processing_status == "ended"
    GET results_url (or .../{id}/results)   one JSONL line per request, streamed

Result lines are ``{"custom_id", "result": {"type": "succeeded", "message"} | {"type":
"errored", "error": {"type": "error", "error": {"type", "message"}}} | {"type": "canceled"} |
{"type": "expired"}}``. Messages are parsed with the online client's ``parse_message`` and
errors classified with ``classify_http_error``, so a batch row looks exactly like the same row
sent online.

The API has no batch metadata: ``submit`` ignores it. ``BatchState.output_file_id`` carries the
batch's ``results_url`` once it has ended (the protocol has no field of its own for it).

With no metadata, ``find_submitted`` tells a part's batch by what it holds: ``GET
{base_url}/v1/messages/batches`` (newest first) gives each batch's creation time and request
counts; an ended batch's results give its custom_ids (see ``find_submitted`` for the rules).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

import anyio
import httpx
import orjson
import structlog

from ..errors import FatalProviderError, RowRejectedError, TransientError
from ..limits.retry import classify_http_error
from ..records import Reply, Request
from ._base import APIClient, iter_lines
from ._batch import CLOCK_SLACK_S, BatchLine, BatchPart, BatchState, Submitted
from .anthropic import ANTHROPIC_VERSION, messages_bodies, parse_message

__all__ = ["AnthropicBatchProvider", "batch_state", "result_line"]

log = structlog.get_logger("pipeline.providers.anthropic_batch")

_BATCHES: Final = "/v1/messages/batches"
_LIST_LIMIT: Final = 100  # batches per page when looking for one (the API allows up to 1,000)
_CHUNK: Final = 1 << 20  # bytes read from the part file, and sent, at a time
_RESULTS_HEADERS: Final = {"accept": "application/binary"}  # as the official SDK asks
_COUNTS: Final = ("processing", "succeeded", "errored", "canceled", "expired")
# The HTTP status Anthropic documents for each error type: an ``errored`` result is classified
# as that answer would have been online.
_STATUS_OF_ERROR: Final = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_UNANSWERED: Final = {
    "canceled": "the batch was canceled before this request was processed",
    "expired": "the batch expired before this request was processed",
}


class AnthropicBatchProvider:
    """``BatchProvider`` for Anthropic: ``/v1/messages/batches`` under ``base_url`` (without
    ``/v1``, as for the online client)."""

    name = "anthropic"

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        base_url: str,
        api_key: str,
        timeout_s: float = 60.0,
        max_requests: int = 100_000,
        max_bytes: int = 256_000_000,  # "256 MB", read as decimal: the stricter reading
    ) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._bodies = messages_bodies()
        self._http = APIClient(
            transport,
            provider=self.name,
            base_url=base_url,
            headers={"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION},
            timeout_s=timeout_s,
        )

    def line(self, request: Request) -> bytes:
        """``{"custom_id", "params"}``, the body spliced in as encoded."""
        return b"".join(
            (
                b'{"custom_id":',
                orjson.dumps(request.request_key),
                b',"params":',
                self._bodies.encode(request),
                b"}",
            )
        )

    async def submit(self, part: BatchPart, *, metadata: Mapping[str, str]) -> Submitted:
        """Create a batch whose ``requests`` are the part file's lines.

        The body is streamed from the file (``{"requests":[`` line ``,`` line ... ``]}``), never
        held whole in memory nor parsed; it goes out chunked, its length unknown in advance.
        ``metadata`` is ignored: Message Batches have no metadata.
        """
        if part.count > self.max_requests or part.bytes > self.max_bytes:
            raise RowRejectedError(
                f"anthropic: batch part {part.index} has {part.count} requests and "
                f"{part.bytes} bytes; a message batch may have at most {self.max_requests} "
                f"requests and {self.max_bytes} bytes",
                error_type="request_too_large",
            )
        async with await anyio.open_file(part.path, "rb") as handle:
            batch = await self._http.call(
                "POST",
                _BATCHES,
                content=_requests_body(handle),
                headers={"content-type": "application/json"},
            )
        return Submitted(batch_state(batch).batch_id)

    async def find_submitted(
        self,
        part: BatchPart,
        *,
        metadata: Mapping[str, str],
        since: float,
        known: Collection[str],
    ) -> Submitted | None:
        """The batch an earlier ``submit`` of ``part`` created, told by what it holds.

        Candidates are the batches created between ``since - CLOCK_SLACK_S`` and now (plus the
        slack), not in ``known``, whose ``request_counts`` add up to ``part.count``; the list is
        read newest first, 100 a page, until a page reaches back before that time. Then:

        - a candidate that has ended is this part's batch when both ``part.first_key`` and
          ``part.last_key`` are among its results' custom_ids (results come in any order, so
          the whole file may be read; reading stops once both are seen). One that does not
          hold them is another batch and is left out.
        - a candidate still running cannot show its custom_ids: it is taken only when it is the
          one candidate left. The evidence is then its request count and the time it was
          created, nothing more; if it is not this part's after all, its results bring none of
          the part's rows, which stay unanswered (``on_unfinished = "online"`` sends them).
        - several candidates still running and none confirmed: None, and a warning
          (``batch_candidates_ambiguous``) naming them. At most one of them is this part's, so
          adopting one is likely wrong, and a wrong adoption is the worse outcome for the
          user: the part's rows never come back from it (they cost a full-price online pass,
          more than a second batch, or stay unanswered), and the part's own batch, if among
          them, is paid for and never read. Submitting again costs at most a second batch of
          the part, every row still comes back once, and the warning names the batches to
          look at (cancelling a running one stops what it would still cost).

        ``metadata`` is not used (Message Batches have none). Raises ``TransientError`` when
        listing or reading a candidate's results fails in a way worth another attempt, or when
        the list is unreadable (a batch without a readable ``created_at``).
        """
        low, high = since - CLOCK_SLACK_S, time.time() + CLOCK_SLACK_S
        confirmable: list[BatchState] = []
        unconfirmable: list[BatchState] = []
        pages = self._http.pages(_BATCHES, cursor="after_id", limit=_LIST_LIMIT)
        async with aclosing(pages):
            async for page in pages:
                for item in page:
                    state = batch_state(item)
                    if (
                        state.batch_id in known
                        or not low <= _created_at(item) <= high
                        or state.total != part.count
                    ):
                        continue
                    if state.ended and part.first_key and part.last_key:
                        confirmable.append(state)
                    else:
                        unconfirmable.append(state)
                if page and _created_at(page[-1]) < low:
                    break  # newest first: every later page is older still
        for state in confirmable:
            if await self._holds(state, part):
                return Submitted(state.batch_id)
        if len(unconfirmable) == 1:
            log.info(
                "batch_matched_by_count",
                part=part.index,
                batch_id=unconfirmable[0].batch_id,
                requests=part.count,
            )
            return Submitted(unconfirmable[0].batch_id)
        if unconfirmable:
            log.warning(
                "batch_candidates_ambiguous",
                part=part.index,
                requests=part.count,
                candidates=[state.batch_id for state in unconfirmable],
                action="submitting the part again; cancel the candidate that is this part's",
            )
        return None

    async def _holds(self, state: BatchState, part: BatchPart) -> bool:
        """Whether an ended batch's results include ``part``'s first and last request keys."""
        wanted = {part.first_key, part.last_key}
        number = 0
        try:
            lines = self._http.lines(self._results_url(state), headers=_RESULTS_HEADERS)
            async with aclosing(lines):
                async for raw in lines:
                    number += 1
                    if not raw.strip():
                        continue
                    wanted.discard(_custom_id(raw, batch_id=state.batch_id, number=number))
                    if not wanted:
                        return True
        except FatalProviderError as exc:
            if exc.status_code == 404:
                return False  # deleted since it was listed: not a batch to adopt
            raise
        return False

    async def poll(self, batch_id: str) -> BatchState:
        return batch_state(await self._http.call("GET", f"{_BATCHES}/{quote(batch_id, safe='')}"))

    async def results(self, state: BatchState) -> AsyncGenerator[BatchLine, None]:
        """Every request's result, streamed from the batch's ``results_url`` (as the official
        SDK does) when it is on ``base_url``'s origin, else from ``base_url``'s
        ``.../{id}/results``. Redirects are followed; the key goes only to ``base_url``'s origin.

        Raises ``TransientError`` (naming the batch and line) for a line that is not a result
        line at all; a ``succeeded`` line whose message cannot be read fails only its own row
        (``error_type`` ``bad_response``).
        """
        if not state.ended:
            raise ValueError(f"batch {state.batch_id} has not ended (status {state.status!r})")
        number = 0
        url = self._results_url(state)
        async with aclosing(self._http.lines(url, headers=_RESULTS_HEADERS)) as lines:
            async for raw in lines:
                number += 1
                line = result_line(raw, batch_id=state.batch_id, number=number)
                if line is not None:
                    yield line

    def _results_url(self, state: BatchState) -> str:
        url = state.output_file_id
        if url is None or not self._http.is_own(url):
            # Behind a gateway, results_url may name the API's host rather than the gateway,
            # which the configured key may not open: ask the configured base_url instead.
            url = f"{_BATCHES}/{quote(state.batch_id, safe='')}/results"
        return url

    async def cancel(self, batch_id: str) -> BatchState:
        path = f"{_BATCHES}/{quote(batch_id, safe='')}/cancel"
        return batch_state(await self._http.call("POST", path))

    async def aclose(self) -> None:
        await self._http.aclose()


async def _requests_body(handle: anyio.AsyncFile[bytes]) -> AsyncIterator[bytes]:
    """``{"requests":[`` + the file's non-blank lines joined by ``,`` + ``]}``, in pieces of
    about ``_CHUNK`` bytes."""
    piece = bytearray(b'{"requests":[')
    first = True
    async for line in iter_lines(_chunks(handle)):
        if not line.strip():
            continue
        if not first:
            piece += b","
        piece += line
        first = False
        if len(piece) >= _CHUNK:
            yield bytes(piece)
            piece.clear()
    piece += b"]}"
    yield bytes(piece)


async def _chunks(handle: anyio.AsyncFile[bytes]) -> AsyncIterator[bytes]:
    while chunk := await handle.read(_CHUNK):
        yield chunk


def batch_state(body: Mapping[str, Any]) -> BatchState:
    """A ``message_batch`` object as a ``BatchState``.

    ``errored`` counts every request answered without a message (errored, canceled, expired);
    ``raw_counts`` keeps Anthropic's own counts.
    """
    batch_id = body.get("id")
    status = body.get("processing_status")
    if not isinstance(batch_id, str) or not batch_id or not isinstance(status, str):
        raise TransientError(
            "anthropic: answer lacks 'id' or 'processing_status' (not a message_batch)",
            error_type="bad_response",
        )
    counts = body.get("request_counts")
    counts = counts if isinstance(counts, Mapping) else {}
    raw_counts = {
        key: value
        for key, value in counts.items()
        if isinstance(value, int) and not isinstance(value, bool)
    }
    results_url = body.get("results_url")
    return BatchState(
        batch_id=batch_id,
        status=status,
        ended=status == "ended",
        total=sum(raw_counts.get(key, 0) for key in _COUNTS),
        succeeded=raw_counts.get("succeeded", 0),
        errored=sum(raw_counts.get(key, 0) for key in ("errored", "canceled", "expired")),
        output_file_id=results_url if isinstance(results_url, str) and results_url else None,
        raw_counts=raw_counts,
    )


def _created_at(item: Mapping[str, Any]) -> float:
    """A listed batch's ``created_at`` (RFC 3339) as unix seconds."""
    value = item.get("created_at")
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise TransientError(
            f"anthropic: batch {item.get('id')!r} has no readable created_at ({value!r})",
            error_type="bad_response",
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _custom_id(raw: bytes, *, batch_id: str, number: int) -> str:
    """The custom_id of a result line (``number`` is 1-based)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad_line(batch_id, number, "not valid JSON") from exc
    custom_id = doc.get("custom_id") if isinstance(doc, dict) else None
    if not isinstance(custom_id, str):
        raise _bad_line(batch_id, number, "no custom_id")
    return custom_id


def result_line(raw: bytes, *, batch_id: str, number: int) -> BatchLine | None:
    """One line of a batch's results (``number`` is 1-based); None for a blank line."""
    if not raw.strip():
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad_line(batch_id, number, "not valid JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("custom_id"), str):
        raise _bad_line(batch_id, number, "no custom_id")
    custom_id: str = doc["custom_id"]
    result = doc.get("result")
    kind = result.get("type") if isinstance(result, dict) else None
    if not isinstance(result, dict) or not isinstance(kind, str):
        raise _bad_line(batch_id, number, "no result type")
    if kind == "succeeded":
        message = result.get("message")
        try:
            if not isinstance(message, dict):
                raise TransientError(
                    "anthropic: answer is not a JSON object", error_type="bad_response"
                )
            text, stop, usage = parse_message(message)
        except TransientError as exc:
            where = f"line {number} of the results of batch {batch_id}"
            return BatchLine(custom_id, error_type=exc.error_type, error=f"{exc} ({where})")
        return BatchLine(
            custom_id,
            reply=Reply(text=text, finish_reason=stop, usage=usage),
        )
    if kind == "errored":
        error_type, error = _errored(result.get("error"))
        return BatchLine(custom_id, error_type=error_type, error=error)
    if kind in _UNANSWERED:
        return BatchLine(custom_id, error_type=kind, error=f"anthropic: {_UNANSWERED[kind]}")
    return BatchLine(custom_id, error_type=kind, error=f"anthropic: result of type {kind!r}")


def _errored(envelope: Any) -> tuple[str, str]:
    """``(error_type, message)`` of an ``errored`` result's ``{"type": "error", "error":
    {"type", "message"}}``."""
    inner = envelope.get("error") if isinstance(envelope, dict) else None
    inner_type = inner.get("type") if isinstance(inner, dict) else None
    if not isinstance(inner_type, str) or not inner_type:
        return "errored", "anthropic: the request errored, without an error type"
    status = _STATUS_OF_ERROR.get(inner_type)
    if status is None:
        message = inner.get("message") if isinstance(inner, dict) else None
        text = message if isinstance(message, str) and message else "no error message"
        return inner_type.removesuffix("_error"), f"anthropic {inner_type}: {text}"
    err = classify_http_error("anthropic", status, orjson.dumps(envelope), {})
    text = str(err).removeprefix(f"anthropic HTTP {status}: ")
    return err.error_type, f"anthropic {inner_type}: {text}"


def _bad_line(batch_id: str, number: int, why: str) -> TransientError:
    return TransientError(
        f"anthropic: cannot read line {number} of the results of batch {batch_id}: {why}",
        error_type="bad_response",
    )
