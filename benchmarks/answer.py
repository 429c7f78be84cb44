"""The answer: does a per-prompt controller beat static pruning? Seeds, held-out prompts, rliable statistics.

One command (``dynprune bench answer``), resumable, for the original embedded model and the
healed one (plan-conditional LoRA, ``dynprune heal``; ``--healing ""`` skips it):

1. **Tables.** Train: the reward table of the train split (modelled timing: quality exact from
   the teacher-forced pass, latency from the latency model; ``dynprune table build``): the
   shipped ``envs/tables/smollm2-135m.parquet`` for the original model, built here for the
   healed one with the same latency model. Held out: ``heldout`` prompts of the *test* split
   (a seeded subset; no agent trains on them), every table action measured **live once** per
   prompt with the honest live step (each plan generates its own greedy answer, timed beside
   the full model with interleaved forward passes: ``dynprune.paired_timing``); speed-up,
   prefix fidelity, token agreement and task score are those of the served answer. Both go to
   ``work`` (dynprune's cache by default) and resume where they stopped.
2. **Agents**, per (model, reward), trained on the train table only (``DynPruneTable-v0``):
   Double DQN (SB3, online on the table env), d3rlpy CQL and BCQ (offline, on a sweep of the
   train table: every action on every train prompt under ``offline_sweeps`` load draws), routers
   FBC / DPO / ORPO over the action table (``agents.router.action_router``; prompt-only, on the
   served model's mean token embedding: ``light``, and with ``--minilm`` on MiniLM sentence
   embeddings), each for ``seeds`` seeds; a seeded random agent per seed; every static action;
   the oracle (each prompt's best measured action). Each run's picks on the held-out prompts
   are saved to ``work`` (a rerun skips finished runs).
3. **Scoring.** Every agent is scored on the same held-out measurements: one sequential pass
   of ``DynPruneTable-v0`` over the live held-out table with a fixed seed (the same load
   scenario and budget per prompt for every agent). Per (model, reward, agent), with
   ``rliable`` (Agarwal et al. 2021) over seeds x prompts (stratified bootstrap, prompts
   resampled too): mean and interquartile mean (IQM) reward with 95 % CIs; probability of
   improvement over the best static action and over the static mixture hull; performance
   profiles. Paired per-prompt differences (bootstrap over prompts, seeds averaged): against
   the best static action (reward) and against the **static mixture hull at equal speed-up**
   (quality = prefix fidelity of the served answer, and reward): the two static actions on the
   hull around the agent's mean speed-up, mixed with the odds that give that speed-up, score
   ``lam * q_a(p) + (1 - lam) * q_b(p)`` on each prompt (what a per-prompt random mixture of
   static plans gets in expectation). The best static action is the best on the held-out
   measurements themselves (hindsight: a baseline no deployable static choice beats; the one a
   deployer would pick, best on the train sweep, is reported beside it). Also:
   the share of the oracle's lead over the best static action kept, and action agreement
   across seeds (share of held-out prompts where every seed picks the same action).
4. **The goal** per (model, reward): the best learned agent (by IQM reward) beats the hull at
   equal speed-up with a CI excluding 0 (quality), keeps >= half of the oracle's lead, and its
   seeds agree on >= 80 % of held-out prompts; each part is reported met or missed.

Run:
    dynprune bench answer                          # embedded SmolLM2-135M, original + healed
    python -m benchmarks.answer --smoke --out /tmp/answer.json   # tiny-llama, a minute

Writes ``benchmarks/results/answer.json``, ``answer.png`` (Pareto per model and reward, seed
spread), ``answer_intervals.png`` (rliable IQM intervals), ``answer_winloss.png`` (per-prompt
win/tie/loss against the best static action) and ``answer_profiles.png``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks import harness

if TYPE_CHECKING:
    from dynprune.models import PrunableLM

REWARDS = ("casrap", "latency_budget", "accuracy_efficiency")
ORIGINAL, HEALED = "original", "healed"
SCORE_VERSION = 2
"""Bumped when :func:`score` changes what it computes, so cached scores of older code are recomputed."""
EVAL_SEED = 10_000
"""Seed of the held-out pass (load scenario and budget per prompt); the train envs use the run seeds."""


@dataclass
class Args(harness.Args):
    """Does a per-prompt controller beat static pruning? Original and healed model, three rewards, seeds."""

    work: str = ""
    """folder of the tables and the per-run picks (resumable); default: <dynprune cache>/answer/<model>"""
    table: str = "smollm2-135m"
    """train reward table of the original model (file or shipped name); built in work when it is another model's"""
    healing: str = "benchmarks/results/healing_smollm2"
    """healing folder (dynprune heal) for the healed model; empty: original model only"""
    heldout: int = 60
    """held-out prompts of the test split, each action measured live once"""
    rewards: str = ",".join(REWARDS)
    """rewards to answer for, comma-separated"""
    seeds: int = 3
    """training seeds per learned agent"""
    dqn_steps: int = 10_000
    """Double DQN environment steps on the train table"""
    offline_steps: int = 3_000
    """d3rlpy gradient steps (CQL, BCQ)"""
    offline_sweeps: int = 8
    """load draws per train prompt in the offline sweep (every action each time)"""
    router_epochs: int = 300
    """full-batch epochs of each router"""
    minilm: bool = False
    """also train routers on the embedded MiniLM sentence encoder"""
    scenario: str = "mixed"
    """load scenario(s) of the envs"""
    score_only: bool = False
    """measure nothing: train and score on the tables as they are (an unfinished held-out table is scored on
    the prompts it holds, and the result says how many)"""
    reps: int = 2000
    """bootstrap repetitions of the IQM / mean intervals and of the paired differences"""
    poi_reps: int = 200
    """bootstrap repetitions of the probability of improvement (a Mann-Whitney U per prompt per repetition)"""
    out: str = "benchmarks/results/answer.json"

    SMOKE = {"heldout": 4, "seeds": 2, "dqn_steps": 100, "offline_steps": 50, "offline_sweeps": 2, "router_epochs": 20,
             "reps": 100, "poi_reps": 20}
    POSITIVE = ("heldout", "seeds", "dqn_steps", "offline_steps", "offline_sweeps", "router_epochs", "reps", "poi_reps")

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = sorted(set(self.reward_list) - set(REWARDS))
        if bad:
            raise ValueError(f"rewards must be among {REWARDS}, got {bad}")

    @property
    def reward_list(self) -> list[str]:
        """The rewards, in order."""
        return [r for r in self.rewards.split(",") if r]


