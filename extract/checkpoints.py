"""Finding and loading training checkpoints, without ever running code from them.

A ``.pt`` file is a pickle, and unpickling runs whatever the file asks for: a
checkpoint downloaded next to a paper is an executable. probestore therefore always
loads with ``torch.load(..., weights_only=True)`` (tensors and plain containers only) and
turns every refusal into a :class:`CheckpointError` that says what is wrong with the
file and how to re-save it safely.

Probing *during training* (Alain & Bengio 2016 Fig. 9; Graziani et al. 2019 Fig. 1)
means a series of checkpoints. :func:`resolve_checkpoints` turns a glob, a directory or
a training manifest into an epoch-sorted list of :class:`CheckpointRef` with names that
are safe to use as store paths.

``.safetensors`` files are accepted wherever a ``.pt`` is: they hold tensors only and
are read with ``safetensors`` (nothing to unpickle). A Hugging Face ``save_pretrained``
folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) is a
checkpoint too, and a folder of them (``step_1000/``, ``step_2000/``, or the
``checkpoint-1000/`` of the ``transformers`` Trainer) is a series, with the step as the
epoch (:func:`folder_epoch_step`).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import pickle
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from probestore.atomic import atomic_write
from probestore.errors import CheckpointError, ConfigError, did_you_mean
from probestore.fields import check_keys, check_type
from storage_schema.names import NAME_PATTERN, sanitize_name, validate_name

#: A checkpoint / run name that is safe as a path component in every store backend.
NAME_RE = NAME_PATTERN
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")
SAFETENSORS_SUFFIX = ".safetensors"
#: File name that makes a checkpoint directory self-describing (written by training).
MANIFEST_NAME = "manifest.json"
_RESAVE = ("re-save it from trusted code with torch.save(model.state_dict(), path); "
           "probestore never unpickles code")
_SHOW = 5  # how many offending keys an error message lists


def _header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict safely (``weights_only=True``, on CPU).

    Parameters
    ----------
    path : path-like
        A file written by ``torch.save`` holding a state dict, or a dict that holds one
        under ``"state_dict"`` or ``"model"`` (the usual training-checkpoint layouts);
        or a ``.safetensors`` file (read with ``safetensors``, never unpickled).
        Keys all prefixed ``module.`` (saved from ``DataParallel``) are unprefixed.
        The weights file of a ``save_pretrained`` folder is first checked the same way,
        then read by ``transformers`` (:func:`extract.hf_models.folder_state_dict`), which
        names the weights as the folder's own architecture does: ``transformers`` 5
        renames and fuses checkpoint keys on loading, so the file's raw keys are not
        always the modules' names.

    Returns
    -------
    dict of str to torch.Tensor

    Raises
    ------
    CheckpointError
        Missing file; empty, truncated or non-checkpoint file; a pickle that needs code
        to load; a dict whose values are not all tensors.
    """
    p = Path(path)
    where = f"checkpoint {str(p)!r}"
    if not p.is_file():
        siblings = [q.name for q in p.parent.glob("*")] if p.parent.is_dir() else []
        raise CheckpointError("checkpoint file not found" if not p.exists() else "not a file",
                              where=where, fix=did_you_mean(p.name, siblings) or "check the path")
    if p.stat().st_size == 0:
        raise CheckpointError("checkpoint file is empty (an interrupted save?)", where=where,
                              fix="re-save the checkpoint")
    from extract.hf_models import (
        SHARD_INDEXES,
        WEIGHT_FILES,
        folder_state_dict,
        is_hf_folder,
        shard_files,
    )

    if p.name in SHARD_INDEXES and is_hf_folder(p.parent):
        for shard in shard_files(p, where):  # each checked like a checkpoint file before transformers reads it
            _read_file(shard, f"checkpoint shard {str(shard)!r}")
        return folder_state_dict(p, where)
    state = _read_file(p, where)
    if p.name in WEIGHT_FILES and is_hf_folder(p.parent):
        return folder_state_dict(p, where)  # the file was just checked: tensors only, nothing unpickled as code
    return state


