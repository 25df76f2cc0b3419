"""The one exception tree of the pipeline.

Every low-level error (httpx, aiohttp, duckdb, pyarrow, OS) is mapped into this tree with
``raise ... from exc`` at the edge where it happens, so the runner decides what to do from the
class alone::

    PipelineError
    ├── ConfigError               the job file or the command line is wrong; nothing was sent
    ├── InputError                one input row cannot be turned into a request; the row fails
    ├── ProviderError             something the provider (or the way to it) said or did
    │   ├── TransientError        worth another attempt: 408, 409, 429, 5xx, 529, timeouts,
    │   │   │                     dropped connections, malformed or empty bodies
    │   │   ├── RateLimitError    429 (carries the provider's retry-after, if any)
    │   │   └── UnreachableError  no connection could be made (refused, DNS, connect timeout):
    │   │                         a problem of the run, not of the row
    │   ├── RowRejectedError      terminal for the row: other 4xx (the request itself is bad)
    │   └── FatalProviderError    terminal for the run: 401, 403, 404, insufficient_quota
    ├── StoreError                DuckDB could not be read or written
    └── StoppedError              a signal stopped a run before it had begun (nothing sent)

``ProviderError.transient`` and ``ProviderError.fatal`` are the questions an executor asks of a
row's error; an ``UnreachableError`` pauses the whole run instead of using up the row's attempts,
and ends it when nothing could ever be reached.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "FatalProviderError",
    "InputError",
    "PipelineError",
    "ProviderError",
    "RateLimitError",
    "RowRejectedError",
    "StoppedError",
    "StoreError",
    "TransientError",
    "UnreachableError",
    "first_pipeline_error",
    "io_error",
]


class PipelineError(Exception):
    """Root of every error this package raises on purpose."""


def _one_line(text: str) -> str:
    """``text`` with line breaks and other control characters written as escapes: a key, a
    field name or a path quoted in a message (from a job file or a row) cannot break it."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigError(PipelineError):
    """The job file or an option is wrong.

    The message names the file and the key and says how to fix it.
    """

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        self.path = path
        self.key = key
        where = ""
        if path and key:
            where = f"{path}: [{key}] "
        elif path:
            where = f"{path}: "
        elif key:
            where = f"[{key}] "
        super().__init__(_one_line(f"{where}{message}"))


class InputError(PipelineError):
    """One input row could not be read or rendered. Only that row fails."""

    def __init__(self, message: str, *, error_type: str = "bad_input") -> None:
        self.error_type = error_type
        super().__init__(_one_line(message))


class StoreError(PipelineError):
    """The result database could not be opened, read or written."""


class StoppedError(PipelineError):
    """A signal stopped the run while it was starting: nothing was sent or recorded."""


class ProviderError(PipelineError):
    """Something went wrong talking to a provider.

    ``error_type`` is a short snake_case name that lands in the ``error`` column's companion
    ``error_type``; ``status_code`` is the HTTP status if there was one.
    """

    transient: bool = False
    fatal: bool = False
    default_type = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.error_type = error_type or self.default_type
        self.retry_after = retry_after
        super().__init__(message)


class TransientError(ProviderError):
    """Worth retrying after a pause; becomes the row's failure once attempts run out."""

    transient = True
    default_type = "transient"


class RateLimitError(TransientError):
    """The provider answered 429 (rate limit, not quota)."""

    default_type = "rate_limited"


class UnreachableError(TransientError):
    """No connection to the provider could be made at all: refused, unknown host, connect
    timeout. Says nothing about the row; the executor pauses the run or stops it."""

    default_type = "unreachable"


class RowRejectedError(ProviderError):
    """The provider refused this request for good (a 4xx other than auth, quota or 429)."""

    default_type = "rejected"


class FatalProviderError(ProviderError):
    """No further request can succeed (bad key, no permission, unknown model or URL, quota
    exhausted): stop the run."""

    fatal = True
    default_type = "fatal"


def first_pipeline_error(group: BaseExceptionGroup[BaseException]) -> PipelineError | None:
    """The first ``PipelineError`` in a task group's exception group (nested ones included):
    the one clear error to report instead of the group's traceback. Failing that, the first
    ``OSError`` (a full disk under the journal, the manifest or the log), as a ``StoreError``
    naming the file."""
    for exc in group.exceptions:
        if isinstance(exc, PipelineError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = first_pipeline_error(exc)
            if found is not None:
                return found
    for exc in group.exceptions:
        if isinstance(exc, OSError):
            return io_error(exc)
    return None


def io_error(exc: OSError, what: str = "a file of the run") -> StoreError:
    """An OS error while writing, as one line naming the file (``what`` when it has no name)."""
    where = exc.filename if exc.filename else what
    error = StoreError(f"cannot write {where}: {exc.strerror or exc}")
    error.__cause__ = exc
    return error
