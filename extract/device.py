"""Where the forward pass runs, and the settings that keep it fast *and* repeatable.

Extraction is resumable only if a batch computed again after a crash gives the very
same floats as the first time (the resumed store must equal an uninterrupted one, array
for array). On CPU that holds for a fixed batch composition; on CUDA it also needs
cuDNN's deterministic algorithms and no benchmark-mode autotuning (which may pick a
different convolution algorithm in the second process). :func:`prepare_device` sets
both; inference convolutions lose little speed with them.
"""

from __future__ import annotations

import contextlib

import torch

from probestore.errors import ConfigError

__all__ = ["resolve_device", "prepare_device", "autocast_context", "AMP_DTYPES"]

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, where: str = "extract.device") -> torch.device:
    """Map ``"auto" | "cpu" | "cuda" | "cuda:N"`` to a device that exists here.

    Parameters
    ----------
    name : str
    where : str
        Config field, for the error message.

    Returns
    -------
    torch.device

    Raises
    ------
    ConfigError
        CUDA asked for but not available, or an unknown name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError("CUDA is not available on this machine", where=where, got=name,
                              fix='use device = "auto" or "cpu" (or --device cpu)')
        return torch.device(name)
    raise ConfigError("unknown device", where=where, expected="auto, cpu or cuda", got=repr(name))


def prepare_device(device: torch.device) -> None:
    """Make repeated forward passes bit-identical on ``device`` (see the module docstring)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def autocast_context(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` in {"none", "bf16", "fp16"} (a no-op context for "none")."""
    if amp not in AMP_DTYPES:
        raise ConfigError("unknown amp mode", where="extract.amp", expected=list(AMP_DTYPES),
                          got=repr(amp))
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