def _read_file(p: Path, where: str) -> dict[str, torch.Tensor]:
    """The state dict of one file: ``safetensors``, or ``torch.load(weights_only=True)``."""
    if p.suffix.lower() == SAFETENSORS_SUFFIX:
        return _as_state_dict(_load_safetensors(p, where), where)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols of files it is about to refuse anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _unpickling_error(p, where, str(exc)) from None
    except EOFError:
        raise CheckpointError("checkpoint file is truncated (ends in the middle)", where=where,
                              fix="re-copy or re-save the checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - every failure of a damaged file is one error
        # torch's loaders assume a well-formed file: a damaged one escapes as
        # RuntimeError, KeyError, IndexError, struct.error, AssertionError, TypeError...
        # (a fuzz test in tests/test_checkpoint_fuzz.py mutates real files to find them).
        raise _corrupt_error(p, where, exc) from None
    return _as_state_dict(obj, where)


def _load_safetensors(p: Path, where: str) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors on CPU; a damaged file is one CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(p, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError("safetensors checkpoint is truncated or corrupt", where=where,
                              expected="a file written by safetensors (save_file or save_pretrained)",
                              got=detail,
                              fix="re-copy the file, or re-save it with "
                                  "safetensors.torch.save_file(model.state_dict(), path)") from None


def _corrupt_error(p: Path, where: str, exc: BaseException) -> CheckpointError:
    head = _header(p)
    if head.startswith(b"PK"):
        what = "checkpoint file is truncated or corrupt (damaged torch zip archive)"
    elif head[:1] == b"\x80":
        what = "checkpoint file is truncated or corrupt (damaged pickle)"
    else:
        what = "not a PyTorch checkpoint (neither a torch zip archive nor a pickle)"
    detail = (str(exc).splitlines() or [""])[0][:160]
    return CheckpointError(what, where=where, got=f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__,
                           fix="re-copy the file, or re-save it from trusted code with torch.save(model.state_dict(), path)")


def _unpickling_error(p: Path, where: str, msg: str) -> CheckpointError:
    head = _header(p)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        return CheckpointError("not a PyTorch checkpoint (neither a torch zip archive nor a pickle)",
                               where=where, got=f"file starts with bytes {head.hex()}",
                               fix="point at a file written by torch.save")
    m = re.search(r"GLOBAL ([\w.]+)", msg)
    if m:
        return CheckpointError(
            "checkpoint needs code to load (refused: loading it would run "
            f"{m.group(1)!r}, e.g. a pickled model object, numpy array or custom class)",
            where=where, expected="tensors in plain dicts / lists", got=m.group(1), fix=_RESAVE)
    return CheckpointError(
        "checkpoint uses pickle instructions that the safe loader refuses "
        "(not written by torch.save, or corrupt)", where=where,
        got=msg.split("WeightsUnpickler error:")[-1].strip().splitlines()[0][:200]
        if "WeightsUnpickler error:" in msg else None, fix=_RESAVE)


def _as_state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                where = f"{where}[{key!r}]"
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError("checkpoint does not hold a state dict", where=where,
                              expected="a dict of name -> tensor", got=type(obj).__name__,
                              fix="save model.state_dict(), not the model or a tensor")
    bad = [(k, type(v).__name__) for k, v in obj.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        listed = ", ".join(f"{k!r} ({t})" for k, t in bad[:_SHOW])
        raise CheckpointError(
            f"{len(bad)} of {len(obj)} entries are not named tensors", where=where,
            expected="a dict of str -> tensor", got=listed + (" ..." if len(bad) > _SHOW else ""),
            fix="save model.state_dict() (or {'state_dict': ...} beside other training state)")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _listing(label: str, items: list[str]) -> str:
    shown = ", ".join(repr(i) for i in items[:_SHOW])
    more = f" and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{len(items)} {label} ({shown}{more})"


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor],
              where: str = "checkpoint", *, head: Any = None, drop_head: bool = False) -> torch.nn.Module:
    """Load ``state_dict`` into ``model`` strictly, with one readable error.

    ``nn.Module.load_state_dict`` stops at the first shape mismatch and prints every
    missing key; here all problems are collected and summarised (first few + counts),
    because the usual cause, a checkpoint of another architecture, shows in the pattern.

    Parameters
    ----------
    model : torch.nn.Module
    state_dict : mapping of str to torch.Tensor
    where : str
        Names the checkpoint in the error message.
    head : extract.models.HeadInfo, optional
        The model's head (:func:`extract.models.find_head`). When the only problems are
        the head's keys, the error says how to fix it: the checkpoint's head width as
        ``[model] num_classes``, or ``head = "drop"``.
    drop_head : bool
        ``head = "drop"``: the head's keys may be missing, unexpected or of any shape
        (the head keeps its initialization and its outputs are not stored); every other
        key is loaded strictly.

    Returns
    -------
    torch.nn.Module
        ``model``, loaded.

    Raises
    ------
    CheckpointError
        Missing keys, unexpected keys or shape mismatches (outside the head when it is
        dropped).
    """
    if drop_head and head is None:
        raise CheckpointError("head = \"drop\" but the model has no head to drop", where=where,
                              expected="an nn.Linear reached by the forward pass", got="none",
                              fix='set [model] head = "keep"')
    from extract.hf_models import adapt_state_dict

    state_dict = adapt_state_dict(model, state_dict)  # save_pretrained's conventions (tied, prefixed keys)
    own = model.state_dict()
    if drop_head:
        own = {k: v for k, v in own.items() if not head.owns(k)}
        state_dict = {k: v for k, v in state_dict.items() if not head.owns(k)}
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [k for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(_listing("missing keys", missing))
    if unexpected:
        problems.append(_listing("unexpected keys", unexpected))
    if mismatched:
        problems.append(_listing("shape mismatches", [f"{k}: {tuple(state_dict[k].shape)} vs model "
                                                      f"{tuple(own[k].shape)}" for k in mismatched]))
    if problems:
        raise CheckpointError(
            "checkpoint does not fit the model", where=where,
            expected=f"the {len(own)} entries of {type(model).__name__}.state_dict()"
                     + (f" outside the dropped head {head.name!r}" if drop_head else ""),
            got="; ".join(problems),
            fix=_head_fix(head, state_dict, own, missing + unexpected + mismatched)
            or "wrong architecture? check the model spec (name, options, num_classes, "
               "input_shape) matches the one the checkpoint was trained with")
    if drop_head:
        result = model.load_state_dict(state_dict, strict=False)
        assert not result.unexpected_keys and all(head.owns(k) for k in result.missing_keys)
    else:
        model.load_state_dict(state_dict, strict=True)
    return model


def _head_fix(head: Any, state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor],
              bad: list[str]) -> str | None:
    """The fix when only the head does not fit (None otherwise): the checkpoint's width
    as ``num_classes``, or dropping the head."""
    if head is None or not bad or not all(head.owns(k) for k in bad):
        return None
    drop = f'[model] head = "drop" to probe only the hidden layers (the head {head.name!r} is then not loaded)'
    weight = state_dict.get(f"{head.name}.weight")
    mine = own.get(f"{head.name}.weight")
    if weight is not None and mine is not None and weight.dim() == 2 and weight.shape[1:] == mine.shape[1:]:
        width = int(weight.shape[0])
        return (f"the checkpoint's head {head.name!r} has {width} outputs, the model's {int(mine.shape[0])}: "
                f"set [model] num_classes = {width} (the head's own classes; the dataset keeps its labels), "
                f"or {drop}")
    return f"set {drop}"


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be gigabytes).

    The index of a ``save_pretrained`` folder's shards (``model.safetensors.index.json``)
    stands for the weights it lists: its digest is that of the index's bytes followed by
    every shard's bytes, in index order, so a changed shard changes it too.
    """
    from extract.hf_models import SHARD_INDEXES, is_hf_folder, shard_files

    p = Path(path)
    files = [p]
    if p.name in SHARD_INDEXES and is_hf_folder(p.parent):
        files += shard_files(p, f"checkpoint {str(p)!r}")
    h = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            while block := f.read(chunk_size):
                h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint of a training run.

    Attributes
    ----------
    name : str
        Store-safe name (matches :data:`NAME_RE`), e.g. ``"epoch_0003"``.
    epoch, step : int or None
        Training position, when known.
    path : pathlib.Path or None
        The file; None means the random initialisation drawn from the experiment seed
        (Graziani et al.'s "epoch 0").
    sha256 : str or None
        Hex digest recorded by training, when known (check with :func:`sha256_file`).
    """

    name: str
    epoch: int | None = None
    step: int | None = None
    path: Path | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        check_name(self.name, where="checkpoint name")
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))


