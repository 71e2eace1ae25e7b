"""What an experiment file may change about a store that already exists (growing a store).

A store records the config it was extracted with (SCHEMA.md §4.1). Extracting a *changed*
file into it is safe exactly when the change only adds: a new run, more checkpoints of
a run, a new layer, the gradient pass, new concept measures or concept sets. Anything
that would make numbers already in the store mean something else (another dataset,
other splits, another model, another reduction of a stored layer, a run trained or
corrupted differently, another concept preset, another dtype...) is refused, because
the store would then mix two experiments under one name.

Every key of the experiment file is classified here, in :data:`KEYS` (one place;
``tests/test_grow_store.py`` fails when the parser accepts a key that is not here):

* ``runtime`` -- where things live and how fast they run: not hashed, free to change;
* ``additive`` -- a change is accepted when it only adds (the rule of each key is its
  ``why``); what it drops from the file stays in the store and in the record;
* ``fixed`` -- any change alters stored numbers (or what a stored node says it is): refused;
* ``label`` -- names the experiment without changing a number: accepted and recorded.

:func:`compare_content` applies the rules to two hashed contents
(:meth:`~probestore.experiment.ExperimentConfig.content`) and returns a :class:`Growth`:
what is refused (key by key), what is added, and the new *record*, the union of the
stored config and the new one (a run dropped from the file stays in it, as it stays in
the store), which the store records from then on. Plain data only: the one check that
needs the network (the reduction each stored layer resolves to) is a callable passed in.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from probestore.errors import ConfigError

__all__ = ["RUNTIME", "ADDITIVE", "FIXED", "LABEL", "KEYS", "runtime_keys", "Growth", "compare_content"]

RUNTIME = "runtime"
ADDITIVE = "additive"
FIXED = "fixed"
LABEL = "label"

_DATA = "changes which samples, or their pixels / tokens, every stored array is aligned with"
_TRAIN = "changes the trained weights of every run that uses it (compared per run, with its overrides)"
_REDUCTION = ("may change only where no stored layer's reduction changes (each stored layer is "
              "resolved with the stored and the new settings; a new layer may use any)")
_SET = "changes the examples of an existing concept set (a new set name is an addition)"
_WHERE = "where things live or how fast they run: not hashed"

#: ``"<table>.<key>" -> (class, why)`` for every key of the experiment file. A run's keys
#: are ``runs.<key>``; its ``training`` overrides follow the ``training.<key>`` rules.
KEYS: dict[str, tuple[str, str]] = {
    "experiment.name": (LABEL, "names the experiment; the record takes the new name"),
    "experiment.store": (RUNTIME, _WHERE),
    "experiment.checkpoints_dir": (RUNTIME, _WHERE),
    "experiment.seed": (FIXED, "the default seed of the splits, corruption, reductions and sets"),
    **{f"dataset.{k}": (FIXED, _DATA) for k in (
        "kind", "path", "name", "subset", "image_size", "channels", "normalize", "mean", "std",
        "max_samples", "seed", "class_names", "format", "text_column", "label_column", "words_column",
        "word_labels_column", "id_column", "target_columns", "tokenizer", "max_length", "truncation",
        "word_alignment", "special_tokens")},
    **{f"splits.{k}": (FIXED, "changes the split of every sample") for k in ("train", "valid", "test", "predefined")},
    **{f"model.{k}": (FIXED, "the network of every run (runs share [model])") for k in (
        "name", "options", "num_classes", "class_names", "class_map", "head")},
    "training.epochs": (ADDITIVE, "may grow: more checkpoints of a run; the checkpoints already "
                                  "extracted must keep their weights (their SHA-256 is compared)"),
    "training.save_epochs": (ADDITIVE, "may add epochs (new checkpoints); a dropped epoch stays in the store"),
    **{f"training.{k}": (FIXED, _TRAIN) for k in (
        "batch_size", "lr", "optimizer", "momentum", "weight_decay", "seed", "amp")},
    "training.device": (RUNTIME, _WHERE),
    "training.num_workers": (RUNTIME, _WHERE),
    "runs.name": (ADDITIVE, "a new name is a new run; a run dropped from the file stays in the store"),
    **{f"runs.{k}": (FIXED, "of an existing run: changes its labels, weights or recorded attributes")
       for k in ("corruption", "mode", "seed", "checkpoints", "random_init", "description")},
    "runs.training": (ADDITIVE, "per-run overrides of [training]: each key follows its training.<key> rule"),
    "extract.layers": (ADDITIVE, "new layers are added to every checkpoint; a dropped one stays in the store"),
    **{f"extract.{k}": (ADDITIVE, _REDUCTION) for k in (
        "reduction", "reductions", "reduction_seed", "max_flatten_features")},
    **{f"extract.{k}": (FIXED, "changes the stored floats of every layer") for k in ("dtype", "batch_size", "amp")},
    "extract.gradients": (ADDITIVE, "false -> true adds the gradient pass to every checkpoint"),
    **{f"extract.{k}": (RUNTIME, _WHERE) for k in ("device", "num_workers", "chunk_rows", "compression")},
    "concepts.families": (ADDITIVE, "a new family's measures are computed; a dropped one stays"),
    "concepts.csv": (ADDITIVE, "a new file's columns are added (a column already stored must keep its values)"),
    "concepts.folders": (ADDITIVE, "a new name is a new binary target; an existing name must keep its folder"),
    "concepts.sets": (ADDITIVE, "a new name is a new concept set"),
    "concepts.random_sets": (ADDITIVE, "count may grow (new sets random_<i>); size, seed, prefix are fixed"),
    "concepts.preset": (FIXED, "the formulas of every concept measure (SCHEMA.md §4.2)"),
    "concepts.texture_levels": (FIXED, "the formula of the texture measures"),
    "concepts.types": (FIXED, "the sample types of the control task belong to the dataset (SCHEMA.md §11)"),
    "concepts.n_jobs": (RUNTIME, _WHERE),
    **{f"concepts.sets.{k}": (FIXED, _SET) for k in ("folder", "random", "role", "seed", "class")},
    "concepts.random_sets.count": (ADDITIVE, "may grow: new sets; fewer leaves the stored ones"),
    **{f"concepts.random_sets.{k}": (FIXED, _SET) for k in ("size", "seed", "prefix")},
    "analysis": (RUNTIME, "read by `probestore analyze`; not part of the store"),
}

#: Tables with their own rules; every other table's keys are compared one by one with their class.
_OWN_RULES = ("training", "runs", "extract", "concepts")
#: Run keys written into the hashed content only when given, with their defaults.
_RUN_DEFAULTS: dict[str, Any] = {"random_init": False, "checkpoints": None}
_LAYERWISE = ("reduction", "reductions", "reduction_seed", "max_flatten_features")


def runtime_keys(table: str) -> tuple[str, ...]:
    """The keys of ``table`` left out of the hashed content (:meth:`ExperimentConfig.content`)."""
    return tuple(path.split(".", 1)[1] for path, (cls, _) in KEYS.items()
                 if cls == RUNTIME and path.startswith(table + ".") and path.count(".") == 1)


def key_class(path: str) -> str:
    """The class of a key path; an unknown key is ``fixed`` (never silently accepted)."""
    return KEYS.get(path, (FIXED, ""))[0]


@dataclass
class Growth:
    """What a new config does to a store's recorded one.

    Attributes
    ----------
    record : dict
        The union of the stored and the new content: what the store records from now on.
    added : list of str
        Readable items: ``"run b"``, ``"layer relu2"``, ``"checkpoints of run a: epochs 3"``,
        ``"gradients"``, ``"concept family colour"``, ``"concept set striped"``...
    changed : list of str
        ``label`` keys that changed (``experiment.name: 'a' -> 'b'``).
    refused : list of str
        ``key: stored -> new`` for every change that would alter stored numbers.
    """

    record: dict[str, Any]
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


#: ``ExtractOptions -> {layer: reduction description}`` (the network's resolution of layers).
LayerResolver = Callable[[Any], Mapping[str, Any]]


def compare_content(old: Mapping[str, Any], new: Mapping[str, Any], *,
                    resolve_layers: LayerResolver | None = None) -> Growth:
    """Apply :data:`KEYS` to a stored content and a new one.

    Parameters
    ----------
    old : mapping
        The store's recorded ``config``.
    new : mapping
        :meth:`ExperimentConfig.content` of the file being extracted (through JSON).
    resolve_layers : callable, optional
        Resolves ``ExtractOptions`` to the stored layers and their reductions (the
        extraction plan of the network). Without it, layers are compared as written and
        any change of a reduction setting is refused.

    Returns
    -------
    Growth
    """
    # The record starts from the new content as it is hashed (no defaults added), so that
    # growing by additions only records exactly what a one-go extraction would.
    growth = Growth(record=json.loads(json.dumps(dict(new), default=str)))
    old, new = _normalized(old), _normalized(new)
    for table in sorted(set(old) | set(new)):
        if table not in _OWN_RULES:
            _compare_plain(table, old.get(table), new.get(table), growth)
    _compare_runs(old, new, growth)
    _compare_extract(old, new, growth, resolve_layers)
    _compare_concepts(old, new, growth)
    return growth


# --------------------------------------------------------------------------- tables


def _compare_plain(table: str, old: Any, new: Any, growth: Growth) -> None:
    if not (isinstance(old, dict) and isinstance(new, dict)):
        if old != new:
            growth.refused.append(_change(table, old, new))
        return
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        path = f"{table}.{key}"
        cls = key_class(path)
        if cls == LABEL:
            growth.changed.append(_change(path, old.get(key), new.get(key)))
        elif cls != RUNTIME:
            growth.refused.append(_change(path, old.get(key), new.get(key)))


def _compare_runs(old: dict[str, Any], new: dict[str, Any], growth: Growth) -> None:
    """Runs by name: new ones are added, dropped ones kept, existing ones compared key by key."""
    old_runs = {r["name"]: r for r in old.get("runs", [])}
    new_runs = {r["name"]: r for r in new.get("runs", [])}
    growth.added += [f"run {name}" for name in new_runs if name not in old_runs]
    # A run dropped from the file stays in the record, in its place, with the training it was made with.
    kept = [_pinned(r, old.get("training", {}), new.get("training", {})) if r["name"] not in new_runs else r
            for r in old.get("runs", [])]
    growth.record["runs"] = _merge(growth.record.get("runs", []), kept, key=lambda r: r["name"])
    for name, was in old_runs.items():
        now = new_runs.get(name)
        if now is None:
            continue
        for key in sorted((set(was) | set(now)) - {"name", "training"}):
            before, after = was.get(key, _RUN_DEFAULTS.get(key)), now.get(key, _RUN_DEFAULTS.get(key))
            if before != after and key_class(f"runs.{key}") != RUNTIME:
                growth.refused.append(_change(f"runs[{name}].{key}", before, after))
        if any(run.get("checkpoints") is not None or run.get("random_init") for run in (was, now)):
            continue  # not trained here: its checkpoints come from files (compared by SHA-256) or the seed
        _compare_training(name, {**old.get("training", {}), **was.get("training", {})},
                          {**new.get("training", {}), **now.get("training", {})}, growth)


def _compare_training(run: str, was: dict[str, Any], now: dict[str, Any], growth: Growth) -> None:
    """A trained run's effective training: only the saved epochs may change (and only grow)."""
    for key in sorted(set(was) | set(now)):
        if was.get(key) != now.get(key) and key_class(f"training.{key}") == FIXED:
            growth.refused.append(_change(f"runs[{run}].training.{key}", was.get(key), now.get(key)))
    before, after = _saved_epochs(was), _saved_epochs(now)
    more = sorted(after - before)
    if more:
        growth.added.append(f"checkpoints of run {run}: epoch{'s' if len(more) > 1 else ''} "
                            + ", ".join(map(str, more)))
    if not after >= before:  # some saved epochs dropped: they stay, so the record keeps the old training
        for entry in growth.record["runs"]:
            if entry["name"] == run:
                entry["training"] = _without_runtime(was, "training")


