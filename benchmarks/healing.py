"""Does plan-conditional healing make the embedded model worth pruning dynamically?

Side by side on the same held-out prompts (a seeded subset of the shipped *test* split, prompts
with a gold answer first), for every action of the DynPrune-v0 table and for k = 1..9 skipped
layers (lowest block influence first, the table's own order):

- **unhealed**: the plan alone;
- each healing folder of ``--healings`` (``name=folder,...``, made by ``dynprune heal``): LoRA
  active only under pruned plans, so the ``none`` action is the original. By default ``kind``
  (one LoRA per kind of plan) and ``shared`` (one for every pruned plan), trained with the same
  settings and time budget (the grouping comparison), and ``shared-tuned``, the committed folder
  (``benchmarks/results/healing_smollm2``: shared, a higher learning rate whose cosine schedule
  ends within the budget, float16). The last one is the *served* variant the targets are judged on.

Per (plan, variant), against the original model's greedy answer to each prompt:

- ``tf_agreement``: teacher-forced argmax agreement with the answer (the env's profiled fidelity);
- ``prefix_fidelity``: share of the answer reproduced before the first different argmax;
- ``kl``: mean over answer positions of ``KL(p_original || p_plan)`` over the whole vocabulary;
- ``greedy_agreement``: position-wise token agreement of the plan's own greedy answer with the
  original's (``dynprune.metrics.fidelity``); ``exact_match`` likewise;
- ``task_score``: gold-answer score of the plan's greedy answer, over the prompts with one;
- speed: on ``live_prompts`` prompts, the plan and the original generate the answer's length side
  by side (``dynprune.paired_timing``), ``speedup = T_full / T_plan`` (median over prompts);
  ``net_speedup`` adds the plan's measured apply + restore time (healing swaps included) once per
  generation: ``T_full / (T_plan + t_apply)``. Healed plans are served merged (cached weights: the
  same matmuls as unhealed); the unmerged alternative (two more small matmuls per projection) is
  timed on ``layers-25%`` and the cached weights' memory is reported.

Answers come from batched greedy decoding (``dynprune.healing_train.batched_generate``, the
original's too); the agreement of its answers with one-prompt decoding is reported on the timed
prompts. Also checked: with healing attached, the ``none`` action's logits equal the original's
bit for bit on every test sequence. The healing folders' own training reports (steps, wall time,
load average, validation curves) are copied in.

Run (after ``dynprune heal``; see benchmarks/README.md):
    python -m benchmarks.healing --threads 1                    # ~100 min on the shared 2 cores (load 2-6; wall_s)
    python -m benchmarks.healing --smoke --out /tmp/healing.json  # tiny-llama; trains its own tiny healing

Writes ``benchmarks/results/healing.json`` and ``healing.png`` beside it, and prints a table.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import harness
from benchmarks.utils import parse_ks, seeded_subset, time_apply_restore
from dynprune.actions import DEFAULT_TABLE, entry_plan
from dynprune.healing import PlanHealing, load_healing, read_info
from dynprune.healing_train import answer_logprobs, batched_generate
from dynprune.metrics import fidelity
from dynprune.models import PrunableLM, cache_dir
from dynprune.paired_timing import paired_generate
from dynprune.plan import NO_PRUNING, PruningPlan
from dynprune.runtime import prompt_task_score, teacher_forced_prefix
from dynprune.selection import layers_plan
from dynprune.tasks import load_prompts
from dynprune.types import Prompt

DEFAULT_OUT = "benchmarks/results/healing.json"
MAIN_ACTION = "layers-25%"
DEFAULT_HEALINGS = ("kind={cache}/healing/smollm2-kind-r8,shared={cache}/healing/smollm2-shared-r8,"
                    "shared-tuned=benchmarks/results/healing_smollm2")
"""The folders of benchmarks/README.md's ``dynprune heal`` runs (``{cache}``: dynprune's cache folder)."""


def healing_folders(spec: str) -> dict[str, Path]:
    """``"name=folder,..."`` -> ``{name: folder}`` in order; ``{cache}`` is dynprune's cache folder."""
    out: dict[str, Path] = {}
    for item in spec.split(","):
        name, sep, folder = item.strip().partition("=")
        if not sep or not name or not folder or name == "unhealed" or name in out:
            raise ValueError(f"healings must be distinct name=folder pairs (not 'unhealed'), got {item!r} in {spec!r}")
        out[name] = Path(folder.replace("{cache}", str(cache_dir())))
    return out


