"""How fast is DynPruneTable-v0, and does a Double DQN learn something on it?

``DynPruneTable-v0`` serves DynPrune-v0's observations and rewards from a reward table
(``dynprune table build``): a step is a lookup. This benchmark measures:

1. **Steps per second** of ``gym.make("DynPruneTable-v0", ...)`` as a user gets it (Gymnasium's
   wrappers included), one-prompt episodes (``reset`` + ``step`` per step, the training setting)
   and ten-prompt episodes, random actions drawn beforehand; ``blocks`` blocks, median and
   min-max; wall clock and process CPU time (the machine is shared: CPU time says what the env
   costs, wall time what it got). Target: >= 20,000 steps/s.
2. **Double DQN on the table** (``agents.dqn.make_dqn``): trained ``ddqn_steps`` steps on the
   train split, then its greedy action on every test-split prompt under ``eval_episodes`` seeded
   draws of load and budget, against every static action, random and the oracle, all scored on
   the table (modelled rewards: the agent is not tested live here).

Run:
    python -m benchmarks.table_env                            # the shipped SmolLM2-135M table
    python -m benchmarks.table_env --smoke --out /tmp/te.json   # builds a tiny table first

Writes ``benchmarks/results/table_env.json``.
"""

from __future__ import annotations

import statistics
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
from benchmarks.utils import machine_load, smoke_table, summary, train_table_ddqn

TARGETS = {"steps_per_s": 20_000}


@dataclass
class Args(harness.Args):
    """Table env: DynPruneTable-v0 steps/s, and a Double DQN trained on the table.

    No model is loaded (``--smoke`` builds a table of a few prompts on tiny-llama first)."""

    device: str = "cpu"
    """where the run is recorded to have run (the table env computes nothing on a device)"""
    threads: int | None = 1
    """torch CPU threads (the agent's); 1 on a CPU shared with other jobs"""
    table: str = "smollm2-135m"
    """reward table: a file, or the name of a table shipped in envs/tables/"""
    reward: str = "casrap"
    """reward of the env"""
    steps: int = 200_000
    """steps per speed block"""
    blocks: int = 5
    """speed blocks per episode length (median and min-max over blocks)"""
    ddqn_steps: int = 30_000
    """Double DQN training steps on the train split (0: skip)"""
    eval_episodes: int = 20
    """seeded passes over the test split (each draws load and budget anew) for the held-out scores"""
    out: str = "benchmarks/results/table_env.json"

    SMOKE = {"steps": 2_000, "blocks": 2, "ddqn_steps": 300, "eval_episodes": 2}  # a tiny-llama table is built first
    POSITIVE = ("steps", "blocks", "eval_episodes")
    SMOKE_TO_TEMP = True


def speed(table: str, reward: str, steps: int, blocks: int, per_episode: int, seed: int) -> dict[str, Any]:
    """Steps/s of the made env over ``blocks`` blocks of ``steps`` steps (reset when an episode ends)."""
    env = gym.make("DynPruneTable-v0", table=table, reward=reward, prompts_per_episode=per_episode)
    actions = np.random.default_rng(seed).integers(0, env.action_space.n, size=steps).tolist()
    env.reset(seed=seed)
    wall, cpu = [], []
    for _ in range(blocks):
        t0, c0 = time.perf_counter(), time.process_time()
        for a in actions:
            _, _, terminated, truncated, _ = env.step(a)
            if terminated or truncated:
                env.reset()
        wall.append(steps / (time.perf_counter() - t0))
        cpu.append(steps / max(time.process_time() - c0, 1e-9))
    return {"steps_per_s": summary(wall), "steps_per_cpu_s": summary(cpu), "prompts_per_episode": per_episode}


