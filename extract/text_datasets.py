"""Text datasets: sequences (or pre-split words) tokenized by the model's own tokenizer, as store rows.

``[dataset] kind = "text"`` reads a JSONL, CSV or Parquet table (pandas). Two shapes:

* a text column with one label per sequence (``text_column`` + ``label_column``): a
  sequence-unit store (``cls`` / ``mean`` / ``last``) has one row per sequence; a
  token-unit store (``tokens`` / ``random_tokens:K``) one row per token, labelled with
  its sequence's label;
* pre-split words with a label per word (``words_column`` + ``word_labels_column``;
  null marks an unlabelled word, which is no row): every row is a labelled word, made
  from its sub-tokens by ``word_alignment`` (``first`` sub-token, or the ``mean`` of
  them). ``random_tokens:K`` then keeps K seeded labelled words per sequence.

The tokenizer is the model's own (``AutoTokenizer.from_pretrained(folder,
local_files_only=True)``; a fast tokenizer, for ``word_ids``). Words are aligned
through ``word_ids()``, never by re-splitting strings, so a word is exactly the
sub-tokens the model saw. A labelled word cut away by truncation is dropped and
counted in one warning line, never silently misaligned; ``truncation = false`` refuses
a sequence longer than ``max_length``. Special tokens ([CLS], [SEP]) are not token rows
unless ``special_tokens = true`` (they carry no word, and every sequence has them: a
probe would learn them as a class of their own).

Row ids are ``<sequence id>:t<position>`` (a word: the position of its first
sub-token); ``sequence`` (0..n_sequences-1) and ``position`` are stored beside them
(SCHEMA.md 1.3). Sequences that give no row (no labelled word left) are dropped and
counted, so every sequence of the store has rows. Splits are drawn per sequence by
:func:`extract.text_experiment.load_text_experiment`, never per token.

Word types for the control task (Hewitt & Liang 2019): the lower-cased word string of
word rows, the token id of token rows (``samples/type``).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probestore.errors import ConfigError, DataError, NotFoundError, did_you_mean
from probestore.experiment.dataset import DatasetSpec
from probestore.progress import Log
from storage_schema.reductions import parse_reduction, row_unit

__all__ = ["TextDataset", "load_text_dataset", "read_table", "load_tokenizer", "DEFAULT_MAX_LENGTH"]

#: ``max_length`` when the tokenizer states none (or an effectively unbounded one).
DEFAULT_MAX_LENGTH = 512
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
             ".pq": "parquet"}


#: Messages: flushed line by line, timestamped outside a terminal (probestore.progress).
_log = Log()


def read_table(spec: DatasetSpec):
    """The table of ``spec.path`` as a pandas DataFrame (format from ``spec.format`` or the suffix)."""
    import pandas as pd

    path = Path(str(spec.path))
    fmt = spec.format or _SUFFIXES.get(path.suffix.lower())
    where = "[dataset].path"
    if fmt is None:
        raise ConfigError("cannot tell the table format from the file name", where=where, got=path.name,
                          expected="a .jsonl, .csv or .parquet file", fix='set format = "jsonl", "csv" or "parquet"')
    if not path.is_file():
        raise NotFoundError("text table not found", where=where, got=str(path), fix="check the path")
    try:
        if fmt == "jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        if fmt == "csv":
            return pd.read_csv(path, keep_default_na=True)
        return pd.read_parquet(path)
    except (ValueError, OSError, ImportError) as exc:
        raise DataError(f"cannot read the {fmt} table", where=str(path), got=f"{type(exc).__name__}: {exc}"[:300],
                        fix=f"check that the file is valid {fmt}" + (" (one JSON object per line)"
                                                                    if fmt == "jsonl" else "")) from None


@functools.lru_cache(maxsize=4)
def load_tokenizer(folder: str):
    """The fast tokenizer saved in ``folder``, offline (``local_files_only``; loaded once per process)."""
    from transformers import AutoTokenizer

    where = "[dataset].tokenizer"
    if not Path(folder).is_dir():
        raise NotFoundError("tokenizer folder not found", where=where, got=folder,
                            fix="point tokenizer (or the hf: model) to a save_pretrained folder")
    try:
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ConfigError("cannot load the tokenizer", where=where, got=f"{type(exc).__name__}: {exc}"[:300],
                          fix="save it with tokenizer.save_pretrained(folder)") from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError("the tokenizer is not a fast tokenizer", where=where, got=type(tok).__name__,
                          fix="save a fast tokenizer (tokenizer.json) in the folder: word alignment needs word_ids()")
    return tok


def _column(df, name: str, what: str):
    if name not in df.columns:
        cols = [str(c) for c in df.columns]
        raise ConfigError(f"no column {name!r} in the text table", where=f"[dataset].{what}", expected=cols[:20],
                          got=repr(name), fix=did_you_mean(name, cols) or "name one of the table's columns")
    return df[name].tolist()


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_list(value: Any, where: str, row: int) -> list:
    """A list cell (JSONL / Parquet lists, or a CSV cell holding a JSON list)."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DataError("expected a list per row", where=f"{where} (table row {row})",
                        got=f"{type(value).__name__} {str(value)[:60]!r}",
                        fix="store the words and their labels as lists (JSONL / Parquet), or JSON lists in CSV")
    return list(value)


