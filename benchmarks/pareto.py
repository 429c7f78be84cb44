"""Quality against measured speed-up: every controller and every static baseline on one chart.

All points come from one run on the same held-out prompts (the test split, which no agent
trains on), measured live: the full model is timed again right before each prompt's plans,
and each plan's speed-up is ``T_full / T_plan - 1`` for the same number of generated tokens
(``dynprune.runtime``'s equal-work rule). Quality is fidelity to the full model (position-wise
token agreement of the greedy answers); perplexity change and the gold-answer task score are
reported beside it.

Points:

- **static layer removal** of k layers, chosen (a) from the last layers backwards or (b) by
  lowest block influence (ShortGPT), each skipped or replaced by its distilled adapter;
- **static heads / FFN slicing**: the DynPrune-v0 table's heads-x % and ffn-x % entries;
- **random**, **Double DQN** (trained online here, profiled timing, ``ddqn_episodes`` one-prompt
  episodes on ``train_prompts`` train prompts), every **d3rlpy learner** (trained offline here on a
  sweep of the same train prompts): all act on the DynPrune-v0 action table;
- **oracle**: per prompt, the table action of highest reward in hindsight (the env's reward);
- points written by other committed benchmarks (``overlays``: the router and the static
  compression results), drawn with their own markers and labelled with their source file:
  they were measured in other runs, each against its own full-model baseline.

Controller cost counts: each agent's ``act`` is timed per prompt and added to the pruned
latency, ``speedup_with_cost = 1 / (1 / (1 + s) + t_act / T_full) - 1``.

The claim the README states plainly: does any learned agent beat the best static baseline at
equal speed-up (the static frontier's quality interpolated at the agent's speed-up), and how
far is each from the oracle?

Run:
    python -m benchmarks.pareto                               # embedded SmolLM2-135M, ~15-25 min on 2 cores
    python -m benchmarks.pareto --smoke --out /tmp/pareto.json  # tiny random model, under a minute

Writes ``benchmarks/results/pareto.json``, ``pareto.png`` and ``pareto.md`` beside it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import envs  # noqa: F401 - registers DynPrune-v0
from agents.baselines import RandomAgent
from agents.dqn import SB3Agent, make_dqn
from agents.evaluation import hull as mixture_hull
from agents.evaluation import hull_quality, measure_held_out
from agents.offline import ALGOS, quiet_d3rlpy, train_offline
from benchmarks import harness
from benchmarks.utils import adapters_file
from dynprune.adapter_files import load_adapters, save_adapters
from dynprune.adapter_training import AdapterConfig, train_adapters
from dynprune.adapters import attach_adapters
from dynprune.models import PrunableLM, cache_dir
from dynprune.selection import layers_plan
from envs.run_config import RunConfig, seeded_subset
from offline_data.dataset import load_logs, read_meta, to_mdp_dataset
from offline_data.explore import explore, prompt_ids_of

ORDERS = ("last", "influence")
MODES = ("skip", "adapters")
SMOKE_ADAPTERS = AdapterConfig(epochs=2, n_prompts=8, seq_len=32)
"""The distillation settings of ``benchmarks/adapters.py --smoke`` (its cache file is reused when present)."""


@dataclass
class Args(harness.Args):
    """Pareto chart: quality vs measured speed-up of static baselines, learned agents and the oracle.

    Timing on CUDA devices uses CUDA events; ``seed`` seeds the prompt subsets, the agents and the resets.
    """

    reward: str = "casrap"
    """env reward the agents train on and the oracle maximises"""
    test_prompts: int = 20
    """held-out prompts (a fixed seeded subset of the test split)"""
    train_prompts: int = 80
    """train prompts for the Double DQN and the offline sweep (a fixed seeded subset of the train split)"""
    max_new_tokens: int = 24
    """answer length limit"""
    ks: str = "1,3,5,7,9"
    """layers removed by the static layer-removal curves, comma-separated"""
    adapters: str | None = None
    """adapters file for the adapter curves (none: the file benchmarks/adapters.py writes to the cache,
    trained here with its defaults when missing)"""
    ddqn_episodes: int = 300
    """Double DQN training episodes (profiled timing)"""
    offline_steps: int = 3000
    """gradient steps per d3rlpy learner"""
    algos: str = "cql,bcq,ddqn,bc"
    """d3rlpy learners, comma-separated (empty: none)"""
    overlays: str = "benchmarks/results/router.json,benchmarks/results/compress.json"
    """JSON files of other benchmarks whose "pareto_points" are drawn on the chart (missing files are skipped)"""
    reanalyse: bool = False
    """no measurement: recompute frontier, hull and verdict of the existing --out JSON, redraw PNG and table"""
    out: str = "benchmarks/results/pareto.json"
    """JSON file to write (the PNG and markdown table go beside it)"""

    SMOKE = {"test_prompts": 2, "train_prompts": 3, "max_new_tokens": 3, "ks": "1,2", "ddqn_episodes": 10,
             "offline_steps": 20, "algos": "cql"}
    POSITIVE = ("test_prompts", "train_prompts", "max_new_tokens", "ddqn_episodes", "offline_steps")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.k_list or any(k < 1 for k in self.k_list):
            raise ValueError(f"ks must be positive layer counts, got {self.ks!r}")
        unknown = [a for a in self.algo_list if a not in ALGOS]
        if unknown:
            raise ValueError(f"algos must name some of {sorted(ALGOS)}, got {self.algos!r}")

    @property
    def k_list(self) -> list[int]:
        """``ks`` as sorted unique ints."""
        try:
            return sorted({int(k) for k in self.ks.split(",") if k.strip()})
        except ValueError as e:
            raise ValueError(f"ks must be comma-separated integers, got {self.ks!r}") from e

    @property
    def algo_list(self) -> list[str]:
        """``algos`` as a list."""
        return [a.strip() for a in self.algos.split(",") if a.strip()]

    def run_config(self) -> RunConfig:
        """The env settings: profiled training, live held-out measurements, mixed load, seeded prompt subsets."""
        return RunConfig(
            model=self.model, reward=self.reward, timing="profiled", test_timing="live",
            max_new_tokens=self.max_new_tokens, telemetry="scenario", scenario="mixed", device=self.device,
            profile_tokens=2 if self.smoke else 12, profile_repeats=1 if self.smoke else 2,
            train_prompts=self.train_prompts, test_prompts=self.test_prompts, seed=self.seed,
        )


# ----------------------------------------------------------------------------- agents


def adapters_path(lm: PrunableLM, args: Args) -> Path:
    """The adapters to use: ``--adapters``, else benchmarks/adapters.py's cache file (trained here if missing)."""
    if args.adapters is not None:
        path = Path(args.adapters)
        if not path.is_file():
            raise ValueError(f"--adapters {path} is not a file")
        return path
    config = SMOKE_ADAPTERS if args.smoke else AdapterConfig()  # benchmarks/adapters.py's settings
    path = adapters_file(lm.model_id, config)
    if not path.is_file():
        print(f"    no adapters at {path}: training them (benchmarks/adapters.py's settings) ...", flush=True)
        report = train_adapters(lm, config=config)
        save_adapters(report.adapters, path, lm.model_id, config.bottleneck)
    return path


