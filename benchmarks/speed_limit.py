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
  (:func:`work_model`), where only the skipped layers' work disappears.

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

import dataclasses
import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from benchmarks.utils import machine_info, parse_args, summary, write_json
from dynprune.fileio import atomic_write_bytes
from dynprune.metrics import fix_threads
from dynprune.models import PrunableLM, load_model
from dynprune.plan import PruningPlan
from dynprune.selection import layers_plan

DEFAULT_OUT = "benchmarks/results/speed_limit.json"


@dataclass
class Args:
    """Speed limit: measured layer-skip speed-up beside the naive L/(L-k) and the parameter-count bound."""

    model: str = "smollm2-135m"
    """model spec: smollm2-135m (embedded), tiny-llama, a model folder or a Hugging Face id"""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N (CUDA: timings with CUDA events)"""
    threads: int | None = None
    """torch CPU threads (none: torch's default)"""
    ks: str = "1,L/8,L/4,3L/8,L/2"
    """layers skipped, comma-separated: integers or fractions of L written as L/8, 3L/8 ..."""
    repeats: int = 10
    """interleaved repeats (each runs every plan once; the order rotates each repeat)"""
    prompt: str = (
        "Explain in a few sentences why the sky looks blue during the day and red at sunset, "
        "and name the physical effect responsible."
    )
    """prompt of the timed generations (through the chat template when the model has one)"""
    max_new_tokens: int = 32
    """tokens generated per timed run (exactly this many: end-of-sequence is ignored)"""
    out: str = DEFAULT_OUT
    """JSON file to write; the plot goes beside it as <stem>.png"""
    smoke: bool = False
    """quick check: tiny-llama, 3 repeats, 6 tokens; writes to --out if given, else to the temp folder"""

    def __post_init__(self) -> None:
        if self.smoke:
            self.model, self.repeats = "tiny-llama", 3
            self.max_new_tokens = min(self.max_new_tokens, 6)
            if self.out == DEFAULT_OUT:  # never overwrite the real results with a smoke run
                self.out = str(Path(tempfile.gettempdir()) / "speed_limit_smoke.json")
        for name in ("repeats", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def parse_ks(text: str, num_layers: int) -> list[int]:
    """``"1,L/8,3L/4"`` -> sorted distinct layer counts for a model of ``num_layers`` layers (each >= 1).

    Raises ``ValueError`` naming an entry that is not an integer or ``aL/b``, or that is not in 1..L-1.
    """
    ks: set[int] = set()
    for raw in text.split(","):
        item = raw.strip().replace(" ", "")
        if not item:
            continue
        if "L" in item:
            num, _, den = item.partition("/")
            coeff = num.replace("L", "") or "1"
            try:
                k = int(coeff) * num_layers // int(den or "1")
            except ValueError as e:
                raise ValueError(f"ks entry {raw!r} is neither an integer nor of the form aL/b") from e
            k = max(1, k)
        else:
            try:
                k = int(item)
            except ValueError as e:
                raise ValueError(f"ks entry {raw!r} is neither an integer nor of the form aL/b") from e
        if not 1 <= k < num_layers:
            raise ValueError(f"ks entry {raw!r} gives k={k}; k must be in 1..{num_layers - 1}")
        ks.add(k)
    if not ks:
        raise ValueError(f"ks {text!r} names no layer count")
    return sorted(ks)


def machine_load(threads: int) -> dict[str, Any]:
    """Whether other processes shared the CPU: load average and processes busy over a 0.5 s window.

    ``shared`` is True when the 1-minute load average exceeds this run's torch threads or another
    process used more than 10 % of a core in the window.
    """
    me = os.getpid()
    procs = []
    for p in psutil.process_iter(["pid"]):
        if p.info["pid"] == me:
            continue
        try:
            p.cpu_percent(None)
            procs.append(p)
        except (psutil.Error, OSError):
            continue
    time.sleep(0.5)
    busy = 0
    for p in procs:
        try:
            if p.cpu_percent(None) > 10.0:
                busy += 1
        except (psutil.Error, OSError):
            continue
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "load_average_1m": load,
        "other_busy_processes": busy,
        "shared": bool(busy > 0 or (load is not None and load > threads)),
    }


# ----------------------------------------------------------------------------- the bound


def _linear_params(module: torch.nn.Module) -> int:
    """Weights (and biases) of the ``nn.Linear`` modules under ``module``: the parameters that are matmuls."""
    return sum(p.numel() for m in module.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())


def param_counts(lm: PrunableLM) -> dict[str, Any]:
    """Parameter counts by role, read from the loaded model itself."""
    model = lm.model
    layers = list(lm.decoder.layers)
    per_layer = [_linear_params(layer) for layer in layers]
    per_layer_norm = [sum(p.numel() for p in layer.parameters()) - n
                      for layer, n in zip(layers, per_layer, strict=True)]
    embed = lm.decoder.embed_tokens.weight
    head = model.lm_head.weight
    g = lm.geometry
    return {
        "layer_matmul": per_layer,
        "layer_elementwise": per_layer_norm,
        "lm_head_matmul": head.numel(),
        "embedding_lookup": embed.numel(),
        "tied_embeddings": embed.data_ptr() == head.data_ptr(),
        "final_norm": sum(p.numel() for p in lm.decoder.norm.parameters()),
        "vocab_size": g.vocab_size,
        "hidden_size": g.hidden_size,
        "attention_width": [h * g.head_dim for h in g.num_heads],
        "total_unique": sum(p.numel() for p in model.parameters()),
    }


def work_model(counts: dict[str, Any], prompt_tokens: int, new_tokens: int, skipped: set[int]) -> dict[str, float]:
    """Multiply-accumulates of one generation, split into what skipping shrinks and what it does not.

    The formula and its assumptions:

    - A decoder layer costs ``P_i`` MACs per token that passes through it, ``P_i`` being its
      ``nn.Linear`` parameter count (q, k, v, o, gate, up, down), plus attention over the KV
      cache: ``2 * W_i * c`` MACs for a token at context length ``c`` (``QK^T`` and ``AV``,
      ``W_i`` = query heads x head dim). RMSNorms and the residual adds are elementwise and
      left out (``layer_elementwise``: a few thousand numbers per layer).
    - Tokens through the layers: the prompt's ``n`` in the prefill, then ``N - 1`` single-token
      decode steps (the last generated token is never fed back); exactly ``N`` new tokens.
    - Fixed work, whatever the plan: the lm_head (``V x H`` MACs) once per produced token (the
      prefill keeps the logits of its last position only, ``logits_to_keep=1``); sampling (greedy
      argmax over ``V`` logits, counted as ``V``); the final norm (``H``). The embedding is a
      lookup (a row copy), not a matmul: 0 MACs, even when its matrix is tied to the lm_head.
    - Time is proportional to this work. This holds when compute-bound (large prefills) and,
      for batch-1 decode, when bound by memory bandwidth too, since every weight matrix is
      read once per forward pass (bytes are parameters x dtype size, the same ratio). What it
      leaves out is per-step overhead that does not scale with parameters (the Python decode
      loop, kernel launches, allocator work): that is what ``measured / bound`` < 1 shows.

    Returns the prefill, decode and total MACs, each with its fixed (unshrinkable) part.
    """
    n, big_n = prompt_tokens, new_tokens
    kept = [i for i in range(len(counts["layer_matmul"])) if i not in skipped]
    fixed_per_token = counts["lm_head_matmul"] + counts["vocab_size"] + counts["hidden_size"]

    def layers_work(tokens: int, context_sum: int) -> float:
        # tokens through each kept layer x its matmul params + attention over the cached context
        return float(sum(tokens * counts["layer_matmul"][i] + 2 * counts["attention_width"][i] * context_sum
                         for i in kept))

    # prefill: n tokens; token t (1-based) attends to t positions
    prefill_layers = layers_work(n, n * (n + 1) // 2)
    prefill_fixed = float(fixed_per_token)  # one position's logits
    # decode: N - 1 steps; step j feeds one token at context n + j
    steps = max(0, big_n - 1)
    decode_layers = layers_work(steps, sum(n + j for j in range(1, steps + 1)))
    decode_fixed = float(steps * fixed_per_token)
    return {
        "prefill": prefill_layers + prefill_fixed,
        "prefill_fixed": prefill_fixed,
        "decode": decode_layers + decode_fixed,
        "decode_fixed": decode_fixed,
        "total": prefill_layers + prefill_fixed + decode_layers + decode_fixed,
        "total_fixed": prefill_fixed + decode_fixed,
    }


# ----------------------------------------------------------------------------- measurement


def measure(lm: PrunableLM, plans: list[PruningPlan], ids: list[int], args: Args) -> list[dict[str, list[float]]]:
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
        for j in range(len(plans)):
            i = (r + j) % len(plans)  # rotate: each plan runs early and late equally often
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return atomic_write_bytes(path, buf.getvalue())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; write and return the JSON."""
    args = parse_args(Args, argv)
    threads = fix_threads(args.threads)
    t_start = time.perf_counter()
    lm = load_model(args.model, device=args.device)
    print(f"model: {lm}", flush=True)
    L = lm.geometry.num_layers
    ks = parse_ks(args.ks, L)
    imp = lm.importance
    plans = [PruningPlan(name="full")] + [layers_plan(imp, lm.geometry, k, name=f"skip {k}") for k in ks]
    ids = lm.encode_prompt(args.prompt, max_new_tokens=args.max_new_tokens)
    load_start = machine_load(threads)
    machine = machine_info(lm.device)
    print(f"{len(plans)} plans x {args.repeats} repeats x {args.max_new_tokens} tokens ...", flush=True)
    times = measure(lm, plans, ids, args)
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
    result = {
        "args": dataclasses.asdict(args),
        "machine": machine,
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
            "parameter counts (benchmarks/speed_limit.py work_model: layers' matmul params + attention over the "
            "cache shrink; lm_head, argmax sampling and final norm do not; the embedding is a lookup, 0 MACs). "
            "decode = seconds per token after the first. total.bound_time_weighted = T_full / (T_prefill / "
            "bound_prefill + T_decode / bound_decode) with the full model's median phase times of this run "
            "(prefill and decode cost different time per MAC, so summed MACs misweight them). "
            + ("Measured on a GPU." if cuda else "Measured on CPU; nothing CUDA was measured in this run.")
        ),
        "wall_s": time.perf_counter() - t_start,
    }
    path = write_json(result, args.out)
    plot(result, Path(args.out).with_suffix(".png"))
    print_table(result)
    print(f"wrote {path} and {Path(args.out).with_suffix('.png')}")
    return result


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


if __name__ == "__main__":
    main()
