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
CHECKPOINT_SUFFIXES = (".pt", ".pth")
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
        under ``"state_dict"`` or ``"model"`` (the usual training-checkpoint layouts).
        Keys all prefixed ``module.`` (saved from ``DataParallel``) are unprefixed.

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
              where: str = "checkpoint") -> torch.nn.Module:
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

    Returns
    -------
    torch.nn.Module
        ``model``, loaded.

    Raises
    ------
    CheckpointError
        Missing keys, unexpected keys or shape mismatches.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(_listing("missing keys", missing))
    if unexpected:
        problems.append(_listing("unexpected keys", unexpected))
    if mismatched:
        problems.append(_listing("shape mismatches", mismatched))
    if problems:
        raise CheckpointError(
            "checkpoint does not fit the model", where=where,
            expected=f"the {len(own)} entries of {type(model).__name__}.state_dict()",
            got="; ".join(problems),
            fix="wrong architecture? check the model spec (name, options, num_classes, "
                "input_shape) matches the one the checkpoint was trained with")
    model.load_state_dict(state_dict, strict=True)
    return model


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks (checkpoints can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
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
                          expected="*.pt / *.pth files or a manifest listing checkpoints",
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
        A manifest ``*.json`` written by :func:`write_manifest`; a directory (its
        ``manifest.json`` if there is one, else its ``*.pt`` / ``*.pth`` files, not
        recursive); a single file; or a glob pattern.
        Names from files are ``epoch_0003``-style (see :func:`parse_epoch_step`);
        names from a manifest are kept and validated. Checkpoints without a known
        epoch sort last.

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
    if src.is_dir():
        files = [q for q in sorted(src.iterdir())
                 if q.is_file() and q.suffix.lower() in CHECKPOINT_SUFFIXES]
        return _sorted_unique(_refs_from_files(files), where)
    files = [Path(f) for f in sorted(globlib.glob(str(source))) if Path(f).is_file()]
    return _sorted_unique(_refs_from_files(files), where)


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
