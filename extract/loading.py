"""The one way extraction reads a dataset: in order, batches aligned on the batch size.

Activations (:mod:`extract.runner`) and gradients (:mod:`extract.gradients`) both read
the dataset through :func:`batch_loader`, so their rows line up and a resumed run starts
on the same batch boundaries; it sits in its own module so that neither of the two
imports the other for it.
"""

from __future__ import annotations

import torch

__all__ = ["batch_loader"]


def batch_loader(torch_dataset, start: int, batch_size: int, *, device: torch.device,
                 num_workers: int = 0):
    """DataLoader over rows ``[start, n)`` in order, batches aligned on ``start``.

    ``start`` must be a multiple of ``batch_size`` so that batches are always rows
    ``[k * batch_size, (k + 1) * batch_size)``, whatever row a resumed run starts at.
    """
    from torch.utils.data import DataLoader, Subset

    if start % batch_size:
        raise ValueError(f"start row {start} is not a multiple of the batch size {batch_size}")
    n = len(torch_dataset)
    subset = Subset(torch_dataset, range(start, n))
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=device.type == "cuda", drop_last=False,
                      persistent_workers=False)
