"""``[model]``: the architecture, and how its own head relates to the dataset's classes.

A network pretrained on one label set (ImageNet's 1,000 classes) is routinely probed
on another dataset (Alain & Bengio 2016 probe an ImageNet Inception v3; Graziani et
al. 2019 an InceptionV3). Its *head* (the last linear layer, whose outputs are the
logits) then has the width of the pretraining label set, not the dataset's. The keys:

``num_classes``
    Width of the network's own head (default: the dataset's class count). The outputs
    block stores these logits as they are.
``class_names``
    The model's own class names, a list of ``num_classes`` strings or a text file with
    one name per line (recorded in the store; ``class_map`` may name classes by them).
``class_map``
    ``{dataset class name = model class index or name}``: the model-output analyses use
    only those logits (prediction = argmax over the mapped classes; samples of unmapped
    dataset classes are left out). Without it, a head that does not match the dataset
    has no model-output analyses (the rows say why), since its argmax is not a dataset
    class.
``head``
    ``"keep"`` (default) or ``"drop"``: probe only the hidden layers; the checkpoint's
    head weights may be absent or of any shape, and no outputs block is stored.

Checked here (torch-free, before any data is read) as far as the file alone allows;
the dataset's class names are checked against ``class_map`` when the dataset is loaded
(:func:`extract.pipeline.load_experiment`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from probestore.errors import ConfigError, did_you_mean
from probestore.experiment.keys import Key, KeyTable, choices
from probestore.fields import check_keys, check_type
from probestore.paths import expand_path

__all__ = ["HEAD_MODES", "HF_PREFIX", "MODEL_KEYS", "parse_model", "read_class_names", "resolve_class_map",
           "resolve_hf_folder"]

HEAD_MODES = ("keep", "drop")
#: ``[model] name = "hf:<folder>"``: a Hugging Face ``save_pretrained`` folder.
HF_PREFIX = "hf:"

#: ``[model]`` (see :mod:`probestore.experiment.keys` to add a key).
MODEL_KEYS = KeyTable("[model]", "The network: an architecture by name with its options, and how its own "
                      "head relates to the dataset's classes (a pretrained network probed on another dataset).", {
    "name": Key("string", "The architecture: a built-in (`mlp`, `shallow_cnn`, `ab_mnist_convnet`), "
                "`torchvision:<arch>` or `timm:<name>` (random init, weights from checkpoints), "
                "`hf:<folder>` (a Hugging Face `save_pretrained` folder, offline: its architecture at random "
                "init; its weights are a checkpoint, `[[runs]] checkpoints = \"<folder>\"`) or "
                "`factory:package.module:function`.", example='"torchvision:resnet18"'),
    "options": Key("table", "Keyword arguments of the architecture (e.g. `depth`, `width` of `mlp`; "
                   "`img_size`, `patch_size`, `depth` of a `timm:` ViT; for `hf:`, `task_head = true` builds the "
                   "class the config's `architectures` names, and `config = { ... }` overrides config attributes).",
                   default="{}", example="{ depth = 2, width = 64 }", example_with='name = "mlp"'),
    "num_classes": Key("integer", "Width of the network's own head (its logits), independent of the dataset's "
                       "labels: 1000 for an ImageNet checkpoint probed on a 10-class dataset. The outputs block "
                       "stores these logits; model-output analyses then need `class_map`.",
                       default="the dataset's class count", allowed=">= 1", example="1000"),
    "class_names": Key("list of strings, or a string (path)", "The model's own class names, one per head "
                       "output in order (or a text file of one name per line); recorded in the store.",
                       default="none", allowed="num_classes unique names (needs num_classes)",
                       example='["cat", "dog", "truck"]', example_with="num_classes = 3", path=True),
    "class_map": Key("table", "Dataset class name = model class index (or name of `class_names`): the "
                     "model-output analyses use only these logits (argmax over the mapped classes; samples of "
                     "unmapped dataset classes are left out). Without it a head of other classes gets no "
                     "model-output analysis (its rows are `skipped`).", default="none",
                     allowed="each model class at most once; keys are dataset classes",
                     example='{ "0" = 3, "1" = 7 }', example_with="num_classes = 10"),
    "head": Key("string", "`drop`: probe only the hidden layers; the checkpoint's head (the last `nn.Linear` "
                "the forward pass reaches) may be absent or of any shape, is not loaded, and no outputs "
                "block is stored.", default='"keep"', allowed=choices(HEAD_MODES), example='"drop"'),
})


def parse_model(table: Any, where: str, *, base: str | Path | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``[model]`` as written (hashed) and resolved (``class_names`` read from its file).

    Returns
    -------
    (written, resolved) : (dict, dict)
        ``written`` holds the keys of the file (``options`` defaulted to ``{}``; the new
        keys only when written, so files without them keep their config hash).
        ``resolved`` always has ``name``, ``options``, ``num_classes`` (int or None: the
        dataset's count), ``head``, ``class_names`` (list or None) and ``class_map``
        (dict of dataset class name -> model class index or name, or None).

    Raises
    ------
    ConfigError
        Unknown keys, wrong types, a non-positive ``num_classes``, ``class_names`` of
        another length than ``num_classes`` or with repeated names, a ``class_map``
        value outside the head, a class name not in ``class_names``, two dataset
        classes mapped to one model class, a ``class_map`` with ``head = "drop"``.
    """
    written = dict(check_keys(table, MODEL_KEYS, where=where, required=MODEL_KEYS.required))
    check_type(written["name"], str, where=f"{where}.name")
    written["options"] = dict(check_type(written.get("options", {}), dict, where=f"{where}.options"))
    num_classes = written.get("num_classes")
    if num_classes is not None:
        check_type(num_classes, int, where=f"{where}.num_classes")
        if num_classes < 1:
            raise ConfigError("num_classes must be positive", where=f"{where}.num_classes",
                              expected="the width of the network's head, >= 1", got=num_classes)
    head = check_type(written.get("head", "keep"), str, where=f"{where}.head")
    if head not in HEAD_MODES:
        raise ConfigError(f"unknown head mode {head!r}", where=f"{where}.head",
                          expected="'keep' (probe the outputs too) or 'drop' (hidden layers only)",
                          got=repr(head), fix=did_you_mean(head, HEAD_MODES) or "use 'keep' or 'drop'")
    if written.get("head") == "keep":
        del written["head"]  # the default: the same file with or without it hashes the same
    names = None
    if "class_names" in written:
        names = read_class_names(written["class_names"], f"{where}.class_names", base=base)
        if num_classes is None:
            raise ConfigError("class_names needs num_classes", where=f"{where}.class_names",
                              got=f"{len(names)} names",
                              fix=f"add [model] num_classes = {len(names)} (the width of the network's head)")
        if len(names) != num_classes:
            raise ConfigError("class_names does not name every class of the head", where=f"{where}.class_names",
                              expected=f"{num_classes} names (num_classes)", got=f"{len(names)} names",
                              fix="give one name per output of the network, in output order")
    class_map = None
    if "class_map" in written:
        if head == "drop":
            raise ConfigError("class_map with head = \"drop\"", where=f"{where}.class_map",
                              expected="a kept head (its logits are what class_map selects)", got="head = \"drop\"",
                              fix="remove class_map, or set head = \"keep\"")
        class_map = _check_class_map(written["class_map"], num_classes, names, f"{where}.class_map")
    name = written["name"]
    if name.startswith(HF_PREFIX):  # the folder, relative to the experiment file like every path
        name = HF_PREFIX + str(resolve_hf_folder(name[len(HF_PREFIX):], f"{where}.name", base=base))
    resolved = {"name": name, "options": written["options"], "num_classes": num_classes,
                "head": head, "class_names": names, "class_map": class_map}
    return written, resolved


