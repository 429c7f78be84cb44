"""Layer skipping and layer-to-adapter substitution.

Both are one swap of the decoder's ``ModuleList``: skipped layers are left out
of the list (the residual stream passes straight through), adapter layers are
replaced by an :class:`AdapterLayer`. The attention modules that remain are
renumbered 0..k-1 so that the KV cache stays dense: transformers' caches find
the sequence length from slot 0 and index slots by ``self_attn.layer_idx``.
The returned callable undoes the swap and the renumbering exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

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


def swap_layer_stack(
    owner: nn.Module,
    originals: Sequence[nn.Module],
    skip: Sequence[int],
    adapters: Mapping[int, nn.Module],
) -> Callable[[], None]:
    """Replace ``owner.layers`` by the kept layers and adapters; return the undo.

    Args:
        owner: The decoder (e.g. ``LlamaModel``) whose ``layers`` is a ModuleList.
        originals: The unpruned layers, in order.
        skip: Layer indices to drop.
        adapters: ``{layer index: module}`` layers to replace by adapters.
    """
    skipped = set(skip)
    assert not skipped & set(adapters), "a layer cannot be both skipped and adapted"
    assert isinstance(owner.layers, nn.ModuleList), "owner.layers must be a ModuleList"
    old_list = owner.layers
    stack: list[nn.Module] = []
    renumbered: list[tuple[nn.Module, int]] = []
    for i, layer in enumerate(originals):
        if i in skipped:
            continue
        if i in adapters:
            stack.append(AdapterLayer(adapters[i], getattr(layer, "attention_type", "full_attention")))
            continue
        attn = layer.self_attn
        renumbered.append((attn, attn.layer_idx))
        stack.append(layer)
    # Renumber only after the new stack is fully built, so an error above leaves the model as it was.
    for new_idx, (attn, _) in enumerate(renumbered):
        attn.layer_idx = new_idx
    owner.layers = nn.ModuleList(stack)

    def undo() -> None:
        for attn, old_idx in renumbered:
            attn.layer_idx = old_idx
        owner.layers = old_list

    return undo
