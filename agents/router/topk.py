"""Differentiable top-k: a soft k-hot mask over per-layer scores that tends to the hard top-k.

The router prunes the ``k`` layers of highest prunability score. Selecting them is a
hard, piecewise-constant function of the scores; the two relaxations here give a mask
in ``[0, 1]^L`` that sums to ``k`` and has useful gradients, so a loss can be written
on the *selected set* rather than on each score alone.

- :func:`sinkhorn_topk`: top-k as an entropy-regularised optimal-transport problem
  between the ``L`` scores and two anchors ("kept", "pruned") with masses
  ``(L - k)/L`` and ``k/L`` (differentiable sorting by Sinkhorn iterations: Cuturi,
  Teboul & Vert 2019, "Differentiable Ranks and Sorting using Optimal Transport";
  Sinkhorn normalisation of assignments: Adams & Zemel 2011, "Ranking via Sinkhorn
  Propagation"; the two-anchor top-k form is Xie et al. 2020, "Differentiable Top-k
  with Optimal Transport"). As the temperature drops it converges to the hard top-k.
- :func:`gumbel_topk`: the Gumbel-top-k trick (Kool, van Hoof & Welling 2019,
  "Stochastic Beams and Where to Find Them": the top-k of Gumbel-perturbed logits is a
  sample without replacement) relaxed by ``k`` successive softmaxes, each removing the
  mass already taken (Xie & Ermon 2019, "Reparameterizable Subset Sampling via
  Continuous Relaxations"); ``hard=True`` adds a straight-through estimator.
"""

from __future__ import annotations

import math

import torch

__all__ = ["TOPK_METHODS", "gumbel_topk", "hard_topk", "sinkhorn_topk", "soft_topk"]

#: Names accepted by :func:`soft_topk` (``"none"``: no relaxation, the loss reads the scores directly).
TOPK_METHODS = ("none", "sinkhorn", "gumbel")


