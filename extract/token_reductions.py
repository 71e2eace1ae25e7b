"""Token-axis reductions: which rows a ``[batch, tokens, hidden]`` output gives, padding never stored.

A transformer block outputs one hidden vector per token. What a probe sees as a *row*
depends on the store's unit (SCHEMA.md 1.3, ``dataset.unit``):

* sequence rows: ``cls`` (the first token), ``mean`` (the mean over the sequence's real
  tokens: ``attention_mask == 1``, so special tokens count and padding never does, as in
  sentence-transformers' mean pooling), ``last`` (the last real token);
* token rows: ``tokens`` / ``random_tokens:K`` (one row per chosen token), or a labelled
  word (its first sub-token, or the mean of its sub-tokens).

Every one of them is a weighted sum of token vectors: a row is a *span* ``[start, stop)``
of one sequence of the batch, averaged. :class:`RowSpans` holds the spans of one batch
(built once per batch, on the device, by :mod:`extract.text_runner`), and
:class:`TokenRowReducer` applies them inside the forward hook, so only ``[rows, hidden]``
tensors leave the device. Rows of one token are an ``index_select``; longer spans (a
sequence mean, a word's mean) are one sparse ``[rows, batch * tokens]`` CSR matrix of
weights ``1 / length`` times the flattened output (``torch.sparse.mm``): no dense
matrix, whose size would grow with the square of the batch, and ~50x faster on a CPU
than an ``index_add`` of the selected vectors, which made a 7-layer ``mean`` extraction
of MiniLM cost 25% over its forward pass. Sums run in float32 even when the model runs
in half precision (autocast off).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from probestore.errors import ConfigError, DataError
from storage_schema.reductions import SEQUENCE_KINDS

__all__ = ["RowSpans", "sequence_spans", "BatchRows", "TokenRowReducer", "gather_rows"]


@dataclass
class RowSpans:
    """The rows of one batch: row ``r`` is the mean of tokens ``[start[r], stop[r])`` of sequence ``batch[r]``.

    Attributes
    ----------
    batch, start, stop : numpy.ndarray of int64, shape (rows,)
        Batch-local sequence index and token span of each row, in store order.
    """

    batch: np.ndarray
    start: np.ndarray
    stop: np.ndarray

    def __post_init__(self) -> None:
        self.batch = np.asarray(self.batch, dtype=np.int64)
        self.start = np.asarray(self.start, dtype=np.int64)
        self.stop = np.asarray(self.stop, dtype=np.int64)
        if not (self.batch.shape == self.start.shape == self.stop.shape) or self.batch.ndim != 1:
            raise DataError("row spans differ in length", where="RowSpans",
                            got=f"{self.batch.shape}, {self.start.shape}, {self.stop.shape}")
        if self.batch.size and ((self.stop <= self.start).any() or (self.start < 0).any()):
            raise DataError("empty or negative token span", where="RowSpans",
                            expected="0 <= start < stop for every row")

    def __len__(self) -> int:
        return int(self.batch.size)

    @property
    def single(self) -> bool:
        """Whether every row is one token (an ``index_select`` suffices)."""
        return bool((self.stop - self.start == 1).all())

    def on_device(self, n_tokens: int, device: torch.device) -> _DeviceSpans:
        """Flat token indices (``b * n_tokens + t``), their row and weight, on ``device``."""
        if self.batch.size and int(self.stop.max()) > n_tokens:
            raise DataError("a row's tokens lie beyond the padded batch", where="RowSpans",
                            expected=f"stop <= {n_tokens}", got=int(self.stop.max()))
        lengths = self.stop - self.start
        if self.single:
            flat = self.batch * n_tokens + self.start
            return _DeviceSpans(torch.as_tensor(flat, device=device), None, len(self))
        rows = np.repeat(np.arange(len(self), dtype=np.int64), lengths)
        offsets = np.arange(rows.size, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat = self.batch[rows] * n_tokens + self.start[rows] + offsets
        weight = (1.0 / lengths[rows]).astype(np.float32)
        crow = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the CSR matmul is stable
            warnings.simplefilter("ignore", UserWarning)
            matrix = torch.sparse_csr_tensor(torch.as_tensor(crow, device=device), torch.as_tensor(flat, device=device),
                                             torch.as_tensor(weight, device=device),
                                             size=(len(self), int(self.batch.max() + 1) * n_tokens))
        return _DeviceSpans(None, matrix, len(self))


@dataclass
class _DeviceSpans:
    """One token per row (``index``) or a CSR matrix of span weights (``matrix``)."""

    index: torch.Tensor | None
    matrix: torch.Tensor | None
    n_rows: int


def gather_rows(x: torch.Tensor, spans: _DeviceSpans) -> torch.Tensor:
    """``[batch, tokens, hidden]`` -> float32 ``[rows, hidden]``: each row the mean of its span."""
    flat = x.reshape(-1, x.shape[-1])
    if spans.index is not None:
        return flat.index_select(0, spans.index).float()
    assert spans.matrix is not None
    rows_in = spans.matrix.shape[1]  # the batch up to its last sequence with rows
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.sparse.mm(spans.matrix, flat[:rows_in].float())


def sequence_spans(kind: str, lengths: np.ndarray) -> RowSpans:
    """One row per sequence: ``cls`` (token 0), ``last`` (the last real token) or ``mean`` (all real tokens).

    Parameters
    ----------
    kind : {"cls", "mean", "last"}
    lengths : numpy.ndarray of int
        Real tokens per sequence (``attention_mask.sum(1)``), special tokens included.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if kind not in SEQUENCE_KINDS:
        raise ConfigError(f"{kind!r} is not a sequence reduction", where="sequence_spans",
                          expected=", ".join(SEQUENCE_KINDS), got=repr(kind))
    if (lengths < 1).any():
        raise DataError("a sequence has no tokens", where="sequence_spans", expected="lengths >= 1",
                        got=int(lengths.min()))
    b = np.arange(lengths.size, dtype=np.int64)
    if kind == "cls":
        return RowSpans(b, np.zeros_like(b), np.ones_like(b))
    if kind == "last":
        return RowSpans(b, lengths - 1, lengths)
    return RowSpans(b, np.zeros_like(b), lengths)


