"""``dynprune`` command line.

Sub-commands:
    main        train a Double DQN on the embedded model, test it on held-out prompts, write the report
    train       train an agent on DynPrune-v0 (checkpoints, --resume, metrics.jsonl)
    test        evaluate a trained agent against none / static / random / oracle on held-out prompts
    report      write report.txt and plots of a run directory
    adapters    train layer adapters by distillation (``dynprune adapters train``)
    heal        train LoRA healing that runs only under pruned plans (``dynprune heal --out DIR``)
    explore     log exploration data (DFS / random / sweep); prefs, offline: offline RL on it
    demo        load a model, run one prompt under a few plans, print latency / tokens/s / token agreement
    info        print a model's geometry and identity
    calibrate   measure importance (block influence, heads, channels) and cache it;
                --latency fits the latency model of timing="modelled" instead
    table       build / inspect a reward table (every (prompt, action) measured once) for DynPruneTable-v0
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from dynprune.cli_common import add_model_args, load_model_from_args
from dynprune.fileio import describe_os_error

DEMO_PROMPT = "What is the capital of France? Answer in one sentence, then name one famous landmark there."


#: The modules that add sub-commands to ``dynprune``, in the order of its help, as ``"module:function"``;
#: ``function(sub)`` adds its commands to the sub-parsers. The packages above the engine (agents,
#: offline_data, benchmarks) are named, never imported, here: ``dynprune.cli`` imports each one only
#: when it builds the parser, so ``import dynprune`` loads none of them (tests/test_import_direction.py).
#: A new command module is one more entry; an entry that fails to import is an error, not a missing command.
COMMAND_MODULES: tuple[str, ...] = (
    "dynprune.adapters_cli:add_adapter_commands",  # adapters train
    "dynprune.healing_cli:add_heal_command",  # heal
    "agents.cli:add_commands",  # train, test, main
    "offline_data.cli:add_commands",  # explore, prefs, minari
    "agents.offline_cli:add_commands",  # offline
    "agents.router.cli:add_commands",  # router train
    "dynprune.compress.cli:add_commands",  # compress
    "benchmarks.cli:add_commands",  # bench
)



def cmd_demo(args: argparse.Namespace) -> int:
    """Run one prompt under a few plans and print a table against the full model."""
    from dynprune.metrics import fidelity
    from dynprune.plan import PruningPlan
    from dynprune.selection import ffn_plan, heads_plan, layers_plan

    lm = load_model_from_args(args)
    print(f"model: {lm}")
    print("calibrating importance (cached after the first run) ...", flush=True)
    imp, g = lm.calibrate(), lm.geometry
    L = g.num_layers
    plans = [
        PruningPlan(name="none"),
        layers_plan(imp, g, max(1, L // 8), name=f"skip {max(1, L // 8)} layers (BI)"),
        layers_plan(imp, g, L // 4, name=f"skip {L // 4} layers (BI)"),
        heads_plan(imp, g, 0.25, name="heads -25%"),
        ffn_plan(imp, g, 0.25, name="ffn -25%"),
        PruningPlan(
            skip=(few := layers_plan(imp, g, max(1, L // 8)).skip),
            ffn=[(i, k) for i, k in ffn_plan(imp, g, 0.10).ffn if i not in few],
            name=f"skip {max(1, L // 8)} + ffn -10%",
        ),
    ]
    ids = lm.encode_prompt(args.prompt, max_new_tokens=args.max_new_tokens)
    lm.warmup()
    rows = []
    reference = None
    for plan in plans:
        with lm.apply(plan):
            # Timed runs generate exactly max_new_tokens so every plan does the same work;
            # the answer compared for fidelity is the ordinary greedy one (stops at EOS).
            runs = [
                lm.generate(ids, max_new_tokens=args.max_new_tokens, ignore_eos=True)
                for _ in range(args.repeats)
            ]
            answer = lm.generate(ids, max_new_tokens=args.max_new_tokens)
        if reference is None:
            reference = answer
        fid = fidelity(answer.output_ids, reference.output_ids)
        med = min(runs, key=lambda r: abs(r.latency_s - statistics.median(x.latency_s for x in runs)))
        rows.append(
            (
                plan.describe(),
                statistics.median(r.latency_s for r in runs),
                med,
                answer,
                fid,
                plan.kept_fraction(g),
            )
        )
    base_latency = rows[0][1]
    print(
        f"\nprompt: {args.prompt!r}  ({len(ids)} tokens, {args.max_new_tokens} new, median of {args.repeats})\n"
    )
    head = (
        f"{'plan':<28} {'latency ms':>10} {'prefill ms':>10} {'tok/s':>7} {'speed-up':>8} {'FLOPs':>6} "
        f"{'agree':>6} {'exact':>5}  output"
    )
    print(head)
    print("-" * len(head))
    for name, med, r, answer, fid, kept in rows:
        print(
            f"{name:<28} {med * 1e3:>10.1f} {r.prefill_s * 1e3:>10.1f} {r.tokens_per_s:>7.1f} "
            f"{base_latency / med:>7.2f}x {kept:>6.2f} {fid.token_agreement:>6.2f} {fid.exact_match:>5.0f}  "
            f"{answer.text[:60]!r}"
        )
    if args.json:
        out = [
            {
                "plan": n,
                "latency_s": m,
                "tokens_per_s": r.tokens_per_s,
                "speedup": base_latency / m,
                "token_agreement": f.token_agreement,
                "exact_match": f.exact_match,
                "text": a.text,
            }
            for n, m, r, a, f, _ in rows
        ]
        print(json.dumps(out, indent=2))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Print a model's identity and geometry."""
    lm = load_model_from_args(args)
    print(lm)
    print(json.dumps(lm.geometry.__dict__, indent=2))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Calibrate importance (or, with ``--latency``, fit the latency model) and write it to the cache (or ``--out``)."""
    if args.latency:
        return calibrate_latency_cmd(args)
    from dynprune.fileio import check_writable
    from dynprune.importance import calibrate, importance_path, save_importance
    from dynprune.models import cache_dir

    # before minutes of calibration: the result must have somewhere to go
    if args.out:
        check_writable(Path(args.out).resolve().parent, "--out")
    else:
        check_writable(cache_dir() / "importance", "the cache ($DYNPRUNE_CACHE)")
    lm = load_model_from_args(args)
    imp = calibrate(lm, n_prompts=args.n_prompts, seq_len=args.seq_len)
    path = save_importance(imp, args.out or importance_path(lm.model_id, args.n_prompts, args.seq_len))
    order = sorted(range(len(imp.block_influence)), key=lambda i: imp.block_influence[i])
    print(f"wrote {path}")
    print("layers by block influence (lowest first):", order)
    return 0


def calibrate_latency_cmd(args: argparse.Namespace) -> int:
    """``dynprune calibrate --latency``: measure random plans interleaved with the full model, fit, cache, report."""
    from dynprune.latency_model import (
        DECODE_FEATURES,
        PREFILL_FEATURES,
        LatencyCalibration,
        calibrate_latency,
        latency_path,
        save_latency_model,
    )

    # head and channel selection (cached) stays out of the timed runs
    lm = load_model_from_args(args, calibrate=True)
    config = LatencyCalibration(points=args.points, repeats=args.repeats, seed=args.seed)
    print(f"model: {lm}; fitting its latency model on {config.points} points x {config.repeats} interleaved "
          "repeats ...", flush=True)
    model, _ = calibrate_latency(lm, config, progress=lambda line: print(line, flush=True))
    path = save_latency_model(model, args.out or latency_path(model.key))
    print(f"wrote {path}")
    for phase, names, coef in (("prefill", PREFILL_FEATURES, model.prefill_coef),
                               ("decode step", DECODE_FEATURES, model.decode_coef)):
        print(f"{phase}: " + ", ".join(f"{n}={c:.3g}" for n, c in zip(names, coef, strict=True)))
    for label, err in (("fit points", model.fit_error), ("held-out points", model.holdout)):
        if err is not None:
            print(f"speed-up error on {err.n} {label}: median {err.median_abs_rel_error:.3f}, "
                  f"p90 {err.p90_abs_rel_error:.3f}, max {err.max_abs_rel_error:.3f} (|predicted / measured - 1|)")
    return 0


def cmd_table_build(args: argparse.Namespace) -> int:
    """``dynprune table build``: measure every (prompt, action) once (modelled or live timing) into a Parquet table."""
    from dynprune.latency_model import load_latency_model
    from dynprune.table import build_table
    from dynprune.tasks import load_prompts

    lm = load_model_from_args(args, calibrate=True)
    if args.adapters:
        from dynprune.adapter_files import load_adapters
        from dynprune.adapters import attach_adapters

        attach_adapters(lm, load_adapters(args.adapters, lm))
    if args.healing:  # refuses a healing made for another model, naming both
        from dynprune.healing import attach_healing

        attach_healing(lm, args.healing)
    prompts = load_prompts(args.prompts, split=None if args.split == "all" else args.split)
    if args.limit is not None:
        prompts = prompts[: args.limit]
    latency = load_latency_model(args.latency_model) if args.latency_model else None
    build_table(lm, prompts, args.out, max_new_tokens=args.max_new_tokens, prompts_source=args.prompts,
                cache_file=args.cache_file, memo_file=args.memo, latency_model=latency, flush_every=args.flush_every,
                progress=lambda line: print(line, flush=True), timing=args.timing)
    print(f"wrote {args.out}")
    return 0


def cmd_table_info(args: argparse.Namespace) -> int:
    """``dynprune table info FILE``: what a table holds (model, prompts per split, mean per action)."""
    from dynprune.table import read_table, table_summary

    print(json.dumps(table_summary(read_table(args.file)), indent=2))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report of a run directory."""
    from pathlib import Path

    from dynprune.report import write_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist")
    paths = write_report(run_dir)
    print((run_dir / "report" / "report.txt").read_text())
    print(f"wrote {len(paths)} files to {run_dir / 'report'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``dynprune`` argument parser."""
    parser = argparse.ArgumentParser(prog="dynprune", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run a prompt under a few plans and print a table")
    add_model_args(p)
    p.add_argument("--prompt", default=DEMO_PROMPT)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed generations per plan (median reported)")
    p.add_argument("--json", action="store_true", help="also print the rows as JSON")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("info", help="print a model's geometry")
    add_model_args(p)
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("calibrate", help="measure and cache importance scores")
    add_model_args(p)
    p.add_argument("--n-prompts", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--out", default=None, help="output file (default: the cache)")
    p.add_argument("--latency", action="store_true",
                   help="fit (or refit) the latency model of timing='modelled' instead of importance")
    p.add_argument("--points", type=int, default=48, help="--latency: measured (plan, lengths) points")
    p.add_argument("--repeats", type=int, default=2, help="--latency: interleaved full/plan runs per point")
    p.add_argument("--seed", type=int, default=0, help="--latency: seed of the random plans and lengths")
    p.set_defaults(fn=cmd_calibrate)

    p = sub.add_parser("table", help="reward tables: every (prompt, action) measured once (DynPruneTable-v0)")
    tsub = p.add_subparsers(dest="table_command", required=True)
    t = tsub.add_parser("build", help="measure every action on every prompt (modelled timing) into a Parquet file; "
                                      "resumes an unfinished file")
    add_model_args(t)
    t.add_argument("--out", required=True, help="Parquet file to write (an existing one of the same settings resumes)")
    t.add_argument("--prompts", default="dynprune", help="prompt source (see dynprune.tasks)")
    t.add_argument("--split", default="all", help="train, test or all (the split of each prompt is stored)")
    t.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (as DynPrune-v0's)")
    t.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    t.add_argument("--adapters", default=None, help="adapters file: layer actions replace layers by their adapters")
    t.add_argument("--latency-model", default=None, help="latency model file (default: the cached fit)")
    t.add_argument("--cache-file", default=None, help="JSON-lines cache of the full model's answers")
    t.add_argument("--memo", default=None, help="quality memo file (teacher-forced metrics)")
    t.add_argument("--flush-every", type=int, default=10, help="rewrite the file every N prompts")
    t.add_argument("--timing", choices=("modelled", "live"), default="modelled",
                   help="modelled (teacher-forced quality, latency model) or live (each plan's own answer, "
                        "timed beside the full model)")
    t.add_argument("--healing", default=None, help="healing folder (dynprune heal): pruned plans served healed")
    t.set_defaults(fn=cmd_table_build)
    t = tsub.add_parser("info", help="print what a reward table holds")
    t.add_argument("file")
    t.set_defaults(fn=cmd_table_info)

    p = sub.add_parser("report", help="write report.txt and the plots of a run directory")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)

    # The other commands, this distribution's, from the modules COMMAND_MODULES names (in its order).
    from importlib import import_module

    for entry in COMMAND_MODULES:
        module, function = entry.split(":")
        getattr(import_module(module), function)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dynprune`` command."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return int(args.fn(args) or 0)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        message = str(e)
    except OSError as e:  # a read-only folder, a full disk, a name too long: one line with the path and the remedy
        message = describe_os_error(e)
    if args.verbose:
        traceback.print_exc()
    # one line: the error, the value it is about and what to do (a traceback only with -v)
    print(f"dynprune {args.command}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
