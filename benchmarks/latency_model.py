"""How well does the calibrated latency model predict the speed-up of plans and lengths it never saw?

``timing="modelled"`` rewards an agent with the latency model's speed-up instead of a timed
run (``dynprune.latency_model``). This benchmark measures how far that prediction is from a
careful measurement, on points that were not used in the fit:

1. **Fit.** ``dynprune.latency_model.calibrate_latency``: random plans of every kind (layers,
   heads, FFN channels, mixed, adapters) at random prompt and answer lengths, each timed
   side by side with the full model (paired); fitted on all but a holdout share (its own error
   is reported too). With ``--no-refit`` the cached model (the one ``timing="modelled"`` uses)
   is evaluated instead.
2. **Held-out points.** Plans the fit never saw: every non-empty entry of the default action
   table plus ``per_kind`` fresh random plans of each kind, each at a fresh random (prompt
   length, answer length). Measured speed-up: ``T_full / T_plan`` of whole generations, each
   model alone (as deployed), the two interleaved, the median over ``repeats`` (>= 5) repeats;
   and, as a second reference, the median of ``paired_repeats`` paired runs (the calibration's
   and the live step's protocol). Error of a point: ``|predicted / measured - 1|``; median and
   90th percentile over the points (targets 0.02 and 0.05, on the whole-generation reference).
3. **What the alternatives would have said** on the same points: a single live sample
   (``|one repeat's ratio / median - 1|``, the noise a one-sample live reward carries) and, on
   the first ``profile_points`` points, the latency profile of ``timing="profiled"`` measured
   as the env measures it (``runtime.LatencyProfile``, default settings).

One torch thread (timing on a CPU shared with other jobs: fewer threads, less contention); the
machine's load average is recorded at the start, at every point and at the end.

Run:
    python -m benchmarks.latency_model                       # embedded SmolLM2-135M, ~15-30 min on 2 cores
    python -m benchmarks.latency_model --smoke --out /tmp/lm.json

Writes ``benchmarks/results/latency_model.json``.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.utils import machine_load, summary
from dynprune.actions import DEFAULT_TABLE, entry_plan
from dynprune.latency_model import (
    PLAN_KINDS,
    LatencyCalibration,
    LatencyModel,
    calibrate_latency,
    calibration_adapters,
    error_summary,
    load_or_calibrate_latency,
    measure_point,
    plan_shapes,
    random_plan,
    sample_lengths,
    save_latency_model,
)
from dynprune.models import PrunableLM
from dynprune.plan import PruningPlan
from dynprune.runtime import LatencyProfile, ProfileConfig
from dynprune.types import LatencyPoint
from dynprune.validation import require_at_least

TARGETS = {"median_abs_rel_error": 0.02, "p90_abs_rel_error": 0.05}


@dataclass
class Args(harness.Args):
    """Latency model: predicted vs measured speed-up on held-out (plan, prompt length, answer length) points.

    ``--seed`` seeds the calibration; the held-out points use seed + 1000."""

    device: str = "cpu"
    """auto, cpu, cuda or cuda:N"""
    threads: int | None = 1
    """torch CPU threads (none: torch's default); 1 on a CPU shared with other jobs"""
    fit_points: int = 48
    """calibration points (fit and its own holdout share)"""
    fit_repeats: int = 2
    """paired repeats per calibration point"""
    refit: bool = True
    """fit a new model in this run; --no-refit evaluates the cached one (what timing="modelled" uses)"""
    per_kind: int = 6
    """held-out random plans per kind (layers, heads, ffn, mixed), besides the action table's plans"""
    repeats: int = 5
    """interleaved whole-generation repeats per held-out point (the measured speed-up is their median)"""
    paired_repeats: int = 5
    """paired repeats per held-out point (a second reference; 0: skip)"""
    prompt_min: int = 8
    """shortest prompt, tokens (calibration and held-out points: log-uniform)"""
    prompt_max: int = 256
    """longest prompt, tokens"""
    answer_min: int = 2
    """shortest answer, tokens (uniform)"""
    answer_max: int = 32
    """longest answer, tokens"""
    profile_points: int = 9
    """held-out points on which the latency profile (timing="profiled") is also measured"""
    save_model: bool = True
    """also write the fitted model to the cache (what timing="modelled" then uses)"""
    out: str = "benchmarks/results/latency_model.json"

    SMOKE = {"fit_points": 10, "fit_repeats": 1, "per_kind": 1, "repeats": 3, "paired_repeats": 2, "profile_points": 2,
             "save_model": False, "prompt_max": 32, "answer_max": 6}
    POSITIVE = ("fit_points", "fit_repeats", "repeats")
    SMOKE_TO_TEMP = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 0, "per_kind", "profile_points")


def held_out_plans(lm: PrunableLM, per_kind: int, rng: np.random.Generator) -> list[tuple[str, PruningPlan]]:
    """The action table's non-empty plans, then ``per_kind`` random plans of each kind (adapters excluded)."""
    plans = [(e.name, entry_plan(e, lm)) for e in DEFAULT_TABLE if e.kind != "none"]
    adapters = calibration_adapters(lm)
    for i in range(per_kind):
        for kind in PLAN_KINDS:
            if kind == "adapters":
                continue
            plans.append((f"random-{kind}-{i}", random_plan(lm, kind, rng, adapters)))
    return plans


