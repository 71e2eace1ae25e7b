"""Sample *types* for the control task: clusters of the raw inputs that recur across splits.

Hewitt & Liang (2019) define a control task by assigning each word *type* a random
label: every occurrence of a type carries the same control label, and types recur in
held-out sentences, so a probe *can* learn the control task, but only by memorizing
which type an input is. The gap between the task and the control accuracy
(selectivity) then tells how much of a probe's accuracy comes from the representation
rather than from the probe's own memorization.

Images have no word types. The analogue used here: the type of an image is its cluster
in a coarse view of the raw input (area means over a grid of at most ``GRID`` x ``GRID``
cells per channel, scaled to [0, 1]), found by a seeded k-means
(scikit-learn's ``MiniBatchKMeans``). Near-identical inputs (the same digit written the
same way, the same texture at the same brightness) share a type, a type has members in
every split (clusters ignore the random split assignment), and it is fixed by the
inputs alone: the same for every run, checkpoint and layer, like the labels. A probe on
a layer that keeps the input's identity can memorize type -> control label; a layer
that has abstracted it away cannot (see docs/science.md §2).

The number of types is ``[concepts] types`` of the experiment file; ``"auto"``
(default) gives about ``MEMBERS_PER_TYPE`` samples per type in the smallest of the
train / valid / test splits, at least two types per class and at most ``MAX_TYPES``
(:func:`auto_n_types`). Computing them is one pass over the raw images plus a k-means
on ``n x (GRID² · channels)`` values: seconds for tens of thousands of images.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from probestore.errors import ConfigError

#: Largest side of the area-mean grid the raw images are reduced to before clustering.
GRID = 8
#: ``"auto"``: about this many members per type in the smallest split.
MEMBERS_PER_TYPE = 10
#: ``"auto"`` never gives more types than this (k-means cost grows with the count).
MAX_TYPES = 1000
#: Images read per batch while reducing the raw inputs.
BATCH = 1024
#: Memory bound of the cumulative sums :func:`area_means` works on (float64).
_CUMSUM_BYTES = 64 << 20


def auto_n_types(split_sizes: Sequence[int], n_classes: int) -> int:
    """Types for ``"auto"``: ~``MEMBERS_PER_TYPE`` per type in the smallest non-empty split.

    At least ``2 · n_classes`` (so that a type is not a class in disguise and every
    class can get several types), at most ``MAX_TYPES``, and never more than the
    number of samples.
    """
    sizes = [int(s) for s in split_sizes if int(s) > 0]
    n = sum(sizes)
    if n == 0:
        raise ConfigError("no samples to assign types to", where="sample types", got="0 samples")
    want = min(sizes) // MEMBERS_PER_TYPE
    return int(min(n, max(2 * int(n_classes), min(MAX_TYPES, want))))


def area_means(images: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Mean of each cell of a ``<= grid x grid`` partition of every image, per channel.

    Parameters
    ----------
    images : ndarray, shape (n, H, W) or (n, H, W, C)
        Raw images (uint8 or float).
    grid : int
        Largest number of cells along each side; sides shorter than ``grid`` keep
        their pixels.

    Returns
    -------
    ndarray of float32, shape (n, gh * gw * C)
        Scaled to [0, 1] for uint8 input.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ConfigError("images must be (n, H, W) or (n, H, W, C)", where="sample types",
                          got=f"shape {np.asarray(images).shape}")
    if np.asarray(images).dtype == np.uint8:
        x /= 255.0
    n, H, W, C = x.shape
    gh, gw = min(grid, H), min(grid, W)
    rows = np.linspace(0, H, gh + 1).round().astype(int)
    cols = np.linspace(0, W, gw + 1).round().astype(int)
    r0, r1, c0, c1 = rows[:-1], rows[1:], cols[:-1], cols[1:]
    area = ((r1 - r0)[:, None] * (c1 - c0)[None, :])[None, :, :, None]
    out = np.empty((n, gh * gw * C), dtype=np.float32)
    step = max(1, _CUMSUM_BYTES // ((H + 1) * (W + 1) * C * 8))  # bounds the float64 cumulative sums
    for start in range(0, n, step):
        part = x[start:start + step]
        # Cumulative sums give every cell's sum in O(1) (cells may differ by one pixel).
        s = np.zeros((part.shape[0], H + 1, W + 1, C), dtype=np.float64)
        s[:, 1:, 1:] = part.cumsum(axis=1).cumsum(axis=2)
        total = s[:, r1][:, :, c1] - s[:, r0][:, :, c1] - s[:, r1][:, :, c0] + s[:, r0][:, :, c0]
        out[start:start + step] = (total / area).reshape(part.shape[0], -1)
    return out


def cluster_types(features: np.ndarray, n_types: int, seed: int) -> np.ndarray:
    """Seeded k-means cluster ids (``MiniBatchKMeans``), relabeled by first appearance.

    Parameters
    ----------
    features : ndarray (n, d)
        Reduced raw inputs (:func:`area_means`).
    n_types : int
        Number of clusters (``1 <= n_types <= n``).
    seed : int

    Returns
    -------
    ndarray of int64 (n,)
        Type ids ``0 .. n_types - 1`` (a cluster left empty by k-means is simply absent).
    """
    from sklearn.cluster import MiniBatchKMeans

    X = np.asarray(features, dtype=np.float32)
    n = X.shape[0]
    if not 1 <= n_types <= n:
        raise ConfigError("invalid number of sample types", where="[concepts] types",
                          expected=f"1 <= types <= {n} (the number of samples)", got=n_types,
                          fix='use "auto", or a smaller number')
    km = MiniBatchKMeans(n_clusters=int(n_types), random_state=int(seed), n_init=3,
                         batch_size=min(n, 4096), max_iter=100)
    raw = km.fit_predict(X)
    # Ids in order of first appearance: independent of k-means' internal numbering.
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse].astype(np.int64)


def compute_sample_types(dataset, splits: np.ndarray, n_classes: int, spec: int | str, seed: int,
                         ) -> tuple[np.ndarray, dict[str, Any]]:
    """Types of every sample of ``dataset`` (one pass over its raw images).

    Returns
    -------
    types : ndarray of int64 (n,)
    method : dict
        What :meth:`~storage_schema.store.ActivationStore.set_sample_types` records.
    """
    n = len(dataset)
    sizes = np.bincount(np.asarray(splits, dtype=np.int64), minlength=3)
    n_types = auto_n_types(sizes.tolist(), n_classes) if spec == "auto" else int(spec)
    parts = [area_means(dataset.raw_batch(np.arange(start, min(n, start + BATCH))))
             for start in range(0, n, BATCH)]
    types = cluster_types(np.concatenate(parts), n_types, seed)
    method = {"kind": "kmeans", "n_clusters": n_types, "requested": spec, "seed": int(seed),
              "input": f"raw-image area means, <= {GRID}x{GRID} cells per channel, [0, 1]",
              "algorithm": "sklearn MiniBatchKMeans (n_init 3)"}
    return types, method


def add_sample_types(store, exp, *, log=None) -> None:
    """Write the store's sample types once (kept when present: they belong to the dataset).

    Called by the extraction's setup, so rerunning ``probestore extract CONFIG`` on a
    store written before schema 1.2 adds the types without touching its features.
    """
    if store.has_sample_types():
        return
    t0 = time.perf_counter()
    opts = exp.config.concepts
    types, method = compute_sample_types(exp.dataset, exp.splits, len(exp.dataset.class_names),
                                         opts.types, exp.config.seed)
    store.set_sample_types(types, method=method)
    if log is not None:
        log(f"sample types: {method['n_clusters']} k-means types of {len(types)} images "
            f"in {time.perf_counter() - t0:.1f} s")
