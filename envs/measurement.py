"""One DynPrune-v0 step's result: a plan measured on a prompt under the observed load, and rewarded.

:class:`Measurement` is the one object a step builds (``DynPruneEnv._measure``); the step's
:class:`~dynprune.types.StepRecord` (:attr:`Measurement.record`) and the step keys of its info
(:func:`step_info`) are read from it, field by field. It lives with the env, not in
``dynprune.types``: it holds the env's own quantities (its load factor, budget and reward) and
nothing outside ``envs`` builds or reads one; what crosses modules is the record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

from dynprune.plan import PruningPlan
from dynprune.rewards import Outcome
from dynprune.telemetry import MISSING
from dynprune.types import Baseline, Evaluation, Prompt, StepRecord

_BASELINE_KEYS = ("latency_s", "tokens_per_s", "ppl", "task_score")
_PRUNED_KEYS = ("latency_s", "tokens_per_s", "ppl", "token_agreement", "exact_match", "task_score", "speedup")


def _number(value: float | None) -> float:
    """A float for an info value: -1 (``MISSING``) for none."""
    return MISSING if value is None else float(value)


@dataclass(frozen=True)
class Measurement:
    """A plan measured on the env's current prompt under the observed load, and rewarded (one step).

    Times are under the load: the evaluation's times scaled by :attr:`load_factor` (the env applies
    it once, when it builds the measurement), as the reward and the record see them.

    Attributes:
        episode: Episode index of the env when measured.
        step: Step index within the episode.
        observation: The observation the agent acted on.
        prompt: The prompt measured.
        action: Table id of the plan, or -1 (a layer mask, any other plan).
        action_name: The table entry's name, or the plan's description.
        plan: The plan measured.
        healing: The healing active under the plan (``PrunableLM.healing_label``), or None.
        baseline: The full model on the prompt (``PlanEvaluator.baseline``).
        evaluation: The plan on the prompt (``PlanEvaluator.evaluate``), unloaded.
        load_factor: ``monitor.latency_factor`` of the step: how much the load slows every model.
        baseline_latency_s, pruned_latency_s: The full model's and the plan's latency under the load.
        baseline_tokens_per_s, pruned_tokens_per_s: Their throughput under the load.
        outcome: What the reward saw (latency and budget under the load, KV share, observed RAM).
        reward: The reward, its memory term included.
        terminated: The reward ended the episode (CASRAP: too slow).
        memory_term: What the memory pressure added to the reward (``dynprune.rewards.memory_term``).
    """

    episode: int
    step: int
    observation: tuple[float, ...]
    prompt: Prompt
    action: int
    action_name: str
    plan: PruningPlan
    healing: str | None
    baseline: Baseline
    evaluation: Evaluation
    load_factor: float
    baseline_latency_s: float
    pruned_latency_s: float
    baseline_tokens_per_s: float
    pruned_tokens_per_s: float
    outcome: Outcome
    reward: float
    terminated: bool
    memory_term: float

    @cached_property
    def record(self) -> StepRecord:
        """The step's :class:`StepRecord` (``metrics.jsonl``, ``info["record"]``), built once on first read."""
        ev, base, feats = self.evaluation, self.baseline, self.baseline.features
        return StepRecord(
            episode=self.episode,
            step=self.step,
            split=self.prompt.split,
            prompt_id=self.prompt.id,
            prompt_tokens=feats.n_tokens,
            prompt_perplexity=feats.perplexity,
            complexity=feats.complexity,
            action=self.action,
            action_name=self.action_name,
            plan=self.plan.to_dict(),
            timing=ev.timing,
            baseline_latency_s=self.baseline_latency_s,
            pruned_latency_s=self.pruned_latency_s,
            baseline_tokens_per_s=self.baseline_tokens_per_s,
            pruned_tokens_per_s=self.pruned_tokens_per_s,
            speedup=ev.speedup,
            baseline_ppl=base.ppl,
            pruned_ppl=ev.ppl,
            ppl_change=self.outcome.ppl_degradation,
            token_agreement=ev.token_agreement,
            task_score=ev.task_score,
            kept_fraction=ev.kept_fraction,
            reward=self.reward,
            terminated=self.terminated,
            observation=self.observation,
            prefix_fidelity=ev.prefix_fidelity,
            budget_s=self.outcome.budget_s,
            healing=self.healing,
            kv_bytes=ev.kv_bytes,
            baseline_kv_bytes=ev.full_kv_bytes,
            memory_term=self.memory_term,
        )


def step_info(m: Measurement | None, timing: str) -> dict[str, Any]:
    """The step keys of an info: those of the step ``m``, or (``None``, after ``reset``) their empty values.

    The same keys and value structures either way (``DynPruneEnv._info`` explains why); ``timing`` is the
    env's, for the empty values.
    """
    if m is None:
        return {
            "step_prompt_id": "",
            "action": -1,
            "action_name": "",
            "plan": "",
            "timing": timing,
            "baseline": dict.fromkeys(_BASELINE_KEYS, MISSING),
            "pruned": dict.fromkeys(_PRUNED_KEYS, MISSING),
            "budget_s": MISSING,
            "texts": {"baseline": "", "pruned": ""},
            "record": "",
        }
    ev, base, record = m.evaluation, m.baseline, m.record
    live = ev.timing == "live"  # only a live step generates the pruned answer
    return {
        "step_prompt_id": m.prompt.id,
        "action": int(m.action),
        "action_name": m.action_name,
        "plan": json.dumps(record.plan, sort_keys=True),
        "timing": ev.timing,
        "baseline": {"latency_s": m.baseline_latency_s, "tokens_per_s": m.baseline_tokens_per_s,
                     "ppl": base.ppl, "task_score": _number(base.task_score)},
        "pruned": {"latency_s": m.pruned_latency_s, "tokens_per_s": m.pruned_tokens_per_s, "ppl": ev.ppl,
                   "token_agreement": ev.token_agreement, "exact_match": float(ev.exact_match),
                   "task_score": _number(ev.task_score), "speedup": ev.speedup},
        "budget_s": _number(m.outcome.budget_s),
        "texts": {"baseline": base.text if live else "", "pruned": ev.text if live else ""},
        "record": json.dumps(asdict(record), sort_keys=True),
    }
