"""What DynPrune-v0 and DynPruneTable-v0 share: the observation's layout and the draws of an episode.

The table env stands in for DynPrune-v0 with stored outcomes, so the two must observe the same
fields in the same order and draw the same scenario, budget and prompt from the same seed
(``tests/test_table_env.py::test_table_env_equals_the_modelled_env``). One copy of that logic lives
here, free of torch, so the table env still imports no model stack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dynprune.telemetry import MISSING, TELEMETRY_FIELDS, Monitor

__all__ = [
    "BUDGET_FIELD",
    "PROMPT_FIELDS",
    "EmbeddingProjection",
    "PromptEpisodes",
    "check_budget_range",
    "monitor_seed",
    "observation_layout",
    "requested_prompt",
]

PROMPT_FIELDS = ("prompt_tokens", "prompt_perplexity", "complexity")
BUDGET_FIELD = "latency_budget"


def monitor_seed(seed: int) -> int:
    """The telemetry monitor's seed for an env seed: a child stream of ``seed``, independent of ``np_random``.

    Gymnasium's ``np_random`` and ``np.random.default_rng`` both seed PCG64 from
    ``SeedSequence(seed)``: handing the monitor the env's seed gave it the very stream the env
    draws budgets and prompts from, so after every seeded reset the scenario pick and the budget
    came from the same first number: each scenario drew its budgets from its own fifth of the range
    (tests/test_env.py::test_seeded_resets_draw_the_budget_independently_of_the_scenario).
    """
    return int(np.random.SeedSequence(seed, spawn_key=(1,)).generate_state(1)[0])


def check_budget_range(value: Any) -> tuple[float, float]:
    """``(low, high)`` with ``0 < low <= high <= 2``, else a ``ValueError`` naming the value."""
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError("a text, not two numbers")
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"budget_range must be two numbers (low, high) with 0 < low <= high <= 2, got {value!r}"
        ) from None
    if not 0 < lo <= hi <= 2:
        raise ValueError(f"budget_range must satisfy 0 < low <= high <= 2, got {value!r}")
    return lo, hi


@dataclass(frozen=True)
class EmbeddingProjection:
    """The ``prompt_embedding=N`` coordinates of a prompt: its mean-pooled input embedding, minus the
    vocabulary's mean embedding, L2-normalised, projected on N fixed orthonormal random directions and
    scaled by √H (Johnson-Lindenstrauss: random projections keep the distances between prompts).

    Attributes:
        rows: N x H orthonormal rows (seed 0: every env of a model projects on the same directions).
        vocab_mean: The vocabulary's mean input embedding (size H), the direction every prompt shares.
    """

    rows: np.ndarray
    vocab_mean: np.ndarray

    @classmethod
    def make(cls, n: int, vocab_mean: Sequence[float] | np.ndarray) -> EmbeddingProjection | None:
        """The projection on ``n`` directions for a model whose vocabulary mean is ``vocab_mean``; None for 0."""
        mean = np.asarray(vocab_mean, dtype=np.float64)
        hidden = mean.shape[0]
        if not 0 <= n <= hidden:
            raise ValueError(f"prompt_embedding must be in [0, hidden size {hidden}], got {n}")
        if n == 0:
            return None
        gauss = np.random.default_rng(0).standard_normal((hidden, n))
        q, _ = np.linalg.qr(gauss)  # H x N, orthonormal columns
        return cls(q.T.astype(np.float64), mean)

    @property
    def bound(self) -> float:
        """√H: no coordinate of a unit vector's projection exceeds it."""
        return math.sqrt(self.rows.shape[1])

    def coordinates(self, embedding: np.ndarray) -> np.ndarray:
        """The N observation coordinates of one prompt's mean-pooled embedding (size H)."""
        centred = np.asarray(embedding, dtype=np.float64) - self.vocab_mean
        unit = centred / max(float(np.linalg.norm(centred)), 1e-12)
        return self.rows @ unit * self.bound


def observation_layout(
    needs_budget: bool, projection: EmbeddingProjection | None
) -> tuple[tuple[str, ...], spaces.Box]:
    """The observation's field names and its ``Box``: telemetry, the prompt, the budget (when the reward
    needs one), then the projected prompt embedding (when there is a projection)."""
    names: tuple[str, ...] = TELEMETRY_FIELDS + PROMPT_FIELDS
    low = [MISSING] * len(TELEMETRY_FIELDS) + [0.0] * len(PROMPT_FIELDS)
    high = [1.0] * (len(TELEMETRY_FIELDS) + len(PROMPT_FIELDS))
    if needs_budget:
        names += (BUDGET_FIELD,)
        low.append(0.0)
        high.append(2.0)
    if projection is not None:
        n, bound = projection.rows.shape[0], projection.bound
        names += tuple(f"prompt_emb_{i}" for i in range(n))
        low += [-bound] * n
        high += [bound] * n
    return names, spaces.Box(np.array(low, np.float32), np.array(high, np.float32), dtype=np.float32)


def requested_prompt(
    options: dict[str, Any] | None, prompt_ids: Sequence[str], env: str, split: str | None
) -> int | None:
    """The position in ``prompt_ids`` of the prompt ``reset(options={"prompt_id": ...})`` asks for; None
    without options (the reset draws one). An unknown option key or id is a ``ValueError`` naming it."""
    if not options:
        return None
    unknown = sorted(set(options) - {"prompt_id"})
    if unknown:
        raise ValueError(f"unknown reset option(s) {unknown}; {env} takes "
                         "options={'prompt_id': <one of env.unwrapped.prompt_ids>}")
    try:
        return list(prompt_ids).index(options["prompt_id"])
    except ValueError:
        raise ValueError(f"prompt_id {options['prompt_id']!r} is not one of this env's {len(prompt_ids)} prompts "
                         f"(split {split!r}); list them with env.unwrapped.prompt_ids") from None


class PromptEpisodes(gym.Env):
    """The episode bookkeeping of an env that shows one prompt per step under a load scenario.

    A subclass sets ``monitor``, ``reward_fn``, ``budget_range`` and ``prompts_per_episode`` and
    calls :meth:`_begin_episode` from ``reset`` after ``super().reset(seed=seed)``.
    """

    monitor: Monitor
    budget_range: tuple[float, float]
    _episode: int = -1
    _step_in_episode: int = 0
    _cursor: int = 0
    _budget_rel: float | None = None

    def _begin_episode(self, seed: int | None) -> None:
        """The draws every reset makes, in order: the load scenario, then the budget (the prompt: the caller's)."""
        if seed is not None:  # a seeded reset starts a new run: same seed, same trajectory
            self.monitor.reset(monitor_seed(seed))
            self._cursor = 0
            self._episode = -1
        self.monitor.next_episode()
        self._episode += 1
        self._step_in_episode = 0
        if self.reward_fn.needs_budget:  # type: ignore[attr-defined]
            # Default (0.8, 1.2): centred on the full model's own latency, so the full model meets about half
            # the budgets and the other half ask for up to 1 / 0.8 - 1 = 25 % more speed, which the table's
            # fastest action gives (layers-25 %: +28 % mean live speed-up on SmolLM2-135M,
            # benchmarks/results/offline_rl_live.json). The best action then depends on the observed budget.
            # With (0.7, 1.1) and the scenarios' budget_scale, some action met the budget on only 10 of 24
            # held-out prompts, so "always the fastest action" was near-optimal
            # (offline_rl_budget_fixed.json: best static layers-25 %, oracle only 0.3 above it).
            lo, hi = self.budget_range
            self._budget_rel = float(self.np_random.uniform(lo, hi)) * float(self.monitor.budget_scale)