@dataclass
class Args(harness.Args):
    """Plan-conditional healing folders vs none, every table action and k = 1..9 skipped layers."""

    out: str = DEFAULT_OUT
    threads: int | None = 1
    """torch CPU threads (1: on this shared 2-core machine two threads ran a training step 10x slower)"""
    healings: str = DEFAULT_HEALINGS
    """name=folder,... of the healings to compare ({cache}: dynprune's cache); the last is the served one"""
    test_prompts: int = 60
    """held-out prompts: the test split's prompts with a gold answer first, then a seeded draw of the rest"""
    ks: str = "1,2,3,4,5,6,7,8,9"
    """layer counts skipped (lowest block influence first): integers or aL/b, comma-separated"""
    max_new_tokens: int = 32
    """answer length limit"""
    live_prompts: int = 6
    """prompts timed side by side with the original per plan and variant"""
    apply_repeats: int = 200
    """apply + restore repetitions timed per plan and variant (median)"""
    rows: str = "all"
    """"all": every table action and the k rows; "k": the k rows only (the side by side with the baselines)"""
    adapters: str = ""
    """the thesis' adapters file (dynprune adapters train): adds the "adapters" variant to the k rows"""
    static_ks: str = ""
    """layer counts at which static removal + LoRA (dynprune compress's KD healing) is trained and measured"""
    static_steps: int = 200
    """optimisation steps of each static removal's LoRA healing (dynprune compress's default)"""

    # tiny-llama (set by the harness), healings and adapters trained in seconds, 6 prompts
    SMOKE = {"test_prompts": 6, "live_prompts": 2, "ks": "1,2", "max_new_tokens": 6, "apply_repeats": 5,
             "static_ks": "1", "static_steps": 4}
    POSITIVE = ("test_prompts", "max_new_tokens", "apply_repeats", "static_steps")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rows not in ("all", "k"):
            raise ValueError(f"rows must be 'all' or 'k', got {self.rows!r}")
        if not 0 <= self.live_prompts <= self.test_prompts:
            raise ValueError(f"live_prompts must be in 0..test_prompts ({self.test_prompts}), got {self.live_prompts}")


def held_out(n: int, seed: int) -> list[Prompt]:
    """``n`` test-split prompts: those with a gold answer first (in source order), then a seeded draw of the rest."""
    pool = load_prompts("dynprune", split="test")
    if n > len(pool):
        raise ValueError(f"test_prompts {n} exceeds the {len(pool)} prompts of the test split")
    gold = [p for p in pool if p.answer is not None][:n]
    return gold + seeded_subset([p for p in pool if p.answer is None], n - len(gold), seed)


def smoke_folders(lm: PrunableLM, where: Path) -> str:
    """Train a tiny kind and shared healing on tiny-llama (seconds) for the smoke run; return their ``--healings``."""
    from dynprune.healing import HealingConfig
    from dynprune.healing_train import HealTrainConfig, train_healing

    # each text twice, so the validation prompts repeat training texts: a random model has nothing to
    # generalise, and the smoke run must save a folder
    prompts = [q for p in load_prompts("dynprune", split="train")[:8]
               for q in (p, dataclasses.replace(p, id=p.id + "-again"))]
    config = HealTrainConfig(max_new_tokens=6, sampled=0, steps=12, batch_size=4, eval_every=6, warmup=1, lr=5e-3,
                             val_fraction=0.25)
    out = []
    for grouping in ("kind", "shared"):
        folder = where / f"tiny-{grouping}"
        train_healing(lm, folder, config, HealingConfig(grouping=grouping, rank=4), prompts=prompts, progress=False,
                      log=lambda _: None)
        out.append(f"{grouping}={folder}")
    return ",".join(out)


