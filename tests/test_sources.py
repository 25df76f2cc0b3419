"""Reading input rows: file discovery, JSONL / gzip / Parquet streaming, bad lines, ids."""

from __future__ import annotations

import gzip
import hashlib
import os
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import ConfigError
from pipeline.job import InputSpec
from pipeline.records import BadRow, Row
from pipeline.sources import content_id, fingerprint, input_files, iter_row_chunks


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def read_all(pattern: str | Path, id_field: str | None = None, **kw: Any) -> list[Row | BadRow]:
    return [
        item for chunk in iter_row_chunks(InputSpec(str(pattern), id_field), **kw) for item in chunk
    ]


# -- input_files --------------------------------------------------------------------------------


def test_input_files_single_path(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
    assert input_files(str(f)) == [f]


def test_input_files_glob_is_sorted_and_recursive(tmp_path: Path) -> None:
    for rel in ["b.jsonl", "a.jsonl", "sub/c.jsonl", "sub/deeper/d.ndjson"]:
        write_jsonl(tmp_path / rel, [{"x": 1}])
    assert input_files(str(tmp_path / "*.jsonl")) == [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    assert input_files(str(tmp_path / "**" / "*.*json*")) == [
        tmp_path / "a.jsonl",
        tmp_path / "b.jsonl",
        tmp_path / "sub" / "c.jsonl",
        tmp_path / "sub" / "deeper" / "d.ndjson",
    ]


def test_input_files_nothing_matches_names_pattern(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nope" / "*.jsonl")
    with pytest.raises(ConfigError) as info:
        input_files(pattern)
    assert pattern in str(info.value)
    assert "input.path" in str(info.value)
    with pytest.raises(ConfigError, match="no file"):
        input_files(str(tmp_path / "missing.jsonl"))


def test_input_files_unsupported_suffix_names_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
    (tmp_path / "notes.csv").write_text("x\n1\n")
    with pytest.raises(ConfigError) as info:
        input_files(str(tmp_path / "*"))
    assert "notes.csv" in str(info.value)
    assert ".jsonl.gz" in str(info.value)


def test_input_files_directory_suggests_glob(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"directory.*\*\.jsonl"):
        input_files(str(tmp_path))


# -- reading -------------------------------------------------------------------------------------


def test_jsonl_rows_with_id_field(tmp_path: Path) -> None:
    f = tmp_path / "reviews.jsonl"
    f.write_bytes(b'{"id": "r1", "text": "good"}\n\n   \n{"id": 2, "text": "bad"}\r\n')
    items = read_all(f, "id")
    assert items == [
        Row("r1", {"id": "r1", "text": "good"}, str(f), 1),
        Row("2", {"id": 2, "text": "bad"}, str(f), 4),
    ]


def test_first_line_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"id": "a"}\n{"id": "b"}\n')
    assert [r.row_id for r in read_all(f, "id")] == ["a", "b"]


def test_gzip_and_ndjson(tmp_path: Path) -> None:
    gz = tmp_path / "a.jsonl.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(b'{"id": "g1"}\n{"id": "g2"}\n')
    nd = write_jsonl(tmp_path / "b.ndjson", [{"id": "n1"}])
    items = read_all(tmp_path / "*", "id")
    assert [(r.row_id, r.source, r.line) for r in items] == [
        ("g1", str(gz), 1),
        ("g2", str(gz), 2),
        ("n1", str(nd), 1),
    ]


def test_parquet_rows_and_row_numbers(tmp_path: Path) -> None:
    f = tmp_path / "data.parquet"
    table = pa.table({"id": ["p1", "p2", None, "p4"], "n": [1, 2, 3, 4]})
    pq.write_table(table, f, row_group_size=2)
    items = read_all(f, "id", chunk_size=3)
    assert [type(i).__name__ for i in items] == ["Row", "Row", "BadRow", "Row"]
    assert items[0] == Row("p1", {"id": "p1", "n": 1}, str(f), 1)
    assert items[3] == Row("p4", {"id": "p4", "n": 4}, str(f), 4)
    bad = items[2]
    assert isinstance(bad, BadRow)
    assert (bad.error_type, bad.line, bad.row_id) == ("missing_id", 3, f"{f}:3")


def test_parquet_without_the_id_column_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "data.parquet"
    pq.write_table(pa.table({"key": ["a"], "n": [1]}), f)
    with pytest.raises(ConfigError, match=r"no column 'id'.*key, n"):
        read_all(f, "id")


def test_files_of_a_glob_are_read_in_order_and_chunks_span_files(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "part-2.jsonl", [{"id": f"b{i}"} for i in range(3)])
    write_jsonl(tmp_path / "part-1.jsonl", [{"id": f"a{i}"} for i in range(4)])
    pq.write_table(pa.table({"id": ["c0", "c1"]}), tmp_path / "part-3.parquet")
    chunks = list(iter_row_chunks(InputSpec(str(tmp_path / "part-*"), "id"), chunk_size=4))
    assert [[r.row_id for r in c] for c in chunks] == [
        ["a0", "a1", "a2", "a3"],
        ["b0", "b1", "b2", "c0"],
        ["c1"],
    ]


@pytest.mark.parametrize(
    ("line", "error_type", "says"),
    [
        (b'{"id": "x", "text": oops}', "bad_json", "not valid JSON"),
        (b'{"id": "x"', "bad_json", "not valid JSON"),
        (b'["id", "x"]', "not_an_object", "JSON array is not an object"),
        (b'"just a string"', "not_an_object", "JSON string is not an object"),
        (b'{"id": "x", "text": "caf\xe9"}', "bad_encoding", "not valid UTF-8"),
    ],
)
def test_a_bad_line_becomes_a_bad_row_and_the_rest_comes_through(
    tmp_path: Path, line: bytes, error_type: str, says: str
) -> None:
    f = tmp_path / "in.jsonl"
    f.write_bytes(b'{"id": "r1"}\n' + line + b'\n{"id": "r3"}\n')
    items = read_all(f, "id")
    assert [type(i).__name__ for i in items] == ["Row", "BadRow", "Row"]
    assert [items[0].row_id, items[2].row_id] == ["r1", "r3"]
    bad = items[1]
    assert isinstance(bad, BadRow)
    assert bad.error_type == error_type
    assert (bad.source, bad.line, bad.row_id) == (str(f), 2, f"{f}:2")
    assert f"{f} line 2: " in bad.error
    assert says in bad.error


def test_bad_json_message_says_what_to_do(tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_bytes(b"{oops\n")
    (bad,) = read_all(f)
    assert isinstance(bad, BadRow)
    assert bad.error.endswith("fix or remove the line")


@pytest.mark.parametrize(
    ("row", "what"),
    [({"text": "no id"}, "no field 'id'"), ({"id": None}, "a null 'id'"), ({"id": ""}, "empty")],
)
def test_missing_id_is_a_bad_row_naming_field_and_fix(
    tmp_path: Path, row: dict[str, Any], what: str
) -> None:
    f = write_jsonl(tmp_path / "in.jsonl", [{"id": "ok"}, row])
    ok, bad = read_all(f, "id")
    assert isinstance(ok, Row)
    assert isinstance(bad, BadRow)
    assert bad.error_type == "missing_id"
    assert f"{f} line 2" in bad.error
    assert what in bad.error
    assert "[input] id" in bad.error


def test_content_hash_ids_without_id_field(tmp_path: Path) -> None:
    f = tmp_path / "in.jsonl"
    f.write_bytes(b'{"a": 1, "b": [1, 2]}\n{"b": [1, 2], "a": 1}\n{"a": 2, "b": [1, 2]}\n')
    first, reordered, other = read_all(f)
    expected = hashlib.sha256(b'{"a":1,"b":[1,2]}').hexdigest()[:16]
    assert first.row_id == reordered.row_id == expected
    assert other.row_id != first.row_id
    # The same content gets the same id from a different file and a later run.
    g = write_jsonl(tmp_path / "again.jsonl", [{"b": [1, 2], "a": 1}])
    assert read_all(g)[0].row_id == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=6), st.randoms())
def test_content_id_is_stable_under_key_reordering(row: dict[str, Any], rnd: Any) -> None:
    def shuffled(value: Any) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            rnd.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        if isinstance(value, list):
            return [shuffled(v) for v in value]
        return value

    cid = content_id(row)
    assert len(cid) == 16
    assert int(cid, 16) >= 0
    assert content_id(shuffled(row)) == cid
    assert content_id(orjson.loads(orjson.dumps(row))) == cid


def test_content_id_changes_with_content() -> None:
    assert content_id({"text": "a"}) != content_id({"text": "b"})
    assert content_id({"n": 1}) != content_id({"n": "1"})


def test_content_id_handles_integers_beyond_64_bits() -> None:
    assert content_id({"n": 2**70}) != content_id({"n": 2**70 + 1})


# -- unreadable files ----------------------------------------------------------------------------


def test_corrupt_parquet_is_a_config_error_before_any_row(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"id": "fine"}])
    (tmp_path / "b.parquet").write_bytes(b"PAR1" + os.urandom(64) + b"PAR1")
    chunks = iter_row_chunks(InputSpec(str(tmp_path / "*"), "id"))
    with pytest.raises(ConfigError, match=r"b\.parquet"):
        next(chunks)