def profile_speedup(lm: PrunableLM, plan: PruningPlan, point: LatencyPoint, rng: np.random.Generator) -> float:
    """The speed-up a fresh latency profile (``timing="profiled"``, default settings) gives for this point."""
    profile = LatencyProfile(lm, ProfileConfig())
    ids = tuple([lm.bos_id] + [int(t) for t in rng.integers(0, lm.geometry.vocab_size, size=point.prompt_tokens - 1)])
    cell = None
    for _ in range(profile.config.min_rounds):  # a cell is trusted after min_rounds uses
        cell = profile.cell(plan, ids)
    assert cell is not None
    return cell.speedup(point.new_tokens)


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """Fit (or load) the latency model, measure held-out points, and the alternatives on the same points."""
    assert lm is not None  # loaded and calibrated by the harness: calibration stays out of every timing
    load_start = machine_load(args.threads)
    prompt_range, answer_range = (args.prompt_min, args.prompt_max), (args.answer_min, args.answer_max)

    # (1) fit
    config = LatencyCalibration(points=args.fit_points, repeats=args.fit_repeats, prompt_tokens=prompt_range,
                                new_tokens=answer_range, seed=args.seed)
    t0 = time.perf_counter()
    if args.refit:
        print(f"(1) fit: {config.points} points x {config.repeats} repeats ...", flush=True)
        model, fit_points = calibrate_latency(lm, config, progress=lambda line: print("  " + line, flush=True))
        if args.save_model:
            print(f"  saved {save_latency_model(model)}", flush=True)
    else:
        model, fit_points = load_or_calibrate_latency(lm, config), []
        print(f"(1) the cached latency model ({model.n_points} fit points, {model.created})", flush=True)
    fit_s = time.perf_counter() - t0

    # (2) held-out points
    rng = np.random.default_rng(args.seed + 1000)
    plans = held_out_plans(lm, args.per_kind, rng)
    full = plan_shapes(lm, PruningPlan())
    print(f"(2) held-out: {len(plans)} points x {args.repeats} interleaved repeats ...", flush=True)
    rows: list[dict[str, Any]] = []
    points: list[LatencyPoint] = []
    paired_points: list[LatencyPoint] = []
    t0 = time.perf_counter()
    for i, (name, plan) in enumerate(plans):
        n, big_n = sample_lengths(rng, prompt_range, answer_range, lm.geometry.max_position)
        kind = name if not name.startswith("random-") else name.split("-")[1]
        p = measure_point(lm, plan, n, big_n, args.repeats, rng, kind=kind, full_shapes=full, protocol="whole")
        points.append(p)
        rows.append(point_row(model, name, p))
        if args.paired_repeats:
            q = measure_point(lm, plan, n, big_n, args.paired_repeats, rng, kind=kind, full_shapes=full)
            paired_points.append(q)
            rows[-1]["paired_ratios"] = list(q.ratios)
            rows[-1]["measured_paired_ratio"] = q.measured_ratio
            rows[-1]["paired_abs_rel_error"] = abs(rows[-1]["predicted_ratio"] / q.measured_ratio - 1.0)
        el = time.perf_counter() - t0
        print(f"  {i + 1}/{len(plans)} {name:<18} prompt {n:>3} answer {big_n:>2}: measured x{p.measured_ratio:.3f} "
              f"(paired x{rows[-1].get('measured_paired_ratio', float('nan')):.3f}) "
              f"predicted x{rows[-1]['predicted_ratio']:.3f} error {rows[-1]['abs_rel_error']:.3f} "
              f"(load {rows[-1]['load_average_1m']:.2f}; eta {el / (i + 1) * (len(plans) - i - 1):.0f} s)", flush=True)
    held_s = time.perf_counter() - t0

    # (3) the alternatives on the same points
    # one live sample = one paired run (the live step), against the whole-generation reference of its point
    single = [abs(r / p.measured_ratio - 1.0) for p, q in zip(points, paired_points, strict=False) for r in q.ratios]
    single = single or [abs(r / p.measured_ratio - 1.0) for p in points for r in p.ratios]
    profiled = []
    print(f"(3) latency profile on {min(args.profile_points, len(points))} points ...", flush=True)
    for (name, plan), p, row in list(zip(plans, points, rows, strict=True))[: args.profile_points]:
        pred = profile_speedup(lm, plan, p, rng) + 1.0
        row["profiled_ratio"] = pred
        row["profiled_abs_rel_error"] = abs(pred / p.measured_ratio - 1.0)
        profiled.append(row["profiled_abs_rel_error"])
        print(f"  {name:<18} profile x{pred:.3f} measured x{p.measured_ratio:.3f}", flush=True)
    load_end = machine_load(args.threads)

    err = model.point_error(points)
    by_kind = {k: dataclasses.asdict(error_summary([r["abs_rel_error"] for r in rows if r["kind_group"] == k]))
               for k in sorted({r["kind_group"] for r in rows})}
    met = {"median_abs_rel_error": err.median_abs_rel_error <= TARGETS["median_abs_rel_error"],
           "p90_abs_rel_error": err.p90_abs_rel_error <= TARGETS["p90_abs_rel_error"]}
    loads = [r["load_average_1m"] for r in rows]
    return {
        "load": {"start": load_start, "end": load_end, "load_average_1m_during": summary(loads)},
        "model_id": lm.model_id,
        "latency_model": model.to_dict(),
        "fit": {"points": len(fit_points), "seconds": fit_s,
                "holdout_of_fit": dataclasses.asdict(model.holdout) if model.holdout else None},
        "held_out": {
            "points": len(points), "repeats": args.repeats, "seconds": held_s,
            "median_abs_rel_error": err.median_abs_rel_error,
            "p90_abs_rel_error": err.p90_abs_rel_error,
            "max_abs_rel_error": err.max_abs_rel_error,
            "by_kind": by_kind,
            "rows": rows,
        },
        "held_out_paired": dataclasses.asdict(model.point_error(paired_points)) if paired_points else None,
        "single_live_sample": dataclasses.asdict(error_summary(single)),
        "profiled": dataclasses.asdict(error_summary(profiled)) if profiled else None,
        "targets": TARGETS,
        "met": met,
        "notes": (
            "Speed-ups as ratios T_full / T_plan of whole generations (prompt + exactly N greedy tokens, EOS "
            "ignored). measured: median over the point's repeats, each timing the full model's and the plan's whole "
            "generation one after the other (order alternating). abs_rel_error = |predicted / measured - 1|. "
            "held_out_paired: the same points' error against the median of paired runs (forward passes of the two "
            "models alternating: the calibration's and the live step's protocol). Held-out points: the default action "
            "table's "
            "plans and fresh random plans (layers / heads / ffn / mixed) at fresh random lengths, none in the fit. "
            "single_live_sample: |one paired run's ratio (one live step) / the point's whole-generation median - 1| "
            "over every paired run (the noise of a one-sample live reward). profiled: a fresh runtime.LatencyProfile "
            "(default ProfileConfig, its cell used "
            "min_rounds times) on the first profile_points points. load_average_1m per point: os.getloadavg() "
            f"after the point (the machine has {os.cpu_count()} logical cores; other jobs share it)."
        ),
    }


