"""What does one DynPrune-v0 step cost, and where does its time go?

Three measurements on one loaded model, all in the same run:

1. **Steps/s against the naive step.** The naive step (the peer implementations'
   step of CASRAP's reference code: full generation, pruned generation, prompt perplexity and both
   answers' perplexity, nothing cached; :func:`benchmarks.utils.naive_step`)
   beside ``DynPrune-v0`` steps (``reset`` + ``step``: every episode is one prompt)
   with ``timing="live"`` (plan and full model timed side by side), ``"profiled"`` and
   ``"modelled"`` (latency model + quality memo; the latency model is loaded or fitted
   before any timing). First a **cold** pass per mode over the prompts (every full-model
   baseline, latency-profile cell and memo entry is a miss), then, profiled only,
   ``profile_rounds - 1`` **pooling** passes (a new profile cell is measured again on its
   next uses until it has ``min_rounds`` rounds), then ``repeats`` **steady** blocks (the
   same prompts and actions again: caches warm) with the four modes interleaved in each
   repeat (order rotated), so each repeat gives a ratio against a naive block measured
   moments before or after; median and min-max over repeats. A modelled block runs its
   prompts ``modelled_passes`` times (one pass takes about a millisecond: too short to time
   alone). Target: a repeated modelled step >= 1000x the naive step.
2. **Exploration configurations/s.** ``env.unwrapped.action_records()`` (every action
   of the table on one prompt, as ``dynprune explore --strategy sweep`` does) on
   prompts the envs have not seen (cold baselines, as in a sweep), live and profiled
   interleaved per prompt; configurations/s per prompt, median and min-max, and as a
   ratio to the naive step's rate of this run.
3. **Where the time goes.** The benchmark wraps the model's and the env's entry points
   (no change to the engine): ``PlanEvaluator.baseline`` (a cache hit or a miss, which
   is the whole full-model work: features, generation, scoring), ``retime_baseline``,
   the latency profile's ``cell`` (lookup or measurement), ``lm.apply`` (enter = apply,
   exit = restore), ``lm.generate`` (its own prefill and decode clocks, CUDA events on
   a GPU; the rest is tokenizer work), ``lm.generate_and_score`` (prefill, decode; the
   rest is scoring the full answer on the same KV cache), the live step's paired
   generation (both models' prefill and decode clocks; the rest, putting the plan in place
   and taking it out between passes, is ``paired_switch``), ``lm.score`` and
   ``lm.text_perplexity`` (scoring), the quality memo (``quality_lookup``; a miss runs
   the teacher-forced pass: ``scoring``), the latency model (``latency_model``), and the
   monitor's ``snapshot`` (telemetry). The
   outermost wrapped call owns its time (a generation inside a baseline miss counts to
   the baseline miss); ``other`` is the step's time outside every wrapped call (reward,
   observation, records, Gymnasium wrappers).

Run:
    python -m benchmarks.env_cost                         # embedded SmolLM2-135M, ~15 min on 2 shared cores
    python -m benchmarks.env_cost --telemetry scenario    # the training default (no live telemetry)
    python -m benchmarks.env_cost --device cuda           # CUDA-event timing, NVML telemetry
    python -m benchmarks.env_cost --smoke --out /tmp/ec.json

Writes ``benchmarks/results/env_cost.json`` and ``env_cost.png`` beside it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from benchmarks import harness
from benchmarks.utils import machine_load, naive_step, summary
from dynprune.models import PrunableLM
from dynprune.runtime import ProfileConfig
from dynprune.types import Prompt
from dynprune.validation import require_one_of

MODES = ("naive", "live", "profiled", "modelled")
TIMINGS = ("live", "profiled", "modelled")
PHASES = (
    "baseline_miss", "baseline_hit", "baseline_retime", "profile_measure", "profile_lookup", "quality_lookup",
    "latency_model", "apply", "restore", "prefill", "decode", "paired_switch", "scoring", "tokenizer", "telemetry",
    "other",
)
TARGETS = {"modelled_over_naive": 1000.0}


@dataclass
class Args(harness.Args):
    """Env cost: steps/s against the naive step, exploration configurations/s, and a step's time by phase.

    On CUDA (``--device``): CUDA-event timing, NVML telemetry."""

    threads: int | None = 1
    """torch CPU threads (none: torch's default); 1 on a CPU shared with other jobs"""
    prompts: int = 6
    """test prompts the step blocks cycle over (one step each per block)"""
    repeats: int = 3
    """steady-state blocks per mode, the modes interleaved in each repeat"""
    explore_prompts: int = 5
    """further test prompts swept with every action (exploration), per timing; the sweep's profile cells are
    trusted from prompt profile_rounds + 1 on, so keep this above profile_rounds to see the steady sweep rate"""
    max_new_tokens: int = 32
    """answer length limit of the full model"""
    telemetry: str = "live"
    """telemetry of the envs: live (psutil, NVML on a GPU: its cost is measured) or scenario"""
    reward: str = "casrap"
    """reward of the envs"""
    profile_tokens: int = 12
    """tokens per latency-profile timing run"""
    profile_repeats: int = 2
    """interleaved full/pruned runs per latency-profile measurement"""
    profile_rounds: int = 3
    """measurement rounds pooled per profile cell before it is trusted (ProfileConfig.min_rounds)"""
    modelled_passes: int = 200
    """passes over the step prompts per steady modelled block (one pass is too short to time alone)"""
    out: str = "benchmarks/results/env_cost.json"
    """JSON file to write; the plot goes beside it as <stem>.png"""

    SMOKE = {"prompts": 2, "repeats": 2, "explore_prompts": 2, "max_new_tokens": 4, "profile_tokens": 2,
             "profile_repeats": 1, "profile_rounds": 2, "modelled_passes": 20}
    POSITIVE = ("prompts", "repeats", "explore_prompts", "max_new_tokens", "profile_tokens", "profile_repeats",
                "profile_rounds", "modelled_passes")
    SMOKE_TO_TEMP = True

    def __post_init__(self) -> None:
        super().__post_init__()
        require_one_of(self, "telemetry", ("live", "scenario"))


# ----------------------------------------------------------------------------- phase clock


class PhaseClock:
    """Seconds per phase; the outermost timed call owns its time (nested calls add nothing)."""

    def __init__(self) -> None:
        self.depth = 0
        self.current: dict[str, float] = defaultdict(float)

    def add(self, name: str, seconds: float) -> None:
        """Credit ``seconds`` to phase ``name`` of the current step."""
        self.current[name] += seconds

    @contextlib.contextmanager
    def outer(self) -> Iterator[bool]:
        """Yield True when this call is the outermost timed one (it then owns its time)."""
        self.depth += 1
        try:
            yield self.depth == 1
        finally:
            self.depth -= 1

    def timed(self, fn: Callable[..., Any], classify: Callable[[Any, float], dict[str, float]]) -> Callable[..., Any]:
        """Wrap ``fn``: when outermost, ``classify(result, seconds)`` says which phases get the seconds."""
        def wrapper(*a: Any, **kw: Any) -> Any:
            with self.outer() as own:
                t0 = time.perf_counter()
                result = fn(*a, **kw)
                dt = time.perf_counter() - t0
                if own:
                    for name, sec in classify(result, dt).items():
                        self.add(name, sec)
            return result
        return wrapper

    def take(self, total_s: float) -> dict[str, float]:
        """The current step's phases, ``other`` = ``total_s`` minus the timed ones; then start a new step."""
        step = dict(self.current)
        step["other"] = max(0.0, total_s - sum(step.values()))
        self.current = defaultdict(float)
        return step


def instrument_lm(lm: PrunableLM, clock: PhaseClock) -> None:
    """Shadow the model's entry points on the instance with timed wrappers (the class is untouched)."""
    def generation(result: Any, dt: float) -> dict[str, float]:
        # the generation's own clocks (CUDA events on a GPU); the rest is tokenizer work
        return {"prefill": result.prefill_s, "decode": result.decode_s,
                "tokenizer": max(0.0, dt - result.prefill_s - result.decode_s)}

    def generation_and_score(result: Any, dt: float) -> dict[str, float]:
        gen = result[0]
        return {"prefill": gen.prefill_s, "decode": gen.decode_s,
                "scoring": max(0.0, dt - gen.prefill_s - gen.decode_s)}

    lm.generate = clock.timed(lm.generate, generation)  # type: ignore[method-assign]
    lm.generate_and_score = clock.timed(lm.generate_and_score, generation_and_score)  # type: ignore[method-assign]
    lm.score = clock.timed(lm.score, lambda r, dt: {"scoring": dt})  # type: ignore[method-assign]
    lm.text_perplexity = clock.timed(lm.text_perplexity, lambda r, dt: {"scoring": dt})  # type: ignore[method-assign]
    original_apply = lm.apply

    @contextlib.contextmanager
    def apply(plan: Any) -> Iterator[PrunableLM]:
        cm = original_apply(plan)
        with clock.outer() as own:
            t0 = time.perf_counter()
            cm.__enter__()
            if own:
                clock.add("apply", time.perf_counter() - t0)
        try:
            yield lm
        except BaseException:
            with clock.outer() as own:
                t0 = time.perf_counter()
                suppressed = cm.__exit__(*sys.exc_info())
                if own:
                    clock.add("restore", time.perf_counter() - t0)
            if not suppressed:
                raise
        else:
            with clock.outer() as own:
                t0 = time.perf_counter()
                cm.__exit__(None, None, None)
                if own:
                    clock.add("restore", time.perf_counter() - t0)

    lm.apply = apply  # type: ignore[method-assign]


def instrument_paired(clock: PhaseClock) -> None:
    """Time the live step's paired generation (``dynprune.runtime.paired_generate``, in this process only)."""
    import dynprune.runtime as runtime

    def paired(result: Any, dt: float) -> dict[str, float]:
        # both models' own clocks; the rest is putting the plan in place and out between passes
        pre = result.full.prefill_s + result.pruned.prefill_s
        dec = result.full.decode_s + result.pruned.decode_s
        return {"prefill": pre, "decode": dec, "paired_switch": max(0.0, dt - pre - dec)}

    runtime.paired_generate = clock.timed(runtime.paired_generate, paired)


def instrument_env(env: gym.Env, clock: PhaseClock) -> None:
    """Time the env's baseline cache, latency profile, quality memo, latency model and telemetry (instance only)."""
    inner = env.unwrapped
    ev = inner.evaluator
    hits = {"n": ev.cache_hits}
    measured = {"n": ev.profile.measurements}
    passes = {"n": ev.forward_passes}

    def quality_kind(result: Any, dt: float) -> dict[str, float]:
        miss = ev.forward_passes > passes["n"]  # a memo miss runs the teacher-forced pass
        passes["n"] = ev.forward_passes
        return {"scoring" if miss else "quality_lookup": dt}

    def baseline_kind(result: Any, dt: float) -> dict[str, float]:
        hit = ev.cache_hits > hits["n"]
        hits["n"] = ev.cache_hits
        return {"baseline_hit" if hit else "baseline_miss": dt}

    def cell_kind(result: Any, dt: float) -> dict[str, float]:
        new = ev.profile.measurements > measured["n"]
        measured["n"] = ev.profile.measurements
        return {"profile_measure" if new else "profile_lookup": dt}

    def retime_kind(result: Any, dt: float) -> dict[str, float]:
        hits["n"] = ev.cache_hits  # its inner baseline() lookup is part of the retime
        return {"baseline_retime": dt}

    ev.baseline = clock.timed(ev.baseline, baseline_kind)
    ev.retime_baseline = clock.timed(ev.retime_baseline, retime_kind)
    ev.profile.cell = clock.timed(ev.profile.cell, cell_kind)
    ev.quality = clock.timed(ev.quality, quality_kind)
    ev.modelled_latency_s = clock.timed(ev.modelled_latency_s, lambda r, dt: {"latency_model": dt})
    inner.monitor.snapshot = clock.timed(inner.monitor.snapshot, lambda r, dt: {"telemetry": dt})


# ----------------------------------------------------------------------------- aggregation


def breakdown(steps: list[dict[str, float]], unit: int = 1) -> dict[str, Any]:
    """Per phase: total seconds, share of the time, and ms per step (median/min/max over steps).

    ``unit`` divides each step (e.g. the number of configurations of a sweep step) for ``ms_per_unit``.
    """
    total = sum(sum(s.values()) for s in steps)
    out: dict[str, Any] = {}
    for name in PHASES:
        values = [s.get(name, 0.0) for s in steps]
        if not any(values):
            continue
        out[name] = {
            "seconds": sum(values),
            "share": sum(values) / total if total > 0 else 0.0,
            "ms_per_unit": summary([v / unit for v in values], 1e3),
        }
    return out


def test_prompts(n: int, seed: int) -> list[Prompt]:
    """``n`` distinct prompts of the shipped test split, a seeded random subset."""
    from dynprune.tasks import load_prompts

    pool = load_prompts("dynprune", split="test")
    if n > len(pool):
        raise ValueError(f"{n} prompts asked for, the test split has {len(pool)}")
    return [pool[int(i)] for i in np.random.default_rng(seed).choice(len(pool), size=n, replace=False)]


def plot(result: dict[str, Any], path: Path) -> Path:
    """Stacked bars: mean ms per step (per configuration for sweeps) by phase, for each mode."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bars = [("naive", result["steps"]["naive"]["breakdown"])]
    for mode in TIMINGS:
        bars.append((f"{mode}\ncold", result["steps"][mode]["cold"]["breakdown"]))
        if "pooling" in result["steps"][mode]:
            bars.append((f"{mode}\npooling", result["steps"][mode]["pooling"]["breakdown"]))
        bars.append((f"{mode}\nsteady", result["steps"][mode]["steady"]["breakdown"]))
    for mode in TIMINGS:
        bars.append((f"sweep {mode}\n(per config)", result["exploration"][mode]["breakdown_per_config"]))
    fig = Figure(figsize=(11, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    from matplotlib import colormaps

    tab20 = colormaps["tab20"]
    cmap = {name: tab20(i) for i, name in enumerate(PHASES)}
    x = np.arange(len(bars))
    bottom = np.zeros(len(bars))
    for name in PHASES:
        heights = np.array([b[1].get(name, {}).get("mean_ms", 0.0) for b in bars])
        if heights.any():
            ax.bar(x, heights, bottom=bottom, color=cmap[name], label=name)
            bottom += heights
    ax.set_xticks(x, [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("ms per step (mean)")
    ax.set_yscale("log" if bottom.max() / max(bottom.min(), 1e-9) > 30 else "linear")
    ax.legend(fontsize=7, ncol=2)
    m = result["machine"]
    ax.set_title(f"DynPrune-v0 step cost: {result['model_id'].split('@')[0]}, {m['device_name']}, {m['date'][:10]}",
                 fontsize=9)
    fig.savefig(path, format="png", dpi=110)
    return path


def with_means(b: dict[str, Any], n: int) -> dict[str, Any]:
    """Add ``mean_ms`` (seconds / n steps) to each phase of a breakdown, for the plot and tables."""
    for row in b.values():
        row["mean_ms"] = row["seconds"] / n * 1e3
    return b


# ----------------------------------------------------------------------------- main


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """Cold, pooling and steady step blocks of every mode, exploration sweeps, and each step's phases."""
    from dynprune.actions import DEFAULT_TABLE

    assert lm is not None  # loaded and calibrated by the harness: calibration stays out of every step
    picked = test_prompts(args.prompts + args.explore_prompts, args.seed)
    step_prompts, sweep_prompts = picked[: args.prompts], picked[args.prompts:]
    rng = np.random.default_rng(args.seed + 1)
    actions = [int(a) for a in rng.integers(1, len(DEFAULT_TABLE), size=args.prompts)]  # never "none"
    # the latency model of modelled timing: loaded from the cache (or fitted, minutes) before any timing
    from dynprune.latency_model import LatencyCalibration, load_or_calibrate_latency

    small = LatencyCalibration(points=10, repeats=1, prompt_tokens=(4, 32), new_tokens=(2, 4)) if args.smoke else None
    latency = load_or_calibrate_latency(lm, small, progress=lambda line: print("  " + line, flush=True))
    clock = PhaseClock()
    instrument_lm(lm, clock)
    instrument_paired(clock)
    profile = ProfileConfig(new_tokens=args.profile_tokens, repeats=args.profile_repeats,
                            min_rounds=args.profile_rounds)

    def make_env(timing: str, prompts: list[Prompt]) -> gym.Env:
        env = gym.make(
            "envs:DynPrune-v0", model=lm, prompts=prompts, split=None, timing=timing, telemetry=args.telemetry,
            reward=args.reward, max_new_tokens=args.max_new_tokens, sequential=True, profile=profile,
            latency_model=latency,
        )
        instrument_env(env, clock)
        return env

    envs = {t: make_env(t, step_prompts) for t in TIMINGS}
    sweeps = {t: make_env(t, sweep_prompts) for t in TIMINGS}
    naive_plans = [envs["live"].unwrapped.plan(a) for a in actions]
    lm.warmup()
    load_start = machine_load(args.threads)

    def run_block(mode: str, passes: int = 1) -> tuple[list[float], list[dict[str, float]]]:
        """``passes`` passes over the step prompts in ``mode``: per-step seconds and phases."""
        times, phases = [], []
        clock.take(0.0)
        for _ in range(passes):
            for i, prompt in enumerate(step_prompts):
                t0 = time.perf_counter()
                if mode == "naive":
                    naive_step(lm, prompt.text, naive_plans[i], args.max_new_tokens)
                else:
                    env = envs[mode]
                    env.reset(seed=args.seed if i == 0 else None)  # sequential: prompt i
                    env.step(actions[i])
                dt = time.perf_counter() - t0
                times.append(dt)
                phases.append(clock.take(dt))
        return times, phases

    steps: dict[str, Any] = {}
    # cold pass: every baseline, profile cell and memo entry missing (prompt features cleared: per-prompt work)
    for mode in TIMINGS:
        lm._features.clear()
        print(f"cold {mode} pass over {args.prompts} prompts ...", flush=True)
        times, phases = run_block(mode)
        steps[mode] = {"cold": {"step_s": summary(times), "steps_per_s": len(times) / sum(times),
                                "breakdown": with_means(breakdown(phases), len(phases))}}
    # pooling passes: a profile cell is measured again on its next uses until it has profile_rounds rounds
    pool_times: list[float] = []
    pool_phases: list[dict[str, float]] = []
    for _ in range(args.profile_rounds - 1):
        times, phases = run_block("profiled")
        pool_times += times
        pool_phases += phases
    if pool_times:
        steps["profiled"]["pooling"] = {
            "passes": args.profile_rounds - 1, "step_s": summary(pool_times),
            "steps_per_s": len(pool_times) / sum(pool_times),
            "breakdown": with_means(breakdown(pool_phases), len(pool_phases)),
        }
    block_rate: dict[str, list[float]] = {m: [] for m in MODES}
    block_phases: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    block_times: dict[str, list[float]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        for j in range(len(MODES)):
            mode = MODES[(r + j) % len(MODES)]  # rotate: each mode runs early and late equally often
            times, phases = run_block(mode, args.modelled_passes if mode == "modelled" else 1)
            block_rate[mode].append(len(times) / sum(times))
            block_phases[mode].extend(phases)
            block_times[mode].extend(times)
        print(f"  steady repeat {r + 1}/{args.repeats}: "
              + ", ".join(f"{m} {block_rate[m][-1]:.2f} steps/s" for m in MODES), flush=True)
    naive_rates = block_rate["naive"]
    steps["naive"] = {"steps_per_s": summary(naive_rates), "step_s": summary(block_times["naive"]),
                      "breakdown": with_means(breakdown(block_phases["naive"]), len(block_phases["naive"]))}
    for mode in TIMINGS:
        steps[mode]["steady"] = {
            "steps_per_s": summary(block_rate[mode]),
            "over_naive": summary([a / b for a, b in zip(block_rate[mode], naive_rates, strict=True)]),
            "step_s": summary(block_times[mode]),
            "breakdown": with_means(breakdown(block_phases[mode]), len(block_phases[mode])),
            "profile_measurements_in_steady_state": sum(1 for p in block_phases[mode] if p.get("profile_measure")),
        }
        for part in ("cold", "pooling"):
            if part in steps[mode]:
                steps[mode][part]["over_naive"] = steps[mode][part]["steps_per_s"] / statistics_median(naive_rates)

    # exploration: every action on each unseen prompt, the timings interleaved per prompt (order rotated)
    n_actions = len(DEFAULT_TABLE)
    sweep_rate: dict[str, list[float]] = {t: [] for t in TIMINGS}
    sweep_phases: dict[str, list[dict[str, float]]] = {t: [] for t in TIMINGS}
    for i in range(len(sweep_prompts)):
        lm._features.clear()  # each timing pays this prompt's features, as a sweep would
        for mode in (TIMINGS[(i + j) % len(TIMINGS)] for j in range(len(TIMINGS))):
            env = sweeps[mode]
            clock.take(0.0)
            t0 = time.perf_counter()
            env.reset(seed=args.seed if i == 0 else None)
            records = env.unwrapped.action_records()
            dt = time.perf_counter() - t0
            if len(records) != n_actions:
                raise RuntimeError(f"sweep measured {len(records)} configurations, expected {n_actions}")
            sweep_rate[mode].append(n_actions / dt)
            sweep_phases[mode].append(clock.take(dt))
        print(f"  sweep prompt {i + 1}/{len(sweep_prompts)}: "
              + ", ".join(f"{m} {sweep_rate[m][-1]:.2f} configs/s" for m in sweep_rate), flush=True)
    naive_median = statistics_median(naive_rates)
    exploration = {
        mode: {
            "configs_per_s": summary(sweep_rate[mode]),
            "configs_per_s_by_prompt": sweep_rate[mode],
            # from prompt profile_rounds + 1 on, the sweep's profile cells are trusted (no more pooling rounds)
            "configs_per_s_after_pooling": summary(sweep_rate[mode][args.profile_rounds:])
            if len(sweep_rate[mode]) > args.profile_rounds else None,
            "overall_configs_per_s": n_actions * len(sweep_rate[mode]) / sum(n_actions / r for r in sweep_rate[mode]),
            "over_naive_steps_per_s": summary([r / naive_median for r in sweep_rate[mode]]),
            "breakdown_per_config": with_means(breakdown(sweep_phases[mode], unit=n_actions),
                                               n_actions * len(sweep_phases[mode])),
        }
        for mode in TIMINGS
    }
    ratio = steps["modelled"]["steady"]["over_naive"]["median"]
    load_end = machine_load(args.threads)
    cuda = lm.device.type == "cuda"
    return {
        "load": {"start": load_start, "end": load_end},
        "timing": "CUDA events (generation clocks) after a warm-up" if cuda else "time.perf_counter, threads fixed",
        "cuda_measured": cuda,
        "model_id": lm.model_id,
        "actions": [DEFAULT_TABLE[a].name for a in actions],
        "prompt_ids": [p.id for p in step_prompts],
        "sweep_prompt_ids": [p.id for p in sweep_prompts],
        "steps": steps,
        "exploration": exploration,
        "modelled_over_naive": ratio,
        "targets": TARGETS,
        "met": {"modelled_over_naive": ratio >= TARGETS["modelled_over_naive"]},
        "notes": (
            "A step is env.reset + env.step (one-step episodes). steps_per_s of steady blocks: median/min/max over "
            "repeats; over_naive: per-repeat ratio to the naive block of the same repeat. cold: the first pass "
            "(every baseline and profile cell a miss), one block, ratio to the median naive rate. pooling: the "
            "profiled passes after it that measure each cell again until it has profile_rounds rounds. exploration: "
            "env.unwrapped.action_records() per unseen prompt; configs_per_s median/min/max over prompts, "
            "configs_per_s_after_pooling over the prompts after the first profile_rounds. "
            "breakdown: seconds by phase (outermost wrapped call owns its time; 'other' = reward, observation, "
            "records, wrappers); ms_per_unit median/min/max over steps (per configuration for sweeps). "
            "modelled: timing='modelled' (latency model + quality memo); its steady block runs the step prompts "
            "modelled_passes times; modelled_over_naive: the median over repeats of its steady steps/s over the "
            "naive block's of the same repeat. live: the plan and the full model timed side by side (paired). "
            + ("Measured on a GPU (NVML telemetry when live)." if cuda
               else "Measured on CPU; nothing CUDA was measured in this run.")
        ),
    }


def statistics_median(values: list[float]) -> float:
    """Median of a non-empty list (``summary`` without the rest)."""
    return float(summary(values)["median"])


def print_table(result: dict[str, Any]) -> None:
    """Steps/s, ratios and the largest phases."""
    s = result["steps"]
    n = s["naive"]["steps_per_s"]
    print(f"naive: {n['median']:.3f} steps/s ({n['min']:.3f}-{n['max']:.3f})")
    for mode in TIMINGS:
        st, cold = s[mode]["steady"], s[mode]["cold"]
        print(f"{mode}: steady {st['steps_per_s']['median']:.3f} steps/s, x naive {st['over_naive']['median']:.2f} "
              f"({st['over_naive']['min']:.2f}-{st['over_naive']['max']:.2f}); cold {cold['steps_per_s']:.3f} "
              f"steps/s (x{cold['over_naive']:.2f})")
    for mode, e in result["exploration"].items():
        c = e["configs_per_s"]
        print(f"sweep {mode}: {c['median']:.2f} configs/s ({c['min']:.2f}-{c['max']:.2f}), "
              f"x naive {e['over_naive_steps_per_s']['median']:.2f}; by prompt "
              + ", ".join(f"{r:.2f}" for r in e["configs_per_s_by_prompt"]))
    for label, b in ((f"{t} steady", s[t]["steady"]["breakdown"]) for t in TIMINGS):
        parts = sorted(b.items(), key=lambda kv: -kv[1]["share"])
        print(f"{label}: " + ", ".join(f"{k} {v['share']:.0%}" for k, v in parts))
    print(f"modelled step over naive step: x{result['modelled_over_naive']:.0f} "
          f"(target >= {result['targets']['modelled_over_naive']:.0f})")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON and the plot and print the table; return the result."""
    return harness.run(harness.parse_args(Args, argv), measure, table=print_table, files={".png": plot})


if __name__ == "__main__":
    main()
