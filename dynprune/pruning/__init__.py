"""Reversible pruning ops: one short function per op, each returning its undo.

- :mod:`dynprune.pruning.layers`: skip decoder layers or replace them by adapters.
- :mod:`dynprune.pruning.heads`: GQA-aware query-head slicing.
- :mod:`dynprune.pruning.ffn`: FFN channel slicing.

``PrunableLM.apply(plan)`` composes them; nothing here reloads or copies a model.
"""

from dynprune.pruning.ffn import FFNSlice, apply_ffn_slice, build_ffn_slice
from dynprune.pruning.heads import HeadSlice, apply_head_slice, build_head_slice
from dynprune.pruning.layers import AdaptedLayer, LayerStack, apply_layer_stack, build_layer_stack

__all__ = [
    "AdaptedLayer",
    "FFNSlice",
    "HeadSlice",
    "LayerStack",
    "apply_layer_stack",
    "build_layer_stack",
    "apply_ffn_slice",
    "apply_head_slice",
    "build_ffn_slice",
    "build_head_slice",
]
