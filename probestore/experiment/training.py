"""``[training]``: the optimization settings of a trained run, as plain data.

:class:`TrainConfig` is recorded in each run's manifest and read by
:func:`extract.train.train_model`; it lives here, without torch, so that the experiment
file is checked completely (``epochs``, ``lr``, ``save_epochs``...) on any machine and
before a network is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from probestore.errors import ConfigError, did_you_mean
from probestore.experiment.keys import Key, KeyTable
from probestore.experiment.keys import choices as one_of
from probestore.fields import check_keys, check_range, check_type

__all__ = ["OPTIMIZERS", "DEVICES", "AMP_MODES", "TRAINING_KEYS", "TrainConfig", "check_training"]

OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")
AMP_MODES = ("none", "bf16", "fp16")

#: ``[training]`` and a run's ``training = {...}``: one key per :class:`TrainConfig` field.
TRAINING_KEYS = KeyTable("[training]", "How `probestore train` trains each run; a run may override any key "
                         "with `training = { ... }`. Recorded in each run's manifest.", {
    "epochs": Key("integer", "Passes over the training split (0 saves only the random initialization).",
                  default="required when a run is trained", allowed=">= 0", example="10"),
    "batch_size": Key("integer", "Samples per optimization step.", default="128", allowed=">= 1", example="128"),
    "lr": Key("float", "Learning rate (0.01 is the papers' SGD and Adam rate).", default="0.01", allowed="> 0",
              example="0.01"),
    "optimizer": Key("string", "The optimizer.", default='"sgd"', allowed=one_of(OPTIMIZERS), example='"adam"'),
    "momentum": Key("float", "SGD momentum.", default="0.0", allowed="0..1", example="0.9"),
    "weight_decay": Key("float", "L2 weight decay.", default="0.0", allowed=">= 0", example="0.0005"),
    "save_epochs": Key('list of integers or "all"', "Epochs whose weights are saved (epoch 0, the random "
                       "network, and the last epoch always are).", default='"all"', allowed="0..epochs",
                       example="[0, 1, 2, 4, 10]", example_with="epochs = 10"),
    "seed": Key("integer", "Seed of the shuffling and of randomness inside the model (dropout).",
                default="the [experiment] seed", allowed=">= 0", example="0"),
    "device": Key("string", "Where to train; `auto` takes the GPU when there is one. `--device` overrides it.",
                  default='"auto"', allowed=one_of(DEVICES), example='"cpu"', hashed=False),
    "num_workers": Key("integer", "DataLoader worker processes (0 loads in the main process). "
                       "`--num-workers` overrides it.", default="0", allowed=">= 0", example="4", hashed=False),
    "amp": Key("string", "Mixed-precision autocast of the forward pass (fp16 adds loss scaling on CUDA).",
               default='"none"', allowed=one_of(AMP_MODES), example='"bf16"'),
})


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
        check_keys(d, TRAINING_KEYS, where=where, required=("epochs",))
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


def check_training(table: dict[str, Any], where: str) -> None:
    """Validate a ``[training]`` table (with a run's overrides merged in) as a TrainConfig."""
    TrainConfig.from_dict(table, where=where)
