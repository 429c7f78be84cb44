"""Layer skipping and layer-to-adapter substitution.

Both are one swap of the decoder's ``ModuleList``: skipped layers are left out
of the list (the residual stream passes straight through), and an adapter that
replaces a layer runs inside the kept layer next to it (:class:`AdaptedLayer`:
before the next kept layer, or after the last one). So position ``i`` of the
list always holds the ``i``-th kept attention layer, and while a plan is applied
the model looks exactly like a physically pruned copy (as
``dynprune.compress.removal.remove_layers`` makes one):

- the kept attention modules are renumbered 0..k-1 so the KV cache stays dense
  (transformers' caches find the sequence length from slot 0 and index slots by
  ``self_attn.layer_idx``);
- ``config.num_hidden_layers`` is k, and ``config.layer_types`` (Qwen2 / Qwen3
  sliding-window layouts) lists the kept layers' own types. transformers picks a
  layer's attention mask by its *position* (``causal_mask_mapping[config.layer_types[i]]``
  in ``Qwen2Model.forward``) and sizes ``DynamicCache(config=...)`` from the config
  (one ``DynamicSlidingWindowLayer`` per sliding layer, one slot per layer:
  ``cache_utils.get_layer_types_and_kwargs``); left unchanged, a skip shifts every
  later layer into another layer's mask and cache type. Each attention module keeps
  its own ``sliding_window`` (set at construction), so with the config updated
  mask, cache slot and attention agree for every kept layer.

:func:`build_layer_stack` does the work once per layout (the caller caches it);
:func:`apply_layer_stack` is then one attribute swap plus the renumbering and the
config update, and returns the callable that undoes them exactly (the original
list and config values, the same objects).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class AdaptedLayer(nn.Module):
    """A kept decoder layer with the adapters of removed neighbours folded in.

    ``before`` run on the hidden states, then the layer (with every argument the
    decoder passes: mask, cache, rotary), then ``after``. An adapter maps hidden
    states to hidden states (any residual is the adapter's own business); it has
    no attention and takes no KV-cache slot or mask.
    """

    def __init__(self, layer: nn.Module, before: Sequence[nn.Module] = (), after: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.layer = layer
        self.before = nn.ModuleList(before)
        self.after = nn.ModuleList(after)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Adapters before, the layer, adapters after."""
        for adapter in self.before:
            hidden_states = adapter(hidden_states)
        hidden_states = self.layer(hidden_states, *args, **kwargs)
        for adapter in self.after:
            hidden_states = adapter(hidden_states)
        return hidden_states


@dataclass(frozen=True)
class LayerStack:
    """A pruned layer list and the renumbering and config values it needs.

    Attributes:
        modules: The kept decoder layers (adapters folded in), in order.
        renumber: ``(attention module, index while applied, original index)`` per kept layer.
        layer_types: The kept layers' own ``config.layer_types`` entries, or None when the
            config has no ``layer_types``.
    """

    modules: nn.ModuleList
    renumber: tuple[tuple[nn.Module, int, int], ...]
    layer_types: tuple[str, ...] | None


def build_layer_stack(
    originals: Sequence[nn.Module],
    skip: Sequence[int],
    adapters: Mapping[int, nn.Module],
    layer_types: Sequence[str] | None = None,
) -> LayerStack:
    """The layer list without ``skip`` and with ``adapters`` in place; touches no model.

    ``layer_types`` is the unpruned ``config.layer_types`` (one entry per original layer), if any.
    """
    skipped = set(skip)
    assert not skipped & set(adapters), "a layer cannot be both skipped and adapted"
    assert len(skipped) + len(adapters) < len(originals), "at least one layer must stay"
    if layer_types is not None:
        assert len(layer_types) == len(originals), f"{len(layer_types)} layer types for {len(originals)} layers"
    kept: list[int] = []
    before: dict[int, list[nn.Module]] = {}
    pending: list[nn.Module] = []
    for i in range(len(originals)):
        if i in skipped:
            continue
        if i in adapters:
            pending.append(adapters[i])
            continue
        before[i], pending = pending, []
        kept.append(i)
    after = pending  # adapters past the last kept layer run after it
    stack: list[nn.Module] = []
    renumber: list[tuple[nn.Module, int, int]] = []
    for pos, i in enumerate(kept):
        layer = originals[i]
        tail = after if i == kept[-1] else []
        stack.append(AdaptedLayer(layer, before[i], tail) if before[i] or tail else layer)
        renumber.append((layer.self_attn, pos, i))
    types = tuple(layer_types[i] for i in kept) if layer_types is not None else None
    return LayerStack(nn.ModuleList(stack), tuple(renumber), types)


def apply_layer_stack(owner: nn.Module, stack: LayerStack, config: Any) -> Callable[[], None]:
    """Put ``stack`` in ``owner.layers``, renumber attention and set ``config``'s layer count and types.

    Returns the undo, which puts back the original list, indices and config values (the same objects).
    """
    assert isinstance(owner.layers, nn.ModuleList), "owner.layers must be a ModuleList"
    old_list = owner.layers
    old_count = config.num_hidden_layers
    old_types = getattr(config, "layer_types", None)
    for attn, new_idx, _ in stack.renumber:
        attn.layer_idx = new_idx
    owner.layers = stack.modules
    config.num_hidden_layers = len(stack.modules)
    if stack.layer_types is not None:
        config.layer_types = list(stack.layer_types)

    def undo() -> None:
        for attn, _, old_idx in stack.renumber:
            attn.layer_idx = old_idx
        owner.layers = old_list
        config.num_hidden_layers = old_count
        if stack.layer_types is not None:
            config.layer_types = old_types

    return undo
