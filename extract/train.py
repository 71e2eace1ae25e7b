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

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from extract.checkpoints import CheckpointRef, sha256_file, write_manifest
from extract.datasets import ImageDataset
from probestore.atomic import atomic_write
from probestore.errors import ConfigError, DataError
from probestore.experiment.training import TrainConfig
from probestore.progress import Log
from storage_schema.names import validate_name

__all__ = ["train_model", "checkpoint_name"]

MANIFEST = "manifest.json"
#: Config fields that change where/how fast a run goes, not what it computes.
_NOT_FINGERPRINTED = ("device", "num_workers")
#: Per-epoch lines: stderr, flushed, timestamped in a log file (probestore.progress).
_log = Log("train")


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
    atomic_write(path, lambda f: torch.save(state, f))


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
            _log(f"[{run_name}] complete run found at {manifest}; skipping training")
        return manifest

    torch.manual_seed(config.seed)
    tds = dataset.torch_dataset()
    train_idx = np.flatnonzero(splits == 0)
    eval_idx = np.flatnonzero(splits <= 1)  # train + valid; test stays untouched
    shuffle = torch.Generator().manual_seed(config.seed)
    train_loader = _loader(tds, train_idx, config.batch_size, config, device, shuffle)
    eval_loader = _loader(tds, eval_idx, max(config.batch_size, 256), config, device, None)
    model.to(device)
    autocast = _autocast_for(device, config.amp)
    _check_output_size(model, tds, train_idx, len(dataset.class_names), device, autocast)
    run_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to work
    dataset.preload()  # folder images decoded once here, shared by the DataLoader workers
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16" and device.type == "cuda")
    opt = _optimizer(model, config)
    targets = torch.as_tensor(labels, device=device)
    masks = {"clean": (splits == 0) & ~corrupted, "corrupted": corrupted, "valid": splits == 1}

    def evaluate(epoch: int, step: int, loss: float | None, seconds: float) -> dict[str, Any]:
        pred = _predict(model, eval_loader, device, autocast)
        entry = _log_entry(pred, labels, dataset.labels, masks, epoch=epoch, step=step, loss=loss, seconds=seconds)
        if progress:
            _print_entry(run_name, config.epochs, entry, seconds)
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
        mean_loss, batches = _train_epoch(model, train_loader, targets, opt, scaler, device, autocast)
        step += batches
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


def _autocast_for(device: torch.device, amp: str):
    """A factory of the autocast context of ``amp`` ("bf16", "fp16"; anything else: disabled)."""
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    return autocast


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum or Adam over every parameter, with the config's weight decay."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _train_epoch(model: nn.Module, train_loader, targets: torch.Tensor, opt: torch.optim.Optimizer, scaler,
                 device: torch.device, autocast) -> tuple[float, int]:
    """One pass over the train split: the mean training loss and the number of optimizer steps.

    The loss is summed on the device and read once at the end (no sync per batch).
    """
    model.train()
    total, count, steps = torch.zeros((), device=device), 0, 0
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
        steps += 1
        total += loss.detach() * len(y)
        count += len(y)
    return float(total) / count, steps


def _log_entry(pred: np.ndarray, labels: np.ndarray, true: np.ndarray, masks: dict[str, np.ndarray], *,
               epoch: int, step: int, loss: float | None, seconds: float) -> dict[str, Any]:
    """One line of the manifest's training log: accuracies on clean, corrupted and valid samples.

    ``corrupted_acc`` scores the corrupted labels the network was trained on (memorization);
    ``corrupted_true_acc`` the true labels of the same samples (generalization despite them).
    """
    return {
        "epoch": epoch, "step": step, "train_loss": loss,
        "clean_acc": _accuracy(pred, labels, masks["clean"]),
        "corrupted_acc": _accuracy(pred, labels, masks["corrupted"]),
        "corrupted_true_acc": _accuracy(pred, true, masks["corrupted"]),
        "valid_acc": _accuracy(pred, true, masks["valid"]),
        "seconds": round(seconds, 3),
    }


def _print_entry(run_name: str, epochs: int, entry: dict[str, Any], seconds: float) -> None:
    """The progress line of one epoch (``seconds`` unrounded, as measured).

    Through :class:`probestore.progress.Log`, like every progress line: on stderr, flushed
    at once, timestamped when stderr is a log file (a batch job's log shows each epoch as
    it ends and keeps it on SIGKILL).
    """
    loss = entry["train_loss"]
    _log(f"[{run_name}] epoch {entry['epoch']:4d}/{epochs} step {entry['step']:7d} loss "
          f"{'   -  ' if loss is None else f'{loss:.4f}'} clean {_fmt(entry['clean_acc'])}"
          f" corrupted {_fmt(entry['corrupted_acc'])} (true {_fmt(entry['corrupted_true_acc'])})"
          f" valid {_fmt(entry['valid_acc'])} {seconds:.1f}s")


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
