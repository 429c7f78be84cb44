"""``dynprune explore | prefs | offline``: log exploration data, derive preference pairs, train offline agents.

Registered with the ``dynprune`` command through the ``dynprune.commands`` entry point group
(``offline_data.cli:add_commands``). Importing this module is cheap: torch, datasets and
d3rlpy load inside the commands.

::

    dynprune explore --strategy sweep --out logs/sweep --model smollm2-135m --prompts 40 --workers 2
    dynprune explore --strategy dfs --out logs/dfs --threshold 0.8 --max-scenarios 20
    dynprune prefs --logs logs/dfs --mode all --out logs/dfs-pairs.parquet
    dynprune offline --logs logs/sweep --algo cql --run-dir runs/cql --steps 5000
    dynprune test --run-dir runs/cql          # same held-out table as the online agents

``offline`` writes a run directory that ``dynprune test`` and ``dynprune report`` read:
``config.json`` (the env settings of the logs, so the held-out env matches the one the data
came from), ``agent.zip`` (+ ``agent.zip.agent.json``) and ``train_log.jsonl`` (d3rlpy's
per-epoch losses).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from envs.run_config import RunConfig

#: What an offline run writes (top-level names, glob patterns): ``--force`` deletes these and nothing else.
OFFLINE_RUN_OUTPUTS = ("config.json", "train_log.jsonl", "agent.zip", "agent.zip.agent.json", "test", "report",
                       ".*.tmp")


def cmd_explore(args: argparse.Namespace) -> int:
    """``dynprune explore``: measure configurations per prompt and write Parquet shards."""
    from dynprune.fileio import WRITE_ERRNOS, WriteFailed, describe_os_error
    from offline_data.dataset import check_logs
    from offline_data.explore import ExploreFailed, explore, prompt_ids_of

    settings = RunConfig.from_args(args)
    # the env's own adapters are not in the kwargs: explore attaches the file itself and records it in the
    # shards' explore settings (offline runs read it there)
    env_kwargs = {k: v for k, v in settings.env_kwargs(args.split).items() if k != "adapters"}
    ids = prompt_ids_of(env_kwargs)
    if args.prompts is not None:
        if args.prompts < 1:
            raise ValueError(f"--prompts must be >= 1, got {args.prompts}")
        ids = ids[: args.prompts]
    t0 = time.perf_counter()
    unit = "Ray task" if args.backend == "ray" else "worker"
    print(f"[explore] {args.strategy} on {args.model}: {len(ids)} {args.split} prompts -> {args.out} "
          f"({args.workers} {unit}{'s' if args.workers > 1 else ''})", flush=True)
    try:
        summary = explore(
            env_kwargs,
            args.strategy,
            args.out,
            prompt_ids=ids,
            threshold=args.threshold,
            max_scenarios=args.max_scenarios,
            n_random=args.n_random,
            max_frac=args.max_frac,
            seed=args.seed,
            adapters=args.adapters,
            workers=args.workers,
            backend=args.backend,
            threads=args.threads,
            retries=args.retries,
            progress=True,
        )
    except KeyboardInterrupt:
        print(f"\n[explore] interrupted; finished prompts are kept in {args.out}. Re-run the same command to resume.",
              file=sys.stderr)
        return 130
    except ExploreFailed as err:
        print(f"dynprune explore: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a full or read-only disk mid-run: every finished prompt's shard is whole
        if isinstance(err, WriteFailed) or err.errno not in WRITE_ERRNOS:
            raise
        raise WriteFailed(err, f"{describe_os_error(err)}; finished prompts are kept in {args.out}: once fixed, "
                               "re-run the same command to resume") from err
    # the thread counts each worker measured with, as read in its own process
    threads = sorted({w.threads for w in summary.workers if w.done})
    print(f"[explore] done: {len(summary.done)} prompts measured ({summary.rows} rows), "
          f"{len(summary.skipped)} already logged, {time.perf_counter() - t0:.0f} s"
          + (f", torch threads per {unit}: {'/'.join(map(str, threads))}" if threads else ""))
    for path, error in check_logs(args.out):
        print(f"[explore] damaged shard {path}: {error}")
    return 0


def cmd_minari(args: argparse.Namespace) -> int:
    """``dynprune minari``: export logged rows as a Minari dataset."""
    from offline_data.minari_export import episodes_summary, to_minari

    path = to_minari(args.logs, args.dataset_id, force=args.force, author=args.author)
    s = episodes_summary(args.dataset_id)
    print(f"[minari] {args.dataset_id}: {s['episodes']} one-step episodes, "
          f"mean reward {s['mean_reward']:+.3f} -> {path}")
    print(f"[minari] minari.load_dataset({args.dataset_id!r}).recover_environment() builds the logged env; "
          f"for d3rlpy read it with offline_data.to_d3rlpy({args.dataset_id!r}) (not d3rlpy.datasets.get_minari)")
    return 0


def cmd_prefs(args: argparse.Namespace) -> int:
    """``dynprune prefs``: preference pairs of layer sets from logged exploration."""
    from offline_data.dataset import load_logs
    from offline_data.prefs import preference_pairs, write_pairs

    ds = load_logs(args.logs)
    pairs = preference_pairs(ds, mode=args.mode, seed=args.seed, max_pairs_per_prompt=args.max_pairs)
    path = write_pairs(pairs, args.out)
    prompts = len({p["prompt_id"] for p in pairs})
    print(f"[prefs] {len(pairs)} pairs from {len(ds)} rows over {prompts} prompts -> {path}")
    return 0


def _env_defaults() -> dict[str, Any]:
    """DynPrune-v0's constructor defaults (for settings a log directory does not name)."""
    import inspect

    from envs.dynprune_env import DynPruneEnv

    params = inspect.signature(DynPruneEnv.__init__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def run_config(meta: dict[str, Any], args: argparse.Namespace, agent_name: str) -> RunConfig:
    """The settings of an offline run: the logs' env settings (so the held-out env matches the one the data
    came from, adapters and healing included), the held-out options and the learner's settings."""
    env = {**_env_defaults(), **meta["settings"]["env"]}
    for key in ("model", "reward"):
        if not isinstance(env[key], str):
            raise ValueError(f"the logs' env {key} {env[key]!r} is not a name; dynprune test needs a named {key}")
    from dynprune.runtime import ProfileConfig

    profile = env.get("profile") or {}
    defaults = ProfileConfig()  # the env's profile when the logs name none
    source = env["prompts"]
    return RunConfig(
        model=env["model"],
        reward=env["reward"],
        timing=env["timing"],
        test_timing=args.test_timing,
        max_new_tokens=env["max_new_tokens"],
        telemetry=env["telemetry"],
        scenario=env["scenario"],
        device=env["device"],
        profile_tokens=profile.get("new_tokens", defaults.new_tokens),
        profile_repeats=profile.get("repeats", defaults.repeats),
        prompt_embedding=env.get("prompt_embedding", 0),
        # the held-out env draws budgets as the logs' env did
        budget_range=env["budget_range"],
        # healing the logs were explored with (the held-out env attaches the same folder)
        healing=env.get("healing"),
        # adapters the logs were explored with (the held-out env attaches the same file)
        adapters=meta["settings"]["explore"].get("adapters"),
        prompt_source=source if isinstance(source, str) else "dynprune",
        train_prompts=None,
        test_prompts=args.test_prompts,
        seed=args.seed,
        extra={
            "agent": agent_name,
            "algo": args.algo,
            "logs": str(Path(args.logs).resolve()),
            "steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "relabel_budgets": getattr(args, "relabel_budgets", None),
            "relabel_range": getattr(args, "relabel_range", None),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    )


def _quiet_d3rlpy() -> None:
    """Keep d3rlpy's structlog messages (dataset info, parameters, every epoch) to warnings and above."""
    import logging

    import d3rlpy  # noqa: F401 - configures structlog on import; filter after that
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def cmd_offline(args: argparse.Namespace) -> int:
    """``dynprune offline``: train a d3rlpy agent on logged data into a run directory."""
    from agents.cli import evaluate
    from agents.offline import train_offline
    from dynprune.fileio import atomic_write_json
    from dynprune.records import append_record
    from dynprune.runfolder import prepare_run_folder
    from offline_data.dataset import load_logs, read_meta, to_mdp_dataset

    # read and check everything before touching the run directory
    meta = read_meta(args.logs)
    agent_name = f"offline-{args.algo}"
    cfg = run_config(meta, args, agent_name)
    ds = load_logs(args.logs)
    if args.relabel_budgets is not None:
        from offline_data.relabel import relabel_budgets

        logged = len(ds)
        ds = relabel_budgets(ds, meta["observation_names"], args.relabel_budgets,
                             budget_range=tuple(args.relabel_range) if args.relabel_range else None, seed=args.seed)
        print(f"[offline] relabelled {logged} logged rows under {args.relabel_budgets} budgets each: {len(ds)} rows",
              flush=True)
    mdp = to_mdp_dataset(ds, n_actions=int(meta["n_actions"]))
    cfg = cfg.replace(transitions=int(mdp.transition_count))
    run_dir = Path(args.run_dir)
    prepare_run_folder(run_dir, "offline", OFFLINE_RUN_OUTPUTS, force=args.force)
    atomic_write_json(run_dir / "config.json", cfg.to_json())
    if not getattr(args, "verbose", False):
        _quiet_d3rlpy()
    print(f"[offline] {args.algo} on {cfg.extra['transitions']} logged transitions ({len(ds)} rows) from {args.logs}, "
          f"{args.steps} steps", flush=True)
    config: dict[str, Any] = {"batch_size": args.batch_size}
    if args.lr is not None:
        config["learning_rate"] = args.lr
    agent = train_offline(mdp, args.algo, n_steps=args.steps, seed=args.seed, device=args.device,
                          name=agent_name, **config)
    for epoch, metrics in agent.train_metrics:
        append_record(run_dir / "train_log.jsonl", {
            "epoch": int(epoch),
            "timesteps": int(epoch) * min(args.steps, 1_000),
            **{k: float(v) for k, v in metrics.items() if not k.startswith("time_")},
        })
    agent.save(run_dir / "agent.zip")
    print(f"[offline] done: {run_dir / 'agent.zip'}; evaluate with: dynprune test --run-dir {run_dir}")
    if args.test:
        evaluate(run_dir, RunConfig.from_json(json.loads((run_dir / "config.json").read_text())))
    return 0


def add_commands(sub: Any) -> None:
    """Add ``explore``, ``prefs`` and ``offline`` to the ``dynprune`` sub-command parser."""
    p = sub.add_parser("explore", help="log exploration data (DFS / random layer sets, or a sweep of the action table)")
    p.add_argument("--strategy", choices=("dfs", "random", "sweep"), required=True)
    p.add_argument("--out", required=True, help="log directory (one Parquet shard per prompt; re-run to resume)")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--prompts", type=int, default=None, help="explore only the first N prompts of the split")
    p.add_argument("--threshold", type=float, default=0.8,
                   help="DFS: go deeper while the score (task score, else fidelity) stays at or above this")
    p.add_argument("--max-scenarios", type=int, default=20, help="DFS: configurations per prompt")
    p.add_argument("--n-random", type=int, default=5, help="random: layer sets per prompt")
    p.add_argument("--max-frac", type=float, default=0.5, help="random: largest fraction of layers pruned")
    p.add_argument("--workers", type=int, default=1, help="processes on this machine (prompts dealt round-robin)")
    p.add_argument("--backend", choices=("processes", "ray"), default="processes",
                   help="--workers shards as local processes, or as Ray tasks (the cluster RAY_ADDRESS names, else "
                        "a private Ray runtime on this machine, on 127.0.0.1 only)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of each worker (default: torch's choice with one worker, cores / workers with "
                        "processes, 1 per Ray task; a Ray task reserves that many CPUs)")
    p.add_argument("--retries", type=int, default=3,
                   help="Ray: runs of a task again after its worker process died (it skips the prompts already logged)")
    # the env settings (recorded in every shard): one declaration with dynprune train's
    RunConfig.add_arguments(p, skip=("test_timing", "train_prompts", "test_prompts"))
    p.set_defaults(fn=cmd_explore)

    p = sub.add_parser("prefs", help="preference pairs of layer sets from logged exploration")
    p.add_argument("--logs", required=True, help="log directory of dynprune explore")
    p.add_argument("--mode", choices=("all", "random"), default="all")
    p.add_argument("--out", required=True, help="Parquet file to write")
    p.add_argument("--max-pairs", type=int, default=None, help="pairs per prompt (random: default = layer sets)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_prefs)

    p = sub.add_parser("minari", help="export logged data as a Minari dataset (for other offline-RL libraries)")
    p.add_argument("--logs", required=True, help="log directory of dynprune explore")
    p.add_argument("--dataset-id", required=True, help="Minari id, e.g. dynprune/smollm2-sweep-v0")
    p.add_argument("--author", default=None)
    p.add_argument("--force", action="store_true", help="replace an existing dataset of that id")
    p.set_defaults(fn=cmd_minari)

    p = sub.add_parser("offline", help="train a d3rlpy agent (CQL, BCQ, Double DQN, BC) on logged data")
    p.add_argument("--logs", required=True, help="log directory of dynprune explore (sweep gives every action)")
    p.add_argument("--algo", choices=("cql", "bcq", "ddqn", "bc"), required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--steps", type=int, default=5_000, help="gradient steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-4)")
    p.add_argument("--device", default="cpu:0", help="torch device of the learner (d3rlpy style)")
    # the held-out options and the seed (the env settings come from the logs)
    RunConfig.add_arguments(p, skip=[n for n in RunConfig.field_names()
                                     if n not in ("test_timing", "test_prompts", "seed")])
    p.add_argument("--relabel-budgets", type=int, default=None, metavar="K",
                   help="latency_budget logs: learn from every row under K budgets (the logged one and K-1 fresh "
                        "draws; hindsight relabelling, offline_data.relabel)")
    p.add_argument("--relabel-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="range of the fresh budgets of --relabel-budgets (default: the logs' smallest and largest)")
    p.add_argument("--test", action="store_true", help="evaluate on the held-out prompts right after training")
    p.add_argument("--force", action="store_true",
                   help="replace the run in --run-dir: delete the files it wrote (other files stay)")
    p.set_defaults(fn=cmd_offline)
