"""What the fake provider saw and what it would have charged.

The pipeline sends each row's request key in ``x-client-request-id``; the fake counts per key how
many requests arrived and how many were *paid*: answered 200 with a complete body carrying usage.
A key paid more than once means the pipeline bought the same answer twice.

Batch lines count the same way under their ``custom_id`` (the pipeline uses its request key as
the ``custom_id``): a line arrives when the batch processes it and is paid when it is answered
with a message, so one ``paid`` map covers both ways of buying an answer. What only batches have
(batches created, files uploaded, the batch share of the paid lines and tokens) is in
``BatchAccountingSnapshot``.
"""

from __future__ import annotations

from typing import Final, TypedDict

__all__ = [
    "CLIENT_CLOSED",
    "DROPPED",
    "HUNG",
    "Accounting",
    "AccountingSnapshot",
    "BatchAccountingSnapshot",
]

# Outcomes that have no HTTP status; they are counted in ``by_status`` under these names.
DROPPED: Final = "dropped"  # connection closed without a response (drop_rate)
HUNG: Final = "hung"  # held for hang_s, then closed without a response (hang_rate)
CLIENT_CLOSED: Final = "client_closed"  # the client went away before the answer was ready


class TokenTotals(TypedDict):
    input: int
    output: int
    cache_read: int
    cache_write: int


class AccountingSnapshot(TypedDict):
    """The JSON of ``GET /_fake/accounting`` and the value of ``FakeProvider.accounting()``.

    ``requests``: requests that reached an online provider endpoint (chat completions,
    messages; not the batch and file endpoints, and not batch lines).
    ``by_status``: outcomes of those requests by HTTP status (``"200"``, ``"429"`` ...) plus
    ``"dropped"``, ``"hung"`` and ``"client_closed"``; requests still in progress are not in it
    yet.
    ``faults``: injected faults by knob (``error``, ``drop``, ``hang``, ``malformed``, ``empty``,
    ``batch_create_lost``).
    ``arrived``: requests per ``x-client-request-id``, plus processed batch lines per
    ``custom_id``.
    ``paid``: paid answers per ``x-client-request-id`` or batch ``custom_id``.
    ``paid_total``: every paid answer (online or batch line), with or without an id.
    ``duplicates_paid``: sum over ids of (paid - 1) where paid > 1.
    ``tokens``: billed tokens of the paid answers; ``input`` counts every prompt token, cached
    or not, and ``cache_read`` / ``cache_write`` are the parts of it served from / written to
    the prompt cache.
    """

    requests: int
    by_status: dict[str, int]
    faults: dict[str, int]
    arrived: dict[str, int]
    paid: dict[str, int]
    paid_total: int
    duplicates_paid: int
    tokens: TokenTotals


class BatchAccountingSnapshot(TypedDict):
    """The JSON of ``GET /_fake/accounting/batches`` and of ``FakeProvider.batch_accounting()``.

    ``batches_created``: batches accepted, per API (``"openai"``, ``"anthropic"``, ``"gemini"``).
    ``files_uploaded``: files accepted by OpenAI's ``POST /v1/files`` and Gemini's upload (batch
    output and error files the fake writes itself are not counted).
    ``lines_paid``: batch lines answered with a message, per API (they are also in
    ``AccountingSnapshot.paid`` under their ``custom_id``).
    ``lines_failed``: batch lines answered with an error (injected or a request the online
    endpoint would refuse), per API; expired and cancelled lines are not answered at all.
    ``tokens``: the batch lines' share of ``AccountingSnapshot.tokens`` (batch prices are half
    the online ones, so a cost check needs them apart).
    """

    batches_created: dict[str, int]
    files_uploaded: int
    lines_paid: dict[str, int]
    lines_failed: dict[str, int]
    tokens: TokenTotals


_APIS = ("openai", "anthropic", "gemini")


class Accounting:
    """Mutable counters; only the server's event loop touches them."""

    __slots__ = (
        "arrived",
        "batch_tokens",
        "batches_created",
        "by_status",
        "cache_read",
        "cache_write",
        "faults",
        "files_uploaded",
        "input_tokens",
        "lines_failed",
        "lines_paid",
        "output_tokens",
        "paid",
        "paid_total",
        "requests",
    )

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.requests = 0
        self.by_status: dict[int | str, int] = {}
        self.faults: dict[str, int] = {}
        self.arrived: dict[str, int] = {}
        self.paid: dict[str, int] = {}
        self.paid_total = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read = 0
        self.cache_write = 0
        self.batches_created = dict.fromkeys(_APIS, 0)
        self.files_uploaded = 0
        self.lines_paid = dict.fromkeys(_APIS, 0)
        self.lines_failed = dict.fromkeys(_APIS, 0)
        self.batch_tokens: TokenTotals = {
            "input": 0,
            "output": 0,
            "cache_read": 0,
            "cache_write": 0,
        }

    def arrival(self, client_id: str | None) -> None:
        self.requests += 1
        if client_id is not None:
            self.arrived[client_id] = self.arrived.get(client_id, 0) + 1

    def outcome(self, status: int | str) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1

    def fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def payment(
        self,
        client_id: str | None,
        input_tokens: int,
        output_tokens: int,
        cache_read: int,
        cache_write: int,
    ) -> None:
        self.paid_total += 1
        if client_id is not None:
            self.paid[client_id] = self.paid.get(client_id, 0) + 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cache_read += cache_read
        self.cache_write += cache_write

    def line_arrival(self, custom_id: str) -> None:
        """A batch line is being processed (it is not an HTTP request: ``requests`` stays)."""
        self.arrived[custom_id] = self.arrived.get(custom_id, 0) + 1

    def line_paid(
        self,
        api: str,
        custom_id: str,
        input_tokens: int,
        output_tokens: int,
        cache_read: int,
        cache_write: int,
    ) -> None:
        """A batch line answered with a message: paid under its ``custom_id``."""
        self.payment(custom_id, input_tokens, output_tokens, cache_read, cache_write)
        self.lines_paid[api] += 1
        tokens = self.batch_tokens
        tokens["input"] += input_tokens
        tokens["output"] += output_tokens
        tokens["cache_read"] += cache_read
        tokens["cache_write"] += cache_write

    def line_failed(self, api: str) -> None:
        self.lines_failed[api] += 1

    def batch_created(self, api: str) -> None:
        self.batches_created[api] += 1

    def file_uploaded(self) -> None:
        self.files_uploaded += 1

    def batch_snapshot(self) -> BatchAccountingSnapshot:
        return {
            "batches_created": dict(self.batches_created),
            "files_uploaded": self.files_uploaded,
            "lines_paid": dict(self.lines_paid),
            "lines_failed": dict(self.lines_failed),
            "tokens": {
                "input": self.batch_tokens["input"],
                "output": self.batch_tokens["output"],
                "cache_read": self.batch_tokens["cache_read"],
                "cache_write": self.batch_tokens["cache_write"],
            },
        }

    def snapshot(self) -> AccountingSnapshot:
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items(), key=_status_key)},
            "faults": dict(sorted(self.faults.items())),
            "arrived": dict(self.arrived),
            "paid": dict(self.paid),
            "paid_total": self.paid_total,
            "duplicates_paid": sum(count - 1 for count in self.paid.values() if count > 1),
            "tokens": {
                "input": self.input_tokens,
                "output": self.output_tokens,
                "cache_read": self.cache_read,
                "cache_write": self.cache_write,
            },
        }


def _status_key(item: tuple[int | str, int]) -> tuple[int, str]:
    status = item[0]
    return (status, "") if isinstance(status, int) else (1000, status)
