"""Per-layer feature reductions applied inside the forward hook (Alain & Bengio 2016, §3.4).

Early convolutional layers have millions of features per sample (C*H*W); storing them
is neither possible nor useful, since a probe on that many features overfits anything.
Alain & Bengio propose three ways out, all implemented here:

* ``gap`` / ``gmp``: 2D pooling over (H, W) of each channel, leaving C features
  (what they use for ResNet-50);
* ``random:K``: a random subset of K features, *always the same ones* (what they use for
  Inception v3, with K = 1000);
* ``project:K``: a fixed Gaussian random projection to K dimensions (not a learned one:
  the matrix is regenerated from a seed, so it costs no storage);

plus ``flatten`` (keep everything, for small layers) and ``auto`` (``gap`` for 4-D
outputs, ``flatten`` for 2-D ones).

The spec grammar (which strings exist, which kinds are linear) is a schema fact and
lives in :mod:`storage_schema.reductions`, so that parsing an experiment file needs no
torch. Here a reduction is planned as a :class:`ReductionPlan` (pure numpy, JSON-able:
this is what the store records) and applied by a ``torch.nn.Module`` from
:func:`build_reducer`.
Every random choice is seeded from ``(seed, sha256(layer_name))``: the same layer gets
the same features in every process, on every device, whatever other layers are tapped
and in whichever order; two layers never share a stream.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from probestore.errors import ConfigError, DataError
from storage_schema.reductions import NEEDS_K, TOKEN_AXIS_KINDS, parse_reduction

#: Largest projection matrix (in elements) we agree to generate: 2**28 float32 = 1 GiB.
MAX_PROJECT_ELEMENTS = 2**28


def stable_hash(name: str) -> int:
    """64-bit hash of ``name`` that is the same in every process.

    Python's ``hash()`` is salted per process (PYTHONHASHSEED), so it cannot seed
    anything that must be reproduced later; the first 8 bytes of SHA-256 can.
    """
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def _rng(seed: int, layer_name: str) -> np.random.Generator:
    return np.random.default_rng([seed, stable_hash(layer_name)])


@dataclass(eq=False)
class ReductionPlan:
    """What is stored for one layer, and everything needed to redo it.

    Attributes
    ----------
    kind : str
        ``gap``, ``gmp``, ``random``, ``project`` or ``flatten`` (``auto`` is resolved).
    params : dict
        ``{"k", "seed"}`` for ``random`` / ``project`` (plus ``"checksum"``, the SHA-256
        of the float32 projection matrix, for ``project``); ``{}`` otherwise.
    source_shape : tuple of int
        The layer's output shape without the batch dimension.
    n_features : int
        Number of stored features per sample.
    indices : numpy.ndarray or None
        Sorted int64 flat indices kept by ``random`` (stored beside the features so a
        reader knows exactly which units they are); None for the other kinds.
    layer : str
        The dotted layer name the random streams are keyed on.
    """

    kind: str
    params: dict[str, Any]
    source_shape: tuple[int, ...]
    n_features: int
    indices: np.ndarray | None = None
    layer: str = ""
    _matrix: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReductionPlan):
            return NotImplemented
        same_idx = (self.indices is None and other.indices is None) or (
            self.indices is not None and other.indices is not None
            and np.array_equal(self.indices, other.indices))
        return same_idx and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, holds arrays

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (the indices array is stored separately, as an array)."""
        return {
            "kind": self.kind,
            "params": dict(self.params),
            "source_shape": [int(s) for s in self.source_shape],
            "n_features": int(self.n_features),
            "layer": self.layer,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], indices: np.ndarray | None = None) -> ReductionPlan:
        """Re-plan from :meth:`to_dict` output, checking stored indices against a fresh draw."""
        kind = d["kind"]
        params = d.get("params", {})
        spec = f"{kind}:{params['k']}" if kind in NEEDS_K else kind
        plan = plan_reduction(spec, d.get("layer", ""), tuple(d["source_shape"]),
                              seed=params.get("seed", 0), max_flatten_features=None,
                              indices=indices)
        if kind == "project" and "checksum" in params and params["checksum"] != plan.params["checksum"]:
            raise ConfigError(
                "the projection matrix regenerated from the stored seed differs from the one "
                "used when the store was written", where=f"layer {plan.layer!r}",
                expected=params["checksum"], got=plan.params["checksum"],
                fix="re-extract with this numpy version (the random stream changed)")
        return plan

    def projection_matrix(self) -> np.ndarray:
        """The float32 ``(F, K)`` projection matrix of a ``project`` plan (regenerated)."""
        if self.kind != "project":
            raise ConfigError("only 'project' plans have a projection matrix",
                              where=f"layer {self.layer!r}", got=self.kind)
        if self._matrix is None:
            self._matrix = _projection_matrix(self.params["seed"], self.layer,
                                              math.prod(self.source_shape), self.params["k"])
        return self._matrix


def _projection_matrix(seed: int, layer: str, n_in: int, k: int) -> np.ndarray:
    # Entries ~ N(0, 1/K): squared norms are preserved in expectation (Johnson-Lindenstrauss).
    rng = _rng(seed, layer)
    m = rng.standard_normal((n_in, k), dtype=np.float32)
    m *= np.float32(1.0 / math.sqrt(k))
    return m


