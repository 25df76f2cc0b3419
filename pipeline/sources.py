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
- ``FileRows`` and ``PythonRows`` are the two kinds of ``RowSource`` a run reads: the job's
  input files, or rows handed to ``pipeline.run(rows=...)`` (dicts, a pyarrow ``Table`` or
  ``RecordBatchReader``, or anything that exports the Arrow C stream, such as a polars or pandas
  DataFrame, read through pyarrow without importing either). ``row_source`` picks one.

Row ids are the ``[input] id`` field's value when set, else the first 16 hex characters of the
SHA-256 of the row's canonical JSON (sorted keys), so identical content gets the same id in every
run. A ``BadRow``'s id is ``"{file}:{line}"``. Rows from Python have the source ``<rows>`` and
their 1-based position as their line.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import io
import json
import math
import os
import sys
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping, Sized
from pathlib import Path
from typing import Any, Protocol, TypedDict

import orjson

from .documents import DOCUMENT_SUFFIXES  # one row per file
from .errors import ConfigError, InputError
from .job import InputSpec
from .records import BadRow, Row

__all__ = [
    "DOCUMENT_FIELDS",
    "PYTHON_SOURCE",
    "SUPPORTED_SUFFIXES",
    "FileRows",
    "Fingerprint",
    "PythonRows",
    "RowSource",
    "content_id",
    "count_rows",
    "field_names",
    "fingerprint",
    "input_files",
    "iter_row_chunks",
    "row_id_text",
    "row_source",
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


PYTHON_SOURCE = "<rows>"
"""The ``source`` of rows given from Python (``results.source``)."""


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


def iter_row_chunks(
    spec: InputSpec,
    *,
    chunk_size: int = 512,
    files: list[Path] | None = None,
    fingerprints: list[Fingerprint] | None = None,
) -> Iterator[list[Row | BadRow]]:
    """Every row of every input file, in file order then line order, in lists of ``chunk_size``.

    Every chunk holds exactly ``chunk_size`` items except the last one; chunks run across file
    boundaries. Each file is checked to be readable before the first chunk is yielded, so a
    missing, unreadable or corrupt file raises ConfigError before anything is sent.

    ``files``: the files of ``spec.path``, when the caller has them already. ``fingerprints``:
    a list the fingerprint of each JSONL file read to its end is appended to, hashed from the
    very bytes the rows were parsed from (one read for both).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if files is None:
        files = input_files(spec.path)
    if files and _kind(files[0]) == "document":
        yield from _read_documents(spec, files, chunk_size)
        return
    for f in files:
        _check_readable(f, spec.id)
    buf: list[Item] = []
    for f in files:
        if _kind(f) == "parquet":
            parts = _read_parquet(f, spec.id, chunk_size)
        else:
            parts = _read_jsonl(f, spec.id, chunk_size, fingerprints)
        for part in parts:
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


class _HashingReader(io.RawIOBase):
    """A file opened for reading whose every byte read also goes into a SHA-256."""

    def __init__(self, raw: io.FileIO) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._raw.fileno()

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.size += n
        return n or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_jsonl(path: Path, hashing: _HashingReader | None = None) -> io.BufferedIOBase:
    raw: Any = hashing if hashing is not None else None
    if _kind(path) == "gzip":
        if raw is None:
            return gzip.open(path, "rb")
        return gzip.GzipFile(fileobj=io.BufferedReader(raw, _HASH_BLOCK), mode="rb")
    if raw is None:
        return open(path, "rb")
    return io.BufferedReader(raw, _HASH_BLOCK)


def _read_jsonl(
    path: Path,
    id_field: str | None,
    chunk_size: int,
    fingerprints: list[Fingerprint] | None = None,
) -> Iterator[list[Item]]:
    source = str(path)
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    out: list[Item] = []
    lineno = 0
    hashing: _HashingReader | None = None
    try:
        if fingerprints is not None:
            hashing = _HashingReader(io.FileIO(path, "r"))
            st = os.fstat(hashing.fileno())
        fh = _open_jsonl(path, hashing)
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
        if hashing is not None and fingerprints is not None:
            while hashing.readinto(bytearray(_HASH_BLOCK)):
                pass  # a gzip member's trailer: the fingerprint covers the whole file
            fingerprints.append(
                Fingerprint(
                    path=source,
                    size=st.st_size,
                    mtime_ns=st.st_mtime_ns,
                    sha256=hashing.digest.hexdigest(),
                )
            )
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


# -- what a run reads: files, or rows from Python ----------------------------------------------


class RowSource(Protocol):
    """The rows a run reads, in chunks, in input order.

    ``path``: what the manifest records as the input (the job's ``input.path``, or
    ``<rows>``). ``reiterable``: whether ``chunks`` may be called more than once (an estimate
    before the run, ``RunOutcome.results()`` after it). ``count()``: the number of rows when
    it is known without reading them (``None`` otherwise)."""

    path: str
    reiterable: bool

    def chunks(
        self, chunk_size: int, *, fingerprints: list[Fingerprint] | None = None
    ) -> Iterator[list[Row | BadRow]]: ...

    def count(self) -> int | None: ...

    def fingerprints(self) -> list[Fingerprint]: ...


class FileRows:
    """The job's input files (``[input] path``): JSONL, gzipped JSONL, Parquet or documents.
    The files are listed (and a missing input refused, ConfigError) when it is made."""

    reiterable = True

    def __init__(self, spec: InputSpec) -> None:
        if not spec.path:
            raise ConfigError(
                "no input: set [input] path in the job file (or give rows to pipeline.run)",
                key="input.path",
            )
        self.spec = spec
        self.path = spec.path
        self.files = input_files(spec.path)

    def chunks(
        self, chunk_size: int, *, fingerprints: list[Fingerprint] | None = None
    ) -> Iterator[list[Row | BadRow]]:
        return iter_row_chunks(
            self.spec, chunk_size=chunk_size, files=self.files, fingerprints=fingerprints
        )

    def count(self) -> int | None:
        return count_rows(self.files)

    def fingerprints(self) -> list[Fingerprint]:
        """Size, modification time and content hash of every file (one read of its bytes)."""
        return [fingerprint(path) for path in self.files]

    def survey(self) -> tuple[list[Fingerprint], int | None]:
        """Every file's fingerprint and the number of rows, in one read of each file's bytes
        (Parquet files count from their metadata)."""
        prints: list[Fingerprint] = []
        total: int | None = 0
        for path in self.files:
            found, rows = _survey_file(path)
            prints.append(found)
            total = None if total is None or rows is None else total + rows
        return prints, total


def _survey_file(path: Path) -> tuple[Fingerprint, int | None]:
    """A file's fingerprint and row count: a JSONL file's lines counted from the same read its
    hash takes; a Parquet file's count from its metadata; a document is one row (a symbolic
    link to one is not read through: ``fingerprint``)."""
    kind = _kind(path)
    if kind == "document":
        return fingerprint(path), 1
    if kind != "jsonl":
        return fingerprint(path), count_rows([path])  # Parquet metadata; gzip read once more
    digest = hashlib.sha256()
    block = bytearray(_HASH_BLOCK)
    view = memoryview(block)
    lines = 0
    try:
        with open(path, "rb", buffering=0) as fh:
            st = os.fstat(fh.fileno())
            while n := fh.readinto(block):
                digest.update(view[:n])
                lines += block.count(b"\n", 0, n)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read input file ({exc})") from exc
    found = Fingerprint(
        path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=digest.hexdigest()
    )
    return found, lines


class PythonRows:
    """Rows handed to ``pipeline.run(rows=...)``: an iterable of dicts (mappings), a pyarrow
    ``Table`` or ``RecordBatchReader``, or any object that exports the Arrow C stream
    (``__arrow_c_stream__``: polars and pandas DataFrames), read through pyarrow without
    importing pandas or polars.

    A list, tuple, Table or DataFrame can be read again (an estimate before the run, the
    results after it); a generator, iterator or ``RecordBatchReader`` is read once. Rows
    have the source ``<rows>`` and their 1-based position as their line; ``id_field`` is the
    job's ``[input] id``."""

    path = PYTHON_SOURCE

    def __init__(self, rows: Any, *, id_field: str | None = None) -> None:
        self.id_field = id_field
        self._rows = rows
        self._read = False
        self._arrow = _is_arrow(rows)
        if not self._arrow and (isinstance(rows, str | bytes | Mapping) or not _iterable(rows)):
            raise ConfigError(
                f"rows must be an iterable of dicts, a pyarrow Table or RecordBatchReader, or a "
                f"DataFrame (anything with __arrow_c_stream__); got {type(rows).__name__}"
            )
        one_shot = iter(rows) is rows if not self._arrow else _is_reader(rows)
        self.reiterable = not one_shot

    def count(self) -> int | None:
        rows = self._rows
        if self._arrow:
            num = getattr(rows, "num_rows", None)
            if isinstance(num, int):
                return num
            height = getattr(rows, "height", None)  # polars
            return height if isinstance(height, int) else None
        return len(rows) if isinstance(rows, Sized) else None

    def fingerprints(self) -> list[Fingerprint]:
        return []

    def chunks(
        self, chunk_size: int, *, fingerprints: list[Fingerprint] | None = None
    ) -> Iterator[list[Row | BadRow]]:
        if self._read and not self.reiterable:
            raise ConfigError(
                "these rows were read already (a generator or a RecordBatchReader is read "
                "once); pass a list, a Table or a DataFrame to read them again"
            )
        self._read = True
        values = self._arrow_dicts() if self._arrow else iter(self._rows)
        return self._chunks(values, chunk_size)

    def _arrow_dicts(self) -> Iterator[Any]:
        import pyarrow as pa

        rows = self._rows
        batches: Iterable[Any]
        if isinstance(rows, pa.Table):
            batches = rows.to_batches()
        elif isinstance(rows, pa.RecordBatch):
            batches = [rows]
        elif isinstance(rows, pa.RecordBatchReader):
            batches = rows
        else:
            batches = pa.RecordBatchReader.from_stream(rows)
        for batch in batches:
            yield from batch.to_pylist()

    def _chunks(self, values: Iterator[Any], chunk_size: int) -> Iterator[list[Row | BadRow]]:
        source = PYTHON_SOURCE
        id_field = self.id_field
        out: list[Item] = []
        for line, obj in enumerate(values, 1):
            item: Item
            if isinstance(obj, Mapping):
                fields = obj if type(obj) is dict else dict(obj)
                if id_field is None:
                    item = Row(content_id(fields), fields, source, line)
                else:
                    item = _row_with_id(fields, id_field, source, line)
            else:
                item = BadRow(
                    f"{source}:{line}",
                    source,
                    line,
                    f"row {line} of the rows given is a {type(obj).__name__}, not a dict; give "
                    "each row as a dict of fields such as {'id': 1, 'text': '...'}",
                    "not_an_object",
                )
            out.append(item)
            if len(out) >= chunk_size:
                yield out
                out = []
        if out:
            yield out


def row_source(spec: InputSpec, rows: Any = None) -> RowSource:
    """What a run of a job reads: ``rows`` from Python when given, else the job's files."""
    if rows is not None:
        return PythonRows(rows, id_field=spec.id)
    return FileRows(spec)


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _is_arrow(value: Any) -> bool:
    if hasattr(value, "__arrow_c_stream__"):
        return True
    pyarrow = sys.modules.get("pyarrow")
    return pyarrow is not None and isinstance(value, pyarrow.RecordBatch)


def _is_reader(value: Any) -> bool:
    """A stream of batches that can be read once (pyarrow's reader, or an exported stream)."""
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is not None and isinstance(value, pyarrow.RecordBatchReader):
        return True
    return type(value).__name__ in ("PyCapsule",)
