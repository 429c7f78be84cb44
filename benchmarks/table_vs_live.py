"""Do agents rank the same on the reward table as live?

Train on modelled rewards, test live: the point of ``timing="modelled"`` and ``DynPruneTable-v0``
is that what an agent learns there holds when the model really runs. This benchmark takes
``prompts`` held-out prompts (test split, seeded subset), and for each one measures every action
of the table **live** (``DynPrune-v0(timing="live")``: the plan and the full model timed side by
side) and reads the same (prompt, action) from the **table**, under the same load scenario (both
envs reset with the same seed, prompts in order). Agents: the 10 static actions, random, the
oracle (best action per prompt, on its own rewards) and a Double DQN trained ``ddqn_steps`` steps
on the table's train split (it acts on the observation, which is the same in both envs). Each
agent's mean reward on the table and live; the Spearman rank correlation of the two orders
(target >= 0.9), with and without the oracle.

Run:
    python -m benchmarks.table_vs_live                     # SmolLM2-135M, 60 prompts, ~1 h on 2 shared cores
    python -m benchmarks.table_vs_live --smoke --out /tmp/tvl.json

Writes ``benchmarks/results/table_vs_live.json``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import envs  # noqa: F401 - registers the ids
from benchmarks import harness
from benchmarks.utils import machine_load, smoke_table, train_table_ddqn
from dynprune.models import PrunableLM
from dynprune.validation import require_at_least

TARGETS = {"spearman": 0.9}


@dataclass
class Args(harness.Args):
    """Table vs live: agents' mean held-out reward on the reward table and measured live, rank correlation.

    ``--model`` must be the table's model; ``--seed`` seeds the subset, the agent and both envs' resets."""

    device: str = "cpu"
    """cpu, cuda or cuda:N"""
    threads: int | None = 1
    """torch CPU threads (none: torch's default); 1 on a CPU shared with other jobs"""
    table: str = "smollm2-135m"
    """reward table: a file, or the name of a shipped table"""
    prompts: int = 60
    """held-out prompts (a seeded subset of the table's test split)"""
    reward: str = "casrap"
    """reward of both envs"""
    ddqn_steps: int = 30_000
    """Double DQN training steps on the table's train split"""
    out: str = "benchmarks/results/table_vs_live.json"

    SMOKE = {"prompts": 4, "ddqn_steps": 300}  # a tiny-llama table is built first
    SMOKE_TO_TEMP = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 2, "prompts")


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(x: list[float]) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        order = arr.argsort()
        r = np.empty(len(arr))
        r[order] = np.arange(len(arr), dtype=np.float64)
        for v in np.unique(arr):  # ties share their mean rank
            r[arr == v] = r[arr == v].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """A Double DQN trained on the table; every action of the held-out prompts read from the table and run live."""
    from dynprune.table import read_table
    from dynprune.tasks import load_prompts
    from envs.table_env import table_path

    assert lm is not None
    table = args.table
    if args.smoke:
        table = str(smoke_table(Path(tempfile.mkdtemp(prefix="tvl-smoke-"))))
    data = read_table(table_path(table))
    if lm.model_id != data.meta["model_id"]:
        raise ValueError(f"the table was built on {data.meta['model_id']}, not on {lm.model_id}")
    test_ids = [str(x) for x in data.select("test").prompts["prompt_id"]]
    rng = np.random.default_rng(args.seed)
    chosen = sorted(rng.choice(len(test_ids), size=min(args.prompts, len(test_ids)), replace=False).tolist())
    ids = [test_ids[i] for i in chosen]
    by_id = {p.id: p for p in load_prompts(data.meta["prompts"], split="test")}
    prompts = [by_id[i] for i in ids]
    load_start = machine_load(args.threads)

    print(f"(1) Double DQN: {args.ddqn_steps} steps on the table's train split ...", flush=True)
    agent = train_table_ddqn(table, args.reward, args.ddqn_steps, args.seed)

    # both envs: these prompts in this order, one seeded reset, so every prompt sees the same load draw
    subset = dataclasses.replace(data, prompts={k: v[np.isin(data.prompts["prompt_id"], ids)] for k, v in
                                                data.prompts.items()},
                                 actions={k: v[np.isin(data.prompts["prompt_id"], ids)] for k, v in
                                          data.actions.items()})
    order = [str(x) for x in subset.prompts["prompt_id"]]
    prompts = [by_id[i] for i in order]
    tab = gym.make("DynPruneTable-v0", table=subset, split=None, reward=args.reward, sequential=True)
    live = gym.make("DynPrune-v0", model=lm, prompts=prompts, split=None, timing="live", reward=args.reward,
                    max_new_tokens=int(data.meta["max_new_tokens"]), sequential=True)
    names = list(tab.unwrapped.action_names)
    table_r = np.zeros((len(prompts), len(names)))
    live_r = np.zeros_like(table_r)
    picks: list[int] = []
    obs_t, _ = tab.reset(seed=args.seed)
    obs_l, _ = live.reset(seed=args.seed)
    print(f"(2) {len(prompts)} held-out prompts x {len(names)} actions, table and live ...", flush=True)
    t0 = time.perf_counter()
    for i in range(len(prompts)):
        if i:
            obs_t, _ = tab.reset()
            obs_l, _ = live.reset()
        if not np.array_equal(obs_t, obs_l):
            raise RuntimeError(f"prompt {order[i]}: the table's observation differs from the live env's")
        table_r[i] = tab.unwrapped.action_rewards()
        live_r[i] = [r.reward for r in live.unwrapped.action_records()]
        picks.append(int(agent.model.predict(obs_t, deterministic=True)[0]))
        el = time.perf_counter() - t0
        print(f"  {i + 1}/{len(prompts)} {order[i]}: ddqn {names[picks[-1]]}, "
              f"eta {el / (i + 1) * (len(prompts) - i - 1):.0f} s", flush=True)
    random_picks = np.random.default_rng(args.seed + 1).integers(len(names), size=len(prompts))
    rows = np.arange(len(prompts))
    agents: dict[str, tuple[float, float]] = {
        f"static-{n}": (float(table_r[:, a].mean()), float(live_r[:, a].mean())) for a, n in enumerate(names)
    }
    agents["ddqn"] = (float(table_r[rows, picks].mean()), float(live_r[rows, picks].mean()))
    agents["random"] = (float(table_r[rows, random_picks].mean()), float(live_r[rows, random_picks].mean()))
    agents["oracle"] = (float(table_r.max(axis=1).mean()), float(live_r.max(axis=1).mean()))
    keys = list(agents)
    rho = spearman([agents[k][0] for k in keys], [agents[k][1] for k in keys])
    no_oracle = [k for k in keys if k != "oracle"]
    rho_no_oracle = spearman([agents[k][0] for k in no_oracle], [agents[k][1] for k in no_oracle])
    load_end = machine_load(args.threads)
    return {
        "load": {"start": load_start, "end": load_end},
        "model_id": lm.model_id,
        "prompt_ids": order,
        "ddqn": {"steps": args.ddqn_steps, "train_s": agent.train_s,
                 "actions": {n: int(np.sum(np.asarray(picks) == a)) for a, n in enumerate(names)}},
        "mean_reward": {k: {"table": v[0], "live": v[1]} for k, v in agents.items()},
        "rank_table": sorted(keys, key=lambda k: -agents[k][0]),
        "rank_live": sorted(keys, key=lambda k: -agents[k][1]),
        "spearman": rho,
        "spearman_without_oracle": rho_no_oracle,
        "per_prompt": {"table": table_r.tolist(), "live": live_r.tolist(), "ddqn_picks": picks},
        "targets": TARGETS,
        "met": {"spearman": rho >= TARGETS["spearman"]},
        "notes": (
            "mean_reward: over the held-out prompts, each agent's action scored by the table (modelled: latency "
            "model + teacher-forced quality) and live (DynPrune-v0 timing='live': plan and full model timed side by "
            "side, the pruned greedy answer), the same load scenario per prompt (both envs reset with one seed, "
            "prompts in order; observations checked equal). ddqn: Double DQN (agents.dqn defaults) trained on the "
            "table's train split. oracle: the best action per prompt on each side's own rewards. spearman: rank "
            "correlation of the agents' table and live means (ties share ranks)."
        ),
    }


def print_table(result: dict[str, Any]) -> None:
    """Each agent's mean reward on the table and live, in the table's order; the rank correlations."""
    print(f"{'agent':<20} {'table':>8} {'live':>8}")
    for k in result["rank_table"]:
        r = result["mean_reward"][k]
        print(f"{k:<20} {r['table']:>+8.3f} {r['live']:>+8.3f}")
    rho, rho_no_oracle = result["spearman"], result["spearman_without_oracle"]
    print(f"Spearman {rho:.3f} (target >= {TARGETS['spearman']}); without the oracle {rho_no_oracle:.3f}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON and print the table; return the result."""
    return harness.run(harness.parse_args(Args, argv), measure, table=print_table)


if __name__ == "__main__":
    main()
