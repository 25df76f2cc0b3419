"""The schema as data (``pipeline.store.schema``): one column table, views, numbered migrations,
and the store package's public names."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pipeline.store
from pipeline.records import RowResult
from pipeline.store import Store
from pipeline.store.schema import (
    ANALYSIS_VIEWS,
    MIGRATIONS,
    ROW_RESULTS,
    SCHEMA_VERSION,
    TABLES,
)

PIPELINE = Path(pipeline.__file__).resolve().parent


def test_the_column_table_is_the_result_record_field_for_field() -> None:
    assert [c.name for c in ROW_RESULTS] == [f.name for f in dataclasses.fields(RowResult)]


def test_a_result_with_quotes_newlines_and_empty_strings_comes_back_as_it_went_in(
    tmp_path: Path,
) -> None:
    """Rows are inserted as CSV: every string quoted, NULL an empty unquoted field."""
    from _store_rows import result

    tricky = result(
        0,
        output_text='she said "no",\nthen left \\N',
        finish_reason="",
        error=None,
        output_json='{"a": "b,\\"c\\""}',
    )
    with Store(tmp_path / "r.duckdb") as s:
        s.results.write([tricky])
        (row,) = s.query(
            "SELECT output_text, finish_reason, error, output_json::VARCHAR AS j, "
            "epoch(finished_at) AS t FROM results"
        )
    assert row["output_text"] == tricky.output_text
    assert row["finish_reason"] == "" and row["error"] is None
    assert row["j"] == tricky.output_json
    assert row["t"] == tricky.finished_at


def test_the_table_in_the_file_has_the_column_tables_types(tmp_path: Path) -> None:
    with Store(tmp_path / "r.duckdb") as s:
        rows = s.query(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'row_results' ORDER BY ordinal_position"
        )
    expected = [
        (c.name, "TIMESTAMP WITH TIME ZONE" if c.sql_type == "TIMESTAMPTZ" else c.sql_type)
        for c in ROW_RESULTS
    ]
    assert [(r["column_name"], r["data_type"]) for r in rows] == expected
    not_null = {r["column_name"] for r in rows if r["is_nullable"] == "NO"}
    assert not_null == {c.name for c in ROW_RESULTS if "NOT NULL" in c.constraint}


def test_the_documented_results_columns_have_the_column_tables_types() -> None:
    documented = {
        name: sql_type
        for names, sql_type in re.findall(
            r"^([a-z_, ]+?) {2,}([A-Z]+) {2,}", pipeline.store.__doc__ or "", re.M
        )
        for name in names.split(", ")
    }
    assert documented == {c.name: c.sql_type for c in ROW_RESULTS} | {"total_tokens": "BIGINT"}


def test_every_analysis_view_is_documented_in_the_schema_module() -> None:
    doc = pipeline.store.schema.__doc__ or ""
    for view in ANALYSIS_VIEWS:
        assert f"``{view}``" in doc


def test_migrations_are_numbered_in_order_and_end_at_the_schema_version() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == list(range(2, 2 + len(versions)))  # version 1 is the first schema
    assert versions[-1] == SCHEMA_VERSION
    assert all(m.does for m in MIGRATIONS)


def test_a_new_file_has_every_table_and_records_only_the_latest_version(tmp_path: Path) -> None:
    with Store(tmp_path / "r.duckdb") as s:
        tables = {r["table_name"] for r in s.query("SELECT table_name FROM duckdb_tables()")}
        versions = s.query("SELECT version FROM schema_version")
    assert tables == set(TABLES)
    assert versions == [{"version": SCHEMA_VERSION}]


def test_the_package_exports_exactly_its_public_names() -> None:
    assert sorted(pipeline.store.__all__) == sorted(
        [
            "ANALYSIS_VIEWS",
            "RUN_STATES",
            "SCHEMA_VERSION",
            "CacheSaving",
            "DocumentCost",
            "ModelGroup",
            "Report",
            "RunRecord",
            "RunSummary",
            "Store",
            "Totals",
        ]
    )
    for name in pipeline.store.__all__:
        assert getattr(pipeline.store, name) is not None


def test_only_the_store_package_imports_duckdb() -> None:
    importers = {
        path.relative_to(PIPELINE).as_posix()
        for path in PIPELINE.rglob("*.py")
        if re.search(r"^\s*(import duckdb|from duckdb\b)", path.read_text(), re.M)
    }
    assert importers, "the store must import duckdb somewhere"
    assert all(p.startswith("store/") for p in importers), importers
