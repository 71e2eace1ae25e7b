"""User-supplied concepts: a CSV of continuous measures, or a folder of positive examples.

Concepts that cannot be computed from pixels (a pathologist's score, a label from
another dataset) enter the pipeline here, aligned to the store's ``sample_ids`` so
that a row can never be attached to the wrong activation. Alignment is by id, never
by row order, and every mismatch is an error rather than a silently dropped or
NaN-filled sample: a probe trained on half-aligned targets looks fine and is wrong.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from probestore.errors import DataError, NotFoundError, did_you_mean

ID_COLUMN = "sample_id"
_SHOW = 5  # ids listed in an error message before "..."


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(repr(s) for s in items[:_SHOW])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _SHOW else "")


def _check_sample_ids(sample_ids: Sequence, where: str) -> list[str]:
    ids = [str(s) for s in np.asarray(sample_ids).ravel().tolist()]
    seen: dict[str, int] = {}
    for i, sid in enumerate(ids):
        if sid in seen:
            raise DataError(
                f"duplicate sample id {sid!r}",
                where=where,
                expected="unique sample ids",
                got=f"positions {seen[sid]} and {i}",
            )
        seen[sid] = i
    return ids


def load_concept_csv(path: str | os.PathLike, sample_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Read user concepts from a CSV and align them to ``sample_ids``.

    The CSV has a header row with a ``sample_id`` column and one column per concept;
    every other row is one sample. Cells are stripped of surrounding whitespace; a
    UTF-8 byte-order mark is accepted. Every value must be a finite number.

    Parameters
    ----------
    path : str or PathLike
        The CSV file.
    sample_ids : sequence of str
        The dataset's sample ids (e.g. the store's ``sample_ids``), unique; the output
        follows this order.

    Returns
    -------
    dict of str to ndarray of float64, shape (len(sample_ids),)
        Concept name (CSV column, in file order) -> values aligned to ``sample_ids``.

    Raises
    ------
    NotFoundError
        The file does not exist.
    DataError
        No ``sample_id`` column or no concept column; a duplicate column; a row with
        the wrong number of cells; a duplicate id; an id not among ``sample_ids``; a
        sample id missing from the file; an empty, non-numeric, NaN or infinite cell.
        The message names the file, the row (line number, header = 1) and the column.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(
            "concept CSV not found",
            where=str(path),
            expected="an existing CSV file",
            fix="check the path",
        )
    ids = _check_sample_ids(sample_ids, where="load_concept_csv(sample_ids=...)")
    position = {sid: i for i, sid in enumerate(ids)}

    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [cell.strip() for cell in next(reader, [])]
        if ID_COLUMN not in header:
            raise DataError(
                f"no {ID_COLUMN!r} column",
                where=f"{path}, row 1 (header)",
                expected=f"a header with a {ID_COLUMN!r} column and one column per concept",
                got=repr(header),
                fix=did_you_mean(ID_COLUMN, header)
                or f"add a {ID_COLUMN} column naming each sample",
            )
        for j, col in enumerate(header):
            if col in header[:j]:
                raise DataError(
                    f"duplicate column {col!r}",
                    where=f"{path}, row 1 (header)",
                    got=repr(header),
                    fix="rename one of them",
                )
            if not col:
                raise DataError(
                    "empty column name",
                    where=f"{path}, row 1 (header), column {j + 1}",
                    fix="name every column",
                )
        id_col = header.index(ID_COLUMN)
        concepts = [(j, col) for j, col in enumerate(header) if j != id_col]
        if not concepts:
            raise DataError(
                "no concept column",
                where=f"{path}, row 1 (header)",
                expected=f"{ID_COLUMN} plus at least one concept column",
                got=repr(header),
            )

        values = np.full((len(ids), len(concepts)), np.nan, dtype=np.float64)
        seen_row: dict[str, int] = {}
        for cells in reader:
            row = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue  # blank line
            if len(cells) != len(header):
                raise DataError(
                    "row has the wrong number of cells",
                    where=f"{path}, row {row}",
                    expected=f"{len(header)} cells ({', '.join(header)})",
                    got=f"{len(cells)} cells",
                )
            sid = cells[id_col].strip()
            if sid in seen_row:
                raise DataError(
                    f"duplicate sample id {sid!r}",
                    where=f"{path}, row {row}, column {ID_COLUMN!r}",
                    got=f"also on row {seen_row[sid]}",
                    fix="keep one row per sample",
                )
            seen_row[sid] = row
            if sid not in position:
                raise DataError(
                    f"unknown sample id {sid!r}",
                    where=f"{path}, row {row}, column {ID_COLUMN!r}",
                    expected="an id among the dataset's sample ids",
                    got=repr(sid),
                    fix=(did_you_mean(sid, ids) or "remove the row")
                    + " (ids must match the store's sample_ids)",
                )
            for k, (j, col) in enumerate(concepts):
                text = cells[j].strip()
                try:
                    value = float(text)
                except ValueError:
                    value, bad = math.nan, True
                else:
                    bad = not math.isfinite(value)
                if bad:
                    raise DataError(
                        "concept value is not a finite number",
                        where=f"{path}, row {row}, column {col!r}",
                        expected="a finite number",
                        got=repr(text),
                        fix="fill in a number, or drop the sample from the dataset",
                    )
                values[position[sid], k] = value

    missing = [sid for sid in ids if sid not in seen_row]
    if missing:
        raise DataError(
            f"{len(missing)} sample id(s) missing from the concept CSV",
            where=str(path),
            expected=f"one row for each of the {len(ids)} sample ids",
            got="no row for " + _listing(missing),
            fix="add rows for these ids",
        )
    return {col: np.ascontiguousarray(values[:, k]) for k, (_, col) in enumerate(concepts)}


def binary_concept_from_folder(
    folder: str | os.PathLike, sample_names: Sequence[str]
) -> np.ndarray:
    """Binary concept: is each sample one of the example images in ``folder``?

    Rule: sample ``i`` is positive when the basename of ``sample_names[i]`` (its file
    name, directories stripped, case-sensitive) equals the name of a file directly in
    ``folder`` (not recursive; hidden files ignored). The folder is a hand-picked set of
    examples (TCAV-style) copied from the dataset, so the file name is the identity
    that survives the copy; files in the folder matching no sample are allowed (extra
    examples from elsewhere). Because only basenames are compared, two samples with
    the same basename in different directories would both match one example: that
    ambiguity is refused rather than guessed.

    Parameters
    ----------
    folder : str or PathLike
        Directory of positive example images.
    sample_names : sequence of str
        The dataset's sample file names or relative paths, in dataset order.

    Returns
    -------
    ndarray of bool, shape (len(sample_names),)

    Raises
    ------
    NotFoundError
        ``folder`` is not a directory.
    DataError
        No sample matches, or a matched basename belongs to several samples.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(
            "concept example folder not found",
            where=str(folder),
            expected="a directory of example images",
            fix="check the path",
        )
    examples = {p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}
    names = [str(s) for s in np.asarray(sample_names).ravel().tolist()]
    basenames = [os.path.basename(s.replace("\\", "/")) for s in names]
    positive = np.array([b in examples for b in basenames], dtype=bool)

    if not positive.any():
        raise DataError(
            "no sample matches an example in the folder",
            where=str(folder),
            expected="file names equal to the basenames of some sample names",
            got=f"folder files {_listing(sorted(examples)) or '(none)'}; sample basenames {_listing(basenames) or '(none)'}",
            fix="copy the example images from the dataset without renaming them",
        )
    first: dict[str, int] = {}
    for i in np.flatnonzero(positive).tolist():
        b = basenames[i]
        if b in first:
            raise DataError(
                f"example {b!r} matches several samples",
                where=str(folder),
                expected="each example file name to identify one sample",
                got=f"{names[first[b]]!r} and {names[i]!r}",
                fix="give the dataset's files unique names, or build the concept from sample ids with load_concept_csv",
            )
        first[b] = i
    return positive
