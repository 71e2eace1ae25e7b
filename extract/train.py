"""Train the networks that get probed: generalizing, N-memorizing, and their epoch 0.

Graziani et al. (2019) probe a network *during* training and compare three kinds:
random (epoch 0, before any update), generalizing (true labels) and N-memorizing (a
fraction N of the training labels corrupted, see :mod:`extract.corruption`). This
module trains one such run and leaves behind what the extraction stage reads:

- ``<out_dir>/<run_name>/epoch_0000.pt``: the random initialization, always;
- ``epoch_NNNN.pt`` for the chosen epochs (and the last one), plain state dicts on CPU,
  each written to a temporary name and renamed, so a file that exists is complete;
- ``manifest.json``, written last (so its presence means the run finished), listing
  the checkpoints with epoch, optimizer step, relative path and SHA-256, plus the
  config, the dataset description and the per-epoch training log.

The log separates accuracy on *clean* and *corrupted* training samples (the latter
against both the training label and the true label): Graziani et al.'s Sec. 5 shows
true labels are learned before random ones, which only shows when the two are kept
apart. Valid accuracy is against true labels (valid is never corrupted).

Re-running with the same inputs skips: if ``manifest.json`` exists with the same input
fingerprint (config without device/workers, sample ids, splits, training labels and
the model's initial weights) and its checkpoint files are present, nothing is trained
and the manifest path is returned (the ``model`` argument is then left untouched; load
the weights from the manifest). A manifest with a *different* fingerprint is refused
rather than overwritten. A killed run has no manifest and is trained again from scratch.

Determinism: on CPU, the same seed gives bit-identical checkpoints, with or without
DataLoader workers (the global torch RNG is seeded for dropout and friends, a seeded
``torch.Generator`` drives the shuffling, workers get per-worker seeds). Build the model with a seed too
(``extract.models.build_model(spec, seed=...)``): its initialization is the caller's.
On GPU, cuDNN kernels may be nondeterministic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from extract.checkpoints import CheckpointRef, sha256_file, write_manifest
from extract.datasets import ImageDataset
from storage_schema.errors import ConfigError, DataError, did_you_mean
from storage_schema.names import validate_name
from storage_schema.validation import check_keys, check_range, check_type

__all__ = ["TrainConfig", "train_model", "checkpoint_name"]

MANIFEST = "manifest.json"
OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("none", "bf16", "fp16")
#: Config fields that change where/how fast a run goes, not what it computes.
_NOT_FINGERPRINTED = ("device", "num_workers")


@dataclass
class TrainConfig:
    """Optimization settings of one run (recorded in the manifest).

    Parameters
    ----------
    epochs : int
        Passes over the training split (0 saves only the random initialization).
    batch_size : int
    lr : float
        0.01 is the papers' SGD learning rate (also their Adam one).
    optimizer : {"sgd", "adam"}
    momentum : float
        SGD only.
    weight_decay : float
    save_epochs : list of int or "all"
        Epochs whose weights are saved; epoch 0 (random network) and the last epoch are
        always saved. 0 <= epoch <= ``epochs``.
    seed : int
        Shuffling and any randomness inside the model (dropout).
    device : {"auto", "cpu", "cuda"}
        ``"auto"`` takes the GPU when there is one.
    num_workers : int
        DataLoader worker processes (0 loads in the main process).
    amp : {"none", "bf16", "fp16"}
        Mixed-precision autocast of the forward pass (fp16 adds loss scaling on CUDA).
    """

    epochs: int
    batch_size: int = 128
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    save_epochs: list[int] | str = field(default="all")
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    amp: str = "none"

    def __post_init__(self) -> None:
        self._validate("TrainConfig")

    def _validate(self, where: str) -> None:
        for name in ("epochs", "batch_size", "seed", "num_workers"):
            check_type(getattr(self, name), int, where=f"{where}.{name}")
        check_range(self.epochs, low=0, where=f"{where}.epochs")
        check_range(self.batch_size, low=1, where=f"{where}.batch_size")
        check_range(self.seed, low=0, where=f"{where}.seed")
        check_range(self.num_workers, low=0, where=f"{where}.num_workers")
        for name in ("lr", "momentum", "weight_decay"):
            check_type(getattr(self, name), (int, float), where=f"{where}.{name}")
            setattr(self, name, float(getattr(self, name)))
        if not self.lr > 0:
            raise ConfigError("lr must be positive", where=f"{where}.lr", got=self.lr)
        check_range(self.momentum, low=0, high=1, where=f"{where}.momentum")
        check_range(self.weight_decay, low=0, where=f"{where}.weight_decay")
        for name, choices in (("optimizer", OPTIMIZERS), ("device", DEVICES), ("amp", AMP_MODES)):
            value = check_type(getattr(self, name), str, where=f"{where}.{name}")
            if value not in choices:
                raise ConfigError("unknown value", where=f"{where}.{name}",
                                  expected="one of " + ", ".join(map(repr, choices)),
                                  got=repr(value), fix=did_you_mean(value, choices) or None)
        if isinstance(self.save_epochs, str):
            if self.save_epochs != "all":
                raise ConfigError("unknown value", where=f"{where}.save_epochs",
                                  expected='"all" or a list of epochs', got=repr(self.save_epochs))
        else:
            check_type(self.save_epochs, (list, tuple), where=f"{where}.save_epochs")
            for e in self.save_epochs:
                check_type(e, int, where=f"{where}.save_epochs")
                check_range(e, low=0, high=self.epochs, where=f"{where}.save_epochs")
            self.save_epochs = sorted(set(self.save_epochs))

    def epochs_to_save(self) -> list[int]:
        """Sorted epochs that get a checkpoint (always 0 and the last)."""
        chosen = range(self.epochs + 1) if self.save_epochs == "all" else self.save_epochs
        return sorted({0, self.epochs, *chosen})

    @classmethod
    def from_dict(cls, d: Any, where: str = "train") -> TrainConfig:
        """Build from a config table, refusing unknown keys with a did-you-mean."""
        check_keys(d, [f.name for f in dataclasses.fields(cls)], where=where, required=("epochs",))
        try:
            return cls(**d)
        except ConfigError as exc:
            raise ConfigError(exc.what, where=str(exc.where).replace("TrainConfig", where, 1),
                              expected=exc.expected, got=exc.got, fix=exc.fix) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of every field (``from_dict(to_dict())`` round-trips)."""
        d = dataclasses.asdict(self)
        if not isinstance(d["save_epochs"], str):
            d["save_epochs"] = list(d["save_epochs"])
        return d


