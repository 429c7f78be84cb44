"""Do bottleneck adapters beat plain layer skipping on prompts they never saw?

One loaded model, three steps:

1. **Train** a bottleneck adapter (``x + up(relu(down(x)))``) for every decoder layer by
   white-box distillation (:func:`dynprune.adapter_training.train_adapters`) on the *training*
   split of the shipped prompt set (``dynprune.importance.default_texts()``). Per layer,
   the held-out reconstruction MSE of skipping (identity) and of the trained adapter;
   a bar chart of both beside the JSON. The adapters file goes to dynprune's cache
   folder (never into the repository); its path is recorded.
2. **Teacher-forced** (``PlanEvaluator.evaluate(..., timing="profiled")``): for ``k`` layers
   (lowest block influence first, ShortGPT) removed by skipping and, the same layers,
   replaced by the adapters, one forward pass over prompt + the full model's answer on a
   fixed seeded subset of the *test* split: argmax agreement with the full answer
   (fidelity, mean and median) and the perplexity of the full answer relative to the full
   model's (geometric mean of ``pruned ppl / full ppl``).
3. **Live** (``timing="live"``) on the first ``live_prompts`` of those prompts: a timed
   greedy generation under each plan: token agreement and exact match of the generated
   answer with the full model's, and the measured speed-up ``T_full / T_pruned`` over the
   full model's answer length (median over prompts; 1.0 = no gain).

Both steps run for ``k`` (default L/4) and ``k // 2`` (L/8), so the trend with depth shows.

Run:
    python -m benchmarks.adapters                          # embedded SmolLM2-135M, ~4-6 min on 2 cores
    python -m benchmarks.adapters --smoke --out /tmp/ad.json   # tiny random model, seconds

Writes ``benchmarks/results/adapters.json`` and ``benchmarks/results/adapters_mse.png``
and prints a table.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.utils import adapters_file, rotated, seeded_subset
from dynprune.adapter_files import save_adapters
from dynprune.adapter_training import AdapterConfig, AdapterReport, plot_adapter_mse, train_adapters
from dynprune.adapters import attach_adapters
from dynprune.models import PrunableLM
from dynprune.plan import PruningPlan
from dynprune.runtime import PlanEvaluator
from dynprune.selection import layers_plan
from dynprune.tasks import load_prompts
from dynprune.types import Evaluation

MODES = ("skip", "adapters")


@dataclass
class Args(harness.Args):
    """Adapters vs skipping: per-layer MSE, then fidelity, perplexity and speed-up on held-out prompts.

    ``seed`` seeds the adapters' training and the test subset.
    """

    bottleneck: int = 64
    """width of each adapter's bottleneck"""
    epochs: int = 4
    """passes over the training windows"""
    n_prompts: int = 64
    """calibration windows cut from the training split (1/8 of them held out for the MSE)"""
    seq_len: int = 128
    """tokens per training window"""
    k: int | None = None
    """layers removed in the main comparison (none: L/4 of the model); a second row uses k // 2"""
    test_prompts: int = 40
    """held-out prompts for the teacher-forced comparison (a fixed seeded subset of the test split)"""
    max_new_tokens: int = 32
    """answer length limit of the full model and of the live generations"""
    live_prompts: int = 10
    """how many of the test prompts also get a live generation per plan (generated-text fidelity, speed-up)"""
    adapters_out: str | None = None
    """adapters file (none: <dynprune cache>/adapters/<model>-b<bottleneck>-e<epochs>-n-s-seed.safetensors)"""
    out: str = "benchmarks/results/adapters.json"
    """JSON file to write; the MSE plot goes beside it as <stem>_mse.png"""

    SMOKE = {"epochs": 2, "n_prompts": 8, "seq_len": 32, "test_prompts": 4, "live_prompts": 2, "max_new_tokens": 8}
    POSITIVE = ("bottleneck", "epochs", "test_prompts", "max_new_tokens")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be >= 1 (or none for L/4), got {self.k}")
        if not 0 <= self.live_prompts <= self.test_prompts:
            raise ValueError(f"live_prompts must be in 0..test_prompts ({self.test_prompts}), got {self.live_prompts}")

    def adapter_config(self) -> AdapterConfig:
        """The distillation settings of these flags."""
        return AdapterConfig(bottleneck=self.bottleneck, epochs=self.epochs, n_prompts=self.n_prompts,
                             seq_len=self.seq_len, seed=self.seed)