def check_name(name: str, where: str) -> str:
    """Refuse names that could escape a store directory or are not portable."""
    return validate_name(name, where)


_EPOCH_RE = re.compile(r"(?<![A-Za-z0-9])(?:epoch|ep|e)[_=\-]?(\d+)", re.IGNORECASE)
_STEP_RE = re.compile(r"(?<![A-Za-z0-9])(?:step|iter|it)[_=\-]?(\d+)", re.IGNORECASE)


def parse_epoch_step(filename: str) -> tuple[int | None, int | None]:
    """Guess ``(epoch, step)`` from a checkpoint file name.

    Epoch: the first integer after ``epoch`` / ``ep`` / ``e`` (``epoch_003.pt``,
    ``ckpt-e12.pth``, ``model_epoch=5.pt``); otherwise the last integer in the name that
    is not a step. Step: the first integer after ``step`` / ``iter`` / ``it``.
    A keyword must not follow a letter or digit, so ``step_100`` is not read as epoch
    100 via its ``ep``, nor ``lr1e-3`` as epoch 3. Directory parts and the suffix are ignored.
    """
    stem = Path(filename).name
    for suffix in CHECKPOINT_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    m_step = _STEP_RE.search(stem)
    step = int(m_step.group(1)) if m_step else None
    m_epoch = _EPOCH_RE.search(stem)
    if m_epoch:
        return int(m_epoch.group(1)), step
    spans = [m for m in re.finditer(r"\d+", stem)
             if not (m_step and m.span() == m_step.span(1))]
    return (int(spans[-1].group()) if spans else None), step


