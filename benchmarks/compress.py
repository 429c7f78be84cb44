"""Static compression baselines on one model: size, speed-up, perplexity, fidelity, task score.

Every method compresses a copy of the same loaded model (:mod:`dynprune.compress`) and is
measured against it in the same run (:func:`dynprune.compress.evaluate.evaluate`):

- **layer removal** of ``k`` layers (default L/10): the last layer (``k = 1``, the small-system
  recipe), the contiguous block with the smallest angular distance (Gromov et al. 2024) and the
  ``k`` layers of lowest block influence (ShortGPT); the last one also **healed** with LoRA
  (r 32, alpha 16, all projections, lr 2e-4, early stopping) with a next-token loss and with a
  KD loss to the full model's logits, and used as the student of a full-weight **distillation**
  (KL + CE);
- **unstructured sparsity** at ``sparsity`` (magnitude, Wanda) and 2:4 (masked dense weights on
  a CPU: no sparse kernels run, and the measured speed-up shows it);
- **quantisation**: FP16, BF16, dynamic INT8 (CPU); NF4 needs CUDA + bitsandbytes and is
  recorded as skipped elsewhere.

A ``source`` row times the full model against itself (A/A), which shows the timing noise floor.
Calibration and training use windows of the shipped *train* split; perplexity, fidelity and
task score use the *test* split. Timings interleave source and compressed runs (A B, B A ...)
and report each speed-up as the per-repeat ratio (median, min, max).

Run:
    python -m benchmarks.compress                                  # embedded SmolLM2-135M
    python -m benchmarks.compress --smoke --out /tmp/compress.json # tiny random model, seconds

Writes ``benchmarks/results/compress.json`` and ``benchmarks/results/compress.png`` (Pareto
chart: speed-up and size against perplexity) and prints a table.
"""

from __future__ import annotations

import gc
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness
from dynprune.compress.evaluate import EvalConfig, evaluate, reference, time_pair
from dynprune.compress.healing import TrainConfig
from dynprune.compress.pipeline import (
    Compressed,
    DataConfig,
    compress_distill,
    compress_layers,
    compress_quantize,
    compress_sparsity,
)
from dynprune.compress.sparsity import SparsityConfig
from dynprune.models import PrunableLM

ALL = ("last", "angular", "block_influence", "heal-ce", "heal-kd", "distill", "magnitude", "wanda", "2:4",
       "fp16", "bf16", "int8", "nf4")  # fmt: skip


@dataclass
class Args(harness.Args):
    """Static compression baselines: size, speed-up, perplexity and fidelity against the full model.

    ``seed`` seeds the train / validation split and the LoRA initialisation.
    """

    k: int | None = None
    """layers removed by the angular / block-influence rows, healing and distillation (none: L/10)"""
    sparsity: float = 0.5
    """unstructured sparsity of the magnitude and Wanda rows"""
    heal_steps: int = 150
    """LoRA healing steps at most (early stopping on the validation loss)"""
    heal_lr: float = 2e-4
    """LoRA learning rate"""
    distill_steps: int = 150
    """distillation steps at most"""
    distill_lr: float = 5e-5
    """distillation learning rate (every weight trains)"""
    temperature: float = 2.0
    """KD softmax temperature"""
    batch_size: int = 4
    """windows per training step"""
    eval_every: int = 25
    """steps between validation checks"""
    seq_len: int = 32
    """tokens per calibration / training / perplexity window"""
    max_windows: int = 96
    """train-split windows at most (calibration, training; 15 % held out for early stopping)"""
    eval_windows: int = 24
    """test-split windows for perplexity and teacher-forced fidelity"""
    eval_prompts: int = 8
    """held-out prompts answered greedily by both models (fidelity, task score)"""
    max_new_tokens: int = 16
    """answer length of those prompts"""
    repeats: int = 5
    """timed repeats per model (interleaved with the source)"""
    timing_tokens: int = 24
    """tokens per timed generation"""
    methods: str = ",".join(ALL)
    """comma-separated rows to run (source always runs)"""
    plot_only: bool = False
    """redraw the chart from the existing --out JSON without measuring anything"""
    out: str = "benchmarks/results/compress.json"
    """JSON file to write; the Pareto chart goes beside it as <stem>.png"""

    SMOKE = {"heal_steps": 6, "distill_steps": 6, "eval_every": 3, "heal_lr": 2e-3, "distill_lr": 1e-3, "seq_len": 32,
             "eval_prompts": 2, "max_new_tokens": 4, "max_windows": 48, "eval_windows": 8, "repeats": 2,
             "timing_tokens": 4}
    POSITIVE = ("heal_steps", "distill_steps", "eval_every", "repeats", "timing_tokens", "eval_prompts")

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [m for m in self.method_list if m not in ALL]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; expected a comma-separated subset of {ALL}")
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be >= 1 (or none for L/10), got {self.k}")

    @property
    def method_list(self) -> list[str]:
        """The rows to run, in order."""
        return [m.strip() for m in self.methods.split(",") if m.strip()]


