"""KV-cache windows on long prompts: memory, speed and quality beside the full model, and when to pick one.

A KV window (``PruningPlan.kv``, ``dynprune.pruning.kv``) keeps each layer's first 4 cached
tokens (StreamingLLM's attention sinks) and its most recent ones. This script measures, on
long prompts (shipped prompts concatenated, a prompt with a gold answer last, so the task
score exists), for each KV action of the ``kv`` action table next to the full model:

1. **Speed and quality, live**: the plan and the full model generate the same ``new_tokens``
   tokens greedily, forward passes interleaved (``dynprune.paired_timing``): speed-up
   (``PairedRun.speedup``, the median ratio of adjacent decode steps plus the prefill ratio),
   prefix fidelity and token agreement of the plan's answer against the full model's answer
   of the same run, and the gold-answer task score of both.
2. **Memory, each run in a fresh process** (as ``benchmarks/memory.py``): peak RSS during one
   greedy generation of ``new_tokens`` tokens on the longest prompt under the plan (kernel peak
   mark reset first, ``benchmarks.utils.peak_during``), and the KV-cache bytes the cache really
   held (``kv_cache_bytes``, the largest value over the generation's steps) beside the count from
   shapes (``Evaluation.kv_bytes``).
3. **The memory scenario** (DynPrune-v0, ``action_table="kv"``, modelled timing): every action of
   the table on every long prompt under ``idle`` and under ``low_memory``, for each reward of
   ``rewards``; the best action per prompt under each, and on how many prompts they differ. Only
   the memory term (``dynprune.rewards.memory_term``) differs between the two: the speed-up and
   the teacher-forced quality of a (prompt, action) are the same measurement.

Run:
    python -m benchmarks.kv_cache --threads 1                # embedded SmolLM2-135M, ~10 min on a shared 2-core CPU
    python -m benchmarks.kv_cache --smoke --out /tmp/kv.json # tiny random model, seconds

Writes ``benchmarks/results/kv_cache.json``.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.utils import machine_load, peak_during, rotated, run_in_child, summary
from dynprune.models import PrunableLM
from dynprune.types import Prompt

MIB = float(1 << 20)


@dataclass
class Args(harness.Args):
    """KV-cache windows on long prompts: peak memory, KV bytes, paired speed-up and quality beside the full model."""

    actions: str = "kv-50%,kv-75%,kv-w256"
    """KV actions of the kv action table, comma-separated"""
    prompts: int = 4
    """long prompts (each: shipped prompts concatenated, a prompt with a gold answer last)"""
    prompt_tokens: int = 500
    """target length of each long prompt, tokens (it ends at the first whole prompt past it)"""
    new_tokens: int = 24
    """tokens generated per paired run and per memory run; the env's answer limit too"""
    repeats: int = 1
    """paired runs per (prompt, action), actions rotated between repeats"""
    memory_repeats: int = 2
    """fresh-process peak-memory runs per action (and the full model), order rotated"""
    rewards: str = "accuracy_efficiency,casrap"
    """rewards of the scenario sweep, comma-separated"""
    out: str = "benchmarks/results/kv_cache.json"
    """JSON file to write"""

    SMOKE = {"prompts": 2, "prompt_tokens": 120, "new_tokens": 4, "memory_repeats": 1, "actions": "kv-50%,kv-w256"}
    POSITIVE = ("prompts", "prompt_tokens", "new_tokens", "repeats", "memory_repeats")

    def __post_init__(self) -> None:
        super().__post_init__()
        _ = self.action_list, self.reward_list  # names checked before the model loads

    @property
    def action_list(self) -> list[str]:
        """``actions`` as kv-table names; ``ValueError`` for a name that is not a KV action."""
        from dynprune.actions import make_table

        kv = [e.name for e in make_table("kv") if e.kind == "kv"]
        names = [a.strip() for a in self.actions.split(",") if a.strip()]
        if not names or any(a not in kv for a in names):
            raise ValueError(f"actions must be KV actions of the kv table {kv}, got {self.actions!r}")
        return names

    @property
    def reward_list(self) -> list[str]:
        """``rewards`` as reward names; ``ValueError`` for an unknown one."""
        from dynprune.rewards import REWARDS

        names = [r.strip() for r in self.rewards.split(",") if r.strip()]
        if not names or any(r not in REWARDS or REWARDS[r]().needs_budget for r in names):
            raise ValueError(f"rewards must name rewards without a budget among {sorted(REWARDS)}, "
                             f"got {self.rewards!r}")
        return names


