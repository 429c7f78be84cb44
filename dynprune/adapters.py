"""Bottleneck adapters that stand in for decoder layers: the module and attaching it to a model.

An adapter replaces one decoder layer of a plan (``PruningPlan(adapters=[i])``): the
decoder then runs ``hidden -> adapter(hidden)`` at that position instead of the layer.
Each adapter is ``x + up(relu(down(x)))`` with ``down: hidden -> bottleneck`` and
``up: bottleneck -> hidden`` (the thesis: bottleneck 64, ReLU, residual). ``up`` starts
at zero, so a fresh adapter is the identity, i.e. exactly what skipping the layer does.

Training them is :mod:`dynprune.adapter_training`; their file is :mod:`dynprune.adapter_files`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from dynprune.models import PrunableLM


__all__ = ["DEFAULT_BOTTLENECK", "BottleneckAdapter", "adapter_layers", "attach_adapters"]

DEFAULT_BOTTLENECK = 64
FILE_FORMAT = "dynprune-adapters/1"
PARAMS = ("down.weight", "down.bias", "up.weight", "up.bias")
"""The tensors of one adapter, as its file stores them."""


# ----------------------------------------------------------------------------- module


class BottleneckAdapter(nn.Module):
    """``x + up(relu(down(x)))``: a residual bottleneck MLP that stands in for one decoder layer.

    ``up`` (weight and bias) starts at zero, so a fresh adapter is the identity and
    replacing a layer by it is exactly skipping the layer; training moves it toward the layer.

    Args:
        hidden: Width of the residual stream (the model's hidden size).
        bottleneck: Width of the bottleneck (the thesis used 64).
        dtype, device: Where the parameters live.
    """

    def __init__(
        self,
        hidden: int,
        bottleneck: int = DEFAULT_BOTTLENECK,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if hidden < 1 or bottleneck < 1:
            raise ValueError(f"hidden and bottleneck must be >= 1, got {hidden} and {bottleneck}")
        self.hidden = hidden
        self.bottleneck = bottleneck
        self.down = nn.Linear(hidden, bottleneck, dtype=dtype, device=device)
        self.up = nn.Linear(bottleneck, hidden, dtype=dtype, device=device)
        # Zero up-projection: the residual branch adds nothing until training moves it.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual plus the bottleneck branch: ``x + W_up relu(W_down x + b_down) + b_up``."""
        return x + self.up(torch.relu(self.down(x)))

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, bottleneck={self.bottleneck}"


def adapter_layers(lm: PrunableLM, layers: Sequence[int] | None) -> list[int]:
    """``layers`` sorted (all of ``lm``'s when None); ``ValueError`` naming a layer out of range."""
    n = lm.geometry.num_layers
    out = list(range(n)) if layers is None else sorted(layers)
    for i in out:
        if not 0 <= i < n:
            raise ValueError(f"layer {i} out of range 0..{n - 1}")
    return out


def attach_adapters(lm: PrunableLM, adapters: Mapping[int, nn.Module]) -> None:
    """Put adapters in ``lm.adapters`` (moved to its device and dtype, eval mode) for plans with ``adapters``.

    Existing slots for other layers are kept; a slot for the same layer is replaced.
    """
    if lm.active_plan is not None:
        raise RuntimeError("attach adapters outside lm.apply(...)")
    adapter_layers(lm, list(adapters))
    hidden = lm.geometry.hidden_size
    for i, m in adapters.items():
        width = getattr(m, "hidden", hidden)
        if width != hidden:
            raise ValueError(f"adapter for layer {i} has hidden size {width}; the model's is {hidden}")
    for i, m in adapters.items():
        lm.adapters[int(i)] = m.to(device=lm.device, dtype=lm.dtype).eval().requires_grad_(False)
