"""Opening, closing and sharing a results database: ``Store`` and its connection."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from _store_rows import one, result

from pipeline import store as store_module
from pipeline.errors import StoreError
from pipeline.records import RowResult
from pipeline.store import SCHEMA_VERSION, Store

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "sub" / "results.duckdb"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store(db) as s:
        yield s


# -- opening ------------------------------------------------------------------------------------


def test_open_creates_directory_schema_and_version_idempotently(db: Path) -> None:
    with Store(db):
        pass
    assert db.exists()
    with Store.open(db) as s:  # a second open must not duplicate anything
        assert s.query("SELECT version FROM schema_version") == [{"version": SCHEMA_VERSION}]
        assert one(s, "SELECT count(*) FROM results") == 0


def test_results_view_has_the_documented_columns(store: Store) -> None:
    columns = {
        r["column_name"]
        for r in store.query(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'results'"
        )
    }
    expected = {f.name for f in dataclasses.fields(RowResult)}
    assert expected <= columns
    for name in expected:  # every column is named in the module docstring
        assert name in (store_module.__doc__ or "")


def test_view_is_recreated_on_open(db: Path) -> None:
    with Store(db) as s:
        s.query("CREATE OR REPLACE VIEW results AS SELECT 1 AS stale")
    with Store(db) as s:
        assert "cost_usd" in {
            r["column_name"]
            for r in s.query(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'results'"
            )
        }


def test_newer_schema_is_refused(db: Path) -> None:
    with Store(db) as s:
        s.query("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION + 1])
    with pytest.raises(StoreError, match="newer than this pipeline"):
        Store(db)


def test_the_store_is_its_parts_over_one_connection(db: Path) -> None:
    s = Store(db)
    parts = {name: type(getattr(s, name)).__name__ for name in ("results", "runs", "batches")}
    assert parts == {"results": "ResultTable", "runs": "RunLedger", "batches": "BatchLedger"}
    assert type(s.queries).__name__ == "Queries"
    assert repr(s) == f"<Store {str(db)!r} read-write open>"
    s.close()
    assert repr(s) == f"<Store {str(db)!r} read-write closed>"
    with Store(db, read_only=True) as r:
        assert (r.path, r.read_only) == (db, True)
        assert "read-only open" in repr(r)


def test_closed_store_says_so(db: Path) -> None:
    s = Store(db)
    s.close()
    s.close()
    with pytest.raises(StoreError, match=r"results\.duckdb is closed"):
        s.results.write([result(0)])


# -- concurrency and locking ----------------------------------------------------------------------


def test_reads_from_other_threads_while_a_thread_writes(store: Store) -> None:
    batches = [[result(b * 100 + i) for i in range(100)] for b in range(30)]
    errors: list[BaseException] = []
    writer_done = threading.Event()
    seen: list[int] = []

    def write() -> None:
        try:
            for batch in batches:
                store.results.write(batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            writer_done.set()

    def read() -> None:
        try:
            while not writer_done.is_set():
                n = store.queries.report().totals.rows
                assert n % 100 == 0  # only whole, committed batches are ever visible
                seen.append(n)
                store.results.seen([f"key-{i}" for i in range(0, 3_000, 7)], run_id="run-1")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert seen == sorted(seen)
    assert store.queries.report().totals.rows == 3_000


HOLD_OPEN = textwrap.dedent(
    """
    import sys
    from pipeline.store import Store
    with Store(sys.argv[1]):
        print("ready", flush=True)
        sys.stdin.read()
    """
)


def test_a_database_written_by_another_process_gives_a_clear_error(db: Path) -> None:
    with Store(db) as s:
        s.results.write([result(0)])
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(db)],
        cwd=PROJECT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        for read_only in (False, True):
            with pytest.raises(StoreError) as info:
                Store(db, read_only=read_only)
            message = str(info.value)
            assert str(db) in message
            assert "another pipeline process" in message
            assert f"PID {child.pid}" in message
            assert "read_only=True" in message and "duckdb -readonly" in message
            assert isinstance(info.value.__cause__, duckdb.IOException)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        assert child.wait(timeout=60) == 0
    with Store(db, read_only=True) as s:  # the writer is gone: reading works
        assert s.queries.report().totals.rows == 1


def test_read_only_store_reads_but_does_not_write(db: Path) -> None:
    with Store(db) as s:
        s.results.write([result(0), result(1)])
    with Store(db, read_only=True) as s1, Store(db, read_only=True) as s2:
        assert s1.queries.report().totals.rows == 2
        assert set(s2.results.seen(["key-0"], run_id="run-1")) == {"key-0"}
        with pytest.raises(StoreError, match="read-only"):
            s1.results.write([result(2)])


def test_read_only_open_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no results database at"):
        Store(tmp_path / "nope.duckdb", read_only=True)
    assert not (tmp_path / "nope.duckdb").exists()


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.duckdb"
    path.write_text("not a database\n" * 100)
    with pytest.raises(StoreError, match=r"notes\.duckdb"):
        Store(path)


def test_a_version_3_file_gains_the_worker_column_with_every_row_kept(db: Path) -> None:
    with Store(db) as s:
        s.results.write([result(1)])
    con = duckdb.connect(str(db))  # back to version 3's shape: no worker column
    con.execute("DROP VIEW IF EXISTS results CASCADE")
    con.execute("ALTER TABLE row_results DROP COLUMN worker")
    con.execute("UPDATE schema_version SET version = 3")
    con.close()
    with Store(db) as s:
        s.results.write([result(2, worker="ray-0@10.0.0.7")])
        rows = s.query("SELECT row_id, worker FROM results ORDER BY row_id")
        versions = s.query("SELECT version FROM schema_version ORDER BY version")
    assert rows == [
        {"row_id": "row-1", "worker": None},
        {"row_id": "row-2", "worker": "ray-0@10.0.0.7"},
    ]
    assert versions[-1] == {"version": 4} and SCHEMA_VERSION == 4
