"""What every provider module shares: the Provider protocol, the HTTP client, error mapping."""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterator,
    Mapping,
)
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
import anyio
import httpx
import orjson
import yarl

from ..errors import ProviderError, TransientError, UnreachableError
from ..limits import ByteWindow
from ..limits.headers import rate_limit_parser
from ..limits.retry import classify_http_error
from ..records import Reply, Request, Usage

__all__ = [
    "MAX_REDIRECTS",
    "APIClient",
    "AiohttpPost",
    "BodyEncoder",
    "JSONProvider",
    "Post",
    "Provider",
    "TransportPost",
    "iter_lines",
    "make_transport",
    "mapped_transport_errors",
    "parse_json_body",
    "timeout_extensions",
]


class Provider(Protocol):
    """One async method from a normalised request to a normalised reply, plus ``aclose``.

    Errors are raised as ``ProviderError`` subclasses, already classified transient, terminal
    for the row, or fatal for the run.
    """

    name: str

    async def send(self, request: Request) -> Reply: ...

    async def aclose(self) -> None: ...


def make_transport(*, max_connections: int | None = None) -> httpx.AsyncBaseTransport:
    """The HTTP transport jobs use: httpx's interface on aiohttp's connection pool.

    httpx's own pool spends CPU that grows with the number of requests in flight; the aiohttp
    transport keeps the per-request cost flat at hundreds of concurrent requests (see README,
    "Why this HTTP stack").
    """
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=None)
    return AiohttpTransport(limits=limits)


TRANSPORT_ERRORS = (httpx.TransportError, aiohttp.ClientError, OSError)
"""What a failure of the network itself is raised as (``transport_error`` maps each)."""


def transport_error(
    provider: str, url: httpx.URL | str | None, exc: BaseException
) -> ProviderError:
    """A network-level failure as a transient provider error: ``UnreachableError`` when no
    connection could be made at all (refused, unknown host, connect timeout: ``url``'s host is
    named), ``TransientError`` for the rest (timeouts, dropped connections)."""
    where = _origin(url) if url is not None else "the provider"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        cause = exc.__cause__
        # httpx-aiohttp reports every aiohttp connection error as ConnectTimeout, a dropped
        # connection too: only a failure to connect (or httpx's own) is the host out of reach.
        if not isinstance(cause, aiohttp.ClientError) or isinstance(
            cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError
        ):
            return UnreachableError(
                f"{provider}: cannot connect to {where} ({type(cause or exc).__name__}: "
                f"{cause or exc})"
            )
        return _transient(provider, exc)
    if isinstance(exc, httpx.TimeoutException):
        return _transient(provider, exc)
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        # aiohttp called directly (JSONProvider without an httpx transport).
        return UnreachableError(
            f"{provider}: cannot connect to {where} ({type(exc).__name__}: {exc})"
        )
    if isinstance(exc, TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
        return TransientError(
            f"{provider}: request timed out ({type(exc).__name__})", error_type="timeout"
        )
    return TransientError(
        f"{provider}: connection failed ({type(exc).__name__}: {exc})",
        error_type="connection_error",
    )


@contextmanager
def mapped_transport_errors(provider: str, url: httpx.URL | str | None = None) -> Iterator[None]:
    """Raise network-level failures as ``transport_error`` maps them."""
    try:
        yield
    except TRANSPORT_ERRORS as exc:
        raise transport_error(provider, url, exc) from exc


def _origin(url: httpx.URL | str) -> str:
    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


def _transient(provider: str, exc: httpx.TransportError) -> TransientError:
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
        cause, aiohttp.ServerTimeoutError
    ):
        # httpx-aiohttp reports a dropped connection as ConnectTimeout; it is not one.
        return TransientError(
            f"{provider}: connection failed ({type(cause).__name__}: {cause})",
            error_type="connection_error",
        )
    return TransientError(
        f"{provider}: request timed out ({type(exc).__name__})", error_type="timeout"
    )


def parse_json_body(provider: str, status: int, content: bytes) -> Mapping[str, Any]:
    """The JSON object of a 200 answer; empty or malformed bodies are transient errors."""
    if not content:
        raise TransientError(
            f"{provider}: empty response body (HTTP {status})",
            status_code=status,
            error_type="empty_response",
        )
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise TransientError(
            f"{provider}: response is not valid JSON ({len(content)} bytes: {content[:80]!r})",
            status_code=status,
            error_type="bad_response",
        ) from exc
    if not isinstance(body, dict):
        raise TransientError(
            f"{provider}: response is not a JSON object",
            status_code=status,
            error_type="bad_response",
        )
    return body


def raise_for_status(provider: str, response: httpx.Response) -> None:
    raise_for_answer(provider, response.status_code, response.content, response.headers)