def bench_plans(
    lm: PrunableLM, ks: list[int], table: bool = True
) -> tuple[dict[str, PruningPlan], dict[str, str]]:
    """``({row name: plan}, {row name: the name of the row measuring the same plan})``.

    Rows: every table action (unless ``table`` is false), then ``k=1`` .. ``k=9``; a k plan equal to a
    table action's is measured once.
    """
    rows: dict[str, PruningPlan] = {e.name: entry_plan(e, lm) for e in DEFAULT_TABLE} if table else {}
    same: dict[str, str] = {}
    for k in ks:
        plan = layers_plan(lm.importance, lm.geometry, k, name=f"k={k}")
        twin = next((n for n, p in rows.items() if p == plan), None)
        rows[f"k={k}"] = plan
        if twin is not None:
            same[f"k={k}"] = twin
    return rows, same


def quality(
    lm: PrunableLM, plan: PruningPlan, prompts: list[Prompt], ids: list[list[int]], answers: list[tuple[int, ...]],
    ref: list[torch.Tensor], max_new_tokens: int,
) -> dict[str, Any]:
    """Teacher-forced and greedy quality of ``plan`` (with whatever healing ``lm`` has) against the original."""
    seqs = [[*p, *a] for p, a in zip(ids, answers, strict=True)]
    starts = [len(p) for p in ids]
    with lm.apply(plan):
        lps = answer_logprobs(lm, seqs, starts)
        own = batched_generate(lm, ids, max_new_tokens)
    tf, prefix, kl, greedy, exact, scores = [], [], [], [], [], []
    for i, (lp, r, a) in enumerate(zip(lps, ref, answers, strict=True)):
        argmax = lp.argmax(-1).tolist()
        target = list(a)
        tf.append(sum(x == y for x, y in zip(argmax, target, strict=True)) / len(target))
        prefix.append(teacher_forced_prefix(argmax, target))
        kl.append(float((r.exp() * (r - lp)).sum(-1).mean()))
        f = fidelity(own[i], a)
        greedy.append(f.token_agreement)
        exact.append(f.exact_match)
        if prompts[i].answer is not None or prompts[i].ground_truth:
            score = prompt_task_score(prompts[i], lm.decode_ids(own[i]))
            if score is not None:
                scores.append(score)
    return {
        "tf_agreement": statistics.fmean(tf),
        "prefix_fidelity": statistics.fmean(prefix),
        "kl": statistics.fmean(kl),
        "greedy_agreement": statistics.fmean(greedy),
        "exact_match": statistics.fmean(exact),
        "task_score": statistics.fmean(scores) if scores else None,
        "n_task": len(scores),
    }


ADAPTERS, STATIC = "adapters", "static-lora"
"""The baselines of the k rows: the thesis' adapters, static removal + LoRA healing."""


def smoke_adapters(lm: PrunableLM, where: Path) -> str:
    """Train the thesis' adapters on tiny-llama (seconds) for the smoke run; return the file."""
    from dynprune.adapter_files import save_adapters
    from dynprune.adapter_training import AdapterConfig, train_adapters

    report = train_adapters(lm, config=AdapterConfig(epochs=1, n_prompts=8, seq_len=16))
    return str(save_adapters(report.adapters, where / "tiny-adapters.safetensors", lm.model_id, report.bottleneck))


