"""The three output tables (probe results, CKA, TCAV): their columns, one writer, one reader.

Other programs read these tables (``probestore report``, notebooks, the benchmarks), so
each one's columns are declared once here as a :class:`TableSpec` (name, version,
ordered columns with dtype, unit, meaning, which are keys and which change between
two runs of the same analysis) and specified for people in ``storage_schema/RESULTS.md``
(a test keeps the two in step). Every table is written by :func:`write_table` and read
by :func:`read_table`, so there is one answer to "what does an empty cell mean":

* Parquet carries the spec's identity in the file metadata (key ``probestore.table``:
  ``{"name": ..., "version": ...}``) next to the table's own metadata; a reader refuses
  a table of another kind, or of a major version it does not know, with a one-line
  error instead of drawing wrong numbers.
* The CSV export is read with explicit dtypes and ``keep_default_na=False``: a string
  column is never turned into NaN, so every legal store name (``NA``, ``null``,
  ``nan``, ``None``, ``1e3``...) comes back as the same string. Only numeric and
  boolean columns have missing values, written as an empty field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from probestore.errors import DataError, NotFoundError, SchemaVersionError, StoreFormatError

#: Parquet metadata key of every table's identity: ``{"name": spec.name, "version": spec.version}``.
TABLE_KEY = b"probestore.table"

STR = "str"  # pandas' string dtype; a Parquet UTF-8 column
FLOAT = "float64"
INT = "int64"  # never missing (-1 where a value is unknown)
NULLABLE_INT = "Int64"  # may be null (a column some row kinds do not have)
BOOL = "boolean"  # may be null
DTYPES = (STR, FLOAT, INT, NULLABLE_INT, BOOL)
#: Spellings of a missing number in a CSV export (pandas writes NaN as an empty field).
CSV_MISSING = ("", "nan", "NaN")


@dataclass(frozen=True)
class Column:
    """One column of a table, as specified in ``storage_schema/RESULTS.md``.

    ``missing`` says when the value is NaN / null / empty (never silently: every
    missing value has a stated reason). ``nullable`` (strings only) means "null when
    not applicable"; a non-nullable string column holds ``""`` instead.
    """

    name: str
    dtype: str
    unit: str
    meaning: str
    missing: str = ""
    key: bool = False
    nondeterministic: bool = False
    nullable: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"column {self.name!r}: unknown dtype {self.dtype!r}")


@dataclass(frozen=True)
class TableSpec:
    """The written form of one kind of output table.

    ``version`` is ``MAJOR.MINOR``: a reader reads every minor version of a major it
    knows (``readable_majors``) and refuses other majors. ``signature`` are the
    columns that identify the kind in a file without metadata (a CSV export, a table
    written by hand or by an older probestore).
    """

    name: str
    title: str
    producer: str
    version: str
    readable_majors: tuple[str, ...]
    signature: tuple[str, ...]
    columns: tuple[Column, ...]
    statuses: tuple[str, ...] = field(default=())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def dtypes(self) -> dict[str, str]:
        return {c.name: c.dtype for c in self.columns}

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.key)

    @property
    def nondeterministic(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.nondeterministic)

    @property
    def identity(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version}


def major(version: object) -> str:
    """``"2.1"`` -> ``"2"``."""
    return str(version).split(".", 1)[0]


# ---------------------------------------------------------------------------- the three specs
_SPLITS = ("train", "valid", "test")
_CLS_ONLY = "a regression probe (rcv, rcv_ols), an mdl row, or the split is empty or unused"
_REG_ONLY = "a classification probe, or the split is empty or unused"


def _per_split(stem: str, dtype: str, unit: str, meaning: str, missing: str) -> tuple[Column, ...]:
    return tuple(Column(f"{s}_{stem}", dtype, unit, meaning.format(split=s), missing) for s in _SPLITS)


RESULTS = TableSpec(
    name="results",
    title="probe results table",
    producer="probestore analyze",
    # 1.1: control probes on sample types at the task probe's C, selectivity per split,
    # training-label C chosen on an inner split of train, grid_edge. 1.2: status
    # "skipped" (model-output rows of a model whose head is not the dataset's).
    version="1.2",
    readable_majors=("1",),
    signature=("run", "checkpoint", "layer", "probe", "target"),
    statuses=("ok", "not_converged", "degenerate_split", "skipped", "failed"),
    columns=(
        Column("probe_id", STR, "", "run/checkpoint/layer/probe/target: the unique key of a row", key=True),
        Column("run", STR, "", "store run name", key=True),
        Column("corruption_fraction", FLOAT, "fraction", "share of training labels the run corrupted",
               "the store does not record it"),
        Column("corruption_mode", STR, "", "how the run corrupted labels (e.g. uniform)", "\"\" when unknown"),
        Column("checkpoint", STR, "", "store checkpoint name", key=True),
        Column("epoch", INT, "epochs", "training epoch of the checkpoint", "-1 when unknown"),
        Column("layer", STR, "", "store layer name (\"outputs\" for model_output rows)", key=True),
        Column("n_features", INT, "count", "feature columns of the block", "-1 when not applicable"),
        Column("reduction", STR, "", "feature reduction of the block (e.g. none, gap, random:1000)",
               "\"\" when not applicable"),
        Column("target", STR, "", "store target (labeling or concept) the probe predicts", key=True),
        Column("probe", STR, "", "probe kind: classifier, control, rcv, rcv_ols, model_output, mdl", key=True),
        Column("hyperparameter", STR, "", "name of the selected hyperparameter (C or alpha)",
               "\"\" when the probe selects none"),
        Column("hyperparameter_value", FLOAT, "", "selected value of the hyperparameter",
               "the probe selects none, or it failed"),
        Column("grid_edge", STR, "", "\"low\"/\"high\": the selected value is the smallest/largest of its grid "
               "(the optimum may lie outside it)", "\"\" otherwise or when none was selected"),
        *_per_split("error", FLOAT, "fraction", "top-1 error on the {split} split", _CLS_ONLY),
        *_per_split("top5_error", FLOAT, "fraction", "top-5 error on the {split} split",
                    "5 or fewer classes, " + _CLS_ONLY),
        *_per_split("loss", FLOAT, "nats", "mean cross-entropy on the {split} split (capped per sample)",
                    _CLS_ONLY),
        *_per_split("r2", FLOAT, "", "R² on the {split} split", "a target constant in the split, " + _REG_ONLY),
        *_per_split("mspe", FLOAT, "target units²", "mean squared prediction error on the {split} split",
                    _REG_ONLY),
        *(Column(f"selectivity_{s}", FLOAT, "fraction", f"control error minus task error on the {s} split",
                 "no control probe, or either error missing") for s in _SPLITS),
        Column("clean_error", FLOAT, "fraction", "train error on the samples the run left uncorrupted",
               "the run corrupted nothing, or the subset is empty"),
        Column("corrupted_error", FLOAT, "fraction", "train error on the samples the run corrupted",
               "the run corrupted nothing, or the subset is empty"),
        *(Column(f"n_{s}", INT, "count", f"samples in the {s} split", "-1 when unknown") for s in _SPLITS),
        Column("fit_seconds", FLOAT, "seconds", "wall time of the fit", "not measured",
               nondeterministic=True),
        Column("status", STR, "", "ok, not_converged, degenerate_split, skipped or failed"),
        Column("message", STR, "", "why a row is not ok; for an ok row, how it was computed where that is not "
               "the default (e.g. restricted to the classes of a class_map)", "\"\" for ok rows computed as specified"),
        Column("mdl_codelength_bits", FLOAT, "bits", "online code length of the train labels (probe mdl)",
               "not an mdl row"),
        Column("mdl_uniform_bits", FLOAT, "bits", "uniform code length of the train labels (probe mdl)",
               "not an mdl row"),
        Column("mdl_compression", FLOAT, "ratio", "mdl_uniform_bits / mdl_codelength_bits", "not an mdl row"),
    ),
)

CKA = TableSpec(
    name="cka",
    title="CKA table",
    producer="probestore similarity",
    version="1.0",
    readable_majors=("1",),
    signature=("run_a", "layer_a", "run_b", "layer_b", "cka"),
    columns=(
        *(col for side in ("a", "b") for col in (
            Column(f"run_{side}", STR, "", f"run of block {side}", key=True),
            Column(f"checkpoint_{side}", STR, "", f"checkpoint of block {side}", key=True),
            Column(f"epoch_{side}", INT, "epochs", f"training epoch of block {side}'s checkpoint",
                   "-1 when unknown"),
            Column(f"layer_{side}", STR, "", f"layer of block {side}", key=True),
        )),
        Column("cka", FLOAT, "", "linear CKA of the two blocks, in [0, 1]", "either block is constant"),
        Column("n_samples", INT, "count", "samples both blocks were compared over"),
    ),
)

_NA_TCAV = "not a tcav row"
TCAV = TableSpec(
    name="tcav",
    title="TCAV table",
    producer="probestore tcav",
    # 2: held-out CAV accuracy, n_random_excluded, lift_scale-scaled RCV score_mean,
    # Bonferroni on by default, status/message. 2.1: the dtypes are the spec's (counts
    # are integers with nulls, booleans are booleans) whatever rows a table holds.
    version="2.1",
    readable_majors=("1", "2"),
    signature=("method", "run", "checkpoint", "layer", "concept", "class_name", "score_mean"),
    statuses=("ok", "failed"),
    columns=(
        Column("method", STR, "", "tcav, rcv or conexp", key=True),
        Column("run", STR, "", "store run name", key=True),
        Column("checkpoint", STR, "", "store checkpoint name", key=True),
        Column("epoch", INT, "epochs", "training epoch of the checkpoint", "-1 when unknown"),
        Column("layer", STR, "", "store layer name", "null for conexp rows (they use the logits)", key=True,
               nullable=True),
        Column("concept", STR, "", "concept set, binary target (conexp) or continuous target (rcv)", key=True),
        Column("class_index", NULLABLE_INT, "", "index of the class whose score is explained", "failed rcv rows",
               key=True),
        Column("class_name", STR, "", "name of that class", "failed rcv rows", nullable=True),
        Column("n_samples", NULLABLE_INT, "count", "samples of the class in the scored split", "failed rcv rows"),
        Column("n_concept", NULLABLE_INT, "count", "concept examples (tcav) or positive samples (conexp)",
               "rcv rows"),
        Column("repeats", NULLABLE_INT, "count", "CAVs per concept and random-vs-random CAVs", _NA_TCAV),
        Column("score_mean", FLOAT, "", "tcav: mean TCAV score (fraction); rcv: mean derivative along the RCV "
               "(logit per unit of reduced features); conexp: score difference with/without the concept",
               "failed rows"),
        Column("score_std", FLOAT, "", "std of the TCAV score over the repeats", _NA_TCAV),
        Column("random_mean", FLOAT, "fraction", "mean TCAV score of the random-vs-random CAVs", _NA_TCAV),
        Column("random_std", FLOAT, "fraction", "std of those scores", _NA_TCAV),
        Column("t", FLOAT, "", "t statistic of concept vs random scores", _NA_TCAV + ", or constant scores"),
        Column("p_value", FLOAT, "", "two-sided p-value of that t-test", _NA_TCAV + ", or constant scores"),
        Column("effect_size", FLOAT, "", "Cohen's d of concept vs random scores", _NA_TCAV),
        Column("alpha", FLOAT, "", "per-test significance level (Bonferroni-corrected by default)", _NA_TCAV),
        Column("significant", BOOL, "", "p_value < alpha", _NA_TCAV),
        Column("cav_heldout_accuracy", FLOAT, "fraction", "mean accuracy of the CAVs on their held-out examples",
               _NA_TCAV),
        Column("cav_train_accuracy", FLOAT, "fraction", "mean accuracy of the CAVs on their fitted examples",
               _NA_TCAV),
        Column("n_random_excluded", NULLABLE_INT, "count", "concept examples dropped from the random sets",
               _NA_TCAV),
        Column("sign_fraction", FLOAT, "fraction", "share of samples with a positive derivative along the RCV",
               "not an rcv row, or a failed one"),
        Column("rcv_r2_test", FLOAT, "", "test R² of the RCV regression", "not an rcv row, or a failed one"),
        Column("lift_scale", FLOAT, "", "factor that makes the stored derivative one per unit of reduced features",
               "not an rcv row"),
        Column("conexp_score", STR, "", "logit or prob: the score conexp compares", "null for other rows",
               nullable=True),
        Column("random_source", STR, "", "where the random sets came from", "null for other rows than tcav",
               nullable=True),
        Column("converged", BOOL, "", "every CAV fit converged", _NA_TCAV),
        Column("status", STR, "", "ok or failed"),
        Column("message", STR, "", "why a row is failed", "\"\" for ok rows"),
    ),
)

SPECS: dict[str, TableSpec] = {s.name: s for s in (RESULTS, CKA, TCAV)}


# ---------------------------------------------------------------------------- conforming
def _missing_value(col: Column) -> Any:
    if col.dtype == FLOAT:
        return np.nan
    if col.dtype == INT:
        return -1
    if col.dtype == STR and not col.nullable:
        return ""
    return None


def _cast(values: pd.Series, col: Column) -> Any:
    """One column in the spec's dtype (a missing value becomes the column's missing value)."""
    if col.dtype == FLOAT:
        return pd.to_numeric(values, errors="raise").astype("float64")
    if col.dtype == INT:
        return pd.to_numeric(values, errors="raise").fillna(-1).astype("int64")
    if col.dtype == NULLABLE_INT:
        return pd.to_numeric(values, errors="raise").astype("Int64")
    if col.dtype == BOOL:
        return values.astype(object).where(values.notna(), None).astype("boolean")
    text = values.astype(object).where(values.notna(), None)
    if not col.nullable:
        text = text.where(text.notna(), "")
    return pd.array([None if v is None else str(v) for v in text], dtype=STR)


def conform(df: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """A frame with every column of ``spec`` in its order and dtype (missing columns filled,
    extra columns kept last), so that two tables of one kind always compare equal."""
    out = {}
    for col in spec.columns:
        if col.name in df:
            series = df[col.name]
            if str(series.dtype) != col.dtype or (col.dtype == STR and not col.nullable and series.isna().any()):
                series = pd.Series(_cast(series, col), index=df.index)
            out[col.name] = series
        else:
            out[col.name] = pd.Series(_cast(pd.Series([_missing_value(col)] * len(df), index=df.index, dtype=object),
                                            col), index=df.index)
    for name in df.columns:
        if name not in out:
            out[name] = df[name]
    return pd.DataFrame(out, index=df.index)


def frame(rows: Iterable[Mapping[str, Any]], spec: TableSpec) -> pd.DataFrame:
    """Rows (dicts; absent keys and None are missing values) -> a frame of exactly the spec."""
    rows = list(rows)
    unknown = sorted({k for r in rows for k in r} - set(spec.names))
    if unknown:
        raise ValueError(f"unknown {spec.name} columns {unknown}")
    data = {c.name: pd.Series([r.get(c.name) for r in rows], dtype=object) for c in spec.columns}
    return conform(pd.DataFrame(data, columns=list(spec.names)), spec)


# ---------------------------------------------------------------------------- writing
def write_table(df: pd.DataFrame, path: str | Path, spec: TableSpec,
                metadata: Mapping[bytes, Any] | None = None, *, csv: bool | None = None) -> Path:
    """Write a table atomically: Parquet, or the CSV export (``csv``; default: ``path`` ends in ``.csv``).

    Parquet carries ``probestore.table`` (the spec's name and version) and each of
    ``metadata``'s keys (JSON-encoded) in its schema metadata; a CSV export carries
    only the columns. Written to a unique temporary file, synced and renamed
    (:func:`probestore.atomic.atomic_path`): a reader sees the old table or the new
    one, never a torn one.
    """
    from probestore.atomic import atomic_path

    path = Path(path)
    df = conform(df, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv" if csv is None else csv:
        with atomic_path(path) as tmp:
            to_csv(df, tmp)
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[TABLE_KEY] = json.dumps(spec.identity, sort_keys=True).encode()
    for key, value in (metadata or {}).items():
        meta[key] = json.dumps(value, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def to_csv(df: pd.DataFrame, path: str | Path) -> None:
    """The CSV export: a header line, ``,``-separated, fields quoted only when they hold a
    comma, quote or line break, missing numbers and booleans as an empty field, floats
    with enough digits to read back the same double."""
    df.to_csv(path, index=False, na_rep="", lineterminator="\n")


# ---------------------------------------------------------------------------- reading
def read_table(path: str | Path, spec: TableSpec) -> pd.DataFrame:
    """Read a table of kind ``spec`` (Parquet, or its CSV export) as it is in the file.

    The spec's columns present in the file come back in the spec's dtypes; columns the
    file lacks are *not* added (callers that need them call :func:`conform`).

    Raises
    ------
    NotFoundError
        No file at ``path``.
    DataError
        The file is a table of another kind, or lacks the spec's signature columns.
    SchemaVersionError
        A major version this probestore does not know.
    StoreFormatError
        Not a readable Parquet / CSV file.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{spec.title} not found", where=str(path),
                            expected=f"a .parquet table written by `{spec.producer}` (or its .csv export)",
                            fix=f"run `{spec.producer}` first, or check the path")
    if path.suffix.lower() == ".csv":
        df = _read_csv(path, spec)
    else:
        df = _read_parquet(path, spec)
    _check_signature(df, path, spec)
    return df