def raise_for_answer(
    provider: str, status: int, content: bytes, headers: Mapping[str, str]
) -> None:
    """Raise the classified ``ProviderError`` of an answer that is not a 200."""
    if status != 200:
        err: ProviderError = classify_http_error(provider, status, content, headers)
        raise err


def timeout_extensions(timeout_s: float) -> dict[str, Any]:
    """Request extensions that bound connecting, each read, each write and the wait for a pooled
    connection: a hang costs one attempt, not the run."""
    return {
        "timeout": {
            "connect": timeout_s,
            "read": timeout_s,
            "write": timeout_s,
            "pool": timeout_s,
        }
    }


async def iter_lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The lines of a byte stream, without ``\\n`` or ``\\r\\n``; a last line without a
    newline is a line too. Only one partial line is held at a time."""
    partial = bytearray()  # a line split across chunks, grown without quadratic copying
    async for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if partial:
                partial += chunk[start:end]
                line = bytes(partial)
                partial.clear()
            else:
                line = chunk[start:end]
            yield line.removesuffix(b"\r")
            start = end + 1
        partial += chunk[start:]
    if partial:
        yield bytes(partial).removesuffix(b"\r")


class BodyEncoder:
    """A provider's request bodies as bytes, with what the requests of a job share encoded once.

    ``shared(request)`` is the body without the row: a dict whose *last* key holds the list
    (messages, contents) that the row's own items go at the end of; it may depend only on the
    request's model, system prompt, ``max_tokens``, temperature and framing (what a renderer
    gives every request of a job). ``row(request)`` is that list's items for the row: its
    prompt (and attachments), then its follow-up turns. ``encode(request)`` is
    ``orjson.dumps`` of the whole body, byte for byte: the shared part is encoded once per
    version of it (a job and its fallback: two), the row's items once per request, and the two
    are spliced.
    """

    def __init__(
        self,
        shared: Callable[[Request], dict[str, Any]],
        row: Callable[[Request], list[Any]],
    ) -> None:
        self._shared = shared
        self._row = row
        self._prefixes: dict[tuple[Any, ...], tuple[object, bytes]] = {}

    def body(self, request: Request) -> dict[str, Any]:
        """The body as a dict (what ``encode`` encodes)."""
        body = self._shared(request)
        *_, last = body
        body[last] = [*body[last], *self._row(request)]
        return body

    def encode(self, request: Request) -> bytes:
        framing = request.framing
        version = (request.model, request.system, request.max_tokens, request.temperature)
        found = self._prefixes.get((*version, id(framing)))
        if found is None or found[0] is not framing:
            found = (framing, self._prefix(request))
            if len(self._prefixes) >= 8:
                self._prefixes.clear()
            self._prefixes[(*version, id(framing))] = found
        # b'[item, ...]' without its '[': after the prefix, it closes the list; '}' the body.
        return found[1] + orjson.dumps(self._row(request))[1:] + b"}"

    def _prefix(self, request: Request) -> bytes:
        shared = self._shared(request)
        *_, last = shared
        if not isinstance(shared[last], list):
            raise TypeError(f"the last key of a shared body must hold a list, not {last!r}")
        encoded = orjson.dumps(shared)
        assert encoded.endswith(b"]}")
        # Cut the list's ']' and the body's '}': the row's items follow (after a comma when the
        # shared part has items of its own, the system prompt or examples).
        return encoded[:-2] + (b"," if shared[last] else b"")


MAX_REDIRECTS = 5
DOCUMENTS_WINDOW_BYTES = 16_000_000  # base64 bytes of attachments in flight, by default
# Threads that read and encode attachments at once: encoding is fast (~1 ms for 300 KB), and
# every extra thread keeps a malloc arena of freed body buffers.
ENCODING_THREADS = 2
_REDIRECTS = frozenset((301, 302, 303, 307, 308))


class APIClient:
    """JSON calls and streamed line-by-line downloads against one provider's API.

    What the batch clients share: the same transport seam, headers, timeouts and error mapping
    as ``JSONProvider`` (network failures through ``mapped_transport_errors``, non-200 answers
    through ``classify_http_error``, bodies through ``parse_json_body``). ``path`` arguments are
    appended to ``base_url``; an absolute ``http(s)://`` URL is used as it is.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        *,
        provider: str,
        base_url: str,
        headers: Mapping[str, str],
        timeout_s: float = 60.0,
    ) -> None:
        self.provider = provider
        self._transport = transport
        self._base_url = base_url.rstrip("/")
        self._headers = dict(headers)
        self._extensions = timeout_extensions(timeout_s)

    def url(self, path: str) -> httpx.URL:
        if path.startswith(("http://", "https://")):
            return httpx.URL(path)
        return httpx.URL(self._base_url + path)

    def is_own(self, url: str | httpx.URL) -> bool:
        """Whether ``url`` (relative, or absolute) is on the API's own origin."""
        target = self.url(url) if isinstance(url, str) else url
        origin = httpx.URL(self._base_url)
        return (target.scheme, target.host, target.port) == (
            origin.scheme,
            origin.host,
            origin.port,
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: AsyncIterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Mapping[str, Any]:
        """Send one request (``json`` encoded with orjson, or ``content`` streamed as it is
        produced) and return the JSON object of its 200 answer."""
        response = await self.respond(method, path, json=json, content=content, headers=headers)
        return parse_json_body(self.provider, response.status_code, response.content)

    async def respond(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: AsyncIterable[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Like ``call``, but the 200 response itself (read; headers and ``content``), for an
        API that answers in headers (Google's resumable uploads). The API's own headers go only
        to its own origin."""
        url = self.url(path)
        request_headers = dict(self._headers) if self.is_own(url) else {}
        body: bytes | AsyncIterable[bytes] | None = content
        if json is not None:
            body = orjson.dumps(json)
            request_headers["content-type"] = "application/json"
        if headers:
            request_headers.update(headers)
        request = httpx.Request(
            method, url, headers=request_headers, content=body, extensions=self._extensions
        )
        with mapped_transport_errors(self.provider, request.url):
            response = await self._transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
        raise_for_status(self.provider, response)
        return response

    async def pages(
        self, path: str, *, cursor: str, limit: int
    ) -> AsyncGenerator[list[Mapping[str, Any]], None]:
        """The pages of a list endpoint, newest first: ``GET path?limit=...``, then with
        ``{cursor}=<id of the last item>`` while the answer ``has_more``. Stop early by closing
        the generator. An answer that is not a list page (``data`` not a list of objects) is a
        ``TransientError`` (``bad_response``)."""
        after: str | None = None
        while True:
            query = {"limit": str(limit)} if after is None else {"limit": str(limit), cursor: after}
            listing = await self.call("GET", f"{path}?{urlencode(query)}")
            data = listing.get("data")
            if not isinstance(data, list) or not all(isinstance(item, Mapping) for item in data):
                raise TransientError(
                    f"{self.provider}: the list of {path} is not a list page ('data' is not a "
                    "list of objects)",
                    error_type="bad_response",
                )
            yield data
            last = data[-1].get("id") if data else None
            if (
                listing.get("has_more") is not True
                or not isinstance(last, str)
                or last in ("", after)
            ):
                return
            after = last

    async def lines(
        self, path: str, *, headers: Mapping[str, str] | None = None
    ) -> AsyncGenerator[bytes, None]:
        """``GET path`` and yield its body line by line as it arrives (see ``iter_lines``).

        Redirects are followed (up to ``MAX_REDIRECTS``), as the official SDKs do for
        downloads; the API's own headers (the key among them) go only to the API's origin, never
        to another host a redirect names. Close the iterator (``contextlib.aclosing``) when
        stopping early: that releases the connection.
        """
        url = self.url(path)
        with mapped_transport_errors(self.provider, url):
            for _ in range(MAX_REDIRECTS + 1):
                request_headers = dict(self._headers) if self.is_own(url) else {}
                if headers:
                    request_headers.update(headers)
                request = httpx.Request(
                    "GET", url, headers=request_headers, extensions=self._extensions
                )
                response = await self._transport.handle_async_request(request)
                location = response.headers.get("location")
                if response.status_code not in _REDIRECTS or not location:
                    break
                await response.aclose()
                url = url.join(location)
            else:
                raise TransientError(
                    f"{self.provider}: more than {MAX_REDIRECTS} redirects from {self.url(path)}",
                    error_type="bad_response",
                )
            try:
                if response.status_code != 200:
                    await response.aread()
                    raise_for_status(self.provider, response)
                async for line in iter_lines(response.aiter_bytes()):
                    yield line
            finally:
                await response.aclose()

    async def aclose(self) -> None:
        await self._transport.aclose()


class Post(Protocol):
    """One JSON POST to a fixed URL: ``(status, headers, body)`` of the answer. Network
    failures are raised as they come (``mapped_transport_errors`` maps them)."""

    async def __call__(
        self, headers: Mapping[str, str], content: bytes
    ) -> tuple[int, Mapping[str, str], bytes]: ...

    async def aclose(self) -> None: ...


class AiohttpPost:
    """POSTs on aiohttp itself: what every online request of a job goes through.

    httpx's request and response objects cost about as much CPU as aiohttp's whole exchange
    (README, "Why this HTTP stack"), so the online path skips them; tests and the batch
    clients use an httpx transport (``TransportPost``). The session opens on first use, inside
    the running event loop; ``timeout_s`` bounds the whole attempt, and connecting (the wait
    for a pooled connection included) on its own.
    """

    def __init__(self, url: str, *, max_connections: int | None, timeout_s: float) -> None:
        self._url = yarl.URL(url)
        self._limit = max_connections or 0
        # One timer a request (the whole attempt), not one rescheduled on every read.
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=timeout_s, sock_connect=timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    async def __call__(
        self, headers: Mapping[str, str], content: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        session = self._session
        if session is None:
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, limit_per_host=0),
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=self._timeout,
            )
        async with session.post(
            self._url, headers=headers, data=content, allow_redirects=False
        ) as response:
            body = await response.read()
        return response.status, response.headers, body

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class TransportPost:
    """POSTs through any httpx transport (``httpx.MockTransport`` in tests)."""

    def __init__(self, transport: httpx.AsyncBaseTransport, url: str, *, timeout_s: float) -> None:
        self._transport = transport
        self._url = httpx.URL(url)
        self._extensions = timeout_extensions(timeout_s)

    async def __call__(
        self, headers: Mapping[str, str], content: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        request = httpx.Request(
            "POST", self._url, headers=headers, content=content, extensions=self._extensions
        )
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response.status_code, response.headers, response.content

    async def aclose(self) -> None:
        await self._transport.aclose()


class JSONProvider:
    """One JSON POST per request: the part every provider's online client shares.

    A subclass says how a ``Request`` becomes a body (``bodies``, a ``BodyEncoder``), how an
    answer becomes text, finish reason and usage (``parse``), and which header carries the
    provider's request id.
    ``transport``: an httpx transport to send through (tests pass ``httpx.MockTransport``);
    ``None``, the default for jobs, sends on aiohttp directly (``AiohttpPost``), with at most
    ``max_connections`` open.

    A request with attachments has its files read and encoded in a worker thread when it is
    sent, within ``documents_window`` (bytes of such bodies held at once, ``ByteWindow``); a
    file that cannot be read then raises ``InputError`` (the row's, nothing was sent).
    """

    name: str
    request_id_header: str

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None,
        *,
        url: str,
        headers: Mapping[str, str],
        timeout_s: float = 60.0,
        max_connections: int | None = None,
        documents_window: ByteWindow | None = None,
        bodies: BodyEncoder,
    ) -> None:
        self._url = url
        self._bodies = bodies
        self._post: Post = (
            AiohttpPost(url, max_connections=max_connections, timeout_s=timeout_s)
            if transport is None
            else TransportPost(transport, url, timeout_s=timeout_s)
        )
        self._headers = dict(headers)
        self._window = documents_window
        self._encoders: anyio.CapacityLimiter | None = None
        self._rate_limits = rate_limit_parser(self.name)

    def body(self, request: Request) -> dict[str, Any]:
        """The JSON body of ``request``, as a dict."""
        return self._bodies.body(request)

    def encode(self, request: Request) -> bytes:
        """The JSON body of ``request``, encoded (files attached are read now)."""
        return self._bodies.encode(request)

    def parse(self, body: Mapping[str, Any]) -> tuple[str, str | None, Usage]:
        raise NotImplementedError

    async def send(self, request: Request) -> Reply:
        # The request key lets a provider-side log (and the fake's accounting) tie retries and
        # reruns of one row together. A follow-up turn (after an invalid answer) is another
        # request, paid for once more: it carries the key with the follow-up's number.
        client_id = request.request_key
        if request.followups:
            client_id = f"{client_id}.{len(request.followups)}"
        headers = {**self._headers, "x-client-request-id": client_id}
        if request.attachments:
            if self._window is None:
                self._window = ByteWindow(DOCUMENTS_WINDOW_BYTES)
            if self._encoders is None:
                self._encoders = anyio.CapacityLimiter(ENCODING_THREADS)
            async with self._window.hold(request.attachment_bytes):
                encoded = await anyio.to_thread.run_sync(
                    self.encode, request, limiter=self._encoders
                )
                return await self._exchange(encoded, headers)
        return await self._exchange(self._bodies.encode(request), headers)

    async def _exchange(self, content: bytes, headers: dict[str, str]) -> Reply:
        try:
            status, answer_headers, answer = await self._post(headers, content)
        except TRANSPORT_ERRORS as exc:
            raise transport_error(self.name, self._url, exc) from exc
        raise_for_answer(self.name, status, answer, answer_headers)
        body = parse_json_body(self.name, status, answer)
        text, finish, usage = self.parse(body)
        return Reply(
            text=text,
            finish_reason=finish,
            usage=usage,
            request_id=answer_headers.get(self.request_id_header),
            rate_limit=self._rate_limits(answer_headers),
        )

    async def aclose(self) -> None:
        await self._post.aclose()