def side_by_side(
    args: Args, lm: PrunableLM, krows: dict[str, PruningPlan],
    score: Callable[[PrunableLM, PruningPlan], dict[str, Any]],
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, Any]]:
    """The baselines on the k rows: ``({row: {variant: quality}}, {variant: settings and training})``.

    - ``adapters``: the thesis' method, each of the row's layers replaced by its distilled
      bottleneck adapter (``--adapters``, made by ``dynprune adapters train``);
    - ``static-lora``: at each k of ``--static-ks``, the row's very layers removed from a copy of
      the model and the copy healed with LoRA on the original's logits, as ``dynprune compress
      layers --heal kd`` does (its windows of the train split, its defaults, ``--static-steps``):
      one model per k, against one healing for every plan.

    ``score(model, plan)`` measures one (model, plan) against the original on the held-out prompts.
    """
    from dynprune.compress.healing import TrainConfig, split_windows, train_student
    from dynprune.compress.pipeline import DataConfig, train_windows
    from dynprune.compress.removal import removed_copy

    out: dict[str, dict[str, dict[str, Any]]] = {row: {} for row in krows}
    settings: dict[str, Any] = {}
    spec = smoke_adapters(lm, Path(tempfile.mkdtemp(prefix="healing-smoke-"))) if args.smoke else args.adapters
    if spec:
        from dynprune.adapter_files import load_adapters
        from dynprune.adapters import attach_adapters

        attach_adapters(lm, load_adapters(spec, lm))
        for row, plan in krows.items():
            t1 = time.perf_counter()
            out[row][ADAPTERS] = score(lm, dataclasses.replace(plan, skip=(), adapters=plan.skip))
            print(f"  {ADAPTERS:<17}{row:<11} greedy {out[row][ADAPTERS]['greedy_agreement']:.3f}  "
                  f"({time.perf_counter() - t1:.0f} s)", flush=True)
        lm.adapters.clear()
        settings[ADAPTERS] = {"file": spec}
    static_ks = parse_ks(args.static_ks, lm.geometry.num_layers) if args.static_ks else []
    if static_ks:
        data = DataConfig()
        train_set, val_set = split_windows(train_windows(lm, data), data.val_fraction, data.seed)
        config = TrainConfig(loss="kd", max_steps=args.static_steps)
        settings[STATIC] = {"data": dataclasses.asdict(data), "train": dataclasses.asdict(config), "reports": {}}
        for k in static_ks:
            row = f"k={k}"
            if row not in krows:
                raise ValueError(f"static_ks {k} is not among ks {args.ks!r}")
            model, report = train_student(removed_copy(lm, krows[row].skip), train_set, val_set, config,
                                          teacher=lm.model)
            static = PrunableLM(model, lm.tokenizer, name=f"{lm.name}-static-k{k}")
            out[row][STATIC] = score(static, NO_PRUNING)
            settings[STATIC]["reports"][row] = report.to_dict()
            print(f"  {STATIC:<17}{row:<11} greedy {out[row][STATIC]['greedy_agreement']:.3f}  "
                  f"(trained {report.steps} steps in {report.seconds:.0f} s)", flush=True)
            del model, static
    return out, settings


