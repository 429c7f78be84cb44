"""``dynprune offline``: train a d3rlpy agent on the logs of ``dynprune explore`` into a run directory.

::

    dynprune explore --strategy sweep --out logs/sweep --model smollm2-135m --prompts 40
    dynprune offline --logs logs/sweep --algo cql --run-dir runs/cql --steps 5000
    dynprune test --run-dir runs/cql          # same held-out table as the online agents

The run directory is one that ``dynprune test`` and ``dynprune report`` read: ``config.json`` (a
:class:`~envs.run_config.RunConfig` holding the env settings of the logs, so the held-out env matches
the one the data came from, adapters and healing included), ``agent.zip`` (+ ``agent.zip.agent.json``)
and ``train_log.jsonl`` (d3rlpy's per-epoch losses). It lives with the agents, above the data it reads
(``offline_data`` never imports ``agents``). Importing this module is cheap: torch and d3rlpy load
inside the command.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from envs.run_config import RunConfig

#: What an offline run writes (top-level names, glob patterns): ``--force`` deletes these and nothing else.
OFFLINE_RUN_OUTPUTS = ("config.json", "train_log.jsonl", "agent.zip", "agent.zip.agent.json", "test", "report",
                       ".*.tmp")


def offline_run_config(meta: dict[str, Any], args: argparse.Namespace, agent_name: str) -> RunConfig:
    """The settings of an offline run: the logs' env settings (so the held-out env matches the one the data
    came from, adapters and healing included), the held-out options and the learner's settings."""
    return RunConfig.from_env_settings(
        meta["settings"]["env"],
        test_timing=args.test_timing,
        # adapters the logs were explored with (the held-out env attaches the same file)
        adapters=meta["settings"]["explore"].get("adapters"),
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


def cmd_offline(args: argparse.Namespace) -> int:
    """``dynprune offline``: train a d3rlpy agent on logged data into a run directory."""
    from agents.evaluation import evaluate_run
    from agents.offline import quiet_d3rlpy, train_offline
    from dynprune.fileio import atomic_write_json
    from dynprune.records import append_record
    from dynprune.runfolder import prepare_run_folder
    from offline_data.dataset import load_logs, read_meta, to_mdp_dataset

    # read and check everything before touching the run directory
    meta = read_meta(args.logs)
    agent_name = f"offline-{args.algo}"
    cfg = offline_run_config(meta, args, agent_name)
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
        quiet_d3rlpy()
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
        evaluate_run(run_dir, RunConfig.from_json(json.loads((run_dir / "config.json").read_text())))
    return 0


def add_commands(sub: Any) -> None:
    """Add ``offline`` to the ``dynprune`` sub-command parser."""
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
