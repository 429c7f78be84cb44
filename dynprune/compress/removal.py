"""Static layer removal: choose decoder layers to drop and delete them from a copy of the model.

Three ways to choose (``SELECTIONS``):

- ``"last"``: the last ``k`` layers (the small-system recipe drops the last layer of Llama-3.2-1B).
- ``"block_influence"``: the ``k`` layers with the lowest block influence
  ``BI_i = 1 - E_t[cos(x_i, x_{i+1})]`` (ShortGPT, Men et al. 2024, eq. 1), from the
  model's calibrated importance (:mod:`dynprune.importance`).
- ``"angular"``: the contiguous block of ``k`` layers ``[l, l+k)`` whose input and output are
  closest in angular distance ``d(x_l, x_{l+k}) = arccos(cos(x_l, x_{l+k})) / pi``
  (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers", eq. 7).
  The paper measures at the last token; here the distance is averaged over every token of
  the calibration windows (short windows would leave few last tokens, a noisy estimate).

:func:`remove_layers` edits the module list, renumbers the attention ``layer_idx`` (the KV
cache is indexed by it) and updates the config so the model saves and reloads as a
smaller Llama.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from dynprune.models import PrunableLM

SELECTIONS = ("last", "block_influence", "angular")


def _check_k(k: int, num_layers: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool):
        raise ValueError(f"k (layers to remove) must be an int, got {k!r}")
    if not 1 <= k < num_layers:
        raise ValueError(
            f"k={k} layers to remove is out of range: a {num_layers}-layer model can lose 1..{num_layers - 1} "
            "(removing every layer leaves no model)"
        )


@torch.inference_mode()
def angular_distances(lm: PrunableLM, windows: torch.Tensor, k: int, batch_size: int = 8) -> list[float]:
    """Mean angular distance ``arccos(cos(x_l, x_{l+k})) / pi`` for every start ``l`` in ``0..L-k``.

    ``x_l`` is the residual stream entering layer ``l`` (``x_L`` leaves the last layer, before
    the final norm), recorded with hooks over ``windows`` (``[n, seq_len]`` token ids).
    """
    n_layers = lm.geometry.num_layers
    _check_k(k, n_layers)
    layers = lm._layers
    sums = torch.zeros(n_layers - k + 1, dtype=torch.float64)
    count = 0
    states: list[torch.Tensor] = []
    handles = [layers[0].register_forward_pre_hook(lambda m, a, kw: states.append(_hidden(a, kw)), with_kwargs=True)]
    for layer in layers:
        handles.append(layer.register_forward_hook(lambda m, a, kw, out: states.append(_first(out)), with_kwargs=True))
    try:
        for start in range(0, windows.shape[0], batch_size):
            states.clear()
            batch = windows[start : start + batch_size].to(lm.device)
            lm.model(input_ids=batch, use_cache=False, logits_to_keep=1)
            if len(states) != n_layers + 1:
                raise RuntimeError(f"recorded {len(states)} hidden states, expected {n_layers + 1}")
            for l0 in range(n_layers - k + 1):
                cos = torch.nn.functional.cosine_similarity(states[l0].double(), states[l0 + k].double(), dim=-1)
                sums[l0] += (torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi).sum().cpu()
            count += batch.numel()
    finally:
        for h in handles:
            h.remove()
    return (sums / count).tolist()


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _first(out: torch.Tensor | tuple) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def select_layers(
    lm: PrunableLM, selection: str, k: int, windows: torch.Tensor | None = None
) -> tuple[int, ...]:
    """The ``k`` layer indices (sorted) that ``selection`` removes; ``windows`` are needed for ``"angular"``."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    n = lm.geometry.num_layers
    _check_k(k, n)
    if selection == "last":
        return tuple(range(n - k, n))
    if selection == "block_influence":
        bi = lm.importance.block_influence
        # ShortGPT: drop the layers that change the residual stream least.
        return tuple(sorted(sorted(range(n), key=lambda i: bi[i])[:k]))
    if windows is None:
        raise ValueError("selection 'angular' needs calibration windows")
    dist = angular_distances(lm, windows, k)
    # Gromov et al.: the block [l, l+k) whose output is closest to its input.
    start = min(range(len(dist)), key=lambda i: dist[i])
    return tuple(range(start, start + k))


def remove_layers(model: nn.Module, layers: Sequence[int]) -> nn.Module:
    """Delete decoder ``layers`` from ``model`` in place and return it (a smaller, valid model).

    Raises ``ValueError`` for an index out of range, a repeated index, an empty list or all layers.
    """
    decoder = model.model
    n = len(decoder.layers)
    drop = [int(i) for i in layers]
    if not drop:
        raise ValueError("no layers to remove: expected at least one layer index")
    bad = [i for i in drop if not 0 <= i < n]
    if bad:
        raise ValueError(f"layer index(es) {bad} out of range 0..{n - 1}")
    if len(set(drop)) != len(drop):
        raise ValueError(f"layer indices repeat: {drop}")
    if len(drop) >= n:
        raise ValueError(f"cannot remove all {n} layers: at least one must remain")
    keep = [i for i in range(n) if i not in set(drop)]
    decoder.layers = nn.ModuleList([decoder.layers[i] for i in keep])
    for new_idx, layer in enumerate(decoder.layers):
        # The KV cache is indexed by layer_idx: renumber so the kept layers use slots 0..n-k-1.
        layer.self_attn.layer_idx = new_idx
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = new_idx
    cfg = model.config
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None) is not None:  # Qwen2/3 sliding-window layout
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    return model


def removed_copy(lm: PrunableLM, layers: Sequence[int]) -> nn.Module:
    """A deep copy of ``lm.model`` with ``layers`` removed (the source model is untouched)."""
    if lm.active_plan is not None:
        raise RuntimeError("copy the full model: call outside lm.apply(...)")
    model = copy.deepcopy(lm.model)
    return remove_layers(model, layers)