def targets(result: dict[str, Any], variant: str) -> dict[str, dict[str, Any]]:
    """The issue's targets for one healed variant, each with the measured numbers and met / missed.

    The KL target is over the table's actions (the k = 1..9 rows beyond them are reported, not judged).
    """
    rows = {r["name"]: r for r in result["rows"]}
    main = rows[MAIN_ACTION]
    healed, plain = main[variant], main["unhealed"]
    full_task = result["full"]["task_score"]
    actions = [n for n in rows if not n.startswith("k=") and n != "none"]
    kl_pairs = {n: (rows[n]["unhealed"]["kl"], rows[n][variant]["kl"]) for n in actions}
    speed = {n: (rows[n]["unhealed"].get("net_speedup"), rows[n][variant].get("net_speedup"))
             for n in actions if rows[n]["unhealed"].get("net_speedup") is not None}
    return {
        "none_bit_identical": {"value": result["none_bit_identical"][variant],
                               "met": bool(result["none_bit_identical"][variant])},
        "layers25_greedy_agreement>=0.3": {"value": healed["greedy_agreement"], "unhealed": plain["greedy_agreement"],
                                           "met": healed["greedy_agreement"] >= 0.3},
        "layers25_tf_agreement>=0.75": {"value": healed["tf_agreement"], "unhealed": plain["tf_agreement"],
                                        "met": healed["tf_agreement"] >= 0.75},
        "layers25_task_score>=half_full": {"value": healed["task_score"], "unhealed": plain["task_score"],
                                           "full": full_task,
                                           "met": healed["task_score"] is not None and full_task is not None
                                           and healed["task_score"] >= 0.5 * full_task},
        "every_action_kl_lower": {"value": {n: {"unhealed": a, "healed": b} for n, (a, b) in kl_pairs.items()},
                                  "met": all(b < a for a, b in kl_pairs.values())},
        "net_speedup>=80%_of_unhealed": {
            "value": {n: {"unhealed": a, "healed": b, "ratio": b / a} for n, (a, b) in speed.items()},
            "met": bool(speed) and all(b >= 0.8 * a for a, b in speed.values()),
        },
    }


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """Everything the JSON holds but the harness's stamps."""
    assert lm is not None
    spec = smoke_folders(lm, Path(tempfile.mkdtemp(prefix="healing-smoke-"))) if args.smoke else args.healings
    folders = healing_folders(spec)
    for name, folder in folders.items():
        if not folder.is_dir():
            raise ValueError(f"no healing folder {name}={folder}; make it with dynprune heal --model {args.model} "
                             f"--out {folder} (benchmarks/README.md has the exact commands)")
    healings: dict[str, PlanHealing | None] = {"unhealed": None}
    healings.update({name: load_healing(folder, lm) for name, folder in folders.items()})
    served = list(folders)[-1]
    prompts = held_out(args.test_prompts, args.seed)
    ids = [lm.encode_prompt(p.text, max_new_tokens=args.max_new_tokens) for p in prompts]
    plans, same = bench_plans(lm, parse_ks(args.ks, lm.geometry.num_layers), table=args.rows == "all")
    unique = {n: p for n, p in plans.items() if n not in same}

    # the original: greedy answers, their log-probabilities, task score; none bit-identical under healing
    t0 = time.perf_counter()
    answers = batched_generate(lm, ids, args.max_new_tokens)
    seqs = [[*p, *a] for p, a in zip(ids, answers, strict=True)]
    ref = answer_logprobs(lm, seqs, [len(p) for p in ids])
    full_scores = [s for p, a in zip(prompts, answers, strict=True)
                   if (s := prompt_task_score(p, lm.decode_ids(a))) is not None]
    logits = [lm.logits(s) for s in seqs]
    bit_identical = {}
    for name, h in healings.items():
        lm.set_healing(h)
        with lm.apply(NO_PRUNING):
            bit_identical[name] = all(torch.equal(lm.logits(s), x) for s, x in zip(seqs, logits, strict=True))
        bit_identical[name] &= all(torch.equal(lm.logits(s), x) for s, x in zip(seqs, logits, strict=True))
        lm.set_healing(None)
    print(f"original: {len(prompts)} answers, task score {statistics.fmean(full_scores):.3f} on "
          f"{len(full_scores)} gold prompts ({time.perf_counter() - t0:.0f} s)", flush=True)

    # quality of every (plan, variant)
    rows: dict[str, dict[str, Any]] = {
        n: {"name": n, "plan": p.to_dict(), "kept_fraction": p.kept_fraction(lm.geometry)} for n, p in plans.items()
    }
    for name, h in healings.items():
        lm.set_healing(h)
        for row, plan in unique.items():
            t1 = time.perf_counter()
            rows[row][name] = quality(lm, plan, prompts, ids, answers, ref, args.max_new_tokens)
            rows[row][name]["active_healing"] = lm.healing_label(plan)
            q = rows[row][name]
            print(f"  {name:<17}{row:<11} tf {q['tf_agreement']:.3f}  greedy {q['greedy_agreement']:.3f}  "
                  f"KL {q['kl']:.3f}  ({time.perf_counter() - t1:.0f} s)", flush=True)
        lm.set_healing(None)

    # speed: paired live timing, apply + restore, the unmerged alternative, memory
    live = list(range(args.live_prompts))
    timed: dict[tuple[str, str], list[tuple[float, float]]] = {}
    single_agree = []
    for j in live:
        for row, plan in unique.items():
            if plan.is_empty:
                continue
            for name, h in healings.items():  # variants back to back: one load for the three
                lm.set_healing(h)
                run = paired_generate(lm, plan, ids[j], len(answers[j]))
                lm.set_healing(None)
                timed.setdefault((row, name), []).append((run.full.latency_s, run.pruned.latency_s))
        single_agree.append(fidelity(run.full.output_ids, answers[j]).token_agreement)
    apply_s: dict[tuple[str, str], float] = {}
    for name, h in healings.items():
        lm.set_healing(h)
        for row, plan in unique.items():
            apply_s[row, name] = statistics.median(time_apply_restore(lm, plan, args.apply_repeats))
        lm.set_healing(None)
    for row in unique:
        for name in healings:
            pairs = timed.get((row, name))
            rows[row][name]["apply_restore_ms"] = 1e3 * apply_s[row, name]
            if pairs:
                rows[row][name]["speedup"] = statistics.median(f / p for f, p in pairs)
                rows[row][name]["net_speedup"] = statistics.median(f / (p + apply_s[row, name]) for f, p in pairs)
                rows[row][name]["n_timed"] = len(pairs)
    for row, twin in same.items():
        rows[row].update({k: v for k, v in rows[twin].items() if k in healings})
        rows[row]["same_plan_as"] = twin
    baseline_rows, baselines = side_by_side(
        args, lm, {n: p for n, p in plans.items() if n.startswith("k=")},
        lambda model, plan: quality(model, plan, prompts, ids, answers, ref, args.max_new_tokens))
    for row, measured in baseline_rows.items():
        rows[row].update(measured)
    unmerged = None
    healed = healings[served]
    if live and healed is not None and MAIN_ACTION in unique:
        healed.merged = False
        lm.set_healing(healed)
        runs = [paired_generate(lm, unique[MAIN_ACTION], ids[j], len(answers[j])) for j in live]
        lm.set_healing(None)
        healed.merged = True
        healed.clear_cache()
        lm.set_healing(healed)
        for plan in unique.values():
            with lm.apply(plan):
                pass  # builds every merged weight the table needs
        lm.set_healing(None)
        unmerged = {"variant": served, "action": MAIN_ACTION,
                    "speedup": statistics.median(r.speedup + 1.0 for r in runs),
                    "merged_speedup": rows[MAIN_ACTION][served].get("speedup")}
    memory = {n: h.cached_bytes() / 2**20 for n, h in healings.items() if h is not None}
    training = {n: read_info(d).report | {"settings": read_info(d).training, "healing": read_info(d).config,
                                          "folder": str(d), "trained_groups": list(read_info(d).trained_groups)}
                for n, d in folders.items()}
    folder_mb = {n: sum(f.stat().st_size for f in d.iterdir()) / 2**20 for n, d in folders.items()}
    result: dict[str, Any] = {
        "model_id": lm.model_id,
        "prompts": {"split": "test", "ids": [p.id for p in prompts], "n": len(prompts),
                    "n_gold": len(full_scores), "live_ids": [prompts[j].id for j in live]},
        "full": {"task_score": statistics.fmean(full_scores) if full_scores else None,
                 "batched_vs_single_decode_agreement": statistics.fmean(single_agree) if single_agree else None},
        "none_bit_identical": bit_identical,
        "variants": list(healings),
        "baselines": list(baselines),
        "baseline_settings": baselines,
        "served": served,
        "rows": list(rows.values()),
        "unmerged": unmerged,
        "merged_cache_mib": memory,
        "folder_mib": folder_mb,
        "training": training,
    }
    if args.rows == "all":  # the targets are judged on the table's actions
        result["targets"] = targets(result, served)
        result["targets_by_variant"] = {v: targets(result, v) for v in folders}
    return result


