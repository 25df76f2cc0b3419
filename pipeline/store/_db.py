"""The DuckDB connection of a results database, and the one place its errors are translated.

:class:`Database` holds one connection and gives every call a short-lived cursor of its own
(``connection.cursor()``, a few µs), so a write may run in a worker thread while other threads
read: reads see the last committed transaction. Writes are serialised by a lock; ``close()``
waits for a write in progress. Every duckdb, pyarrow and OS error raised inside :meth:`cursor`
or :meth:`transaction` leaves it as :class:`~pipeline.errors.StoreError` naming the file and
what was being done, with the original as ``__cause__``. Writes that insert rows go through a
scratch file of the connection's own (:attr:`scratch`), removed when it closes.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import duckdb

from ..errors import StoreError

__all__ = ["Database"]

_LOCK_PID_RE: Final = re.compile(r"\(PID (\d+)\)")


def _low_level(exc: BaseException) -> bool:
    """What a cursor or transaction turns into StoreError: duckdb's errors, the OS's (a full
    disk under the scratch file), and pyarrow's when a batch-mode ledger write loaded it."""
    if isinstance(exc, duckdb.Error | OSError):
        return True
    pyarrow = sys.modules.get("pyarrow")
    return pyarrow is not None and isinstance(exc, pyarrow.ArrowException)


def _config(read_only: bool) -> dict[str, Any]:
    """DuckDB settings. A job's writer does small inserts and key look-ups while the rest of
    the process does the work, so it gets one thread and a small cache: by default DuckDB keeps
    written blocks cached up to 80% of RAM, and a job's memory grew with its row count (346 MB
    at a million rows, measured). Its write-ahead log is checkpointed
    every 4 MB instead of 16 MB: DuckDB's own memory climbs with the log until each checkpoint,
    and the peaks crept up through a long run. Readers (reports, SQL) keep DuckDB's defaults."""
    if read_only:
        return {}
    return {"memory_limit": "32MB", "threads": 1, "wal_autocheckpoint": "4MB"}


class Database:
    """One open DuckDB file. ``read_only=False`` creates the file and its directory if needed;
    ``read_only=True`` opens an existing file and refuses every transaction."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.Lock()  # guards self._con: cursor creation and close
        self._write_lock = threading.Lock()  # one write transaction at a time
        if not read_only:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the directory of results database {self.path}: {exc}"
                ) from exc
        try:
            con = duckdb.connect(str(self.path), read_only=read_only, config=_config(read_only))
        except duckdb.Error as exc:
            raise self._open_error(exc) from exc
        self._con: duckdb.DuckDBPyConnection | None = con
        self._scratch: Path | None = None

    @property
    def closed(self) -> bool:
        return self._con is None

    @property
    def scratch(self) -> Path:
        """A file of this connection's own that a write may fill and have DuckDB read (only
        under the write lock, so one at a time)."""
        if self._scratch is None:
            folder = tempfile.mkdtemp(prefix="pipeline-insert-")
            self._scratch = Path(folder) / "rows.jsonl"
        return self._scratch

    def close(self) -> None:
        """Close the connection. Safe to call twice. Waits for a write in progress."""
        with self._write_lock, self._lock:
            con, self._con = self._con, None
            if con is not None:
                with contextlib.suppress(duckdb.Error):
                    con.close()
            if self._scratch is not None:
                shutil.rmtree(self._scratch.parent, ignore_errors=True)
                self._scratch = None

    def _open_error(self, exc: duckdb.Error) -> StoreError:
        text = str(exc)
        if "Could not set lock" in text:
            pid = _LOCK_PID_RE.search(text)
            who = f" (PID {pid.group(1)})" if pid else ""
            return StoreError(
                f"results database {self.path} is in use: another pipeline process{who} is "
                "writing it, and DuckDB lets no other process open the file meanwhile, not even "
                "to read. Wait for that run to finish (or stop it), then read the results with "
                f"`duckdb -readonly {self.path}` or Store(path, read_only=True); or give this "
                "run its own file with --db."
            )
        if self.read_only and "does not exist" in text:
            return StoreError(
                f"no results database at {self.path}; run a job first, or check the path"
            )
        return StoreError(f"cannot open results database {self.path}: {text}")

    def _error(self, doing: str, exc: BaseException) -> StoreError:
        return StoreError(f"cannot {doing} in results database {self.path}: {exc}")

    @contextlib.contextmanager
    def cursor(self, doing: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor of this thread's own. ``doing`` ("read the schema version") goes into the
        error message of anything that fails while it is open."""
        with self._lock:
            if self._con is None:
                raise StoreError(f"cannot {doing}: results database {self.path} is closed")
            try:
                cur = self._con.cursor()
            except duckdb.Error as exc:
                raise self._error(doing, exc) from exc
        try:
            yield cur
        except Exception as exc:
            if not _low_level(exc):
                raise
            raise self._error(doing, exc) from exc
        finally:
            with contextlib.suppress(duckdb.Error):
                cur.close()

    @contextlib.contextmanager
    def transaction(self, doing: str) -> Iterator[duckdb.DuckDBPyConnection]:
        """BEGIN ... COMMIT on a cursor of its own, one writer at a time; on any error,
        ROLLBACK (nothing of it is written) and raise StoreError."""
        if self.read_only:
            raise StoreError(f"cannot {doing}: results database {self.path} was opened read-only")
        with self._write_lock, self.cursor(doing) as cur:
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
                raise

    def query(
        self,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        *,
        doing: str = "run the query",
    ) -> list[dict[str, Any]]:
        """Run one SQL statement and return its rows as dicts."""
        with self.cursor(doing) as cur:
            rel = cur.execute(sql, params)
            if rel.description is None:
                return []
            names = [d[0] for d in rel.description]
            return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]