def resolve_hf_folder(text: str, where: str, *, base: str | Path | None = None) -> Path:
    """The folder of ``hf:<folder>``: ``~`` and ``$VARS`` expanded, relative to ``base``.

    Checked here, before torch or ``transformers`` is imported, so that a wrong path
    fails in a second (:mod:`extract.hf_models` builds the model from it).

    Raises
    ------
    ConfigError
        No folder given; the folder does not exist or holds no ``config.json``.
    """
    if not text:
        raise ConfigError("hf: needs a folder", where=where, expected="'hf:<folder written by save_pretrained>'",
                          got=repr(HF_PREFIX + text), fix='write e.g. name = "hf:models/bert-tiny"')
    folder = expand_path(text, where=where, base=base)
    if not folder.is_dir():
        raise ConfigError("model folder not found", where=where, got=str(folder),
                          fix="point hf: at a folder written by model.save_pretrained(folder) (relative "
                              "paths are relative to the experiment file); probestore never downloads models")
    if not (folder / "config.json").is_file():
        listed = sorted(p.name for p in folder.iterdir())[:8]
        raise ConfigError("model folder has no config.json", where=where,
                          expected="a folder written by save_pretrained", got=f"{folder} holding {listed}",
                          fix="save the model with model.save_pretrained(folder), or point at its "
                              "subfolder that holds config.json")
    return Path(os.path.normpath(folder.absolute()))  # symbolic links kept: the path as the user named it


