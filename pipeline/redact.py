"""What a secret looks like, in one place: the log processor, the store and the error messages
built from provider answers all redact with :func:`redact`.

:func:`redact` replaces, with ``[REDACTED]``:

- every secret registered with :func:`register_secret` (the exact API keys a run uses, whatever
  their shape);
- anything shaped like a provider key: ``sk-...``, ``sk-proj-...``, ``sk-ant-...`` (also the
  masked ``sk-abc***xyz`` that providers echo back), and Google's ``AIza...`` API keys (Gemini);
- a bearer token: ``Bearer <anything up to a space>``;
- the ``user:password@`` of a URL;
- the value of a ``?api_key=``, ``key=``, ``token=``, ``access_token=`` or ``secret=`` URL
  query parameter.

:func:`safe_url` goes further for a URL that is stored on purpose (a run's base URL): it keeps
scheme, host, port and path only.

A best effort, not a licence: never hand a secret to a log line or a record in the first place.
Pure functions; no I/O.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit, urlunsplit

__all__ = ["REDACTED", "redact", "register_secret", "safe_url"]

REDACTED: Final = "[REDACTED]"
"""What a redacted secret is replaced with."""

_MIN_SECRET_CHARS: Final = 4

# (pattern, replacement), applied in order. Keys: "sk-" not preceded by a letter or digit (so
# "task-1234" is left alone), then at least 4 key characters; "*" is in the set because
# providers mask the middle of a key they echo ("sk-abc***wxyz").
_PATTERNS: Final = (
    (re.compile(r"(?<=//)[^/\s@\"']+@"), REDACTED + "@"),
    (
        re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|secret)=)[^&#\s\"']*"),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(?i)(?<![A-Za-z0-9])sk-[A-Za-z0-9_*\-]{4,}"), REDACTED),
    # Google API keys: "AIza" and 35 more key characters; from 20 on, so a cut one goes too.
    (re.compile(r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{20,}"), REDACTED),
    (re.compile(r"(?i)\bBearer\s+\S+"), REDACTED),
)

# Replaced as a whole (never mutated in place), so a reader in another thread always sees a
# consistent tuple. Longest first, so a secret that contains another is replaced whole.
_secrets: tuple[str, ...] = ()


def register_secret(value: str) -> None:
    """Make sure ``value`` (an API key) never survives :func:`redact`, whatever its shape.
    Values shorter than four characters are ignored (they would redact ordinary words)."""
    global _secrets
    if len(value) >= _MIN_SECRET_CHARS and value not in _secrets:
        _secrets = tuple(sorted((*_secrets, value), key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every registered secret and everything shaped like a credential replaced
    by ``[REDACTED]``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def safe_url(url: str) -> str:
    """``url`` without user, password, query or fragment (where a key could hide)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
