"""Does a trained router prune better per prompt than a static k-layer plan, with its own cost counted?

The thesis' table on the embedded model: method, quality, measured speed-up with the router's
cost included, mean layers pruned; for no pruning, static k-layer plans for several k, routers
trained with FBC, DPO and ORPO (MiniLM encoder), the light router (ORPO on the served model's
mean-pooled token embeddings), and the oracle over the configurations measured on each prompt.

1. **Logged data** (``offline_data.explore``): DFS over layer sets on ``dfs_prompts`` train
   prompts (profiled timing, resumable: finished prompts are reused), plus the layer-set rows of
   an existing table sweep (``sweep_logs``: every ``layers-x%`` entry on each train prompt, written
   by ``benchmarks/offline_rl.py``). Preference pairs: ``offline_data.prefs`` (every non-tied pair;
   higher score wins, same score: more layers pruned) on scores clipped at ``success_threshold``
   (0.8, the DFS keep threshold: every successful configuration ties, so the most-pruned successful
   one wins, as with the thesis' binary correctness), written to a pairs file and read back.
   FBC's target per prompt: the most-pruned configuration scoring at least ``success_threshold``.
2. **Training** (``agents.router.train``): FBC; DPO from the FBC router (frozen copy = reference);
   ORPO from scratch; the light router with ORPO. 15 % of the train prompts held out during training.
3. **Router cost**, measured in this run on the test prompts, uncached (the encoder's per-prompt
   cache cleared before each call): one MiniLM encoding + the heads' decision, and for the light
   router the served model's embedding lookup + mean + the heads; batched MiniLM encoding of all
   test prompts per prompt too. Reported as a fraction of one decoder layer's share of a full
   generation (``T_full / L``, ``T_full`` = the full model's timed generation of the same prompt).
4. **Held-out evaluation** on ``test_prompts`` prompts of the test split, live timing, pruned
   layers skipped (no adapters in the logged data, so none here: "same adapters" for every row).
   Per prompt and round: the full model is retimed, then every distinct plan of every method is
   timed once, in an order rotated per round (interleaved repeats). Speed-up of a plan on a prompt
   = median over rounds of ``T_full / (T_pruned + c_router) - 1`` with ``c_router`` the router's
   measured median per-prompt cost (0 for static plans). Quality = task score (gold answer in the
   output) on prompts with one, else token agreement with the full model's answer; each plan's
   first-round generation (greedy, deterministic).

Run:
    python -m benchmarks.router                              # embedded SmolLM2-135M
    python -m benchmarks.router --smoke --out /tmp/router.json  # tiny random model + tiny encoder, seconds

Writes ``benchmarks/results/router.json`` and prints the table.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401 - registers the env ids
from agents.router.agent import RouterAgent
from agents.router.configs import DPOConfig, FBCConfig, ORPOConfig
from agents.router.data import load_router_data
from agents.router.model import Router, RouterConfig, SentenceEncoder
from agents.router.train import train_router
from benchmarks import harness
from benchmarks.utils import seeded_subset, summary
from dynprune.models import PrunableLM, cache_dir
from dynprune.plan import PruningPlan
from dynprune.runtime import ProfileConfig
from dynprune.selection import layers_plan
from dynprune.validation import require_positive
from offline_data.dataset import load_logs, read_meta
from offline_data.explore import explore, prompt_ids_of
from offline_data.prefs import compare, preference_pairs, row_score, write_pairs

DEFAULT_SWEEP = "offline_rl-smollm2-135m-casrap-profiled-n252-tok24-seed0"


@dataclass
class Args(harness.Args):
    """Router (FBC / DPO / ORPO / light) against static k-layer plans, router cost included.

    ``seed`` seeds the prompt subsets, the train / eval splits and the training.
    """

    dfs_prompts: int = 40
    """train prompts explored by DFS (a seeded subset of the train split; finished ones are reused)"""
    dfs_scenarios: int = 10
    """DFS configurations per prompt (the unpruned one included)"""
    dfs_threshold: float = 0.8
    """DFS keeps expanding a layer set while its score (fidelity) is at least this"""
    sweep_logs: str | None = DEFAULT_SWEEP
    """a table-sweep log folder (absolute, or under <dynprune cache>/logs) whose layer-set rows join the
    training data; none: DFS rows only"""
    test_prompts: int = 16
    """held-out prompts (a seeded subset of the test split)"""
    max_new_tokens: int = 24
    """answer length limit of the full and pruned model"""
    static_k: str = "1,2,3,5,8"
    """layer counts of the static plans (lowest block influence first), comma-separated"""
    rounds: int = 2
    """interleaved timing rounds per test prompt"""
    cost_repeats: int = 5
    """router-cost timings per prompt and variant (median taken)"""
    fbc_epochs: int = 200
    """FBC epochs"""
    pref_epochs: int = 30
    """DPO / ORPO epochs"""
    beta: float = 0.1
    """DPO beta and ORPO lambda"""
    success_threshold: float = 0.8
    """a configuration scoring at least this is successful: FBC's targets; in the preference pairs every
    score above it counts as equal (so among successes the one pruning more layers wins)"""
    out: str = "benchmarks/results/router.json"

    SMOKE = {"dfs_prompts": 3, "dfs_scenarios": 4, "sweep_logs": None, "test_prompts": 2, "max_new_tokens": 4,
             "static_k": "1,2", "rounds": 1, "cost_repeats": 2, "fbc_epochs": 5, "pref_epochs": 3}
    POSITIVE = ("dfs_prompts", "dfs_scenarios", "test_prompts", "max_new_tokens", "rounds", "cost_repeats",
                "fbc_epochs", "pref_epochs")

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(self, "beta")
        if not self.k_list:
            raise ValueError(f"static_k must list layer counts, got {self.static_k!r}")

    @property
    def k_list(self) -> list[int]:
        """``static_k`` as sorted integers."""
        return sorted({int(k) for k in self.static_k.split(",") if k.strip()})


# ----------------------------------------------------------------------------- helpers


def tiny_encoder(folder: Path) -> str:
    """A random 1-layer BERT with a word vocabulary (the smoke run's stand-in for MiniLM)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = "what is the of a to in and write sum list number python function capital two plus".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, model_max_length=32).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=32)).save_pretrained(folder)
    return str(folder)


def quality(rec: Any) -> float:
    """The score of a live record: task score when the prompt has one, else token agreement (``prefs.row_score``)."""
    return row_score({"task_score": rec.task_score, "token_agreement": rec.token_agreement, "timing": rec.timing})


def interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise-linear interpolation on a curve sorted by ``xs`` (flat beyond its ends)."""
    return float(np.interp(x, xs, ys))


def time_router_cost(
    agents: dict[str, RouterAgent], lm: Any, infos: list[dict[str, Any]], repeats: int
) -> dict[str, list[float]]:
    """Per-prompt seconds of each router's decision from the raw prompt, caches cleared; interleaved."""
    costs: dict[str, list[float]] = {name: [] for name in agents}
    for agent in agents.values():  # warm-up: first calls pay one-off allocations
        agent.masks([{"prompt": "warm-up", "prompt_embedding": lm.prompt_embedding("warm-up")}])
    for info in infos:
        per: dict[str, list[float]] = {name: [] for name in agents}
        for _ in range(repeats):
            for name, agent in agents.items():
                router = agent.router
                if router.config.features == "minilm":
                    router.encoder.clear_cache()
                    t0 = time.perf_counter()
                    agent.masks([{"prompt": info["prompt"]}])
                else:
                    # the engine caches prompt embeddings; drop this prompt's entry so the lookup is timed
                    lm._embeddings.pop(info["prompt"], None)
                    t0 = time.perf_counter()
                    emb = lm.prompt_embedding(info["prompt"])
                    agent.masks([{"prompt_embedding": emb}])
                per[name].append(time.perf_counter() - t0)
        for name in agents:
            costs[name].append(statistics.median(per[name]))
    return costs


# ----------------------------------------------------------------------------- main


def pareto_points(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trained routers' rows as points for ``benchmarks/pareto.py`` (its units: speed-up ``T_full / T - 1``
    with the router's cost counted, fidelity = greedy token agreement with the full answer)."""
    return [
        {"name": r["method"], "family": "router", "speedup": {"mean": r["speedup"], **{
            k: r["speedup_per_prompt"][k] for k in ("median", "min", "max")}},
         "fidelity": {"mean": r["fidelity"]}, "mean_layers_pruned": r["mean_layers_pruned"]}
        for r in table
        if r["method"].startswith("router")
    ]


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:  # noqa: C901 - one readable pipeline
    """Log, train the routers, time their cost, then time every method's plan live on held-out prompts."""
    assert lm is not None
    L = lm.geometry.num_layers
    work = cache_dir() / "runs" / ("router-bench-smoke" if args.smoke else "router-bench")
    work.mkdir(parents=True, exist_ok=True)

    # 1. logged data: DFS (resumable) + the layer-set rows of a table sweep
    kw = {"model": lm, "split": "train", "reward": "accuracy_efficiency", "timing": "profiled",
          "max_new_tokens": args.max_new_tokens, "telemetry": "scenario", "scenario": "mixed",
          "device": args.device, "profile": ProfileConfig(new_tokens=4, repeats=1)}
    dfs_ids = seeded_subset(prompt_ids_of(kw), args.dfs_prompts, args.seed + 1)
    slug = "smoke" if args.smoke else args.model.replace("/", "_")
    dfs_dir = cache_dir() / "logs" / f"router-{slug}-dfs-tok{args.max_new_tokens}-seed{args.seed}"
    print(f"(1) DFS on {len(dfs_ids)} train prompts -> {dfs_dir}", flush=True)
    t0 = time.perf_counter()
    explored = explore(kw, "dfs", dfs_dir, prompt_ids=dfs_ids, max_configs=args.dfs_scenarios,
                       threshold=args.dfs_threshold, seed=args.seed, progress=True)
    dfs_wall = time.perf_counter() - t0
    log_dirs = [dfs_dir]
    if args.sweep_logs:
        sweep = Path(args.sweep_logs)
        sweep = sweep if sweep.is_absolute() else cache_dir() / "logs" / sweep
        meta = read_meta(sweep)
        if meta["model_id"] != lm.model_id:
            raise ValueError(f"sweep logs {sweep} are for {meta['model_id']}, not {lm.model_id}")
        if meta["settings"]["explore"].get("adapters"):
            raise ValueError(f"sweep logs {sweep} were measured with adapters; this benchmark skips layers")
        log_dirs.append(sweep)
    rows: list[dict[str, Any]] = []
    for d in log_dirs:
        rows.extend(load_logs(d).to_list())
    # scores clipped at the success threshold: every successful configuration ties, and the pairs rule
    # (same score: more layers pruned wins) then prefers the most-pruned successful one, as the thesis'
    # binary correctness did; failures stay ordered by their score
    clipped = [{**r, "token_agreement": min(row_score(r), args.success_threshold), "task_score": None} for r in rows]
    pairs = preference_pairs(clipped)
    pairs_path = write_pairs(pairs, work / "pairs.parquet")
    data = load_router_data(log_dirs, pairs=pairs_path)
    n_configs = sum(len(v) for v in data.configs.values())
    print(f"    {len(data.configs)} prompts, {n_configs} layer sets, {len(data.pairs)} pairs", flush=True)

    # 2. training
    if args.smoke:
        encoder = SentenceEncoder(tiny_encoder(work / "tiny-bert"))
    else:
        encoder = SentenceEncoder()
    hidden = lm.geometry.hidden_size

    def token_features(texts: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([lm.prompt_embedding(t) for t in texts]).astype(np.float32))

    def minilm_router() -> Router:
        torch.manual_seed(args.seed)
        return Router(RouterConfig(num_layers=L, in_dim=encoder.dim, features="minilm", encoder=encoder.spec),
                      encoder=encoder)

    training: dict[str, Any] = {}
    routers: dict[str, Router] = {}
    # the router's MLP is tiny: one thread avoids OpenMP's cost (worse on a shared CPU); restored for timing
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)

    def fit(name: str, router: Router, config: Any, features: Any = None) -> None:
        print(f"(2) {name}: {config.method}, {config.epochs} epochs", flush=True)
        result = train_router(router, data, config, features=features, run_dir=work / name)
        routers[name] = result.router
        last = result.history[-1]
        training[name] = {"config": config.to_dict(), "seconds": result.seconds,
                          "train_prompts": len(result.train_prompts), "eval_prompts": len(result.eval_prompts),
                          "final": {k: v for k, v in last.items() if k != "epoch"}}

    common = {"seed": args.seed, "eval_fraction": 0.15, "success_threshold": args.success_threshold}
    fit("fbc", minilm_router(), FBCConfig(epochs=args.fbc_epochs, eval_every=max(1, args.fbc_epochs // 4), **common))
    dpo_start = minilm_router()
    dpo_start.net.load_state_dict(routers["fbc"].net.state_dict())  # DPO starts at FBC; its reference is FBC
    fit("dpo", dpo_start, DPOConfig(epochs=args.pref_epochs, beta=args.beta, batch_size=64,
                                    eval_every=max(1, args.pref_epochs // 3), **common))
    fit("orpo", minilm_router(), ORPOConfig(epochs=args.pref_epochs, beta=args.beta, batch_size=64,
                                            eval_every=max(1, args.pref_epochs // 3), **common))
    torch.manual_seed(args.seed)
    light = Router(RouterConfig(num_layers=L, in_dim=hidden, features="tokens", encoder=None))
    fit("orpo-light", light, ORPOConfig(epochs=args.pref_epochs, beta=args.beta, batch_size=64,
                                        eval_every=max(1, args.pref_epochs // 3), **common),
        features=token_features)

    torch.set_num_threads(threads_before)

    # 3 + 4. held-out prompts: router cost, then every method's plan timed live
    env = gym.make("DynPruneLayers-v0", model=lm, split="test", timing="live", reward="accuracy_efficiency",
                   max_new_tokens=args.max_new_tokens, telemetry="scenario", scenario="idle", sequential=True)
    core = env.unwrapped
    test_ids = [q.id for q in seeded_subset(core.prompts, args.test_prompts, args.seed)]
    agents = {name: RouterAgent.from_env(env, r, name=f"router-{name}") for name, r in routers.items()}
    statics = {f"static-{k}": layers_plan(lm.importance, lm.geometry, k, by="influence", name=f"static-{k}")
               for k in args.k_list if k < L}
    infos = []
    for i, pid in enumerate(test_ids):  # the first reset seeded, the next ones go on from it
        obs, info = env.reset(seed=args.seed + 1 if i == 0 else None, options={"prompt_id": pid})
        infos.append(dict(info))
    print(f"(3) router cost on {len(infos)} test prompts ...", flush=True)
    costs = time_router_cost(agents, lm, infos, args.cost_repeats)
    encoder.clear_cache()
    t0 = time.perf_counter()
    encoder.encode([i["prompt"] for i in infos])
    batched_minilm = (time.perf_counter() - t0) / len(infos)

    per_prompt: list[dict[str, Any]] = []
    print(f"(4) live evaluation: {len(infos)} prompts x {args.rounds} rounds", flush=True)
    t_eval = time.perf_counter()
    for p, pid in enumerate(test_ids):
        obs, info = env.reset(seed=args.seed + 1 if p == 0 else None, options={"prompt_id": pid})
        plans: dict[str, PruningPlan] = {"none": PruningPlan(name="none"), **statics}
        for name, agent in agents.items():
            plans[name] = core.mask_plan(agent.act(obs, info))
        distinct: dict[tuple[int, ...], PruningPlan] = {}
        for plan in plans.values():
            distinct.setdefault(plan.removed_layers, plan)
        keys = list(distinct)
        times: dict[tuple[int, ...], list[tuple[float, float]]] = {key: [] for key in keys}
        first: dict[tuple[int, ...], Any] = {}
        for rnd in range(args.rounds):
            base = core.evaluator.retime_baseline(core.current_prompt)
            order = keys[rnd % len(keys):] + keys[:rnd % len(keys)]  # rotate: interleaved repeats
            for key in order:
                rec = core.record_plan(distinct[key])
                first.setdefault(key, rec)
                times[key].append((base.latency_s, rec.pruned_latency_s if key else base.latency_s))
        entry: dict[str, Any] = {"prompt_id": info["prompt_id"], "has_answer": first[()].task_score is not None,
                                 "full_latency_s": [t[0] for t in times[()]], "configs": {}}
        for key in keys:
            rec = first[key]
            entry["configs"][",".join(map(str, key))] = {
                "layers": list(key), "quality": quality(rec), "fidelity": rec.token_agreement,
                "task_score": rec.task_score,
                "latency_s": [t[1] for t in times[key]], "full_latency_s": [t[0] for t in times[key]],
            }
        entry["picks"] = {name: ",".join(map(str, plan.removed_layers)) for name, plan in plans.items()}
        per_prompt.append(entry)
        print(f"  prompt {p + 1}/{len(infos)} ({info['prompt_id']}): {len(keys)} plans, "
              f"{time.perf_counter() - t_eval:.0f} s", flush=True)
    eval_s = time.perf_counter() - t_eval
    env.close()

    # cost relative to one decoder layer's share of the full generation, per prompt
    layer_share = [statistics.median(e["full_latency_s"]) / L for e in per_prompt]
    router_cost = {}
    for name, c in costs.items():
        router_cost[name] = {
            "seconds": summary(c),
            "fraction_of_layer": summary([ci / share for ci, share in zip(c, layer_share, strict=True)]),
        }
    router_cost["minilm_batched_per_prompt_s"] = batched_minilm
    router_cost["layer_share_s"] = summary(layer_share)

    # the table
    def method_row(name: str, pick: Any, cost: list[float] | None) -> dict[str, Any]:
        q, fid, task, layers, sp, sp_raw = [], [], [], [], [], []
        for i, e in enumerate(per_prompt):
            key = pick(e)
            cfg = e["configs"][key]
            c = 0.0 if cost is None else cost[i]
            q.append(cfg["quality"])
            fid.append(cfg["fidelity"])
            if cfg["task_score"] is not None:
                task.append(cfg["task_score"])
            layers.append(len(cfg["layers"]))
            sp.append(statistics.median(f / (t + c) - 1.0 for f, t in zip(cfg["full_latency_s"], cfg["latency_s"],
                                                                             strict=True)))
            sp_raw.append(statistics.median(f / t - 1.0 for f, t in zip(cfg["full_latency_s"], cfg["latency_s"],
                                                                          strict=True)))
        return {"method": name, "quality": statistics.fmean(q), "fidelity": statistics.fmean(fid),
                "task_score": statistics.fmean(task) if task else None, "task_prompts": len(task),
                "speedup": statistics.fmean(sp), "speedup_per_prompt": summary(sp),
                "speedup_without_router_cost": statistics.fmean(sp_raw),
                "mean_layers_pruned": statistics.fmean(layers)}

    def best_key(e: dict[str, Any]) -> str:
        best = None
        for key, cfg in e["configs"].items():
            if best is None or compare(cfg["quality"], len(cfg["layers"]), best[1]["quality"],
                                       len(best[1]["layers"])) > 0:
                best = (key, cfg)
        return best[0]

    table = [method_row("none", lambda e: "", None)]
    table += [method_row(name, lambda e, n=name: e["picks"][n], None) for name in statics]
    table += [method_row(f"router-{name}", lambda e, n=name: e["picks"][n], costs[name]) for name in agents]
    table.append(method_row("oracle (best measured config per prompt)", best_key, None))

    # claims: routers against the static curve (quality vs layers pruned, and vs speed-up with cost)
    static_rows = sorted([r for r in table if r["method"] == "none" or r["method"].startswith("static-")],
                         key=lambda r: r["mean_layers_pruned"])
    xs = [r["mean_layers_pruned"] for r in static_rows]
    ys = [r["quality"] for r in static_rows]
    by_speed = sorted(static_rows, key=lambda r: r["speedup"])
    claims: dict[str, Any] = {}
    for r in table:
        if not r["method"].startswith("router-"):
            continue
        at_layers = interp(r["mean_layers_pruned"], xs, ys)
        at_speed = interp(r["speedup"], [s["speedup"] for s in by_speed], [s["quality"] for s in by_speed])
        claims[r["method"]] = {
            "static_quality_at_same_layers": at_layers, "advantage_at_same_layers": r["quality"] - at_layers,
            "on_or_above_static_curve_layers": r["quality"] >= at_layers,
            "static_quality_at_same_speedup": at_speed, "advantage_at_same_speedup": r["quality"] - at_speed,
            "on_or_above_static_curve_speedup": r["quality"] >= at_speed,
        }
    for m in ("router-dpo", "router-orpo"):
        if m in claims and "router-fbc" in claims:
            claims[f"{m}_beats_fbc_at_matched_pruning"] = (
                claims[m]["advantage_at_same_layers"] > claims["router-fbc"]["advantage_at_same_layers"]
            )

    return {
        "model": {"spec": args.model, "model_id": lm.model_id, "num_layers": L},
        "encoder": {"spec": encoder.spec, "dim": encoder.dim, "max_length": encoder.max_length},
        "data": {"log_dirs": [str(d) for d in log_dirs], "dfs_prompts_measured": len(explored.done),
                 "dfs_prompts_reused": len(explored.skipped), "dfs_rows_measured": explored.rows,
                 "dfs_wall_s": dfs_wall, "prompts": len(data.configs), "layer_sets": n_configs,
                 "pairs": len(data.pairs), "pairs_file": str(pairs_path)},
        "training": training,
        "router_cost": router_cost,
        "test": {"prompts": len(per_prompt), "rounds": args.rounds, "seconds": eval_s, "timing": "live",
                 "adapters": False},
        "table": table,
        "pareto_points": pareto_points(table),
        "claims": claims,
        "per_prompt": per_prompt,
        "notes": (
            "Timings on a CPU shared with other users' jobs (see machine.load_average_1m): ratios are against a "
            "baseline retimed moments before, rounds interleaved, medians taken. speedup = mean over test prompts "
            "of the per-prompt median over rounds of T_full / (T_pruned + router cost) - 1; routers pay their own "
            "measured median per-prompt cost (uncached MiniLM encoding + heads, or token-embedding lookup + heads), "
            "static plans pay none. quality = task score on prompts with a gold answer, else token agreement with "
            "the full answer (offline_data.prefs.row_score); both from the first round's greedy generation. "
            "oracle = per prompt the best configuration among those measured there (higher quality, then more "
            "layers). router_cost.fraction_of_layer = cost / (T_full / L). Layers are skipped (no adapters): the "
            "logged sweep rows were measured without adapters, so every row here uses none."
        ),
    }


def print_table(result: dict[str, Any]) -> None:
    """Router cost, the method table and the claims."""
    for name, c in result["router_cost"].items():
        if isinstance(c, dict) and "fraction_of_layer" in c:
            f = c["fraction_of_layer"]
            print(f"router cost {name}: {1e3 * c['seconds']['median']:.2f} ms/prompt = {f['median']:.3f} of a layer "
                  f"({f['min']:.3f}-{f['max']:.3f})")
    print(f"\n{'method':<44}{'quality':>9}{'fidelity':>10}{'task':>7}{'speed-up':>10}{'layers':>8}")
    for r in result["table"]:
        task = "-" if r["task_score"] is None else f"{r['task_score']:.2f}"
        print(f"{r['method']:<44}{r['quality']:>9.3f}{r['fidelity']:>10.3f}{task:>7}"
              f"{100 * r['speedup']:>9.1f}%{r['mean_layers_pruned']:>8.2f}")
    for name, c in result["claims"].items():
        print(f"{name}: {c}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON and print the table; return the result."""
    return harness.run(harness.parse_args(Args, argv), measure, table=print_table)


if __name__ == "__main__":
    main()
