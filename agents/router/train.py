"""Train the router from logged exploration (FBC) and preference pairs (DPO, ORPO).

The settings are :mod:`agents.router.configs` (one dataclass per method), the data
:mod:`agents.router.data`; their names are importable from here too. Prompts are split into
train and held-out (``eval_fraction``); held-out loss, preference accuracy (policy prefers the
winner) and the error of the predicted ``k`` against the FBC target are logged every
``eval_every`` epochs to ``train_log.jsonl``, with a checkpoint.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.router.configs import METHODS, DPOConfig, FBCConfig, ORPOConfig, RouterTrainConfig, make_config
from agents.router.data import RouterData, fbc_targets, healing_identity, layer_masks, load_router_data
from agents.router.losses import config_logprob, dpo_loss, fbc_loss, orpo_loss
from agents.router.model import Router, RouterNet
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
        self.t_mask = layer_masks(list(targets.values()), data.num_layers)
        pairs = [p for p in data.pairs if p["prompt_id"] in wanted]
        self.p_idx = torch.tensor([index[p["prompt_id"]] for p in pairs], dtype=torch.long)
        self.w_mask = layer_masks([p["winner_layers"] for p in pairs], data.num_layers)
        self.l_mask = layer_masks([p["loser_layers"] for p in pairs], data.num_layers)

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