# ----------------------------------------------------------------------------- long prompts


def long_prompts(lm: PrunableLM, n: int, target: int, seed: int) -> list[Prompt]:
    """``n`` prompts of about ``target`` tokens: shipped prompts joined, one with a gold answer last.

    Each is seeded on its own (``seed + i``): a question drawn from the shipped prompts that carry
    a short gold answer, after other shipped prompts in a shuffled order until the text reaches
    ``target`` tokens (the model's chat template included).
    """
    from dynprune.tasks import load_prompts

    shipped = load_prompts("dynprune", split=None)
    questions = [p for p in shipped if p.answer]
    lengths = {p.id: len(lm.encode_text(p.text)) + 2 for p in shipped}  # + the blank line between prompts
    out = []
    for i in range(n):
        rng = random.Random(seed + i)
        question = rng.choice(questions)
        others = [p for p in shipped if p.id != question.id]
        rng.shuffle(others)
        context, total = [], lengths[question.id]
        for p in others:
            if total >= target:
                break
            context.append(p.text)
            total += lengths[p.id]
        text = "\n\n".join([*context, question.text])
        out.append(Prompt(id=f"long-{i}", text=text, category="long", answer=question.answer, split="test",
                          source=f"dynprune: {len(context)} shipped prompts + {question.id}"))
    return out


# ----------------------------------------------------------------------------- memory child


