"""Turn calibrated importance and a pruning amount into a :class:`PruningPlan`.

These are the recipes the action tables and baselines use:

- :func:`layers_plan`: remove ``k`` layers, chosen by lowest block influence
  (ShortGPT) or simply the last ``k`` before the final layer; skipped or adapted.
- :func:`heads_plan`: remove a fraction of all query heads, least important first
  across the whole model, at least one head kept per layer.
- :func:`ffn_plan`: remove a fraction of all FFN channels the same way.
"""

from __future__ import annotations

import math

from dynprune.plan import PruningPlan
from dynprune.types import Importance, ModelGeometry


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction removed must be in [0, 1), got {fraction}")


def layer_order(importance: Importance, by: str = "influence") -> list[int]:
    """Layers in the order they should be removed.

    ``"influence"``: ascending block influence (ShortGPT); the first layer is
    never proposed since every model tried breaks without it. ``"last"``: from
    the second-to-last layer backwards (the final layer shapes the logits and
    stays).
    """
    n = len(importance.block_influence)
    if by == "influence":
        bi = importance.block_influence
        return sorted(range(1, n), key=lambda i: (bi[i], i))
    if by == "last":
        return list(range(n - 2, -1, -1))
    raise ValueError(f"layer order must be 'influence' or 'last', got {by!r}")


def layers_plan(
    importance: Importance,
    geometry: ModelGeometry,
    k: int,
    *,
    by: str = "influence",
    adapters: bool = False,
    name: str = "",
) -> PruningPlan:
    """Remove ``k`` layers chosen by ``by``; replaced by adapters when ``adapters``."""
    if not 0 <= k < geometry.num_layers:
        raise ValueError(f"layers removed must be in 0..{geometry.num_layers - 1}, got {k}")
    chosen = layer_order(importance, by)[:k]
    kw = {"adapters": chosen} if adapters else {"skip": chosen}
    return PruningPlan(**kw, name=name, geometry=geometry)


def _global_counts(scores: tuple[tuple[float, ...], ...], fraction: float) -> dict[int, int]:
    """Per-layer kept counts after removing the globally least important ``fraction`` of units."""
    units = [(s, layer, j) for layer, row in enumerate(scores) for j, s in enumerate(row)]
    n_remove = int(math.floor(fraction * len(units) + 1e-9))
    kept = {layer: len(row) for layer, row in enumerate(scores)}
    for _, layer, _ in sorted(units):
        if n_remove == 0:
            break
        if kept[layer] > 1:  # every layer keeps at least one unit
            kept[layer] -= 1
            n_remove -= 1
    return {layer: k for layer, k in kept.items() if k < len(scores[layer])}


def heads_plan(
    importance: Importance, geometry: ModelGeometry, fraction: float, name: str = ""
) -> PruningPlan:
    """Remove ``fraction`` of all query heads, least important first across layers."""
    _check_fraction(fraction)
    return PruningPlan(heads=_global_counts(importance.heads, fraction), name=name, geometry=geometry)


def ffn_plan(importance: Importance, geometry: ModelGeometry, fraction: float, name: str = "") -> PruningPlan:
    """Remove ``fraction`` of all FFN channels, least important first across layers."""
    _check_fraction(fraction)
    return PruningPlan(ffn=_global_counts(importance.channels, fraction), name=name, geometry=geometry)
