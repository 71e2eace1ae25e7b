"""The results table: one row per probe, written so that a killed analysis loses little.

Schema (specified in storage_schema/RESULTS.md, declared in :data:`analyze.tables.RESULTS`): the key
``probe_id = "run/checkpoint/layer/probe/target"`` is unique (store names never contain
``/``), then the block's identity, the chosen hyperparameter, metrics per split, sample
counts, fit time, ``status`` (``"ok"``, ``"not_converged"``, ``"degenerate_split"``,
``"skipped"``, ``"failed"``) and ``message`` (why a row is not ``ok``). Errors are fractions in
[0, 1]; metrics a probe does not have are NaN.

Durability: every finished block is written at once as a small Parquet file in
``<results>.parts/`` (:mod:`probestore.atomic`: synced, so a part is whole or absent). At the
end the parts and any earlier table are merged, deduplicated on ``probe_id`` and sorted
by it, and written as ``<results>`` (Parquet) and ``<results>.csv``, each atomically;
only then are the merged parts deleted. A crash at any point leaves a state from which
a rerun produces the same table: parts already written are kept, the probes they hold
are skipped, and duplicates (a part merged but not yet deleted) collapse in the merge.
The only column that differs between two runs of the same analysis is ``fit_seconds``.

The dataset fingerprint of the store is kept in the Parquet metadata (and in
``parts/_meta.json``): results of two different datasets are never mixed in one table.
So are the probe settings that change numbers (grids, control seed, solver limits): a
rerun with other settings is refused instead of silently mixing rows of both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyze import tables
from analyze.tables import RESULTS
from probestore.atomic import atomic_write, temp_name_pattern
from probestore.errors import ConfigError, FingerprintMismatchError, StoreFormatError
from probestore.locking import HeldLock, try_file_lock

RESULTS_FORMAT = "probestore-results"
#: 1.1: control probes on sample types at the task probe's C, selectivity per split,
#: training-label C chosen on an inner split of train, ``grid_edge`` (numbers of 1.0
#: tables are not comparable: they are never merged, see ``ResultsWriter``).
RESULTS_VERSION = RESULTS.version
#: Parquet metadata key of the table's own metadata (format, version, fingerprint, settings).
METADATA_KEY = b"probestore"

_STR = tables.STR  # pandas' default string dtype (round-trips through Parquet unchanged)
_F = tables.FLOAT
_I = tables.INT
#: Column -> dtype, in table order (the columns are specified in :data:`analyze.tables.RESULTS`
#: and storage_schema/RESULTS.md).
COLUMNS: dict[str, str] = RESULTS.dtypes
#: Best first (the order decides which duplicate row wins in :func:`finalize_frame`);
#: ``degenerate_split``: fitted, but a split used for selection or reporting lacks
#: classes present in train, or the test split is empty (:mod:`analyze.split_checks`).
STATUSES = RESULTS.statuses
#: Message prefix of the failed rows of a block the store declares complete but that
#: cannot be read (array missing, chunks lost): retried by every rerun, because the fix
#: is to repair the store, not to change the analysis.
UNREADABLE_BLOCK = "block unreadable: "
PROBES = ("classifier", "control", "rcv", "rcv_ols", "model_output", "mdl")
#: Columns whose value may change between two runs of the same analysis.
NONDETERMINISTIC_COLUMNS = RESULTS.nondeterministic


def probe_id(run: str, checkpoint: str, layer: str, probe: str, target: str) -> str:
    """The stable key of a probe: ``"run/checkpoint/layer/probe/target"``."""
    return "/".join((run, checkpoint, layer, probe, target))


def make_row(**fields: Any) -> dict[str, Any]:
    """A complete row: given fields, NaN / "" / -1 for the others.

    Raises
    ------
    ValueError
        An unknown column name (a programming error, not a user error).
    """
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown result columns {sorted(unknown)}")
    row: dict[str, Any] = {}
    for col, dtype in COLUMNS.items():
        if col in fields and fields[col] is not None:
            row[col] = fields[col]
        elif dtype == _F:
            row[col] = float("nan")
        elif dtype == _I:
            row[col] = -1
        else:
            row[col] = ""
    if not row["probe_id"]:
        row["probe_id"] = probe_id(row["run"], row["checkpoint"], row["layer"], row["probe"], row["target"])
    return row


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows -> a DataFrame with exactly the schema's columns and dtypes (other keys ignored)."""
    return tables.frame(({c: r.get(c) for c in COLUMNS} for r in rows), RESULTS)


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Cast a frame to the schema (missing columns filled, extra columns kept last)."""
    return tables.conform(df, RESULTS)


def finalize_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Deduplicate on ``probe_id`` and sort by it.

    A probe can appear twice after a crash between merging and deleting parts (two
    identical rows), or after ``retry_failed`` (a failed row and its refit): the row
    with the best status wins (in the order of :data:`STATUSES`), and among equals
    the one that comes last in ``df`` (the newest, when frames are concatenated oldest
    first).
    """
    df = conform(df)
    rank = df["status"].map({s: i for i, s in enumerate(STATUSES)}).fillna(len(STATUSES))
    df = df.assign(_rank=rank.to_numpy(), _age=-np.arange(len(df)))
    df = df.sort_values(["probe_id", "_rank", "_age"], kind="stable")
    df = df.drop_duplicates("probe_id", keep="first").drop(columns=["_rank", "_age"])
    return df.reset_index(drop=True)


