"""``[dataset]``: which images, how they are transformed, and where to find them.

:class:`DatasetSpec` is what the store records about the data (its
:meth:`~DatasetSpec.to_dict` goes into the store; :mod:`extract.datasets` loads it). It
is plain data with no torch, so that the experiment file can be checked anywhere.
``path`` may be a list of candidates: :func:`resolve_data_path` takes the first that
exists and, when none does, lists every path tried (an unset variable is named) and how
to get the data. There is never a fallback to other data.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probestore.errors import ConfigError, DataError, did_you_mean
from probestore.experiment.keys import Key, KeyTable, choices
from probestore.fields import check_keys, check_range, check_type
from probestore.paths import expand_path, unset_variables

__all__ = ["KINDS", "SUBSETS", "NORMALIZE_MODES", "TEXT_FORMATS", "WORD_ALIGNMENTS", "TEXT_KEYS",
           "DATASET_KEYS", "DatasetSpec", "resolve_data_path", "parse_dataset"]

KINDS = ("idx", "imagefolder", "npz", "digits", "text")
SUBSETS = ("train", "test", "all")
NORMALIZE_MODES = ("dataset", "explicit", "none")
#: Table formats of ``kind = "text"`` (from the file suffix unless ``format`` is given).
TEXT_FORMATS = ("jsonl", "csv", "parquet")
#: How a labelled word's row is made from its sub-tokens (``word_alignment``).
WORD_ALIGNMENTS = ("first", "mean")
#: Keys that only ``kind = "text"`` takes (refused on image datasets).
TEXT_KEYS = ("format", "text_column", "label_column", "words_column", "word_labels_column", "id_column",
             "target_columns", "tokenizer", "max_length", "truncation", "word_alignment", "special_tokens")
_IMAGE_KEYS = ("image_size", "channels", "mean", "std")
_TEXT_WITH = 'kind = "text"; text_column = "sentence"; label_column = "label"'
_WORDS_WITH = 'kind = "text"; words_column = "words"; word_labels_column = "pos"'

#: ``[dataset]``: one key per :class:`DatasetSpec` field (see :mod:`probestore.experiment.keys`).
DATASET_KEYS = KeyTable("[dataset]", "Which samples, how they are transformed into the network's input, and "
                        "where to find them. Everything but `path` is recorded in the store.", {
    "kind": Key("string", "The file layout: MNIST-style IDX files, a folder per class, an .npz file, or "
                "scikit-learn's bundled 8x8 digits.", allowed=choices(KINDS), example='"idx"'),
    "path": Key("string or list of strings (path)", "The data folder (idx, imagefolder) or file (npz); a "
                "list is a list of candidates, the first that exists is used (none: an error listing "
                "every path tried).", default="required, except for digits (which takes none)",
                example='["$PROBESTORE_DATA/mnist", "../data/mnist"]', example_with='kind = "idx"', path=True),
    "name": Key("string", "Dataset name in the store.", default="the folder or file name of the first "
                "`path` candidate (plus `-<subset>`)", example='"fashion-mnist"'),
    "subset": Key("string", "idx only: which part files to read (`train`, `t10k`, or every part "
                  "present; the per-sample origin is kept for `[splits] predefined`).", default='"all"',
                  allowed=choices(SUBSETS), example='"test"', example_with='kind = "idx"'),
    "image_size": Key("integer or [H, W]", "Resize every image to this size (imagefolder images differ in "
                      "size).", default="the native size; required for imagefolder", allowed="1..8192",
                      example="[64, 64]"),
    "channels": Key("integer", "Convert grey to RGB (replicated) or RGB to grey (ITU-R 601 luma).",
                    default="the native number", allowed="1 | 3", example="3"),
    "normalize": Key("string", "Per-channel standardization of the network input: statistics of this "
                     "dataset, the given `mean` / `std`, or none.",
                     default='"explicit" when `mean` is given, else "dataset"',
                     allowed=choices(NORMALIZE_MODES), example='"none"'),
    "mean": Key("list of floats", "Per-channel means in [0, 1] pixel units, with `normalize = \"explicit\"`.",
                default="none", allowed="1 or 3 values (one per channel)", example="[0.5]",
                example_with="std = [0.25]"),
    "std": Key("list of floats", "Per-channel standard deviations, with `mean`.", default="none",
               allowed="1 or 3 values > 0", example="[0.25]", example_with="mean = [0.5]"),
    "max_samples": Key("integer", "Keep a class-stratified, seeded subsample of this size (original order "
                       "kept).", default="every sample", allowed=">= 1", example="6000"),
    "seed": Key("integer", "Seed of the subsample (and of the normalization estimate on large folders).",
                default="the [experiment] seed", allowed=">= 0", example="0"),
    "class_names": Key("list of strings", "Names of the labels 0..K-1 when the files carry none (IDX files "
                       "store integers only).", default="from the files, else the label numbers",
                       example='["T-shirt/top", "Trouser"]'),
    "format": Key("string", "text only: the table format of `path`.", default="from the suffix (.jsonl, .csv, "
                  ".parquet)", allowed=choices(TEXT_FORMATS), example='"jsonl"', example_with=_TEXT_WITH),
    "text_column": Key("string", "text only: the column of the sequences (one row of the table = one "
                       "sequence), with `label_column`.", default="none (or `words_column`)",
                       example='"sentence"', example_with='kind = "text"; label_column = "label"'),
    "label_column": Key("string", "text only: the label of each sequence (with `text_column`).",
                        default="required with `text_column`", example='"label"',
                        example_with='kind = "text"; text_column = "sentence"'),
    "words_column": Key("string", "text only: pre-split words (a list per row), labelled word by word in "
                        "`word_labels_column`.", default="none (or `text_column`)", example='"words"',
                        example_with='kind = "text"; word_labels_column = "pos"'),
    "word_labels_column": Key("string", "text only: one label per word (null: an unlabelled word, not a row).",
                              default="required with `words_column`", example='"pos"',
                              example_with='kind = "text"; words_column = "words"'),
    "id_column": Key("string", "text only: a column of sequence ids (row ids are `<id>:t<position>`).",
                     default="`s<row of the file>`", example='"id"', example_with=_TEXT_WITH),
    "target_columns": Key("list of strings", "text only: numeric columns stored as continuous targets "
                          "(RCVs): one value per sequence, or with words one per word.", default="none",
                          example='["frequency"]', example_with=_WORDS_WITH),
    "tokenizer": Key("string (path)", "text only: folder of the model's own tokenizer (loaded offline).",
                     default="the folder of an `hf:` model", example='"models/minilm"', example_with=_TEXT_WITH,
                     path=True),
    "max_length": Key("integer", "text only: most tokens per sequence, special tokens included.",
                      default="the tokenizer's model_max_length, at most 512", allowed=">= 2", example="128",
                      example_with=_TEXT_WITH),
    "truncation": Key("boolean", "text only: cut longer sequences to `max_length` (labelled words cut away "
                      "are dropped and counted); false refuses a longer sequence.", default="true",
                      example="false", example_with=_TEXT_WITH),
    "word_alignment": Key("string", "text with words only: a word's row is its first sub-token, or the mean "
                          "of its sub-tokens.", default='"first"', allowed=choices(WORD_ALIGNMENTS),
                          example='"mean"', example_with=_WORDS_WITH),
    "special_tokens": Key("boolean", "text only: whether special tokens ([CLS], [SEP]) are rows of `tokens` / "
                          "`random_tokens:K`.", default="false", example="true", example_with=_TEXT_WITH),
})


@dataclass
class DatasetSpec:
    """What to load and how to transform it; everything here is recorded in the store.

    Parameters
    ----------
    kind : {"idx", "imagefolder", "npz", "digits"}
        ``idx``: a folder of MNIST-style ``<part>-images-idx3-ubyte[.gz]`` /
        ``<part>-labels-idx1-ubyte[.gz]`` files (part ``train`` or ``t10k``).
        ``imagefolder``: ``<path>/<class>/**/<image>``, classes sorted by name.
        ``npz``: arrays ``images`` (N, H, W[, 3]) uint8 and ``labels``; optional
        ``ids`` and ``class_names``. ``digits``: scikit-learn's bundled 8x8 digits.
    path : str, optional
        Folder (idx, imagefolder) or file (npz); must be omitted for digits.
    name : str, optional
        Dataset name in the store; derived from the path (and subset) when omitted.
    subset : {"all", "train", "test"}
        idx only: which part files to read. ``"all"`` reads every part present (the
        shared MNIST folder has only ``t10k`` images) and records per-sample origin in
        :attr:`ImageDataset.predefined_split`.
    image_size : int or (int, int), optional
        Target ``H x W`` (see the module docstring); required for imagefolder.
    channels : {1, 3}, optional
        Convert grey to RGB (replicate) or RGB to grey (ITU-R 601 luma, as PIL);
        native when omitted.
    normalize : {"dataset", "explicit", "none"}, optional
        Per-channel standardization of the network input: statistics of this dataset,
        the given ``mean``/``std`` (in [0, 1] pixel units), or none. Defaults to
        ``"explicit"`` when ``mean`` is given, else ``"dataset"``.
    mean, std : list of float, optional
        One value per channel, for ``normalize = "explicit"``.
    max_samples : int, optional
        Keep a class-stratified, seeded subsample of this size (original order kept).
    seed : int
        Seed of the subsample (and of the normalization estimate on large folders).
    class_names : list of str, optional
        Names of the labels 0..K-1 when the files carry none (IDX files only store
        integers: Fashion-MNIST's "T-shirt/top", "Trouser"... go here). Text: the
        label values in class order (default: the sorted distinct labels).
    format, text_column, label_column, words_column, word_labels_column, id_column,
    target_columns, tokenizer, max_length, truncation, word_alignment, special_tokens
        ``kind = "text"`` only (see ``DATASET_KEYS`` and :mod:`extract.text_datasets`):
        a JSONL / CSV / Parquet table of sequences with a label each, or of pre-split
        words with a label per word, tokenized by the model's own tokenizer.
    """

    kind: str
    path: str | None = None
    name: str | None = None
    subset: str = "all"
    image_size: int | tuple[int, int] | None = None
    channels: int | None = None
    normalize: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    max_samples: int | None = None
    seed: int = 0
    class_names: list[str] | None = None
    format: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    words_column: str | None = None
    word_labels_column: str | None = None
    id_column: str | None = None
    target_columns: list[str] | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    truncation: bool = True
    word_alignment: str = "first"
    special_tokens: bool = False

    def __post_init__(self) -> None:
        self._validate("DatasetSpec")

    def _validate(self, where: str) -> None:
        kind = check_type(self.kind, str, where=f"{where}.kind")
        if kind not in KINDS:
            _bad_choice(f"{where}.kind", kind, KINDS)
        if kind == "digits":
            if self.path is not None:
                raise ConfigError("digits takes no path", where=f"{where}.path", got=self.path,
                                  fix="remove path (the digits are bundled with scikit-learn)")
        elif self.path is None:
            raise ConfigError(f"{kind} datasets need a path", where=f"{where}.path",
                              fix="add path = \"/folder/or/file\"")
        else:
            self.path = str(check_type(self.path, (str, Path), where=f"{where}.path"))
        self._validate_text(kind, where)
        check_type(self.subset, str, where=f"{where}.subset")
        if self.subset not in SUBSETS:
            _bad_choice(f"{where}.subset", self.subset, SUBSETS)
        if self.subset != "all" and kind != "idx":
            raise ConfigError("subset applies to idx datasets only", where=f"{where}.subset",
                              got=self.subset, fix="remove subset")
        if self.image_size is not None:
            self.image_size = _check_size(self.image_size, f"{where}.image_size")
        elif kind == "imagefolder":
            raise ConfigError("imagefolder datasets need image_size", where=f"{where}.image_size",
                              expected="an int or [H, W]",
                              fix="add image_size = 64 (folder images differ in size)")
        if self.channels is not None:
            check_type(self.channels, int, where=f"{where}.channels")
            if self.channels not in (1, 3):
                _bad_choice(f"{where}.channels", self.channels, (1, 3))
        self.mean = _check_stats(self.mean, f"{where}.mean", positive=False)
        self.std = _check_stats(self.std, f"{where}.std", positive=True)
        if self.normalize is None:
            self.normalize = "explicit" if self.mean is not None else "dataset"
        check_type(self.normalize, str, where=f"{where}.normalize")
        if self.normalize not in NORMALIZE_MODES:
            _bad_choice(f"{where}.normalize", self.normalize, NORMALIZE_MODES)
        explicit = self.normalize == "explicit"
        if explicit != (self.mean is not None) or explicit != (self.std is not None):
            raise ConfigError("mean and std go together with normalize = \"explicit\"",
                              where=f"{where}.normalize",
                              got=f"normalize={self.normalize!r}, mean={self.mean}, std={self.std}",
                              fix="give both mean and std and no other normalize, or neither")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ConfigError("mean and std differ in length", where=f"{where}.std",
                              expected=len(self.mean), got=len(self.std))
        if self.mean is not None and self.channels is not None and len(self.mean) != self.channels:
            raise ConfigError("mean/std need one value per channel", where=f"{where}.mean",
                              expected=self.channels, got=len(self.mean))
        if self.max_samples is not None:
            check_type(self.max_samples, int, where=f"{where}.max_samples")
            check_range(self.max_samples, low=1, where=f"{where}.max_samples")
        check_type(self.seed, int, where=f"{where}.seed")
        check_range(self.seed, low=0, where=f"{where}.seed")
        if self.class_names is not None:
            check_type(self.class_names, (list, tuple), where=f"{where}.class_names")
            for name in self.class_names:
                check_type(name, str, where=f"{where}.class_names")
            self.class_names = [str(c) for c in self.class_names]
        if self.name is None:
            self.name = _default_name(kind, self.path, self.subset)
        check_type(self.name, str, where=f"{where}.name")

    def _validate_text(self, kind: str, where: str) -> None:
        """The text keys: only on ``kind = "text"``, which needs a text or a words column."""
        if kind != "text":
            given = [k for k in TEXT_KEYS if getattr(self, k) != _TEXT_DEFAULTS[k]]
            if given:
                raise ConfigError(f"{given[0]} applies to text datasets only", where=f"{where}.{given[0]}",
                                  got=f"kind = {kind!r}", fix=f'remove {given[0]}, or set kind = "text"')
            return
        image = [k for k in _IMAGE_KEYS if getattr(self, k) is not None]
        if image:
            raise ConfigError(f"{image[0]} applies to image datasets only", where=f"{where}.{image[0]}",
                              got='kind = "text"', fix=f"remove {image[0]}")
        for key in ("format", "text_column", "label_column", "words_column", "word_labels_column",
                    "id_column", "tokenizer"):
            if getattr(self, key) is not None:
                check_type(getattr(self, key), str, where=f"{where}.{key}")
        if self.format is not None and self.format not in TEXT_FORMATS:
            _bad_choice(f"{where}.format", self.format, TEXT_FORMATS)
        words, text = self.words_column is not None, self.text_column is not None
        if words == text:
            raise ConfigError("a text dataset needs text_column or words_column (one of them)",
                              where=f"{where}.text_column", got="both" if words else "neither",
                              fix='text_column = "sentence" with label_column, or words_column = "words" '
                                  'with word_labels_column')
        if text and self.label_column is None:
            raise ConfigError("text_column needs label_column (the label of each sequence)",
                              where=f"{where}.label_column", fix='add label_column = "label"')
        if words and self.word_labels_column is None:
            raise ConfigError("words_column needs word_labels_column (a label per word, null: no row)",
                              where=f"{where}.word_labels_column", fix='add word_labels_column = "pos"')
        if words and self.label_column is not None:
            raise ConfigError("label_column goes with text_column; words are labelled by word_labels_column",
                              where=f"{where}.label_column", fix="remove label_column")
        if text and self.word_labels_column is not None:
            raise ConfigError("word_labels_column goes with words_column", where=f"{where}.word_labels_column",
                              fix="remove it, or give the words in words_column")
        if self.target_columns is not None:
            check_type(self.target_columns, (list, tuple), where=f"{where}.target_columns")
            for col in self.target_columns:
                check_type(col, str, where=f"{where}.target_columns")
            self.target_columns = [str(c) for c in self.target_columns]
        if self.max_length is not None:
            check_type(self.max_length, int, where=f"{where}.max_length")
            check_range(self.max_length, low=2, high=1 << 20, where=f"{where}.max_length")
        check_type(self.truncation, bool, where=f"{where}.truncation")
        check_type(self.special_tokens, bool, where=f"{where}.special_tokens")
        check_type(self.word_alignment, str, where=f"{where}.word_alignment")
        if self.word_alignment not in WORD_ALIGNMENTS:
            _bad_choice(f"{where}.word_alignment", self.word_alignment, WORD_ALIGNMENTS)

    @property
    def size_hw(self) -> tuple[int, int] | None:
        """``image_size`` as ``(H, W)``, or None to keep the native size."""
        return self.image_size  # type: ignore[return-value]  # normalized by _validate

    @classmethod
    def from_dict(cls, d: Any, where: str = "dataset") -> DatasetSpec:
        """Build from a config table, refusing unknown keys with a did-you-mean."""
        check_keys(d, DATASET_KEYS, where=where, required=("kind",))
        try:
            return cls(**d)
        except ConfigError as exc:  # re-anchor the field path at the config's own location
            raise ConfigError(exc.what, where=str(exc.where).replace("DatasetSpec", where, 1),
                              expected=exc.expected, got=exc.got, fix=exc.fix) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of every field (``from_dict(to_dict())`` round-trips)."""
        d = dataclasses.asdict(self)
        for key in ("image_size", "mean", "std"):
            if d[key] is not None:
                d[key] = list(d[key])
        return d


_TEXT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DatasetSpec) if f.name in TEXT_KEYS}


