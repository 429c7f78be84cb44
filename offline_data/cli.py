"""``dynprune explore | prefs | minari``: log exploration data, derive preference pairs, export the logs.

Registered in ``dynprune.cli.COMMAND_MODULES`` (``offline_data.cli:add_commands``). Importing this
module is cheap: torch and datasets load inside the commands.

::

    dynprune explore --strategy sweep --out logs/sweep --model smollm2-135m --prompts 40 --workers 2
    dynprune explore --strategy dfs --out logs/dfs --threshold 0.8 --max-configs 20
    dynprune prefs --logs logs/dfs --mode all --out logs/dfs-pairs.parquet
    dynprune minari --logs logs/sweep --dataset-id dynprune/smollm2-sweep-v0

Training on the logs is ``dynprune offline`` (:mod:`agents.offline_cli`): the agents sit above the data.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from envs.run_config import RunConfig


class _Deprecated(argparse.Action):
    """Stores the value under the new option's name and says which option to use instead."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        new = "--" + self.dest.replace("_", "-")
        print(f"dynprune: {option_string} is deprecated; use {new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


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
            max_configs=args.max_configs,
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


def add_commands(sub: Any) -> None:
    """Add ``explore``, ``prefs`` and ``minari`` to the ``dynprune`` sub-command parser."""
    p = sub.add_parser("explore", help="log exploration data (DFS / random layer sets, or a sweep of the action table)")
    p.add_argument("--strategy", choices=("dfs", "random", "sweep"), required=True)
    p.add_argument("--out", required=True, help="log directory (one Parquet shard per prompt; re-run to resume)")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--prompts", type=int, default=None, help="explore only the first N prompts of the split")
    p.add_argument("--threshold", type=float, default=0.8,
                   help="DFS: go deeper while the score (task score, else token agreement) stays at or above this")
    p.add_argument("--max-configs", type=int, default=20, help="DFS: configurations per prompt")
    # the old name (a "scenario" is a load profile elsewhere): still accepted, with a note
    p.add_argument("--max-scenarios", type=int, dest="max_configs", action=_Deprecated, help=argparse.SUPPRESS)
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
