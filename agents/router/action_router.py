"""A prompt-only router over an action table, trained with FBC, DPO or ORPO on measured rewards.

The thesis' router (``agents.router.model``) picks a *layer set*; this one picks an *entry of the
env's action table* (heads, layers, FFN channels, none), so it competes with the RL agents on
the same action space. It sees only the prompt, as a router does (no telemetry, no budget): a
prompt vector (the served model's mean-pooled input embedding, ``"light"``, or a MiniLM
sentence embedding, ``"minilm"``, both from ``info``) plus the three prompt features of the
observation, into a small MLP with one logit per action; ``pi(a | x) = softmax(logits)``.

Training data per train prompt: every action's reward (the mean over the load scenarios it was
measured under), from a reward table (``envs/table_env.py``, ``action_rewards``).

- **FBC** (filtered behaviour cloning): cross-entropy to the prompt's best action.
- **DPO** (Rafailov et al. 2023, eq. 7) from the FBC router as the frozen reference, on every
  pair of actions whose rewards differ by more than ``margin`` (higher reward wins).
- **ORPO** (Hong, Lee & Thorne 2024, eqs. 4-7) from scratch: NLL of the winner plus ``beta`` times
  the odds-ratio term, on pairs (the prompt's best action, each action worse by more than
  ``margin``), as in the binarised UltraFeedback pairs ORPO was trained on (chosen = the best
  rated). On every pair the NLL term would also lift middle actions that win some pairs: on a
  three-action toy (``tests/test_answer.py``) held-out accuracy fell from above 0.85 to 0.73.

The DPO and ORPO losses are those of :mod:`agents.router.losses`, fed with categorical
log-probabilities.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents.router.losses import ConfigLogProb, dpo_loss, orpo_loss
from dynprune.validation import require_at_least, require_one_of, require_positive

__all__ = ["METHODS", "ActionRouter", "ActionRouterConfig", "preference_pairs", "router_features",
           "train_action_router"]

METHODS = ("fbc", "dpo", "orpo")
"""Training methods of :func:`train_action_router`."""

PROMPT_OBS = slice(5, 8)
"""The prompt features (tokens, perplexity, complexity) in a DynPrune observation (after 5 telemetry fields)."""


@dataclass(frozen=True)
class ActionRouterConfig:
    """Settings of one router training run.

    Args:
        method: ``"fbc"``, ``"dpo"`` or ``"orpo"``.
        hidden: Width of the MLP's hidden layer.
        epochs: Passes over the training examples.
        lr: Adam step size.
        beta: DPO's beta, ORPO's lambda.
        margin: Reward difference below which two actions form no preference pair.
        weight_decay: Adam weight decay.
    """

    method: str = "fbc"
    hidden: int = 64
    epochs: int = 200
    lr: float = 3e-3
    beta: float = 0.1
    margin: float = 0.01
    weight_decay: float = 1e-4

    def __post_init__(self) -> None:
        require_one_of(self, "method", METHODS)
        require_at_least(self, 1, "hidden", "epochs")
        require_positive(self, "lr", "beta")
        require_at_least(self, 0, "margin", "weight_decay")


class ActionRouter(nn.Module):
    """Prompt vector + prompt features -> one logit per table action; :meth:`act` is the argmax.

    Args:
        n_inputs: Length of the prompt vector plus 3 (the prompt features).
        n_actions: Size of the action table.
        hidden: Hidden width.
        encoder: ``"light"`` (``info["prompt_embedding"]``) or ``"minilm"`` (needs ``encode``).
        encode: For ``"minilm"``: prompt text -> vector (e.g. ``SentenceEncoder``); cached per text.
    """

    kind = "action-router"

    def __init__(self, n_inputs: int, n_actions: int, hidden: int = 64, encoder: str = "light",
                 encode: Any = None) -> None:
        super().__init__()
        if encoder not in ("light", "minilm"):
            raise ValueError(f"encoder must be 'light' or 'minilm', got {encoder!r}")
        if encoder == "minilm" and encode is None:
            raise ValueError("a minilm router needs encode= (prompt text -> vector)")
        self.encoder, self.encode, self._cache = encoder, encode, {}
        self.net = nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, n_actions))
        self.register_buffer("mean", torch.zeros(n_inputs))
        self.register_buffer("scale", torch.ones(n_inputs))

    def features(self, obs: np.ndarray, info: Mapping[str, Any]) -> np.ndarray:
        """The router's input for one step: prompt vector then the observation's prompt features."""
        if self.encoder == "light":
            vec = np.asarray(info["prompt_embedding"], dtype=np.float32)
        else:
            text = str(info["prompt"])
            if text not in self._cache:
                self._cache[text] = np.asarray(self.encode(text), dtype=np.float32).reshape(-1)
            vec = self._cache[text]
        return np.concatenate([vec, np.asarray(obs, dtype=np.float32)[PROMPT_OBS]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape ``(batch, n_actions)``."""
        return self.net((x - self.mean) / self.scale)

    @torch.no_grad()
    def act(self, obs: np.ndarray, info: Mapping[str, Any] | None = None) -> int:
        """The most likely action for this prompt; needs ``info`` (the prompt's embedding or text)."""
        if info is None:
            raise ValueError("ActionRouter.act needs the step's info (prompt_embedding / prompt)")
        x = torch.as_tensor(self.features(obs, info)).unsqueeze(0)
        return int(self(x).argmax(dim=1)[0])


