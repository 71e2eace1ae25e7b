"""The three output tables: spec = RESULTS.md, names round-trip, readers refuse other kinds.

Why these tests: other programs read the tables, so the written specification
(storage_schema/RESULTS.md) must list exactly the columns the code writes; a run legally
named ``NA`` or ``null`` must stay a string through Parquet and the CSV export (pandas'
defaults turn it into NaN); and a reader handed a table of another kind, or of a major
version it does not know, must say so instead of drawing wrong numbers.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from analyze import tables
from analyze.report import read_results
from analyze.report.sensitivity import read_tcav
from analyze.results import ResultsWriter, make_row, read_table, results_paths
from analyze.tables import CKA, RESULTS, SPECS, TCAV
from probestore.errors import DataError, SchemaVersionError
from storage_schema.names import NAME_PATTERN, is_valid_name

DOC = Path(__file__).resolve().parents[1] / "storage_schema" / "RESULTS.md"
DOC_TYPES = {tables.STR: "string", tables.FLOAT: "float64", tables.INT: "int64",
             tables.NULLABLE_INT: "int64, nullable", tables.BOOL: "bool, nullable"}
#: Names that other tools read as missing values, numbers or booleans.
TRICKY = ("NA", "null", "nan", "NaN", "None", "N_A", "1e3", "007", "True", "-1.#IND"[1:], "n:a", "inf")


def doc_columns(name: str) -> list[tuple[str, str, str]]:
    """(column, type, flags) rows of the table between ``<!-- columns:NAME -->`` and its end marker."""
    text = DOC.read_text()
    block = text.split(f"<!-- columns:{name} -->", 1)[1].split(f"<!-- end:{name} -->", 1)[0]
    rows = []
    for line in block.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append((cells[1].strip("`"), cells[2], cells[6]))
    return rows


@pytest.mark.parametrize("spec", SPECS.values(), ids=list(SPECS))
def test_results_md_lists_exactly_the_columns_of_each_spec(spec):
    documented = doc_columns(spec.name)
    assert [c for c, _, _ in documented] == list(spec.names)
    for (name, dtype, flags), col in zip(documented, spec.columns):
        assert dtype == DOC_TYPES[col.dtype] + (", nullable" if col.nullable else ""), name
        assert ("key" in flags.split(", ")) == col.key, name
        assert ("nondeterministic" in flags) == col.nondeterministic, name
    text = DOC.read_text()
    assert f"(`{spec.name}`, version {spec.version})" in text  # the section names the current version
    for status in spec.statuses:
        assert f"`{status}`" in text


def test_results_module_takes_its_schema_from_the_spec():
    from analyze import results, similarity, tcav

    assert list(results.COLUMNS) == list(RESULTS.names) and results.STATUSES == RESULTS.statuses
    assert results.NONDETERMINISTIC_COLUMNS == ("fit_seconds",)
    assert similarity.CKA_COLUMNS == CKA.names and tcav.COLUMNS == TCAV.names
    assert tcav.TABLE_VERSION == TCAV.version


# ---------------------------------------------------------------------- names round-trip
legal_names = st.from_regex(NAME_PATTERN, fullmatch=True).filter(is_valid_name)


def results_frame(names: list[str]) -> pd.DataFrame:
    rows = [make_row(run=n, checkpoint=n, layer=n, target=n, probe="classifier", test_error=0.25 if i % 2 else None,
                     n_test=10, epoch=i, status="ok") for i, n in enumerate(names)]
    return tables.frame(rows, RESULTS)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(legal_names, min_size=1, max_size=4, unique=True))
@example(names=list(TRICKY))
def test_every_legal_name_round_trips_through_parquet_and_csv(tmp_path_factory, names):
    assert all(is_valid_name(n) for n in names)
    folder = tmp_path_factory.mktemp("names")
    df = results_frame(names)
    for suffix in (".parquet", ".csv"):
        path = tables.write_table(df, folder / f"r{suffix}", RESULTS)
        back = tables.read_table(path, RESULTS)
        pd.testing.assert_frame_equal(back, df)
        assert list(back["run"]) == names
    # the report reads the same strings (it used pandas' default NA parsing on CSV before)
    assert list(read_results(folder / "r.csv")["run"]) == names
    cka = tables.frame([{"run_a": n, "checkpoint_a": n, "epoch_a": 0, "layer_a": n, "run_b": n,
                         "checkpoint_b": n, "epoch_b": 1, "layer_b": n, "cka": 0.5, "n_samples": 3}
                        for n in names], CKA)
    pd.testing.assert_frame_equal(tables.read_table(tables.write_table(cka, folder / "c.csv", CKA), CKA), cka)
    tcav = tables.frame([{"method": "conexp", "run": n, "checkpoint": n, "epoch": 0, "layer": None, "concept": n,
                          "class_index": 0, "class_name": n, "score_mean": 0.1, "status": "ok", "message": ""}
                         for n in names], TCAV)
    for suffix in (".parquet", ".csv"):
        back = tables.read_table(tables.write_table(tcav, folder / f"t{suffix}", TCAV), TCAV)
        pd.testing.assert_frame_equal(back, tcav)
        assert list(read_tcav(folder / f"t{suffix}")["concept"]) == names


def test_results_writer_csv_export_keeps_na_named_runs(tmp_path):
    """The merged table and its CSV export, read by both readers, keep runs named NA / null."""
    path = tmp_path / "res.parquet"
    rows = [make_row(run=n, checkpoint="c", layer="l", probe="classifier", target="t", test_error=0.1,
                     n_test=5, status="ok") for n in ("NA", "null", "nan")]
    with ResultsWriter(path, {"fingerprint": "fp"}) as writer:
        writer.write_part(("k",), rows)
        final = writer.finalize()
    csv = results_paths(path)["csv"]
    assert sorted(final["run"]) == ["NA", "nan", "null"]
    pd.testing.assert_frame_equal(read_table(csv), read_table(path))
    assert sorted(read_results(csv)["run"]) == ["NA", "nan", "null"]
    assert "\nNA/c/l/classifier/t,NA," in csv.read_text()  # written as the bare string


def test_tcav_dtypes_are_the_specs_whatever_rows_a_table_holds(tmp_path):
    """Counts stay integers and booleans booleans, with nulls where a method lacks them."""
    rows = [{"method": "tcav", "run": "r", "checkpoint": "c", "epoch": 3, "layer": "l", "concept": "k",
             "class_index": 1, "class_name": "one", "n_samples": 5, "n_concept": 4, "repeats": 3,
             "score_mean": 0.5, "significant": True, "converged": False, "random_source": "drawn",
             "status": "ok", "message": ""},
            {"method": "rcv", "run": "r", "checkpoint": "c", "epoch": None, "layer": "l", "concept": "area",
             "lift_scale": 2.0, "status": "failed", "message": "RCV not fitted: constant, target"}]
    df = tables.frame(rows, TCAV)
    assert str(df["n_concept"].dtype) == "Int64" and df["n_concept"].isna().tolist() == [False, True]
    assert str(df["significant"].dtype) == "boolean" and df["epoch"].tolist() == [3, -1]
    for suffix in (".parquet", ".csv"):
        back = tables.read_table(tables.write_table(df, tmp_path / f"t{suffix}", TCAV), TCAV)
        pd.testing.assert_frame_equal(back, df)
    assert "\"RCV not fitted: constant, target\"" in (tmp_path / "t.csv").read_text()  # quoted: holds a comma


# ---------------------------------------------------------------------- refusing other kinds
def sample_frame(spec) -> pd.DataFrame:
    if spec is RESULTS:
        return results_frame(["a"])
    if spec is CKA:
        return tables.frame([{"run_a": "a", "checkpoint_a": "c", "layer_a": "l", "run_b": "b", "checkpoint_b": "c",
                              "layer_b": "l", "cka": 1.0, "n_samples": 2}], CKA)
    return tables.frame([{"method": "tcav", "run": "a", "checkpoint": "c", "layer": "l", "concept": "k",
                          "class_name": "x", "score_mean": 0.5, "status": "ok", "message": ""}], TCAV)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
@pytest.mark.parametrize("written", SPECS.values(), ids=list(SPECS))
def test_each_reader_refuses_the_other_kinds(tmp_path, written, suffix):
    path = tables.write_table(sample_frame(written), tmp_path / f"{written.name}{suffix}", written)
    assert len(tables.read_table(path, written)) == 1
    for reader in SPECS.values():
        if reader is written:
            continue
        with pytest.raises(DataError, match=f"not a {reader.title}.*{written.title}.*{reader.producer}") as err:
            tables.read_table(path, reader)
        assert "\n" not in str(err.value)


def test_metadata_identity_wins_over_columns_and_unknown_majors_are_refused(tmp_path):
    """A file's recorded kind decides even when its columns look right; a newer major is refused."""
    path = tables.write_table(sample_frame(RESULTS), tmp_path / "r.parquet", RESULTS)
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    meta[tables.TABLE_KEY] = json.dumps({"name": "cka", "version": "1.0"}).encode()
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "lies.parquet")
    with pytest.raises(DataError, match="not a probe results table: this file is a CKA table"):
        tables.read_table(tmp_path / "lies.parquet", RESULTS)
    meta[tables.TABLE_KEY] = json.dumps({"name": "results", "version": "2.0"}).encode()
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "future.parquet")
    with pytest.raises(SchemaVersionError, match=r"unknown version 2\.0.*major version 1.*rerun `probestore analyze`"):
        tables.read_table(tmp_path / "future.parquet", RESULTS)
    meta[tables.TABLE_KEY] = json.dumps({"name": "results", "version": "1.7"}).encode()  # a newer minor: read
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "minor.parquet")
    assert len(tables.read_table(tmp_path / "minor.parquet", RESULTS)) == 1


