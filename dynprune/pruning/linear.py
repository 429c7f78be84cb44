"""Build smaller ``nn.Linear`` layers from slices of a larger one."""

from __future__ import annotations

import torch
from torch import nn


def slice_linear(
    linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> nn.Linear:
    """A new Linear holding ``weight[rows][:, cols]`` (and ``bias[rows]``), contiguous, no grad.

    The new layer owns fresh, contiguous tensors so its matmuls are real smaller
    products; the original layer is not modified.
    """
    if type(linear) is not nn.Linear:
        raise TypeError(
            f"can only slice torch.nn.Linear, got {type(linear).__name__} (quantised layers are not supported)"
        )
    w = linear.weight.detach()
    b = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        w = w.index_select(0, rows)
        b = b.index_select(0, rows) if b is not None else None
    if cols is not None:
        w = w.index_select(1, cols)
    out_f, in_f = w.shape
    new = nn.Linear(in_f, out_f, bias=b is not None, device="meta")
    new.weight = nn.Parameter(w.contiguous(), requires_grad=False)
    if b is not None:
        new.bias = nn.Parameter(b.contiguous(), requires_grad=False)
    return new