def print_table(result: dict[str, Any]) -> None:
    """The held-out error against the targets, beside one live sample's and the latency profile's."""
    err = result["held_out"]
    print(f"held-out speed-up error over {err['points']} points: median {err['median_abs_rel_error']:.4f} "
          f"(target <= {TARGETS['median_abs_rel_error']}), p90 {err['p90_abs_rel_error']:.4f} "
          f"(target <= {TARGETS['p90_abs_rel_error']}), max {err['max_abs_rel_error']:.4f}")
    s = result["single_live_sample"]
    print(f"one live sample: median {s['median_abs_rel_error']:.4f}, p90 {s['p90_abs_rel_error']:.4f}")
    if result["profiled"]:
        pr = result["profiled"]
        print(f"latency profile: median {pr['median_abs_rel_error']:.4f}, p90 {pr['p90_abs_rel_error']:.4f} "
              f"({pr['n']} points)")
    print(f"load average during: {result['load']['load_average_1m_during']}")


def point_row(model: LatencyModel, name: str, p: LatencyPoint) -> dict[str, Any]:
    """One held-out point: lengths, measured and predicted ratios and phase times, error, load."""
    from dynprune.latency_model import mean_context

    pred = model.predicted_ratio(p)
    full_pre = statistics.median(r[0] for r in p.full_runs)
    plan_pre = statistics.median(r[0] for r in p.plan_runs)
    steps = max(1, p.new_tokens - 1)
    ctx = mean_context(p.prompt_tokens, p.new_tokens)
    return {
        "name": name,
        "kind_group": "table" if not name.startswith("random-") else p.kind,
        "kind": p.kind,
        "plan": p.plan,
        "prompt_tokens": p.prompt_tokens,
        "new_tokens": p.new_tokens,
        "ratios": list(p.ratios),
        "measured_ratio": p.measured_ratio,
        "predicted_ratio": pred,
        "abs_rel_error": abs(pred / p.measured_ratio - 1.0),
        "measured_s": {"full_prefill": full_pre, "plan_prefill": plan_pre,
                       "full_step": statistics.median(r[1] for r in p.full_runs) / steps,
                       "plan_step": statistics.median(r[1] for r in p.plan_runs) / steps},
        "predicted_s": {"full_prefill": model.prefill_s(p.full, p.prompt_tokens),
                        "plan_prefill": model.prefill_s(p.shapes, p.prompt_tokens),
                        "full_step": model.step_s(p.full, ctx), "plan_step": model.step_s(p.shapes, ctx)},
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON and print the table; return the result."""
    return harness.run(harness.parse_args(Args, argv), measure, table=print_table)


if __name__ == "__main__":
    main()