def read_class_names(value: Any, where: str, *, base: str | Path | None = None) -> list[str]:
    """A list of names, or a UTF-8 text file of one name per line (blank lines ignored)."""
    if isinstance(value, str):
        path = expand_path(value, where=where, base=base)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError("cannot read the class names file", where=where, got=f"{path}: {exc}",
                              fix="give a UTF-8 text file with one class name per line, or a list of strings"
                              ) from None
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise ConfigError("the class names file is empty", where=where, got=str(path),
                              fix="write one class name per line")
    else:
        check_type(value, list, where=where)
        for i, name in enumerate(value):
            check_type(name, str, where=f"{where}[{i}]")
        names = list(value)
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name.strip():
            raise ConfigError("empty class name", where=f"{where}[{i}]", fix="name every class")
        if name in seen:
            raise ConfigError(f"class name {name!r} given twice", where=where,
                              got=f"positions {seen[name]} and {i}",
                              fix="class names must be unique (class_map refers to them by name)")
        seen[name] = i
    return names


def _check_class_map(value: Any, num_classes: int | None, names: list[str] | None, where: str) -> dict[str, Any]:
    """Values in range of the head (or names of ``class_names``), each model class mapped once."""
    table = check_type(value, dict, where=where)
    if not table:
        raise ConfigError("empty class_map", where=where, expected="dataset class = model class, at least one",
                          fix="map the dataset classes the model knows, or remove class_map")
    used: dict[int | str, str] = {}
    for key, target in table.items():
        w = f"{where}.{key}"
        check_type(target, (int, str), where=w)
        if isinstance(target, int):
            limit = num_classes
            if target < 0 or (limit is not None and target >= limit):
                raise ConfigError("model class index outside the head", where=w,
                                  expected=f"0 <= index < {limit}" if limit is not None else "index >= 0",
                                  got=target)
        elif names is None:
            raise ConfigError("class_map names a model class, but the model has no class_names", where=w,
                              got=repr(target), fix="add [model] class_names, or map to the class's index")
        elif target not in names:
            raise ConfigError(f"unknown model class {target!r}", where=w, expected="a name of [model] class_names",
                              got=repr(target), fix=did_you_mean(target, names) or "check the spelling")
        index: int | str = names.index(target) if isinstance(target, str) and names else target
        if index in used:
            raise ConfigError("two dataset classes mapped to one model class", where=where,
                              got=f"{used[index]!r} and {key!r} -> {target!r}",
                              fix="map each model class at most once (the prediction is an argmax over them)")
        used[index] = key
    return dict(table)


def resolve_class_map(class_map: Mapping[str, Any] | None, class_names: list[str] | None,
                      dataset_classes: list[str], num_classes: int, where: str) -> dict[str, int] | None:
    """``class_map`` with model class indices, checked against the dataset's class names.

    The store records indices (``model.class_map``), so readers need neither the
    config nor the model's class names.
    """
    if class_map is None:
        return None
    out: dict[str, int] = {}
    for key, target in class_map.items():
        if key not in dataset_classes:
            raise ConfigError(f"class_map names {key!r}, which is not a class of the dataset",
                              where=f"{where}.{key}", expected=f"one of the dataset's {len(dataset_classes)} classes",
                              got=repr(key), fix=did_you_mean(key, dataset_classes)
                              or f"the dataset's classes are {dataset_classes[:10]}")
        index = class_names.index(target) if isinstance(target, str) and class_names else int(target)
        if not 0 <= index < num_classes:
            raise ConfigError("model class index outside the head", where=f"{where}.{key}",
                              expected=f"0 <= index < {num_classes} (num_classes)", got=index)
        out[key] = index
    return {k: out[k] for k in dataset_classes if k in out}  # in dataset order
