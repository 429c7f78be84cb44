"""How much of the oracle's lead over the best static action can a per-prompt policy learn at all?

An offline learner (CQL, BCQ, ...) can only beat the best single action where the observation
predicts which action is best for a prompt. This script measures that ceiling on a logged sweep
(every DynPrune-v0 table action measured on every prompt, ``dynprune explore --strategy sweep``)
without any RL: for each feature set and each regressor, it fits one reward model per action on
K-1 folds of prompts, acts greedily on the held-out fold (``argmax`` of predicted reward) and
scores the logged reward of the picked action. Beside it, on the same folds: the best static
action chosen on the training folds, a uniform random policy (mean over actions) and the oracle
(each prompt's best action in hindsight).

``captured = (policy - static) / (oracle - static)``: the share of the oracle's lead a policy keeps
on prompts it never saw. Near or below zero means the per-prompt differences are not predictable
from those features (noise, or signal the observation does not carry).

Feature sets: the logged observation (telemetry + prompt features), only the three prompt
features, and with ``--embedding N`` the observation plus the N-dimensional projected prompt
embedding that ``DynPrune-v0(prompt_embedding=N)`` would add (computed from the prompt texts;
loads the model once). Regressors: ridge (closed form), k-nearest neighbours and a random
forest (scikit-learn).

``--speedup action-mean`` recomputes the CASRAP reward with every action's speed-up replaced by
its mean over the logs: per-prompt speed differences (mostly timing noise, see the note in
benchmarks/README.md) are removed, and what is left to predict is the deterministic quality part
(perplexity change). ``--speedup logged`` (default) keeps the logged rewards.

Run:
    python -m benchmarks.policy_headroom --logs DIR --out benchmarks/results/policy_headroom.json
    python -m benchmarks.policy_headroom --smoke --out /tmp/h.json   # a synthetic log, seconds
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.utils import sweep_logs_dir
from dynprune.models import PrunableLM

SPEEDUPS = ("logged", "action-mean")
OFFLINE_RL_SWEEP = {"reward": "casrap", "timing": "profiled", "prompts": 80, "max_new_tokens": 24}
"""The settings of benchmarks/offline_rl.py's default sweep besides model and seed (a test keeps them equal)."""


