"""Read input rows lazily from JSONL, gzipped JSONL and Parquet files.

This is the left end of the pipeline: it turns the ``[input] path`` of a job into a stream of
``Row`` and ``BadRow`` records, in chunks, without ever holding much more than one chunk in memory.

A path or glob of documents (PDF, PNG, JPEG, GIF, WebP) makes each file one row with the fields
``path``, ``name``, ``size_bytes``, ``media_type`` (by content) and, for PDFs, ``pages``, read from
the file's headers (``pipeline.documents``); its id is its path unless ``[input] id`` names one of
those fields. A glob may not mix documents with JSONL or Parquet files.

- ``input_files`` expands a path or glob into the sorted list of files to read.
- ``iter_row_chunks`` streams every row of every file, in order. A line that cannot be read
  (bad JSON, not an object, not UTF-8, no id) becomes a ``BadRow`` and reading goes on; a file that
  cannot be read at all raises ``ConfigError`` (before any of its rows is yielded when possible).
- ``fingerprint`` records what a file was (size, mtime, content hash) for the run manifest.

Row ids are the ``[input] id`` field's value when set, else the first 16 hex characters of the
SHA-256 of the row's canonical JSON (sorted keys), so identical content gets the same id in every
run. A ``BadRow``'s id is ``"{file}:{line}"``.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import math
import os
import zlib
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, TypedDict

import orjson

from .documents import DOCUMENT_SUFFIXES  # one row per file
from .errors import ConfigError, InputError
from .job import InputSpec
from .records import BadRow, Row

__all__ = [
    "DOCUMENT_FIELDS",
    "SUPPORTED_SUFFIXES",
    "Fingerprint",
    "content_id",
    "count_rows",
    "field_names",
    "fingerprint",
    "input_files",
    "iter_row_chunks",
    "row_id_text",
]

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".parquet")

_GLOB_CHARS = ("*", "?", "[")
_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_HASH_BLOCK = 1 << 20
_SORT_KEYS = orjson.OPT_SORT_KEYS

Item = Row | BadRow


class Fingerprint(TypedDict):
    """What one input file was when a run read it."""

    path: str
    size: int
    mtime_ns: int
    sha256: str


def input_files(pattern: str) -> list[Path]:
    """The files a path or glob names, sorted. ``**`` matches any number of directories.

    Raises ConfigError when nothing matches or a matched file has an unsupported suffix.
    """
    if not pattern.strip():
        raise ConfigError("is empty; give a file or a glob such as data/*.jsonl", key="input.path")
    expanded = os.path.expanduser(pattern)
    if any(c in expanded for c in _GLOB_CHARS):
        found = {Path(p) for p in glob.glob(expanded, recursive=True)}
        files = [p for p in found if p.is_file()]
        if not files:
            raise ConfigError(
                f"no files match {pattern!r} (relative to {os.getcwd()}); check the directory "
                "and the pattern, e.g. data/*.jsonl or data/**/*.parquet",
                key="input.path",
            )
    else:
        single = Path(expanded)
        if single.is_dir():
            raise ConfigError(
                f"{pattern!r} is a directory; name the files in it with a glob, "
                f"e.g. {pattern.rstrip('/')}/*.jsonl",
                key="input.path",
            )
        if not single.exists():
            raise ConfigError(
                f"no file {pattern!r} (relative to {os.getcwd()}); check the path, "
                "or give a glob such as data/*.jsonl",
                key="input.path",
            )
        files = [single]
    for f in files:
        if _kind(f) is None:
            raise ConfigError(
                f"{f}: unsupported file type; input files must end in "
                f"{', '.join(SUPPORTED_SUFFIXES)}, or be documents "
                f"({', '.join(DOCUMENT_SUFFIXES)}), one row each (rename the file or narrow "
                "the glob)",
                key="input.path",
            )
    kinds = {_kind(f) == "document" for f in files}
    if len(kinds) > 1:
        raise ConfigError(
            f"{pattern!r} matches both documents and row files (JSONL/Parquet); narrow the glob "
            "to one kind, e.g. data/scans/*.pdf",
            key="input.path",
        )
    return sorted(files)


def iter_row_chunks(spec: InputSpec, *, chunk_size: int = 512) -> Iterator[list[Row | BadRow]]:
    """Every row of every input file, in file order then line order, in lists of ``chunk_size``.

    Every chunk holds exactly ``chunk_size`` items except the last one; chunks run across file
    boundaries. Each file is checked to be readable before the first chunk is yielded, so a
    missing, unreadable or corrupt file raises ConfigError before anything is sent.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    files = input_files(spec.path)
    if files and _kind(files[0]) == "document":
        yield from _read_documents(spec, files, chunk_size)
        return
    for f in files:
        _check_readable(f, spec.id)
    buf: list[Item] = []
    for f in files:
        reader = _read_parquet if _kind(f) == "parquet" else _read_jsonl
        for part in reader(f, spec.id, chunk_size):
            if not buf and len(part) == chunk_size:
                yield part
                continue
            buf.extend(part)
            while len(buf) >= chunk_size:
                yield buf[:chunk_size]
                buf = buf[chunk_size:]
    if buf:
        yield buf


