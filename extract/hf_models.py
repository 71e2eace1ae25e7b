"""Hugging Face ``transformers`` models from ``save_pretrained`` folders, offline.

``[model] name = "hf:<folder>"`` names a folder written by ``save_pretrained`` (its
``config.json``, usually beside ``model.safetensors``). As for every other model source
(:mod:`extract.models`), *building* the model gives the architecture at a seeded random
initialization (``AutoModel.from_config``, Graziani et al.'s "epoch 0"), and the
weights come from checkpoints: the folder itself, or a series of such folders
(``step_1000/``, ``step_2000/``), is a checkpoint source (:mod:`extract.checkpoints`).
One rule for every source keeps "checkpoint without a file = the random network" true
for transformers too, which is what a random-initialization baseline needs.

Nothing is ever downloaded: every ``transformers`` call passes ``local_files_only=True``
and a folder without ``config.json`` is refused before ``transformers`` sees it.

Options (``[model] options``):

``task_head`` (bool, default false)
    false: the bare encoder / decoder (``AutoModel``: ``BertModel``, ``ViTModel``,
    ``GPT2Model``...), whose blocks are what is probed. true: the class named first in
    the config's ``architectures`` (``BertForSequenceClassification``,
    ``ViTForImageClassification``, ``GPT2LMHeadModel``...), whose classification heads
    get ``num_labels = num_classes``; the model then returns its ``logits`` tensor (a
    forward hook on the root module unwraps the ``ModelOutput``, so module and
    state-dict names stay those of ``transformers``).
``config`` (table)
    Overrides of the folder's config attributes (``{ num_hidden_layers = 2 }``); only
    attributes the config already has, so that a typo is an error, not a silent no-op.

Decoders are built with ``use_cache = False``: probing never reuses past keys and values,
and a cache would only hold memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probestore.errors import CheckpointError, ConfigError, did_you_mean
from probestore.experiment.model import resolve_hf_folder
from probestore.fields import check_keys, check_type

__all__ = ["PREFIX", "HF_OPTIONS", "is_hf_folder", "resolve_folder", "build_hf_model",
           "is_text_model", "dummy_text_inputs", "weights_file", "shard_files", "folder_state_dict",
           "adapt_state_dict", "SHARD_INDEXES", "WEIGHT_FILES"]

PREFIX = "hf:"
HF_OPTIONS = ("task_head", "config")
#: Weight files of a ``save_pretrained`` folder, in the order ``transformers`` prefers them.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: Indexes of sharded weights (``save_pretrained`` splits large models into shards).
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_CLASSIFICATION_SUFFIXES = ("ForSequenceClassification", "ForImageClassification",
                            "ForTokenClassification", "ForAudioClassification")


def is_hf_folder(path: Path) -> bool:
    """Whether ``path`` is a folder with a ``config.json`` (what ``save_pretrained`` writes)."""
    return path.is_dir() and (path / "config.json").is_file()


def resolve_folder(text: str, where: str) -> Path:
    """The folder of ``hf:<folder>`` (:func:`probestore.experiment.model.resolve_hf_folder`;
    a spec from an experiment file already holds it resolved, one from the command line
    is relative to the current directory)."""
    return resolve_hf_folder(text, where)


def _load_config(folder: Path, where: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError("transformers cannot read the model's config.json", where=where,
                          got=(str(exc).splitlines() or [type(exc).__name__])[0][:200],
                          fix="check config.json (model_type must be one this transformers knows)") from None


def check_options(options: Mapping[str, Any], where: str) -> tuple[bool, dict[str, Any]]:
    """``(task_head, config overrides)`` of an ``hf:`` spec (unknown keys refused)."""
    check_keys(options, HF_OPTIONS, where=where)
    head = check_type(options.get("task_head", False), bool, where=f"{where}.task_head")
    overrides = dict(check_type(options.get("config", {}), dict, where=f"{where}.config"))
    return head, overrides


def _apply_overrides(config, overrides: Mapping[str, Any], where: str) -> None:
    known = sorted(config.to_dict())
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"the model config has no attribute {key!r}", where=f"{where}.config",
                              expected=f"one of its {len(known)} attributes", got=repr(key),
                              fix=did_you_mean(key, known) or "see the folder's config.json")
        setattr(config, key, value)


def _head_class(config, folder: Path, where: str):
    import transformers

    names = list(getattr(config, "architectures", None) or [])
    if not names:
        raise ConfigError("the config names no architecture, so the task head is unknown",
                          where=f"{where}.task_head", got=f"{folder / 'config.json'} without 'architectures'",
                          fix="set task_head = false (the bare model), or save the model with its head")
    cls = getattr(transformers, names[0], None)
    if cls is None:
        raise ConfigError(f"transformers has no class {names[0]!r}", where=f"{where}.task_head",
                          got=names[0], fix="set task_head = false, or upgrade transformers")
    return cls


def build_hf_model(folder_text: str, num_classes: int, options: Mapping[str, Any],
                   where: str = "model spec") -> nn.Module:
    """The architecture of an ``hf:`` folder at random initialization (seed: the caller's RNG).

    Parameters
    ----------
    folder_text : str
        The folder as written after ``hf:``.
    num_classes : int
        ``num_labels`` of a classification head (``task_head = true``).
    options : mapping
        ``task_head`` and ``config``, see the module docstring.

    Returns
    -------
    torch.nn.Module
        A ``transformers.PreTrainedModel`` in train mode.
    """
    from transformers import AutoModel

    folder = resolve_folder(folder_text, f"{where}.name")
    head, overrides = check_options(options, f"{where}.options")
    config = _load_config(folder, f"{where}.name")
    _apply_overrides(config, overrides, f"{where}.options")
    if hasattr(config, "use_cache"):
        config.use_cache = False
    cls: Any = _head_class(config, folder, f"{where}.options") if head else AutoModel
    if head and cls.__name__.endswith(_CLASSIFICATION_SUFFIXES):
        config.num_labels = num_classes
    try:  # never trust_remote_code: a folder's own modelling code is not run
        model = cls.from_config(config) if cls is AutoModel else cls._from_config(config)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise ConfigError(f"transformers cannot build {getattr(cls, '__name__', cls)} from the folder's config",
                          where=f"{where}.name", got=(str(exc).splitlines() or [type(exc).__name__])[0][:200],
                          fix="check config.json (a model with its own modelling code is not supported), "
                              "and the [model] options.config overrides") from None
    if head:
        model.register_forward_hook(_logits_only)
    model.train()
    return model


def _logits_only(_module: nn.Module, _args: Any, out: Any) -> Any:
    """Root forward hook of a model with a head: its ``logits`` tensor instead of the ModelOutput."""
    logits = getattr(out, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else out


def is_text_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers`` model fed token ids (``main_input_name``)."""
    return getattr(model, "main_input_name", None) == "input_ids"


def dummy_text_inputs(model: nn.Module, length: int = 8, batch: int = 2,
                      device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A seeded batch of token ids (no padding) for dry passes of a text model.

    Used where only shapes matter (``probestore layers``, planning), so any ids of the
    vocabulary do; the special tokens are avoided so that no model treats them specially.
    """
    config = getattr(model, "config", None)
    vocab = int(getattr(config, "vocab_size", 2) or 2)
    limit = int(getattr(config, "max_position_embeddings", length) or length)
    length = max(1, min(length, limit))
    gen = torch.Generator().manual_seed(0)
    low = min(vocab - 1, 1000) if vocab > 1000 else 0
    ids = torch.randint(low, vocab, (batch, length), generator=gen)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


# --------------------------------------------------------------------------- weights


def weights_file(folder: Path) -> Path | None:
    """The weights of a ``save_pretrained`` folder: its one weights file, else the index of
    its shards (``model.safetensors.index.json``); None when it holds neither."""
    for name in WEIGHT_FILES + SHARD_INDEXES:
        if (folder / name).is_file():
            return folder / name
    return None


def shard_files(index: Path, where: str) -> list[Path]:
    """The shard files an ``*.index.json`` of a ``save_pretrained`` folder lists, in order.

    Raises
    ------
    CheckpointError
        An unreadable index, or a listed shard that is missing or outside the folder.
    """
    import json

    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = list(dict.fromkeys(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError("unreadable index of sharded weights", where=where,
                              expected='a JSON object with a "weight_map"', got=f"{type(exc).__name__}: {exc}",
                              fix="re-save the model with model.save_pretrained(folder)") from None
    shards = []
    for name in names:
        shard = index.parent / str(name)
        if Path(str(name)).name != str(name) or not shard.is_file():
            raise CheckpointError("a shard listed in the index is missing", where=where, got=str(name),
                                  fix="copy the whole folder, every model-0000N-of-0000M file with its index")
        shards.append(shard)
    return shards


def folder_state_dict(weights: Path, where: str) -> dict[str, torch.Tensor]:
    """The weights of a ``save_pretrained`` folder, named as its own architecture's modules.

    ``transformers`` 5 converts checkpoint keys when loading (``ViT``'s saved
    ``encoder.layer.0.attention.attention.query`` is the module
    ``layers.0.attention.q_proj``; some models fuse or split tensors), so the folder is
    loaded with the class its config names (``from_pretrained``, offline) and its
    ``state_dict()`` returned. Strict: weights that leave part of the folder's own
    architecture uninitialised, or of the wrong shape, are refused (``from_pretrained``
    would only warn and initialise them at random).

    Raises
    ------
    CheckpointError
        ``transformers`` cannot load the folder; missing or mismatched weights.
    """
    import transformers
    from transformers.utils import logging as hf_logging

    folder = weights.parent
    try:
        config = _load_config(folder, where)
    except ConfigError as exc:
        raise CheckpointError(exc.what, where=where, got=exc.got, fix=exc.fix) from None
    names = list(getattr(config, "architectures", None) or [])
    cls = getattr(transformers, names[0], None) if names else None
    cls = cls or transformers.AutoModel
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its warnings are turned into the strict checks below
    hf_logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True,
                                          use_safetensors=".safetensors" in weights.name)
    except Exception as exc:  # noqa: BLE001 - any failure of transformers' loader is one error here
        raise CheckpointError(f"transformers cannot load the model folder with {cls.__name__}", where=where,
                              got=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}",
                              fix="check the folder was written by save_pretrained with this transformers "
                                  f"({transformers.__version__}) or older") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    bad = sorted(info.get("missing_keys") or []) + [str(k) for k in info.get("mismatched_keys") or []]
    if bad:
        raise CheckpointError(f"the folder's weights do not cover its own architecture {cls.__name__}",
                              where=where, got=f"{len(bad)} missing or mismatched: {', '.join(bad[:5])}",
                              fix="re-save the complete model with model.save_pretrained(folder)")
    return {k: v.detach() for k, v in model.state_dict().items()}


def adapt_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Match a checkpoint's keys to ``model`` the way ``save_pretrained`` writes them.

    These differences are harmless and undone here (as ``from_pretrained`` does);
    everything else is left for the strict check of :func:`extract.checkpoints.load_into`:

    - a bare model (``task_head = false``) loading the weights of the same model with a
      task head (a fine-tuned ``BertForSequenceClassification``): the keys prefixed with
      ``base_model_prefix`` (``bert.``) lose it, and the task head's own keys, of
      modules the bare model does not have, are left out; every module of the bare
      model is still loaded strictly;
    - a model with a task head loading a bare model's weights: the keys get the prefix
      (the head's weights are then missing, and refused);
    - tied parameters (a language-model head sharing the input embeddings) are saved
      once: the missing name gets the saved tensor of its twin;
    - keys of non-persistent buffers that older versions saved (``position_ids``) are
      dropped: the model derives them.
    """
    sd = dict(state_dict)
    own = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "") or ""
    if prefix and not any(k in own for k in sd):
        if any(k.startswith(prefix + ".") for k in sd):
            sd = {k[len(prefix) + 1:]: v for k, v in sd.items() if k.startswith(prefix + ".")}
        elif any(f"{prefix}.{k}" in own for k in sd):
            sd = {f"{prefix}.{k}": v for k, v in sd.items()}
    persistent = set(own)
    derived = {name for name, _ in model.named_buffers() if name not in persistent}
    sd = {k: v for k, v in sd.items() if k not in derived}
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    for names in groups.values():
        present = [n for n in names if n in sd]
        if present:
            for n in names:
                sd.setdefault(n, sd[present[0]])
    return sd