def _default_name(epoch: int | None, step: int | None, stem: str) -> str:
    if epoch is not None and step is not None:
        return f"epoch_{epoch:04d}_step_{step:08d}"
    if epoch is not None:
        return f"epoch_{epoch:04d}"
    if step is not None:
        return f"step_{step:08d}"
    return sanitize_name(stem)


def _sorted_unique(refs: list[CheckpointRef], where: str) -> list[CheckpointRef]:
    if not refs:
        raise ConfigError("no checkpoints found", where=where,
                          expected="*.pt / *.pth / *.safetensors files, save_pretrained folders or a "
                                   "manifest listing checkpoints",
                          got="nothing", fix="check the path or glob pattern")
    refs = sorted(refs, key=lambda r: (r.epoch is None, r.epoch or 0, r.step is None,
                                       r.step or 0, r.name))
    seen: dict[str, CheckpointRef] = {}
    for r in refs:
        if r.name in seen:
            raise ConfigError(f"two checkpoints get the same name {r.name!r}", where=where,
                              got=f"{seen[r.name].path} and {r.path}",
                              fix="rename one file, or list them with distinct names in a manifest")
        seen[r.name] = r
    return refs


def _refs_from_files(paths: Iterable[Path]) -> list[CheckpointRef]:
    refs = []
    for p in paths:
        epoch, step = parse_epoch_step(p.name)
        refs.append(CheckpointRef(_default_name(epoch, step, p.stem), epoch, step, p.resolve()))
    return refs


