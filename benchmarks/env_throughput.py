"""How many DynPrune-v0 steps per second, and how honest is the profiled timing?

Three ways to run the same sequence of (prompt, action) steps on one loaded model,
measured side by side in one run:

- **naive** (the step of CASRAP's reference code): every step generates with the
  full model, generates with the pruned model, computes the prompt's perplexity and
  the perplexity of both answers. Nothing is cached.
- **live**: ``DynPrune-v0`` with ``timing="live"``: the full model's answer and the
  prompt features are cached per prompt; a step is one timed pruned generation plus
  one scoring pass.
- **profiled**: ``timing="profiled"``: one teacher-forced forward pass per step; speed
  from the latency profile (measured live once per (plan, length bucket)).

Steps cycle over ``prompts`` prompts with a fixed random action sequence, so the
caches warm; steps/s is reported over all steps and over the steady state (the
steps that had no cache miss: baseline cached, profile cell already measured). Speed-ups are ratios of
steps/s against the naive step in the same run.

Profiled vs live: for every (prompt, action) pair of the sequence, the pruned
tokens/s that the profile predicts is compared with the tokens/s a live generation
measured; the median relative error is reported (target <= 10 %).

Run:
    python -m benchmarks.env_throughput                  # embedded SmolLM2-135M, a few minutes on 2 cores
    python -m benchmarks.env_throughput --smoke --out /tmp/et.json
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.utils import naive_step, summary
from dynprune.models import PrunableLM
from dynprune.runtime import PlanEvaluator, ProfileConfig

TARGETS = {"live_over_naive": 2.0, "profiled_over_naive": 10.0, "profiled_median_rel_error": 0.10}


@dataclass
class Args(harness.Args):
    """Env throughput: naive vs live vs profiled steps, and the profile's timing error."""

    prompts: int = 6
    """distinct test prompts the steps cycle over"""
    steps: int = 24
    """steps per mode (the same (prompt, action) sequence in every mode)"""
    max_new_tokens: int = 32
    """answer length"""
    out: str = "benchmarks/results/env_throughput.json"

    SMOKE = {"prompts": 2, "steps": 4, "max_new_tokens": 4}
    POSITIVE = ("prompts", "steps", "max_new_tokens")


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """The same (prompt, action) sequence stepped naively, live and profiled; the profile's error against live."""
    from dynprune.actions import DEFAULT_TABLE, entry_plan
    from dynprune.tasks import load_prompts

    assert lm is not None
    rng = np.random.default_rng(args.seed)
    pool = load_prompts("dynprune", split="test")
    prompts = [pool[i] for i in rng.choice(len(pool), size=args.prompts, replace=False)]
    plans = [entry_plan(e, lm) for e in DEFAULT_TABLE]
    actions = [int(a) for a in rng.integers(1, len(plans), size=args.steps)]  # never "none": always real work
    sequence = [(prompts[i % len(prompts)], actions[i]) for i in range(args.steps)]
    lm.warmup()

    results: dict[str, dict] = {}
    # naive
    times = []
    for prompt, a in sequence:
        t0 = time.perf_counter()
        naive_step(lm, prompt.text, plans[a], args.max_new_tokens)
        times.append(time.perf_counter() - t0)
    results["naive"] = {"step_s": summary(times), "steps_per_s": len(times) / sum(times)}

    # live and profiled, each with its own cold caches
    predicted: dict[tuple[str, int], float] = {}
    measured: dict[tuple[str, int], float] = {}
    profile = ProfileConfig(new_tokens=12, repeats=2)
    for timing in ("live", "profiled"):
        ev = PlanEvaluator(lm, args.max_new_tokens, profile=profile)
        lm._features.clear()  # prompt features are part of the per-prompt work being measured
        times, steady = [], []
        for prompt, a in sequence:
            before = (ev.baseline_seconds, ev.profile.measurements)
            t0 = time.perf_counter()
            out = ev.evaluate(prompt, plans[a], timing)
            dt = time.perf_counter() - t0
            times.append(dt)
            # steady state: no cache miss in this step (baseline cached, profile cell measured)
            if (ev.baseline_seconds, ev.profile.measurements) == before:
                steady.append(dt)
            (measured if timing == "live" else predicted)[(prompt.id, a)] = out.tokens_per_s
        results[timing] = {
            "step_s": summary(times),
            "steps_per_s": len(times) / sum(times),
            "steady_steps_per_s": len(steady) / sum(steady) if steady else None,
            "baseline_seconds": ev.baseline_seconds,
            "baseline_share": ev.baseline_seconds / sum(times),
            "profile_measurements": ev.profile.measurements,
        }
    naive_rate = results["naive"]["steps_per_s"]
    for timing in ("live", "profiled"):
        r = results[timing]
        r["speedup_over_naive"] = r["steps_per_s"] / naive_rate
        r["steady_speedup_over_naive"] = (r["steady_steps_per_s"] or 0.0) / naive_rate
    errors = [abs(predicted[k] - measured[k]) / measured[k] for k in measured if k in predicted]
    return {
        "model_id": lm.model_id,
        "results": results,
        "profiled_vs_live_tokens_per_s": {
            "median_rel_error": statistics.median(errors),
            "max_rel_error": max(errors),
            "n": len(errors),
        },
        "targets": TARGETS,
        "met": {
            "live_over_naive": results["live"]["steady_speedup_over_naive"] >= TARGETS["live_over_naive"],
            "profiled_over_naive": results["profiled"]["steady_speedup_over_naive"] >= TARGETS["profiled_over_naive"],
            "profiled_median_rel_error": statistics.median(errors) <= TARGETS["profiled_median_rel_error"],
        },
    }


def print_table(result: dict[str, Any]) -> None:
    """Steps per second of each mode against the naive step, and the profile's timing error."""
    a, results = result["args"], result["results"]
    print(f"{a['steps']} steps over {a['prompts']} prompts, {a['max_new_tokens']} new tokens")
    print(f"{'mode':<9} {'steps/s':>8} {'steady/s':>9} {'x naive':>8} {'steady x':>9} {'baseline share':>15}")
    for mode in ("naive", "live", "profiled"):
        r = results[mode]
        print(
            f"{mode:<9} {r['steps_per_s']:>8.2f} {r.get('steady_steps_per_s') or r['steps_per_s']:>9.2f} "
            f"{r.get('speedup_over_naive', 1.0):>8.2f} {r.get('steady_speedup_over_naive', 1.0):>9.2f} "
            f"{r.get('baseline_share', 1.0):>15.2f}"
        )
    e = result["profiled_vs_live_tokens_per_s"]
    print(
        f"profiled vs live tokens/s: median relative error {e['median_rel_error']:.3f} (max {e['max_rel_error']:.3f})"
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON and print the table; return the result."""
    return harness.run(harness.parse_args(Args, argv), measure, table=print_table)


if __name__ == "__main__":
    main()