def _compare_extract(old: dict[str, Any], new: dict[str, Any], growth: Growth,
                     resolve_layers: LayerResolver | None) -> None:
    was, now = old.get("extract", {}), new.get("extract", {})
    record = growth.record.setdefault("extract", {})
    for key in sorted(set(was) | set(now)):
        if was.get(key) != now.get(key) and key_class(f"extract.{key}") == FIXED:
            growth.refused.append(_change(f"extract.{key}", was.get(key), now.get(key)))
    if now.get("gradients") is not True and was.get("gradients") is True:
        record["gradients"] = True
    elif now.get("gradients") is True and was.get("gradients") is not True:
        growth.added.append("gradients")
    record["layers"] = _union(now.get("layers", []), was.get("layers", []))
    record["reductions"] = {**now.get("reductions", {}),
                            **{k: v for k, v in was.get("reductions", {}).items()
                               if k not in now.get("reductions", {})}}
    if was.get("layers") == now.get("layers") and all(was.get(k) == now.get(k) for k in _LAYERWISE):
        return  # no layer and no reduction changed: nothing to resolve
    if resolve_layers is None:
        changed = [k for k in _LAYERWISE if was.get(k) != now.get(k)]
        growth.refused += [_change(f"extract.{k}", was.get(k), now.get(k)) for k in changed]
        growth.added += [f"layer {p}" for p in now.get("layers", []) if p not in was.get("layers", [])]
        return
    seed = int(old.get("experiment", {}).get("seed", 0))
    stored = resolve_layers(_options(was, seed))
    kept = resolve_layers(_options(record, seed))
    fresh = resolve_layers(_options(now, seed))
    changed = [k for k in _LAYERWISE if was.get(k) != record.get(k)]
    for layer, reduction in stored.items():
        if kept.get(layer) != reduction:
            growth.refused.append(f"extract.{'/'.join(changed) or 'layers'}: stored layer {layer} "
                                  f"{_reduction_text(reduction)} -> {_reduction_text(kept.get(layer))}")
    growth.added += [f"layer {name}" for name in fresh if name not in stored]