def _optional_int(entry: Mapping[str, Any], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    check_type(value, int, where=f"{where}.{key}")
    if value < 0:
        raise ConfigError("must be >= 0", where=f"{where}.{key}", got=value)
    return value


def read_manifest(path: str | os.PathLike[str]) -> list[CheckpointRef]:
    """Refs listed in a training manifest, paths resolved relative to it (unsorted).

    Only ``"checkpoints"`` is read; other top-level keys (the training log, the config)
    belong to training and are ignored here. Entries have ``path`` (None: random init)
    and optional ``name``, ``epoch``, ``step``, ``sha256``; unknown entry keys are refused.
    """
    p = Path(path)
    where = f"manifest {str(p)!r}"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("cannot read checkpoint manifest", where=where, got=str(exc),
                          fix='write {"checkpoints": [{"name", "epoch", "step", "path"}, ...]}') from None
    if not isinstance(data, Mapping) or "checkpoints" not in data:
        raise ConfigError("not a checkpoint manifest", where=where,
                          expected='a JSON object with a "checkpoints" list',
                          got=type(data).__name__ if not isinstance(data, Mapping) else sorted(data))
    entries = check_type(data["checkpoints"], list, where=f"{where}.checkpoints")
    refs = []
    for i, entry in enumerate(entries):
        w = f"{where}.checkpoints[{i}]"
        check_keys(entry, ("name", "epoch", "step", "path", "sha256"), where=w,
                   required=("path",))
        epoch = _optional_int(entry, "epoch", w)
        step = _optional_int(entry, "step", w)
        file = entry["path"]
        if file is not None:
            check_type(file, str, where=f"{w}.path")
            fp = Path(file)
            fp = (fp if fp.is_absolute() else p.parent / fp).resolve()
            if not fp.is_file():
                raise ConfigError("checkpoint listed in the manifest does not exist", where=w,
                                  got=str(fp), fix="fix the path (relative paths are relative "
                                                   "to the manifest's folder)")
        else:
            fp = None
        name = entry.get("name")
        if name is None:
            name = _default_name(epoch, step, fp.stem if fp else "random_init")
        digest = entry.get("sha256")
        if digest is not None:
            check_type(digest, str, where=f"{w}.sha256")
        refs.append(CheckpointRef(check_name(name, f"{w}.name"), epoch, step, fp, digest))
    return refs


def resolve_checkpoints(source: str | os.PathLike[str]) -> list[CheckpointRef]:
    """Expand a checkpoint source into refs sorted by (epoch, step).

    Parameters
    ----------
    source : str or path-like
        A manifest ``*.json`` written by :func:`write_manifest`; a ``save_pretrained``
        folder (one checkpoint: its ``model.safetensors`` or ``pytorch_model.bin``); a
        directory (its ``manifest.json`` if there is one, else its ``*.pt`` / ``*.pth`` /
        ``*.safetensors`` files and ``save_pretrained`` subfolders, not recursive); a
        single file; or a glob pattern (files and ``save_pretrained`` folders).
        Names from files are ``epoch_0003``-style (see :func:`parse_epoch_step`), from
        folders ``step_00001000`` with the step as the epoch (:func:`folder_epoch_step`;
        a single folder without a step in its name is ``pretrained``); names from a
        manifest are kept and validated. Checkpoints without a known epoch sort last.

    Returns
    -------
    list of CheckpointRef

    Raises
    ------
    ConfigError
        Nothing found, unreadable manifest, two checkpoints with one name.
    InvalidNameError
        A manifest name that is not store-safe.
    """
    src = Path(source)
    where = f"checkpoint source {str(source)!r}"
    if src.is_file() and src.suffix.lower() == ".json":
        return _sorted_unique(read_manifest(src), where)
    if src.is_dir() and (src / MANIFEST_NAME).is_file():
        return _sorted_unique(read_manifest(src / MANIFEST_NAME), where)
    if src.is_file():
        return _sorted_unique(_refs_from_files([src]), where)
    if _is_weights_folder(src):
        return _sorted_unique([_folder_ref(src, single=True)], where)
    if src.is_dir():
        entries = sorted(src.iterdir())
        files = [q for q in entries if q.is_file() and q.suffix.lower() in CHECKPOINT_SUFFIXES]
    else:  # a glob: every file it matches
        entries = [Path(f) for f in sorted(globlib.glob(str(source)))]
        files = [q for q in entries if q.is_file()]
    folders = [q for q in entries if _is_weights_folder(q)]
    return _sorted_unique(_refs_from_files(files) + [_folder_ref(q) for q in folders], where)


def _is_weights_folder(path: Path) -> bool:
    """A ``save_pretrained`` folder: ``config.json`` and a weights file (checked when read)."""
    from extract.hf_models import is_hf_folder, weights_file

    return is_hf_folder(path) and weights_file(path) is not None


_FOLDER_STEP_RE = re.compile(r"^(?:checkpoint|global[_-]?step|step|iter)[_=\-]?(\d+)$", re.IGNORECASE)


def folder_epoch_step(name: str) -> tuple[int | None, int | None]:
    """``(epoch, step)`` of a ``save_pretrained`` checkpoint folder, from its name.

    ``step_1000``, ``checkpoint-1000`` (the ``transformers`` Trainer), ``global_step1000``:
    step 1000, and the step is the epoch too (Trainer runs are counted in steps; the
    epoch orders checkpoints and labels the over-training figures). ``epoch_3``: epoch 3,
    no step. Any other name: neither (one pretrained model, for instance).
    """
    m = _FOLDER_STEP_RE.match(name)
    if m:
        step = int(m.group(1))
        return step, step
    m_epoch = _EPOCH_RE.fullmatch(name)
    return (int(m_epoch.group(1)), None) if m_epoch else (None, None)


def _folder_ref(folder: Path, single: bool = False) -> CheckpointRef:
    """The ref of one ``save_pretrained`` folder: its weights file, named after the folder.

    A folder whose name gives no step or epoch is named ``pretrained`` when it is the
    whole source (one released model), else after the folder.
    """
    from extract.hf_models import weights_file

    weights = weights_file(folder)  # one weights file, or the index of its shards
    assert weights is not None  # _is_weights_folder saw one
    epoch, step = folder_epoch_step(folder.name)
    if epoch is None and step is None:
        name = "pretrained" if single else sanitize_name(folder.name)
    elif step is not None:
        name = f"step_{step:08d}"
    else:
        name = _default_name(epoch, None, folder.name)
    return CheckpointRef(name, epoch, step, weights.resolve())


def write_manifest(
    path: str | os.PathLike[str],
    refs: Iterable[CheckpointRef],
    *,
    extra: Mapping[str, Any] | None = None,
    hash_files: bool = True,
) -> Path:
    """Write a manifest that :func:`resolve_checkpoints` reads back, atomically.

    Parameters
    ----------
    path : path-like
        Usually ``<checkpoint dir>/manifest.json``.
    refs : iterable of CheckpointRef
        In the order to write them.
    extra : mapping, optional
        More JSON-able top-level keys (training log, config); must not contain
        ``"checkpoints"`` or ``"version"``.
    hash_files : bool, default True
        Record each file's SHA-256 (a ref's own ``sha256`` is used when set).

    Returns
    -------
    pathlib.Path

    Notes
    -----
    Paths under the manifest's folder are written relative to it, so the folder can be
    moved or copied to another machine as a whole. The file is written to a temporary
    name, fsynced and renamed: a reader never sees half a manifest.
    """
    p = Path(path)
    base = p.parent.resolve()
    entries = []
    for r in refs:
        file = None
        if r.path is not None:
            fp = Path(r.path).resolve()
            file = fp.relative_to(base).as_posix() if fp.is_relative_to(base) else str(fp)
        entry = {"name": check_name(r.name, "checkpoint name"), "epoch": r.epoch,
                 "step": r.step, "path": file}
        digest = r.sha256 or (sha256_file(r.path) if hash_files and r.path is not None else None)
        if digest is not None:
            entry["sha256"] = digest
        entries.append(entry)
    extra = dict(extra or {})
    clash = {"checkpoints", "version"} & set(extra)
    if clash:
        raise ConfigError("extra manifest keys clash with reserved ones", where=str(p),
                          got=sorted(clash), fix="rename them")
    text = json.dumps({"version": 1, "checkpoints": entries, **extra}, indent=2) + "\n"
    p.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(p, text)