def preference_pairs(rewards: np.ndarray, margin: float, best_only: bool = False
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (prompt, winner, loser) whose rewards differ by more than ``margin``; rewards is prompts x actions.

    ``best_only``: winners are only each prompt's best action.
    """
    p, w, l_ = [], [], []
    n = rewards.shape[1]
    for i, row in enumerate(rewards):
        for a in ([int(np.argmax(row))] if best_only else range(n)):
            for b in range(n):
                if row[a] - row[b] > margin:
                    p.append(i)
                    w.append(a)
                    l_.append(b)
    return np.array(p, dtype=np.int64), np.array(w, dtype=np.int64), np.array(l_, dtype=np.int64)


def _fit(router: ActionRouter, x: torch.Tensor, loss_fn: Any, epochs: int, lr: float, wd: float) -> list[float]:
    opt = torch.optim.Adam(router.parameters(), lr=lr, weight_decay=wd)
    losses = []
    for _ in range(epochs):  # full batch: a few hundred prompts
        opt.zero_grad()
        loss = loss_fn(F.log_softmax(router(x), dim=1))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def train_action_router(
    features: np.ndarray,
    rewards: np.ndarray,
    config: ActionRouterConfig,
    seed: int = 0,
    encoder: str = "light",
    encode: Any = None,
    reference: ActionRouter | None = None,
) -> ActionRouter:
    """Train a router on ``features`` (prompts x inputs, see :meth:`ActionRouter.features`) and ``rewards``.

    ``rewards`` is prompts x actions (each action's mean reward on the prompt). DPO starts from
    ``reference`` (an FBC router; trained here with the same seed when None) and keeps a frozen copy.
    """
    if features.ndim != 2 or rewards.ndim != 2 or len(features) != len(rewards):
        raise ValueError(f"features and rewards must be prompts x inputs / prompts x actions, got "
                         f"{features.shape} and {rewards.shape}")
    torch.manual_seed(seed)
    x = torch.as_tensor(features, dtype=torch.float32)
    router = ActionRouter(x.shape[1], rewards.shape[1], config.hidden, encoder, encode)
    router.mean.copy_(x.mean(dim=0))
    router.scale.copy_(x.std(dim=0).clamp_min(1e-6))
    best = torch.as_tensor(rewards.argmax(axis=1))
    if config.method == "fbc":
        _fit(router, x, lambda logp: F.nll_loss(logp, best), config.epochs, config.lr, config.weight_decay)
        return router.eval()
    p, w, l_ = (torch.as_tensor(a) for a in preference_pairs(rewards, config.margin, config.method == "orpo"))
    if len(p) == 0:
        raise ValueError(f"no preference pairs: every action's reward is within margin {config.margin} on every prompt")
    if config.method == "dpo":
        ref = reference or train_action_router(features, rewards, ActionRouterConfig(
            "fbc", config.hidden, config.epochs, config.lr, weight_decay=config.weight_decay), seed, encoder, encode)
        with torch.no_grad():
            ref_logp = F.log_softmax(ref(x), dim=1)
        router.load_state_dict(ref.state_dict())

        def loss(logp: torch.Tensor) -> torch.Tensor:
            return dpo_loss(logp[p, w], logp[p, l_], ref_logp[p, w], ref_logp[p, l_], config.beta).loss
    else:
        ones = torch.ones(len(p))

        def loss(logp: torch.Tensor) -> torch.Tensor:
            chosen, rejected = logp[p, w], logp[p, l_]
            return orpo_loss(ConfigLogProb(chosen, torch.zeros_like(chosen), chosen, ones),
                             ConfigLogProb(rejected, torch.zeros_like(rejected), rejected, ones), config.beta).loss
    _fit(router, x, loss, config.epochs, config.lr, config.weight_decay)
    return router.eval()


def router_features(router_inputs: Sequence[tuple[np.ndarray, Mapping[str, Any]]], encoder: str = "light",
                    encode: Any = None) -> np.ndarray:
    """Stack :meth:`ActionRouter.features` of ``(obs, info)`` steps without a trained router."""
    probe = ActionRouter(1, 1, 1, encoder, encode)
    return np.stack([probe.features(obs, info) for obs, info in router_inputs])