def _compare_concepts(old: dict[str, Any], new: dict[str, Any], growth: Growth) -> None:
    was, now = old.get("concepts", {}), new.get("concepts", {})
    record = growth.record.setdefault("concepts", {})
    additive = ("families", "csv", "folders", "sets", "random_sets")
    _compare_plain("concepts", {k: v for k, v in was.items() if k not in additive},
                   {k: v for k, v in now.items() if k not in additive}, growth)
    for key, what in (("families", "concept family"), ("csv", "concept csv")):
        record[key] = _union(now.get(key, []), was.get(key, []))
        growth.added += [f"{what} {v}" for v in now.get(key, []) if v not in was.get(key, [])]
    folders = dict(now.get("folders", {}))
    for name, folder in was.get("folders", {}).items():
        if name not in folders:
            folders[name] = folder
        elif folders[name] != folder:
            growth.refused.append(_change(f"concepts.folders.{name}", folder, folders[name]))
    growth.added += [f"concept folder {k}" for k in now.get("folders", {}) if k not in was.get("folders", {})]
    record["folders"] = folders
    seed = int(new.get("experiment", {}).get("seed", 0))
    sets_was, sets_now = _concept_sets(was, seed), _concept_sets(now, seed)
    for name, spec in sets_was.items():
        if name in sets_now and sets_now[name] != spec:
            keys = sorted(k for k in set(spec) | set(sets_now[name]) if spec.get(k) != sets_now[name].get(k))
            growth.refused.append(f"concepts.sets.{name}: {', '.join(keys)} {_short(spec)} -> {_short(sets_now[name])}")
    growth.added += [f"concept set {name}" for name in sets_now if name not in sets_was]
    dropped = {name: spec for name, spec in sets_was.items() if name not in sets_now}
    if dropped:  # kept in the record as explicit entries (a random_sets table cannot hold them)
        record["sets"] = {**record.get("sets", {}), **dropped}