def _class_index(values: list, class_names: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Label values -> indices into the class names (given, else the sorted distinct values)."""
    if class_names is None:
        distinct = set(values)
        numeric = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in distinct)
        ordered = sorted(distinct) if numeric else sorted(distinct, key=str)
        class_names = [str(v) for v in ordered]
    index = {name: i for i, name in enumerate(class_names)}
    out = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and str(v) not in index:
            if not 0 <= int(v) < len(class_names):
                raise DataError("label index out of range of class_names", where=where,
                                expected=f"0..{len(class_names) - 1}", got=int(v))
            out[i] = int(v)
            continue
        key = str(v)
        if key not in index:
            raise DataError(f"label {key!r} is not in class_names", where=where, expected=class_names[:20],
                            got=repr(key), fix=did_you_mean(key, class_names) or "add it to [dataset] class_names")
        out[i] = index[key]
    return out, list(class_names)


@dataclass
class TextDataset:
    """Tokenized sequences and the store rows they give (see the module docstring).

    Attributes
    ----------
    spec : DatasetSpec
    unit : {"sequence", "token", "word"}
    input_ids : list of numpy.ndarray
        Token ids of each kept sequence, special tokens included, truncated.
    pad_id : int
    sequence_ids : numpy.ndarray of str
    sample_ids, labels : numpy.ndarray
        Per row.
    sequence, position, stop : numpy.ndarray
        Per row: sequence index, first token position, end of its token span (exclusive);
        for sequence rows ``position`` is 0 and ``stop`` the sequence length.
    row_start : numpy.ndarray of int64, shape (n_sequences + 1,)
        Rows of sequence ``s`` are ``[row_start[s], row_start[s + 1])``.
    sequence_labels : numpy.ndarray or None
        One label per sequence (the split stratification key); None for words.
    types : numpy.ndarray or None
        Word-type id per row (token and word rows only).
    targets : dict of str to numpy.ndarray
        Continuous targets per row.
    tokenization : dict
        What the store records as ``dataset.tokenization``.
    """

    spec: DatasetSpec
    unit: str
    input_ids: list[np.ndarray]
    pad_id: int
    sequence_ids: np.ndarray
    sample_ids: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    sequence: np.ndarray
    position: np.ndarray
    stop: np.ndarray
    row_start: np.ndarray
    sequence_labels: np.ndarray | None
    types: np.ndarray | None
    tokenization: dict[str, Any]
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    predefined_split: None = None

    @property
    def name(self) -> str:
        return str(self.spec.name)

    @property
    def n_sequences(self) -> int:
        return len(self.input_ids)

    def __len__(self) -> int:
        return int(self.labels.size)

    def lengths(self, start: int, stop: int) -> np.ndarray:
        """Tokens of sequences ``[start, stop)`` (special tokens included)."""
        return np.array([a.size for a in self.input_ids[start:stop]], dtype=np.int64)

    def batch(self, start: int, stop: int):
        """``(input_ids, attention_mask)`` int64 tensors of sequences ``[start, stop)``, padded to the longest."""
        import torch

        seqs = self.input_ids[start:stop]
        width = max(a.size for a in seqs)
        ids = np.full((len(seqs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for i, a in enumerate(seqs):
            ids[i, :a.size] = a
            mask[i, :a.size] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def row_spans(self, start: int, stop: int):
        """The :class:`~extract.token_reductions.RowSpans` of the rows of sequences ``[start, stop)``."""
        from extract.token_reductions import RowSpans

        r0, r1 = int(self.row_start[start]), int(self.row_start[stop])
        return RowSpans(self.sequence[r0:r1] - start, self.position[r0:r1], self.stop[r0:r1])

    def to_dict(self) -> dict[str, Any]:
        """The dataset spec plus how the text became rows (recorded as ``dataset.source``)."""
        return {**self.spec.to_dict(), "unit": self.unit, "n_sequences": self.n_sequences,
                "tokenization": dict(self.tokenization)}


def load_text_dataset(spec: DatasetSpec, *, reduction: str, seed: int, tokenizer: str | None) -> TextDataset:
    """Read, tokenize and lay out the rows of a text dataset for a store of ``reduction``'s unit.

    Parameters
    ----------
    spec : DatasetSpec
        ``kind = "text"``.
    reduction : str
        The reduction spec of the store's layers (its unit decides the rows; for
        ``random_tokens:K``, K).
    seed : int
        ``[extract] reduction_seed``: seeds the ``random_tokens`` positions, per
        sequence id (the same rows for every checkpoint and layer, whatever the order
        or number of other sequences).
    tokenizer : str or None
        The tokenizer folder (``[dataset] tokenizer``, else the ``hf:`` model's folder).

    Raises
    ------
    ConfigError
        No tokenizer folder, a sequence reduction on word-labelled data, missing columns.
    DataError
        Null sequence labels, a too-long sequence with ``truncation = false``,
        non-finite targets, no rows at all.
    """
    kind, k = parse_reduction(reduction)
    unit = row_unit(kind)
    words_data = spec.words_column is not None
    if words_data and unit == "sequence":
        raise ConfigError(f"word-labelled data needs token rows, not {reduction!r}",
                          where="[extract] reduction", expected='"tokens" or "random_tokens:K"', got=repr(reduction),
                          fix='use reduction = "tokens" (every labelled word a row), or give a sequence label '
                              "with text_column / label_column")
    if tokenizer is None:
        raise ConfigError("no tokenizer for the text dataset", where="[dataset].tokenizer",
                          fix='set tokenizer = "<folder of the model\'s save_pretrained tokenizer>", '
                              'or use an "hf:<folder>" model')
    tok = load_tokenizer(tokenizer)
    df = read_table(spec)
    keep = _subsample(len(df), spec.max_samples, spec.seed)
    ids_col = _column(df, spec.id_column, "id_column") if spec.id_column else None
    seq_ids = [str(ids_col[i]) if ids_col else f"s{i}" for i in keep]
    max_length = _max_length(spec, tok)
    if words_data:
        word_cells = _column(df, str(spec.words_column), "words_column")
        label_cells = _column(df, str(spec.word_labels_column), "word_labels_column")
        words = [[str(w) for w in _as_list(word_cells[i], f"[dataset].{spec.words_column}", i)] for i in keep]
        tags = [_as_list(label_cells[i], f"[dataset].{spec.word_labels_column}", i) for i in keep]
        for i, (w, t) in enumerate(zip(words, tags)):
            if len(w) != len(t):
                raise DataError("words and word labels differ in length", where=f"[dataset] table row {keep[i]}",
                                expected=f"{len(w)} labels (one per word)", got=len(t))
        enc = _tokenize(tok, words, max_length, spec.truncation, split=True, where="words_column")
    else:
        column = _column(df, str(spec.text_column), "text_column")
        texts = ["" if _is_null(column[i]) else str(column[i]) for i in keep]
        enc = _tokenize(tok, texts, max_length, spec.truncation, split=False, where="text_column")
    layout = _RowLayout(unit=("word" if words_data else unit), kind=kind, k=k, seed=seed,
                        special=spec.special_tokens, alignment=spec.word_alignment)
    if words_data:
        rows = layout.word_rows(enc, seq_ids, tags)
    else:
        label_column = _column(df, str(spec.label_column), "label_column")
        labels = [label_column[i] for i in keep]
        nulls = [keep[i] for i, v in enumerate(labels) if _is_null(v)]
        if nulls:
            raise DataError(f"{len(nulls)} sequence(s) without a label", where=f"[dataset].{spec.label_column}",
                            got=f"null at table rows {nulls[:5]}", fix="label every sequence, or remove those rows")
        rows = layout.text_rows(enc, seq_ids, labels)
    return _assemble(spec, tok, tokenizer, max_length, df, keep, enc, rows, "word" if words_data else unit,
                     layout.dropped_words)


def _subsample(n: int, max_samples: int | None, seed: int) -> list[int]:
    """Table rows kept: all, or a seeded subset of ``max_samples`` sequences in file order."""
    if max_samples is None or max_samples >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=max_samples, replace=False).tolist())


def _max_length(spec: DatasetSpec, tok) -> int:
    if spec.max_length is not None:
        return int(spec.max_length)
    stated = getattr(tok, "model_max_length", None)
    return int(stated) if isinstance(stated, int) and 2 <= stated <= DEFAULT_MAX_LENGTH else DEFAULT_MAX_LENGTH


def _tokenize(tok, items: list, max_length: int, truncation: bool, *, split: bool, where: str):
    """Fast-tokenizer encodings, truncated to ``max_length``; too-long ones counted (or refused)."""
    full = tok(items, is_split_into_words=split, truncation=False, add_special_tokens=True)
    too_long = [i for i, ids in enumerate(full["input_ids"]) if len(ids) > max_length]
    if too_long and not truncation:
        raise DataError(f"{len(too_long)} sequence(s) longer than max_length = {max_length} tokens",
                        where=f"[dataset].{where}", got=f"up to {max(len(full['input_ids'][i]) for i in too_long)} "
                                                         f"tokens (sequence {too_long[0]} first)",
                        fix="raise [dataset] max_length, or set truncation = true (labelled words cut away are dropped)")
    enc = tok(items, is_split_into_words=split, truncation=True, max_length=max_length,
              return_special_tokens_mask=True, add_special_tokens=True)
    enc.n_truncated = len(too_long)
    # Sub-tokens per word before truncation: a word cut in two must not become the mean of its first half.
    enc.full_word_tokens = [np.bincount([w for w in full.word_ids(i) if w is not None]) if split else None
                            for i in too_long] if split else []
    enc.truncated_index = {i: n for n, i in enumerate(too_long)}
    return enc


@dataclass
class _Rows:
    seq: list[int]
    start: list[int]
    stop: list[int]
    label: list[Any]
    type_key: list[Any]
    word_index: list[int]

    def add(self, seq: int, start: int, stop: int, label: Any, type_key: Any, word_index: int) -> None:
        for column, value in ((self.seq, seq), (self.start, start), (self.stop, stop), (self.label, label),
                              (self.type_key, type_key), (self.word_index, word_index)):
            column.append(value)


@dataclass
class _RowLayout:
    """Which (sequence, token span) pairs are rows, for one unit and selection."""

    unit: str
    kind: str
    k: int | None
    seed: int
    special: bool
    alignment: str
    dropped_words: int = 0

    def _choose(self, candidates: list, seq_id: str) -> list:
        """All candidates, or K of them drawn from ``(seed, sha256(sequence id))`` (order kept)."""
        if self.kind != "random_tokens" or self.k is None or len(candidates) <= self.k:
            return candidates
        from extract.reductions import stable_hash

        rng = np.random.default_rng([self.seed, stable_hash(seq_id)])
        picked = np.sort(rng.choice(len(candidates), size=self.k, replace=False))
        return [candidates[i] for i in picked]

    def text_rows(self, enc, seq_ids: list[str], labels: list) -> _Rows:
        rows = _Rows([], [], [], [], [], [])
        for s, ids in enumerate(enc["input_ids"]):
            if self.unit == "sequence":
                rows.add(s, 0, len(ids), labels[s], None, -1)
                continue
            special = enc["special_tokens_mask"][s]
            positions = [p for p in range(len(ids)) if self.special or not special[p]]
            for p in self._choose(positions, seq_ids[s]):
                rows.add(s, p, p + 1, labels[s], int(ids[p]), -1)
        return rows

    def word_rows(self, enc, seq_ids: list[str], tags: list[list]) -> _Rows:
        rows = _Rows([], [], [], [], [], [])
        for s, labels in enumerate(tags):
            spans: dict[int, list[int]] = {}
            for p, w in enumerate(enc.word_ids(s)):
                if w is not None:
                    spans.setdefault(w, []).append(p)
            words = []
            full = enc.truncated_index.get(s)
            for w, lab in enumerate(labels):
                if _is_null(lab):
                    continue
                cut = full is not None and self.alignment == "mean" and w in spans and \
                    len(spans[w]) != int(enc.full_word_tokens[full][w])
                if w not in spans or cut:
                    self.dropped_words += 1  # (partly) cut away by truncation, or no token at all
                    continue
                words.append(w)
            for w in self._choose(words, seq_ids[s]):
                ps = spans[w]
                if ps != list(range(ps[0], ps[-1] + 1)):
                    raise DataError("a word's sub-tokens are not contiguous", where=f"sequence {seq_ids[s]!r}",
                                    got=f"positions {ps}", fix="check the tokenizer (word_ids)")
                stop = ps[0] + 1 if self.alignment == "first" else ps[-1] + 1
                rows.add(s, ps[0], stop, labels[w], None, w)
        return rows


def _assemble(spec: DatasetSpec, tok, folder: str, max_length: int, df, keep: list[int], enc, rows: _Rows,
              unit: str, dropped_words: int) -> TextDataset:
    """Renumber the sequences that have rows, build ids, labels, types and targets."""
    if not rows.seq:
        raise DataError("the text dataset gives no rows", where=str(spec.path),
                        fix="check the label columns (every word label null?) and max_length")
    seq = np.asarray(rows.seq, dtype=np.int64)
    used = np.unique(seq)
    renumber = np.full(len(enc["input_ids"]), -1, dtype=np.int64)
    renumber[used] = np.arange(used.size)
    new_seq = renumber[seq]
    start = np.asarray(rows.start, dtype=np.int64)
    seq_ids_all = np.array([str(df[spec.id_column].iloc[i]) if spec.id_column else f"s{i}" for i in keep])
    if unit == "sequence":
        sample_ids = seq_ids_all[seq]
    else:
        sample_ids = np.array([f"{seq_ids_all[s]}:t{p}" for s, p in zip(seq.tolist(), start.tolist())])
    where = f"[dataset].{spec.word_labels_column or spec.label_column}"
    labels, class_names = _class_index(rows.label, spec.class_names, where)
    types = None
    if unit == "word":
        words = _words_of(spec, df, keep)
        keys = [words[s][w].lower() for s, w in zip(seq.tolist(), rows.word_index)]
        _, types = np.unique(np.array(keys, dtype=object).astype(str), return_inverse=True)
        types = types.astype(np.int64)
    elif unit == "token":
        types = np.asarray(rows.type_key, dtype=np.int64)
    seq_labels = None
    if unit != "word":
        seq_labels = np.zeros(used.size, np.int64)
        seq_labels[new_seq] = labels
    targets = _targets(spec, df, keep, seq, rows.word_index, unit)
    dropped = [f"{n} {what}" for n, what in (
        (len(enc["input_ids"]) - used.size, "sequence(s) without rows"),
        (getattr(enc, "n_truncated", 0), f"sequence(s) truncated to {max_length} tokens"))
        if n]
    if dropped_words:
        dropped.insert(0, f"{dropped_words} labelled word(s) dropped: cut away by truncation (or without tokens)")
    if dropped:
        _log(f"warning: text dataset {spec.name}: " + "; ".join(dropped))
    tokenization = {
        "tokenizer": {"folder": str(folder), "name": type(tok).__name__,
                      "name_or_path": str(getattr(tok, "name_or_path", "")),
                      "vocab_size": int(getattr(tok, "vocab_size", 0) or 0)},
        "max_length": int(max_length), "truncation": bool(spec.truncation),
        "truncated_sequences": int(getattr(enc, "n_truncated", 0)),
        "special_tokens": "rows" if spec.special_tokens else "excluded from token rows",
        "sequence_reductions": "cls: token 0; last: last token with attention_mask 1; mean: mean over "
                               "attention_mask 1 (special tokens included)",
        "padding": "right, never stored",
    }
    if unit == "word":
        tokenization["alignment"] = spec.word_alignment
        tokenization["dropped_words"] = int(dropped_words)
    ids = [np.asarray(enc["input_ids"][i], dtype=np.int64) for i in used.tolist()]
    counts = np.bincount(new_seq, minlength=used.size)
    row_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return TextDataset(
        spec=spec, unit=unit, input_ids=ids, pad_id=int(tok.pad_token_id if tok.pad_token_id is not None else 0),
        sequence_ids=seq_ids_all[used], sample_ids=sample_ids, labels=labels, class_names=class_names,
        sequence=new_seq, position=start.astype(np.int32), stop=np.asarray(rows.stop, dtype=np.int64),
        row_start=row_start, sequence_labels=seq_labels, types=types, tokenization=tokenization,
        targets=targets)


def _words_of(spec: DatasetSpec, df, keep: list[int]) -> list[list[str]]:
    col = df[spec.words_column]
    return [[str(w) for w in _as_list(col.iloc[i], f"[dataset].{spec.words_column}", i)] for i in keep]


def _targets(spec: DatasetSpec, df, keep: list[int], seq: np.ndarray, word_index: list[int],
             unit: str) -> dict[str, np.ndarray]:
    """``target_columns`` per row: the sequence's value, or with words the word's."""
    out: dict[str, np.ndarray] = {}
    for name in spec.target_columns or []:
        values = _column(df, name, "target_columns")
        where = f"[dataset].target_columns {name!r}"
        if unit == "word":
            per_seq = [_as_list(values[i], where, i) for i in keep]
            raw = [per_seq[s][w] for s, w in zip(seq.tolist(), word_index)]
        else:
            raw = [values[keep[s]] for s in seq.tolist()]
        try:
            arr = np.array([np.nan if _is_null(v) else float(v) for v in raw], dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError("target column is not numeric", where=where, got=repr(raw[:3])[:80],
                            fix="give numbers (one per sequence, or one per word)") from None
        if not np.isfinite(arr).all():
            raise DataError("target column has missing or non-finite values on rows", where=where,
                            got=f"{int((~np.isfinite(arr)).sum())} row(s)", fix="give a finite number for every row")
        out[name] = arr
    return out