def _draw_indices(seed: int, layer: str, n: int, k: int) -> np.ndarray:
    idx = _rng(seed, layer).choice(n, size=k, replace=False)
    return np.sort(idx).astype(np.int64)


def plan_reduction(
    spec: str,
    layer_name: str,
    source_shape: tuple[int, ...],
    seed: int = 0,
    max_flatten_features: int | None = 65536,
    indices: np.ndarray | None = None,
) -> ReductionPlan:
    """Decide how one layer's output is reduced, before any data is read.

    Parameters
    ----------
    spec : str
        Reduction spec, see :func:`storage_schema.reductions.parse_reduction`.
    layer_name : str
        Dotted module name; keys the random streams so that they depend on the layer,
        not on its position in the list of tapped layers.
    source_shape : tuple of int
        Layer output shape *without* the batch dimension, e.g. ``(C, H, W)``.
    seed : int, default 0
        Experiment seed; combined with ``sha256(layer_name)``.
    max_flatten_features : int or None, default 65536
        ``flatten`` of a larger layer is refused (None: no limit).
    indices : numpy.ndarray, optional
        Indices stored by an earlier run (``random`` only). They must equal the freshly
        drawn ones: a mismatch means a different seed, layer or numpy random stream, and
        mixing the two would silently store different units under one name.

    Returns
    -------
    ReductionPlan

    Raises
    ------
    ConfigError
        Bad spec, a reduction that does not fit the shape, K larger than the layer,
        a too-large flatten / projection, stored indices that do not match.
    """
    kind, k = parse_reduction(spec)
    shape = tuple(int(s) for s in source_shape)
    where = f"layer {layer_name!r} (output shape {shape})"
    if any(s < 1 for s in shape):
        raise ConfigError("layer output has an empty dimension", where=where,
                          expected="all sizes >= 1", got=shape)
    n_in = math.prod(shape)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError("wrong seed", where=where, expected="an integer >= 0", got=repr(seed))
    seed = int(seed)

    if kind in TOKEN_AXIS_KINDS:
        if len(shape) != 2:
            raise ConfigError(f"'{kind}' reduces the token axis and needs a [batch, tokens, hidden] output",
                              where=where, got=f"{len(shape) + 1}-D output",
                              fix="use it on transformer blocks (`probestore layers` shows their shapes), "
                                  "or an image reduction (gap, flatten, random:K) on this layer")
        params: dict[str, Any] = {"k": k, "seed": seed} if k is not None else {}
        # Rows are chosen per batch by extract.token_reductions; every hidden unit is kept.
        return ReductionPlan(kind, params, shape, shape[1], None, layer_name)

    if kind == "auto":
        if len(shape) == 3:
            kind = "gap"
        elif len(shape) == 1:
            kind = "flatten"
        else:
            raise ConfigError(
                "'auto' only handles 4-D (N,C,H,W) and 2-D (N,F) outputs", where=where,
                got=f"{len(shape) + 1}-D output",
                fix="choose an explicit reduction: gap, gmp, random:K, project:K or flatten")

    if indices is not None and kind != "random":
        raise ConfigError("stored indices given for a non-random reduction", where=where,
                          got=kind, fix="pass indices only for 'random:K' plans")

    if kind in ("gap", "gmp"):
        if len(shape) not in (2, 3):
            raise ConfigError(
                f"'{kind}' pools over spatial positions and needs a 3-D (N,C,L) or "
                "4-D (N,C,H,W) output", where=where, got=f"{len(shape) + 1}-D output",
                fix="use 'flatten', 'random:K' or 'project:K' for this layer")
        return ReductionPlan(kind, {}, shape, shape[0], None, layer_name)

    if kind == "flatten":
        if max_flatten_features is not None and n_in > max_flatten_features:
            raise ConfigError(
                f"'flatten' would store {n_in} features per sample", where=where,
                expected=f"at most {max_flatten_features}", got=n_in,
                fix=("use 'gap' (" + str(shape[0]) + " features) or 'random:K'"
                     if len(shape) == 3 else "use 'random:K' or 'project:K'")
                + " (Alain & Bengio 2016, sec. 3.4), or raise max_flatten_features")
        return ReductionPlan("flatten", {}, shape, n_in, None, layer_name)

    assert k is not None
    if k > n_in:
        raise ConfigError(f"'{kind}:{k}' asks for more features than the layer has",
                          where=where, expected=f"K <= {n_in}", got=k,
                          fix="use a smaller K, or 'flatten'")
    if kind == "random":
        drawn = _draw_indices(seed, layer_name, n_in, k)
        if indices is not None:
            stored = np.asarray(indices)
            if stored.shape != drawn.shape or not np.array_equal(stored, drawn):
                raise ConfigError(
                    "stored random indices differ from the ones drawn for this seed and layer",
                    where=where, expected=f"{k} indices from seed {seed}",
                    got=f"{stored.size} stored indices that do not match",
                    fix="extract into a new run (the seed, layer name or numpy random "
                        "stream changed)")
        return ReductionPlan("random", {"k": k, "seed": seed}, shape, k, drawn, layer_name)

    # project
    if n_in * k > MAX_PROJECT_ELEMENTS:
        raise ConfigError(
            f"'project:{k}' needs a {n_in} x {k} matrix", where=where,
            expected=f"at most {MAX_PROJECT_ELEMENTS} elements", got=n_in * k,
            fix="use 'random:K' (no matrix), 'gap', or a smaller K")
    matrix = _projection_matrix(seed, layer_name, n_in, k)
    checksum = hashlib.sha256(matrix.tobytes()).hexdigest()
    return ReductionPlan("project", {"k": k, "seed": seed, "checksum": checksum}, shape, k,
                         None, layer_name, matrix)