def identity(path: str | Path) -> dict[str, str] | None:
    """``{"name", "version"}`` of a Parquet table, also for tables written before
    ``probestore.table`` existed (results 1.x, TCAV 2); None when the file says nothing."""
    meta = schema_metadata(Path(path))
    return _identity_of(meta, Path(path))


def _identity_of(meta: Mapping[bytes, bytes], path: Path) -> dict[str, str] | None:
    try:
        if TABLE_KEY in meta:
            found = json.loads(meta[TABLE_KEY])
            return {"name": str(found["name"]), "version": str(found["version"])}
        if b"probestore" in meta:  # results tables before probestore.table
            found = json.loads(meta[b"probestore"])
            if isinstance(found, dict) and found.get("format") == "probestore-results":
                return {"name": RESULTS.name, "version": str(found.get("version") or "1.0")}
        if b"probestore.tcav_table" in meta:  # TCAV tables of version 2.0
            return {"name": TCAV.name, "version": str(json.loads(meta[b"probestore.tcav_table"])["version"])}
    except (ValueError, KeyError, TypeError):
        raise StoreFormatError("unreadable probestore metadata in a table", where=str(path),
                               expected="JSON with name and version",
                               fix="rewrite the table with the probestore command that made it") from None
    return None


def schema_metadata(path: Path, spec: TableSpec = RESULTS) -> dict[bytes, bytes]:
    """The schema metadata of a Parquet table (raw bytes per key)."""
    import pyarrow.parquet as pq

    try:
        return dict(pq.read_schema(path).metadata or {})
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise unreadable_table(path, exc, "Parquet", spec) from None