# ----------------------------------------------------------------------------------------- tables


def work_dir(args: Args, lm: PrunableLM) -> Path:
    """Where this run keeps its tables and picks."""
    from dynprune.models import cache_dir

    if args.work:
        return Path(args.work)
    return cache_dir() / "answer" / lm.model_id.replace("/", "_").replace("@", "-")


def heldout_prompts(args: Args) -> list[Any]:
    """The held-out prompts: a seeded subset of the test split (no agent trains on them)."""
    from dynprune.tasks import load_prompts
    from envs.run_config import seeded_subset

    return seeded_subset(load_prompts("dynprune", split="test"), args.heldout, args.seed)


def smoke_healing(lm: PrunableLM, where: Path) -> Path:
    """A tiny shared healing for the smoke run (seconds on tiny-llama)."""
    from dynprune.healing import HealingConfig
    from dynprune.healing_train import HealTrainConfig, train_healing
    from dynprune.tasks import load_prompts

    folder = where / "smoke-healing"
    if not (folder / "healing.json").is_file():
        config = HealTrainConfig(max_new_tokens=6, sampled=0, steps=6, batch_size=4, eval_every=3, warmup=1,
                                 val_fraction=0.25)
        prompts = load_prompts("dynprune", split="train")[:8]
        train_healing(lm, folder, config, HealingConfig(grouping="shared", rank=4), prompts=prompts * 2,
                      progress=False, log=lambda _: None)
    return folder


def build_tables(args: Args, lm: PrunableLM, work: Path) -> tuple[dict[str, dict[str, Path]], dict[str, float]]:
    """``({variant: {"train": table, "heldout": table}}, {part: seconds})``; resumes unfinished tables."""
    from dynprune.healing import attach_healing
    from dynprune.latency_model import LatencyCalibration, LatencyModel, calibrate_latency, load_or_calibrate_latency
    from dynprune.table import build_table, read_table
    from dynprune.tasks import load_prompts
    from envs.table_env import table_path

    work.mkdir(parents=True, exist_ok=True)
    lm.calibrate()  # importance (cached after the first run): the plans' heads, channels and layers
    say: Callable[[str], None] = lambda line: print(line, flush=True)  # noqa: E731
    walls: dict[str, float] = {}
    shipped = None
    try:
        shipped = table_path(args.table)
    except ValueError:
        pass
    # one latency model for every modelled table of the run: the shipped table's, else the one a
    # previous (interrupted) run built its table with, else a fit (small for the smoke run)
    latency: LatencyModel | None = None
    original_train = work / "original-train.parquet"
    if shipped is not None and shipped.is_file() and read_table(shipped).meta["model_id"] == lm.model_id:
        original_train = shipped
    if original_train.is_file():
        latency = LatencyModel.from_dict(read_table(original_train).meta["latency_model"])
    elif args.smoke:
        latency, _ = calibrate_latency(lm, LatencyCalibration(points=8, repeats=1))
    else:
        latency = load_or_calibrate_latency(lm)
    train = load_prompts("dynprune", split="train")
    if args.smoke:
        train = train[:12]
    held = heldout_prompts(args)
    variants = {ORIGINAL: None}
    if args.healing:
        variants[HEALED] = smoke_healing(lm, work) if args.smoke else Path(args.healing)
    out: dict[str, dict[str, Path]] = {}
    answers = work / "full-answers.jsonl"  # the full model's answers: the same for both variants
    for variant, healing in variants.items():
        attach_healing(lm, healing)
        paths = {"train": original_train if variant == ORIGINAL else work / f"{variant}-train.parquet",
                 "heldout": work / f"{variant}-heldout-live.parquet"}
        if args.score_only:
            missing = [str(p) for p in paths.values() if not p.is_file()]
            if missing:
                raise ValueError(f"--score-only needs the tables of a previous run; missing: {missing}")
            out[variant] = paths
            continue
        if paths["train"] != shipped:
            t = time.perf_counter()
            build_table(lm, train, paths["train"], latency_model=latency, cache_file=answers,
                        memo_file=work / f"{variant}-memo.json", progress=say, flush_every=10)
            walls[f"{variant}_train_table_s"] = time.perf_counter() - t
        t = time.perf_counter()
        build_table(lm, held, paths["heldout"], latency_model=latency, cache_file=answers, timing="live",
                    memo_file=work / f"{variant}-memo.json", progress=say, flush_every=5)
        walls[f"{variant}_heldout_live_s"] = time.perf_counter() - t
        out[variant] = paths
    attach_healing(lm, None)
    return out, walls


