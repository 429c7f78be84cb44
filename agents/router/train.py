"""Train the router from logged exploration (FBC) and preference pairs (DPO, ORPO).

Data (:func:`load_router_data`): the Parquet logs of ``dynprune explore`` (DFS and/or random
layer sets, any number of log folders) give each prompt's measured configurations and their
scores (``offline_data.prefs.row_score``); the preference pairs (``dynprune prefs`` file, or
derived from the same logs with the same rule) give (winner, loser) configurations per prompt.

Methods, one config dataclass each (TRL style: ``__post_init__`` validates and names the bad value):

- :class:`FBCConfig`: filtered behaviour cloning. Per prompt the *successful* configurations
  are those scoring at least ``success_threshold``; the target is the one with the most layers
  pruned (higher score breaks ties). Loss: MSE of ``mu`` against its ratio + BCE of the layer
  scores (optionally through a differentiable top-k).
- :class:`DPOConfig`: DPO against a frozen reference router (a copy of the starting weights:
  the FBC checkpoint given as ``init``, or the initial weights).
- :class:`ORPOConfig`: ORPO, reference-free: winners' NLL + ``beta`` x odds-ratio term.

Prompts are split into train and held-out (``eval_fraction``); held-out loss, preference
accuracy (policy prefers the winner) and the error of the predicted ``k`` against the FBC
target are logged every ``eval_every`` epochs to ``train_log.jsonl``, with a checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.router.losses import config_logprob, dpo_loss, fbc_loss, orpo_loss
from agents.router.model import Router, RouterNet
from agents.router.topk import TOPK_METHODS
from dynprune.fileio import atomic_write_json, atomic_write_text

__all__ = [
    "METHODS",
    "DPOConfig",
    "FBCConfig",
    "ORPOConfig",
    "RouterData",
    "RouterTrainConfig",
    "TrainResult",
    "fbc_targets",
    "healing_identity",
    "load_router_data",
    "make_config",
    "train_router",
]

METHODS = ("fbc", "dpo", "orpo")


# ----------------------------------------------------------------------------- configs


@dataclass
class RouterTrainConfig:
    """Settings shared by every method.

    Args:
        epochs: Passes over the training examples.
        batch_size: Examples per gradient step.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient-norm clip (``0``: none).
        set_term: Log-probability of a layer set: ``"bernoulli"`` or ``"plackett_luce"``.
        eval_fraction: Share of the prompts held out for evaluation (``0``: none).
        eval_every: Evaluate (and checkpoint) every this many epochs, and after the last.
        success_threshold: FBC target / eval: a configuration is successful when its score is at least this.
        seed: Seeds the split, the shuffling and the initial weights' noise.
    """

    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    set_term: str = "bernoulli"
    eval_fraction: float = 0.2
    eval_every: int = 10
    success_threshold: float = 1.0
    seed: int = 0

    method = "base"

    def __post_init__(self) -> None:
        """Check every value; raise ``ValueError`` naming the bad one."""
        name = type(self).__name__
        for key in ("epochs", "batch_size", "eval_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"{name}.{key} must be >= 1, got {getattr(self, key)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"{name}.lr must be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"{name}.weight_decay must be >= 0, got {self.weight_decay}")
        if self.max_grad_norm < 0:
            raise ValueError(f"{name}.max_grad_norm must be >= 0 (0 = no clipping), got {self.max_grad_norm}")
        if self.set_term not in ("bernoulli", "plackett_luce"):
            raise ValueError(f"{name}.set_term must be 'bernoulli' or 'plackett_luce', got {self.set_term!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"{name}.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not math.isfinite(self.success_threshold):
            raise ValueError(f"{name}.success_threshold must be finite, got {self.success_threshold}")

    def to_dict(self) -> dict[str, Any]:
        """JSON form, with the method name."""
        return {"method": self.method, **asdict(self)}


@dataclass
class FBCConfig(RouterTrainConfig):
    """Filtered behaviour cloning.

    Args:
        layer_weight: Weight of the BCE layer term against the ratio MSE.
        topk: ``"none"`` (BCE on each sigmoid score), ``"sinkhorn"`` or ``"gumbel"`` (BCE on the
            soft top-k mask with the target's ``k``).
        topk_tau: Temperature of the soft top-k.
    """

    layer_weight: float = 1.0
    topk: str = "none"
    topk_tau: float = 0.1

    method = "fbc"

    def __post_init__(self) -> None:
        """Check every value; raise ``ValueError`` naming the bad one."""
        super().__post_init__()
        if self.layer_weight < 0:
            raise ValueError(f"FBCConfig.layer_weight must be >= 0, got {self.layer_weight}")
        if self.topk not in TOPK_METHODS:
            raise ValueError(f"FBCConfig.topk must be one of {TOPK_METHODS}, got {self.topk!r}")
        if self.topk_tau <= 0:
            raise ValueError(f"FBCConfig.topk_tau must be > 0, got {self.topk_tau}")


@dataclass
class DPOConfig(RouterTrainConfig):
    """Direct preference optimisation.

    Args:
        beta: Strength of the implicit KL penalty to the reference (TRL's default 0.1).
        reference: ``"init"``: the reference is a frozen copy of the router's weights when training
            starts (the FBC router when it starts from an FBC checkpoint).
    """

    beta: float = 0.1
    reference: str = "init"
    lr: float = 3e-4

    method = "dpo"

    def __post_init__(self) -> None:
        """Check every value; raise ``ValueError`` naming the bad one."""
        super().__post_init__()
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"DPOConfig.beta must be a positive number, got {self.beta}")
        if self.reference != "init":
            raise ValueError(f"DPOConfig.reference must be 'init' (a frozen copy of the start), got {self.reference!r}")


@dataclass
class ORPOConfig(RouterTrainConfig):
    """Odds-ratio preference optimisation.

    Args:
        beta: Weight of the odds-ratio term (the paper's lambda; TRL's ORPOConfig.beta, default 0.1).
    """

    beta: float = 0.1

    method = "orpo"

    def __post_init__(self) -> None:
        """Check every value; raise ``ValueError`` naming the bad one."""
        super().__post_init__()
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ValueError(f"ORPOConfig.beta must be a positive number, got {self.beta}")


_CONFIGS: dict[str, type[RouterTrainConfig]] = {"fbc": FBCConfig, "dpo": DPOConfig, "orpo": ORPOConfig}


def make_config(method: str, **kwargs: Any) -> RouterTrainConfig:
    """The config dataclass of ``method`` (``"fbc"``, ``"dpo"``, ``"orpo"``) with ``kwargs``."""
    if method not in _CONFIGS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return _CONFIGS[method](**kwargs)


# ----------------------------------------------------------------------------- data


@dataclass
class RouterData:
    """What the router learns from.

    Attributes:
        num_layers: Decoder layers of the model the logs were measured on.
        texts: ``{prompt id: prompt text}``.
        configs: ``{prompt id: [(pruned layers, score), ...]}``: every measured layer set (DFS/random).
        pairs: Preference pairs ``{"prompt_id", "winner_layers", "loser_layers", ...}``.
        healing: ``"<name>@<fingerprint>"`` of the plan-conditional healing the pruned
            configurations were measured under (``dynprune explore --healing``), or None.
    """

    num_layers: int
    texts: dict[str, str]
    configs: dict[str, list[tuple[tuple[int, ...], float]]]
    pairs: list[dict[str, Any]] = field(default_factory=list)
    healing: str | None = None

    @property
    def prompt_ids(self) -> list[str]:
        """Prompts with configurations or pairs, in first-appearance order."""
        ids = dict.fromkeys(self.configs)
        ids.update(dict.fromkeys(p["prompt_id"] for p in self.pairs))
        return list(ids)


def _read_pairs(path: str | Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no preference pairs file at {path} (expected the Parquet file of dynprune prefs)")
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ValueError(f"{path} is not a readable Parquet file of preference pairs: {e}") from e
    needed = {"prompt_id", "winner_layers", "loser_layers"}
    if not needed <= set(table.column_names):
        raise ValueError(
            f"{path} lacks columns {sorted(needed - set(table.column_names))}; expected {sorted(needed)}"
        )
    if table.num_rows == 0:
        raise ValueError(f"{path} holds no preference pairs (0 rows); DPO and ORPO need at least one")
    return table.to_pylist()


def healing_identity(label: str | None) -> str | None:
    """``"<name>@<fingerprint>"`` of a log row's healing label (``"<name>@<fingerprint>:<group>"``), or None."""
    return None if label is None else label.rsplit(":", 1)[0]


def load_router_data(
    log_dirs: Sequence[str | Path],
    pairs: str | Path | Sequence[Mapping[str, Any]] | None = None,
    prompt_ids: Sequence[str] | None = None,
) -> RouterData:
    """Read logged configurations (and preference pairs) for router training.

    Args:
        log_dirs: Log folders of ``dynprune explore`` (same model; several strategies may be combined).
        pairs: A pairs file (``dynprune prefs``), a list of pair rows, or ``None``: derived from the
            logs with :func:`offline_data.prefs.preference_pairs` (every non-tied pair).
        prompt_ids: Keep only these prompts.

    Raises:
        ValueError: no logs, logs of models with different layer counts, logs measured under different
            healings (a configuration's score depends on the healing it was served with), an empty pairs file.
    """
    from dynprune.tasks import load_prompts
    from offline_data.dataset import load_logs, read_meta
    from offline_data.prefs import configs_per_prompt, preference_pairs

    if not log_dirs:
        raise ValueError("router training needs at least one log folder (dynprune explore --out DIR)")
    rows: list[dict[str, Any]] = []
    num_layers: int | None = None
    sources: set[str] = set()
    for d in log_dirs:
        meta = read_meta(d)
        n = int(meta["num_layers"])
        if num_layers is not None and n != num_layers:
            raise ValueError(f"log folder {d} was measured on a {n}-layer model, the others on {num_layers} layers")
        num_layers = n
        src = meta.get("settings", {}).get("env", {}).get("prompts", "dynprune")
        sources.add(src if isinstance(src, str) else "dynprune")
        rows.extend(load_logs(d).to_list())
    assert num_layers is not None
    # pruned rows only: the none configuration is never healed (logs written before the column: None)
    healings = {healing_identity(r.get("healing")) for r in rows if r["layers"]}
    if len(healings) > 1:
        raise ValueError(f"the logs were measured under different healings {sorted(map(str, healings))} (None: "
                         "unhealed); train a router on logs explored with one healing (dynprune explore --healing DIR)")
    keep = None if prompt_ids is None else set(prompt_ids)
    if keep is not None:
        rows = [r for r in rows if r["prompt_id"] in keep]
    configs = configs_per_prompt(rows)
    if pairs is None:
        pair_rows = preference_pairs(rows)
    elif isinstance(pairs, (str, Path)):
        pair_rows = _read_pairs(pairs)
    else:
        pair_rows = [dict(p) for p in pairs]
    if keep is not None:
        pair_rows = [p for p in pair_rows if p["prompt_id"] in keep]
    texts: dict[str, str] = {}
    for src in sources:
        texts.update({p.id: p.text for p in load_prompts(src, split=None)})
    wanted = set(configs) | {p["prompt_id"] for p in pair_rows}
    missing = sorted(wanted - set(texts))
    if missing:
        raise ValueError(f"prompt ids {missing[:5]} of the logs are not in the prompt source(s) {sorted(sources)}")
    return RouterData(num_layers, {k: texts[k] for k in wanted}, configs, pair_rows, next(iter(healings), None))


def fbc_targets(
    configs: Mapping[str, Sequence[tuple[Sequence[int], float]]], threshold: float
) -> dict[str, tuple[int, ...]]:
    """Per prompt, the successful configuration (score >= ``threshold``) with the most layers pruned.

    Ties on layer count go to the higher score, then to the first logged. Prompts without a
    successful configuration get no target.
    """
    out: dict[str, tuple[int, ...]] = {}
    for pid, items in configs.items():
        best: tuple[int, float, int] | None = None
        for order, (layers, score) in enumerate(items):
            if score < threshold - 1e-9:
                continue
            key = (len(layers), score, -order)
            if best is None or key > best:
                best = key
                out[pid] = tuple(sorted(int(i) for i in layers))
    return out


def _masks(layer_sets: Sequence[Sequence[int]], num_layers: int) -> torch.Tensor:
    m = torch.zeros((len(layer_sets), num_layers))
    for i, layers in enumerate(layer_sets):
        for layer in layers:
            if not 0 <= int(layer) < num_layers:
                raise ValueError(f"layer {layer} out of range 0..{num_layers - 1} in a logged configuration")
            m[i, int(layer)] = 1.0
    return m


# ----------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    """What :func:`train_router` returns.

    Attributes:
        router: The trained router (eval mode).
        history: One dict per epoch (train metrics) and per evaluation (``"eval/..."`` keys).
        train_prompts, eval_prompts: The split.
        seconds: Wall time of the training loop.
    """

    router: Router
    history: list[dict[str, Any]]
    train_prompts: list[str]
    eval_prompts: list[str]
    seconds: float


class _Examples:
    """Tensors of one split: FBC targets and preference pairs, indexed into a feature matrix."""

    def __init__(self, ids: Sequence[str], data: RouterData, index: Mapping[str, int], threshold: float) -> None:
        wanted = set(ids)
        targets = fbc_targets({k: v for k, v in data.configs.items() if k in wanted}, threshold)
        self.t_idx = torch.tensor([index[p] for p in targets], dtype=torch.long)
        self.t_mask = _masks(list(targets.values()), data.num_layers)
        pairs = [p for p in data.pairs if p["prompt_id"] in wanted]
        self.p_idx = torch.tensor([index[p["prompt_id"]] for p in pairs], dtype=torch.long)
        self.w_mask = _masks([p["winner_layers"] for p in pairs], data.num_layers)
        self.l_mask = _masks([p["loser_layers"] for p in pairs], data.num_layers)

    def n(self, method: str) -> int:
        return int(self.t_idx.numel() if method == "fbc" else self.p_idx.numel())


def _split(ids: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    if fraction <= 0 or len(ids) < 2:
        return list(ids), []
    n_eval = max(1, int(round(fraction * len(ids))))
    perm = np.random.default_rng(seed).permutation(len(ids))
    held = {ids[i] for i in perm[:n_eval]}
    return [i for i in ids if i not in held], [i for i in ids if i in held]


def _batch_loss(
    router: Router, reference: RouterNet | None, config: RouterTrainConfig, x: torch.Tensor, ex: _Examples,
    sel: torch.Tensor, free: torch.Tensor, generator: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    L = router.config.num_layers
    if isinstance(config, FBCConfig):
        out = router(x[ex.t_idx[sel]])
        return fbc_loss(out, ex.t_mask[sel], free, L, config.layer_weight, config.topk, config.topk_tau, generator)
    feats = x[ex.p_idx[sel]]
    w, lo = ex.w_mask[sel], ex.l_mask[sel]
    out = router(feats)
    if isinstance(config, DPOConfig):
        assert reference is not None
        pw = config_logprob(out, w, free, L, "density", config.set_term).total
        pl = config_logprob(out, lo, free, L, "density", config.set_term).total
        with torch.no_grad():
            ref_out = reference(feats)
            rw = config_logprob(ref_out, w, free, L, "density", config.set_term).total
            rl = config_logprob(ref_out, lo, free, L, "density", config.set_term).total
        return dpo_loss(pw, pl, rw, rl, config.beta)
    assert isinstance(config, ORPOConfig)
    cw = config_logprob(out, w, free, L, "bin", config.set_term)
    cl = config_logprob(out, lo, free, L, "bin", config.set_term)
    return orpo_loss(cw, cl, config.beta)


@torch.no_grad()
def _evaluate(
    router: Router, reference: RouterNet | None, config: RouterTrainConfig, x: torch.Tensor, ex: _Examples,
    free: torch.Tensor,
) -> dict[str, float]:
    """Held-out metrics: the method's loss, preference accuracy, predicted k against the FBC target."""
    router.eval()
    L = router.config.num_layers
    metrics: dict[str, float] = {}
    n = ex.n(config.method)
    if n:
        _, m = _batch_loss(router, reference, config, x, ex, torch.arange(n), free, None)
        metrics.update({f"eval/{k}": v for k, v in m.items()})
    if ex.p_idx.numel():
        out = router(x[ex.p_idx])
        ratio = "bin" if config.method == "orpo" else "density"
        pw = config_logprob(out, ex.w_mask, free, L, ratio, config.set_term).total
        pl = config_logprob(out, ex.l_mask, free, L, ratio, config.set_term).total
        metrics["eval/pref_accuracy"] = float((pw > pl).float().mean())
    if ex.t_idx.numel():
        masks, _ = router.decide(x[ex.t_idx])
        k_pred = masks.sum(axis=1)
        k_true = ex.t_mask.sum(dim=1).numpy()
        metrics["eval/k_mae"] = float(np.abs(k_pred - k_true).mean())
        metrics["eval/k_mean"] = float(k_pred.mean())
        target = ex.t_mask.numpy() > 0.5
        inter = (masks.astype(bool) & target).sum(axis=1)
        union = (masks.astype(bool) | target).sum(axis=1)
        metrics["eval/layer_jaccard"] = float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))
    return metrics


