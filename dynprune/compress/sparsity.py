"""Unstructured and 2:4 semi-structured weight pruning of the decoder's linear projections.

Scores (lower = pruned first), per weight ``W[i, j]`` of a linear layer ``y = W x``:

- ``"magnitude"``: ``|W[i, j]|``, compared across each output row.
- ``"wanda"``: ``|W[i, j]| * ||X_j||_2`` where ``X_j`` is input feature ``j`` over every
  calibration token (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs",
  eq. 1); pruned per output row, as the paper prescribes (its comparison group is the row).
- ``"2:4"``: in every group of 4 consecutive input weights of a row keep the 2 with the
  highest Wanda score (NVIDIA's 2:4 pattern; the Wanda paper's N:M variant). On a CUDA GPU of
  compute capability >= 8.0 :func:`to_semi_structured` converts the weights to
  ``torch.sparse.SparseSemiStructuredTensor`` so the sparse kernels run; elsewhere the mask
  is applied to dense weights.

The input norms of every layer are taken in one pass of the *unpruned* model (one-shot);
the Wanda reference code instead calibrates layer by layer on the outputs of the already
pruned earlier layers. One pass is cheaper; on deep models the sequential variant may be
somewhat better at high sparsity.

Zeroed weights stay in dense storage, so unstructured sparsity alone does not speed up
dense matrix kernels; the benchmark measures that rather than assuming it.
Embeddings and ``lm_head`` are not pruned (as in Wanda).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dynprune.compress.healing import PROJECTIONS
from dynprune.validation import require_in_range, require_one_of

METHODS = ("magnitude", "wanda", "2:4")


@dataclass(frozen=True)
class SparsityConfig:
    """Settings of a pruning run.

    Attributes:
        method: ``"magnitude"``, ``"wanda"`` or ``"2:4"``.
        sparsity: Fraction of each row's weights set to zero, in [0, 1); fixed at 0.5 for ``"2:4"``.
    """

    method: str = "wanda"
    sparsity: float = 0.5

    def __post_init__(self) -> None:
        require_one_of(self, "method", METHODS)
        require_in_range(self, 0, 1, "sparsity", interval="[)")
        if self.method == "2:4" and self.sparsity != 0.5:
            raise ValueError(f"2:4 sparsity is 0.5 by construction, got sparsity={self.sparsity}")


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``{qualified name: module}`` of every attention / MLP projection of the decoder layers."""
    out = {}
    for name, module in model.model.layers.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in PROJECTIONS:
            out[f"model.layers.{name}"] = module
    return out


@torch.no_grad()
def input_norms(model: nn.Module, windows: torch.Tensor, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """``||X_j||_2`` over all calibration tokens for the input features of every prunable linear."""
    linears = prunable_linears(model)
    sq = {name: torch.zeros(m.in_features, dtype=torch.float64) for name, m in linears.items()}

    def hook(name: str):  # noqa: ANN202 - hook factory
        def fn(module, args):  # noqa: ANN001, ANN202
            x = args[0].detach().double()
            sq[name] += (x * x).reshape(-1, x.shape[-1]).sum(dim=0).cpu()

        return fn

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in linears.items()]
    device = next(model.parameters()).device
    try:
        for start in range(0, windows.shape[0], batch_size):
            model(input_ids=windows[start : start + batch_size].to(device), use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    return {name: s.sqrt() for name, s in sq.items()}


def _mask_rows(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask zeroing the ``floor(sparsity * in)`` lowest scores of every row."""
    n_prune = int(sparsity * score.shape[1])
    mask = torch.ones_like(score, dtype=torch.bool)
    if n_prune:
        idx = torch.topk(score, n_prune, dim=1, largest=False).indices
        mask.scatter_(1, idx, False)
    return mask


def _mask_n_m(score: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep-mask with the ``n`` highest scores of every group of ``m`` consecutive inputs."""
    rows, cols = score.shape
    if cols % m:
        raise ValueError(f"2:4 sparsity needs in_features divisible by {m}, got {cols}")
    groups = score.reshape(rows, cols // m, m)
    idx = torch.topk(groups, m - n, dim=-1, largest=False).indices
    mask = torch.ones_like(groups, dtype=torch.bool)
    mask.scatter_(-1, idx, False)
    return mask.reshape(rows, cols)


@torch.no_grad()
def prune(model: nn.Module, config: SparsityConfig, windows: torch.Tensor | None = None) -> float:
    """Zero weights of every decoder projection of ``model`` in place; return the sparsity reached.

    ``windows`` (calibration token ids) are needed for Wanda and 2:4 (their scores use the
    input activations of the unpruned model).
    """
    linears = prunable_linears(model)
    norms = None
    if config.method in ("wanda", "2:4"):
        if windows is None:
            raise ValueError(f"{config.method} needs calibration windows (input activations)")
        norms = input_norms(model, windows)
    zeros = total = 0
    for name, m in linears.items():
        w = m.weight
        score = w.detach().abs().double()
        if norms is not None:
            score = score * norms[name].to(score.device)[None, :]  # Wanda: |W_ij| * ||X_j||
        mask = _mask_n_m(score) if config.method == "2:4" else _mask_rows(score, config.sparsity)
        w.mul_(mask.to(w.dtype))
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total


def measured_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over the decoder projections' weights."""
    linears = prunable_linears(model)
    zeros = sum(int((m.weight == 0).sum()) for m in linears.values())
    return zeros / sum(m.weight.numel() for m in linears.values())


def semi_structured_supported(device: torch.device) -> bool:
    """True on a CUDA GPU of compute capability >= 8.0 (where PyTorch's 2:4 kernels run)."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


def to_semi_structured(model: nn.Module) -> int:
    """Convert every 2:4-pruned projection's weight to a semi-structured sparse tensor; return how many.

    Raises ``ValueError`` where the GPU does not support it (the dense masked weights still work).
    """
    device = next(model.parameters()).device
    if not semi_structured_supported(device):
        raise ValueError(f"2:4 sparse kernels need a CUDA GPU of compute capability >= 8.0; model is on {device}")
    from torch.sparse import to_sparse_semi_structured

    n = 0
    for m in prunable_linears(model).values():
        m.weight = nn.Parameter(to_sparse_semi_structured(m.weight.detach()), requires_grad=False)
        n += 1
    return n