def test_not_really_gzip_is_a_config_error_before_any_row(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", [{"id": "fine"}])
    (tmp_path / "b.jsonl.gz").write_bytes(b'{"id": "plain"}\n')
    with pytest.raises(ConfigError, match=r"b\.jsonl\.gz.*not gzip"):
        next(iter_row_chunks(InputSpec(str(tmp_path / "*"), "id")))


def test_truncated_gzip_fails_naming_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl.gz"
    data = gzip.compress(b"".join(b'{"id": "r%d"}\n' % i for i in range(5000)))
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"a\.jsonl\.gz: cannot read past line \d+"):
        read_all(f, "id", chunk_size=100)


# -- big input -----------------------------------------------------------------------------------


def test_big_file_comes_in_full_chunks_with_flat_memory(tmp_path: Path) -> None:
    n = 60_000
    f = tmp_path / "big.jsonl"
    with open(f, "wb") as fh:
        for i in range(n):
            fh.write(orjson.dumps({"id": i, "text": f"row {i} " + "lorem ipsum " * 20}) + b"\n")
    sizes: list[int] = []
    seen_last = ""
    tracemalloc.start()
    try:
        for chunk in iter_row_chunks(InputSpec(str(f), "id"), chunk_size=500):
            sizes.append(len(chunk))
            seen_last = chunk[-1].row_id
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sizes == [500] * 120
    assert seen_last == str(n - 1)
    # All rows as dicts would take ~30 MB; a streaming reader holds about two chunks.
    assert peak < 4_000_000, f"peak {peak} bytes: the reader is not streaming"


def test_last_chunk_holds_the_remainder(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "a.jsonl", [{"i": i} for i in range(1030)])
    assert [len(c) for c in iter_row_chunks(InputSpec(str(f)), chunk_size=512)] == [512, 512, 6]
    with pytest.raises(ValueError):
        next(iter_row_chunks(InputSpec(str(f)), chunk_size=0))


# -- fingerprint ---------------------------------------------------------------------------------


def test_fingerprint_records_size_mtime_and_hash(tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    content = os.urandom(3 * 2**20 + 17)  # spans several 1 MiB blocks
    f.write_bytes(content)
    fp = fingerprint(f)
    assert fp["size"] == len(content)
    assert fp["mtime_ns"] == f.stat().st_mtime_ns
    assert fp["sha256"] == hashlib.sha256(content).hexdigest()
    assert fp["path"] == str(f)
    f.write_bytes(content[:-1] + bytes([content[-1] ^ 1]))
    assert fingerprint(f)["sha256"] != fp["sha256"]


def test_fingerprint_of_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"gone\.jsonl"):
        fingerprint(tmp_path / "gone.jsonl")