def count_rows(files: list[Path]) -> int | None:
    """Rows in the input, cheaply (Parquet metadata, newline count); None if unknown."""
    total = 0
    try:
        for path in files:
            name = path.name
            if _kind(path) == "document":
                total += 1
                continue
            if name.endswith(".parquet"):
                import pyarrow.parquet as pq

                total += pq.ParquetFile(path).metadata.num_rows
                continue
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as f:
                while block := f.read(1 << 20):
                    total += block.count(b"\n")
    except OSError:
        return None
    return total


DOCUMENT_FIELDS = ("path", "name", "size_bytes", "media_type", "pages")
"""The fields of a row made from a document (``pages`` for PDFs only)."""


def field_names(
    path: Path, wanted: Collection[str] = (), *, rows: int = 10_000
) -> frozenset[str] | None:
    """The fields rows of one input file have: a Parquet file's columns, a document's fields,
    or the keys of the first ``rows`` readable rows of a JSONL file (reading stops as soon as
    every ``wanted`` field was seen). None when the file has no readable row to tell.

    Raises ConfigError when the file cannot be read (as ``iter_row_chunks`` would)."""
    kind = _kind(path)
    if kind == "document":
        return frozenset(DOCUMENT_FIELDS)
    _check_readable(path, None)
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with pq.ParquetFile(path) as pf:
                return frozenset(pf.schema_arrow.names)
        except (pa.ArrowException, OSError) as exc:
            raise ConfigError(f"{path}: corrupt Parquet file ({exc}); re-export it") from exc
    seen: set[str] = set()
    missing = set(wanted)
    readable = 0
    for chunk in _read_jsonl(path, None, 256):
        for item in chunk:
            if isinstance(item, BadRow):
                continue
            readable += 1
            if len(seen) < 1000:
                seen.update(str(k) for k in item.fields)
            missing.difference_update(item.fields)
            if (wanted and not missing) or readable >= rows:
                return frozenset(seen)
    return frozenset(seen) if readable else None


def content_id(fields: Any) -> str:
    """The id of a row without an id field: 16 hex chars of SHA-256 over its sorted-key JSON."""
    try:
        data = orjson.dumps(fields, option=_SORT_KEYS, default=str)
    except (TypeError, orjson.JSONEncodeError):
        # orjson refuses integers beyond 64 bits; the stdlib encoder does not.
        data = json.dumps(
            fields, sort_keys=True, default=str, ensure_ascii=False, separators=(",", ":")
        ).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprint(path: str | os.PathLike[str]) -> Fingerprint:
    """Size, modification time (ns) and SHA-256 of a file, read in 1 MiB blocks.

    A document (one row per file) that is a symbolic link is fingerprinted by where it points,
    never read through: it may lead out of the attachments root, and its content is part of
    its row's request key anyway."""
    if _kind(Path(path)) == "document" and os.path.islink(path):
        try:
            st = os.lstat(path)
            target = os.fsencode(os.readlink(path))
        except OSError as exc:
            raise ConfigError(f"{os.fspath(path)}: cannot read input file ({exc})") from exc
        return Fingerprint(
            path=os.fspath(path),
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            sha256=hashlib.sha256(b"symlink\0" + target).hexdigest(),
        )
    digest = hashlib.sha256()
    block = bytearray(_HASH_BLOCK)
    view = memoryview(block)
    try:
        with open(path, "rb", buffering=0) as fh:
            st = os.fstat(fh.fileno())
            while n := fh.readinto(block):
                digest.update(view[:n])
    except OSError as exc:
        raise ConfigError(f"{os.fspath(path)}: cannot read input file ({exc})") from exc
    return Fingerprint(
        path=os.fspath(path), size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=digest.hexdigest()
    )


