"""Plan-conditional healing: LoRA adapters that run only while a pruned plan is applied.

A small model breaks under skipping; training that expects the skips heals it (LayerSkip,
FlexiDepth, LayerRoute). A LoRA shared by every path also moves the *unpruned* model away from
the original, so here the LoRA weights belong to pruned plans only:

- a :class:`PlanHealing` holds LoRA pairs ``(A, B)`` (Hu et al. 2021: ``W x + (alpha / r) B A x``)
  per *group*, decoder layer and projection; ``grouping="shared"`` has one group for every pruned
  plan, ``grouping="kind"`` one group per kind of plan (``layers``, ``heads``, ``ffn``);
- ``PrunableLM.apply(plan)`` asks it for a :class:`HealingPatch` (the plan's group, LoRA'd
  projections of the running layers, and head / FFN slices cut from them) and swaps those in
  beside the plan's own swaps; the undo puts the original modules back. The empty plan gets no
  patch: the ``none`` action runs the original modules, so its logits are the original's bit for bit;
- served **merged** (default): each LoRA'd projection is one ``nn.Linear`` holding
  ``W + (alpha / r) B A`` (sliced like the plan's slice when the layer is sliced), built once per
  (group, layer, projection, kept count) and cached, so a healed plan runs exactly the matmuls of
  the unhealed one; the cost is memory for the cached weights. Unmerged (``merged = False``, as in
  training) each projection runs ``base(x) + s * B(A x)``: two more small matmuls per projection.

Which layers carry LoRA under a plan (``placement``): ``"all"`` running layers, or ``"cut"``:
the running layers next to a removed layer and the sliced ones.

A healing folder (:func:`save_healing` / :func:`load_healing`) holds ``healing.json``
(:class:`HealingInfo`: the model identity it was trained for, the settings, the action table and
the plans it was trained under, the training report) and ``lora.safetensors``. Loading it for
another model is a ``ValueError`` naming both identities. Training lives in
:mod:`dynprune.healing_train`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dynprune.fileio import atomic_dir
from dynprune.plan import PruningPlan
from dynprune.pruning import FFNSlice, HeadSlice
from dynprune.validation import require_known_keys

if TYPE_CHECKING:
    from dynprune.models import PrunableLM

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
PROJECTIONS = ATTENTION + MLP
GROUPINGS = ("kind", "shared")
PLACEMENTS = ("all", "cut")
KINDS = ("layers", "heads", "ffn")
SHARED_GROUP = "pruned"
FORMAT = "dynprune-healing/1"
INFO_FILE = "healing.json"
WEIGHTS_FILE = "lora.safetensors"


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class HealingConfig:
    """Shape of a plan-conditional healing.

    Args:
        grouping: ``"shared"`` (default): one LoRA for every pruned plan; ``"kind"``: one LoRA per
            kind of plan (layers / heads / ffn). Trained side by side for the same budget on the
            embedded model, the shared one reached the lower validation KL per step over the table's
            plans (kind: a little lower on layer plans only) with a third of the weights
            (benchmarks/results/healing.json, "training").
        rank: LoRA rank ``r``.
        alpha: LoRA scaling numerator (the update is ``alpha / r * B A``).
        targets: Projections that carry LoRA (of ``PROJECTIONS``).
        placement: ``"all"`` running layers, or ``"cut"``: running layers next to a removed layer
            and sliced layers only.
    """

    grouping: str = "shared"
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = PROJECTIONS
    placement: str = "all"

    def __post_init__(self) -> None:
        if self.grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {self.grouping!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {self.alpha!r}")
        targets = tuple(self.targets)
        bad = [t for t in targets if t not in PROJECTIONS]
        if bad or not targets or len(set(targets)) != len(targets):
            raise ValueError(f"targets must be a non-empty subset of {PROJECTIONS} without repeats, got {targets}")
        object.__setattr__(self, "targets", tuple(p for p in PROJECTIONS if p in targets))

    @property
    def scale(self) -> float:
        """``alpha / rank``."""
        return self.alpha / self.rank

    @property
    def groups(self) -> tuple[str, ...]:
        """The group names: the kinds, or the one shared group."""
        return KINDS if self.grouping == "kind" else (SHARED_GROUP,)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {**dataclasses.asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealingConfig:
        """Inverse of :meth:`to_dict`; an unknown key is a ``ValueError``."""
        require_known_keys(data, cls, "healing settings")
        d = dict(data)
        if "targets" in d:
            d["targets"] = tuple(d["targets"])
        return cls(**d)


def plan_kind(plan: PruningPlan) -> str | None:
    """``"layers"`` (any skipped layer), else ``"heads"``, else ``"ffn"``; None for the empty plan.

    Plans with adapter layers get None: their adapters are their healing.
    """
    if plan.adapters or plan.is_empty:
        return None
    if plan.skip:
        return "layers"
    return "heads" if plan.heads else "ffn"


# ----------------------------------------------------------------------------- LoRA modules


class LoRAPair(nn.Module):
    """The ``A`` (``[r, in]``) and ``B`` (``[out, r]``) of one projection; ``B`` starts at zero (Hu et al. 2021)."""

    def __init__(self, in_features: int, out_features: int, rank: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, in_features, dtype=dtype))
        self.B = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype))
        # peft's default: A like an nn.Linear weight, B zero, so a fresh pair adds nothing
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def delta(self, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
        """``B[rows] @ A[:, cols]`` (the unscaled weight update of the sliced projection)."""
        a = self.A if cols is None else self.A.index_select(1, cols)
        b = self.B if rows is None else self.B.index_select(0, rows)
        return b @ a


class LoRALinear(nn.Module):
    """``base(x) + scale * B[rows] (A[:, cols] x)``: a (possibly sliced) projection with its LoRA, unmerged.

    Differentiable in ``A`` and ``B`` (training); serving uses :func:`merged_linear` instead.
    """

    def __init__(
        self, base: nn.Linear, pair: LoRAPair, rows: torch.Tensor | None, cols: torch.Tensor | None, scale: float
    ) -> None:
        super().__init__()
        self.base = base
        self.pair = pair
        self.rows, self.cols, self.scale = rows, cols, scale
        self.in_features, self.out_features = base.in_features, base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (for code that reads a projection's dtype or device)."""
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base projection plus the low-rank update."""
        a = self.pair.A if self.cols is None else self.pair.A.index_select(1, self.cols)
        b = self.pair.B if self.rows is None else self.pair.B.index_select(0, self.rows)
        return self.base(x) + self.scale * F.linear(F.linear(x, a.to(x.dtype)), b.to(x.dtype))


def merged_linear(
    base: nn.Linear, pair: LoRAPair, rows: torch.Tensor | None, cols: torch.Tensor | None, scale: float
) -> nn.Linear:
    """A new frozen ``nn.Linear`` with weight ``base.weight + scale * B[rows] A[:, cols]`` (bias kept)."""
    with torch.no_grad():
        w = base.weight.detach()
        merged = (w.to(pair.A.dtype) + scale * pair.delta(rows, cols)).to(w.dtype).contiguous()
        new = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        new.weight = nn.Parameter(merged, requires_grad=False)
        if base.bias is not None:
            new.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
    return new


# ----------------------------------------------------------------------------- the patch


@dataclass(frozen=True)
class HealingPatch:
    """What ``PrunableLM.apply`` swaps in for healing beside the plan.

    Attributes:
        group: The healing group active under the plan.
        heads: Healed head slices, replacing the plan's own for these layers.
        ffn: Healed FFN slices, replacing the plan's own for these layers.
        swaps: ``(module, attribute, new module)`` for LoRA'd projections of unsliced running layers.
    """

    group: str
    heads: dict[int, HeadSlice]
    ffn: dict[int, FFNSlice]
    swaps: tuple[tuple[nn.Module, str, nn.Module], ...]


def apply_swaps(swaps: Iterable[tuple[nn.Module, str, nn.Module]]) -> Callable[[], None]:
    """Set each ``module.attribute = new``; return the undo that puts the old modules back."""
    old = [(m, name, getattr(m, name)) for m, name, _ in swaps]
    for m, name, new in swaps:
        setattr(m, name, new)

    def undo() -> None:
        for m, name, module in reversed(old):
            setattr(m, name, module)

    return undo


def _rows(units: Iterable[int], size: int, device: torch.device) -> torch.Tensor:
    """Row indices of whole units (heads) of ``size`` rows each."""
    u = torch.tensor(list(units), dtype=torch.long)
    return (u[:, None] * size + torch.arange(size)[None, :]).reshape(-1).to(device)


# ----------------------------------------------------------------------------- PlanHealing


class PlanHealing(nn.Module):
    """LoRA weights per group, layer and projection, and the patches that put them in place under a plan.

    Args:
        config: Groups, rank, targets, placement.
        model_id: Identity of the model the weights belong to (``PrunableLM.model_id``).
        shapes: ``{(layer, projection): (in_features, out_features)}`` of the unpruned model.
        name: A label for records (the folder's name once saved or loaded).
        dtype: Dtype of the LoRA weights (float32 unless the model computes in float64).
    """

    def __init__(
        self,
        config: HealingConfig,
        model_id: str,
        shapes: Mapping[tuple[int, str], tuple[int, int]],
        name: str = "healing",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.config = config
        self.model_id = model_id
        self.name = name
        self.shapes = dict(shapes)
        self.num_layers = 1 + max(i for i, _ in self.shapes)
        self.pairs = nn.ModuleDict()
        for g in config.groups:
            for (i, p), (n_in, n_out) in sorted(self.shapes.items()):
                if p in config.targets:
                    self.pairs[self.key(g, i, p)] = LoRAPair(n_in, n_out, config.rank, dtype)
        self.merged = True
        self.info: HealingInfo | None = None
        # (merged, group, layer, projection, id(base)) -> (base, healed module): the base is kept alive,
        # so its id is never reused for another slice while the entry exists
        self._cache: dict[tuple[Any, ...], tuple[nn.Module, nn.Module]] = {}
        self._patches: dict[tuple[Any, ...], HealingPatch | None] = {}
        self._fingerprint: str | None = None

    @staticmethod
    def key(group: str, layer: int, projection: str) -> str:
        """The module key of one LoRA pair: ``"<group>:<layer>:<projection>"``."""
        return f"{group}:{layer}:{projection}"

    @classmethod
    def for_model(cls, lm: PrunableLM, config: HealingConfig | None = None, seed: int = 0) -> PlanHealing:
        """Fresh healing for ``lm`` (every ``B`` zero: it changes nothing until trained), seeded."""
        config = config or HealingConfig()
        dtype = torch.float64 if lm.dtype == torch.float64 else torch.float32
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            healing = cls(config, lm.model_id, projection_shapes(lm), dtype=dtype)
        return healing.to(lm.device)

    # ------------------------------------------------------------------ identity
    def check_model(self, lm: PrunableLM, source: str | None = None) -> None:
        """Raise ``ValueError`` when these weights were made for another model (the message names both)."""
        where = f"healing {source}" if source else f"healing {self.name!r}"
        if self.model_id != lm.model_id:
            raise ValueError(
                f"{where} was trained for model {self.model_id!r}, not for this model {lm.model_id!r}; "
                f"train one for it with: dynprune heal --model {lm.name} --out DIR"
            )
        theirs = projection_shapes(lm)
        if theirs != self.shapes:
            diff = sorted(k for k in set(theirs) | set(self.shapes) if theirs.get(k) != self.shapes.get(k))[:3]
            raise ValueError(f"{where} has projections of other shapes than model {lm.model_id!r} (first: {diff})")

    @property
    def fingerprint(self) -> str:
        """SHA-256 (12 hex digits) of the settings and of every LoRA weight (cached until :meth:`clear_cache`)."""
        if self._fingerprint is None:
            h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
            for k, t in sorted(self.state_dict().items()):
                t = t.detach().cpu().contiguous()
                h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
            self._fingerprint = h.hexdigest()[:12]
        return self._fingerprint

    def group_for(self, plan: PruningPlan) -> str | None:
        """The group active under ``plan``, or None (empty plan, adapter plans, or an untrained group)."""
        kind = plan_kind(plan)
        if kind is None:
            return None
        group = SHARED_GROUP if self.config.grouping == "shared" else kind
        if self.info is not None and self.info.trained_groups and group not in self.info.trained_groups:
            return None
        return group

    def key_for(self, plan: PruningPlan) -> str | None:
        """``"<fingerprint>:<group>"`` under ``plan`` (memo keys, records), or None when nothing is active."""
        group = self.group_for(plan)
        return None if group is None else f"{self.fingerprint}:{group}"

    def label(self, plan: PruningPlan) -> str | None:
        """``"<name>@<fingerprint>:<group>"`` under ``plan``, or None when no healing is active."""
        group = self.group_for(plan)
        return None if group is None else f"{self.name}@{self.fingerprint}:{group}"

    # ------------------------------------------------------------------ placement
    def active_layers(self, plan: PruningPlan, lm: PrunableLM) -> tuple[int, ...]:
        """Running layers that carry LoRA under ``plan`` (see ``placement``)."""
        removed = set(plan.skip) | set(plan.adapters)
        running = [i for i in range(lm.geometry.num_layers) if i not in removed]
        if self.config.placement == "all":
            return tuple(running)
        g = lm.geometry
        sliced = {i for i, k in plan.heads if k < g.num_heads[i]}
        sliced |= {i for i, k in plan.ffn if k < g.intermediate_size[i]}
        return tuple(i for i in running if i in sliced or (i - 1) in removed or (i + 1) in removed)

    # ------------------------------------------------------------------ modules
    def clear_cache(self) -> None:
        """Forget merged weights, patches and the fingerprint (after the LoRA weights or the model's slices change)."""
        self._cache.clear()
        self._patches.clear()
        self._fingerprint = None

    def cached_bytes(self) -> int:
        """Bytes held by cached merged projections (the memory price of merged serving)."""
        return sum(
            p.numel() * p.element_size()
            for _, m in self._cache.values()
            if isinstance(m, nn.Linear)
            for p in m.parameters(recurse=False)
        )

    def _projection(
        self, group: str, layer: int, name: str, base: nn.Linear, rows: torch.Tensor | None,
        cols: torch.Tensor | None,
    ) -> nn.Module | None:
        """The healed ``base`` (merged or unmerged, cached per base module), or None when it has no LoRA."""
        k = self.key(group, layer, name)
        if k not in self.pairs:
            return None
        ckey = (self.merged, group, layer, name, id(base))
        hit = self._cache.get(ckey)
        if hit is None:
            pair = self.pairs[k]
            assert isinstance(pair, LoRAPair)
            if self.merged:
                module: nn.Module = merged_linear(base, pair, rows, cols, self.config.scale)
            else:
                module = LoRALinear(base, pair, rows, cols, self.config.scale)
            hit = self._cache[ckey] = (base, module)
        return hit[1]

    def patch(self, lm: PrunableLM, plan: PruningPlan) -> HealingPatch | None:
        """The healing swaps for ``plan`` on ``lm`` (None when no group is active); touches no model.

        Cached per plan until :meth:`clear_cache` (``PrunableLM.set_importance`` calls it: new
        importance, new slices).
        """
        pkey = (plan, self.merged, id(lm))
        if pkey not in self._patches:
            self._patches[pkey] = self._build_patch(lm, plan)
        return self._patches[pkey]

    def _build_patch(self, lm: PrunableLM, plan: PruningPlan) -> HealingPatch | None:
        group = self.group_for(plan)
        if group is None:
            return None
        g = lm.geometry
        heads, ffn = dict(plan.heads), dict(plan.ffn)
        healed_heads: dict[int, HeadSlice] = {}
        healed_ffn: dict[int, FFNSlice] = {}
        swaps: list[tuple[nn.Module, str, nn.Module]] = []
        for i in self.active_layers(plan, lm):
            layer = lm._layers[i]
            # attention: cut from the plan's own head slice when the layer is sliced
            keep = heads.get(i, g.num_heads[i])
            originals = dict(zip(ATTENTION, lm._attn_proj[i], strict=True))
            if keep < g.num_heads[i]:
                base = lm.head_slice(i, keep)
                dev = base.q.weight.device
                q_rows, kv_rows = _rows(base.kept_heads, g.head_dim, dev), _rows(base.kept_groups, g.head_dim, dev)
                cuts = {"q_proj": (base.q, q_rows, None), "k_proj": (base.k, kv_rows, None),
                        "v_proj": (base.v, kv_rows, None), "o_proj": (base.o, None, q_rows)}
                new = {p: self._projection(group, i, p, *cuts[p]) for p in ATTENTION}
                if any(m is not None for m in new.values()):
                    healed_heads[i] = dataclasses.replace(
                        base, **{p[0]: m if m is not None else cuts[p][0] for p, m in new.items()}
                    )
            else:
                for p in ATTENTION:
                    m = self._projection(group, i, p, originals[p], None, None)
                    if m is not None:
                        swaps.append((layer.self_attn, p, m))
            # MLP: the same with the plan's FFN slice
            keep = ffn.get(i, g.intermediate_size[i])
            originals = dict(zip(MLP, lm._mlp_proj[i], strict=True))
            if keep < g.intermediate_size[i]:
                base_f = lm.ffn_slice(i, keep)
                kept = torch.tensor(base_f.kept, dtype=torch.long, device=base_f.gate.weight.device)
                cuts_f = {"gate_proj": (base_f.gate, kept, None), "up_proj": (base_f.up, kept, None),
                          "down_proj": (base_f.down, None, kept)}
                new = {p: self._projection(group, i, p, *cuts_f[p]) for p in MLP}
                if any(m is not None for m in new.values()):
                    healed_ffn[i] = dataclasses.replace(
                        base_f, **{p.split("_")[0]: m if m is not None else cuts_f[p][0] for p, m in new.items()}
                    )
            else:
                for p in MLP:
                    m = self._projection(group, i, p, originals[p], None, None)
                    if m is not None:
                        swaps.append((layer.mlp, p, m))
        return HealingPatch(group, healed_heads, healed_ffn, tuple(swaps))

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The pairs whose ``B`` is not all zero (untrained pairs add nothing and are not stored)."""
        out: dict[str, torch.Tensor] = {}
        for k, pair in self.pairs.items():
            assert isinstance(pair, LoRAPair)
            if bool(pair.B.detach().ne(0).any()):
                out[f"{k}.A"] = pair.A.detach()
                out[f"{k}.B"] = pair.B.detach()
        return out

    def prune_untrained(self) -> None:
        """Drop the pairs whose ``B`` is zero, so no patch swaps a projection that would not change."""
        for k in [k for k, p in self.pairs.items() if not bool(p.B.detach().ne(0).any())]:
            del self.pairs[k]
        self.clear_cache()


def projection_shapes(lm: PrunableLM) -> dict[tuple[int, str], tuple[int, int]]:
    """``{(layer, projection): (in_features, out_features)}`` of the unpruned model."""
    out: dict[tuple[int, str], tuple[int, int]] = {}
    for i in range(lm.geometry.num_layers):
        for names, projs in ((ATTENTION, lm._attn_proj[i]), (MLP, lm._mlp_proj[i])):
            for p, lin in zip(names, projs, strict=True):
                out[i, p] = (int(lin.in_features), int(lin.out_features))
    return out


# ----------------------------------------------------------------------------- folder


@dataclass(frozen=True)
class HealingInfo:
    """``healing.json``: what a healing folder holds and what it was made for.

    Attributes:
        model_id: Identity of the model the healing was trained on (it refuses any other).
        model_spec: The spec that model was loaded from.
        config: :meth:`HealingConfig.to_dict`.
        table: The action table's entries the training plans came from.
        plans: ``{name: PruningPlan.to_dict()}`` of every plan trained under.
        trained_groups: Groups that were trained (a plan of another group is served unhealed).
        training: The training settings (``HealTrainConfig.to_dict``).
        report: The training report (steps, best steps, validation curves, wall time, load).
        fingerprint: :attr:`PlanHealing.fingerprint` of the stored weights.
        created: UTC time stamp.
        format: Folder format.
    """

    model_id: str
    model_spec: str
    config: dict[str, Any]
    table: list[dict[str, Any]]
    plans: dict[str, dict[str, Any]]
    trained_groups: tuple[str, ...]
    training: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    created: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    )
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {**dataclasses.asdict(self), "trained_groups": list(self.trained_groups)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "healing.json") -> HealingInfo:
        """Inverse of :meth:`to_dict`; a missing or unknown field is a ``ValueError`` naming ``source``."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            got = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"{source} is not a healing description (format {got!r}, expected {FORMAT!r})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = set(data) - names, {"model_id", "model_spec", "config", "table", "plans"} - set(data)
        if unknown or missing:
            raise ValueError(f"{source}: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}")
        return cls(**{**data, "trained_groups": tuple(data.get("trained_groups", ()))})


def is_healing_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a folder holding ``healing.json``."""
    return (Path(path) / INFO_FILE).is_file()


SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def save_healing(
    healing: PlanHealing, folder: str | os.PathLike[str], info: HealingInfo, force: bool = False,
    dtype: str = "float32",
) -> Path:
    """Write ``healing`` (trained pairs only) and ``info`` to ``folder``, whole or not at all.

    ``dtype`` is the stored precision (``"float16"`` halves the file); the in-memory weights are
    rounded to it first, so ``healing`` and its fingerprint are what a load of the folder gives.
    Everything goes to a temporary folder beside ``folder`` that is renamed into place at the end;
    an existing ``folder`` is refused unless ``force`` (and then it must be a healing folder or empty).
    """
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(SAVE_DTYPES)}, got {dtype!r}")
    dest = Path(folder)
    if dest.exists():
        if not force:
            raise FileExistsError(f"{dest} already exists; pass force=True (--force) to replace it")
        if not dest.is_dir() or (any(dest.iterdir()) and not is_healing_folder(dest)):
            raise ValueError(f"{dest} is not a healing folder; --force only replaces folders dynprune heal wrote")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for p in healing.parameters():
            p.copy_(p.to(SAVE_DTYPES[dtype]).to(p.dtype))
    healing.clear_cache()
    tensors = {k: t.to(SAVE_DTYPES[dtype]).cpu().contiguous().clone() for k, t in healing.trained_state().items()}
    if not tensors:
        raise ValueError("the healing holds no trained LoRA pair (every B is zero); nothing to save")
    info = dataclasses.replace(info, fingerprint=healing.fingerprint)
    with atomic_dir(dest) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT, "model_id": healing.model_id})
        (tmp / INFO_FILE).write_text(json.dumps(info.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return dest


def read_info(folder: str | os.PathLike[str]) -> HealingInfo:
    """The :class:`HealingInfo` of a healing folder (``ValueError`` naming the file when it is not one)."""
    path = Path(folder) / INFO_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not a healing folder (no {INFO_FILE}); make one with dynprune heal --out DIR")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); write the folder again with dynprune heal") from None
    return HealingInfo.from_dict(data, str(path))


def load_healing(folder: str | os.PathLike[str], lm: PrunableLM) -> PlanHealing:
    """Read a healing folder made for ``lm`` (frozen, merged serving, on ``lm``'s device).

    Raises:
        ValueError: not a healing folder, damaged files, or a healing trained for another model
            (the message names both model identities).
    """
    folder = Path(folder)
    info = read_info(folder)
    config = HealingConfig.from_dict(info.config)
    if info.model_id != lm.model_id:
        raise ValueError(
            f"healing {folder} was trained for model {info.model_id!r}, not for this model {lm.model_id!r}; "
            f"train one for it with: dynprune heal --model {lm.name} --out DIR"
        )
    try:
        with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ValueError(f"{folder / WEIGHTS_FILE} is not a valid LoRA weights file: {e}") from e
    healing = PlanHealing.for_model(lm, config)
    healing.name = folder.resolve().name
    keys = {k.rsplit(".", 1)[0] for k in tensors}
    unknown = sorted(keys - set(healing.pairs))
    if unknown:
        raise ValueError(f"{folder / WEIGHTS_FILE} holds LoRA pairs this model has no place for: {unknown[:3]}")
    for k in [k for k in healing.pairs if k not in keys]:
        del healing.pairs[k]  # untrained: not stored, not swapped in
    with torch.no_grad():
        for k, pair in healing.pairs.items():
            for part in ("A", "B"):
                t = tensors.get(f"{k}.{part}")
                target = getattr(pair, part)
                if t is None or tuple(t.shape) != tuple(target.shape):
                    got = None if t is None else tuple(t.shape)
                    raise ValueError(
                        f"{folder / WEIGHTS_FILE}: {k}.{part} has shape {got}, expected {tuple(target.shape)}"
                    )
                target.copy_(t.to(target.dtype))
    healing.requires_grad_(False).eval()
    healing.info = info
    if info.fingerprint and healing.fingerprint != info.fingerprint:
        raise ValueError(
            f"{folder}: the weights' fingerprint {healing.fingerprint} differs from the recorded {info.fingerprint}; "
            "the folder is damaged: write it again with dynprune heal"
        )
    return healing


def attach_healing(lm: PrunableLM, healing: PlanHealing | str | os.PathLike[str] | None) -> PlanHealing | None:
    """Give ``lm`` this healing (a loaded one or a folder; None removes it); return what is attached."""
    if healing is not None and not isinstance(healing, PlanHealing):
        healing = load_healing(healing, lm)
    lm.set_healing(healing)
    return healing