# ----------------------------------------------------------------------------------------- agents


@dataclass(frozen=True)
class Heldout:
    """The held-out pass of one (model, reward): what every agent saw and every action's measurement.

    Attributes:
        prompt_ids: Held-out prompts in visiting order.
        steps: ``(obs, info)`` each agent acts on, per prompt.
        reward: prompts x actions reward under the pass's load and budget.
        speedup: prompts x actions measured live speed-up ``T_full / T_plan - 1``.
        quality: prompts x actions prefix fidelity of the served answer.
        task: prompts x actions task score (NaN where the prompt has no gold answer).
    """

    prompt_ids: tuple[str, ...]
    steps: tuple[tuple[np.ndarray, dict[str, Any]], ...]
    reward: np.ndarray
    speedup: np.ndarray
    quality: np.ndarray
    task: np.ndarray


def heldout_pass(table: Path, reward: str, scenario: str) -> Heldout:
    """One sequential pass over the held-out live table with the fixed evaluation seed."""
    from envs.table_env import DynPruneTableEnv

    env = DynPruneTableEnv(table=table, split=None, reward=reward, scenario=scenario.split(","), sequential=True)
    steps, rew, spd, qual, task, ids = [], [], [], [], [], []
    for i in range(env.data.n_prompts):
        obs, info = env.reset(seed=EVAL_SEED) if i == 0 else env.reset()
        steps.append((obs.copy(), dict(info)))
        ids.append(str(info["prompt_id"]))
        outs = env.action_outcomes()
        rew.append([env.reward_fn(o)[0] for o in outs])
        spd.append([o.speedup for o in outs])
        qual.append([o.prefix_fidelity for o in outs])
        task.append([math.nan if o.task_score is None else o.task_score for o in outs])
    return Heldout(tuple(ids), tuple(steps), np.array(rew), np.array(spd), np.array(qual), np.array(task))