def unreadable_table(path: str | Path, exc: BaseException, fmt: str = "Parquet",
                     spec: TableSpec = RESULTS) -> StoreFormatError:
    """A table that exists but cannot be parsed (empty, truncated, overwritten).

    Why a separate error: ``pyarrow`` says ``ArrowInvalid: Parquet magic bytes not found``,
    which names neither the file nor what to do. Moving the file aside loses nothing
    that a rerun does not recompute (an analysis resumes from its part files).
    """
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return StoreFormatError(
        f"the {spec.title} is not a readable {fmt} file (empty, truncated or another format)",
        where=str(path),
        expected=f"a .parquet table written by `{spec.producer}`",
        got=f"{type(exc).__name__}: {first}",
        fix=f"move it aside (mv {path} {path}.damaged) and rerun `{spec.producer}` with the same -o, "
            "which recomputes it, or pass another -o path",
    )


def _read_parquet(path: Path, spec: TableSpec) -> pd.DataFrame:
    _check_identity(_identity_of(schema_metadata(path, spec), path), path, spec)
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise unreadable_table(path, exc, "Parquet", spec) from None
    return _cast_present(df, spec)


def _check_identity(found: Mapping[str, str] | None, path: Path, spec: TableSpec) -> None:
    if found is None:
        return  # a hand-made or CKA < 1.0 table: its columns decide (_check_signature)
    if found["name"] != spec.name:
        other = SPECS.get(found["name"])
        what = other.title if other else f"{found['name']!r} table"
        made = f" written by `{other.producer}`" if other else ""
        raise DataError(f"not a {spec.title}: this file is a {what}{made}", where=str(path),
                        expected=f"a table written by `{spec.producer}`", got=f"a {what}",
                        fix=f"pass the table written by `{spec.producer}`")
    if major(found["version"]) not in spec.readable_majors:
        raise SchemaVersionError(
            f"{spec.title} of unknown version {found['version']}", where=str(path),
            expected=f"major version {' or '.join(spec.readable_majors)} (this probestore writes {spec.version})",
            got=f"version {found['version']}",
            fix=f"read it with the probestore that wrote it, or rerun `{spec.producer}` to rewrite it")