class _Reducer(torch.nn.Module):
    """Common input check: a layer whose shape changes must not be silently mis-reduced."""

    def __init__(self, plan: ReductionPlan, dtype: torch.dtype) -> None:
        super().__init__()
        self.source_shape = tuple(plan.source_shape)
        self.layer = plan.layer
        self.out_dtype = dtype

    def _check(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.source_shape:
            raise DataError(
                "layer output shape differs from the planned one", where=f"layer {self.layer!r}",
                expected=f"(batch, {', '.join(map(str, self.source_shape))})", got=tuple(x.shape),
                fix="feed inputs of the size the reduction was planned for")

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, source_shape={self.source_shape}"


class GlobalPool(_Reducer):
    """Mean (``gap``) or max (``gmp``) over every axis after the channel axis."""

    def __init__(self, plan: ReductionPlan, dtype: torch.dtype) -> None:
        super().__init__(plan, dtype)
        self.kind = plan.kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        dims = tuple(range(2, x.dim()))
        x = x.to(self.out_dtype)  # pool in float32 even when the model runs in half
        return x.mean(dim=dims) if self.kind == "gap" else x.amax(dim=dims)


class Flatten(_Reducer):
    """All features, copied: a view would be overwritten by a following in-place op."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return x.reshape(x.shape[0], -1).to(self.out_dtype, copy=True)


class RandomSubset(_Reducer):
    """The plan's fixed flat indices, via ``index_select`` on the flattened output."""

    def __init__(self, plan: ReductionPlan, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(plan, dtype)
        self.indices: torch.Tensor
        self.register_buffer("indices", torch.as_tensor(plan.indices, dtype=torch.long, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return x.reshape(x.shape[0], -1).index_select(1, self.indices).to(self.out_dtype)


class RandomProjection(_Reducer):
    """``flatten(x) @ W`` with the plan's regenerated Gaussian matrix, autocast off.

    Autocast would run the matmul in half precision and give numbers that depend on the
    caller's autocast settings; the projection is part of the stored data, so it is
    always computed in ``dtype``.
    """

    def __init__(self, plan: ReductionPlan, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(plan, dtype)
        w = torch.from_numpy(plan.projection_matrix()).to(device=device, dtype=dtype)
        self.weight: torch.Tensor
        self.register_buffer("weight", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return x.reshape(x.shape[0], -1).to(self.out_dtype) @ self.weight


def build_reducer(
    plan: ReductionPlan,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """Module mapping a layer output batch to ``[batch, plan.n_features]`` in ``dtype``.

    Parameters
    ----------
    plan : ReductionPlan
    device : str or torch.device, default "cpu"
        Where the layer outputs live; indices / projection matrix are moved there once.
    dtype : torch.dtype, default torch.float32
        Output dtype; must be floating.

    Returns
    -------
    torch.nn.Module
        Stateless apart from fixed buffers: equal inputs give equal outputs on every call.
    """
    if not dtype.is_floating_point:
        raise ConfigError("reducer output dtype must be floating", where=f"layer {plan.layer!r}",
                          got=str(dtype), fix="use torch.float32")
    device = torch.device(device)
    if plan.kind in ("gap", "gmp"):
        mod: torch.nn.Module = GlobalPool(plan, dtype)
    elif plan.kind == "flatten":
        mod = Flatten(plan, dtype)
    elif plan.kind == "random":
        if plan.indices is None:
            raise ConfigError("random plan without indices", where=f"layer {plan.layer!r}",
                              fix="build plans with plan_reduction()")
        mod = RandomSubset(plan, device, dtype)
    elif plan.kind == "project":
        mod = RandomProjection(plan, device, dtype)
    elif plan.kind in ("cls", "mean"):  # every token real (a vision transformer on images)
        from extract.token_pooling import DenseTokenPool

        mod = DenseTokenPool(plan, dtype)
    elif plan.kind in TOKEN_AXIS_KINDS:
        raise ConfigError(f"'{plan.kind}' needs the rows of each batch", where=f"layer {plan.layer!r}",
                          fix="build it with extract.token_reductions.TokenRowReducer (text extraction)")
    else:
        raise ConfigError(f"unknown plan kind {plan.kind!r}", where=f"layer {plan.layer!r}",
                          expected="gap, gmp, flatten, random or project", got=plan.kind)
    return mod.eval()