def _check(scores: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Validate shapes and return ``k`` as a long tensor of shape ``[B]``."""
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape [batch, layers], got {tuple(scores.shape)}")
    b, n = scores.shape
    k_t = torch.as_tensor(k, device=scores.device).long()
    if k_t.dim() == 0:
        k_t = k_t.expand(b)
    if k_t.shape != (b,):
        raise ValueError(f"k must be an int or have shape [{b}], got {tuple(k_t.shape)}")
    if bool(((k_t < 0) | (k_t > n)).any()):
        raise ValueError(f"k must be in 0..{n}, got {k_t.tolist()}")
    return k_t


def hard_topk(scores: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """The k-hot mask of the ``k`` highest scores per row (ties: the lower index first). Not differentiable."""
    k_t = _check(scores, k)
    # a stable descending sort: equal scores keep index order, so the result is deterministic
    order = torch.sort(scores.detach(), dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return (rank < k_t[:, None]).to(scores.dtype)


def sinkhorn_topk(
    scores: torch.Tensor, k: torch.Tensor | int, tau: float = 0.05, n_iter: int = 200
) -> torch.Tensor:
    """Soft top-k mask by entropic optimal transport (Sinkhorn iterations in the log domain).

    Args:
        scores: ``[B, L]`` scores (higher = more likely selected).
        k: Number selected, an int or ``[B]``.
        tau: Entropic temperature, relative to the scores' range per row; ``tau -> 0`` gives the hard top-k.
        n_iter: Sinkhorn iterations.

    Returns:
        ``[B, L]`` mask in ``[0, 1]``, each row summing to ``k``.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    k_t = _check(scores, k)
    b, n = scores.shape
    # Scores rescaled to [0, 1] per row, so tau means the same for any score scale.
    lo = scores.min(dim=1, keepdim=True).values
    span = (scores.max(dim=1, keepdim=True).values - lo).clamp_min(1e-12)
    s = (scores - lo) / span
    # Cost of sending score i to anchor j (0 = kept, 1 = pruned): C_ij = (s_i - y_j)^2, y = (0, 1);
    # in 1-D the optimal plan is monotone, so the k largest scores go to anchor 1 (Xie et al. 2020).
    anchors = torch.tensor([0.0, 1.0], dtype=scores.dtype, device=scores.device)
    cost = (s[:, :, None] - anchors[None, None, :]) ** 2  # [B, L, 2]
    # Marginals: each score carries 1/L; the anchors receive (L - k)/L and k/L.
    log_mu = torch.full((b, n), -math.log(n), dtype=scores.dtype, device=scores.device)
    kf = k_t.to(scores.dtype)
    nu = torch.stack([(n - kf) / n, kf / n], dim=1)
    log_nu = torch.log(nu.clamp_min(1e-30))
    # Log-domain Sinkhorn (Cuturi 2013; Cuturi et al. 2019) on dual potentials f, g (cost units):
    # alternate column and row updates until the plan exp((f_i + g_j - C_ij) / eps) has marginals
    # (mu, nu). eps is annealed geometrically from 1 down to tau over the first half of the
    # iterations ("epsilon scaling", Schmitzer 2019): at a small tau alone convergence is very slow.
    f = torch.zeros((b, n), dtype=scores.dtype, device=scores.device)
    g = torch.zeros((b, 2), dtype=scores.dtype, device=scores.device)
    start = max(1.0, tau)
    warm = max(1, n_iter // 2)
    for it in range(n_iter):
        eps = start * (tau / start) ** min(1.0, it / warm)
        # columns first, rows last: every row then sums to exactly 1/L, so the mask stays in [0, 1]
        g = eps * (log_nu - torch.logsumexp((f[:, :, None] - cost) / eps, dim=1))
        f = eps * (log_mu - torch.logsumexp((g[:, None, :] - cost) / eps, dim=2))
    plan = torch.exp((f[:, :, None] + g[:, None, :] - cost) / tau)  # [B, L, 2], rows sum to 1/L
    mask = n * plan[:, :, 1]
    # rows with k = 0 or k = L are exact (the anchor with zero mass gets nothing)
    mask = torch.where(kf[:, None] == 0, torch.zeros_like(mask), mask)
    mask = torch.where(kf[:, None] == n, torch.ones_like(mask), mask)
    return mask


def gumbel_topk(
    logits: torch.Tensor,
    k: torch.Tensor | int,
    tau: float = 0.5,
    hard: bool = False,
    generator: torch.Generator | None = None,
    noise: bool = True,
) -> torch.Tensor:
    """Relaxed k-subset sample: Gumbel-perturbed logits, then ``k`` successive softmaxes (Xie & Ermon 2019).

    Args:
        logits: ``[B, L]`` unnormalised log-weights of the layers.
        k: Subset size, an int or ``[B]``.
        tau: Softmax temperature; ``tau -> 0`` gives the Gumbel-top-k sample (Kool et al. 2019).
        hard: Straight-through: the forward value is the hard k-hot mask of the relaxed one,
            the gradient is the relaxed mask's.
        generator: Seeded source of the Gumbel noise.
        noise: ``False`` drops the Gumbel noise (a deterministic relaxation of the plain top-k).

    Returns:
        ``[B, L]`` mask in ``[0, 1]``, each row summing to ``k``.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    k_t = _check(logits, k)
    if noise:
        u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
        keys = logits + gumbel
    else:
        keys = logits
    khot = torch.zeros_like(keys)
    onehot_approx = torch.zeros_like(keys)
    max_k = int(k_t.max().item()) if k_t.numel() else 0
    for step in range(max_k):
        # remove the mass already selected: log(1 - p) pushes taken items towards -inf
        keys = keys + torch.log((1.0 - onehot_approx).clamp_min(1e-20))
        onehot_approx = torch.softmax(keys / tau, dim=1)
        active = (k_t > step).to(keys.dtype)[:, None]  # rows whose k is already reached stop adding
        khot = khot + active * onehot_approx
    if hard:
        hard_mask = hard_topk(khot, k_t)
        return hard_mask - khot.detach() + khot
    return khot


def soft_topk(
    scores: torch.Tensor,
    k: torch.Tensor | int,
    method: str,
    tau: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Dispatch to :func:`sinkhorn_topk` or :func:`gumbel_topk` by name (``method`` in :data:`TOPK_METHODS`)."""
    if method == "sinkhorn":
        return sinkhorn_topk(scores, k, tau=tau)
    if method == "gumbel":
        return gumbel_topk(scores, k, tau=tau, generator=generator)
    raise ValueError(f"soft top-k method must be 'sinkhorn' or 'gumbel', got {method!r}")