def _read_csv(path: Path, spec: TableSpec) -> pd.DataFrame:
    """CSV with explicit dtypes: strings stay strings (no NA parsing), numbers parse ''/nan."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1":
        target = path.with_suffix(".parquet")
        raise DataError(
            "this .csv file holds a Parquet table (an older probestore wrote Parquet under a .csv name)",
            where=str(path), expected="CSV text", got="Parquet bytes (PAR1)",
            fix=f"rename it: mv {path} {target}; then pass {target}")
    dtypes = spec.dtypes
    try:
        header = list(pd.read_csv(path, nrows=0).columns)
        strings = {c: str for c in header if dtypes.get(c) == STR}
        na = {c: list(CSV_MISSING) if c in dtypes else _DEFAULT_NA for c in header if dtypes.get(c) != STR}
        df = pd.read_csv(path, dtype=strings, keep_default_na=False, na_values=na)
    except (UnicodeDecodeError, ValueError) as exc:  # ParserError / EmptyDataError are ValueErrors
        raise DataError(
            f"the {spec.title} is not a readable CSV file", where=str(path),
            expected=f"the .csv export written by `{spec.producer}`",
            got=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}",
            fix=f"pass the .parquet table it was exported from, or rerun `{spec.producer}`") from None
    for col in spec.columns:  # a nullable string column writes null as an empty field
        if col.name in df and col.nullable:
            df[col.name] = df[col.name].where(df[col.name] != "", None)
    try:
        return _cast_present(df, spec)
    except (ValueError, TypeError) as exc:
        raise DataError(f"the {spec.title} holds a value of the wrong type", where=str(path),
                        got=(str(exc).splitlines() or [""])[0][:200],
                        fix=f"pass the .csv export written by `{spec.producer}`") from None


#: pandas' default NA spellings, for columns of a CSV that no spec knows (not names).
_DEFAULT_NA = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
               "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]


def _cast_present(df: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    df = df.copy()
    for col in spec.columns:
        if col.name in df and str(df[col.name].dtype) != col.dtype:
            if col.dtype == BOOL:
                df[col.name] = _parse_bool(df[col.name])
            else:
                df[col.name] = _cast(df[col.name], col)
    return df


def _parse_bool(values: pd.Series) -> pd.Series:
    """Booleans from Parquet bools or CSV text (True/False, 1/0); anything else is null."""
    words = {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}

    def one(v: Any) -> Any:
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            return None
        if isinstance(v, (bool, np.bool_)):
            return bool(v)
        return words.get(str(v).strip().lower())

    return pd.Series([one(v) for v in values], index=values.index, dtype="boolean")


def _check_signature(df: pd.DataFrame, path: Path, spec: TableSpec) -> None:
    """A file without metadata is recognised by its columns; another kind's are named."""
    missing = [c for c in spec.signature if c not in df.columns]
    if not missing:
        return
    others = [s for s in SPECS.values() if s is not spec and all(c in df.columns for c in s.signature)]
    got = f"a {others[0].title} (written by `{others[0].producer}`)" if others else f"columns {list(df.columns)}"
    raise DataError(f"not a {spec.title}: the file lacks columns {missing} (key columns of every {spec.title})",
                    where=str(path),
                    expected=f"a table written by `{spec.producer}` (columns {list(spec.signature)})", got=got,
                    fix=f"pass the table written by `{spec.producer}`")
