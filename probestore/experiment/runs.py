"""``[[runs]]``: the model variants of an experiment, trained or imported.

A trained run names a label corruption (Graziani et al. 2019: generalizing at 0,
N-memorizing at N) and optional overrides of ``[training]``; an imported run points at
existing checkpoints (a manifest, a folder of ``*.pt`` or a glob) and is not trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probestore.errors import ConfigError, did_you_mean
from probestore.experiment.keys import Key, KeyTable, choices
from probestore.experiment.training import check_training
from probestore.fields import check_keys, check_range, check_type
from probestore.paths import expand_path
from storage_schema.names import validate_name

__all__ = ["CORRUPTION_MODES", "RUN_KEYS", "RunSpec", "parse_runs"]

#: How corrupted labels are drawn (:mod:`extract.corruption`): a uniformly random class,
#: or a permutation of the corrupted samples' labels (class counts kept).
CORRUPTION_MODES = ("uniform", "shuffle")
#: One ``[[runs]]`` entry (see :mod:`probestore.experiment.keys` to add a key).
RUN_KEYS = KeyTable("[[runs]]", "One entry per model variant, at least one: trained by `probestore train` "
                    "(a label corruption, optional training overrides) or imported (`checkpoints`).", {
    "name": Key("string", "Run name in the store (letters, digits, `_`, `-`, `.`).",
                example='"memorizing-0.5"'),
    "corruption": Key("float", "Fraction of the training labels corrupted (Graziani et al.: 0 = "
                      "generalizing, N = N-memorizing).", default="0.0", allowed="0..1", example="0.5"),
    "mode": Key("string", "How corrupted labels are drawn: a permutation of the corrupted samples' labels "
                "(class counts kept) or a uniformly random class.", default='"shuffle"',
                allowed=choices(CORRUPTION_MODES), example='"uniform"'),
    "seed": Key("integer", "Seed of the label corruption and of the model's initial weights.",
                default="the [experiment] seed", allowed=">= 0", example="1"),
    "checkpoints": Key("string (path)", "Import existing checkpoints instead of training: a manifest, a "
                       "folder of `*.pt` or a glob.", default="none (the run is trained into "
                       "`checkpoints_dir/<name>`)", example='"../checkpoints/resnet18"', path=True),
    "random_init": Key("boolean", "The run is the network at its seeded random initialization only (one "
                       "checkpoint `epoch_0000`, no file, no training): the random baseline of an imported "
                       "model, e.g. a pretrained `hf:` model against the same architecture untrained.",
                       default="false", example="true"),
    "training": Key("table", "Overrides of `[training]` for this run (same keys).", default="{}",
                    example="{ epochs = 20 }"),
    "description": Key("string", "Free text, recorded in the store.", default='""',
                       example='"half the labels shuffled"'),
})


@dataclass(frozen=True)
class RunSpec:
    """One ``[[runs]]`` entry: a model variant to train, or existing checkpoints to import.

    Attributes
    ----------
    name : str
        Store-safe run name.
    corruption : float
        Fraction of training labels corrupted (0 = generalizing, 1 = fully memorizing).
    mode : str
        ``"shuffle"`` or ``"uniform"`` (see :mod:`extract.corruption`).
    seed : int
        Seed of the label corruption and of the model's initial weights.
    checkpoints : str or None
        Imported runs: manifest / folder / glob (resolved). None: trained by
        ``probestore train`` into ``checkpoints_dir/<name>``.
    training : dict
        Per-run overrides of ``[training]``.
    description : str
    random_init : bool
        The run is only its seeded random initialization (``epoch_0000``, no file).
    """

    name: str
    corruption: float = 0.0
    mode: str = "shuffle"
    seed: int = 0
    checkpoints: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    random_init: bool = False

    @property
    def trained(self) -> bool:
        """True when probestore trains this run (neither ``checkpoints =`` nor ``random_init``)."""
        return self.checkpoints is None and not self.random_init


def parse_runs(items: Any, seed: int, training: dict[str, Any], where: str,
               raw: dict[str, Any], base: str | Path | None = None) -> list[RunSpec]:
    """Every ``[[runs]]`` entry, in file order; ``raw["runs"]`` gets them with defaults.

    ``base``: the experiment file's folder, which relative ``checkpoints`` paths are
    relative to (None: the current directory).
    """
    check_type(items, list, where=where)
    if not items:
        raise ConfigError("no runs", where=where, expected="at least one [[runs]] table",
                          fix='add [[runs]] name = "generalizing" corruption = 0.0')
    runs, written, seen = [], [], set()
    for i, item in enumerate(items):
        w = f"{where}[{i}]"
        d = dict(check_keys(item, RUN_KEYS, where=w, required=RUN_KEYS.required))
        name = validate_name(check_type(d["name"], str, where=f"{w}.name"), "run")
        if name in seen:
            raise ConfigError(f"two runs are called {name!r}", where=w, fix="rename one")
        seen.add(name)
        _defaults(d, seed, w)
        checkpoints = _checkpoints(d, training, w, base)
        written.append(d)
        runs.append(RunSpec(name=name, corruption=d["corruption"], mode=d["mode"], seed=d["seed"],
                            checkpoints=checkpoints, training=d["training"], description=d["description"],
                            random_init=d.get("random_init", False)))
    raw["runs"] = written
    return runs


def _defaults(d: dict[str, Any], seed: int, w: str) -> None:
    """Fill in and check corruption, mode, seed, description and the training overrides."""
    d.setdefault("corruption", 0.0)
    check_type(d["corruption"], (int, float), where=f"{w}.corruption")
    check_range(d["corruption"], low=0, high=1, where=f"{w}.corruption")
    d["corruption"] = float(d["corruption"])
    d.setdefault("mode", "shuffle")
    check_type(d["mode"], str, where=f"{w}.mode")
    if d["mode"] not in CORRUPTION_MODES:
        raise ConfigError("unknown corruption mode", where=f"{w}.mode",
                          expected=" or ".join(map(repr, CORRUPTION_MODES)), got=repr(d["mode"]),
                          fix=did_you_mean(d["mode"], CORRUPTION_MODES) or None)
    d.setdefault("seed", seed)
    check_type(d["seed"], int, where=f"{w}.seed")
    check_range(d["seed"], low=0, where=f"{w}.seed")
    d.setdefault("description", "")
    check_type(d["description"], str, where=f"{w}.description")
    d["training"] = dict(check_type(d.get("training", {}), dict, where=f"{w}.training"))


def _checkpoints(d: dict[str, Any], training: dict[str, Any], w: str, base: str | Path | None) -> str | None:
    """An imported run's checkpoints (expanded), or None after checking a trained run's epochs."""
    ckpt = d.get("checkpoints")
    if check_type(d.get("random_init", False), bool, where=f"{w}.random_init"):
        if ckpt is not None or d["training"]:
            raise ConfigError("a random_init run has neither checkpoints nor training", where=w,
                              got="random_init = true with " + ("checkpoints" if ckpt is not None else "training"),
                              fix="remove random_init, or remove checkpoints / training from this run")
        return None
    if ckpt is not None:
        check_type(ckpt, str, where=f"{w}.checkpoints")
        if d["training"]:
            raise ConfigError("an imported run (checkpoints = ...) is not trained",
                              where=f"{w}.training", fix="remove training or checkpoints")
        return str(expand_path(ckpt, where=f"{w}.checkpoints", base=base))
    table = {**training, **d["training"]}
    if "epochs" not in table:
        raise ConfigError("run is trained but no epochs are given", where=w,
                          fix="add [training] epochs = N, or checkpoints = \"...\" to import")
    check_training(table, f"{w}.training")
    return None
