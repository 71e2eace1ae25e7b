"""torch datasets for tests (this module imports torch: only tests that need torch use it)."""

from __future__ import annotations

import torch


class IndexedDataset(torch.utils.data.Dataset):
    """Items are ``(x[i], i)``: the sample and its index as the "label" (what the extraction loop reads)."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i
