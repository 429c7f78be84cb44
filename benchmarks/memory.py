"""How much memory does each plan take, and how much does training each agent take?

Two measurements, each in a **fresh process** per run:

1. **Per plan**: the process loads the model (importance from the cache that the parent
   filled first), warms it up, reads its resident set (``rss_loaded``), resets the kernel's
   peak-RSS mark, then runs the plan's work as a live env step does (``lm.apply(plan)``,
   a greedy generation of exactly ``max_new_tokens`` tokens and a teacher-forced scoring
   pass over prompt + answer) and reads the peak again (``peak_rss``). On a GPU the same
   with ``torch.cuda.reset_peak_memory_stats`` / ``max_memory_allocated`` (peak VRAM).
2. **Training**: the Double DQN (``agents.dqn.make_dqn``) learning on ``DynPrune-v0``
   (profiled timing, the training default) for ``dqn_steps`` steps, and each d3rlpy learner
   (``agents.offline.train_offline``) for ``offline_steps`` gradient steps on a sweep logged
   by the parent (``offline_data.explore``, strategy sweep). The DQN's process holds the
   LLM (its env runs it); the d3rlpy processes hold only the logged data and the learner.
   Reported: RSS before training, the peak during it and the difference.

Why fresh processes and the kernel's peak mark: ``ru_maxrss`` / ``VmHWM`` is the peak over
a process's life, so in one long process the model load (which briefly holds the weights
twice) and every earlier plan's cached slices would hide the plan measured now. A new
process per run starts from the same state, and on Linux writing ``5`` to
``/proc/self/clear_refs`` resets ``VmHWM`` to the current RSS, so the peak read after the
plan covers the plan alone, exactly (no sampling). Where that file is not writable the
script samples RSS with psutil every millisecond in a thread (it can miss sub-millisecond
peaks) and says so in ``method``. Runs of the plans are interleaved across repeats (plan
order rotated); every figure is the median and min-max over repeats.

Run:
    python -m benchmarks.memory                           # embedded SmolLM2-135M, 4 plans, ~5-10 min on 2 cores
    python -m benchmarks.memory --actions all             # every entry of the action table
    python -m benchmarks.memory --device cuda             # peak VRAM too
    python -m benchmarks.memory --smoke --out /tmp/mem.json

Writes ``benchmarks/results/memory.json`` and ``memory.png`` beside it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.utils import TIMED_PROMPT, peak_during, rotated, run_in_child, summary
from dynprune.models import PrunableLM

MIB = float(1 << 20)
OFFLINE_ALGOS = ("cql", "bcq", "ddqn", "bc")


@dataclass
class Args(harness.Args):
    """Memory: peak RSS (and peak VRAM on a GPU) per plan and for training each agent, one fresh process per run.

    ``device`` cuda measures peak VRAM as well; ``threads`` applies in each child process;
    ``seed`` seeds the agents and the sweep.
    """

    actions: str = "none,heads-15%,layers-25%,ffn-25%"
    """action-table entries measured, comma-separated names, or all (the whole default table)"""
    repeats: int = 2
    """fresh-process runs per plan (plans interleaved, order rotated)"""
    max_new_tokens: int = 32
    """tokens generated in each plan's run (exactly this many)"""
    prompt: str = TIMED_PROMPT
    """prompt of the plans' runs"""
    dqn_steps: int = 48
    """env steps of the Double DQN training run"""
    dqn_prompts: int = 8
    """train prompts the DQN's env draws from (fewer: fewer full-model baselines to compute)"""
    offline_algos: str = "cql"
    """d3rlpy learners measured, comma-separated (cql, bcq, ddqn, bc)"""
    offline_steps: int = 500
    """gradient steps of each d3rlpy learner"""
    sweep_prompts: int = 4
    """train prompts swept (every action) to give the d3rlpy learners their data"""
    train_repeats: int = 2
    """fresh-process runs per training measurement"""
    training: bool = True
    """measure the training runs (--no-training: the plans only)"""
    out: str = "benchmarks/results/memory.json"
    """JSON file to write; the plot goes beside it as <stem>.png"""

    SMOKE = {"repeats": 1, "train_repeats": 1, "max_new_tokens": 4, "dqn_steps": 8, "dqn_prompts": 2,
             "offline_algos": "bc", "offline_steps": 20, "sweep_prompts": 2}
    POSITIVE = ("repeats", "max_new_tokens", "dqn_steps", "dqn_prompts", "offline_steps", "sweep_prompts",
                "train_repeats")

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [a for a in self.algo_list if a not in OFFLINE_ALGOS]
        if unknown:
            raise ValueError(f"offline_algos must name some of {OFFLINE_ALGOS}, got {self.offline_algos!r}")
        _ = self.action_list  # names checked now, not after the model is loaded

    @property
    def action_list(self) -> list[str]:
        """``actions`` as action-table names (all of them for ``all``); ``ValueError`` for an unknown name."""
        from dynprune.actions import DEFAULT_TABLE

        names = [e.name for e in DEFAULT_TABLE]
        actions = names if self.actions == "all" else [a.strip() for a in self.actions.split(",") if a.strip()]
        if not actions or any(a not in names for a in actions):
            raise ValueError(f"actions must be 'all' or names of {names}, got {self.actions!r}")
        return actions

    @property
    def algo_list(self) -> list[str]:
        """``offline_algos`` as a list."""
        return [a.strip() for a in self.offline_algos.split(",") if a.strip()]