class BatchRows:
    """The spans of the current batch, per reduction kind, shared by every reducer of a forward pass.

    :mod:`extract.text_runner` calls :meth:`set` before each forward; each
    :class:`TokenRowReducer` looks up its kind. Token-unit stores have one entry
    (``"rows"``: every layer uses the same row selection); sequence stores one per
    kind used (``cls``, ``mean``, ``last``).
    """

    def __init__(self) -> None:
        self._spans: dict[str, _DeviceSpans] = {}
        self.shape: tuple[int, int] | None = None

    def set(self, shape: tuple[int, int], spans: dict[str, _DeviceSpans]) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self._spans = dict(spans)

    def get(self, key: str) -> _DeviceSpans:
        if key not in self._spans:
            raise ConfigError(f"no rows of kind {key!r} for this batch", where="BatchRows",
                              expected=sorted(self._spans), got=repr(key))
        return self._spans[key]


class TokenRowReducer(torch.nn.Module):
    """Reduce a ``[batch, tokens, hidden]`` layer output to this batch's rows.

    Parameters
    ----------
    key : str
        Which spans of :class:`BatchRows` it applies (``"rows"``, or ``cls`` / ``mean`` / ``last``).
    hidden : int
        The planned hidden width (a model whose width changed is refused, not reduced).
    rows : BatchRows
    layer : str
        For messages.

    Attributes
    ----------
    token_rows : bool
        Always True: tells :class:`extract.layers.LayerTaps` that the reduced tensor's
        first axis is rows, not the batch.
    """

    token_rows = True

    def __init__(self, key: str, hidden: int, rows: BatchRows, layer: str = "") -> None:
        super().__init__()
        self.key, self.hidden, self.rows, self.layer = key, int(hidden), rows, layer

    def expected_rows(self) -> int:
        """Rows this reducer returns for the current batch."""
        return self.rows.get(self.key).n_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.rows.shape
        if x.dim() != 3 or shape is None or tuple(x.shape[:2]) != shape or x.shape[2] != self.hidden:
            raise DataError("layer output is not [batch, tokens, hidden] of the input batch",
                            where=f"layer {self.layer!r}",
                            expected=f"({shape[0] if shape else 'batch'}, {shape[1] if shape else 'tokens'}, "
                                     f"{self.hidden})",
                            got=tuple(x.shape),
                            fix="token reductions apply to outputs with one vector per input token "
                                "(transformer blocks, embeddings); use flatten / random:K for others")
        return gather_rows(x, self.rows.get(self.key))

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, key={self.key!r}, hidden={self.hidden}"
