"""The router's training settings: one config dataclass per method (TRL style: ``__post_init__`` validates
and names the bad value).

- :class:`FBCConfig`: filtered behaviour cloning. Per prompt the *successful* configurations
  are those scoring at least ``success_threshold``; the target is the one with the most layers
  pruned (higher score breaks ties). Loss: MSE of ``mu`` against its ratio + BCE of the layer
  scores (optionally through a differentiable top-k).
- :class:`DPOConfig`: DPO against a frozen reference router (a copy of the starting weights:
  the FBC checkpoint given as ``init``, or the initial weights).
- :class:`ORPOConfig`: ORPO, reference-free: winners' NLL + ``beta`` x odds-ratio term.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from agents.router.topk import TOPK_METHODS
from dynprune.validation import require_at_least, require_finite, require_in_range, require_one_of, require_positive

__all__ = ["METHODS", "DPOConfig", "FBCConfig", "ORPOConfig", "RouterTrainConfig", "make_config"]

METHODS = ("fbc", "dpo", "orpo")


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
        require_at_least(self, 1, "epochs", "batch_size", "eval_every")
        require_positive(self, "lr")
        require_at_least(self, 0, "weight_decay", "max_grad_norm")  # max_grad_norm 0: no clipping
        require_one_of(self, "set_term", ("bernoulli", "plackett_luce"))
        require_in_range(self, 0, 1, "eval_fraction", interval="[)")
        require_finite(self, "success_threshold")

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
        require_at_least(self, 0, "layer_weight")
        require_one_of(self, "topk", TOPK_METHODS)
        require_positive(self, "topk_tau")


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
        require_positive(self, "beta")
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
        require_positive(self, "beta")


_CONFIGS: dict[str, type[RouterTrainConfig]] = {"fbc": FBCConfig, "dpo": DPOConfig, "orpo": ORPOConfig}


def make_config(method: str, **kwargs: Any) -> RouterTrainConfig:
    """The config dataclass of ``method`` (``"fbc"``, ``"dpo"``, ``"orpo"``) with ``kwargs``."""
    if method not in _CONFIGS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return _CONFIGS[method](**kwargs)