def test_tables_of_earlier_versions_are_recognised(tmp_path):
    """Results 1.x (key ``probestore``) and TCAV 2.0 (key ``probestore.tcav_table``) predate ``probestore.table``."""
    df = sample_frame(TCAV)
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)
    old = {b"probestore.tcav_table": json.dumps({"version": "2"}).encode()}
    pq.write_table(table.replace_schema_metadata(old), tmp_path / "t2.parquet")
    assert tables.identity(tmp_path / "t2.parquet") == {"name": "tcav", "version": "2"}
    assert len(read_tcav(tmp_path / "t2.parquet")) == 1
    with pytest.raises(DataError, match="not a probe results table: this file is a TCAV table"):
        read_results(tmp_path / "t2.parquet")
    res = pa.Table.from_pandas(sample_frame(RESULTS), preserve_index=False)
    legacy = {b"probestore": json.dumps({"format": "probestore-results", "version": "1.1", "fingerprint": "x"}).encode()}
    pq.write_table(res.replace_schema_metadata(legacy), tmp_path / "r.parquet")
    assert tables.identity(tmp_path / "r.parquet") == {"name": "results", "version": "1.1"}
    with pytest.raises(DataError, match="not a TCAV table: this file is a probe results table"):
        read_tcav(tmp_path / "r.parquet")


def test_unknown_dtype_and_unknown_columns_are_programming_errors():
    with pytest.raises(ValueError, match="unknown dtype"):
        tables.Column("x", "float32", "", "")
    with pytest.raises(ValueError, match=re.escape("unknown cka columns ['nope']")):
        tables.frame([{"nope": 1}], CKA)
    assert np.isnan(tables.frame([{"run_a": "a"}], CKA)["cka"].iloc[0])