def plot(result: dict[str, Any], path: Path) -> Path:
    """Left: greedy and teacher-forced agreement vs k skipped layers; right: KL per table action (log scale)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax, bx = fig.subplots(1, 2)
    rows = result["rows"]
    krows = [r for r in rows if r["name"].startswith("k=")]
    ks = [int(r["name"][2:]) for r in krows]
    palette = ["tab:grey", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    every = [*result["variants"], *result.get("baselines", [])]
    colours = {v: palette[i % len(palette)] for i, v in enumerate(every)}
    for v in every:
        kv = [(k, r[v]) for k, r in zip(ks, krows, strict=True) if v in r]
        ax.plot([k for k, _ in kv], [q["greedy_agreement"] for _, q in kv], "-o", color=colours[v],
                label=f"{v}: greedy")
        ax.plot([k for k, _ in kv], [q["tf_agreement"] for _, q in kv], "--s", color=colours[v], alpha=0.6,
                label=f"{v}: teacher-forced")
    ax.set_xlabel("layers skipped (lowest block influence first)")
    ax.set_ylabel("agreement with the original's greedy answer")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{result['model_id']}: {result['prompts']['n']} held-out prompts")
    ax.legend(fontsize=7)
    actions = [r for r in rows if not r["name"].startswith("k=") and r["name"] != "none"]
    bars = actions or krows  # the side-by-side run (--rows k) has no table actions: KL per k
    xs = np.arange(len(bars))
    shown = [v for v in every if any(v in r for r in bars)]
    width = 0.8 / len(shown)
    for j, v in enumerate(shown):
        bx.bar(xs + (j - (len(shown) - 1) / 2) * width, [max(r[v]["kl"], 1e-6) if v in r else 0.0 for r in bars],
               width, color=colours[v], label=v)
    bx.set_yscale("log")
    bx.set_xticks(xs, [r["name"] for r in bars], rotation=45, ha="right", fontsize=8)
    bx.set_ylabel("KL(original || plan), nats per answer token")
    bx.set_title("every table action" if actions else "layers skipped")
    bx.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def print_table(result: dict[str, Any]) -> None:
    """Rows x variants: teacher-forced / greedy agreement, KL, task score, net speed-up."""
    def f(v: Any, spec: str = ".3f") -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    head = f"{'plan':<11}{'variant':<18}{'tf agr':>7}{'greedy':>7}{'prefix':>7}{'KL':>7}{'task':>6}{'net x':>7}"
    print(head)
    for r in result["rows"]:
        for v in [*result["variants"], *result.get("baselines", [])]:
            if v not in r:
                continue
            q = r[v]
            print(f"{r['name']:<11}{v:<18}{f(q['tf_agreement']):>7}{f(q['greedy_agreement']):>7}"
                  f"{f(q['prefix_fidelity']):>7}{f(q['kl']):>7}{f(q['task_score'], '.2f'):>6}"
                  f"{f(q.get('net_speedup')):>7}")
    print(f"\nfull model task score {f(result['full']['task_score'])}; "
          f"none bit-identical: {result['none_bit_identical']}")
    if "targets" not in result:  # the side-by-side run (--rows k)
        return
    print(f"targets, judged on the served healing ({result['served']}):")
    for name, t in result["targets"].items():
        shown = t["value"] if not isinstance(t["value"], dict) else "see JSON"
        print(f"  {'MET   ' if t['met'] else 'MISSED'} {name}: {shown}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return harness.run(harness.parse_args(Args, argv), measure, table=print_table, files={".png": plot})


if __name__ == "__main__":
    main()