def results_paths(results: str | Path) -> dict[str, Path]:
    """Files that make up a results table."""
    results = Path(results)
    return {
        "table": results,
        "csv": results.with_name(results.name + ".csv") if results.suffix != ".parquet"
        else results.with_suffix(".csv"),
        "parts": results.with_name(results.name + ".parts"),
        "weights": results.with_name(results.name + ".weights.zarr") if results.suffix != ".parquet"
        else results.with_suffix(".weights.zarr"),
        "lock": results.with_name(results.name + ".lock"),
    }


def default_results_path(store: str | Path) -> Path:
    """``data/mnist.zarr`` -> ``data/mnist.results.parquet``."""
    store = Path(store)
    return store.with_name(store.stem + ".results.parquet")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The probestore metadata of a results Parquet file (``{}`` if it has none)."""
    raw = tables.schema_metadata(Path(path), RESULTS).get(METADATA_KEY)
    if raw is None:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise StoreFormatError("unreadable probestore metadata in a results table", where=str(path)) from None


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a results table (Parquet, or its CSV export) with every schema column, in its dtype."""
    return conform(tables.read_table(path, RESULTS))


class ResultsWriter:
    """Writes one analysis' results: per-block parts, then the merged table.

    Parameters
    ----------
    path : path
        The results table (``.parquet``).
    metadata : mapping
        Recorded in the Parquet metadata; must hold ``fingerprint`` (the store's dataset
        fingerprint), which is checked against an existing table and parts.

    Raises
    ------
    FingerprintMismatchError
        The table or its parts were computed from a different dataset.
    ConfigError
        Another analysis holds the table's lock.
    """

    def __init__(self, path: str | Path, metadata: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.files = results_paths(self.path)
        self.metadata = dict(metadata)
        self.metadata.setdefault("format", RESULTS_FORMAT)
        self.metadata.setdefault("version", RESULTS_VERSION)
        self.fingerprint = str(self.metadata["fingerprint"])
        self._lock: HeldLock | None = None
        self._check_existing()

    # ------------------------------------------------------------------ checks and state
    def _check_existing(self) -> None:
        table = self.files["table"]
        if table.exists():
            found = read_metadata(table)
            self._check_fp(found.get("fingerprint"), str(table))
            self._check_version(found.get("version"), str(table))
            self._check_settings(found.get("settings"), str(table))
        meta = self.files["parts"] / "_meta.json"
        if meta.exists():
            try:
                found = json.loads(meta.read_text())
            except ValueError:
                found = {}
            self._check_fp(found.get("fingerprint"), str(meta))
            self._check_version(found.get("version"), str(meta))
            self._check_settings(found.get("settings"), str(meta))

    def _check_version(self, found: Any, where: str) -> None:
        """Refuse to merge rows of another results version: their numbers mean other things.

        Parts written before versions were recorded in ``_meta.json`` count as 1.0.
        """
        found = str(found or "1.0")
        mine = str(self.metadata.get("version", RESULTS_VERSION))
        if found != mine:
            raise ConfigError(
                f"the existing results were computed by another probestore (results version {found})",
                where=where,
                expected=f"results version {mine} (storage_schema/RESULTS.md §2 lists what each version changed)",
                got=f"results version {found}",
                fix="write to another results path (-o/--results), or delete the old table, its .csv and "
                    ".parts to recompute",
            )

    def _check_settings(self, found: Any, where: str) -> None:
        mine = self.metadata.get("settings")
        if mine is None or found is None:
            return
        mine = json.loads(json.dumps(mine, sort_keys=True, default=str))
        if found != mine:
            diff = sorted(k for k in set(mine) | set(found) if mine.get(k) != found.get(k))
            raise ConfigError(
                "the existing results were computed with other probe settings",
                where=where,
                expected=", ".join(f"{k}={found.get(k)}" for k in diff),
                got=", ".join(f"{k}={mine.get(k)}" for k in diff),
                fix="use the same settings to resume, or write to another results path (-o/--results)",
            )

    def _check_fp(self, found: Any, where: str) -> None:
        if found is None:
            raise StoreFormatError(
                "existing results carry no dataset fingerprint",
                where=where,
                fix="write to a new results path (-o), or delete this table if it is not needed",
            )
        if found != self.fingerprint:
            raise FingerprintMismatchError(
                "the existing results were computed on another dataset than this store's",
                where=where,
                expected=self.fingerprint,
                got=found,
                fix="write these results to another path (-o/--results), or analyse the store they came from",
            )

    def acquire(self) -> ResultsWriter:
        """Take the table's lock so that two analyses never write the same table."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = try_file_lock(self.files["lock"])
        if lock is None:
            raise ConfigError(
                "another analysis is writing this results table",
                where=str(self.path),
                fix="wait for it to finish, or write to another path with -o/--results",
            )
        self._lock = lock
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> ResultsWriter:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _part_files(self) -> list[Path]:
        parts = self.files["parts"]
        if not parts.is_dir():
            return []
        return sorted(parts.glob("part-*.parquet"), key=lambda p: (p.stat().st_mtime_ns, p.name))

    def existing(self) -> pd.DataFrame:
        """Every row already written (table and parts), deduplicated."""
        frames = []
        if self.files["table"].exists():
            frames.append(read_table(self.files["table"]))
        for part in self._part_files():
            frames.append(read_table(part))
        if not frames:
            return to_frame([])
        return finalize_frame(pd.concat(frames, ignore_index=True))

    def done_ids(self, *, retry_failed: bool = False) -> set[str]:
        """probe_ids already present (without failed ones when ``retry_failed``)."""
        df = self.existing()
        failed = df["status"] == "failed"
        retry = failed if retry_failed else failed & df["message"].str.startswith(UNREADABLE_BLOCK)
        return set(df.loc[~retry, "probe_id"].tolist())

    # ------------------------------------------------------------------ writing
    def write_part(self, key: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path | None:
        """Write the rows of one finished block as one atomic Parquet part."""
        if not rows:
            return None
        parts = self.files["parts"]
        parts.mkdir(parents=True, exist_ok=True)
        meta = parts / "_meta.json"
        if not meta.exists():
            ident = {"fingerprint": self.fingerprint, "settings": self.metadata.get("settings"),
                     "version": self.metadata.get("version", RESULTS_VERSION)}
            atomic_write(meta, json.dumps(ident, sort_keys=True, default=str))
        ids = sorted(r["probe_id"] for r in rows)
        digest = hashlib.sha1(json.dumps([list(key), ids]).encode()).hexdigest()[:16]
        path = parts / f"part-{digest}.parquet"
        tables.write_table(to_frame(rows), path, RESULTS, {METADATA_KEY: {"fingerprint": self.fingerprint}},
                           csv=False)
        return path

    def finalize(self) -> pd.DataFrame:
        """Merge table + parts, write Parquet and CSV atomically, delete merged parts."""
        merged_parts = self._part_files()
        df = self.existing()
        tables.write_table(df, self.files["table"], RESULTS, {METADATA_KEY: self.metadata}, csv=False)
        tables.write_table(df, self.files["csv"], RESULTS, csv=True)
        for part in merged_parts:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        # Temporary files of processes killed mid-write: this one holds the table's lock,
        # so no live writer owns them (left in parts/, they would keep the folder).
        table, csv, parts = self.files["table"], self.files["csv"], self.files["parts"]
        leftovers = [*table.parent.glob(temp_name_pattern(table)), *csv.parent.glob(temp_name_pattern(csv)),
                     *parts.glob(".*.tmp")]
        merged_all = parts.is_dir() and not self._part_files()
        if merged_all:
            leftovers.append(parts / "_meta.json")
        for leftover in leftovers:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        if merged_all:
            with contextlib.suppress(OSError):
                parts.rmdir()
        return df


def write_weights(path: str | Path, weights: Mapping[str, Mapping[str, np.ndarray]],
                  attrs: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Save probe weights into a Zarr group: one subgroup per ``probe_id``.

    ``weights[probe_id]`` maps array names (``coef``, ``intercept``, ``direction``) to
    arrays; ``attrs[probe_id]`` (optional) is stored as the subgroup's attributes. Each
    array is written by zarr atomically; a rerun overwrites identical values.
    """
    import zarr

    root = zarr.open_group(str(path), mode="a")
    for pid, arrays in weights.items():
        group = root.require_group(pid)
        for name, values in arrays.items():
            values = np.asarray(values)
            group.create_array(name, shape=values.shape, dtype=values.dtype, overwrite=True)[...] = values
        if attrs and pid in attrs:
            group.attrs.update(json.loads(json.dumps(attrs[pid], default=float)))


def read_weights(path: str | Path, probe_id_: str) -> dict[str, np.ndarray]:
    """The arrays saved for one probe (see :func:`write_weights`)."""
    import zarr

    group = zarr.open_group(str(path), mode="r")[probe_id_]
    if not isinstance(group, zarr.Group):
        raise StoreFormatError("probe weights are not a group", where=f"{path}/{probe_id_}",
                               expected="a Zarr group of arrays (written by write_weights)",
                               got="a single array", fix="re-run the analysis that wrote these weights")
    return {name: np.asarray(arr[...]) for name, arr in group.arrays()}
