"""Action tables: named entries that map a discrete action id to a pruning plan.

A table is data: a list of :class:`ActionEntry` (name, kind, amount), so a user can
pass their own. The default follows CASRAP's table (RL-driven runtime pruning: a Double
DQN picks a plan per prompt): none; attention heads 5/10/15 %; layers 5/10/15/25 %; FFN
channels 10/25 %. Layer entries skip the ``k = round(amount * L)`` (at least 1) layers of
lowest block influence, or replace them by adapters when adapters are loaded.

The ``"kv"`` table (opt-in: ``make_table("kv")``, ``action_table="kv"``) is the default table
plus KV-cache windows (``dynprune.pruning.kv``): ``kv-50%`` / ``kv-75%`` remove that share of
each layer's cached tokens (keeping 4 attention sinks and the most recent 50 % / 25 % of the
context), ``kv-w256`` keeps 4 sinks and the last 256 tokens (memory bounded whatever the length).
The default table, and the latency model and reward table built on it, stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynprune.plan import PruningPlan
from dynprune.pruning.kv import KVWindow
from dynprune.selection import ffn_plan, heads_plan, layers_plan

KINDS = ("none", "heads", "layers", "ffn", "kv", "plan")


@dataclass(frozen=True)
class ActionEntry:
    """One entry of an action table.

    Args:
        name: Label shown in tables and plots (unique within a table).
        kind: ``"none"``, ``"heads"``, ``"layers"``, ``"ffn"``, ``"kv"`` or ``"plan"``.
        amount: Fraction removed, in (0, 1), for heads / layers / ffn, and for kv: the share of the
            context's cached tokens evicted (``kv-75%`` keeps the most recent 25 %).
        plan: For ``kind="plan"``: an explicit plan as ``PruningPlan.to_dict()``.
        layer_order: For ``"layers"``: ``"influence"`` (ShortGPT) or ``"last"``.
        window: For ``"kv"`` instead of ``amount``: recent tokens kept (a bounded cache).
        sinks: For ``"kv"``: initial tokens always kept (StreamingLLM's attention sinks).
    """

    name: str
    kind: str
    amount: float = 0.0
    plan: Mapping[str, Any] | None = field(default=None, compare=False)
    layer_order: str = "influence"
    window: int = 0
    sinks: int = 4

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("action name must be non-empty")
        if self.kind not in KINDS:
            raise ValueError(f"action {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind in ("heads", "layers", "ffn") and not 0.0 < self.amount < 1.0:
            raise ValueError(f"action {self.name!r}: amount must be in (0, 1), got {self.amount}")
        if self.kind == "kv":
            if (self.window > 0) == (0.0 < self.amount < 1.0):
                raise ValueError(
                    f"action {self.name!r}: a kv entry needs an amount in (0, 1) or a window > 0 (not both), "
                    f"got amount={self.amount}, window={self.window}"
                )
            self.kv_window()  # validates sinks and window now, not at the first step
        if self.kind == "plan" and self.plan is None:
            raise ValueError(f"action {self.name!r}: kind 'plan' needs a plan dict")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ActionEntry:
        """Build from ``{"name", "kind", "amount"?, "plan"?, "layer_order"?}``."""
        unknown = set(data) - {"name", "kind", "amount", "plan", "layer_order", "window", "sinks"}
        if unknown:
            raise ValueError(f"action entry has unknown keys {sorted(unknown)}")
        return cls(**data)

    def kv_window(self) -> KVWindow:
        """The KV window of a ``"kv"`` entry."""
        if self.window > 0:
            return KVWindow(sinks=self.sinks, window=self.window)
        return KVWindow(sinks=self.sinks, fraction=round(1.0 - self.amount, 12))


DEFAULT_TABLE: tuple[ActionEntry, ...] = (
    ActionEntry("none", "none"),
    ActionEntry("heads-5%", "heads", 0.05),
    ActionEntry("heads-10%", "heads", 0.10),
    ActionEntry("heads-15%", "heads", 0.15),
    ActionEntry("layers-5%", "layers", 0.05),
    ActionEntry("layers-10%", "layers", 0.10),
    ActionEntry("layers-15%", "layers", 0.15),
    ActionEntry("layers-25%", "layers", 0.25),
    ActionEntry("ffn-10%", "ffn", 0.10),
    ActionEntry("ffn-25%", "ffn", 0.25),
)


KV_TABLE: tuple[ActionEntry, ...] = (
    *DEFAULT_TABLE,
    ActionEntry("kv-50%", "kv", 0.50),
    ActionEntry("kv-75%", "kv", 0.75),
    ActionEntry("kv-w256", "kv", window=256),
)

TABLES: dict[str, tuple[ActionEntry, ...]] = {"default": DEFAULT_TABLE, "kv": KV_TABLE}
"""Action tables by name."""


def make_table(table: str | Sequence[ActionEntry | Mapping[str, Any]] = "default") -> tuple[ActionEntry, ...]:
    """Normalise a table given by name (``"default"``, ``"kv"``) or as entries / dicts."""
    if isinstance(table, str):
        if table not in TABLES:
            raise ValueError(f"unknown action table {table!r}; pass one of {sorted(TABLES)} or a list of entries")
        return TABLES[table]
    entries = tuple(e if isinstance(e, ActionEntry) else ActionEntry.from_dict(e) for e in table)
    if not entries:
        raise ValueError("action table is empty")
    names = [e.name for e in entries]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"action names must be unique; repeated: {sorted(dup)}")
    return entries


def layers_for(amount: float, num_layers: int) -> int:
    """Layers removed for a fraction: ``round(amount * L)``, at least 1, at most ``L - 1``."""
    return min(num_layers - 1, max(1, math.floor(amount * num_layers + 0.5)))


def entry_plan(entry: ActionEntry, lm: Any, use_adapters: bool = False) -> PruningPlan:
    """The plan of one entry for a :class:`~dynprune.models.PrunableLM` (uses its importance)."""
    g = lm.geometry
    if entry.kind == "none":
        return PruningPlan(name=entry.name)
    if entry.kind == "plan":
        plan = PruningPlan.from_dict({**dict(entry.plan or {}), "name": entry.name}, geometry=g)
        return plan
    if entry.kind == "kv":
        return PruningPlan(kv=entry.kv_window(), name=entry.name, geometry=g)
    imp = lm.importance
    if entry.kind == "layers":
        k = layers_for(entry.amount, g.num_layers)
        return layers_plan(imp, g, k, by=entry.layer_order, adapters=use_adapters, name=entry.name)
    if entry.kind == "heads":
        return heads_plan(imp, g, entry.amount, name=entry.name)
    return ffn_plan(imp, g, entry.amount, name=entry.name)