def train_ddqn(lm: Any, cfg: RunConfig, args: Args) -> SB3Agent:
    """Double DQN trained online on the train prompts (profiled timing, the env's reward)."""
    env = cfg.make_env("train", lm=lm)
    model = make_dqn(env, double=True, seed=args.seed, learning_starts=min(64, max(8, args.ddqn_episodes // 10)),
                     target_update_interval=max(10, args.ddqn_episodes // 20))
    model.learn(args.ddqn_episodes)
    env.close()
    return SB3Agent(model, name="double-dqn")


def train_offline_agents(lm: Any, cfg: RunConfig, args: Args) -> tuple[dict[str, Any], dict[str, Any]]:
    """A profiled sweep of the train prompts (resumable, in the cache), then each d3rlpy learner on it."""
    if not args.algo_list:
        return {}, {}
    kwargs = {**cfg.env_kwargs("train"), "model": lm}
    ids = seeded_subset(prompt_ids_of(kwargs), args.train_prompts, args.seed)
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", args.model)
    name = f"pareto-{slug}-{args.reward}-n{args.train_prompts}-tok{args.max_new_tokens}-seed{args.seed}"
    logs = cache_dir() / "logs" / name
    t0 = time.perf_counter()
    explore(kwargs, "sweep", logs, prompt_ids=ids, seed=args.seed, progress=False)
    sweep_s = time.perf_counter() - t0
    ds = load_logs(logs)
    wanted = set(ids)
    ds = ds.select([i for i, pid in enumerate(ds["prompt_id"]) if pid in wanted])
    mdp = to_mdp_dataset(ds, n_actions=int(read_meta(logs)["n_actions"]))
    device = f"cuda:{lm.device.index or 0}" if lm.device.type == "cuda" else "cpu:0"
    agents = {}
    for algo in args.algo_list:
        agent = train_offline(mdp, algo, n_steps=args.offline_steps, seed=args.seed, device=device)
        agents[agent.name] = agent
    return agents, {"logs": str(logs), "rows": len(ds), "sweep_s": sweep_s}


# ----------------------------------------------------------------------------- measurement


def with_cost(speedup: float, act_s: float, full_s: float) -> float:
    """Speed-up once the controller's decision time is added to the pruned latency (same full latency)."""
    return 1.0 / (1.0 / (1.0 + speedup) + act_s / full_s) - 1.0


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "median": statistics.median(values), "min": min(values),
            "max": max(values)}


def point(name: str, family: str, records: list[dict[str, Any]], costs: list[float] | None = None,
          full: list[float] | None = None) -> dict[str, Any]:
    """Summary of one controller's or plan's records over the prompts (speed-up with controller cost)."""
    speed = [r["speedup"] for r in records]
    if costs is not None and full is not None:
        speed = [with_cost(s, c, f) for s, c, f in zip(speed, costs, full, strict=True)]
    tasks = [r["task_score"] for r in records if r["task_score"] is not None]
    return {
        "name": name,
        "family": family,
        "n": len(records),
        "speedup": _spread(speed),
        "fidelity": _spread([r["token_agreement"] for r in records]),
        "ppl_change": _spread([r["ppl_change"] for r in records]),
        "task_score": statistics.fmean(tasks) if tasks else None,
        "reward": statistics.fmean(r["reward"] for r in records),
        "kept_fraction": statistics.fmean(r["kept_fraction"] for r in records),
        "controller_ms": None if costs is None else statistics.median(costs) * 1e3,
    }


def frontier(points: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Upper-left envelope (speed-up, fidelity) of static points: for each speed-up, the best quality reached
    by a static point at least that fast, as a non-increasing step function's corners."""
    pts = sorted(((p["speedup"]["mean"], p["fidelity"]["mean"]) for p in points), key=lambda t: -t[0])
    out, best = [], -math.inf
    for s, q in pts:  # from fastest to slowest, keep a point when it improves quality
        if q > best:
            out.append((s, q))
            best = q
    return sorted(out)


def frontier_quality(front: list[tuple[float, float]], speedup: float) -> float | None:
    """Best static quality at a speed-up of at least ``speedup``; None when no static point is that fast."""
    ok = [q for s, q in front if s >= speedup]
    return max(ok) if ok else None


def hull(points: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Upper concave envelope of the static points' (mean speed-up, mean fidelity) (``agents.evaluation.hull``):
    what any per-prompt mixture of static plans achieves."""
    return mixture_hull([(p["speedup"]["mean"], p["fidelity"]["mean"]) for p in points])


def load_overlays(paths: str) -> list[dict[str, Any]]:
    """``pareto_points`` of other benchmarks' JSON files (each point: name, family, speedup, fidelity)."""
    out = []
    for raw in [p.strip() for p in paths.split(",") if p.strip()]:
        path = Path(raw)
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        for p in data.get("pareto_points", []):
            missing = {"name", "family", "speedup", "fidelity"} - set(p)
            if missing:
                raise ValueError(f"{path}: a pareto point lacks {sorted(missing)}: {p}")
            out.append({**p, "source": str(path)})
    return out


# ----------------------------------------------------------------------------- output

def _center(value: float | dict[str, float]) -> float:
    """A point's coordinate: the number, or its mean (this script) or median (other scripts' overlays)."""
    if isinstance(value, dict):
        return value["mean"] if "mean" in value else value["median"]
    return float(value)


FAMILY_STYLE = {
    "none": ("k", "o"), "static-layers": ("tab:blue", "o"), "static-heads": ("tab:cyan", "s"),
    "static-ffn": ("tab:olive", "s"), "random": ("tab:gray", "x"), "online-rl": ("tab:red", "D"),
    "offline-rl": ("tab:orange", "D"), "oracle": ("gold", "*"), "router": ("tab:purple", "P"),
    "compression": ("tab:brown", "^"),
}


def plot(result: dict[str, Any], path: Path) -> Path:
    """Scatter of fidelity against speed-up; static layer curves as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 6))
    for curve in result["curves"]:
        xs = [0.0] + [p["speedup"]["mean"] * 100 for p in curve["points"]]
        ys = [1.0] + [p["fidelity"]["mean"] for p in curve["points"]]
        ax.plot(xs, ys, "-o", ms=3, lw=1, alpha=0.7, label=curve["name"])
    if result.get("hull"):
        hx, hy = zip(*result["hull"], strict=True)
        ax.plot([100 * x for x in hx], hy, "k--", lw=1, alpha=0.6, label="best mixture of static plans (hull)")
    for p in result["points"] + result["overlays"]:
        if p["family"] == "static-layers":
            continue
        color, marker = FAMILY_STYLE.get(p["family"], ("k", "v"))
        x, y = _center(p["speedup"]), _center(p["fidelity"])
        edge = {} if marker == "x" else {"edgecolors": "k", "linewidths": 0.5}  # "x" has no face to outline
        ax.scatter([x * 100], [y], c=color, marker=marker, s=90 if p["family"] in ("oracle", "online-rl") else 50,
                   zorder=3, **edge)
        ax.annotate(p["name"], (x * 100, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    m = result["machine"]
    ax.set_xlabel("measured speed-up vs the full model, % (controller cost included)")
    ax.set_ylabel("fidelity to the full model (token agreement)")
    ax.set_title(f"{result['model']['model_id']}: {result['test_prompts']} held-out prompts, live timing\n"
                 f"{m.get('device_name', m.get('device', ''))}, {m['date']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
    return path


def markdown(result: dict[str, Any]) -> str:
    """The table the README shows."""
    lines = ["| controller / plan | family | speed-up % (median, min..max) | fidelity | ppl change % | reward |"
             " best single static plan at that speed-up | best static mixture at that speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for p in sorted(result["points"], key=lambda p: p["speedup"]["mean"]):
        s = p["speedup"]
        fq, mq = p.get("static_fidelity_at_speedup"), p.get("static_mix_fidelity_at_speedup")
        lines.append(
            f"| {p['name']} | {p['family']} | {100 * s['mean']:+.1f} ({100 * s['median']:+.1f}, "
            f"{100 * s['min']:+.1f}..{100 * s['max']:+.1f}) | {p['fidelity']['mean']:.2f} | "
            f"{100 * p['ppl_change']['mean']:+.0f} | {p['reward']:+.2f} | {'-' if fq is None else f'{fq:.2f}'} | "
            f"{'-' if mq is None else f'{mq:.2f}'} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """Train the agents, measure every point on the held-out prompts, and analyse them."""
    assert lm is not None
    quiet_d3rlpy()
    cfg = args.run_config()

    # 1. controllers, trained on train prompts only (before adapters are attached: the agents act on the
    # plain table, whose layer actions skip layers)
    print(f"(1) Double DQN: {args.ddqn_episodes} episodes on {args.train_prompts} train prompts ...", flush=True)
    t0 = time.perf_counter()
    agents: dict[str, Any] = {"double-dqn": train_ddqn(lm, cfg, args)}
    ddqn_s = time.perf_counter() - t0
    print(f"(2) offline: sweep + {args.algo_list} ...", flush=True)
    offline, offline_info = train_offline_agents(lm, cfg, args)
    agents.update(offline)

    test_env = cfg.make_env("test", lm=lm)
    core = test_env.unwrapped
    n_actions = core.action_space.n
    agents["random"] = RandomAgent(n_actions, seed=args.seed)
    for a in range(n_actions):
        core.plan(a)  # build the table's plans now: they stay skip plans once adapters are attached below

    # 2. static layer-removal plans: last / influence order, skipped / adapters
    attach_adapters(lm, load_adapters(adapters_path(lm, args), lm))
    imp, g = lm.importance, lm.geometry
    ks = [k for k in args.k_list if k < g.num_layers]
    static_plans = {
        f"{order}-{mode}-{k}": layers_plan(imp, g, k, by=order, adapters=mode == "adapters", name=f"{order}-{mode}-{k}")
        for order in ORDERS for mode in MODES for k in ks
    }
    print(f"(3) held-out: {len(core.prompts)} prompts x ({n_actions} actions + {len(static_plans)} plans), live ...",
          flush=True)
    t0 = time.perf_counter()
    n = len(core.prompts)
    measurements = measure_held_out(
        test_env, agents, args.seed, plans=static_plans,
        on_prompt=lambda m, s: print(f"  prompt {m.index + 1}/{n} ({m.prompt_id}): {s:.1f} s", flush=True))
    rows = [{
        "prompt_id": m.prompt_id,
        "full_latency_s": m.full_latency_s,
        "table": [dataclasses.asdict(r) for r in m.table],
        "static": {name: dataclasses.asdict(r) for name, r in m.plans.items()},
        "picks": dict(m.picks),
        "act_s": dict(m.act_s),
    } for m in measurements]
    test_s = time.perf_counter() - t0
    test_env.close()

    full = [r["full_latency_s"] for r in rows]
    points = []
    for a, name in enumerate(core.action_names):
        family = "none" if a == 0 else "static-" + name.split("-")[0]
        recs = [r["table"][a] for r in rows]
        if family != "static-layers":  # the table's layer entries are the influence-skip curve's points
            points.append(point(name, family, recs))
    curves = []
    for order in ORDERS:
        for mode in MODES:
            pts = [point(f"{order}-{mode}-{k}", "static-layers", [r["static"][f"{order}-{mode}-{k}"] for r in rows])
                   for k in ks]
            for p, k in zip(pts, ks, strict=True):
                p["layers_removed"] = k
            curves.append({"name": f"{order} layers, {mode}", "order": order, "mode": mode, "points": pts})
            points.extend(pts)
    learned = []
    for name in [*agents, "oracle"]:
        family = ("random" if name == "random" else "oracle" if name == "oracle"
                  else "online-rl" if name == "double-dqn" else "offline-rl")
        recs = [r["table"][r["picks"][name]] for r in rows]
        p = point(name, family, recs, costs=[r["act_s"][name] for r in rows], full=full)
        p["action_mix"] = dict(sorted(
            {n: sum(r["picks"][name] == a for r in rows) for a, n in enumerate(core.action_names)}.items()))
        p["action_mix"] = {k: v for k, v in p["action_mix"].items() if v}
        learned.append(p)
    points += learned
    return analyse({
        "model": {"spec": args.model, "model_id": lm.model_id, "num_layers": lm.geometry.num_layers},
        "test_prompts": len(rows),
        "training": {"ddqn_s": ddqn_s, "offline": offline_info},
        "test_s": test_s,
        "points": points,
        "curves": curves,
        "overlays": load_overlays(args.overlays),
        "per_prompt": rows,
        "notes": (
            "All points except overlays: one run, the same held-out prompts, live timing, the full model "
            "re-timed before each prompt; speed-up/fidelity/ppl_change: mean, median, min, max over prompts; "
            "controller cost (agent.act, timed per prompt) included in the learned agents' speed-ups; "
            "static_fidelity_at_speedup: best fidelity among static points at least as fast (none when no "
            "static point is that fast); static_mix_fidelity_at_speedup: the upper concave hull of the static "
            "points at that speed-up (a controller that picks between two static plans per prompt, at random, "
            "reaches any point between them: the fair bar for a per-prompt controller); the oracle picks the "
            "table action of highest env reward per prompt in hindsight. Overlays come from other runs, each "
            "against its own baseline. The CPU may have "
            "been shared with other processes (machine.load_avg)."
        ),
    })


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Frontier, hull and verdict from the points (no measurement): the best single static plan, the best
    mixture of static plans, the best static reward and the oracle, against every learned controller."""
    points = result["points"]
    static_points = [p for p in points if p["family"].startswith("static") or p["family"] == "none"]
    front, mix = frontier(static_points), hull(static_points)
    for p in points:
        p["static_fidelity_at_speedup"] = frontier_quality(front, p["speedup"]["mean"])
        p["static_mix_fidelity_at_speedup"] = hull_quality(mix, p["speedup"]["mean"])
    best_static = max(static_points, key=lambda p: p["reward"])
    oracle = next(p for p in points if p["family"] == "oracle")
    verdict = {}
    for p in points:
        if p["family"] not in ("online-rl", "offline-rl"):
            continue
        fq, mq = p["static_fidelity_at_speedup"], p["static_mix_fidelity_at_speedup"]
        verdict[p["name"]] = {
            "speedup": p["speedup"]["mean"],
            "fidelity": p["fidelity"]["mean"],
            "static_fidelity_at_speedup": fq,
            "beats_static_frontier": None if fq is None else p["fidelity"]["mean"] > fq,
            "static_mix_fidelity_at_speedup": mq,
            "beats_static_mixtures": None if mq is None else p["fidelity"]["mean"] > mq,
            "reward": p["reward"],
            "beats_best_static_reward": p["reward"] > best_static["reward"],
            "reward_gap_to_oracle": oracle["reward"] - p["reward"],
        }
    result.update(
        frontier=front,
        hull=mix,
        best_static_by_reward={"name": best_static["name"], "reward": best_static["reward"]},
        oracle={"reward": oracle["reward"], "speedup": oracle["speedup"]["mean"],
                "fidelity": oracle["fidelity"]["mean"]},
        verdict=verdict,
    )
    return result


def write_markdown(result: dict[str, Any], path: Path) -> None:
    """The table the README shows, as a markdown file."""
    path.write_text(markdown(result), encoding="utf-8")


def print_verdict(result: dict[str, Any]) -> None:
    """The markdown table, then each learned controller's verdict."""
    print(markdown(result))
    for name, v in result["verdict"].items():
        print(f"{name}: beats the best single static plan at equal speed-up: {v['beats_static_frontier']}; "
              f"beats static mixtures: {v['beats_static_mixtures']}; beats the best static reward: "
              f"{v['beats_best_static_reward']}; reward gap to the oracle {v['reward_gap_to_oracle']:.2f}")


FILES = {".png": plot, ".md": write_markdown}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run (or, with --reanalyse, reread the JSON), write JSON, chart and table; return it."""
    args = harness.parse_args(Args, argv)
    if args.reanalyse:
        out = Path(args.out)
        if not out.is_file():
            raise ValueError(f"--reanalyse needs an existing results file, {out} is not one")
        return harness.save(analyse(json.loads(out.read_text())), out, table=print_verdict, files=FILES)
    return harness.run(args, measure, table=print_verdict, files=FILES)


if __name__ == "__main__":
    main()
