"""FFN channel slicing of gated MLPs (``down(act(gate(x)) * up(x))``).

Removing channel ``c`` removes row ``c`` of gate and up and column ``c`` of
down: the product of smaller matrices equals the full MLP with those channels'
activations forced to zero. Sliced weights are built once per (layer, kept
count) and cached by the caller; applying is three attribute swaps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dynprune.pruning.linear import slice_linear


@dataclass(frozen=True)
class FFNSlice:
    """Sliced projections of one MLP.

    Attributes:
        kept: Indices of the kept channels, ascending.
        gate, up, down: The sliced linear layers.
    """

    kept: tuple[int, ...]
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear


def build_ffn_slice(
    projections: tuple[nn.Linear, nn.Linear, nn.Linear], scores: torch.Tensor, n_keep: int
) -> FFNSlice:
    """Keep the ``n_keep`` channels with the highest ``scores`` (ties: lower index first).

    ``projections`` are the layer's unpruned ``(gate_proj, up_proj, down_proj)``.
    """
    gate, up, down = projections
    n = gate.out_features
    assert scores.numel() == n, f"expected {n} channel scores, got {scores.numel()}"
    assert 1 <= n_keep <= n, f"kept channels must be in 1..{n}, got {n_keep}"
    # Stable sort on the negated scores keeps the ranking deterministic under ties.
    order = torch.sort(-scores.double(), stable=True).indices[:n_keep]
    kept = torch.sort(order).values.to(gate.weight.device)
    return FFNSlice(
        kept=tuple(kept.tolist()),
        gate=slice_linear(gate, rows=kept),
        up=slice_linear(up, rows=kept),
        down=slice_linear(down, cols=kept),
    )


def apply_ffn_slice(mlp: nn.Module, slc: FFNSlice) -> Callable[[], None]:
    """Swap the MLP's projections for the sliced ones; return the undo."""
    old = (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    mlp.gate_proj, mlp.up_proj, mlp.down_proj = slc.gate, slc.up, slc.down

    def undo() -> None:
        mlp.gate_proj, mlp.up_proj, mlp.down_proj = old

    return undo