def checkpoint_name(epoch: int) -> str:
    """Store-safe name of an epoch's checkpoint (``epoch_0003``); the file adds ``.pt``."""
    return f"epoch_{epoch:04d}"


# --------------------------------------------------------------------------- helpers


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available on this machine", where="train.device",
                          got="cuda", fix='use device = "auto" or "cpu"')
    return torch.device(name)


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; derive numpy/random from it
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002  (user transforms may draw from the global RNG)
    random.seed(seed)


def _check_inputs(dataset: ImageDataset, splits, train_labels, corrupted):
    n = len(dataset)
    arrays = {"splits": np.asarray(splits), "train_labels": np.asarray(train_labels),
              "corrupted": np.asarray(corrupted)}
    for name, a in arrays.items():
        if a.shape != (n,):
            raise DataError(f"{name} does not match the dataset", where=f"train_model({name})",
                            expected=f"shape ({n},) for dataset {dataset.name!r}", got=a.shape)
    splits, labels, corrupted = arrays.values()
    if not np.issubdtype(labels.dtype, np.integer) or corrupted.dtype != bool:
        raise DataError("wrong dtypes", where="train_model",
                        expected="integer train_labels and boolean corrupted",
                        got=f"{labels.dtype}, {corrupted.dtype}")
    k = len(dataset.class_names)
    if n and (labels.min() < 0 or labels.max() >= k):
        raise DataError("train_labels outside the dataset's classes", where="train_model(train_labels)",
                        expected=f"0..{k - 1}", got=f"{labels.min()}..{labels.max()}")
    if (corrupted & (splits != 0)).any():
        raise DataError("corrupted samples outside the train split", where="train_model(corrupted)",
                        fix="corrupt labels with extract.corruption.corrupt_labels(labels, splits, ...)")
    if not (splits == 0).any():
        raise DataError("the train split is empty", where="train_model(splits)",
                        fix="give train a positive fraction in assign_splits")
    return splits, labels.astype(np.int64), corrupted


