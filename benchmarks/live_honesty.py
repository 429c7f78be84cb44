"""Does a live step's speed-up survive a machine whose load changes under it?

A live ``DynPrune-v0`` step reports ``T_full / T_plan - 1``. Before this change ``T_full`` was
timed when the prompt was first seen and ``T_plan`` at the step, so the ratio compared two
loads as much as two models. Now the full model is timed beside the plan, forward pass by
forward pass (``dynprune.paired_timing``). This benchmark makes the load change itself and
measures both protocols against a careful reference:

- **background**: ``busy`` processes (a Python busy loop each) that a thread switches on and
  off (SIGCONT / SIGSTOP) at random intervals of ``switch_min_s``-``switch_max_s``, with
  probability 1/2 each way, so any timed stretch may see one load or two.
- **reference** (background stopped): the plan and the full model on the point's prompt, whole
  greedy generations of the full answer's length, interleaved (order alternating), ``reference_repeats``
  times; the median of the per-repeat ratios.
- **before** (background switching): the old live step: the full model timed once per prompt in a
  first pass (the baseline cache), the plan timed alone at the step, later.
- **after** (background switching): ``PlanEvaluator.evaluate(prompt, plan, "live")``: plan and full
  model timed side by side, decode steps as the median ratio of adjacent steps (``PairedRun.speedup``);
  ``after_sum`` is the same paired run's ratio of summed times.

Error of a step: ``|speed-up - reference speed-up|``; median and 90th percentile over the points.
Target for the live step (after): median <= 0.05.

Run:
    python -m benchmarks.live_honesty                       # embedded SmolLM2-135M, ~20-40 min on 2 cores
    python -m benchmarks.live_honesty --smoke --out /tmp/lh.json

Writes ``benchmarks/results/live_honesty.json``.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.utils import machine_load, summary
from dynprune.actions import DEFAULT_TABLE, entry_plan
from dynprune.models import PrunableLM
from dynprune.plan import PruningPlan
from dynprune.runtime import PlanEvaluator
from dynprune.types import Prompt

TARGETS = {"after_median_abs_error": 0.05}


@dataclass
class Args(harness.Args):
    """Live honesty: live speed-up under a switching background load, old and new protocol vs a reference."""

    device: str = "cpu"
    """cpu (the background load is CPU processes)"""
    threads: int | None = 1
    """torch CPU threads (none: torch's default); 1 on a CPU shared with other jobs"""
    prompts: int = 18
    """test prompts (each with the next action of the table, cycling over the non-empty ones)"""
    max_new_tokens: int = 32
    """answer length limit of the full model (as DynPrune-v0's)"""
    reference_repeats: int = 5
    """interleaved whole-generation pairs of the reference (background stopped)"""
    busy: int = 0
    """busy background processes (0: one per logical core)"""
    switch_min_s: float = 0.2
    """shortest time between two background switches"""
    switch_max_s: float = 1.5
    """longest time between two background switches"""
    out: str = "benchmarks/results/live_honesty.json"

    SMOKE = {"prompts": 3, "max_new_tokens": 6, "reference_repeats": 2, "switch_min_s": 0.01, "switch_max_s": 0.05}
    POSITIVE = ("prompts", "max_new_tokens", "reference_repeats")
    SMOKE_TO_TEMP = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.switch_min_s <= self.switch_max_s:
            raise ValueError(f"need 0 < switch_min_s <= switch_max_s, got {self.switch_min_s}, {self.switch_max_s}")


class Background:
    """Busy processes that a thread switches on and off at random intervals while :meth:`switching` is on."""

    def __init__(self, n: int, min_s: float, max_s: float, seed: int) -> None:
        code = "while True:\n    pass\n"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
        self._signal(signal.SIGSTOP)
        self.on = False
        self.min_s, self.max_s = min_s, max_s
        self.rng = np.random.default_rng(seed)
        self._switching = threading.Event()
        self._stop = threading.Event()
        self.on_seconds = 0.0
        self.switches = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _signal(self, sig: int) -> None:
        for p in self.procs:
            os.kill(p.pid, sig)

    def _set(self, on: bool) -> None:
        if on != self.on:
            self._signal(signal.SIGCONT if on else signal.SIGSTOP)
            self.on = on
            self.switches += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._switching.wait(0.05):
                continue
            t0 = time.perf_counter()
            self._set(bool(self.rng.random() < 0.5))
            time.sleep(float(self.rng.uniform(self.min_s, self.max_s)))
            if self.on:
                self.on_seconds += time.perf_counter() - t0

    def switching(self, active: bool) -> None:
        """Start switching the load on and off, or stop it with the load off."""
        if active:
            self._switching.set()
        else:
            self._switching.clear()
            time.sleep(self.max_s + 0.1)  # let the thread finish its current interval
            self._set(False)

    def close(self) -> None:
        """Stop the thread and end the processes (each is ours, ended by its id)."""
        self._stop.set()
        self._switching.clear()
        self._thread.join(timeout=self.max_s + 1)
        for p in self.procs:
            os.kill(p.pid, signal.SIGCONT)
            p.terminate()
            p.wait(timeout=10)


def reference_speedup(lm: PrunableLM, plan: PruningPlan, ids: tuple[int, ...], n: int, repeats: int) -> list[float]:
    """Per-repeat ``T_full / T_plan - 1`` of whole generations, the two interleaved (order alternating)."""
    out = []
    for r in range(repeats):
        times = {}
        for side in (("full", "plan") if r % 2 == 0 else ("plan", "full")):
            if side == "full":
                times[side] = lm.generate(ids, n, ignore_eos=True).latency_s
            else:
                with lm.apply(plan):
                    times[side] = lm.generate(ids, n, ignore_eos=True).latency_s
        out.append(times["full"] / times["plan"] - 1.0)
    return out


def record_paired_runs() -> list[Any]:
    """Keep every ``PairedRun`` the live step makes in this process (the runtime module's reference is wrapped)."""
    import dynprune.runtime as runtime

    runs: list[Any] = []
    inner = runtime.paired_generate

    def recording(*a: Any, **k: Any) -> Any:
        run = inner(*a, **k)
        runs.append(run)
        return run

    runtime.paired_generate = recording
    return runs


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """Each point's speed-up by the reference, the old live step and the paired live step, under switching load."""
    from dynprune.tasks import load_prompts

    assert lm is not None
    pool = load_prompts("dynprune", split="test")
    idx = np.random.default_rng(args.seed).choice(len(pool), size=min(args.prompts, len(pool)), replace=False)
    prompts: list[Prompt] = [pool[int(i)] for i in idx]
    entries = [e for e in DEFAULT_TABLE if e.kind != "none"]
    plans = [(entries[i % len(entries)].name, entry_plan(entries[i % len(entries)], lm)) for i in range(len(prompts))]
    ev = PlanEvaluator(lm, args.max_new_tokens)
    runs = record_paired_runs()
    lm.warmup()
    print(f"full answers of {len(prompts)} prompts (untimed: the baseline cache's answers) ...", flush=True)
    bases = [ev.baseline(p) for p in prompts]
    for (_, plan), p in zip(plans, prompts, strict=True):  # first-call costs (slices, quality pass) stay out
        ev.quality(p, plan)
    load_start = machine_load(args.threads)
    bg = Background(args.busy or os.cpu_count() or 1, args.switch_min_s, args.switch_max_s, args.seed)
    rows: list[dict[str, Any]] = []
    try:
        # the old protocol's baseline cache: the full model timed once per prompt, under the switching load
        bg.switching(True)
        cached_full = [lm.generate(b.prompt_ids, len(b.answer_ids), ignore_eos=True).latency_s for b in bases]
        bg.switching(False)
        for i, (prompt, base, (name, plan)) in enumerate(zip(prompts, bases, plans, strict=True)):
            n = len(base.answer_ids)
            ref = reference_speedup(lm, plan, base.prompt_ids, n, args.reference_repeats)
            bg.switching(True)
            with lm.apply(plan):
                alone = lm.generate(base.prompt_ids, n, ignore_eos=True).latency_s
            before = cached_full[i] / alone - 1.0
            live = ev.evaluate(prompt, plan, "live")
            bg.switching(False)
            reference = statistics.median(ref)
            rows.append({
                "prompt_id": prompt.id, "action": name, "answer_tokens": n, "reference_speedup": reference,
                "reference_runs": ref, "before_speedup": before, "after_speedup": live.speedup,
                "before_abs_error": abs(before - reference), "after_abs_error": abs(live.speedup - reference),
                "after_sum_speedup": runs[-1].sum_speedup, "after_sum_abs_error": abs(runs[-1].sum_speedup - reference),
                "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            })
            print(f"  {i + 1}/{len(prompts)} {name:<11} reference {reference:+.3f}  before {before:+.3f}  "
                  f"after {live.speedup:+.3f} (sum {runs[-1].sum_speedup:+.3f})", flush=True)
    finally:
        on_s, switches = bg.on_seconds, bg.switches
        bg.close()
    load_end = machine_load(args.threads)
    before_err = [r["before_abs_error"] for r in rows]
    after_err = [r["after_abs_error"] for r in rows]
    after_sum_err = [r["after_sum_abs_error"] for r in rows]

    def stats(errors: list[float]) -> dict[str, float]:
        return {"median_abs_error": float(np.median(errors)), "p90_abs_error": float(np.percentile(errors, 90)),
                "max_abs_error": float(np.max(errors)), "n": len(errors)}

    return {
        "load": {"start": load_start, "end": load_end,
                 "load_average_1m_during": summary([r["load_average_1m"] for r in rows if r["load_average_1m"]])
                 if any(r["load_average_1m"] for r in rows) else None},
        "model_id": lm.model_id,
        "background": {"processes": len(bg.procs), "switches": switches, "seconds_on": on_s,
                       "interval_s": [args.switch_min_s, args.switch_max_s]},
        "before": stats(before_err),
        "after": stats(after_err),
        "after_sum": stats(after_sum_err),
        "rows": rows,
        "targets": TARGETS,
        "met": {"after_median_abs_error": stats(after_err)["median_abs_error"] <= TARGETS["after_median_abs_error"]},
        "notes": (
            "Speed-ups are fractions (T_full / T_plan - 1). reference: median of reference_repeats interleaved "
            "whole-generation pairs with the background stopped. before: the full model timed once per prompt in a "
            "first pass (the old baseline cache) over the plan timed alone at the step, both under the switching "
            "background. after: PlanEvaluator.evaluate(..., 'live'): plan and full model timed side by side, forward "
            "passes alternating, under the switching background; decode steps as the median ratio of adjacent steps "
            "(PairedRun.speedup). after_sum: the same paired runs' ratio of summed times. "
            "abs_error = |speed-up - reference|. Other jobs share "
            "the machine too (load recorded)."
        ),
    }


def print_table(result: dict[str, Any]) -> None:
    """The error of the old and the paired live step against the reference."""
    b, a, s = result["before"], result["after"], result["after_sum"]
    print(f"|error| vs reference over {a['n']} steps: before median {b['median_abs_error']:.3f} "
          f"(p90 {b['p90_abs_error']:.3f}); after median {a['median_abs_error']:.3f} (p90 {a['p90_abs_error']:.3f}), "
          f"target <= {TARGETS['after_median_abs_error']}; after, summed times: median {s['median_abs_error']:.3f}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON and print the table; return the result."""
    return harness.run(harness.parse_args(Args, argv), measure, table=print_table)


if __name__ == "__main__":
    main()