def _bad_choice(where: str, got: object, choices: tuple) -> None:
    raise ConfigError("unknown value", where=where, expected="one of " + ", ".join(map(repr, choices)),
                      got=repr(got), fix=did_you_mean(str(got), map(str, choices)) or None)


def _check_size(value: Any, where: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    check_type(value, (list, tuple), where=where)
    if len(value) != 2:
        raise ConfigError("image_size needs one or two values", where=where,
                          expected="an int or [H, W]", got=list(value))
    for v in value:
        check_type(v, int, where=where)
        check_range(v, low=1, high=8192, where=where)
    return (int(value[0]), int(value[1]))


def _check_stats(value: Any, where: str, *, positive: bool) -> tuple[float, ...] | None:
    if value is None:
        return None
    check_type(value, (list, tuple), where=where)
    if len(value) not in (1, 3):
        raise ConfigError("need one value per channel", where=where, expected="1 or 3 values",
                          got=list(value))
    for v in value:
        check_type(v, (int, float), where=where)
        if positive and not v > 0:
            raise ConfigError("std must be positive", where=where, got=list(value))
    return tuple(float(v) for v in value)


def _default_name(kind: str, path: str | None, subset: str) -> str:
    if kind == "digits":
        return "digits"
    p = Path(path)  # type: ignore[arg-type]
    base = p.stem if kind in ("npz", "text") else p.name
    return base + (f"-{subset}" if subset != "all" else "")


def resolve_data_path(candidates: str | Sequence[str], *, where: str, kind: str = "",
                      base: str | Path | None = None) -> str:
    """The first existing path among ``candidates`` (``~`` and ``$VARS`` expanded).

    Parameters
    ----------
    candidates : str or sequence of str
        Tried in order; relative paths are relative to ``base``.
    where : str
        Config location for the error message.
    kind : str
        Dataset kind, for the hint on how to get the data.
    base : path, optional
        The experiment file's folder (None: the current directory).

    Returns
    -------
    str
        The expanded path that exists.

    Raises
    ------
    DataError
        None exists: every path tried is listed (with unset variables named), and the
        fix says how to get the data. There is no fallback to other data.
    """
    items = [candidates] if isinstance(candidates, str) else list(candidates)
    tried = []
    for raw in items:
        unset = unset_variables(raw)
        if unset:
            tried.append(f"{raw} ({', '.join(unset)} not set)")
            continue
        expanded = str(expand_path(raw, where=where, base=base))
        if Path(expanded).exists():
            return expanded
        tried.append(f"{expanded} (does not exist)" if expanded == raw
                     else f"{raw} -> {expanded} (does not exist)")
    joined = " ".join(items).lower()
    if "fashion-mnist" in joined or "fashion_mnist" in joined:
        fix = ("install Fashion-MNIST with `apt-get install -y dataset-fashion-mnist` (puts it in "
               "/usr/share/datasets/fashion-mnist/), or copy its four IDX .gz files into a folder "
               "and set PROBESTORE_DATA to its parent")
    else:
        fix = ("put the data at one of these paths, set the environment variable they use, "
               "or edit [dataset] path" + (f" (a {kind} dataset)" if kind else ""))
    raise DataError("dataset not found at any candidate path", where=where,
                    expected="one existing path", got="tried " + "; ".join(tried), fix=fix)


def parse_dataset(table: Any, seed: int, where: str, raw: dict[str, Any],
                  base: str | Path | None = None) -> DatasetSpec:
    """``[dataset]`` with ``path`` resolved (against ``base``, the experiment file's folder);
    ``raw["dataset"]`` gets the table as written.

    The hashed form keeps the candidates as written (and a name derived from the first
    one), so moving the data does not make a "different experiment".
    """
    d = dict(check_keys(table, DATASET_KEYS, where=where, required=("kind",)))
    d.setdefault("seed", seed)
    written = copy.deepcopy(d)
    path = d.get("path")
    if path is not None:
        if isinstance(path, list):
            if not path or not all(isinstance(p, str) for p in path):
                raise ConfigError("path candidates must be a non-empty list of strings",
                                  where=f"{where}.path", got=repr(path))
        else:
            check_type(path, str, where=f"{where}.path")
    # Validate everything but the path first, so a typo is not hidden behind "not found".
    probe = {**d, "path": None if d.get("kind") == "digits" else "."}
    DatasetSpec.from_dict(probe, where=where)
    if path is not None:
        d["path"] = resolve_data_path(path, where=f"{where}.path", kind=str(d.get("kind")), base=base)
    if isinstance(d.get("tokenizer"), str):  # hashed as written; loaded from the expanded folder
        d["tokenizer"] = str(expand_path(d["tokenizer"], where=f"{where}.tokenizer", base=base))
    spec = DatasetSpec.from_dict(d, where=where)
    if "name" not in written:
        # Named after the first candidate, not the one found: the same experiment must
        # get the same dataset name (and config hash) on every machine.
        first = path[0] if isinstance(path, list) else path
        if first and not unset_variables(first):
            first = str(expand_path(first, where=f"{where}.path"))
        named = DatasetSpec.from_dict({**d, "path": first or None}, where=where)
        spec.name = written["name"] = named.name
    raw["dataset"] = written
    return spec