def _row(method: str, label: str, c: Compressed, ev: dict[str, Any], seconds: float) -> dict[str, Any]:
    m = c.metadata
    row = {
        "method": method,
        "label": label,
        "settings": m.settings,
        "removed_layers": list(m.removed_layers),
        "dtype": m.dtype,
        "quantization": m.quantization,
        "compress_seconds": seconds,
        **{k: v for k, v in ev.items() if k not in ("config",)},
    }
    for key in ("healing", "training"):
        if key in m.report:
            r = m.report[key]
            row[key] = {k: r[k] for k in ("val_loss", "val_ce", "eval_steps", "best_step", "steps", "stopped_early",
                                          "trainable_params", "n_train", "n_val", "seconds", "val_ce_before",
                                          "val_ce_best")}  # fmt: skip
    if "sparsity_reached" in m.report:
        row["sparsity_reached"] = m.report["sparsity_reached"]
        row["semi_structured_kernels"] = m.report["semi_structured_kernels"]
    return row


def measure(args: Args, lm: PrunableLM | None, checkpoint: harness.Checkpoint) -> dict[str, Any]:
    """Compress a copy of the model by every requested method and measure each against the source."""
    assert lm is not None
    n = lm.geometry.num_layers
    k = args.k if args.k is not None else max(1, n // 10)
    _ = lm.importance  # calibrate (or load the cached calibration) before any timing
    data = DataConfig(seq_len=args.seq_len, max_windows=args.max_windows, seed=args.seed)
    econf = EvalConfig(n_prompts=args.eval_prompts, max_new_tokens=args.max_new_tokens, repeats=args.repeats,
                       timing_tokens=args.timing_tokens, seq_len=args.seq_len,
                       max_windows=args.eval_windows)  # fmt: skip
    heal = TrainConfig(lr=args.heal_lr, max_steps=args.heal_steps, batch_size=args.batch_size,
                       eval_every=args.eval_every, temperature=args.temperature, seed=args.seed)  # fmt: skip
    distill = TrainConfig(loss="kd", kd_weight=0.5, lora=False, lr=args.distill_lr, max_steps=args.distill_steps,
                          batch_size=args.batch_size, eval_every=args.eval_every, temperature=args.temperature,
                          seed=args.seed)  # fmt: skip
    print(f"model {lm}; k = {k}; reference measurements ...", flush=True)
    ref = reference(lm, econf)
    aa = time_pair(lm, lm.model, econf)
    rows: list[dict[str, Any]] = [{
        "method": "source", "label": "full model (A/A timing)", "size_mb": ref.size_bytes / 2**20,
        "compression_ratio": 1.0, "num_layers": n, "perplexity": math.exp(ref.nll),
        "source_perplexity": math.exp(ref.nll), "teacher_forced_agreement": 1.0,
        "kl_to_source": 0.0, "generation_token_agreement": 1.0, "generation_exact_match": 1.0, **aa,
    }]  # fmt: skip
    skipped: dict[str, str] = {}
    recipes: dict[str, tuple[str, str, Callable[[], Compressed]]] = {
        "last": ("layers", "drop the last layer", lambda: compress_layers(lm, "last", 1, data=data)),
        "angular": ("layers", f"angular block k={k}", lambda: compress_layers(lm, "angular", k, data=data)),
        "block_influence": ("layers", f"ShortGPT k={k}", lambda: compress_layers(lm, "block_influence", k, data=data)),
        "heal-ce": ("layers+heal-ce", f"ShortGPT k={k} + LoRA (CE)",
                    lambda: compress_layers(lm, "block_influence", k, heal="ce", train=heal, data=data)),
        "heal-kd": ("layers+heal-kd", f"ShortGPT k={k} + LoRA (KD T={args.temperature})",
                    lambda: compress_layers(lm, "block_influence", k, heal="kd", train=heal, data=data)),
        "distill": ("distill", f"ShortGPT k={k} student, KL+CE",
                    lambda: compress_distill(lm, "block_influence", k, train=distill, data=data)),
        "magnitude": ("magnitude", f"magnitude {args.sparsity:.0%}",
                      lambda: compress_sparsity(lm, SparsityConfig("magnitude", args.sparsity), data)),
        "wanda": ("wanda", f"Wanda {args.sparsity:.0%}",
                  lambda: compress_sparsity(lm, SparsityConfig("wanda", args.sparsity), data)),
        "2:4": ("2:4", "2:4 (Wanda scores)", lambda: compress_sparsity(lm, SparsityConfig("2:4", 0.5), data)),
        "fp16": ("fp16", "FP16", lambda: compress_quantize(lm, "fp16")),
        "bf16": ("bf16", "BF16", lambda: compress_quantize(lm, "bf16")),
        "int8": ("int8", "dynamic INT8", lambda: compress_quantize(lm, "int8")),
        "nf4": ("nf4", "NF4 (bitsandbytes)", lambda: compress_quantize(lm, "nf4")),
    }  # fmt: skip
    for name in args.method_list:
        method, label, make = recipes[name]
        t0 = time.perf_counter()
        try:
            c = make()
        except (ValueError, ModuleNotFoundError) as e:  # NF4 without CUDA / bitsandbytes
            skipped[name] = str(e)
            print(f"{label}: skipped ({e})", flush=True)
            continue
        seconds = time.perf_counter() - t0
        row = _row(method, label, c, evaluate(lm, c.model, econf, ref), seconds)
        rows.append(row)
        print(f"{label}: ppl {row['perplexity']:.2f}, speed-up x{row['speedup']['median']:.3f}, "
              f"size {row['size_mb']:.1f} MiB, agreement {row['teacher_forced_agreement']:.3f} "
              f"({seconds:.0f} s + eval)", flush=True)  # fmt: skip
        del c
        gc.collect()
        checkpoint({"partial": True, "rows": rows, "skipped": skipped})  # a run cut short keeps its rows

    aa_spread = [rows[0]["speedup"]["min"], rows[0]["speedup"]["max"]]
    sparse = [r for r in rows if r["method"] in ("magnitude", "wanda", "2:4")]
    return {
        "model_id": lm.model_id,
        "k": k,
        "block_influence_layers": rows_layers(rows, "ShortGPT"),
        "rows": rows,
        "pareto_points": pareto_points(rows),
        "skipped": skipped,
        "claims": {
            "aa_speedup_spread": aa_spread,
            "unstructured_sparsity_speedup_medians": {r["label"]: r["speedup"]["median"] for r in sparse},
            "unstructured_sparsity_speedup_within_aa_noise": {
                r["label"]: aa_spread[0] <= r["speedup"]["median"] <= aa_spread[1] for r in sparse
            },
            "healing_lowers_val_ce": {
                r["label"]: r["healing"]["val_ce_best"] < r["healing"]["val_ce_before"] for r in rows if "healing" in r
            },
        },
        "note": (
            "CPU shared with other engineers' jobs during the run (see machine.load_average_1m): latencies are noisy; "
            "speed-ups are per-repeat ratios of interleaved source/compressed runs (median, min, max). The source row "
            "times the full model against itself (A/A) to show the noise floor. Perplexity over non-overlapping "
            f"{args.seq_len}-token windows of the test split; training windows from the train split."
        ),
    }


def pareto_points(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as points for ``benchmarks/pareto.py``'s chart, in its units.

    Speed-up there is ``T_full / T - 1`` (0 = as fast) and quality is the greedy answers'
    token agreement with the full model, so: ``speedup`` = median ratio - 1 (min/max likewise)
    and ``fidelity`` = ``generation_token_agreement``. The A/A source row is left out.
    """
    return [
        {
            "name": r["label"], "family": "compression",
            "speedup": {k: r["speedup"][k] - 1.0 for k in ("median", "min", "max")},
            "fidelity": {"mean": r["generation_token_agreement"]},
            "size_mb": r["size_mb"], "perplexity": r["perplexity"],
        }
        for r in rows
        if r["method"] != "source"
    ]


def rows_layers(rows: Sequence[dict[str, Any]], prefix: str) -> list[int]:
    """Removed layers of the first row whose label starts with ``prefix`` (empty when none ran)."""
    return next((r["removed_layers"] for r in rows if r["label"].startswith(prefix)), [])


def plot(result: dict[str, Any], path: Path) -> Path:
    """Pareto chart: fidelity to the full model against speed-up (median, min-max bars) and against size.

    Fidelity (teacher-forced argmax agreement with the full model on held-out windows) is the
    y-axis rather than perplexity: healing on the train split's prompt format lowers the
    perplexity of the test split's prompts below the full model's own, which is adaptation
    to the format, not closeness to the model being compressed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for r in result["rows"]:
        s, y = r["speedup"], r["teacher_forced_agreement"]
        axes[0].errorbar(s["median"], y, xerr=[[s["median"] - s["min"]], [s["max"] - s["median"]]],
                         fmt="o", capsize=3, alpha=0.8)  # fmt: skip
        axes[0].annotate(r["label"], (s["median"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axes[1].plot(r["size_mb"], y, "o")
        axes[1].annotate(f"{r['label']} (ppl {r['perplexity']:.0f})", (r["size_mb"], y), fontsize=7, xytext=(3, 3),
                         textcoords="offset points")  # fmt: skip
    labels = ("speed-up vs full model (greedy decode; bars: min-max over interleaved repeats)", "size (MiB)")
    for ax, xlabel in zip(axes, labels, strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fidelity: teacher-forced agreement with the full model")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Static compression baselines on {result['args']['model']} (upper right is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_table(result: dict[str, Any]) -> None:
    """Print method, size, speed-up, perplexity and fidelity."""
    print(f"{'method':<34} {'MiB':>7} {'speed-up (min-max)':>22} {'ppl':>9} {'agree':>6} {'gen':>5} {'task':>5}")
    for r in result["rows"]:
        s = r["speedup"]
        task = r.get("task_score")
        print(f"{r['label']:<34} {r['size_mb']:>7.1f} {s['median']:>8.3f} ({s['min']:.3f}-{s['max']:.3f}) "
              f"{r['perplexity']:>9.2f} {r['teacher_forced_agreement']:>6.3f} {r['generation_token_agreement']:>5.2f} "
              f"{'' if task is None else f'{task:.2f}':>5}")  # fmt: skip
    for name, why in result["skipped"].items():
        print(f"{name}: skipped: {why}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run (or, with --plot-only, reread the JSON), write JSON and chart, print the table."""
    args = harness.parse_args(Args, argv)
    files = {".png": plot}
    if args.plot_only:
        data = json.loads(Path(args.out).read_text())
        data.setdefault("pareto_points", pareto_points(data["rows"]))  # results written before the field existed
        return harness.save(data, args.out, table=print_table, files=files)
    return harness.run(args, measure, table=print_table, files=files, checkpoints=True)


if __name__ == "__main__":
    main()
