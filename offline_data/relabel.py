"""Hindsight relabelling of latency-budget logs: every measured row under more budgets.

The ``latency_budget`` reward is a known function of what a row already logs (the pruned
and full-model latencies, the task score or prefix fidelity) and of the episode's budget,
which the agent observes and which the env draws independently of the measurement. So a
row measured once is also a valid sample under any other budget: replace the budget in the
observation, recompute the reward with the same :class:`~dynprune.rewards.LatencyBudgetReward`,
and the row is exactly what the env would have logged had it drawn that budget (the
measurement does not depend on the budget). This is hindsight relabelling, as in
Andrychowicz et al., "Hindsight Experience Replay" (2017), where the goal plays the
budget's part. It matters because a sweep sees one budget per prompt: 80 prompts give an
offline learner 80 budgets to learn a threshold rule from, relabelling gives it ``k`` times
as many without measuring anything again.

```python
from offline_data import load_logs, read_meta, relabel_budgets, to_mdp_dataset
meta = read_meta("logs/budget-sweep")
ds = relabel_budgets(load_logs("logs/budget-sweep"), meta["observation_names"], budgets_per_row=10)
mdp = to_mdp_dataset(ds, n_actions=meta["n_actions"])
```
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np

from dynprune.rewards import LatencyBudgetReward, Outcome

__all__ = ["BUDGET_FIELD", "budget_span", "relabel_budgets", "relabel_row"]

#: Name of the budget field in the observation (DynPrune-v0's ``latency_budget``).
BUDGET_FIELD = "latency_budget"


def _budget_index(observation_names: Sequence[str]) -> int:
    names = list(observation_names)
    if BUDGET_FIELD not in names:
        raise ValueError(
            f"the logs' observations have no {BUDGET_FIELD!r} field (fields: {names}); relabelling needs logs "
            "written with reward='latency_budget'"
        )
    return names.index(BUDGET_FIELD)


def budget_span(ds: datasets.Dataset, observation_names: Sequence[str]) -> tuple[float, float]:
    """Smallest and largest budget (budget / full-model latency) the logged observations carry."""
    if len(ds) == 0:
        raise ValueError("no logged rows: nothing to take a budget span from")
    i = _budget_index(observation_names)
    budgets = np.asarray(ds["observation"], dtype=np.float64)[:, i]
    return float(budgets.min()), float(budgets.max())


def relabel_budgets(
    ds: datasets.Dataset,
    observation_names: Sequence[str],
    budgets_per_row: int,
    budget_range: tuple[float, float] | None = None,
    seed: int = 0,
    reward: LatencyBudgetReward | None = None,
) -> datasets.Dataset:
    """Every logged row once as logged and ``budgets_per_row - 1`` times under fresh budgets.

    One fresh budget is drawn per (prompt, copy), uniform in ``budget_range``, and shared by
    all the prompt's rows of that copy, as in an env episode, where every action of a sweep
    sees the prompt's one budget. A relabelled row's budget in seconds is its full model's
    latency times the budget (the env's rule, load factor included in both), its reward is
    ``reward(Outcome(...))`` on the logged metrics, with the reward's quality = task score
    when the row has one, else prefix fidelity (what the env passes).

    Args:
        ds: Logged rows (``load_logs``) of a ``reward="latency_budget"`` env.
        observation_names: The logs' observation names (``read_meta(...)["observation_names"]``).
        budgets_per_row: Copies of every row, the logged one included (1 returns the rows unchanged).
        budget_range: ``(low, high)`` of the fresh budgets, ``0 < low <= high <= 2`` (the
            observation's bounds); default: the smallest and largest budget in the logs.
        seed: Seed of the budget draws.
        reward: The reward to recompute (default ``LatencyBudgetReward()``, the env's default).

    Returns:
        A ``datasets.Dataset`` with the log schema and ``budgets_per_row`` times the rows,
        copy by copy.

    Raises:
        ValueError: ``budgets_per_row < 1``, a bad ``budget_range``, observations without a
            budget field, or a row without ``prefix_fidelity`` and task score (logs written
            before prefix fidelity was logged: explore again; :func:`relabel_row` says which).
    """
    if budgets_per_row < 1:
        raise ValueError(f"budgets_per_row must be >= 1, got {budgets_per_row}")
    _budget_index(observation_names)  # fail early on logs without a budget, even for budgets_per_row == 1
    if budgets_per_row == 1:
        return ds
    lo, hi = budget_range if budget_range is not None else budget_span(ds, observation_names)
    if not (0.0 < lo <= hi <= 2.0):
        raise ValueError(f"budget_range must satisfy 0 < low <= high <= 2, got {(lo, hi)}")
    reward = reward if reward is not None else LatencyBudgetReward()
    rows = ds.to_list()
    prompt_ids = sorted({row["prompt_id"] for row in rows})
    rng = np.random.default_rng(seed)
    # (copy, prompt) -> budget; drawn in a fixed order so the result does not depend on row order
    draws = rng.uniform(lo, hi, size=(budgets_per_row - 1, len(prompt_ids)))
    column = {pid: j for j, pid in enumerate(prompt_ids)}
    out: list[dict[str, Any]] = list(rows)
    for copy in range(budgets_per_row - 1):
        for row in rows:
            budget = float(draws[copy, column[row["prompt_id"]]])
            out.append(relabel_row(row, budget, observation_names, reward))
    return datasets.Dataset.from_list(out, features=ds.features)


def relabel_row(
    row: dict[str, Any], budget: float, observation_names: Sequence[str], reward: LatencyBudgetReward | None = None
) -> dict[str, Any]:
    """One logged row under another budget: the observation's budget field, ``budget_s`` and the reward replaced.

    ``budget`` is relative to the row's full-model latency (the observation's unit); with the
    row's own budget (``budget_s / baseline_latency_s``) the reward is the logged one.
    """
    i_budget = _budget_index(observation_names)
    reward = reward if reward is not None else LatencyBudgetReward()
    budget_s = float(row["baseline_latency_s"]) * budget
    task = _task_score(row)
    if task is None and row["prefix_fidelity"] is None:
        raise ValueError(
            f"row of prompt {row['prompt_id']!r} ({row['action_name']}) has neither a task score nor a prefix "
            "fidelity: logs written before prefix fidelity was logged cannot be relabelled; explore again"
        )
    outcome = Outcome(
        speedup=float(row["speedup"]),
        baseline_ppl=float(row["baseline_ppl"]),
        pruned_ppl=float(row["ppl"]),
        # the reward's quality is the task score when there is one; the prefix fidelity is then not read
        prefix_fidelity=float(row["prefix_fidelity"]) if row["prefix_fidelity"] is not None else float("nan"),
        task_score=task,
        kept_fraction=float(row["kept_fraction"]),
        latency_s=float(row["latency_s"]),
        budget_s=budget_s,
    )
    value, _ = reward(outcome)
    observation = list(row["observation"])
    observation[i_budget] = budget
    return {**row, "observation": observation, "budget_s": budget_s, "reward": float(value)}


def _task_score(row: dict[str, Any]) -> float | None:
    """The row's task score, None when it has none (null, or NaN from a pandas round trip)."""
    task = row["task_score"]
    return None if task is None or math.isnan(float(task)) else float(task)