@dataclass
class Args(harness.Args):
    """Cross-validated ceiling of per-prompt policies on a logged sweep, against the best static action.

    ``model`` / ``device`` / ``dtype`` matter only with ``embedding`` > 0 (the model computes the
    prompt embeddings); ``seed`` is the seed of the fold split and the random forest.
    """

    out: str = "benchmarks/results/policy_headroom.json"
    logs: str | None = None
    """log directory of a sweep (every table action on every prompt); none: the folder benchmarks/offline_rl.py
    sweeps into with its defaults (this model and seed)"""
    embedding: int = 16
    """also try the observation plus this many projected prompt-embedding coordinates (0: skip; loads the model)"""
    speedup: str = "logged"
    """logged: the logged rewards; action-mean: CASRAP recomputed with each action's mean speed-up"""
    folds: int = 5
    """cross-validation folds over prompts"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.smoke and self.logs is None:
            from offline_data.dataset import read_meta

            default = sweep_logs_dir(self.model, seed=self.seed, **OFFLINE_RL_SWEEP)
            try:
                read_meta(default)
            except FileNotFoundError as err:
                raise ValueError(
                    f"--logs DIR is required (a sweep written by dynprune explore --strategy sweep); the default, "
                    f"benchmarks/offline_rl.py's sweep folder {default}, holds no logs yet"
                ) from err
            self.logs = str(default)
        if self.speedup not in SPEEDUPS:
            raise ValueError(f"speedup must be one of {SPEEDUPS}, got {self.speedup!r}")
        if self.folds < 2:
            raise ValueError(f"folds must be >= 2, got {self.folds}")
        if self.embedding < 0:
            raise ValueError(f"embedding must be >= 0, got {self.embedding}")

    @property
    def loads_model(self) -> bool:
        """Whether the run needs the model: the embedding features of a real sweep."""
        return self.embedding > 0 and not self.smoke


@dataclass
class Sweep:
    """Rewards per (prompt, action) with one observation per prompt."""

    prompt_ids: list[str]
    observations: np.ndarray  # prompts x features
    names: list[str]  # observation names
    rewards: np.ndarray  # prompts x actions
    action_names: list[str]
    speedups: np.ndarray | None = None  # prompts x actions, as logged
    fidelities: np.ndarray | None = None  # prompts x actions, as logged (teacher-forced when profiled)


def sweep_from_rows(rows: list[dict[str, Any]], names: list[str], speedup: str = "logged") -> Sweep:
    """One reward per (prompt, table action); prompts that miss an action are dropped (named in the error if all)."""
    from dynprune.rewards import CasrapReward, Outcome

    table = [r for r in rows if r["action"] >= 0]
    if not table:
        raise ValueError("the logs hold no table action (action >= 0): run a sweep (dynprune explore --strategy sweep)")
    n_actions = 1 + max(r["action"] for r in table)
    if speedup == "action-mean":
        means = {a: statistics.fmean(r["speedup"] for r in table if r["action"] == a) for a in range(n_actions)}
        casrap = CasrapReward()
        table = [
            # CASRAP reads no fidelity: the logged token agreement stands in for the prefix fidelity
            {**r, "reward": casrap(Outcome(speedup=means[r["action"]], baseline_ppl=r["baseline_ppl"],
                                           pruned_ppl=r["ppl"], prefix_fidelity=r["token_agreement"],
                                           task_score=r["task_score"],
                                           kept_fraction=r["kept_fraction"], latency_s=r["latency_s"]))[0]}
            for r in table
        ]
    by_prompt: dict[str, dict[int, dict[str, Any]]] = {}
    for r in table:
        by_prompt.setdefault(r["prompt_id"], {})[r["action"]] = r
    full = sorted(p for p, acts in by_prompt.items() if len(acts) == n_actions)
    if len(full) < 4:
        raise ValueError(f"only {len(full)} prompts have all {n_actions} actions logged; need at least 4")
    action_names = [by_prompt[full[0]][a]["action_name"] for a in range(n_actions)]
    return Sweep(
        prompt_ids=full,
        observations=np.array([by_prompt[p][0]["observation"] for p in full], dtype=np.float64),
        names=list(names),
        rewards=np.array([[by_prompt[p][a]["reward"] for a in range(n_actions)] for p in full]),
        action_names=action_names,
        speedups=np.array([[by_prompt[p][a]["speedup"] for a in range(n_actions)] for p in full]),
        fidelities=np.array([[by_prompt[p][a]["token_agreement"] for a in range(n_actions)] for p in full]),
    )


def synthetic_sweep(seed: int = 0, n: int = 120) -> Sweep:
    """A sweep where action 1 pays off exactly when feature 0 is high: a policy should capture most of it."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=(n, 3))
    rewards = np.stack([np.zeros(n), np.where(x[:, 0] > 0.5, 1.0, -1.0), np.full(n, 0.1)], axis=1)
    rewards += rng.normal(0, 0.05, size=rewards.shape)
    return Sweep([f"p{i}" for i in range(n)], x, ["f0", "f1", "f2"], rewards, ["a0", "a1", "a2"])


# ----------------------------------------------------------------------------- models


