"""``timm:<name>``: any ``timm`` model, randomly initialised, never downloaded.

``timm.create_model(name, num_classes=..., pretrained=False, in_chans=C, **options)``:
the weights come from checkpoints (a ``.pt``/``.safetensors`` state dict of the same
model, :mod:`extract.checkpoints`), like every other model source, so the random
network (epoch 0) is simply the seeded build. The options that would fetch or read
weights (``pretrained``, ``checkpoint_path``, ``pretrained_cfg``...) are refused.

Vision transformers fix their input size when built (``img_size``; the position
embeddings depend on it): a model built for another size than the dataset's images is
refused when built, with the option to set, instead of failing inside the first
forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from probestore.errors import ConfigError, did_you_mean

__all__ = ["build_timm_model"]

#: Set by probestore (classes, channels) or would load weights from elsewhere.
_BANNED = ("pretrained", "num_classes", "checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay",
           "cache_dir")


def build_timm_model(name: str, num_classes: int, input_shape: Sequence[int],
                     options: Mapping[str, Any]) -> nn.Module:
    """``timm.create_model`` at random initialization (seed: the caller's RNG).

    Raises
    ------
    ConfigError
        Unknown model name (with the closest names), an option that is set by
        probestore or would load weights, options the model refuses, an ``img_size``
        that is not the dataset's.
    """
    import timm

    if not timm.is_model(name):
        known = timm.list_models()
        raise ConfigError(f"unknown timm model {name!r}", where="model spec.name",
                          expected=f"one of timm.list_models() ({len(known)} names)", got=repr(name),
                          fix=did_you_mean(name, known) or "check the spelling (timm.list_models('vit_*'))")
    kwargs = dict(options)
    for banned in _BANNED:
        if banned in kwargs:
            raise ConfigError(f"option {banned!r} is set by probestore", where="model spec.options",
                              got=repr(kwargs[banned]),
                              fix="remove it (weights come from checkpoints, classes from num_classes)")
    if len(input_shape) == 3:
        kwargs.setdefault("in_chans", int(input_shape[0]))
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"timm {timm.__version__} refused the options of {name!r}",
                          where="model spec.options", got=(str(exc).splitlines() or [type(exc).__name__])[0][:200],
                          fix=f"use keyword arguments of timm's {name} (e.g. img_size, patch_size, depth)") from None
    _check_img_size(model, name, input_shape)
    return model


def _check_img_size(model: nn.Module, name: str, input_shape: Sequence[int]) -> None:
    """A patch embedding built for another image size than the data's is refused now."""
    patch = getattr(model, "patch_embed", None)
    size = getattr(patch, "img_size", None)
    if size is None or len(input_shape) != 3 or getattr(patch, "dynamic_img_size", False):
        return
    want = (int(input_shape[1]), int(input_shape[2]))
    if tuple(int(s) for s in size) != want:
        fix = (f"set [model] options.img_size = {want[0]}" if want[0] == want[1]
               else f"set [model] options.img_size = [{want[0]}, {want[1]}]")
        raise ConfigError(f"timm model {name!r} is built for {size[0]}x{size[1]} images",
                          where="model spec.options.img_size", expected=f"{want[0]}x{want[1]} (the dataset's images)",
                          got=f"{size[0]}x{size[1]}", fix=fix)