def _fingerprint(model: nn.Module, dataset: ImageDataset, splits, labels, corrupted,
                 config: TrainConfig) -> str:
    """SHA-256 of everything that determines the trained weights."""
    h = hashlib.sha256()
    cfg = {k: v for k, v in config.to_dict().items() if k not in _NOT_FINGERPRINTED}
    h.update(json.dumps(cfg, sort_keys=True).encode())
    h.update(json.dumps(dataset.spec.to_dict(), sort_keys=True).encode())
    h.update("\n".join(dataset.sample_ids.tolist()).encode())
    for a in (splits.astype(np.int8), labels.astype(np.int64), corrupted.astype(np.bool_)):
        h.update(np.ascontiguousarray(a).tobytes())
    for key, t in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _existing_run(manifest: Path, fingerprint: str) -> bool:
    """True when ``manifest`` is a finished run of the same inputs (then skip)."""
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False  # unreadable: train again and replace it
    if data.get("fingerprint") != fingerprint:
        raise ConfigError("the run folder holds a run trained on different inputs",
                          where=str(manifest.parent), expected=f"fingerprint {fingerprint[:12]}",
                          got=f"fingerprint {str(data.get('fingerprint'))[:12]}",
                          fix="use another run_name, or delete the folder to retrain")
    return all(c.get("path") is None or (manifest.parent / c["path"]).is_file()
               for c in data.get("checkpoints", []))


def _save_state(model: nn.Module, path: Path) -> None:
    """Write a CPU state dict to ``path`` atomically (temporary name, fsync, rename)."""
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _loader(dataset, indices: np.ndarray, batch_size: int, config: TrainConfig,
            device: torch.device, generator: torch.Generator | None) -> DataLoader:
    return DataLoader(
        Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=generator is not None,
        generator=generator, num_workers=config.num_workers, worker_init_fn=_seed_worker,
        pin_memory=device.type == "cuda", persistent_workers=config.num_workers > 0)


@torch.no_grad()
def _predict(model: nn.Module, loader: DataLoader, device: torch.device, autocast) -> np.ndarray:
    """Predicted class per sample, indexed by dataset position (-1 where not evaluated)."""
    model.eval()
    preds = np.full(len(loader.dataset.dataset), -1, np.int64)  # type: ignore[attr-defined]
    for x, idx in loader:
        with autocast():
            logits = model(x.to(device, non_blocking=True))
        preds[idx.numpy()] = logits.argmax(1).cpu().numpy()
    return preds