# ----------------------------------------------------------------------------- child processes


def child_plan(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: load the model, then the peak memory of one plan's live-step work."""
    from dynprune.actions import DEFAULT_TABLE, entry_plan
    from dynprune.metrics import fix_threads
    from dynprune.models import load_model

    fix_threads(spec["threads"])
    lm = load_model(spec["model"], device=spec["device"], dtype=spec["dtype"], calibrate=True)
    entry = next(e for e in DEFAULT_TABLE if e.name == spec["action"])
    plan = entry_plan(entry, lm)
    ids = lm.encode_prompt(spec["prompt"], max_new_tokens=spec["max_new_tokens"])
    lm.warmup()

    def work() -> None:
        with lm.apply(plan):
            gen = lm.generate(ids, spec["max_new_tokens"], ignore_eos=True)
            lm.score(ids, list(gen.output_ids))

    result = peak_during(work, lm.device)
    result["rss_loaded"] = result["rss_before"]
    result["device"] = str(lm.device)
    return result


def child_dqn(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: build DynPrune-v0 (the LLM loaded), then the peak memory of Double DQN training."""
    import gymnasium as gym

    import envs  # noqa: F401  (registers DynPrune-v0)
    from agents.dqn import make_dqn
    from dynprune.metrics import fix_threads
    from dynprune.tasks import load_prompts

    fix_threads(spec["threads"])
    prompts = load_prompts("dynprune", split="train")[: spec["dqn_prompts"]]
    env = gym.make("DynPrune-v0", model=spec["model"], device=spec["device"], dtype=spec["dtype"], prompts=prompts,
                   split=None,
                   timing="profiled", telemetry="scenario", max_new_tokens=spec["max_new_tokens"])
    env.reset(seed=spec["seed"])
    steps = spec["dqn_steps"]
    model = make_dqn(env, seed=spec["seed"], learning_starts=min(16, steps // 2), batch_size=16)
    result = peak_during(lambda: model.learn(steps), spec["device"] if spec["device"].startswith("cuda") else None)
    result["env_steps"] = steps
    return result


def child_offline(spec: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: load the logged sweep, then the peak memory of one d3rlpy learner's training."""
    from agents.offline import quiet_d3rlpy, train_offline
    from dynprune.metrics import fix_threads
    from offline_data.dataset import load_logs, to_mdp_dataset

    fix_threads(spec["threads"])
    quiet_d3rlpy()
    data = to_mdp_dataset(load_logs(spec["logs"]), spec["n_actions"])
    cuda = spec["device"].startswith("cuda")
    device = (spec["device"] if ":" in spec["device"] else "cuda:0") if cuda else "cpu:0"  # d3rlpy's spelling
    result = peak_during(lambda: train_offline(data, spec["algo"], n_steps=spec["offline_steps"], seed=spec["seed"],
                                               device=device), device if cuda else None)
    result["gradient_steps"] = spec["offline_steps"]
    return result


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "plan": child_plan, "dqn": child_dqn, "offline": child_offline,
}


def run_child(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``CHILDREN[kind](spec)`` in a new Python process."""
    return run_in_child(f"benchmarks.memory:{CHILDREN[kind].__name__}", spec,
                        f"memory child {kind} {spec.get('action') or spec.get('algo') or ''}")


# ----------------------------------------------------------------------------- main


def mib_summary(runs: list[dict[str, Any]], key: str) -> dict[str, float | int] | None:
    """Median/min/max in MiB of ``key`` over the runs (None when the runs lack it)."""
    values = [r[key] for r in runs if r.get(key) is not None]
    return summary(values, 1 / MIB) if values else None


def plot(result: dict[str, Any], path: Path) -> Path:
    """Bars: peak RSS per plan and per training run (median, min-max), beside the RSS before the work."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [(name, r) for name, r in result["plans"].items()]
    rows += [(f"train {name}", r) for name, r in result["training"].items()]
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    x = list(range(len(rows)))
    med = [r["peak_rss_mib"]["median"] for _, r in rows]
    err = [[m - r["peak_rss_mib"]["min"] for m, (_, r) in zip(med, rows, strict=True)],
           [r["peak_rss_mib"]["max"] - m for m, (_, r) in zip(med, rows, strict=True)]]
    ax.bar(x, med, yerr=err, capsize=3, color="tab:blue", label="peak RSS during the work")
    ax.bar(x, [r["rss_before_mib"]["median"] for _, r in rows], color="tab:gray", alpha=0.6,
           label="RSS before the work")
    ax.set_xticks(x, [n for n, _ in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("MiB")
    ax.legend(fontsize=8)
    m = result["machine"]
    ax.set_title(f"memory: {result['model_id_spec']}, {m['device_name']}, {m['date'][:10]}", fontsize=9)
    fig.savefig(path, format="png", dpi=110)
    return path


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """MiB summaries of one measurement's runs."""
    out: dict[str, Any] = {
        "rss_before_mib": mib_summary(runs, "rss_before"),
        "peak_rss_mib": mib_summary(runs, "peak_rss"),
        "delta_rss_mib": mib_summary(runs, "delta_rss"),
        "process_peak_before_mib": mib_summary(runs, "process_peak_before"),
        "seconds": summary([r["seconds"] for r in runs]),
        "method": sorted({r["method"] for r in runs}),
        "runs": len(runs),
    }
    for key in ("peak_vram_allocated", "peak_vram_reserved", "vram_before"):
        if any(r.get(key) is not None for r in runs):
            out[f"{key}_mib"] = mib_summary(runs, key)
    return out


def measure_training(args: Args, base: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Fresh-process training runs: the Double DQN on the env, each d3rlpy learner on a sweep logged here."""
    from dynprune.actions import DEFAULT_TABLE
    from offline_data.explore import explore, prompt_ids_of

    device = base["device"]
    training_runs: dict[str, list[dict[str, Any]]] = {"ddqn (online, LLM in process)": []}
    for algo in args.algo_list:
        training_runs[f"d3rlpy {algo} (offline)"] = []
    with tempfile.TemporaryDirectory() as tmp:
        env_kwargs = {"model": args.model, "device": device, "prompts": "dynprune", "split": "train",
                      "timing": "profiled", "telemetry": "scenario", "max_new_tokens": args.max_new_tokens}
        ids = prompt_ids_of(env_kwargs)[: args.sweep_prompts]
        print(f"sweep of {len(ids)} prompts for the offline learners ...", flush=True)
        explore(env_kwargs, "sweep", Path(tmp) / "logs", prompt_ids=ids, seed=args.seed)
        for r in range(args.train_repeats):
            training_runs["ddqn (online, LLM in process)"].append(
                run_child("dqn", {**base, "dqn_steps": args.dqn_steps, "dqn_prompts": args.dqn_prompts}))
            for algo in args.algo_list:
                training_runs[f"d3rlpy {algo} (offline)"].append(run_child("offline", {
                    **base, "algo": algo, "offline_steps": args.offline_steps, "logs": str(Path(tmp) / "logs"),
                    "n_actions": len(DEFAULT_TABLE)}))
            print(f"  training repeat {r + 1}/{args.train_repeats}: "
                  + ", ".join(f"{k} {v[-1]['peak_rss'] / MIB:.0f}" for k, v in training_runs.items()) + " MiB",
                  flush=True)
    return training_runs


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """Every plan's runs, then every training run, each in a fresh process; their MiB summaries."""
    import torch

    from dynprune.models import load_model

    actions = args.action_list
    # Fill the importance cache once here, so no child calibrates (its memory would join the plan's).
    loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    loaded.calibrate()
    device, model_id = str(loaded.device), loaded.model_id
    del loaded
    base = {"model": args.model, "device": device, "dtype": args.dtype, "threads": args.threads, "seed": args.seed,
            "max_new_tokens": args.max_new_tokens}

    plan_runs: dict[str, list[dict[str, Any]]] = {a: [] for a in actions}
    for r in range(args.repeats):
        for action in rotated(actions, r):  # each plan runs early and late equally often
            plan_runs[action].append(run_child("plan", {**base, "action": action, "prompt": args.prompt}))
        print(f"  plans repeat {r + 1}/{args.repeats}: "
              + ", ".join(f"{a} {plan_runs[a][-1]['peak_rss'] / MIB:.0f}" for a in actions) + " MiB", flush=True)
    plans = {a: aggregate(runs) for a, runs in plan_runs.items()}
    if "none" in plans:
        none_peaks = [r["peak_rss"] for r in plan_runs["none"]]
        none_med = summary(none_peaks)["median"]
        for a in actions:
            plans[a]["peak_over_none_mib"] = summary([r["peak_rss"] - none_med for r in plan_runs[a]], 1 / MIB)

    training_runs: dict[str, list[dict[str, Any]]] = {}
    if args.training:
        training_runs = measure_training(args, base)
    training = {name: aggregate(runs) for name, runs in training_runs.items()}
    cuda = device.startswith("cuda")
    return {
        "model_id_spec": args.model,
        "model_id": model_id,
        "torch_threads_parent": torch.get_num_threads(),
        "cuda_measured": cuda,
        "plans": plans,
        "training": training,
        "notes": (
            "One fresh process per run. plans: RSS after loading the model and a warm-up (rss_before), peak RSS "
            "during apply(plan) + generating max_new_tokens + one scoring pass (peak_rss), in MiB, median/min/max "
            "over repeats; peak_over_none: peak minus the median peak of the full model. process_peak_before: the "
            "process's peak before the work (the model load). training: ddqn = make_dqn(...).learn(dqn_steps) on "
            "DynPrune-v0 (profiled, the LLM in the process); d3rlpy = train_offline(offline_steps) on a logged "
            "sweep (no LLM in the process). "
            + ("Peak VRAM from torch.cuda.max_memory_allocated/reserved." if cuda
               else "Measured on CPU; nothing CUDA was measured in this run (no peak VRAM).")
        ),
    }


def print_table(result: dict[str, Any]) -> None:
    """Peak RSS per plan and per training run, MiB."""
    def fmt(s: dict[str, float] | None) -> str:
        return "-" if s is None else f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f})"

    print(f"\n{'':<32}{'RSS before':>18}{'peak RSS':>18}{'peak - before':>18}")
    for name, r in [*result["plans"].items(), *result["training"].items()]:
        print(f"{name:<32}{fmt(r['rss_before_mib']):>18}{fmt(r['peak_rss_mib']):>18}{fmt(r['delta_rss_mib']):>18}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON and the plot, print the table; return the result."""
    return harness.run(harness.parse_args(Args, argv), measure, model=False, table=print_table,
                       files={".png": plot})


if __name__ == "__main__":
    main()
