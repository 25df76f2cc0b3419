"""Structured logs: snake_case events with bound context, JSON out, secrets redacted.

Every run writes all its events (info and up) as JSON lines to a log file next to the database;
the terminal gets warnings and errors only, so the progress bar stays readable. What pypdf and
Pillow log, and Python's warnings, become ``library_message`` events of the run's log
(``quiet_libraries``), never lines on the terminal. A processor
(:func:`redact_secrets`) passes every value through :func:`pipeline.redact.redact` before anything
is rendered: anything that looks like an API key, and the exact keys the run uses (registered with
``register_secret``, re-exported here from :mod:`pipeline.redact`), become ``[REDACTED]``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import IO, Any

import orjson
import structlog

from .redact import redact, register_secret

__all__ = [
    "configure_logging",
    "library_messages",
    "quiet_libraries",
    "redact_secrets",
    "register_secret",
]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    if isinstance(value, BaseException):
        return redact(f"{type(value).__name__}: {value}")
    return value


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no API key survives into a rendered log line."""
    for key, value in event_dict.items():
        event_dict[key] = _scrub_value(value)
    return event_dict


class _TeeLogger:
    """Writes every line to the run's log file and warnings and up to the terminal."""

    def __init__(self, file: IO[bytes] | None, terminal_level: int) -> None:
        self._file = file
        self._terminal_level = terminal_level

    def _emit(self, level: int, line: bytes) -> None:
        if self._file is not None:
            try:
                self._file.write(line + b"\n")
                self._file.flush()
            except OSError as exc:
                # A full disk: the run goes on (and says why it fails, if it does); the log
                # file is given up, once, with one line on the terminal.
                self._file = None
                sys.stderr.write(f"warning: the run's log cannot be written any more ({exc})\n")
        if level >= self._terminal_level:
            # Look sys.stderr up each time: a live progress display swaps it for its own.
            stream = sys.stderr
            text = _for_people(line) if stream.isatty() else line.decode()
            stream.write(text + "\n")

    def debug(self, line: bytes) -> None:
        self._emit(10, line)

    def info(self, line: bytes) -> None:
        self._emit(20, line)

    def warning(self, line: bytes) -> None:
        self._emit(30, line)

    def error(self, line: bytes) -> None:
        self._emit(40, line)

    def critical(self, line: bytes) -> None:
        self._emit(50, line)

    msg = info
    warn = warning
    exception = error


_QUIET_KEYS = ("event", "level", "timestamp", "job", "run_id", "provider", "model")


def _for_people(line: bytes) -> str:
    """A log line for a terminal: ``warning row_failed: row_id=r7 error_type=timeout``.

    The run's log file keeps the full JSON; the terminal does not repeat the job's context.
    """
    event = orjson.loads(line)
    rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in _QUIET_KEYS)
    return f"{event.get('level', '')} {event.get('event', '')}" + (f": {rest}" if rest else "")


def configure_logging(
    *, log_file: Path | None = None, terminal_level: str = "warning", level: str = "info"
) -> IO[bytes] | None:
    """Set up structlog for a CLI command. Returns the opened log file (caller closes it)."""
    file: IO[bytes] | None = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file = log_file.open("ab")
    tee = _TeeLogger(file, _LEVELS[terminal_level])
    quiet_libraries(warnings=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *args: tee,
        cache_logger_on_first_use=False,
    )
    return file


# -- libraries' own messages ------------------------------------------------------------------

_LIBRARIES = ("pypdf", "PIL", "py.warnings")
_library_log = structlog.get_logger("pipeline.libraries")


class _ToRunLog(logging.Handler):
    """Hands a library's log record to the run's log as an ``info`` event (``library_message``),
    which never reaches the terminal; nothing at all while no run has set logging up."""

    def emit(self, record: logging.LogRecord) -> None:
        if not structlog.is_configured():
            return
        try:
            message = record.getMessage()
        except Exception:  # a library's own bad format string: not worth a traceback
            message = str(record.msg)
        _library_log.info(
            "library_message",
            library=record.name.split(".")[0],
            level=record.levelname.lower(),
            message=message[:300],
        )


_HANDLER = _ToRunLog()


def library_messages(library: str, messages: list[str], **context: Any) -> None:
    """What a library said in another process (pypdf, reading a PDF), into the run's log."""
    if not structlog.is_configured():
        return
    for message in messages:
        _library_log.info(
            "library_message", library=library, level="warning", message=message, **context
        )


def quiet_libraries(*, warnings: bool = False) -> None:
    """Send what pypdf and Pillow log to the run's log instead of stderr; with ``warnings``,
    Python's warnings too (``configure_logging`` does that for a run: a library caller keeps
    its own warnings). Idempotent."""
    if warnings:
        logging.captureWarnings(True)
    for name in _LIBRARIES:
        logger = logging.getLogger(name)
        if _HANDLER not in logger.handlers:
            logger.addHandler(_HANDLER)
        logger.propagate = False