@dataclass(frozen=True)
class Sweep:
    """Every action on every train prompt under several load draws (the offline learners' and routers' data).

    Attributes:
        obs: One row per (draw, prompt, action): the observation the action was taken on.
        actions: The action of each row.
        rewards: The reward of each row.
        steps: ``(obs, info)`` of each prompt under the first draw (the routers' inputs).
        mean_reward: prompts x actions: each action's reward averaged over the draws.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    steps: list[tuple[np.ndarray, dict[str, Any]]]
    mean_reward: np.ndarray


def train_sweep(table: Path, reward: str, scenario: str, sweeps: int, seed: int) -> Sweep:
    """Every action on every train prompt of ``table`` under ``sweeps`` load draws."""
    from envs.table_env import DynPruneTableEnv

    env = DynPruneTableEnv(table=table, split="train", reward=reward, scenario=scenario.split(","), sequential=True)
    n, n_act = env.data.n_prompts, env.action_space.n
    obs_l, act_l, rew_l = [], [], []
    mean_r = np.zeros((n, n_act))
    infos: list[tuple[np.ndarray, dict[str, Any]]] = []
    for s in range(sweeps):
        for i in range(n):
            obs, info = env.reset(seed=seed * 1000 + s) if i == 0 else env.reset()
            r = env.action_rewards()
            mean_r[i] += r / sweeps
            if s == 0:
                infos.append((obs.copy(), dict(info)))
            for a in range(n_act):
                obs_l.append(obs)
                act_l.append(a)
                rew_l.append(r[a])
    return Sweep(np.array(obs_l, np.float32), np.array(act_l), np.array(rew_l, np.float32), infos, mean_r)


def run_learners(args: Args, variant: str, reward: str, train_table: Path, held: Heldout, work: Path,
                 encode: Any, sweep: Sweep) -> dict[str, list[list[int]]]:
    """Train every learned agent for every seed (or read its saved picks); ``{agent: [picks per seed]}``."""
    import d3rlpy

    from agents.dqn import SB3Agent, make_dqn
    from agents.offline import train_offline
    from agents.router.action_router import ActionRouterConfig, router_features, train_action_router
    from dynprune.fileio import atomic_write_json
    from envs.table_env import DynPruneTableEnv

    folder = work / "picks" / variant / reward
    folder.mkdir(parents=True, exist_ok=True)
    names = ["ddqn", "cql", "bcq", "fbc-light", "dpo-light", "orpo-light"]
    if args.minilm:
        names += ["fbc-minilm", "dpo-minilm", "orpo-minilm"]
    out: dict[str, list[list[int]]] = {name: [] for name in names}
    for seed in range(args.seeds):
        fbc: dict[str, Any] = {}
        for name in names:
            path = folder / f"{name}-s{seed}.json"
            saved = json.loads(path.read_text()) if path.is_file() else None
            if saved is not None and saved["prompt_ids"] == list(held.prompt_ids):
                out[name].append(saved["picks"])
                continue  # picks of another held-out set (a table measured further since) are redone
            t = time.perf_counter()
            if name == "ddqn":
                env = DynPruneTableEnv(table=train_table, split="train", reward=reward,
                                       scenario=args.scenario.split(","))
                model = make_dqn(env, seed=seed)
                model.learn(args.dqn_steps)
                agent: Any = SB3Agent(model)
            elif name in ("cql", "bcq"):
                obs, acts, rews = sweep.obs, sweep.actions, sweep.rewards
                ds = d3rlpy.dataset.MDPDataset(observations=obs, actions=acts, rewards=rews,
                                               terminals=np.ones(len(obs), np.float32),  # one-step episodes
                                               action_space=d3rlpy.ActionSpace.DISCRETE,
                                               action_size=int(acts.max()) + 1)
                agent = train_offline(ds, name, n_steps=args.offline_steps, seed=seed,
                                      n_steps_per_epoch=args.offline_steps)
            else:
                method, encoder = name.split("-")
                feats = router_features(sweep.steps, encoder, encode)
                config = ActionRouterConfig(method=method, epochs=args.router_epochs)
                agent = train_action_router(feats, sweep.mean_reward, config, seed=seed, encoder=encoder, encode=encode,
                                            reference=fbc.get(encoder))
                if method == "fbc":
                    fbc[encoder] = agent
            train_s = time.perf_counter() - t
            picks = [int(agent.act(obs, info)) for obs, info in held.steps]
            atomic_write_json(path, {"agent": name, "seed": seed, "train_s": train_s, "picks": picks,
                                     "prompt_ids": list(held.prompt_ids)})
            out[name].append(picks)
            print(f"[answer] {variant}/{reward}: {name} seed {seed} trained in {train_s:.1f} s", flush=True)
    return out


# ------------------------------------------------------------------------------------- statistics


def upper_hull(points: Sequence[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Upper concave envelope of ``(speed-up, value, action)`` points, from the best value rightwards."""
    from agents.evaluation import hull

    h = hull([(x, y) for x, y, _ in points])
    ids = {(x, y): a for x, y, a in points}
    return [(x, y, ids[(x, y)]) for x, y in h]


def hull_mixture(h: Sequence[tuple[float, float, int]], speedup: float) -> tuple[int, int, float] | None:
    """``(a, b, lam)``: static actions ``a``, ``b`` mixed ``lam : 1 - lam`` reach ``speedup`` on hull ``h``.

    None beyond the fastest hull point (no static mixture is that fast). Below the slowest
    (best-value) point, that point alone.
    """
    if speedup <= h[0][0]:
        return h[0][2], h[0][2], 1.0
    if abs(speedup - h[-1][0]) <= 1e-9 * max(1.0, abs(speedup)):  # the fastest point itself, up to rounding
        return h[-1][2], h[-1][2], 1.0
    for (x1, _, a), (x2, _, b) in zip(h, h[1:], strict=False):
        if x1 <= speedup <= x2:
            lam = (x2 - speedup) / (x2 - x1) if x2 > x1 else 1.0
            return a, b, lam
    return None