# --------------------------------------------------------------------------- helpers


def _normalized(content: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with the defaults that are hashed only when written filled in."""
    out = json.loads(json.dumps(dict(content), default=str))
    out.setdefault("extract", {}).setdefault("gradients", False)
    out.setdefault("concepts", {}).setdefault("types", "auto")
    return out


def _options(table: Mapping[str, Any], seed: int):
    """``ExtractOptions`` of a stored ``[extract]`` table (gradients off: only reductions matter)."""
    from probestore.experiment.extraction import parse_extract

    table = {k: v for k, v in table.items() if k != "gradients"}
    try:
        return parse_extract(table, seed, "the store's recorded config [extract]", {})
    except ConfigError as exc:
        raise ConfigError("the store's recorded [extract] table is not a valid one", where=exc.where,
                          got=exc.what, fix="re-create the store with --overwrite") from None


def _saved_epochs(training: Mapping[str, Any]) -> set[int]:
    from probestore.experiment.training import TrainConfig

    if "epochs" not in training:
        return set()
    return set(TrainConfig.from_dict(dict(training), where="the store's recorded [training]").epochs_to_save())


def _concept_sets(concepts: Mapping[str, Any], seed: int) -> dict[str, dict[str, Any]]:
    """Every concept set of a ``[concepts]`` table by name, with its defaults filled in."""
    out: dict[str, dict[str, Any]] = {}
    for name, entry in (concepts.get("sets") or {}).items():
        spec = {"folder": entry} if isinstance(entry, str) else dict(entry)
        spec.setdefault("role", "random" if "random" in spec and "class" not in spec else "concept")
        spec.setdefault("seed", seed)
        out[name] = spec
    random_sets = concepts.get("random_sets")
    if random_sets:
        for i in range(int(random_sets["count"])):
            out[f"{random_sets.get('prefix', 'random_')}{i}"] = {
                "random": random_sets["size"], "role": "random", "seed": random_sets.get("seed", seed)}
    return out


def _pinned(run: Mapping[str, Any], training: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """A dropped run's record entry: with its full training when the file's [training] changed it."""
    entry = copy.deepcopy(dict(run))
    own = entry.get("training", {})
    trained = entry.get("checkpoints") is None and not entry.get("random_init")
    if trained and {**training, **own} != {**now, **own}:
        entry["training"] = _without_runtime({**training, **own}, "training")
    return entry


def _without_runtime(table: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in table.items() if k not in runtime_keys(name)}


def _union(first: list[Any], second: list[Any]) -> list[Any]:
    return _merge(first, second, key=lambda v: v)


def _merge(new: list[Any], old: list[Any], *, key: Callable[[Any], Any]) -> list[Any]:
    """``new`` with the items only ``old`` has inserted where they were (after their predecessor).

    Dropping items from a file and adding them back then gives the recorded list again,
    so a file that only drops things leaves the record (and its hash) as it was.
    """
    out = list(new)
    keys = [key(v) for v in out]
    old_keys = [key(v) for v in old]
    for i, item in enumerate(old):
        if old_keys[i] in keys:
            continue
        after = next((k for k in reversed(old_keys[:i]) if k in keys), None)
        at = keys.index(after) + 1 if after is not None else 0
        out.insert(at, item)
        keys.insert(at, old_keys[i])
    return out


def _reduction_text(reduction: Any) -> str:
    if not isinstance(reduction, Mapping):
        return "(none)"
    params = ",".join(f"{k}={v}" for k, v in sorted(reduction.get("params", {}).items()))
    return f"{reduction.get('kind')}" + (f"({params})" if params else "")


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _change(path: str, old: Any, new: Any) -> str:
    return f"{path}: {_short(old) if old is not None else '(absent)'} -> {_short(new) if new is not None else '(absent)'}"