class Ridge:
    """Per-action ridge regression (closed form, features standardised on the training fold)."""

    def __init__(self, lam: float = 10.0) -> None:
        self.lam = lam

    def fit(self, x: np.ndarray, y: np.ndarray) -> Ridge:
        self.mu, self.sd = x.mean(0), x.std(0) + 1e-9
        z = np.c_[np.ones(len(x)), (x - self.mu) / self.sd]
        reg = self.lam * np.eye(z.shape[1])
        reg[0, 0] = 0.0  # do not shrink the intercept
        self.w = np.linalg.solve(z.T @ z + reg, z.T @ y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.c_[np.ones(len(x)), (x - self.mu) / self.sd] @ self.w


def regressors(seed: int) -> dict[str, Any]:
    """Name -> factory of a multi-output regressor (rewards of every action at once)."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "ridge": lambda: Ridge(10.0),
        "knn-15": lambda: make_pipeline(StandardScaler(), KNeighborsRegressor(15)),
        "random-forest": lambda: RandomForestRegressor(200, min_samples_leaf=5, random_state=seed, n_jobs=1),
    }


def cross_validate(x: np.ndarray, rewards: np.ndarray, make: Any, folds: int, seed: int) -> dict[str, float]:
    """Mean held-out reward of the greedy policy, of the best static action (picked per training fold)."""
    idx = np.random.default_rng(seed).permutation(len(x))
    policy, static = np.empty(len(x)), np.empty(len(x))
    for fold in np.array_split(idx, folds):
        train = np.setdiff1d(idx, fold)
        model = make().fit(x[train], rewards[train])
        picks = np.asarray(model.predict(x[fold])).argmax(1)
        policy[fold] = rewards[fold, picks]
        static[fold] = rewards[fold, rewards[train].mean(0).argmax()]
    return {"policy": float(policy.mean()), "static": float(static.mean())}


def embedding_features(prompt_ids: list[str], n: int, lm: PrunableLM) -> np.ndarray:
    """The ``prompt_embedding=n`` coordinates DynPrune-v0 on ``lm`` adds, for the shipped prompts with these ids."""
    import gymnasium as gym

    import envs  # noqa: F401 - registers DynPrune-v0
    from dynprune.tasks import load_prompts

    prompts = {p.id: p for p in load_prompts("dynprune", split=None)}
    missing = [p for p in prompt_ids if p not in prompts]
    if missing:
        raise ValueError(f"prompt ids not in the shipped prompt set: {missing[:5]}")
    env = gym.make("DynPrune-v0", prompts=[prompts[p] for p in prompt_ids], sequential=True, prompt_embedding=n,
                   reward="proxy", model=lm)
    # the env's own projection (no model run beyond the embedding lookup)
    out = [env.unwrapped.embedding_coordinates(prompts[p].text) for p in prompt_ids]
    env.close()
    return np.array(out, dtype=np.float64)


# ----------------------------------------------------------------------------- main


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """Every feature set x regressor, cross-validated on the sweep, beside the oracle and random."""
    if args.smoke:
        sweep, source = synthetic_sweep(args.seed), {"synthetic": True}
    else:
        from offline_data.dataset import load_logs, read_meta

        meta = read_meta(args.logs)
        sweep = sweep_from_rows(load_logs(args.logs).to_list(), meta["observation_names"], args.speedup)
        source = {"logs": str(Path(args.logs).resolve()), "settings": meta.get("settings")}
    names = sweep.names
    prompt_cols = [i for i, n in enumerate(names) if n in ("prompt_tokens", "prompt_perplexity", "complexity")]
    feature_sets = {"observation": sweep.observations}
    if prompt_cols:
        feature_sets["prompt features"] = sweep.observations[:, prompt_cols]
    if lm is not None:
        emb = embedding_features(sweep.prompt_ids, args.embedding, lm)
        feature_sets[f"observation + embedding-{args.embedding}"] = np.c_[sweep.observations, emb]
        feature_sets[f"embedding-{args.embedding}"] = emb
    oracle = float(sweep.rewards.max(1).mean())
    random = float(sweep.rewards.mean())
    results = []
    for fs_name, x in feature_sets.items():
        for reg_name, make in regressors(args.seed).items():
            cv = cross_validate(x, sweep.rewards, make, args.folds, args.seed)
            lead = oracle - cv["static"]
            results.append({
                "features": fs_name, "regressor": reg_name, **cv,
                "captured": (cv["policy"] - cv["static"]) / lead if lead > 0 else math.nan,
            })
            print(f"  {fs_name:<36} {reg_name:<14} policy {cv['policy']:+.3f}  static {cv['static']:+.3f}  "
                  f"captured {results[-1]['captured']:+.2f}", flush=True)
    best = max(results, key=lambda r: r["policy"])
    return {
        "source": source,
        "prompts": len(sweep.prompt_ids),
        "actions": sweep.action_names,
        "mean_reward_per_action": dict(zip(sweep.action_names, sweep.rewards.mean(0).tolist(), strict=True)),
        "mean_logged_speedup_per_action": None if sweep.speedups is None else dict(
            zip(sweep.action_names, sweep.speedups.mean(0).tolist(), strict=True)),
        "mean_logged_fidelity_per_action": None if sweep.fidelities is None else dict(
            zip(sweep.action_names, sweep.fidelities.mean(0).tolist(), strict=True)),
        "prompt_ids": sweep.prompt_ids,
        "oracle": oracle,
        "random": random,
        "results": results,
        "best": best,
        "notes": ("policy/static: mean held-out logged reward over all prompts, each scored in the fold it was "
                  "held out of; static = the action of highest mean reward on the training folds; oracle = mean "
                  "of each prompt's best action; random = mean over all actions and prompts; captured = (policy - "
                  "static) / (oracle - static)."),
    }


def print_table(result: dict[str, Any]) -> None:
    """The oracle, random and the best policy against its static action."""
    best = result["best"]
    print(f"oracle {result['oracle']:+.3f}, random {result['random']:+.3f}; best policy {best['features']} / "
          f"{best['regressor']}: {best['policy']:+.3f} vs static {best['static']:+.3f} "
          f"(captured {best['captured']:+.2f})")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON and print the table; return the result."""
    args = harness.parse_args(Args, argv)
    return harness.run(args, measure, model=args.loads_model, table=print_table)


if __name__ == "__main__":
    main()
