"""``cls`` and ``mean`` of a vision transformer block: every token real, one row per image.

A ViT block outputs ``[batch, tokens, hidden]``: the class token first, then one token
per patch (timm's and transformers' layout). On images there is no padding, so the
sequence reductions need no attention mask and no per-batch row spans (what the text
path, :mod:`extract.token_reductions`, builds): ``cls`` is token 0, ``mean`` the mean
over all tokens, the class token included (as the mean of a text sequence includes its
special tokens). Both are linear in the block's output, and both are computed in
float32 inside the forward hook like the other reducers of :mod:`extract.reductions`.
``last`` (the last patch, an arbitrary corner of the image) and the token-row
reductions are refused on images: an image store has one row per image.
"""

from __future__ import annotations

import torch

from extract.reductions import ReductionPlan, _Reducer
from probestore.errors import ConfigError

__all__ = ["DENSE_TOKEN_KINDS", "DenseTokenPool"]

#: The token-axis reductions an image (every token real) supports.
DENSE_TOKEN_KINDS = ("cls", "mean")


class DenseTokenPool(_Reducer):
    """``[batch, tokens, hidden]`` -> ``[batch, hidden]``: the first token, or the mean of all."""

    def __init__(self, plan: ReductionPlan, dtype: torch.dtype) -> None:
        if plan.kind not in DENSE_TOKEN_KINDS:
            raise ConfigError(f"'{plan.kind}' is not a reduction of image tokens", where=f"layer {plan.layer!r}",
                              expected=" or ".join(DENSE_TOKEN_KINDS) + " (one row per image)",
                              got=plan.kind, fix="use cls or mean on a vision transformer's blocks")
        super().__init__(plan, dtype)
        self.kind = plan.kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if self.kind == "cls":
            return x[:, 0, :].to(self.out_dtype, copy=True)
        return x.to(self.out_dtype).mean(dim=1)