def child_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: load the model, then the peak RSS and KV bytes of one plan's greedy generation."""
    import torch

    from dynprune.actions import entry_plan, make_table
    from dynprune.generation import forward_with_cache
    from dynprune.metrics import fix_threads
    from dynprune.models import load_model
    from dynprune.plan import PruningPlan
    from dynprune.pruning.kv import kv_cache_bytes

    fix_threads(spec["threads"])
    lm = load_model(spec["model"], device=spec["device"], dtype=spec["dtype"])
    entry = next((e for e in make_table("kv") if e.name == spec["action"]), None)
    plan = PruningPlan(name="none") if entry is None else entry_plan(entry, lm)
    ids = lm.encode_prompt(spec["prompt"], max_new_tokens=spec["new_tokens"])
    lm.warmup()
    held: list[int] = []

    @torch.inference_mode()
    def work() -> None:
        with lm.apply(plan):
            cache = lm.new_cache()
            inp = torch.tensor([ids], device=lm.device)
            for _ in range(spec["new_tokens"]):
                logits = forward_with_cache(lm.model, inp, cache, logits_to_keep=1)
                held.append(kv_cache_bytes(cache))
                inp = logits[:, -1].argmax(-1, keepdim=True)

    result = peak_during(work, lm.device if lm.device.type == "cuda" else None)
    result.update(kv_bytes_held_max=max(held), kv_bytes_held_end=held[-1], prompt_tokens=len(ids))
    return result


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`child_memory` in a new Python process."""
    return run_in_child("benchmarks.kv_cache:child_memory", spec, f"kv_cache memory child {spec['action']}")


# ----------------------------------------------------------------------------- measurements


def until_eos(lm: PrunableLM, out: Sequence[int]) -> list[int]:
    """The answer inside a generation that ran past EOS: the tokens before the first EOS."""
    for i, t in enumerate(out):
        if t in lm.eos_ids:
            return list(out[:i])
    return list(out)


def measure_live(args: Args, lm: PrunableLM, prompts: list[Prompt]) -> dict[str, list[dict[str, Any]]]:
    """Paired generations: each KV action beside the full model on each long prompt."""
    from dynprune.actions import entry_plan, make_table
    from dynprune.metrics import fidelity
    from dynprune.paired_timing import paired_generate
    from dynprune.runtime import prompt_task_score

    entries = {e.name: e for e in make_table("kv")}
    plans = {a: entry_plan(entries[a], lm) for a in args.action_list}
    rows: dict[str, list[dict[str, Any]]] = {a: [] for a in args.action_list}
    for prompt in prompts:
        ids = lm.encode_prompt(prompt.text, max_new_tokens=args.new_tokens)
        for r in range(args.repeats):
            for action in rotated(args.action_list, r):
                run = paired_generate(lm, plans[action], ids, args.new_tokens)
                full, pruned = until_eos(lm, run.full.output_ids), until_eos(lm, run.pruned.output_ids)
                fid = fidelity(pruned, full)
                rows[action].append({
                    "prompt_id": prompt.id, "prompt_tokens": len(ids), "repeat": r,
                    "speedup": run.speedup,
                    "full_latency_s": run.full.latency_s, "pruned_latency_s": run.pruned.latency_s,
                    "full_prefill_s": run.full.prefill_s, "pruned_prefill_s": run.pruned.prefill_s,
                    "prefix_fidelity": fid.prefix_agreement, "token_agreement": fid.token_agreement,
                    "exact_match": fid.exact_match,
                    "full_task_score": prompt_task_score(prompt, lm.decode_ids(full)),
                    "task_score": prompt_task_score(prompt, lm.decode_ids(pruned)),
                    "full_text": lm.decode_ids(full), "text": lm.decode_ids(pruned),
                })
        print(f"  live {prompt.id} ({len(ids)} tokens): " + ", ".join(
            f"{a} {rows[a][-1]['speedup']:+.3f} / fid {rows[a][-1]['prefix_fidelity']:.2f}" for a in args.action_list),
            flush=True)
    return rows


def measure_memory(args: Args, lm: PrunableLM, prompt: Prompt) -> dict[str, list[dict[str, Any]]]:
    """Fresh-process peak RSS and held KV bytes of the full model and each KV action on one prompt."""
    names = ["none", *args.action_list]
    base = {"model": args.model, "device": str(lm.device), "dtype": args.dtype, "threads": args.threads,
            "prompt": prompt.text, "new_tokens": args.new_tokens}
    runs: dict[str, list[dict[str, Any]]] = {a: [] for a in names}
    for r in range(args.memory_repeats):
        for action in rotated(names, r):
            runs[action].append(run_child({**base, "action": action}))
        print(f"  memory repeat {r + 1}/{args.memory_repeats}: " + ", ".join(
            f"{a} peak {runs[a][-1]['delta_rss'] / MIB:+.1f} MiB, KV {runs[a][-1]['kv_bytes_held_max'] / MIB:.2f} MiB"
            for a in names), flush=True)
    return runs


def measure_sweep(args: Args, lm: PrunableLM, prompts: list[Prompt], tmp: Path) -> dict[str, Any]:
    """Every kv-table action on every long prompt under idle and low_memory, per reward; the best actions."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers DynPrune-v0)
    from dynprune.latency_model import LatencyCalibration, load_or_calibrate_latency

    small = LatencyCalibration(points=10, repeats=1, prompt_tokens=(4, 32), new_tokens=(2, 4)) if args.smoke else None
    latency = load_or_calibrate_latency(lm, small)
    out: dict[str, Any] = {}
    for reward in args.reward_list:
        per_scenario: dict[str, list[dict[str, Any]]] = {}
        for scenario in ("idle", "low_memory"):
            env = gym.make("DynPrune-v0", model=lm, prompts=prompts, split=None, sequential=True, action_table="kv",
                           timing="modelled", reward=reward, scenario=scenario, max_new_tokens=args.new_tokens,
                           cache_file=str(tmp / "baselines.jsonl"), memo_file=str(tmp / "memo.json"),
                           latency_model=latency).unwrapped
            rows = []
            for i in range(len(prompts)):
                env.reset(seed=args.seed) if i == 0 else env.reset()
                records = env.action_records()
                best = max(records, key=lambda rec: rec.reward)
                rows.append({
                    "prompt_id": records[0].prompt_id,
                    "mem_available_frac": records[0].observation[env.observation_names.index("mem_available_frac")],
                    "best": best.action_name,
                    "actions": {rec.action_name: {
                        "reward": rec.reward, "memory_term": rec.memory_term, "speedup": rec.speedup,
                        "prefix_fidelity": rec.prefix_fidelity, "ppl_change": rec.ppl_change,
                        "kv_bytes": rec.kv_bytes, "baseline_kv_bytes": rec.baseline_kv_bytes,
                    } for rec in records},
                })
            env.evaluator.memo.flush()  # the next env reads the teacher-forced passes from the memo file
            per_scenario[scenario] = rows
        differ = [a["prompt_id"] for a, b in zip(per_scenario["idle"], per_scenario["low_memory"], strict=True)
                  if a["best"] != b["best"]]
        out[reward] = {
            "best_idle": {r["prompt_id"]: r["best"] for r in per_scenario["idle"]},
            "best_low_memory": {r["prompt_id"]: r["best"] for r in per_scenario["low_memory"]},
            "prompts_where_best_differs": differ,
            "n_differ": len(differ),
            "n_prompts": len(prompts),
            "scenarios": per_scenario,
        }
        print(f"  sweep {reward}: best differs on {len(differ)}/{len(prompts)} prompts; idle "
              f"{sorted(set(out[reward]['best_idle'].values()))}, low_memory "
              f"{sorted(set(out[reward]['best_low_memory'].values()))}", flush=True)
    return out


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """Long prompts, then the live pairs, the fresh-process memory runs and the scenario sweep."""
    assert lm is not None
    load_start = machine_load(args.threads or 1)
    prompts = long_prompts(lm, args.prompts, args.prompt_tokens, args.seed)
    lengths = [len(lm.encode_prompt(p.text)) for p in prompts]
    print(f"{len(prompts)} long prompts: {lengths} tokens", flush=True)
    live = measure_live(args, lm, prompts)
    longest = prompts[max(range(len(prompts)), key=lambda i: lengths[i])]
    memory = measure_memory(args, lm, longest)
    with tempfile.TemporaryDirectory() as tmp:
        sweep = measure_sweep(args, lm, prompts, Path(tmp))
    first_reward = sweep[args.reward_list[0]]["scenarios"]["idle"]

    actions: dict[str, Any] = {}
    for name in ["none", *args.action_list]:
        mem = memory[name]
        row: dict[str, Any] = {
            "peak_rss_over_loaded_mib": summary([m["delta_rss"] for m in mem], 1 / MIB),
            "peak_rss_mib": summary([m["peak_rss"] for m in mem], 1 / MIB),
            "kv_bytes_held_max_mib": summary([m["kv_bytes_held_max"] for m in mem], 1 / MIB),
            "kv_bytes_counted_mib": summary([r["actions"][name]["kv_bytes"] for r in first_reward], 1 / MIB),
            "kv_fraction_counted": summary([r["actions"][name]["kv_bytes"] / r["actions"][name]["baseline_kv_bytes"]
                                            for r in first_reward]),
            "modelled_speedup": summary([r["actions"][name]["speedup"] for r in first_reward]),
            "teacher_forced_prefix_fidelity": summary([r["actions"][name]["prefix_fidelity"] for r in first_reward]),
        }
        if name != "none":
            rows = live[name]
            scored = [r["task_score"] for r in rows if r["task_score"] is not None]
            row.update({
                "speedup": summary([r["speedup"] for r in rows]),
                "prefix_fidelity": summary([r["prefix_fidelity"] for r in rows]),
                "token_agreement": summary([r["token_agreement"] for r in rows]),
                "exact_match": summary([r["exact_match"] for r in rows]),
                "task_score_mean": sum(scored) / len(scored) if scored else None,
            })
        else:
            scored = [r["full_task_score"] for r in live[args.action_list[0]] if r["full_task_score"] is not None]
            row.update({"speedup": None, "prefix_fidelity": 1.0, "token_agreement": 1.0,
                        "task_score_mean": sum(scored) / len(scored) if scored else None})
        actions[name] = row
    return {
        "model_id": lm.model_id,
        "prompts": [{"id": p.id, "tokens": n, "answer": p.answer, "source": p.source} for p, n in zip(prompts, lengths,
                                                                                                        strict=True)],
        "memory_prompt": longest.id,
        "actions": actions,
        "live": live,
        "memory_runs": memory,
        "sweep": sweep,
        "machine_load_start": load_start,
        "machine_load_end": machine_load(args.threads or 1),
        "notes": (
            "actions[*]: speedup = paired live T_full/T_plan - 1 (PairedRun.speedup) over prompts x repeats, "
            "median/min/max; prefix_fidelity / token_agreement / exact_match of the plan's greedy answer against "
            "the full model's answer of the same paired run; task_score_mean: gold answer contained (none: the full "
            "model's). peak_rss_over_loaded: peak RSS during one generation of new_tokens tokens on memory_prompt "
            "minus the RSS before it, fresh process per run; kv_bytes_held_max: the largest KV-cache bytes the cache "
            "held between forward passes of that generation (measured on the tensors); kv_bytes_counted: the peak "
            "counted from shapes (Evaluation.kv_bytes, over the sweep's prompts; the KV heads x tokens held while "
            "the last token attends). modelled_speedup / teacher_forced_prefix_fidelity: DynPrune-v0's modelled "
            "records of the same prompts. sweep: best action per prompt under idle and low_memory per reward."
        ),
    }