# -- internals -------------------------------------------------------------------------------


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".jsonl.gz"):
        return "gzip"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(DOCUMENT_SUFFIXES):
        return "document"
    return None


def _check_readable(path: Path, id_field: str | None) -> None:
    """Raise ConfigError unless the file opens and starts the way its suffix says.

    A Parquet file must also have the id column, if one is set: without it every row would fail.
    """
    kind = _kind(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot open input file ({exc.strerror or exc})") from exc
    if kind == "gzip" and head and not head.startswith(_GZIP_MAGIC):
        raise ConfigError(
            f"{path}: not gzip-compressed although it ends in .gz; "
            "rename it to .jsonl or compress it with gzip"
        )
    if kind == "parquet":
        if head != _PARQUET_MAGIC:
            raise ConfigError(f"{path}: not a Parquet file; re-export it or rename it")
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with pq.ParquetFile(path) as pf:
                names = pf.schema_arrow.names
        except (pa.ArrowException, OSError) as exc:
            raise ConfigError(f"{path}: corrupt Parquet file ({exc}); re-export it") from exc
        if id_field is not None and id_field not in names:
            raise ConfigError(
                f"{path} has no column {id_field!r} (it has: {', '.join(names[:20])}); "
                "fix [input] id or remove it to use content hashes",
                key="input.id",
            )


def _open_jsonl(path: Path) -> io.BufferedIOBase:
    if _kind(path) == "gzip":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_jsonl(path: Path, id_field: str | None, chunk_size: int) -> Iterator[list[Item]]:
    source = str(path)
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    out: list[Item] = []
    lineno = 0
    try:
        fh = _open_jsonl(path)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot open input file ({exc})") from exc
    with fh:
        try:
            for lineno, line in enumerate(fh, 1):
                try:
                    obj = loads(line)
                except decode_error as exc:
                    obj = _recover(source, lineno, line, exc)
                    if obj is _BLANK:
                        continue
                item: Item
                if type(obj) is dict:
                    if id_field is None:
                        item = Row(content_id(obj), obj, source, lineno)
                    else:
                        item = _row_with_id(obj, id_field, source, lineno)
                elif type(obj) is BadRow:
                    item = obj
                else:
                    item = BadRow(
                        f"{source}:{lineno}",
                        source,
                        lineno,
                        f"{source} line {lineno}: a JSON {_json_kind(obj)} is not an object; "
                        'each line must be one JSON object such as {"id": 1, "text": "..."}',
                        "not_an_object",
                    )
                out.append(item)
                if len(out) >= chunk_size:
                    yield out
                    out = []
        except (OSError, EOFError, zlib.error) as exc:
            raise ConfigError(
                f"{source}: cannot read past line {lineno} ({exc}); "
                "the file is truncated or corrupt: re-create it"
            ) from exc
    if out:
        yield out


_BLANK = object()


def _recover(source: str, lineno: int, line: bytes, exc: orjson.JSONDecodeError) -> Any:
    """The slow path for a line orjson refused: a BOM, a blank line, or a BadRow."""
    if lineno == 1 and line.startswith(_BOM):
        line = line[len(_BOM) :]
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError as again:
            exc = again
    if not line.strip():
        return _BLANK
    return _bad_line(source, lineno, line, exc)


def _row_with_id(obj: dict[str, Any], id_field: str, source: str, line: int) -> Item:
    value = obj.get(id_field)
    row_id = row_id_text(value)
    if row_id is None:
        if id_field not in obj:
            what = "no field"
        elif value is None or value == "":
            what = "a null" if value is None else "an empty"
        elif type(value) is float:
            what = "a NaN or infinite"
        else:
            what = f"a JSON {_json_kind(value)} as the"
        return BadRow(
            f"{source}:{line}",
            source,
            line,
            f"{source} line {line}: {what} {id_field!r}, the id field set by [input] id; "
            f"give the row a string or integer {id_field!r}, or remove [input] id to use "
            "content hashes",
            "missing_id",
        )
    return Row(row_id, obj, source, line)


def row_id_text(value: Any) -> str | None:
    """A row's id as text, or None when the value cannot be one (missing, empty, NaN, an
    object, a list or a boolean).

    Ids are text, so an id column whose type changes keeps its rows: ``1``, ``"1"`` and ``1.0``
    are the same id (an integral float is written as the integer: pandas turns an integer
    column with a null into floats). Any other float is written as Python's shortest repr."""
    kind = type(value)
    if kind is str:
        return value or None
    if kind is int:
        return str(value)
    if kind is float:
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if value is None or kind in (bool, dict, list):
        return None
    return str(value)


def _bad_line(source: str, lineno: int, line: bytes, exc: orjson.JSONDecodeError) -> BadRow:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as uexc:
        return BadRow(
            f"{source}:{lineno}",
            source,
            lineno,
            f"{source} line {lineno}: not valid UTF-8 (byte 0x{line[uexc.start]:02x} at "
            f"byte offset {uexc.start}); re-save the file as UTF-8",
            "bad_encoding",
        )
    return BadRow(
        f"{source}:{lineno}",
        source,
        lineno,
        f"{source} line {lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
        "fix or remove the line",
        "bad_json",
    )


def _json_kind(obj: object) -> str:
    if isinstance(obj, list):
        return "array"
    if isinstance(obj, str):
        return "string"
    if isinstance(obj, bool):
        return "boolean"
    if isinstance(obj, int | float):
        return "number"
    return "null"


def _read_documents(spec: InputSpec, files: list[Path], chunk_size: int) -> Iterator[list[Item]]:
    """One row per document: its fields from its headers (``documents.document_fields``),
    ``line`` 1 of its own ``source``. A file that cannot be read still makes a row; sending it
    records why. A file that resolves outside the attachments root (a symlink out of the
    folder) is not read at all: its row is an ``attachment_outside_root`` input error."""
    from .documents import confine, document_fields

    root = None if spec.allow_any_path else os.path.realpath(spec.root)
    out: list[Item] = []
    for f in files:
        source = str(f)
        try:
            if root is not None:
                confine(source, root)
        except InputError as exc:
            out.append(BadRow(source, source, 1, str(exc), exc.error_type))
        else:
            fields = document_fields(source)
            if spec.id is None:
                out.append(Row(source, fields, source, 1))
            else:
                out.append(_row_with_id(fields, spec.id, source, 1))
        if len(out) >= chunk_size:
            yield out
            out = []
    if out:
        yield out


def _read_parquet(path: Path, id_field: str | None, chunk_size: int) -> Iterator[list[Item]]:
    # Imported here: a JSONL job never needs pyarrow's Parquet reader (about 4 MB).
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(path)
    lineno = 0
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(f"{source}: corrupt Parquet file ({exc}); re-export it") from exc
    with pf:
        batches = pf.iter_batches(batch_size=chunk_size)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as exc:
                raise ConfigError(
                    f"{source}: cannot read past row {lineno} ({exc}); the Parquet file is "
                    "corrupt — re-export it"
                ) from exc
            out: list[Item] = []
            append = out.append
            for obj in batch.to_pylist():
                lineno += 1
                if id_field is None:
                    append(Row(content_id(obj), obj, source, lineno))
                else:
                    append(_row_with_id(obj, id_field, source, lineno))
            yield out
