"""Rewards: small callables on the outcome of one pruned step.

Each reward is an object with flags, after CompilerGym: ``deterministic`` (same
inputs, same reward on every run: true only for rewards that never read a clock)
and ``platform_dependent`` (depends on the machine's speed). A reward returns
``(reward, terminated)``; only CASRAP's early termination ends an episode.

Speed-ups are fractions: ``0.2`` means 20 % faster (``baseline / pruned - 1``
on latency per generated token); a negative value is a slowdown.

Memory: :func:`memory_term` is what the environments add to any reward when the machine is
short of RAM (the ``low_memory`` scenario): the KV cache a plan needs is charged in proportion
to the memory pressure, so a KV-cache window (``dynprune.pruning.kv``) pays off there and only there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class Outcome:
    """What a reward sees about one step.

    Attributes:
        speedup: Throughput gain of the pruned model, ``t_full / t_pruned - 1`` per token.
        baseline_ppl: Perplexity of the full model's answer under the full model.
        pruned_ppl: Perplexity of the full model's answer under the pruned model.
        prefix_fidelity: Share of the full model's answer the pruned model reproduces before its first
            different token, in [0, 1] (``Evaluation.prefix_fidelity``): profiled timing measures it
            exactly as live timing does, so it is the fidelity every reward sees.
        task_score: Ground-truth score of the pruned output, or None without ground truth.
        kept_fraction: Fraction of per-token matmul FLOPs the plan keeps, in (0, 1].
        latency_s: Effective latency of the pruned generation (load factor applied).
        budget_s: Latency budget of the episode, or None.
        kv_fraction: Tokens the plan's KV cache holds at its peak over the tokens of the context, in
            (0, 1]: below 1 only for a KV window (``PruningPlan.kv``).
        mem_available_frac: Available RAM fraction the agent observed, or None (not known).
    """

    speedup: float
    baseline_ppl: float
    pruned_ppl: float
    prefix_fidelity: float
    task_score: float | None
    kept_fraction: float
    latency_s: float = 0.0
    budget_s: float | None = None
    kv_fraction: float = 1.0
    mem_available_frac: float | None = None

    @property
    def ppl_degradation(self) -> float:
        """Relative perplexity increase, ``pruned / baseline - 1``."""
        return self.pruned_ppl / self.baseline_ppl - 1.0 if self.baseline_ppl > 0 else 0.0

    @property
    def fidelity(self) -> float:
        """Deprecated name of :attr:`prefix_fidelity` (``fidelity`` alone also meant token agreement elsewhere)."""
        return self.prefix_fidelity

    @property
    def quality(self) -> float:
        """:func:`quality` of this step: its task score when the prompt has ground truth, else its prefix fidelity."""
        return quality(self.task_score, self.prefix_fidelity)


def quality(task_score: float | None, fidelity: float) -> float:
    """The quality of a pruned answer, one rule for the rewards, the preference pairs (``offline_data.prefs``)
    and the DFS exploration (``offline_data.explore``): its task score when the prompt has ground truth and
    the score is known, else its fidelity to the full model's answer.

    The caller passes the fidelity it has: the rewards pass the prefix fidelity (:attr:`Outcome.prefix_fidelity`);
    the logs pass the token agreement of their rows (logs written before prefix fidelity was logged have
    only that one), and pass ``task_score=None`` for a profiled row, whose task score is known only for
    plans that reproduce the full answer (``offline_data.prefs.row_score``).
    """
    return float(task_score) if task_score is not None else float(fidelity)


@runtime_checkable
class RewardFn(Protocol):
    """A reward: ``reward(outcome) -> (value, terminated)`` plus flags."""

    name: str
    deterministic: bool
    platform_dependent: bool
    needs_budget: bool

    def __call__(self, outcome: Outcome) -> tuple[float, bool]: ...


@dataclass(frozen=True)
class CasrapReward:
    """The reward of CASRAP (RL-driven runtime pruning: a Double DQN picks a plan per prompt).

    ``0.7 * speedup - 0.3 * max(0, ppl degradation)``, plus a bonus of +1 at a
    speed-up of at least 15 % and +2 at 20 %; a slower model gets
    ``-10 - 20 * |slowdown|`` and beyond ``terminate_slowdown`` (10 %) the
    episode ends early with ``termination_penalty`` (-20).
    """

    speed_weight: float = 0.7
    ppl_weight: float = 0.3
    terminate_slowdown: float = 0.10
    termination_penalty: float = -20.0
    name: str = "casrap"
    deterministic: bool = False
    platform_dependent: bool = True
    needs_budget: bool = False

    def __call__(self, outcome: Outcome) -> tuple[float, bool]:
        s = outcome.speedup
        if s < 0:
            slowdown = -s
            if slowdown > self.terminate_slowdown:
                return self.termination_penalty, True
            return -10.0 - 20.0 * slowdown, False
        reward = self.speed_weight * s - self.ppl_weight * max(0.0, outcome.ppl_degradation)
        if s >= 0.20:
            reward += 2.0
        elif s >= 0.15:
            reward += 1.0
        return reward, False


@dataclass(frozen=True)
class AccuracyEfficiencyReward:
    """Quality plus a weight times the fraction of compute removed (the thesis' trade-off).

    ``quality + weight * (1 - kept_fraction)``; quality is the task score when the
    prompt has ground truth, else fidelity to the full model.
    """

    weight: float = 1.0
    name: str = "accuracy_efficiency"
    deterministic: bool = True
    platform_dependent: bool = False
    needs_budget: bool = False

    def __call__(self, outcome: Outcome) -> tuple[float, bool]:
        return outcome.quality + self.weight * (1.0 - outcome.kept_fraction), False


@dataclass(frozen=True)
class LatencyBudgetReward:
    """Quality when the latency budget is met; below every met budget when it is not.

    Met: ``quality`` (in [0, 1]). Missed: ``quality - 1 - penalty * overshoot`` with
    ``overshoot = latency / budget - 1``, so any met budget beats any miss and a
    bigger miss costs more. The budget and the machine's load factor come from the
    environment (telemetry scenario), which is what makes the hardware part of the
    observation matter.
    """

    penalty: float = 2.0
    name: str = "latency_budget"
    deterministic: bool = False
    platform_dependent: bool = True
    needs_budget: bool = True

    def __call__(self, outcome: Outcome) -> tuple[float, bool]:
        if outcome.budget_s is None:
            raise ValueError("latency_budget reward needs a budget; the environment did not provide one")
        if outcome.latency_s <= outcome.budget_s:
            return outcome.quality, False
        overshoot = outcome.latency_s / outcome.budget_s - 1.0
        return outcome.quality - 1.0 - self.penalty * overshoot, False


@dataclass(frozen=True)
class ProxyReward:
    """Deterministic proxy: prefix fidelity plus compute removed, no clock involved.

    ``prefix_fidelity + weight * (1 - kept_fraction)``: the prefix fidelity is teacher-forced
    (deterministic on a fixed machine), ``kept_fraction`` is counted from the plan. For
    determinism and replay tests.
    """

    weight: float = 1.0
    name: str = "proxy"
    deterministic: bool = True
    platform_dependent: bool = False
    needs_budget: bool = False

    def __call__(self, outcome: Outcome) -> tuple[float, bool]:
        return outcome.prefix_fidelity + self.weight * (1.0 - outcome.kept_fraction), False


MEMORY_PRESSURE_THRESHOLD = 0.25
"""Available RAM fraction below which the KV cache is charged (idle 0.70, busy_cpu 0.50, low_memory 0.08)."""


def memory_pressure(mem_available_frac: float | None, threshold: float = MEMORY_PRESSURE_THRESHOLD) -> float:
    """``clip((threshold - available) / threshold, 0, 1)``: 0 with RAM to spare, 1 with none left.

    The low_memory scenario (8 % available on average) gives about 0.68; every other scenario 0.
    Unknown memory (None, or the observation's -1 for a missing field) gives 0.
    """
    if mem_available_frac is None or mem_available_frac < 0:
        return 0.0
    return min(1.0, max(0.0, (threshold - mem_available_frac) / threshold))


def memory_term(outcome: Outcome, weight: float = 1.0, threshold: float = MEMORY_PRESSURE_THRESHOLD) -> float:
    """What memory pressure adds to a step's reward: ``weight * pressure * (1 - kv_fraction)``.

    Under pressure every plan is charged ``weight * pressure * kv_fraction`` for the KV cache it
    needs (a whole cache costs ``weight`` at full pressure, the scale of a perfect answer's quality);
    the part every plan pays alike, ``weight * pressure``, is left out, so a plan that keeps the whole
    cache (every plan without a KV window) gets exactly the reward it got without the charge, and
    the reward tables of the default actions stay valid. Without pressure the term is 0, so a window
    there only costs quality.
    """
    return weight * memory_pressure(outcome.mem_available_frac, threshold) * (1.0 - outcome.kv_fraction)


REWARDS: dict[str, type] = {
    "casrap": CasrapReward,
    "accuracy_efficiency": AccuracyEfficiencyReward,
    "latency_budget": LatencyBudgetReward,
    "proxy": ProxyReward,
}


def make_reward(reward: str | RewardFn) -> RewardFn:
    """A reward by name (``casrap``, ``accuracy_efficiency``, ``latency_budget``, ``proxy``) or as given."""
    if isinstance(reward, str):
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; expected one of {sorted(REWARDS)} or a RewardFn object")
        return REWARDS[reward]()
    if not isinstance(reward, RewardFn):
        raise ValueError(f"reward must be a name or a RewardFn object, got {reward!r}")
    return reward