def print_table(result: dict[str, Any]) -> None:
    """One line per action: memory, KV bytes, speed-up, quality."""
    def med(s: Any, fmt: str = "{:.3f}") -> str:
        if s is None:
            return "-"
        return fmt.format(s["median"] if isinstance(s, dict) else s)

    print(f"\n{'action':<10}{'peak MiB':>10}{'KV MiB':>9}{'KV share':>10}{'speed-up':>10}{'model su':>10}"
          f"{'prefix':>8}{'agree':>8}{'task':>7}")
    for name, r in result["actions"].items():
        print(f"{name:<10}{med(r['peak_rss_over_loaded_mib'], '{:.1f}'):>10}"
              f"{med(r['kv_bytes_held_max_mib'], '{:.2f}'):>9}"
              f"{med(r['kv_fraction_counted'], '{:.2f}'):>10}{med(r['speedup'], '{:+.3f}'):>10}"
              f"{med(r['modelled_speedup'], '{:+.3f}'):>10}{med(r['prefix_fidelity'], '{:.2f}'):>8}"
              f"{med(r['token_agreement'], '{:.2f}'):>8}{med(r['task_score_mean'], '{:.2f}'):>7}")
    for reward, s in result["sweep"].items():
        print(f"sweep {reward}: best action differs on {s['n_differ']}/{s['n_prompts']} prompts; "
              f"idle {s['best_idle']}; low_memory {s['best_low_memory']}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON, print the table; return the result."""
    return harness.run(harness.parse_args(Args, argv), measure, table=print_table)


if __name__ == "__main__":
    main()