def gmean(values: list[float]) -> float:
    """Geometric mean (``inf`` if any value is infinite)."""
    return math.exp(statistics.fmean(math.log(v) for v in values))


def row(
    k: int, plan: PruningPlan, mode: str, profiled: list[Evaluation], live: list[Evaluation], base_ppl: list[float]
) -> dict[str, Any]:
    """One results row: teacher-forced aggregates over the test prompts, live ones over the live subset."""
    scores = [e.task_score for e in live if e.task_score is not None]
    return {
        "k": k,
        "layers": list(plan.removed_layers),
        "mode": mode,
        "fidelity_mean": statistics.fmean(e.token_agreement for e in profiled),
        "fidelity_median": statistics.median(e.token_agreement for e in profiled),
        "exact_match_teacher_forced": statistics.fmean(e.exact_match for e in profiled),
        "ppl_ratio_gmean": gmean([e.ppl / b for e, b in zip(profiled, base_ppl, strict=True)]),
        "live_token_agreement": statistics.fmean(e.token_agreement for e in live) if live else None,
        "live_exact_match": statistics.fmean(e.exact_match for e in live) if live else None,
        "live_speedup_median": statistics.median(1.0 + e.speedup for e in live) if live else None,
        "live_task_score_mean": statistics.fmean(scores) if scores else None,
        "n_test": len(profiled),
        "n_live": len(live),
    }


