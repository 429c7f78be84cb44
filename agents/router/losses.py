"""Router losses: filtered behaviour cloning (FBC), DPO and ORPO on pruning configurations.

A *configuration* is a set of pruned layers ``S`` with ``k = |S|``. Its ratio target is the
middle of the interval that ``k = floor(r * L)`` maps to ``k``: ``r* = (k + 0.5) / L``.

Log-probability of a configuration under the router (DPO, ORPO)::

    log pi(S | x) = log p_ratio(k | x) + log p_set(S | x)

- ratio term, ``"density"``: the Normal log-density of ``r*`` under ``N(mu, sigma^2)`` (the
  issue's definition, used by DPO); ``"bin"``: the probability that ``floor(r L) = k``, i.e.
  ``Phi((k+1)/L) - Phi(k/L)`` under ``N(mu, sigma^2)``, a true probability (ORPO's odds need one).
- set term, ``"bernoulli"``: every free layer is pruned independently with ``sigmoid(logit)``;
  ``"plackett_luce"``: ``S`` is the first ``k`` picks of a Plackett-Luce ranking by ``exp(logit)``,
  in the order of the router's own scores (the most likely ordering of the set; the sum over all
  ``k!`` orderings is intractable).

Only the free layers (not ``protected``) are decisions; the others never enter a loss.
Sources: DPO, Rafailov et al. 2023 ("Direct Preference Optimization", eq. 7); ORPO, Hong, Lee &
Thorne 2024 ("ORPO: Monolithic Preference Optimization without Reference Model", eqs. 4-7).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from agents.router.model import RouterOutput
from agents.router.topk import TOPK_METHODS, soft_topk

__all__ = [
    "RATIO_TERMS",
    "SET_TERMS",
    "ConfigLogProb",
    "LossOutput",
    "config_logprob",
    "dpo_loss",
    "fbc_loss",
    "orpo_loss",
    "ratio_target",
]

RATIO_TERMS = ("density", "bin")
SET_TERMS = ("bernoulli", "plackett_luce")
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class LossOutput(NamedTuple):
    """A scalar loss and the metrics logged with it (floats)."""

    loss: torch.Tensor
    metrics: dict[str, float]


class ConfigLogProb(NamedTuple):
    """Log-probability of a batch of configurations: ``total = ratio + set``; ``terms`` factors counted."""

    total: torch.Tensor
    ratio: torch.Tensor
    set: torch.Tensor
    terms: torch.Tensor


def ratio_target(k: torch.Tensor, num_layers: int) -> torch.Tensor:
    """``(k + 0.5) / L``: the middle of the ratios that ``floor(r * L)`` maps to ``k``."""
    return (k.to(torch.get_default_dtype()) + 0.5) / num_layers


def normal_log_density(r: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """``log N(r; mu, sigma^2) = -(r - mu)^2 / (2 sigma^2) - log sigma - log sqrt(2 pi)``."""
    return -0.5 * ((r - mu) / torch.exp(log_sigma)) ** 2 - log_sigma - _LOG_SQRT_2PI


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends (Maechler 2012)."""
    x = x.clamp_max(-1e-12)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def ratio_bin_logprob(k: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, num_layers: int) -> torch.Tensor:
    """``log P(k/L <= r < (k+1)/L)`` for ``r ~ N(mu, sigma^2)``, stable in the far tails.

    ``log(Phi(zb) - Phi(za))`` is computed on the side of the mean where it does not cancel:
    with ``za > 0`` as ``log(Phi(-za) - Phi(-zb))`` (the upper tail), else directly.
    """
    sigma = torch.exp(log_sigma)
    a = k.to(mu.dtype) / num_layers
    za = (a - mu) / sigma
    zb = (a + 1.0 / num_layers - mu) / sigma
    upper = za > 0
    # feed each branch only values it handles (a NaN in the unused branch would poison the gradient)
    za_u, zb_u = torch.where(upper, za, torch.ones_like(za)), torch.where(upper, zb, 2 * torch.ones_like(zb))
    za_l, zb_l = torch.where(upper, -torch.ones_like(za), za), torch.where(upper, torch.zeros_like(zb), zb)
    hi_u, lo_u = torch.special.log_ndtr(-za_u), torch.special.log_ndtr(-zb_u)
    upper_val = hi_u + _log1mexp(lo_u - hi_u)
    hi_l, lo_l = torch.special.log_ndtr(zb_l), torch.special.log_ndtr(za_l)
    lower_val = hi_l + _log1mexp(lo_l - hi_l)
    return torch.where(upper, upper_val, lower_val)