def bootstrap_ci(diff: np.ndarray, reps: int, seed: int) -> tuple[float, float]:
    """95 % percentile CI of the mean of ``diff`` (seeds x prompts): prompts resampled, seeds averaged."""
    per_prompt = diff.mean(axis=0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_prompt), size=(reps, len(per_prompt)))
    means = per_prompt[idx].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def score(args: Args, held: Heldout, runs: dict[str, list[list[int]]]) -> dict[str, Any]:
    """Every agent's numbers on one (model, reward): rliable intervals, hull and static comparisons."""
    from rliable import library as rly
    from rliable import metrics

    n_p, n_a = held.reward.shape
    rows = np.arange(n_p)
    static = {f"static:{a}": [[a] * n_p] for a in range(n_a)}
    oracle = [held.reward.argmax(axis=1).tolist()]
    agents = {**runs, **static, "oracle": oracle}
    reward = {k: np.array([held.reward[rows, p] for p in v]) for k, v in agents.items()}  # seeds x prompts
    speed = {k: np.array([held.speedup[rows, p] for p in v]) for k, v in agents.items()}
    quality = {k: np.array([held.quality[rows, p] for p in v]) for k, v in agents.items()}
    task = {k: np.array([held.task[rows, p] for p in v]) for k, v in agents.items()}
    best_static = max(static, key=lambda k: reward[k].mean())
    means = {k: v.mean() for k, v in reward.items()}
    rs = np.random.RandomState(args.seed)
    point, ci = rly.get_interval_estimates(
        reward, lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)]), reps=args.reps,
        task_bootstrap=True, random_state=rs)
    # static mixture hulls in (speed-up, quality) and (speed-up, reward), per-prompt mixture scores
    pts_q = [(float(held.speedup[:, a].mean()), float(held.quality[:, a].mean()), a) for a in range(n_a)]
    pts_r = [(float(held.speedup[:, a].mean()), float(held.reward[:, a].mean()), a) for a in range(n_a)]
    hull_q, hull_r = upper_hull(pts_q), upper_hull(pts_r)
    lead = means["oracle"] - means[best_static]
    learned = list(runs)
    pairs, hull_scores = {}, {}
    out: dict[str, Any] = {}
    for k in agents:
        s_mean = float(speed[k].mean())
        row: dict[str, Any] = {
            "runs": int(reward[k].shape[0]),
            "reward_mean": float(point[k][0]), "reward_mean_ci": [float(x) for x in ci[k][:, 0]],
            "reward_iqm": float(point[k][1]), "reward_iqm_ci": [float(x) for x in ci[k][:, 1]],
            "speedup": s_mean, "speedup_runs": [float(x) for x in speed[k].mean(axis=1)],
            "prefix_fidelity": float(quality[k].mean()),
            "prefix_fidelity_runs": [float(x) for x in quality[k].mean(axis=1)],
            "task_score": float(np.nanmean(task[k])) if np.isfinite(task[k]).any() else None,
            "lead_kept": float((means[k] - means[best_static]) / lead) if lead > 0 else None,
        }
        d = reward[k] - reward[best_static]
        row["vs_best_static"] = {"mean": float(d.mean()), "ci": list(bootstrap_ci(d, args.reps, args.seed)),
                                 "win": float((d.mean(axis=0) > 1e-9).mean()),
                                 "tie": float((np.abs(d.mean(axis=0)) <= 1e-9).mean()),
                                 "loss": float((d.mean(axis=0) < -1e-9).mean())}
        for name, h, values, table in (("hull_quality", hull_q, quality, held.quality),
                                       ("hull_reward", hull_r, reward, held.reward)):
            mix = hull_mixture(h, s_mean)
            if mix is None:
                row[name] = {"beyond_hull": True}
                continue
            a, b, lam = mix
            m = lam * table[:, a] + (1 - lam) * table[:, b]
            d = values[k] - m[None, :]
            row[name] = {"mixture": [int(a), int(b), float(lam)], "mean": float(d.mean()),
                         "ci": list(bootstrap_ci(d, args.reps, args.seed))}
            if name == "hull_reward":
                hull_scores[k] = m[None, :]
        if k in learned:
            picks = np.array(agents[k])
            row["seed_agreement"] = float((picks == picks[0]).all(axis=0).mean())
            row["train_s"] = None
            pairs[f"{k},{best_static}"] = (reward[k], reward[best_static])
            if k in hull_scores:
                pairs[f"{k},hull"] = (reward[k], hull_scores[k])
        out[k] = row
    poi, poi_ci = rly.get_interval_estimates(pairs, metrics.probability_of_improvement, reps=args.poi_reps,
                                             random_state=rs)
    for key, p in poi.items():
        agent, other = key.split(",")
        field = "poi_vs_best_static" if other == best_static else "poi_vs_hull"
        out[agent][field] = {"p": float(p), "ci": [float(x) for x in np.ravel(poi_ci[key])]}
    taus = np.linspace(float(held.reward.min()), float(held.reward.max()), 41)
    # the point estimates are what is stored and drawn: few repetitions for the (unused) intervals
    profiles, _ = rly.create_performance_profile({k: reward[k] for k in [*learned, best_static, "oracle"]}, taus,
                                                 reps=10)
    trained = [k for k in learned if k != "random"]  # the goal is about controllers that learned something
    best = max(trained, key=lambda k: out[k]["reward_iqm"]) if trained else None
    goal = None
    if best is not None:
        hq = out[best]["hull_quality"]
        goal = {
            "agent": best,
            "beats_hull_at_equal_speedup": bool(not hq.get("beyond_hull") and hq["ci"][0] > 0),
            "hull_quality_diff": hq,
            "lead_kept": out[best]["lead_kept"],
            "keeps_half_of_oracle_lead": bool((out[best]["lead_kept"] or 0) >= 0.5),
            "seed_agreement": out[best]["seed_agreement"],
            "seeds_agree_80": bool(out[best]["seed_agreement"] >= 0.8),
        }
        goal["met"] = bool(goal["beats_hull_at_equal_speedup"] and goal["keeps_half_of_oracle_lead"]
                           and goal["seeds_agree_80"])
    return {"prompts": n_p, "best_static": best_static, "oracle_lead": float(lead), "agents": out,
            "hull_quality": [list(p) for p in hull_q], "hull_reward": [list(p) for p in hull_r],
            "profiles": {"taus": taus.tolist(), **{k: v.tolist() for k, v in profiles.items()}},
            "goal": goal}


