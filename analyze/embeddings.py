"""2-D embeddings of a layer's features (PCA, t-SNE) for looking at what a layer separates.

Probe numbers say *how well* a layer gives the classes; a scatter of its features
shows *how*: clusters per class, a memorizing network's corrupted samples sitting in
the cluster of their (wrong) training label or of their true class. Both methods are
scikit-learn's: :class:`~sklearn.decomposition.PCA` (linear, exact, fast) and
:class:`~sklearn.manifold.TSNE` (``init="pca"``, ``random_state=seed``: the same seed
gives the same picture). t-SNE is quadratic-ish in the samples, so at most
``n_samples`` (default 2,000) rows are embedded, drawn with the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probestore.errors import ConfigError, DataError, did_you_mean

METHODS = ("pca", "tsne")
DEFAULT_SAMPLES = 2000


def subsample(n: int, n_samples: int | None, seed: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Sorted row indices: ``rows`` (default all ``n``), at most ``n_samples`` of them, seeded."""
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.intp)
    if n_samples is not None and rows.size > n_samples:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=int(n_samples), replace=False))
    return rows


def embed_block(X, method: str = "pca", *, n_samples: int | None = DEFAULT_SAMPLES, seed: int = 0,
                perplexity: float = 30.0, max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Embed (a seeded subsample of) the rows of ``X`` in 2-D.

    Parameters
    ----------
    X : array (n, F)
    method : {"pca", "tsne"}
    n_samples : int or None
        Embed at most this many rows (None: all).
    seed : int
        Seeds the subsample and t-SNE.
    perplexity : float
        t-SNE's; lowered to ``(m - 1) / 3`` for ``m`` rows when it would be too large.
    max_iter : int
        t-SNE iterations (scikit-learn's default 1000; at least 250).

    Returns
    -------
    coords : ndarray (m, 2) float64
    rows : ndarray (m,) int
        Which rows of ``X`` were embedded (sorted).

    Raises
    ------
    ConfigError
        Unknown method or bad ``n_samples``.
    DataError
        Not 2-D, fewer than 3 rows, NaN/Inf.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown embedding method {method!r}", where="embed_block method",
                          expected=" or ".join(METHODS), got=repr(method),
                          fix=did_you_mean(str(method), METHODS) or "use pca or tsne")
    if n_samples is not None and (not isinstance(n_samples, (int, np.integer)) or n_samples < 3):
        raise ConfigError("n_samples must be an integer >= 3 or None", where="embed_block n_samples",
                          got=repr(n_samples))
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 3:
        raise DataError("need a 2-D array of at least 3 rows to embed", where="embed_block X",
                        got=f"shape {X.shape}")
    rows = subsample(X.shape[0], n_samples, seed)
    Z = np.asarray(X[rows], dtype=np.float64)
    if not np.all(np.isfinite(Z)):
        raise DataError("features contain NaN or Inf", where="embed_block X", expected="finite values")
    return embed_rows(Z, method, seed=seed, perplexity=perplexity, max_iter=max_iter), rows


def embed_rows(Z: np.ndarray, method: str, *, seed: int = 0, perplexity: float = 30.0,
               max_iter: int = 1000) -> np.ndarray:
    """2-D coordinates of every row of ``Z`` (no subsampling; see :func:`embed_block`)."""
    m, F = Z.shape
    if F == 1:  # nothing to reduce: the feature against zero
        return np.column_stack([Z[:, 0] - Z[:, 0].mean(), np.zeros(m)])
    if method == "pca":
        from sklearn.decomposition import PCA

        out = PCA(n_components=2, svd_solver="full").fit_transform(Z)
        # PCA's component signs are arbitrary: fix them so that equal inputs give equal plots.
        signs = np.sign(out[np.abs(out).argmax(axis=0), [0, 1]])
        return out * np.where(signs == 0, 1.0, signs)
    from sklearn.manifold import TSNE

    perp = float(min(perplexity, max(1.0, (m - 1) / 3.0)))
    tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perp, max_iter=int(max_iter))
    return tsne.fit_transform(Z).astype(np.float64)


@dataclass(frozen=True)
class Embedding:
    """A block's 2-D embedding with what the report colours and marks it by."""

    run: str
    checkpoint: str
    epoch: int
    layer: str
    method: str
    coords: np.ndarray
    rows: np.ndarray
    labels: np.ndarray
    corrupted: np.ndarray


def embed_store_block(store, run: str, checkpoint: str, layer: str, *, method: str = "pca", split: str = "test",
                      n_samples: int | None = DEFAULT_SAMPLES, seed: int = 0) -> Embedding:
    """Embed the ``split`` samples of one stored block (only the chosen rows are read).

    ``split`` is a split name or ``"all"``; when the store has no such split, all samples.
    """
    names = store.dataset.split_names
    rows = store.split_indices(split) if split != "all" and split in names else None
    rows = subsample(store.n_samples, n_samples, seed, rows)
    X = store.read_layer(run, checkpoint, layer, rows=rows)
    if rows.size < 3:
        raise DataError("fewer than 3 samples to embed", where=f"{run}/{checkpoint}/{layer} ({split})",
                        got=f"{rows.size}")
    if not np.all(np.isfinite(X)):
        raise DataError("features contain NaN or Inf", where=f"{run}/{checkpoint}/{layer}")
    coords = embed_rows(np.asarray(X, dtype=np.float64), method, seed=seed)
    epoch = next((c.epoch for c in store.checkpoints(run) if c.name == checkpoint), None)
    return Embedding(run, checkpoint, -1 if epoch is None else int(epoch), layer, method, coords, rows,
                     store.labels()[rows], store.corrupted_mask(run)[rows])
