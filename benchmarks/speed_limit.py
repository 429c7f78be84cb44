"""How close does skipping k decoder layers come to the speed-up it could possibly give?

Skipping ``k`` of ``L`` layers cannot give the naive ``L / (L - k)``: the embedding,
the final norm, the lm_head and the sampling run for every token whatever the plan.
This benchmark puts three numbers side by side for each ``k``:

- **measured**: full-model latency / pruned latency for the same work (prompt +
  exactly ``max_new_tokens`` greedy tokens, EOS ignored), plans interleaved within
  each repeat (A B C ... then rotated), so the ratio of each repeat compares runs
  seconds apart; median and min-max over the repeats.
- **naive**: ``L / (L - k)``.
- **bound**: the ratio of the work that the model's own parameter counts imply
  (:func:`benchmarks.utils.work_model`), where only the skipped layers' work disappears.

and reports ``measured / bound`` and ``measured / naive``, for the whole generation,
its prefill (time to first token) and its decode (seconds per token after the first).

Layers are skipped lowest block influence first (ShortGPT), as every layer plan here.

Run:
    python -m benchmarks.speed_limit                      # embedded SmolLM2-135M, ~2 min on 2 cores
    python -m benchmarks.speed_limit --device cuda        # CUDA-event timing
    python -m benchmarks.speed_limit --smoke --out /tmp/sl.json

Writes ``benchmarks/results/speed_limit.json`` and ``speed_limit.png`` beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness
from benchmarks.utils import TIMED_PROMPT, machine_load, param_counts, parse_ks, rotated, summary, work_model
from dynprune.models import PrunableLM
from dynprune.plan import PruningPlan
from dynprune.selection import layers_plan


@dataclass
class Args(harness.Args):
    """Speed limit: measured layer-skip speed-up beside the naive L/(L-k) and the parameter-count bound."""

    ks: str = "1,L/8,L/4,3L/8,L/2"
    """layers skipped, comma-separated: integers or fractions of L written as L/8, 3L/8 ..."""
    repeats: int = 10
    """interleaved repeats (each runs every plan once; the order rotates each repeat)"""
    prompt: str = TIMED_PROMPT
    """prompt of the timed generations (through the chat template when the model has one)"""
    max_new_tokens: int = 32
    """tokens generated per timed run (exactly this many: end-of-sequence is ignored)"""
    out: str = "benchmarks/results/speed_limit.json"
    """JSON file to write; the plot goes beside it as <stem>.png"""

    SMOKE = {"repeats": 3, "max_new_tokens": 6}
    POSITIVE = ("repeats", "max_new_tokens")


# ----------------------------------------------------------------------------- measurement


def time_plans(lm: PrunableLM, plans: list[PruningPlan], ids: list[int], args: Args) -> list[dict[str, list[float]]]:
    """Per plan: total, prefill and per-token decode seconds of each repeat, plans interleaved."""
    def run(plan: PruningPlan) -> tuple[float, float, float]:
        with lm.apply(plan):
            r = lm.generate(ids, args.max_new_tokens, ignore_eos=True)
        if r.produced != args.max_new_tokens:
            raise RuntimeError(f"{plan.describe()}: produced {r.produced} tokens, expected {args.max_new_tokens}")
        return r.latency_s, r.prefill_s, r.per_token_s or 0.0

    lm.warmup()
    for plan in plans:  # one untimed run per plan: first-call costs stay out
        run(plan)
    times: list[dict[str, list[float]]] = [{"total": [], "prefill": [], "decode": []} for _ in plans]
    for r in range(args.repeats):
        for i in rotated(range(len(plans)), r):  # each plan runs early and late equally often
            total, prefill, per_token = run(plans[i])
            times[i]["total"].append(total)
            times[i]["prefill"].append(prefill)
            times[i]["decode"].append(per_token)
        print(f"  repeat {r + 1}/{args.repeats}", flush=True)
    return times


def ratios(base: list[float], other: list[float]) -> list[float]:
    """Within-repeat speed-ups ``base[r] / other[r]`` (both measured in repeat r, seconds apart)."""
    return [b / o for b, o in zip(base, other, strict=True)]


def plot(result: dict[str, Any], path: Path) -> Path:
    """Speed-up against k: measured (median, min-max bar), naive L/(L-k) and the parameter-count bound."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    rows = result["rows"]
    ks = [0] + [r["k"] for r in rows]
    L = result["model"]["num_layers"]
    for ax, part in zip(axes, ("total", "prefill", "decode"), strict=True):
        med = [1.0] + [r[part]["speedup"]["median"] for r in rows]
        lo = [0.0] + [r[part]["speedup"]["median"] - r[part]["speedup"]["min"] for r in rows]
        hi = [0.0] + [r[part]["speedup"]["max"] - r[part]["speedup"]["median"] for r in rows]
        ax.errorbar(ks, med, yerr=[lo, hi], fmt="o-", capsize=3, label="measured (median, min-max)")
        ax.plot(ks, [L / (L - k) for k in ks], "--", color="tab:gray", label="naive L/(L-k)")
        ax.plot(ks, [1.0] + [r[part]["bound"] for r in rows], ":", color="tab:red", label="bound (param counts)")
        if part == "total":
            ax.plot(ks, [1.0] + [r[part]["bound_time_weighted"] for r in rows], "-.", color="tab:green",
                    label="bound, phases weighted by time")
        ax.set_title({"total": "whole generation", "prefill": "prefill", "decode": "decode, per token"}[part])
        ax.set_xlabel("layers skipped k")
        ax.set_ylabel("speed-up (x)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"{result['model']['model_id'].split('@')[0]}, {m['device_name']}, {m['date'][:10]}", fontsize=9)
    fig.savefig(path, format="png", dpi=110)
    return path


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """Time every plan, then set the measured speed-ups beside the naive ratio and the bound."""
    assert lm is not None
    threads = torch.get_num_threads()
    L = lm.geometry.num_layers
    ks = parse_ks(args.ks, L)
    imp = lm.importance
    plans = [PruningPlan(name="full")] + [layers_plan(imp, lm.geometry, k, name=f"skip {k}") for k in ks]
    ids = lm.encode_prompt(args.prompt, max_new_tokens=args.max_new_tokens)
    load_start = machine_load(threads)
    print(f"{len(plans)} plans x {args.repeats} repeats x {args.max_new_tokens} tokens ...", flush=True)
    times = time_plans(lm, plans, ids, args)
    load_end = machine_load(threads)

    counts = param_counts(lm)
    work_full = work_model(counts, len(ids), args.max_new_tokens, set())
    rows = []
    for plan, t in zip(plans[1:], times[1:], strict=True):
        k = plan.num_layers_removed
        work = work_model(counts, len(ids), args.max_new_tokens, set(plan.skip))
        naive = L / (L - k)
        row: dict[str, Any] = {"k": k, "skip": list(plan.skip), "naive": naive}
        for part in ("total", "prefill", "decode"):
            speedups = ratios(times[0][part], t[part])
            bound = work_full[part] / work[part]
            row[part] = {
                "seconds": summary(t[part]),
                "speedup": summary(speedups),
                "bound": bound,
                "fixed_share_of_full_work": work_full[f"{part}_fixed"] / work_full[part],
                "measured_over_bound": summary([s / bound for s in speedups]),
                "measured_over_naive": summary([s / naive for s in speedups]),
                "bound_over_naive": bound / naive,
            }
        # Prefill (batched, compute-bound) and decode (one token per pass, bandwidth- and overhead-bound) do
        # not cost the same time per MAC, so MACs summed over both phases misweight them. The time-weighted
        # bound keeps work-proportional time within each phase and weights the phases by the full model's
        # measured time in this run: T_full / (T_prefill / bound_prefill + T_decode / bound_decode).
        t_pre = summary(times[0]["prefill"])["median"]
        t_dec = summary(times[0]["decode"])["median"] * max(0, args.max_new_tokens - 1)
        weighted = (t_pre + t_dec) / (t_pre / row["prefill"]["bound"] + t_dec / row["decode"]["bound"])
        totals = ratios(times[0]["total"], t["total"])
        row["total"]["bound_time_weighted"] = weighted
        row["total"]["measured_over_time_weighted_bound"] = summary([s / weighted for s in totals])
        rows.append(row)
    cuda = lm.device.type == "cuda"
    return {
        "load": {"start": load_start, "end": load_end},
        "timing": "CUDA events after a warm-up" if cuda else "time.perf_counter, torch threads fixed",
        "cuda_measured": cuda,
        "model": {"spec": args.model, "model_id": lm.model_id, "num_layers": L, "dtype": str(lm.dtype)},
        "prompt_tokens": len(ids),
        "param_counts": counts,
        "work_full_model_macs": work_full,
        "full_model_seconds": {part: summary(times[0][part]) for part in ("total", "prefill", "decode")},
        "rows": rows,
        "notes": (
            "speedup: within-repeat ratio full / pruned (plans interleaved, order rotated each repeat), "
            "median/min/max over repeats. naive = L/(L-k). bound = full work / pruned work from the model's "
            "parameter counts (benchmarks/utils.py work_model: layers' matmul params + attention over the "
            "cache shrink; lm_head, argmax sampling and final norm do not; the embedding is a lookup, 0 MACs). "
            "decode = seconds per token after the first. total.bound_time_weighted = T_full / (T_prefill / "
            "bound_prefill + T_decode / bound_decode) with the full model's median phase times of this run "
            "(prefill and decode cost different time per MAC, so summed MACs misweight them). "
            + ("Measured on a GPU." if cuda else "Measured on CPU; nothing CUDA was measured in this run.")
        ),
    }


def print_table(result: dict[str, Any]) -> None:
    """The whole-generation table (median and min-max over repeats)."""
    def fmt(s: dict[str, float]) -> str:
        return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"

    print(f"\n{'k':>3} {'naive':>7} {'bound':>7} {'t-bound':>8} {'measured (min-max)':>22} {'meas/bound':>22} "
          f"{'meas/t-bound':>22} {'meas/naive':>22}")
    for r in result["rows"]:
        t = r["total"]
        print(f"{r['k']:>3} {r['naive']:>7.3f} {t['bound']:>7.3f} {t['bound_time_weighted']:>8.3f} "
              f"{fmt(t['speedup']):>22} {fmt(t['measured_over_bound']):>22} "
              f"{fmt(t['measured_over_time_weighted_bound']):>22} {fmt(t['measured_over_naive']):>22}")
    print(f"other load: {result['load']}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON and the plot, print the table; return the result."""
    return harness.run(harness.parse_args(Args, argv), measure, table=print_table, files={".png": plot})


if __name__ == "__main__":
    main()