# ------------------------------------------------------------------------------------- measure


def sentence_encoder(args: Args) -> Any:
    """MiniLM's encode (text -> vector) for the ``-minilm`` routers, or None."""
    if not args.minilm:
        return None
    from agents.router.model import SentenceEncoder

    enc = SentenceEncoder()
    return lambda text: enc.encode([text])[0].cpu().numpy()


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """Tables, agents, scores; see the module docstring."""
    from agents.baselines import RandomAgent
    from dynprune.fileio import atomic_write_json
    from dynprune.table import read_table

    assert lm is not None
    work = work_dir(args, lm)
    print(f"[answer] work folder: {work}", flush=True)
    t0 = time.perf_counter()
    tables, walls = build_tables(args, lm, work)
    walls["tables_s"] = time.perf_counter() - t0
    action_names = list(read_table(tables[ORIGINAL]["heldout"]).action_names)
    encode = sentence_encoder(args)
    results: dict[str, dict[str, Any]] = {}
    for variant, paths in tables.items():
        results[variant] = {}
        for reward in args.reward_list:
            t = time.perf_counter()
            held = heldout_pass(paths["heldout"], reward, args.scenario)
            sweep = train_sweep(paths["train"], reward, args.scenario, args.offline_sweeps, args.seed)
            runs = run_learners(args, variant, reward, paths["train"], held, work, encode, sweep)
            seeds = range(args.seeds)
            runs["random"] = [[RandomAgent(len(action_names), seed=s).act(o) for o, _ in held.steps] for s in seeds]
            walls[f"{variant}_{reward}_agents_s"] = time.perf_counter() - t
            t = time.perf_counter()
            # scoring is pure in (picks, held-out measurements, settings): a rerun reads it back
            key = json.dumps({"runs": runs, "ids": held.prompt_ids, "reward": held.reward.tolist(),
                              "settings": [args.reps, args.poi_reps, args.seed], "version": SCORE_VERSION},
                             sort_keys=True)
            cache = work / "scores" / variant / f"{reward}.json"
            cached = json.loads(cache.read_text()) if cache.is_file() else {}
            if cached.get("key") == key:
                res = cached["result"]
            else:
                res = score(args, held, runs)
                atomic_write_json(cache, {"key": key, "result": res})
            # the static action a deployer would pick without the test set: best mean reward on the train sweep
            picked = f"static:{int(np.argmax(sweep.mean_reward.mean(axis=0)))}"
            res["static_picked_on_train"] = {"agent": picked, **{k: res["agents"][picked][k] for k in
                                             ("reward_mean", "reward_iqm", "speedup", "prefix_fidelity")}}
            res["train_s"] = {name: [json.loads((work / "picks" / variant / reward / f"{name}-s{s}.json").read_text())
                                     ["train_s"] for s in seeds]
                              for name in runs if name != "random"}
            walls[f"{variant}_{reward}_scoring_s"] = time.perf_counter() - t
            results[variant][reward] = res
    meta = {v: {"train_table": str(p["train"]), "heldout_table": str(p["heldout"]),
                "healing": read_table(p["heldout"]).meta.get("healing")} for v, p in tables.items()}
    return {"actions": action_names, "tables": meta, "results": results, "walls": walls,
            "answer": answer_lines(results, action_names)}


def label(agent: str, actions: Sequence[str]) -> str:
    """Readable agent name (``static:3`` -> ``static heads-15%``)."""
    return f"static {actions[int(agent.split(':')[1])]}" if agent.startswith("static:") else agent


def answer_lines(results: dict[str, dict[str, Any]], actions: Sequence[str]) -> dict[str, str]:
    """One sentence per (model, reward): the answer, plainly."""
    lines = {}
    for variant, by_reward in results.items():
        for reward, res in by_reward.items():
            g, a = res["goal"], res["agents"]
            if g is None:
                continue
            best, st = g["agent"], res["best_static"]
            hq = g["hull_quality_diff"]
            hull = ("faster than any static mixture" if hq.get("beyond_hull") else
                    f"prefix fidelity {hq['mean']:+.3f} vs the static hull at equal speed-up "
                    f"(95 % CI {hq['ci'][0]:+.3f}..{hq['ci'][1]:+.3f})")
            vs = a[best]["vs_best_static"]
            lines[f"{variant}/{reward}"] = (
                f"{'Yes' if g['met'] else 'No'}: the best learned agent, {best} "
                f"(IQM reward {a[best]['reward_iqm']:.3f}), "
                f"vs the best static action {label(st, actions)} ({a[st]['reward_iqm']:.3f}): reward "
                f"{vs['mean']:+.3f} (CI {vs['ci'][0]:+.3f}..{vs['ci'][1]:+.3f}); {hull}; keeps "
                f"{(g['lead_kept'] or 0) * 100:.0f} % of the oracle's lead; seeds agree on "
                f"{g['seed_agreement'] * 100:.0f} % of held-out prompts.")
    return lines