def held_out_scores(model: Any, table: str, reward: str, episodes: int, seed: int) -> dict[str, Any]:
    """Mean reward per agent on the test split: the trained agent, every static action, random, oracle."""
    env = gym.make("DynPruneTable-v0", table=table, reward=reward, split="test", sequential=True)
    core = env.unwrapped
    n_prompts, n_actions = len(core.prompt_ids), core.action_space.n
    rng = np.random.default_rng(seed)
    totals: dict[str, list[float]] = {"ddqn": [], "random": [], "oracle": []}
    totals.update({f"static-{name}": [] for name in core.action_names})
    picks: list[int] = []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + 1 + e)  # a seeded pass: prompts in order, load and budgets drawn anew
        for i in range(n_prompts):
            if i:
                obs, _ = env.reset()
            rewards = core.action_rewards()
            act = int(model.predict(obs, deterministic=True)[0]) if model is not None else 0
            picks.append(act)
            totals["ddqn"].append(float(rewards[act]))
            totals["random"].append(float(rewards[int(rng.integers(n_actions))]))
            totals["oracle"].append(float(rewards.max()))
            for a, name in enumerate(core.action_names):
                totals[f"static-{name}"].append(float(rewards[a]))
    means = {k: statistics.fmean(v) for k, v in totals.items()}
    best_static = max((k for k in means if k.startswith("static-")), key=means.get)
    counts = np.bincount(picks, minlength=n_actions)
    return {"prompts": n_prompts, "passes": episodes, "mean_reward": means, "best_static": best_static,
            "ddqn_minus_best_static": means["ddqn"] - means[best_static],
            "ddqn_actions": {name: int(c) for name, c in zip(core.action_names, counts, strict=True)}}


def measure(args: Args, lm: None) -> dict[str, Any]:
    """Steps/s of one- and ten-prompt episodes; a Double DQN trained and scored on the table."""
    table = args.table
    if args.smoke:
        table = str(smoke_table(Path(tempfile.mkdtemp(prefix="table-env-smoke-"))))
    load_start = machine_load(args.threads)
    print(f"(1) speed: {args.blocks} blocks x {args.steps} steps ...", flush=True)
    one = speed(table, args.reward, args.steps, args.blocks, 1, args.seed)
    ten = speed(table, args.reward, args.steps, args.blocks, 10, args.seed)
    print(f"  one-prompt episodes: {one['steps_per_s']['median']:.0f} steps/s "
          f"({one['steps_per_cpu_s']['median']:.0f} per CPU second); ten-prompt episodes: "
          f"{ten['steps_per_s']['median']:.0f} steps/s", flush=True)
    ddqn: dict[str, Any] | None = None
    if args.ddqn_steps:
        print(f"(2) Double DQN: {args.ddqn_steps} steps on the train split ...", flush=True)
        agent = train_table_ddqn(table, args.reward, args.ddqn_steps, args.seed)
        ddqn = {"steps": args.ddqn_steps, "train_s": agent.train_s,
                **held_out_scores(agent.model, table, args.reward, args.eval_episodes, args.seed)}
        print(f"  trained in {agent.train_s:.0f} s; held-out mean reward: ddqn {ddqn['mean_reward']['ddqn']:+.3f}, "
              f"best static ({ddqn['best_static']}) {ddqn['mean_reward'][ddqn['best_static']]:+.3f}, "
              f"oracle {ddqn['mean_reward']['oracle']:+.3f}, random {ddqn['mean_reward']['random']:+.3f}", flush=True)
    load_end = machine_load(args.threads)
    from dynprune.table import read_table
    from envs.table_env import table_path

    meta = read_table(table_path(table)).meta
    return {
        "load": {"start": load_start, "end": load_end},
        "table": {"file": str(table_path(table)), "model_id": meta["model_id"],
                  "max_new_tokens": meta["max_new_tokens"], "timing": meta.get("timing")},
        "steps_per_s": one["steps_per_s"]["median"],
        "speed": {"one_prompt_episodes": one, "ten_prompt_episodes": ten},
        "ddqn": ddqn,
        "targets": TARGETS,
        "met": {"steps_per_s": one["steps_per_s"]["median"] >= TARGETS["steps_per_s"]},
        "notes": (
            "steps_per_s: median over blocks of gym.make('DynPruneTable-v0') steps per wall-clock second, one-prompt "
            "episodes (every step also resets), random actions drawn beforehand, 1 torch thread; steps_per_cpu_s: the "
            "same per second of this process's CPU time (the machine is shared with other jobs). ddqn: agents.dqn "
            "make_dqn defaults, trained on the table's train split; held-out scores on the test split from the table "
            "(modelled rewards), eval_episodes seeded passes each drawing load scenarios and budgets anew."
        ),
    }


def print_table(result: dict[str, Any]) -> None:
    """Steps/s against the target."""
    print(f"steps/s {result['steps_per_s']:.0f} (target >= {TARGETS['steps_per_s']})")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON and print the table; return the result."""
    return harness.run(harness.parse_args(Args, argv), measure, model=False, table=print_table)


if __name__ == "__main__":
    main()