def trainable_parameters(router: Router, config: RouterTrainConfig) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters the method trains: every head parameter, except ``log_sigma_head`` for FBC.

    FBC's loss (MSE on ``mu`` + BCE on scores) has no term in ``sigma``, so FBC leaves it as initialised.
    """
    return [(n, p) for n, p in router.net.named_parameters()
            if not (config.method == "fbc" and n.startswith("log_sigma_head"))]


def train_router(
    router: Router,
    data: RouterData,
    config: RouterTrainConfig,
    features: Callable[[list[str]], torch.Tensor] | None = None,
    run_dir: str | Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``router`` in place with ``config``'s method.

    Args:
        router: The router to train (its start is the DPO reference).
        data: Logged configurations and preference pairs (:func:`load_router_data`).
        config: :class:`FBCConfig`, :class:`DPOConfig` or :class:`ORPOConfig`.
        features: ``texts -> [B, in_dim]`` features; default ``router.features(texts)`` (the MiniLM
            router encodes them; a ``"tokens"`` router needs this, e.g. from ``PrunableLM.prompt_embedding``).
        run_dir: When given: ``config.json``, ``train_log.jsonl``, ``checkpoint.safetensors`` (every
            evaluation) and ``router.safetensors`` (the end) are written there.
        progress: Print one line per evaluation.

    Raises:
        ValueError: the data is for another number of layers, or has no examples for the method.
    """
    if data.num_layers != router.config.num_layers:
        raise ValueError(
            f"the logs were measured on a {data.num_layers}-layer model; the router has {router.config.num_layers}"
        )
    if config.method in ("dpo", "orpo") and not data.pairs:
        raise ValueError(f"{config.method} needs preference pairs; the data has none")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    ids = data.prompt_ids
    train_ids, eval_ids = _split(ids, config.eval_fraction, config.seed)
    index = {pid: i for i, pid in enumerate(ids)}
    featurise = features or (lambda texts: router.features(texts))
    x = featurise([data.texts[p] for p in ids]).float().detach()
    if x.shape != (len(ids), router.config.in_dim):
        raise ValueError(f"features must have shape [{len(ids)}, {router.config.in_dim}], got {tuple(x.shape)}")
    train_ex = _Examples(train_ids, data, index, config.success_threshold)
    eval_ex = _Examples(eval_ids, data, index, config.success_threshold)
    n_train = train_ex.n(config.method)
    if n_train == 0:
        what = "prompts with a successful configuration" if config.method == "fbc" else "preference pairs"
        raise ValueError(f"{config.method}: no training examples ({what}) among {len(train_ids)} train prompts")
    free = torch.tensor([i for i in range(router.config.num_layers) if i not in router.config.protected])
    reference = None
    if isinstance(config, DPOConfig):
        # a frozen copy of the heads only (the encoder is frozen anyway and is shared, not copied)
        reference = copy.deepcopy(router.net).eval().requires_grad_(False)
    params = [p for _, p in trainable_parameters(router, config)]
    for p in router.net.parameters():
        p.requires_grad_(any(p is q for q in params))
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    out_dir = Path(run_dir) if run_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "config.json", {
            "train": config.to_dict(), "router": router.config.to_dict(),
            "train_prompts": train_ids, "eval_prompts": eval_ids,
            "healing": data.healing,  # the healing the logs were measured under: serve the router with it
        })
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        router.train()
        perm = torch.randperm(n_train, generator=generator)
        sums: dict[str, float] = {}
        steps = 0
        for start in range(0, n_train, config.batch_size):
            sel = perm[start:start + config.batch_size]
            loss, metrics = _batch_loss(router, reference, config, x, train_ex, sel, free, generator)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
        row: dict[str, Any] = {"epoch": epoch, **{f"train/{k}": v / steps for k, v in sums.items()}}
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            row.update(_evaluate(router, reference, config, x, eval_ex, free))
            if out_dir is not None:
                router.method = config.method
                router.save(out_dir / "checkpoint.safetensors", extra={"epoch": str(epoch)})
            if progress:
                shown = {k: round(v, 4) for k, v in row.items() if k.startswith("eval/") or k == "train/loss"}
                print(f"[router {config.method}] epoch {epoch}/{config.epochs} {shown}", flush=True)
        history.append(row)
    seconds = time.perf_counter() - t0
    for p in router.net.parameters():
        p.requires_grad_(True)
    router.method = config.method
    router.eval()
    if out_dir is not None:
        atomic_write_text(out_dir / "train_log.jsonl", "".join(json.dumps(r) + "\n" for r in history))
        router.save(out_dir / "router.safetensors", extra={"epoch": str(config.epochs)})
    return TrainResult(router, history, train_ids, eval_ids, seconds)