# ------------------------------------------------------------------------------------- output


def print_table(result: dict[str, Any]) -> None:
    """Per (model, reward): every agent's IQM reward with CI, speed-up, prefix fidelity, PoI, hull difference."""
    actions = result["actions"]
    for variant, by_reward in result["results"].items():
        for reward, res in by_reward.items():
            print(f"\n## {variant} / {reward} ({res['prompts']} held-out prompts; best static "
                  f"{label(res['best_static'], actions)})")
            print(f"{'agent':<22} {'IQM reward':>22} {'speed-up':>8} {'prefix':>6} {'PoI>static':>10} "
                  f"{'PoI>hull':>8} {'dQ hull':>8} {'agree':>5}")
            for k, row in sorted(res["agents"].items(), key=lambda kv: -kv[1]["reward_iqm"]):
                lo, hi = row["reward_iqm_ci"]
                poi_s = row.get("poi_vs_best_static", {}).get("p")
                poi_h = row.get("poi_vs_hull", {}).get("p")
                dq = row["hull_quality"].get("mean")
                agree = row.get("seed_agreement")
                print(f"{label(k, actions):<22} {row['reward_iqm']:>7.3f} [{lo:>6.3f},{hi:>6.3f}] "
                      f"{row['speedup']:>8.3f} {row['prefix_fidelity']:>6.3f} "
                      f"{'' if poi_s is None else f'{poi_s:.2f}':>10} {'' if poi_h is None else f'{poi_h:.2f}':>8} "
                      f"{'' if dq is None else f'{dq:+.3f}':>8} "
                      f"{'' if agree is None else f'{agree:.2f}':>5}")
    print()
    for key, line in result["answer"].items():
        print(f"{key}: {line}")


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else spec.format(value)


