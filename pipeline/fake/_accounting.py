"""What the fake provider saw and what it would have charged.

The pipeline sends each row's request key in ``x-client-request-id``; the fake counts per key how
many requests arrived and how many were *paid*: answered 200 with a complete body carrying usage.
A key paid more than once means the pipeline bought the same answer twice.
"""

from __future__ import annotations

from typing import Final, TypedDict

__all__ = ["CLIENT_CLOSED", "DROPPED", "HUNG", "Accounting", "AccountingSnapshot"]

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

    ``requests``: requests that reached a provider endpoint.
    ``by_status``: outcomes by HTTP status (``"200"``, ``"429"`` ...) plus ``"dropped"``,
    ``"hung"`` and ``"client_closed"``; requests still in progress are not in it yet.
    ``faults``: injected faults by knob (``error``, ``drop``, ``hang``, ``malformed``, ``empty``).
    ``arrived``: requests per ``x-client-request-id``.
    ``paid``: paid answers per ``x-client-request-id``.
    ``paid_total``: every paid answer, with or without an ``x-client-request-id``.
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


class Accounting:
    """Mutable counters; only the server's event loop touches them."""

    __slots__ = (
        "arrived",
        "by_status",
        "cache_read",
        "cache_write",
        "faults",
        "input_tokens",
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