def bernoulli_set_logprob(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_i m_i log sigmoid(l_i) + (1 - m_i) log sigmoid(-l_i)`` over the given (free) layers."""
    return (mask * F.logsigmoid(logits) + (1.0 - mask) * F.logsigmoid(-logits)).sum(dim=1)


def plackett_luce_set_logprob(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plackett-Luce log-probability that the selected layers are the first ``k`` picks.

    The picks are taken in descending order of the router's logits:
    ``sum_j [ l_{pi_j} - log sum_{i not yet picked} exp(l_i) ]``.
    """
    selected = mask > 0.5
    # order the selected layers by descending logit (unselected ones go last)
    key = torch.where(selected, logits.detach(), torch.full_like(logits, float("-inf")))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    k = selected.sum(dim=1)
    remaining = torch.ones_like(logits, dtype=torch.bool)
    total = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
    rows = torch.arange(logits.shape[0], device=logits.device)
    for step in range(int(k.max().item()) if k.numel() else 0):
        pick = order[:, step]
        active = step < k
        denom = torch.logsumexp(logits.masked_fill(~remaining, float("-inf")), dim=1)
        term = logits[rows, pick] - denom
        total = total + torch.where(active, term, torch.zeros_like(term))
        remaining = remaining.clone()
        remaining[rows[active], pick[active]] = False
    return total


def config_logprob(
    out: RouterOutput,
    masks: torch.Tensor,
    free: torch.Tensor,
    num_layers: int,
    ratio_term: str = "density",
    set_term: str = "bernoulli",
) -> ConfigLogProb:
    """Log-probability of configurations (``masks`` ``[B, L]``, 1 = pruned) under the router's heads.

    Args:
        out: The router's output on the batch.
        masks: Pruned-layer masks of the configurations.
        free: Indices of the layers the router decides on (not protected).
        num_layers: ``L``.
        ratio_term: ``"density"`` or ``"bin"`` (module docstring).
        set_term: ``"bernoulli"`` or ``"plackett_luce"``.
    """
    if ratio_term not in RATIO_TERMS:
        raise ValueError(f"ratio_term must be one of {RATIO_TERMS}, got {ratio_term!r}")
    if set_term not in SET_TERMS:
        raise ValueError(f"set_term must be one of {SET_TERMS}, got {set_term!r}")
    m = masks[:, free].to(out.logits.dtype)
    logits = out.logits[:, free]
    k = masks.sum(dim=1)
    if ratio_term == "density":
        ratio = normal_log_density(ratio_target(k, num_layers).to(out.mu.dtype), out.mu, out.log_sigma)
    else:
        ratio = ratio_bin_logprob(k, out.mu, out.log_sigma, num_layers)
    if set_term == "bernoulli":
        set_lp = bernoulli_set_logprob(logits, m)
        terms = torch.full_like(ratio, 1.0 + logits.shape[1])
    else:
        set_lp = plackett_luce_set_logprob(logits, m)
        terms = 1.0 + k.to(ratio.dtype)
    return ConfigLogProb(ratio + set_lp, ratio, set_lp, terms)


# ----------------------------------------------------------------------------- FBC


def fbc_loss(
    out: RouterOutput,
    target_masks: torch.Tensor,
    free: torch.Tensor,
    num_layers: int,
    layer_weight: float = 1.0,
    topk: str = "none",
    tau: float = 0.1,
    generator: torch.Generator | None = None,
) -> LossOutput:
    """Filtered behaviour cloning on each prompt's successful configuration (the thesis' FBC).

    ``loss = (mu - r*)^2 + layer_weight * BCE(p, m)``, averaged over the batch, where ``r* = (k + 0.5)/L``,
    ``m`` the target mask on the free layers and ``p`` either ``sigmoid(logits)`` (``topk="none"``) or
    the soft top-k mask of the logits with the target's ``k`` (``"sinkhorn"`` / ``"gumbel"``), so the
    layer term scores the *selected set* rather than each layer alone.
    """
    if topk not in TOPK_METHODS:
        raise ValueError(f"topk must be one of {TOPK_METHODS}, got {topk!r}")
    m = target_masks[:, free].to(out.logits.dtype)
    k = target_masks.sum(dim=1)
    target_r = ratio_target(k, num_layers).to(out.mu.dtype)
    mse = ((out.mu - target_r) ** 2).mean()
    logits = out.logits[:, free]
    if topk == "none":
        bce = F.binary_cross_entropy_with_logits(logits, m)
    else:
        p = soft_topk(logits, k, topk, tau, generator=generator).clamp(1e-6, 1.0 - 1e-6)
        bce = F.binary_cross_entropy(p, m)
    loss = mse + layer_weight * bce
    with torch.no_grad():
        k_pred = torch.floor(out.mu * num_layers)
        k_mae = (k_pred - k.to(k_pred.dtype)).abs().mean()
    metrics = {"loss": float(loss.detach()), "mse": float(mse.detach()), "bce": float(bce.detach()),
               "k_mae": float(k_mae)}
    return LossOutput(loss, metrics)


# ----------------------------------------------------------------------------- DPO


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> LossOutput:
    """DPO (Rafailov et al. 2023, eq. 7): ``-log sigmoid(beta [(pi_w - ref_w) - (pi_l - ref_l)])``, mean.

    Metrics follow TRL's DPOTrainer: ``rewards/chosen = beta (pi_w - ref_w)``, ``rewards/rejected``,
    ``rewards/accuracies`` (chosen reward > rejected), ``rewards/margins``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    logits = chosen_reward - rejected_reward
    loss = -F.logsigmoid(logits).mean()
    return LossOutput(loss, {
        "loss": float(loss.detach()),
        "rewards/chosen": float(chosen_reward.detach().mean()),
        "rewards/rejected": float(rejected_reward.detach().mean()),
        "rewards/accuracies": float((chosen_reward > rejected_reward).float().mean()),
        "rewards/margins": float(logits.detach().mean()),
    })


# ----------------------------------------------------------------------------- ORPO


def orpo_loss(chosen: ConfigLogProb, rejected: ConfigLogProb, beta: float = 0.1) -> LossOutput:
    """ORPO (Hong et al. 2024): NLL of the winners plus ``beta`` times the odds-ratio term.

    With the per-factor average log-probability ``log P = total / terms`` (the paper's
    length-normalised ``log P_theta(y|x)``, eq. 4) and ``odds = P / (1 - P)``::

        L_OR  = -log sigmoid(log odds_w - log odds_l)                 (eq. 7)
        loss  = mean(-log P_w) + beta * mean(L_OR)                    (eq. 6; beta is the paper's lambda)

    Needs true probabilities: build ``chosen``/``rejected`` with ``ratio_term="bin"``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    # log P <= 0 for probabilities; a hair below 0 keeps log(1 - P) finite
    lp_w = (chosen.total / chosen.terms).clamp_max(-1e-6)
    lp_l = (rejected.total / rejected.terms).clamp_max(-1e-6)
    # log odds(y) = log P - log(1 - P)
    log_odds = (lp_w - _log1mexp(lp_w)) - (lp_l - _log1mexp(lp_l))
    ratio = F.logsigmoid(log_odds)
    nll = -lp_w.mean()
    or_term = -ratio.mean()
    loss = nll + beta * or_term
    return LossOutput(loss, {
        "loss": float(loss.detach()),
        "nll": float(nll.detach()),
        "or_loss": float(or_term.detach()),
        "log_odds_chosen": float(log_odds.detach().mean()),
        "rewards/accuracies": float((log_odds > 0).float().mean()),
    })