def write_markdown(result: dict[str, Any], path: Path) -> None:
    """The answer and one table per (model, reward), as the README shows them."""
    actions = result["actions"]
    lines = ["# Does a per-prompt controller beat static pruning?", ""]
    lines += [f"- **{key}**: {line}" for key, line in result["answer"].items()]
    for variant, by_reward in result["results"].items():
        for reward, res in by_reward.items():
            picked = res.get("static_picked_on_train", {})
            lines += ["", f"## {variant} model, {reward} reward ({res['prompts']} held-out prompts)", "",
                      f"Best static action (hindsight, on these prompts): {label(res['best_static'], actions)}; "
                      f"the one picked on the train sweep: {label(picked.get('agent', '?'), actions)} "
                      f"(mean reward {picked.get('reward_mean', float('nan')):+.3f}). Oracle lead over the best "
                      f"static action: {res['oracle_lead']:+.3f}.", "",
                      "| agent | IQM reward (95 % CI) | mean reward | speed-up | prefix fidelity | task score | "
                      "P(improve) vs best static | P(improve) vs hull | prefix fidelity vs hull at equal speed-up "
                      "(95 % CI) | oracle lead kept | seeds agree |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for k, row in sorted(res["agents"].items(), key=lambda kv: -kv[1]["reward_iqm"]):
                lo, hi = row["reward_iqm_ci"]
                hq = row["hull_quality"]
                hull = "beyond the hull" if hq.get("beyond_hull") else \
                    f"{hq['mean']:+.3f} ({hq['ci'][0]:+.3f}..{hq['ci'][1]:+.3f})"
                poi_s = (row.get("poi_vs_best_static") or {}).get("p")
                poi_h = (row.get("poi_vs_hull") or {}).get("p")
                lead, agree = row["lead_kept"], row.get("seed_agreement")
                seeds = f" ({row['runs']} seeds)" if row["runs"] > 1 else ""
                lines.append(
                    f"| {label(k, actions)}{seeds} | {row['reward_iqm']:+.3f} ({lo:+.3f}..{hi:+.3f}) | "
                    f"{row['reward_mean']:+.3f} | {row['speedup'] * 100:+.1f} % | {row['prefix_fidelity']:.3f} | "
                    f"{_fmt(row['task_score'], '{:.3f}')} | {_fmt(poi_s, '{:.2f}')} | {_fmt(poi_h, '{:.2f}')} | "
                    f"{hull} | {_fmt(None if lead is None else lead * 100, '{:.0f} %')} | "
                    f"{_fmt(None if agree is None else agree * 100, '{:.0f} %')} |")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _grid(result: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(v, r, res) for v, by in result["results"].items() for r, res in by.items()]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(result: dict[str, Any], width: float, height: float, by_variant: bool, **kw: Any) -> tuple[Any, list]:
    """A figure with one panel per (model, reward): one row per model (``by_variant``) or a single row."""
    plt = _pyplot()
    grid = _grid(result)
    rows = len(result["results"]) if by_variant else 1
    cols = max(1, len(grid) // rows)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, **kw)
    return fig, [(ax, *cell) for ax, cell in zip(axes.flat, grid, strict=False)]


def _save(fig: Any, path: Path, **kw: Any) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, **kw)
    _pyplot().close(fig)


def plot_pareto(result: dict[str, Any], path: Path) -> None:
    """Speed-up vs prefix fidelity per (model, reward): statics, hull, learned agents (seed spread), oracle."""
    plt = _pyplot()
    fig, panels = _panels(result, 4.6, 3.8, by_variant=True)
    for ax, variant, reward, res in panels:
        ag = res["agents"]
        st = [(row["speedup"], row["prefix_fidelity"]) for k, row in ag.items() if k.startswith("static:")]
        ax.scatter(*zip(*st, strict=True), c="grey", s=18, label="static actions")
        hx, hy = zip(*[(p[0], p[1]) for p in res["hull_quality"]], strict=True)
        ax.plot(hx, hy, c="grey", lw=1, ls="--", label="static mixture hull")
        for i, k in enumerate(k for k in ag if not k.startswith("static:") and k != "oracle"):
            row = ag[k]
            xs, ys = row["speedup_runs"], row["prefix_fidelity_runs"]
            x, y = row["speedup"], row["prefix_fidelity"]
            ax.errorbar(x, y, xerr=[[max(0.0, x - min(xs))], [max(0.0, max(xs) - x)]],  # >= 0 despite rounding
                        yerr=[[max(0.0, y - min(ys))], [max(0.0, max(ys) - y)]],
                        fmt="o", ms=4, capsize=2, label=k, color=plt.cm.tab10(i % 10))
        o = ag["oracle"]
        ax.scatter([o["speedup"]], [o["prefix_fidelity"]], marker="*", s=90, c="k", label="oracle")
        ax.set_title(f"{variant} / {reward}", fontsize=9)
        ax.set_xlabel("live speed-up (T_full / T_plan - 1)")
        ax.set_ylabel("prefix fidelity")
    panels[0][0].legend(fontsize=6, loc="lower left")
    fig.suptitle("Held-out prompts, each action measured live once; bars: min-max over seeds", fontsize=9)
    _save(fig, path)


def plot_intervals(result: dict[str, Any], path: Path) -> None:
    """rliable's interval plot: IQM reward and 95 % CI per agent, one panel per (model, reward)."""
    _pyplot()
    from rliable import plot_utils

    grid = _grid(result)
    names = [k for k in grid[0][2]["agents"] if not k.startswith("static:")] + ["best static"]
    points, intervals = {}, {}
    for k in names:
        pts, cis = [], []
        for _, _, res in grid:
            row = res["agents"][res["best_static"] if k == "best static" else k]
            pts.append(row["reward_iqm"])
            cis.append(row["reward_iqm_ci"])
        points[k], intervals[k] = np.array(pts), np.array(cis).T
    fig, _ = plot_utils.plot_interval_estimates(points, intervals, [f"{v}/{r}" for v, r, _ in grid],
                                                algorithms=names, xlabel="IQM reward", max_ticks=3)
    _save(fig, path, bbox_inches="tight")


def plot_winloss(result: dict[str, Any], path: Path) -> None:
    """Per-prompt win / tie / loss of each learned agent (seeds averaged) against the best static action."""
    fig, panels = _panels(result, 3.2, 3.4, by_variant=False, sharey=True)
    for ax, variant, reward, res in panels:
        ks = [k for k in res["agents"] if not k.startswith("static:")]
        w = [res["agents"][k]["vs_best_static"]["win"] for k in ks]
        t = [res["agents"][k]["vs_best_static"]["tie"] for k in ks]
        lo = [res["agents"][k]["vs_best_static"]["loss"] for k in ks]
        y = np.arange(len(ks))
        ax.barh(y, w, color="tab:green", label="win")
        ax.barh(y, t, left=w, color="lightgrey", label="tie")
        ax.barh(y, lo, left=np.add(w, t), color="tab:red", label="loss")
        ax.set_yticks(y, ks, fontsize=7)
        ax.set_title(f"{variant}/{reward}", fontsize=8)
        ax.set_xlabel("share of held-out prompts")
    panels[0][0].legend(fontsize=6)
    _save(fig, path)


def plot_profiles(result: dict[str, Any], path: Path) -> None:
    """rliable performance profiles of the reward: share of (seed, prompt) runs above each reward level."""
    fig, panels = _panels(result, 3.6, 3.2, by_variant=False)
    for ax, variant, reward, res in panels:
        prof = res["profiles"]
        for k, v in prof.items():
            if k != "taus":
                ax.plot(prof["taus"], v, lw=1, label=label(k, result["actions"]))
        ax.set_title(f"{variant}/{reward}", fontsize=8)
        ax.set_xlabel("reward level tau")
    panels[0][0].set_ylabel("fraction of runs with reward > tau")
    panels[0][0].legend(fontsize=5)
    _save(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run, write the JSON and the figures, print the table."""
    return harness.run(harness.parse_args(Args, argv), measure, table=print_table,
                       files={".md": write_markdown, ".png": plot_pareto, "_intervals.png": plot_intervals,
                              "_winloss.png": plot_winloss, "_profiles.png": plot_profiles})


if __name__ == "__main__":
    main()