# ----------------------------------------------------------------------------- main


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """Train the adapters, then compare them with skipping, teacher-forced and live, on held-out prompts."""
    assert lm is not None
    print("importance (calibrated once, then cached) ...", flush=True)
    imp, g = lm.importance, lm.geometry
    L = g.num_layers
    k_main = args.k if args.k is not None else max(1, L // 4)
    if k_main >= L:
        raise ValueError(f"k must be below the model's {L} layers, got {k_main}")
    ks = sorted({k_main, max(1, k_main // 2)}, reverse=True)

    # 1. adapters for every layer, distilled on the training split (default_texts); test prompts unseen
    config = args.adapter_config()
    print(f"(1) training adapters: {L} layers, {args.epochs} epochs x {args.n_prompts} windows ...", flush=True)
    report = train_adapters(lm, config=config)
    saved = save_adapters(report.adapters, args.adapters_out or adapters_file(lm.model_id, config), lm.model_id,
                          args.bottleneck)
    attach_adapters(lm, report.adapters)
    print(f"    {report.seconds:.1f} s; adapters -> {saved}", flush=True)

    # the same lowest-influence layers, skipped or replaced by their adapters
    plans = {
        (k, mode): layers_plan(imp, g, k, by="influence", adapters=mode == "adapters", name=f"{mode} {k}")
        for k in ks
        for mode in MODES
    }
    pool = load_prompts("dynprune", split="test")
    if args.test_prompts > len(pool):
        raise ValueError(f"test_prompts {args.test_prompts} exceeds the {len(pool)} prompts of the test split")
    prompts = seeded_subset(pool, args.test_prompts, args.seed)
    live_prompts = prompts[: args.live_prompts]
    ev = PlanEvaluator(lm, args.max_new_tokens)
    ev.warmup()
    print(f"    full-model answers for {len(prompts)} test prompts ...", flush=True)
    base_ppl = [ev.baseline(p).ppl for p in prompts]

    # 2. teacher-forced: one forward pass per (prompt, plan)
    print(f"(2) teacher-forced, {len(prompts)} prompts x {len(plans)} plans ...", flush=True)
    profiled: dict[tuple[int, str], list[Evaluation]] = {key: [] for key in plans}
    for p in prompts:
        for key, plan in plans.items():
            profiled[key].append(ev.evaluate(p, plan, "profiled"))

    # 3. live: one timed generation per (prompt, plan); plans of one prompt back to back
    print(f"(3) live, {len(live_prompts)} prompts x {len(plans)} plans ...", flush=True)
    live: dict[tuple[int, str], list[Evaluation]] = {key: [] for key in plans}
    for j, p in enumerate(live_prompts):
        # rotate the plan order per prompt so no plan always runs first after the previous prompt
        for key in rotated(list(plans), j):
            live[key].append(ev.evaluate(p, plans[key], "live"))

    rows = [row(k, plans[k, mode], mode, profiled[k, mode], live[k, mode], base_ppl) for k in ks for mode in MODES]
    by = {(r["k"], r["mode"]): r for r in rows}
    skip, adapted = by[k_main, "skip"], by[k_main, "adapters"]
    beats = adapted["fidelity_mean"] > skip["fidelity_mean"] and adapted["ppl_ratio_gmean"] < skip["ppl_ratio_gmean"]
    live_scores = [ev.baseline(p).task_score for p in live_prompts]
    live_scores = [s for s in live_scores if s is not None]
    per_prompt = [
        {
            "prompt_id": p.id,
            "category": p.category,
            "k": k,
            "mode": mode,
            "fidelity": profiled[k, mode][i].token_agreement,
            "ppl_ratio": profiled[k, mode][i].ppl / base_ppl[i],
            **(
                {"live_token_agreement": live[k, mode][i].token_agreement,
                 "live_speedup": 1.0 + live[k, mode][i].speedup}
                if i < len(live_prompts)
                else {}
            ),
        }
        for i, p in enumerate(prompts)
        for k in ks
        for mode in MODES
    ]
    return {
        "model_id": lm.model_id,
        "model": {"spec": args.model, "num_layers": L, "hidden_size": g.hidden_size, "dtype": str(lm.dtype)},
        "training": report.to_dict(),
        "adapters_file": str(saved),
        "plot": str(harness.sibling(args.out, "_mse.png")),
        "test": {
            "split": "test",
            "prompt_ids": [p.id for p in prompts],
            "live_prompt_ids": [p.id for p in live_prompts],
            "full_ppl_gmean": gmean(base_ppl),
            "full_live_task_score_mean": statistics.fmean(live_scores) if live_scores else None,
        },
        "results": rows,
        "claim": {"adapters_beat_skip_at_L/4": beats},
        "per_prompt": per_prompt,
        "notes": (
            "training: adapters for every layer distilled on the train split of the shipped prompts (default_texts); "
            "mse_identity = held-out MSE of skipping, mse_trained = of the adapter. results: the k lowest-influence "
            "layers (ShortGPT), skipped or replaced by the adapters, on a seeded subset of the test split. "
            "fidelity_*: teacher-forced argmax agreement with the full model's greedy answer; "
            "ppl_ratio_gmean: geometric mean over prompts of (ppl of the full answer under the plan / under the "
            "full model). live_*: on the first live_prompts test prompts, one greedy generation per plan: token "
            "agreement and exact match with the full answer, speed-up T_full/T_pruned over the full answer's length "
            "(median; 1.0 = no gain; T_full from the one baseline generation). claim: at k (L/4 by default) the "
            "adapters have a higher fidelity_mean and a lower ppl_ratio_gmean than skipping."
        ),
    }


def plot_mse(result: dict[str, Any], path: Path) -> Path:
    """The per-layer MSE chart of the result's training report."""
    return plot_adapter_mse(AdapterReport.from_json(json.dumps(result["training"])), path)


def print_table(result: dict[str, Any]) -> None:
    """The adapters' MSE per layer, then fidelity, perplexity and live speed-up per (k, mode)."""
    t = result["training"]
    print(f"adapters: {t['steps']} steps in {t['seconds']:.1f} s; held-out MSE per layer (skip -> adapter):")
    print(
        "  "
        + "  ".join(
            f"{i}:{a:.3g}->{b:.3g}" for i, a, b in zip(t["layers"], t["mse_identity"], t["mse_trained"], strict=True)
        )
    )

    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    print(
        f"\n{'k':>3} {'mode':<9}{'fid mean':>9}{'fid med':>9}{'ppl x':>8}{'live agr':>10}{'live EM':>9}"
        f"{'live x':>8}  layers"
    )
    for r in result["results"]:
        print(
            f"{r['k']:>3} {r['mode']:<9}{r['fidelity_mean']:>9.3f}{r['fidelity_median']:>9.3f}"
            f"{r['ppl_ratio_gmean']:>8.2f}{f(r['live_token_agreement'], '.3f'):>10}"
            f"{f(r['live_exact_match'], '.2f'):>9}{f(r['live_speedup_median'], '.3f'):>8}  {r['layers']}"
        )
    print(f"\nclaim: {result['claim']}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON and the MSE plot, print the table; return the result."""
    return harness.run(harness.parse_args(Args, argv), measure, table=print_table, files={"_mse.png": plot_mse})


if __name__ == "__main__":
    main()
