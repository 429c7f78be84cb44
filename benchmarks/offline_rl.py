"""Does offline RL on a logged sweep choose better pruning actions than a fixed action?

One loaded model, three steps:

1. **Sweep** (``offline_data.explore``, strategy ``"sweep"``): every DynPrune-v0 action is
   measured on each of ``train_prompts`` prompts (a fixed seeded subset of the train split)
   with ``timing`` (default ``"profiled"``: one teacher-forced pass per action, speed from
   the latency profile), written as one Parquet shard per prompt to ``logs_dir`` (dynprune's
   cache folder, never the repository). Reported: configurations measured per second, over
   the whole exploration (env start-up included) and per prompt once the env is up, and
   the share of that time spent on full-model baseline work (``PlanEvaluator.baseline``:
   the full model's answer, its perplexity, the prompt's features; the evaluator's own
   ``baseline_seconds`` counter), over all prompts and over the second half of them, when
   the latency-profile cells are mostly measured already. The full-model generations
   *inside* latency-profile measurements are not baseline work and are not in that share.
2. **Offline training** (``agents.offline.train_offline``): the rows become a d3rlpy
   ``MDPDataset`` of one-step episodes; each of ``algos`` (CQL, BCQ, Double DQN, behaviour
   cloning) is trained for ``steps`` gradient steps on it. Under the ``latency_budget``
   reward, ``relabel_budgets=K`` first copies every row under K budgets (the logged one and
   K-1 drawn in the logs' budget span; ``offline_data.relabel``): a sweep sees one budget per
   prompt, and the best action is a threshold rule on the budget.
3. **Held-out evaluation**, the protocol of ``dynprune test`` (``agents.evaluation``): on
   ``test_prompts`` prompts of the test split, every action is measured once per prompt
   with ``test_timing`` (default ``"live"``: a timed generation per action), and every agent
   (each offline learner, a seeded random agent, a static agent per action, the oracle =
   the best action of that prompt in hindsight) is scored on these same measurements.
   The claim compares CQL with random and with the best static action; the best static
   action is picked on the test measurements themselves, an optimistic baseline.

Run:
    python -m benchmarks.offline_rl                              # embedded SmolLM2-135M, ~10 min on 2 cores
    python -m benchmarks.offline_rl --reward latency_budget --timing live --train-prompts 80 \
        --test-prompts 60 --relabel-budgets 10 --steps 5000 \
        --out benchmarks/results/offline_rl_budget_live.json      # the latency-budget claim, ~30 min
    python -m benchmarks.offline_rl --smoke --out /tmp/orl.json  # tiny random model, seconds

Writes ``benchmarks/results/offline_rl.json`` and prints a table.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import envs  # noqa: F401 - registers DynPrune-v0
from agents.baselines import RandomAgent, StaticAgent
from agents.evaluation import PromptMeasurement, agent_records, measure_held_out
from agents.offline import ALGOS, quiet_d3rlpy, train_offline
from benchmarks import harness
from benchmarks.utils import sweep_logs_dir
from dynprune.models import PrunableLM, load_model
from dynprune.records import summarise
from dynprune.report import format_table
from dynprune.runtime import TIMINGS, PlanEvaluator
from dynprune.validation import require_one_of
from envs.run_config import RunConfig, seeded_subset
from offline_data.dataset import LEGACY_META_FILE, load_logs, read_meta, shard_path, shard_paths, to_mdp_dataset
from offline_data.explore import ExploreSummary, explore, prompt_ids_of
from offline_data.relabel import budget_span, relabel_budgets


@dataclass
class Args(harness.Args):
    """Offline RL on a logged sweep: exploration throughput, then CQL/BCQ/DDQN/BC vs static, random, oracle.

    The offline learners train on ``device``; ``seed`` seeds the prompt subsets, the sweep's
    observations, the learners, the random agent and the test resets.
    """

    reward: str = "casrap"
    """reward of the env (casrap, accuracy_efficiency, latency_budget, proxy)"""
    train_prompts: int = 80
    """prompts swept (a fixed seeded subset of the train split, the rule of dynprune train --train-prompts)"""
    test_prompts: int = 10
    """held-out prompts (a fixed seeded subset of the test split, the rule of dynprune test --test-prompts)"""
    max_new_tokens: int = 24
    """answer length limit of the full model and of live generations"""
    timing: str = "profiled"
    """timing of the sweep: profiled (teacher-forced pass + latency profile) or live"""
    test_timing: str = "live"
    """timing of the held-out measurements: live (timed generations) or profiled"""
    telemetry: str = "scenario"
    """telemetry of both envs: scenario, live or replay"""
    scenario: str | None = None
    """load scenario(s) of telemetry=scenario (none: mixed)"""
    profile_tokens: int = 12
    """tokens per latency-profile timing run (profiled timing)"""
    profile_repeats: int = 2
    """interleaved full/pruned runs per latency-profile measurement"""
    prompt_embedding: int = 0
    """N > 0: the observation also carries N projected prompt-embedding coordinates (DynPrune-v0's option)"""
    steps: int = 3000
    """offline gradient steps per algorithm"""
    relabel_budgets: int = 1
    """latency_budget reward: the learners see every swept row under this many budgets, the logged one and
    fresh draws in the logs' budget span (hindsight relabelling, offline_data.relabel); 1 = as logged"""
    algos: str = "cql,bcq,ddqn,bc"
    """offline algorithms, comma-separated (cql, bcq, ddqn, bc)"""
    workers: int = 1
    """sweep processes (each loads its own model); 1 also measures the baseline share per prompt"""
    logs_dir: str | None = None
    """sweep log folder (none: <dynprune cache>/logs/offline_rl-<model>-<reward>-<timing>-n<prompts>-tok<tokens>
    -seed<seed>, emptied before each sweep); a folder given here that already holds shards needs --reuse-logs"""
    reuse_logs: bool = False
    """keep the log folder's shards: their prompts are not measured again (the sweep timing covers the others)"""
    out: str = "benchmarks/results/offline_rl.json"

    SMOKE = {"train_prompts": 4, "test_prompts": 2, "steps": 50, "max_new_tokens": 4, "profile_tokens": 2,
             "profile_repeats": 1}
    POSITIVE = ("train_prompts", "test_prompts", "max_new_tokens", "profile_tokens", "profile_repeats", "steps",
                "workers", "relabel_budgets")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_one_of(self, "timing", TIMINGS)
        require_one_of(self, "test_timing", TIMINGS)
        if self.relabel_budgets > 1 and self.reward != "latency_budget":
            raise ValueError(f"relabel_budgets > 1 needs reward latency_budget (the budget is what is relabelled), "
                             f"got reward {self.reward!r}")
        unknown = [a for a in self.algo_list if a not in ALGOS]
        if unknown or not self.algo_list:
            raise ValueError(f"algos must name some of {sorted(ALGOS)}, got {self.algos!r}")

    @property
    def algo_list(self) -> list[str]:
        """``algos`` as a list, in the order given."""
        return [a.strip() for a in self.algos.split(",") if a.strip()]

    def run_config(self) -> RunConfig:
        """The env settings of the sweep and the held-out env, as a ``dynprune train`` run would have them."""
        return RunConfig(
            model=self.model, reward=self.reward, timing=self.timing, test_timing=self.test_timing,
            max_new_tokens=self.max_new_tokens, telemetry=self.telemetry, scenario=self.scenario,
            device=self.device, profile_tokens=self.profile_tokens, profile_repeats=self.profile_repeats,
            prompt_embedding=self.prompt_embedding, test_prompts=self.test_prompts, seed=self.seed,
        )


# ----------------------------------------------------------------------------- (1) sweep


def prepare_logs_dir(args: Args) -> Path:
    """The sweep's log folder: the default one is emptied unless --reuse-logs; a given one must be empty or reused."""
    path = Path(args.logs_dir) if args.logs_dir is not None else sweep_logs_dir(
        args.model, args.reward, args.timing, args.train_prompts, args.max_new_tokens, args.seed, args.prompt_embedding)
    shards = shard_paths(path) if path.is_dir() else []
    if shards and not args.reuse_logs:
        if args.logs_dir is not None:
            raise ValueError(
                f"{path} already holds {len(shards)} log shards; pass --reuse-logs to keep them, or another --logs-dir"
            )
        for shard in shards:  # the benchmark's own folder: a fresh sweep every run
            shard.unlink()
        (path / LEGACY_META_FILE).unlink(missing_ok=True)  # folders written before the settings moved into shards
    return path


@contextlib.contextmanager
def clock_baselines() -> Iterator[list[tuple[str, float, float]]]:
    """Record every full-model baseline computed in this process as ``(prompt id, wall-clock start, seconds)``.

    Wraps ``PlanEvaluator.baseline`` for the duration of the block and reads the evaluator's
    own counter (``baseline_seconds`` grows only on a cache miss), so the seconds are what the
    engine counts as full-model work. Spawned sweep workers (``workers > 1``) are not seen.
    """
    original = PlanEvaluator.baseline
    log: list[tuple[str, float, float]] = []

    def baseline(self: PlanEvaluator, prompt: Any) -> Any:
        start, before = time.time(), self.baseline_seconds
        result = original(self, prompt)
        if self.baseline_seconds > before:
            log.append((prompt.id, start, self.baseline_seconds - before))
        return result

    PlanEvaluator.baseline = baseline  # type: ignore[method-assign]
    try:
        yield log
    finally:
        PlanEvaluator.baseline = original  # type: ignore[method-assign]


def span(prompts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Configurations/s and baseline share over a run of consecutive prompts (``None`` for none)."""
    if not prompts:
        return None
    seconds = math.fsum(p["seconds"] for p in prompts)
    configs = sum(p["configs"] for p in prompts)
    base = math.fsum(p["baseline_s"] for p in prompts)
    return {
        "prompts": len(prompts),
        "configs": configs,
        "seconds": seconds,
        "configs_per_s": configs / seconds,
        "baseline_s": base,
        "baseline_share": base / seconds,
    }


def sweep_report(
    summary: ExploreSummary, wall_s: float, n_actions: int, baselines: list[tuple[str, float, float]], workers: int
) -> dict[str, Any]:
    """Throughput of the sweep, and its per-prompt split into baseline work and the rest.

    A prompt ends when its shard is written (the shard's modification time) and starts when
    the previous one ended; the first starts when its baseline starts (after the env is up).
    Only one worker runs its prompts back to back, so the per-prompt split needs ``workers == 1``.
    """
    done = list(summary.done)
    result: dict[str, Any] = {
        "prompts_measured": len(done),
        "prompts_reused": len(summary.skipped),
        "configs": summary.rows,
        "configs_per_prompt": n_actions,
        "wall_s": wall_s,
        "configs_per_s": summary.rows / wall_s if done else None,
        "per_prompt": None,
        "all_prompts": None,
        "first_half": None,
        "second_half": None,
    }
    if not done or workers != 1:
        return result
    end = {pid: shard_path(summary.out_dir, pid).stat().st_mtime for pid in done}
    base = {pid: (start, s) for pid, start, s in baselines}
    order = sorted(done, key=end.__getitem__)
    per_prompt = []
    previous_end = base.get(order[0], (end[order[0]], 0.0))[0]
    for pid in order:
        per_prompt.append(
            {
                "prompt_id": pid,
                "seconds": end[pid] - previous_end,
                "baseline_s": base.get(pid, (0.0, 0.0))[1],
                "configs": n_actions,
            }
        )
        previous_end = end[pid]
    half = len(per_prompt) // 2
    result.update(
        per_prompt=per_prompt,
        all_prompts=span(per_prompt),
        first_half=span(per_prompt[:half]),
        second_half=span(per_prompt[half:]),
    )
    return result


# ----------------------------------------------------------------------------- (3) held-out evaluation


def per_prompt_rows(measurements: list[PromptMeasurement]) -> list[dict[str, Any]]:
    """The JSON of each held-out prompt: what every agent acted on, every action's reward, speed-up and
    fidelity, and each agent's pick (``agents.evaluation``'s protocol measured them)."""
    return [
        {
            "prompt_id": m.prompt_id,
            "observation": list(m.observation),  # what every agent acted on (names: observation_names)
            "rewards": m.rewards,
            "speedups": [r.speedup for r in m.table],
            "fidelities": [r.token_agreement for r in m.table],
            "picks": dict(m.picks),
        }
        for m in measurements
    ]


def make_claim(table: dict[str, Any], per_prompt: list[dict[str, Any]]) -> dict[str, Any]:
    """CQL against the seeded random agent and against the best static action (picked on the test data)."""
    statics = {k: v for k, v in table.items() if k == "none" or k.startswith("static-")}
    best_static = max(statics, key=lambda k: statics[k]["mean_reward"])
    # a uniform random policy's expected reward on these very measurements (no sampling noise)
    random_expected = statistics.fmean(statistics.fmean(p["rewards"]) for p in per_prompt)
    claim: dict[str, Any] = {
        "cql_beats_random": None,
        "cql_beats_best_static": None,
        "cql_beats_random_expected": None,
        "best_static": best_static,
        "best_static_reward": statics[best_static]["mean_reward"],
        "random_reward": table["random"]["mean_reward"],
        "random_expected_reward": random_expected,
        "oracle_reward": table["oracle"]["mean_reward"],
        "cql_reward": None,
        "cql_vs_best_static_per_prompt": None,
    }
    cql = table.get("offline-cql")
    if cql is None:
        return claim
    # paired: both picks were measured on the same prompt, so compare prompt by prompt
    static_action = per_prompt[0]["picks"][best_static]
    diffs = [p["rewards"][p["picks"]["offline-cql"]] - p["rewards"][static_action] for p in per_prompt]
    # 95 % percentile bootstrap over prompts of the paired mean difference (seeded: the same JSON gives the same CI)
    rng = np.random.default_rng(0)
    boot = rng.choice(np.asarray(diffs), size=(10_000, len(diffs)), replace=True).mean(axis=1)
    claim.update(
        cql_beats_random=cql["mean_reward"] > table["random"]["mean_reward"],
        cql_beats_best_static=cql["mean_reward"] > statics[best_static]["mean_reward"],
        cql_beats_random_expected=cql["mean_reward"] > random_expected,
        cql_reward=cql["mean_reward"],
        cql_vs_best_static_per_prompt={
            "wins": sum(d > 0 for d in diffs),
            "ties": sum(d == 0 for d in diffs),
            "losses": sum(d < 0 for d in diffs),
            "mean_diff": statistics.fmean(diffs),
            "mean_diff_ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        },
    )
    return claim


# ----------------------------------------------------------------------------- main


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """Sweep, train every learner on the sweep, score every agent on the same held-out measurements.

    ``lm`` is the model of the sweep and the test env with one worker; ``None`` with more (each
    worker loads its own, and the test env's model is loaded after the sweep).
    """
    quiet_d3rlpy()
    cfg = args.run_config()

    # 1. sweep: every action on every train prompt, one shard per prompt
    train_kwargs = cfg.env_kwargs("train")
    if lm is not None:
        train_kwargs["model"] = lm
    else:
        train_kwargs["dtype"] = args.dtype  # each worker loads the model from the spec
    prompt_ids = seeded_subset(prompt_ids_of(train_kwargs), args.train_prompts, args.seed)
    logs_dir = prepare_logs_dir(args)
    print(f"(1) sweep: {len(prompt_ids)} train prompts, timing={args.timing} -> {logs_dir}", flush=True)
    with clock_baselines() as baselines:
        t0 = time.perf_counter()
        explored = explore(train_kwargs, "sweep", logs_dir, prompt_ids=prompt_ids, seed=args.seed,
                           workers=args.workers, progress=True)
        sweep_wall = time.perf_counter() - t0
    meta = read_meta(logs_dir)
    n_actions = int(meta["n_actions"])
    sweep = sweep_report(explored, sweep_wall, n_actions, baselines, args.workers)

    # 2. offline learners on the sweep's rows (this run's prompts only)
    ds = load_logs(logs_dir)
    wanted = set(prompt_ids)
    ds = ds.select([i for i, pid in enumerate(ds["prompt_id"]) if pid in wanted])
    logged_rows = len(ds)
    span = budget_span(ds, meta["observation_names"]) if args.reward == "latency_budget" else None
    if args.relabel_budgets > 1:
        ds = relabel_budgets(ds, meta["observation_names"], args.relabel_budgets, budget_range=span, seed=args.seed)
    mdp = to_mdp_dataset(ds, n_actions=n_actions)
    if lm is None:
        lm = load_model(args.model, device=args.device, dtype=args.dtype)
    d3_device = f"cuda:{lm.device.index or 0}" if lm.device.type == "cuda" else "cpu:0"
    offline: dict[str, Any] = {}
    training: dict[str, Any] = {}
    for algo in args.algo_list:
        print(f"(2) {algo}: {args.steps} steps on {int(mdp.transition_count)} transitions ...", flush=True)
        t0 = time.perf_counter()
        agent = train_offline(mdp, algo, n_steps=args.steps, seed=args.seed, device=d3_device)
        offline[agent.name] = agent
        last = agent.train_metrics[-1][1] if agent.train_metrics else {}
        training[algo] = {
            "agent": agent.name,
            "seconds": time.perf_counter() - t0,
            "final_metrics": {k: float(v) for k, v in last.items() if not k.startswith("time_")},
        }

    # 3. held-out prompts: every action measured once, every agent scored on the same records
    test_env = cfg.make_env("test", lm=lm)
    core = test_env.unwrapped
    agents: dict[str, Any] = {**offline, "random": RandomAgent(n_actions, seed=args.seed)}
    for a, name in enumerate(core.action_names):
        agents["none" if a == 0 else f"static-{name}"] = StaticAgent(a, n_actions)
    print(f"(3) held-out: {len(core.prompts)} test prompts x {n_actions} actions, timing={args.test_timing} ...",
          flush=True)
    t0 = time.perf_counter()
    n = len(core.prompts)
    measurements = measure_held_out(
        test_env, agents, args.seed,
        on_prompt=lambda m, s: print(f"  test prompt {m.index + 1}/{n} ({m.prompt_id}): {s:.1f} s", flush=True))
    records, per_prompt = agent_records(measurements), per_prompt_rows(measurements)
    test_s = time.perf_counter() - t0
    test_env.close()
    table = summarise(records, by="agent")
    claim = make_claim(table, per_prompt)

    return {
        "model": {"spec": args.model, "model_id": lm.model_id, "num_layers": lm.geometry.num_layers},
        "logs_dir": str(logs_dir),
        "action_names": list(core.action_names),
        "sweep": sweep,
        "observation_names": list(meta["observation_names"]),
        "dataset": {"logged_rows": logged_rows, "rows": len(ds), "relabel_budgets": args.relabel_budgets,
                    "logged_budget_span": span,
                    "transitions": int(mdp.transition_count), "n_actions": n_actions},
        "training": training,
        "test": {"prompts": len(per_prompt), "timing": args.test_timing, "seconds": test_s},
        "agents": [{"agent": name, **row} for name, row in table.items()],
        "test_prompts": per_prompt,
        "claim": claim,
        "notes": (
            "sweep.configs_per_s: configurations over the wall time of explore() (env start-up included); "
            "sweep.all_prompts / first_half / second_half: per-prompt time from one shard's write to the next "
            "(the first from its baseline's start), baseline_s = PlanEvaluator.baseline_seconds (full answer, "
            "its perplexity, prompt features; not the full-model runs inside latency-profile measurements); "
            "null with workers > 1. agents: every action measured once per test prompt and every agent scored "
            "on those records (agents.evaluation's protocol); std is the population std over prompts; "
            "oracle = best action per prompt in hindsight; best_static is picked on the test records "
            "(optimistic); random_expected_reward = mean over prompts of the mean reward of all actions."
        ),
    }


def print_table(result: dict[str, Any]) -> None:
    """Sweep throughput, training times, the held-out table and the claim."""
    s = result["sweep"]
    rate = "-" if s["configs_per_s"] is None else f"{s['configs_per_s']:.2f}"
    print(f"\nsweep: {s['prompts_measured']} prompts x {s['configs_per_prompt']} configs in {s['wall_s']:.1f} s "
          f"= {rate} configs/s (env start-up included); {s['prompts_reused']} prompts reused")
    for key in ("all_prompts", "first_half", "second_half"):
        part = s[key]
        if part is not None:
            print(f"  {key:<12} {part['prompts']:>4} prompts  {part['configs_per_s']:>7.2f} configs/s  "
                  f"baseline share {100 * part['baseline_share']:5.1f} %")
    for algo, t in result["training"].items():
        print(f"trained {algo}: {t['seconds']:.1f} s")
    table = {row["agent"]: row for row in result["agents"]}
    print(f"\nheld-out: {result['test']['prompts']} prompts, timing={result['test']['timing']}, "
          f"{result['test']['seconds']:.1f} s\n")
    print(format_table(table))
    c = result["claim"]
    print(f"\nclaim: cql beats random: {c['cql_beats_random']}; cql beats best static ({c['best_static']}): "
          f"{c['cql_beats_best_static']}; cql beats random (expected): {c['cql_beats_random_expected']}")
    paired = c.get("cql_vs_best_static_per_prompt")
    if paired:
        lo, hi = paired.get("mean_diff_ci95", (float("nan"), float("nan")))
        print(f"cql - best static per prompt: {paired['mean_diff']:+.3f} (95 % bootstrap CI {lo:+.3f} .. {hi:+.3f}); "
              f"wins/ties/losses {paired['wins']}/{paired['ties']}/{paired['losses']}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON and print the table; return the result."""
    args = harness.parse_args(Args, argv)
    # one worker: one model for the sweep and the test env; more: each worker loads its own
    return harness.run(args, measure, model=args.workers == 1, table=print_table)


if __name__ == "__main__":
    main()
