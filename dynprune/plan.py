"""PruningPlan: an immutable, hashable description of one way to prune a model.

A plan says *what* to remove, never *how*: which decoder layers are skipped
(identity), which are replaced by a small adapter, and how many query heads and
FFN channels each remaining layer keeps. Which heads and channels go is decided
by the engine from calibrated importance (``dynprune.importance``), so one plan
means the same thing every time it is applied to the same model. A plan may also bound
the attention memory: ``kv`` keeps each layer's first S cached tokens (attention sinks)
and the most recent W (:class:`~dynprune.pruning.kv.KVWindow`), whatever else it removes.

A plan can be checked against a model's geometry (``plan.validate(geometry)``,
or ``PruningPlan(..., geometry=g)`` which validates on creation);
``PrunableLM.apply`` always validates before it touches the model, so an
impossible plan is a ``ValueError`` and never a silent no-op.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from dynprune.pruning.kv import KVWindow
from dynprune.types import ModelGeometry

LayerCounts = Mapping[int, int] | Iterable[tuple[int, int]]


def _int_tuple(name: str, values: Iterable[int]) -> tuple[int, ...]:
    out: list[int] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"{name}: expected integer layer indices, got {v!r}")
        out.append(int(v))
    seen: set[int] = set()
    for v in out:
        if v in seen:
            raise ValueError(f"{name}: layer {v} is listed more than once in {out}")
        seen.add(v)
    return tuple(sorted(out))


def _counts(name: str, values: LayerCounts) -> tuple[tuple[int, int], ...]:
    items = list(values.items()) if isinstance(values, Mapping) else [tuple(p) for p in values]
    out: list[tuple[int, int]] = []
    seen: set[int] = set()
    for item in items:
        if len(item) != 2:
            raise ValueError(f"{name}: expected (layer, kept count) pairs, got {item!r}")
        layer, count = item
        for what, v in (("layer", layer), ("kept count", count)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name}: {what} must be an integer, got {v!r}")
        if layer in seen:
            raise ValueError(f"{name}: layer {layer} is listed more than once")
        seen.add(layer)
        out.append((int(layer), int(count)))
    return tuple(sorted(out))


def _layer_counts(name: str, value: Any) -> dict[int, Any]:
    """``{"<layer>": count}`` (as :meth:`PruningPlan.to_dict` writes it) with integer layer keys."""
    if not isinstance(value, Mapping):
        raise ValueError(f"plan field {name!r} must be an object {{\"<layer>\": count}}, got {value!r:.80}")
    out: dict[int, Any] = {}
    for key, count in value.items():
        text = key.strip() if isinstance(key, str) else None
        if isinstance(key, int) and not isinstance(key, bool):
            out[key] = count
        elif text and re.fullmatch(r"-?[0-9]+", text):
            out[int(text)] = count
        else:
            raise ValueError(
                f"plan field {name!r}: key {key!r} is not a layer index; expected integer layer keys such as \"3\""
            )
    return out


@dataclass(frozen=True)
class PruningPlan:
    """What to remove from a decoder-only model for one forward/generation.

    Args:
        skip: Decoder layers skipped entirely (the residual stream passes through).
        adapters: Decoder layers replaced by an adapter module (hidden -> hidden).
            The module comes from ``modules`` if given there, else from the
            model's adapter slot (``PrunableLM.adapters[layer]``).
        heads: ``{layer: query heads kept}``; the least important heads go,
            GQA-aware (a KV group whose query heads all go loses its K/V rows).
        ffn: ``{layer: FFN channels kept}``; gate/up rows and down columns go.
        modules: ``{layer: nn.Module}`` explicit adapters for layers in ``adapters``.
        kv: A KV-cache window for every running layer (``KVWindow``, or its dict form
            ``{"sinks": 4, "window": 256}`` / ``{"sinks": 4, "fraction": 0.5}``), or None.
        name: A label for tables and plots; not part of equality.
        geometry: When given, the plan is validated against it on creation.

    Example:
        >>> plan = PruningPlan(skip=[20, 21], heads={3: 6}, ffn={5: 1024})
        >>> plan.num_layers_removed
        2
    """

    skip: tuple[int, ...] = ()
    adapters: tuple[int, ...] = ()
    heads: tuple[tuple[int, int], ...] = ()
    ffn: tuple[tuple[int, int], ...] = ()
    modules: tuple[tuple[int, nn.Module], ...] = ()
    kv: KVWindow | None = None
    name: str = field(default="", compare=False)
    geometry: ModelGeometry | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "skip", _int_tuple("skip", self.skip))
        set_(self, "adapters", _int_tuple("adapters", self.adapters))
        set_(self, "heads", _counts("heads", self.heads))
        set_(self, "ffn", _counts("ffn", self.ffn))
        mods = self.modules.items() if isinstance(self.modules, Mapping) else self.modules
        mods = tuple(sorted(((int(i), m) for i, m in mods), key=lambda p: p[0]))
        for layer, module in mods:
            if not isinstance(module, nn.Module):
                raise ValueError(
                    f"modules: layer {layer} maps to {type(module).__name__}, expected nn.Module"
                )
            if layer not in self.adapters:
                raise ValueError(
                    f"modules: layer {layer} has a module but is not in adapters {self.adapters}"
                )
        set_(self, "modules", mods)
        if self.kv is not None and not isinstance(self.kv, KVWindow):
            set_(self, "kv", KVWindow.from_dict(self.kv))
        both = set(self.skip) & set(self.adapters)
        if both:
            raise ValueError(f"layers {sorted(both)} are both skipped and replaced by adapters")
        removed = set(self.skip) | set(self.adapters)
        for kind, counts in (("heads", self.heads), ("ffn", self.ffn)):
            clash = sorted(layer for layer, _ in counts if layer in removed)
            if clash:
                raise ValueError(f"{kind}: layers {clash} are removed by the plan and cannot also be sliced")
        if self.geometry is not None:
            self.validate(self.geometry)

    # ------------------------------------------------------------------ checks
    def validate(self, geometry: ModelGeometry) -> None:
        """Raise ``ValueError`` if this plan cannot be applied to a model of ``geometry``."""
        n = geometry.num_layers
        for kind, layers in (("skip", self.skip), ("adapters", self.adapters)):
            for layer in layers:
                if not 0 <= layer < n:
                    raise ValueError(f"{kind}: layer {layer} out of range 0..{n - 1}")
        slices = (("heads", self.heads, geometry.num_heads, "query heads"),
                  ("ffn", self.ffn, geometry.intermediate_size, "channels"))  # fmt: skip
        for kind, counts, sizes, unit in slices:
            for layer, count in counts:
                if not 0 <= layer < n:
                    raise ValueError(f"{kind}: layer {layer} out of range 0..{n - 1}")
                if not 1 <= count <= sizes[layer]:
                    raise ValueError(f"{kind}: layer {layer} keeps {count} {unit}; expected 1..{sizes[layer]}")
        if self.kv is not None:
            held = self.kv.sinks + (self.kv.window or 0)
            if held >= geometry.max_position:
                raise ValueError(
                    f"kv: sinks {self.kv.sinks} + window {self.kv.window} = {held} tokens reach the context of "
                    f"{geometry.max_position}: the window would never evict; choose sinks + window < "
                    f"{geometry.max_position} or drop kv"
                )
        if len(self.skip) + len(self.adapters) >= n:
            raise ValueError(
                f"the plan removes all {n} decoder layers (skip={list(self.skip)}, adapters={list(self.adapters)});"
                " at least one must stay"
            )

    # -------------------------------------------------------------- properties
    @property
    def is_empty(self) -> bool:
        """True when the plan removes nothing (heads/FFN counts at full size still count as slicing)."""
        return not (self.skip or self.adapters or self.heads or self.ffn or self.kv)

    @property
    def removed_layers(self) -> tuple[int, ...]:
        """Layers skipped or replaced by adapters, sorted."""
        return tuple(sorted(self.skip + self.adapters))

    @property
    def num_layers_removed(self) -> int:
        """Number of decoder layers skipped or replaced by adapters."""
        return len(self.skip) + len(self.adapters)

    def module_for(self, layer: int) -> nn.Module | None:
        """The explicit adapter module this plan carries for ``layer``, if any."""
        for i, m in self.modules:
            if i == layer:
                return m
        return None

    def kept_fraction(self, geometry: ModelGeometry, adapter_bottleneck: int = 64) -> float:
        """Fraction of per-token matmul FLOPs kept, lm_head included.

        Counts the linear layers only (attention projections, FFN, lm_head; an
        adapter as 2 * hidden * bottleneck); attention scores over the context
        and norms are left out, so this is a deterministic proxy of cost, not a timing.
        """
        self.validate(geometry)
        h, d = geometry.hidden_size, geometry.head_dim
        heads, ffn = dict(self.heads), dict(self.ffn)
        full = pruned = float(h * geometry.vocab_size)  # lm_head
        for i in range(geometry.num_layers):
            nq, nkv, nf = geometry.num_heads[i], geometry.num_kv_heads[i], geometry.intermediate_size[i]
            layer_full = 2 * h * nq * d + 2 * h * nkv * d + 3 * h * nf
            full += layer_full
            if i in self.skip:
                continue
            if i in self.adapters:
                pruned += 2 * h * adapter_bottleneck
                continue
            q = heads.get(i, nq)
            # KV groups survive while any of their query heads does; bound it by the kept heads.
            kv = min(nkv, q)
            pruned += 2 * h * q * d + 2 * h * kv * d + 3 * h * ffn.get(i, nf)
        return pruned / full

    # ----------------------------------------------------------- conversions
    def describe(self) -> str:
        """A short human-readable summary, e.g. ``skip[20,21] heads{3:6}``."""
        if self.name:
            return self.name
        parts = []
        if self.skip:
            parts.append("skip[" + ",".join(map(str, self.skip)) + "]")
        if self.adapters:
            parts.append("adapt[" + ",".join(map(str, self.adapters)) + "]")
        if self.heads:
            parts.append("heads{" + ",".join(f"{i}:{c}" for i, c in self.heads) + "}")
        if self.ffn:
            parts.append("ffn{" + ",".join(f"{i}:{c}" for i, c in self.ffn) + "}")
        if self.kv is not None:
            parts.append(f"kv[{self.kv.describe()}]")
        return " ".join(parts) or "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (explicit adapter modules are not serialised, only their layers).

        ``kv`` is written only when the plan has a window, so plans without one serialise as before.
        """
        out: dict[str, Any] = {
            "name": self.name,
            "skip": list(self.skip),
            "adapters": list(self.adapters),
            "heads": {str(i): c for i, c in self.heads},
            "ffn": {str(i): c for i, c in self.ffn},
        }
        if self.kv is not None:
            out["kv"] = self.kv.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], geometry: ModelGeometry | None = None) -> PruningPlan:
        """Inverse of :meth:`to_dict`.

        Raises ``ValueError`` naming the field and the value for anything :meth:`to_dict` cannot
        have written: an unknown field, a ``heads`` / ``ffn`` entry that is not a
        ``{"<layer>": count}`` object, a layer key that is not an integer.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a plan must be a JSON object of plan fields, got {type(data).__name__}")
        unknown = set(data) - {"name", "skip", "adapters", "heads", "ffn", "kv"}
        if unknown:
            raise ValueError(
                f"unknown plan fields {sorted(unknown)}; expected name, skip, adapters, heads, ffn, kv"
            )
        kv = data.get("kv")
        return cls(
            skip=data.get("skip", ()),
            adapters=data.get("adapters", ()),
            heads=_layer_counts("heads", data.get("heads", {})),
            ffn=_layer_counts("ffn", data.get("ffn", {})),
            kv=KVWindow.from_dict(kv) if kv is not None else None,
            name=data.get("name", ""),
            geometry=geometry,
        )


NO_PRUNING = PruningPlan(name="none")
