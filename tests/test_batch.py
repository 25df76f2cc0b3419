"""Splitting request lines into batch parts within the providers' count and size limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import InputError
from pipeline.execution.parts import ENVELOPE_BYTES, PartWriter


def write_all(
    tmp: Path, sizes: list[int], *, max_requests: int, max_bytes: int
) -> list[tuple[int, int, list[str]]]:
    writer = PartWriter(tmp, max_requests=max_requests, max_bytes=max_bytes)
    parts = []
    for i, size in enumerate(sizes):
        closed = writer.add(f"k{i}", f"r{i}", "in.jsonl", i + 1, b"x" * size)
        if closed is not None:
            parts.append(closed)
    last = writer.close()
    if last is not None:
        parts.append(last)
    return [(p.count, p.bytes, [row[0] for row in rows]) for p, rows in parts]


def test_parts_split_by_count(tmp_path: Path) -> None:
    parts = write_all(tmp_path, [10] * 25, max_requests=10, max_bytes=10_000)
    assert [count for count, _, _ in parts] == [10, 10, 5]


def test_parts_split_by_bytes_before_count(tmp_path: Path) -> None:
    # 99-byte lines (+ newline = 100): 5 fit in 564 bytes with the envelope, not 6.
    parts = write_all(tmp_path, [99] * 12, max_requests=1000, max_bytes=500 + ENVELOPE_BYTES)
    assert [count for count, _, _ in parts] == [5, 5, 2]
    assert all(nbytes <= 500 for _, nbytes, _ in parts)


def test_part_files_hold_the_lines_in_order(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path, max_requests=2, max_bytes=10_000)
    assert writer.add("a", "ra", "f", 1, b'{"a":1}') is None
    assert writer.add("b", "rb", "f", 2, b'{"b":2}') is None
    closed = writer.add("c", "rc", "f", 3, b'{"c":3}')
    assert closed is not None
    part, rows = closed
    assert part.path.read_bytes() == b'{"a":1}\n{"b":2}\n'
    assert [r[0] for r in rows] == ["a", "b"]
    assert (part.index, part.first_key, part.last_key) == (1, "a", "b")
    last = writer.close()
    assert last is not None
    assert (last[0].index, last[0].first_key, last[0].last_key) == (2, "c", "c")


def test_a_line_too_big_for_any_batch_is_that_rows_input_error(tmp_path: Path) -> None:
    writer = PartWriter(tmp_path, max_requests=10, max_bytes=200)
    with pytest.raises(InputError, match=r"in.jsonl line 7 \(row r7\).*run it online"):
        writer.add("k", "r7", "in.jsonl", 7, b"x" * 500)
    assert writer.close() is None


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=80),
    max_requests=st.integers(min_value=1, max_value=20),
    max_bytes=st.integers(min_value=400, max_value=3000),
)
def test_every_line_lands_in_exactly_one_part_within_both_limits(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], max_requests: int, max_bytes: int
) -> None:
    tmp = tmp_path_factory.mktemp("parts")
    parts = write_all(tmp, sizes, max_requests=max_requests, max_bytes=max_bytes)
    keys = [k for _, _, ks in parts for k in ks]
    assert keys == [f"k{i}" for i in range(len(sizes))]
    for count, nbytes, _ in parts:
        assert 1 <= count <= max_requests
        assert nbytes + ENVELOPE_BYTES <= max_bytes
