"""GQA-aware attention-head slicing.

In grouped-query attention (GQA) query head ``h`` reads key/value head
``h // group_size``. Slicing keeps the ``n`` most important query heads; a KV
group whose query heads all go loses its K and V rows too, so the K/V
projections and the KV cache shrink with it. The kept heads keep their
original order, so the heads of one group stay contiguous.

When every kept group keeps the same number of query heads the layer is an
ordinary (smaller) GQA layer and transformers' own attention runs it with
``num_key_value_groups`` set to that number. When the counts differ (ragged
groups) there is no ``repeat_kv`` factor that fits, so the layer routes through
a registered attention function, ``dynprune_gqa``, that gathers each query
head's K/V head by index and then calls the model's own attention function.
Either way the matmuls are real smaller products, never masks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from dynprune.pruning.linear import slice_linear

RAGGED_ATTENTION = "dynprune_gqa"


def _ragged_gqa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention for ragged GQA groups: gather K/V per query head, then run the base attention."""
    index = module._dynprune_kv_index
    # key/value: [batch, kept kv heads, seq, head_dim] -> [batch, kept query heads, seq, head_dim]
    key = key.index_select(1, index)
    value = value.index_select(1, index)
    base_name = module._dynprune_base_attention
    if base_name == "eager" or base_name not in ALL_ATTENTION_FUNCTIONS:
        from transformers.models.llama.modeling_llama import eager_attention_forward

        base = eager_attention_forward
    else:
        base = ALL_ATTENTION_FUNCTIONS[base_name]
    return base(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(RAGGED_ATTENTION, _ragged_gqa_attention)


@dataclass(frozen=True)
class HeadSlice:
    """Sliced projections of one attention module.

    Attributes:
        kept_heads: Kept query heads (original indices, ascending).
        kept_groups: Kept KV heads (original indices, ascending).
        q, k, v, o: The sliced projections.
        num_key_value_groups: Query heads per kept KV head when uniform, else 1.
        kv_index: For ragged groups, the kept KV head each kept query head reads; else None.
    """

    kept_heads: tuple[int, ...]
    kept_groups: tuple[int, ...]
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    num_key_value_groups: int
    kv_index: torch.Tensor | None

    @property
    def ragged(self) -> bool:
        """True when kept groups keep different numbers of query heads."""
        return self.kv_index is not None


def _rows(units: torch.Tensor, size: int) -> torch.Tensor:
    """Row indices of whole units (heads) of ``size`` rows each."""
    return (units[:, None] * size + torch.arange(size, device=units.device)[None, :]).reshape(-1)


def build_head_slice(
    projections: tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear],
    head_dim: int,
    scores: torch.Tensor,
    n_keep: int,
    num_kv_heads: int,
) -> HeadSlice:
    """Keep the ``n_keep`` query heads with the highest ``scores`` (ties: lower index first).

    ``projections`` are the layer's unpruned ``(q_proj, k_proj, v_proj, o_proj)``.
    """
    q_proj, k_proj, v_proj, o_proj = projections
    d = head_dim
    n_heads = q_proj.out_features // d
    assert scores.numel() == n_heads, f"expected {n_heads} head scores, got {scores.numel()}"
    assert 1 <= n_keep <= n_heads, f"kept heads must be in 1..{n_heads}, got {n_keep}"
    assert n_heads % num_kv_heads == 0, f"{n_heads} query heads do not split into {num_kv_heads} KV groups"
    group_size = n_heads // num_kv_heads
    device = q_proj.weight.device
    order = torch.sort(-scores.double(), stable=True).indices[:n_keep]
    kept = torch.sort(order).values
    groups_of_kept = kept // group_size
    kept_groups, counts = torch.unique_consecutive(groups_of_kept, return_counts=True)
    uniform = bool((counts == counts[0]).all())
    if uniform:
        n_groups, kv_index = int(counts[0]), None
    else:
        # position of each kept query head's group among the kept groups
        n_groups = 1
        kv_index = torch.searchsorted(kept_groups, groups_of_kept).to(device)
    q_rows = _rows(kept, d).to(device)
    kv_rows = _rows(kept_groups, d).to(device)
    return HeadSlice(
        kept_heads=tuple(kept.tolist()),
        kept_groups=tuple(kept_groups.tolist()),
        q=slice_linear(q_proj, rows=q_rows),
        k=slice_linear(k_proj, rows=kv_rows),
        v=slice_linear(v_proj, rows=kv_rows),
        o=slice_linear(o_proj, cols=q_rows),
        num_key_value_groups=n_groups,
        kv_index=kv_index,
    )


_RAGGED_CONFIGS: dict[int, Any] = {}


def _ragged_config(config: Any) -> Any:
    """A shallow copy of ``config`` whose attention implementation is the ragged-GQA function."""
    key = id(config)
    cached = _RAGGED_CONFIGS.get(key)
    if cached is None or cached[0] is not config:
        clone = copy.copy(config)
        clone._attn_implementation = RAGGED_ATTENTION
        cached = (config, clone)
        _RAGGED_CONFIGS[key] = cached
    return cached[1]


def apply_head_slice(attn: nn.Module, slc: HeadSlice) -> Callable[[], None]:
    """Swap the attention module's projections for the sliced ones; return the undo."""
    old = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, attn.num_key_value_groups, attn.config)
    attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj = slc.q, slc.k, slc.v, slc.o
    attn.num_key_value_groups = slc.num_key_value_groups
    if slc.ragged:
        attn._dynprune_kv_index = slc.kv_index
        attn._dynprune_base_attention = attn.config._attn_implementation
        attn.config = _ragged_config(attn.config)

    def undo() -> None:
        attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, attn.num_key_value_groups, attn.config = old
        if slc.ragged:
            del attn._dynprune_kv_index
            del attn._dynprune_base_attention

    return undo
