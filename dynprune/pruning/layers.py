"""Layer skipping and layer-to-adapter substitution.

Both are one swap of the decoder's ``ModuleList``: skipped layers are left out
of the list (the residual stream passes straight through), adapter layers are
replaced by an :class:`AdapterLayer`. The attention modules that remain are
renumbered 0..k-1 so that the KV cache stays dense: transformers' caches find
the sequence length from slot 0 and index slots by ``self_attn.layer_idx``.

:func:`build_layer_stack` does the work once per layout (the caller caches it);
:func:`apply_layer_stack` is then one attribute swap plus the renumbering, and
returns the callable that undoes both exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn


class AdapterLayer(nn.Module):
    """Stands in for a decoder layer: ``hidden -> adapter(hidden)``.

    It has no attention and so takes no KV-cache slot. The adapter maps hidden
    states to hidden states (any residual is the adapter's own business).
    """

    def __init__(self, adapter: nn.Module, attention_type: str = "full_attention") -> None:
        super().__init__()
        self.adapter = adapter
        # Some decoders (Qwen2, Mistral) pick the mask by ``layer.attention_type``.
        self.attention_type = attention_type

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        """Apply the adapter; the decoder's other arguments (mask, cache, rotary) are ignored."""
        return self.adapter(hidden_states)


@dataclass(frozen=True)
class LayerStack:
    """A pruned layer list and the attention renumbering it needs.

    Attributes:
        modules: The kept decoder layers and adapter layers, in order.
        renumber: ``(attention module, index while applied, original index)`` per kept layer.
    """

    modules: nn.ModuleList
    renumber: tuple[tuple[nn.Module, int, int], ...]


def build_layer_stack(
    originals: Sequence[nn.Module], skip: Sequence[int], adapters: Mapping[int, nn.Module]
) -> LayerStack:
    """The layer list without ``skip`` and with ``adapters`` in place; touches no model."""
    skipped = set(skip)
    assert not skipped & set(adapters), "a layer cannot be both skipped and adapted"
    stack: list[nn.Module] = []
    renumber: list[tuple[nn.Module, int, int]] = []
    for i, layer in enumerate(originals):
        if i in skipped:
            continue
        if i in adapters:
            stack.append(AdapterLayer(adapters[i], getattr(layer, "attention_type", "full_attention")))
            continue
        renumber.append((layer.self_attn, len(renumber), i))
        stack.append(layer)
    return LayerStack(nn.ModuleList(stack), tuple(renumber))


def apply_layer_stack(owner: nn.Module, stack: LayerStack) -> Callable[[], None]:
    """Put ``stack`` in ``owner.layers`` and renumber attention; return the undo."""
    assert isinstance(owner.layers, nn.ModuleList), "owner.layers must be a ModuleList"
    old_list = owner.layers
    for attn, new_idx, _ in stack.renumber:
        attn.layer_idx = new_idx
    owner.layers = stack.modules

    def undo() -> None:
        for attn, _, old_idx in stack.renumber:
            attn.layer_idx = old_idx
        owner.layers = old_list

    return undo