def _accuracy(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float | None:
    return float((pred[mask] == target[mask]).mean()) if mask.any() else None


def _fmt(v: float | None) -> str:
    return "  -  " if v is None else f"{v:.3f}"


# --------------------------------------------------------------------------- training


def train_model(
    model: nn.Module,
    dataset: ImageDataset,
    splits: np.ndarray,
    train_labels: np.ndarray,
    corrupted: np.ndarray,
    config: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    run_name: str,
    progress: bool = True,
) -> Path:
    """Train ``model`` on the train split and save its checkpoints and manifest.

    Parameters
    ----------
    model : torch.nn.Module
        Freshly initialized (its state now is saved as epoch 0); trained in place.
    dataset : ImageDataset
        Inputs (:meth:`ImageDataset.torch_dataset`); ``dataset.labels`` are the true
        labels used for the corrupted-vs-true and valid accuracies.
    splits : numpy.ndarray of int8
        Codes from :func:`extract.splits.assign_splits` (0 train, 1 valid, 2 test);
        test samples are never looked at.
    train_labels, corrupted : numpy.ndarray
        From :func:`extract.corruption.corrupt_labels` (or ``dataset.labels`` and an
        all-False mask for a generalizing network).
    config : TrainConfig
    out_dir : path-like
        Checkpoints go to ``out_dir / run_name``.
    run_name : str
        Store-safe name of the run (e.g. ``"mlp_mnist_n0.5_seed0"``).
    progress : bool
        Print one line per epoch.

    Returns
    -------
    pathlib.Path
        The ``manifest.json`` (see the module docstring for its contents and for
        when an existing one is reused).

    Raises
    ------
    ConfigError
        Bad run name, unavailable device, a run folder holding a different run, or a
        model whose output has too few classes.
    DataError
        Arrays that do not fit the dataset, corrupted samples outside train, no train
        samples.
    """
    validate_name(run_name, "run")
    splits, labels, corrupted = _check_inputs(dataset, splits, train_labels, corrupted)
    device = _resolve_device(config.device)
    run_dir = Path(out_dir) / run_name
    manifest = run_dir / MANIFEST
    fingerprint = _fingerprint(model, dataset, splits, labels, corrupted, config)
    if _existing_run(manifest, fingerprint):
        if progress:
            print(f"[{run_name}] complete run found at {manifest}; skipping training", flush=True)
        return manifest

    torch.manual_seed(config.seed)
    tds = dataset.torch_dataset()
    train_idx = np.flatnonzero(splits == 0)
    eval_idx = np.flatnonzero(splits <= 1)  # train + valid; test stays untouched
    shuffle = torch.Generator().manual_seed(config.seed)
    train_loader = _loader(tds, train_idx, config.batch_size, config, device, shuffle)
    eval_loader = _loader(tds, eval_idx, max(config.batch_size, 256), config, device, None)
    model.to(device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.amp)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    _check_output_size(model, tds, train_idx, len(dataset.class_names), device, autocast)
    run_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to work
    dataset.preload()  # folder images decoded once here, shared by the DataLoader workers
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16" and device.type == "cuda")
    opt: torch.optim.Optimizer
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    targets = torch.as_tensor(labels, device=device)
    true = dataset.labels
    masks = {"clean": (splits == 0) & ~corrupted, "corrupted": corrupted, "valid": splits == 1}

    def evaluate(epoch: int, step: int, loss: float | None, seconds: float) -> dict[str, Any]:
        pred = _predict(model, eval_loader, device, autocast)
        entry = {
            "epoch": epoch, "step": step, "train_loss": loss,
            "clean_acc": _accuracy(pred, labels, masks["clean"]),
            "corrupted_acc": _accuracy(pred, labels, masks["corrupted"]),
            "corrupted_true_acc": _accuracy(pred, true, masks["corrupted"]),
            "valid_acc": _accuracy(pred, true, masks["valid"]),
            "seconds": round(seconds, 3),
        }
        if progress:
            print(f"[{run_name}] epoch {epoch:4d}/{config.epochs} step {step:7d} loss "
                  f"{'   -  ' if loss is None else f'{loss:.4f}'} clean {_fmt(entry['clean_acc'])}"
                  f" corrupted {_fmt(entry['corrupted_acc'])} (true {_fmt(entry['corrupted_true_acc'])})"
                  f" valid {_fmt(entry['valid_acc'])} {seconds:.1f}s", flush=True)
        return entry

    to_save = set(config.epochs_to_save())
    refs: list[CheckpointRef] = []

    def save(epoch: int, step: int) -> None:
        path = run_dir / f"{checkpoint_name(epoch)}.pt"
        _save_state(model, path)
        refs.append(CheckpointRef(checkpoint_name(epoch), epoch, step, path, sha256_file(path)))

    save(0, 0)
    log = [evaluate(0, 0, None, 0.0)]
    step = 0
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        total, count = torch.zeros((), device=device), 0
        for x, idx in train_loader:
            x = x.to(device, non_blocking=True)
            y = targets[idx.to(device, non_blocking=True)]
            with autocast():
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
            total += loss.detach() * len(y)
            count += len(y)
        mean_loss = float(total) / count
        if not np.isfinite(mean_loss):
            raise DataError("training diverged (loss is not finite)", where=f"run {run_name!r}",
                            got=f"loss {mean_loss} at epoch {epoch}",
                            fix="lower lr, or use amp = \"none\"/\"bf16\"")
        if epoch in to_save:
            save(epoch, step)
        log.append(evaluate(epoch, step, mean_loss, time.perf_counter() - start))

    extra = {
        "run_name": run_name,
        "fingerprint": fingerprint,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": config.to_dict(),
        "dataset": dataset.to_dict(),
        "n_train": int(masks["clean"].sum() + corrupted.sum()),
        "n_corrupted": int(corrupted.sum()),
        "n_valid": int(masks["valid"].sum()),
        "device": str(device),
        "torch_version": torch.__version__,
        "log": log,
    }
    return write_manifest(manifest, refs, extra=extra)


def _check_output_size(model, tds, train_idx, n_classes, device, autocast) -> None:
    """One forward pass before training: a wrong head fails here, not after epoch 1."""
    x = torch.stack([tds[int(i)][0] for i in train_idx[:2]]).to(device)
    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast():
        out = model(x)
    model.train(was_training)
    if out.ndim != 2 or out.shape[1] < n_classes:
        raise ConfigError("model output does not fit the dataset's classes", where="train_model(model)",
                          expected=f"logits of shape (batch, {n_classes})",
                          got=f"output shape {tuple(out.shape)}",
                          fix=f"build the model with num_classes = {n_classes}")
