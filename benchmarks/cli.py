"""``dynprune bench NAME|all``: run the benchmark scripts from the ``dynprune`` command.

Every benchmark is a module of this package with a ``main(argv)`` that parses its own
flags (an ``Args`` dataclass, a subclass of :class:`benchmarks.harness.Args`) and writes one
JSON file given by ``--out`` (see :mod:`benchmarks.harness`). This module only dispatches:

    dynprune bench speed_limit                         # benchmarks/results/speed_limit.json
    dynprune bench speed_limit --repeats 5             # flags after the name go to the script
    dynprune bench all --smoke --out-dir /tmp/bench    # every script on tiny-llama, seconds each
    dynprune bench all --device cuda                   # the whole suite on the GPU

``--smoke`` passes ``--smoke`` to the script and always sends its JSON to ``--out-dir``
(default: a new temporary folder), never to ``benchmarks/results``. Without ``--smoke``
the JSON goes to ``--out-dir/<name>.json`` when ``--out-dir`` is given, else to the
script's default (``benchmarks/results/<name>.json``).

:data:`BENCHMARKS` maps each name to its module; a new script is one more entry.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCHMARKS: dict[str, str] = {
    "pruning_overhead": "benchmarks.pruning_overhead",
    "env_throughput": "benchmarks.env_throughput",
    "adapters": "benchmarks.adapters",
    "offline_rl": "benchmarks.offline_rl",
    "main_job": "benchmarks.main_job",
    "policy_headroom": "benchmarks.policy_headroom",
    "speed_limit": "benchmarks.speed_limit",
    "env_cost": "benchmarks.env_cost",
    "latency_model": "benchmarks.latency_model",
    "live_honesty": "benchmarks.live_honesty",
    "table_env": "benchmarks.table_env",
    "table_vs_live": "benchmarks.table_vs_live",
    "memory": "benchmarks.memory",
    "compress": "benchmarks.compress",
    "router": "benchmarks.router",
    "gpu": "benchmarks.gpu",  # measures nothing without CUDA unless --smoke or --models is given
    "healing": "benchmarks.healing",  # needs the healing folders of `dynprune heal` (benchmarks/README.md)
    "kv_cache": "benchmarks.kv_cache",  # KV-cache windows on long prompts; the memory scenario sweep
    "answer": "benchmarks.answer",  # an hour or more: live held-out tables, then every agent x seeds
    "pareto": "benchmarks.pareto",  # last: it draws the compress and router results beside its own points
}
"""Benchmark name -> module with a ``main(argv)``; ``all`` runs them in this order."""


def _accepts(module: Any, flag: str) -> bool:
    """True when the script's ``Args`` dataclass has the field behind ``--flag``."""
    args_cls = getattr(module, "Args", None)
    fields = getattr(args_cls, "__dataclass_fields__", {})
    return flag.lstrip("-").replace("-", "_") in fields


def _has_flag(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def script_argv(module: Any, name: str, extra: Sequence[str], smoke: bool, device: str | None,
                out_dir: Path | None, strict_device: bool = True) -> list[str]:
    """The argv the script ``name`` gets: the pass-through flags plus ``--smoke``, ``--device`` and ``--out``.

    A script without a ``--device`` flag (``main_job`` runs ``dynprune main``, which picks the
    device itself) raises ``ValueError`` under ``strict_device`` (a single benchmark asked to
    run on a device) and is run without the flag otherwise (``all``), with a printed note.
    """
    argv = list(extra)
    if smoke and not _has_flag(argv, "--smoke"):
        argv.append("--smoke")
    if device is not None and not _has_flag(argv, "--device"):
        if _accepts(module, "--device"):
            argv += ["--device", device]
        elif strict_device:
            raise ValueError(f"benchmark {name!r} has no --device flag; run it without --device {device!r}")
        else:
            print(f"== bench {name}: no --device flag, runs on its own device choice (not {device!r})")
    if out_dir is not None and not _has_flag(argv, "--out"):
        argv += ["--out", str(out_dir / f"{name}.json")]
    return argv


def out_path(argv: Sequence[str], module: Any) -> str | None:
    """Where the script writes its JSON: the ``--out`` of ``argv``, else the default of its ``Args.out``."""
    for i, a in enumerate(argv):
        if a == "--out" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--out="):
            return a.split("=", 1)[1]
    fields = getattr(getattr(module, "Args", None), "__dataclass_fields__", {})
    return fields["out"].default if "out" in fields else getattr(module, "DEFAULT_OUT", None)


def run(names: Sequence[str], extra: Sequence[str] = (), smoke: bool = False, device: str | None = None,
        out_dir: str | Path | None = None) -> dict[str, str | None]:
    """Run the benchmarks ``names`` in order; return ``{name: JSON path}``.

    With ``smoke`` and no ``out_dir`` the files go to a new temporary folder.
    """
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; expected one of {sorted(BENCHMARKS)} or 'all'")
    folder = Path(out_dir) if out_dir is not None else None
    if smoke and folder is None:
        folder = Path(tempfile.mkdtemp(prefix="dynprune-bench-smoke-"))
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str | None] = {}
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        argv = script_argv(module, name, extra, smoke, device, folder, strict_device=len(names) == 1)
        print(f"== bench {name}: {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        module.main(argv)
        written[name] = out_path(argv, module)
        print(f"== bench {name}: {time.perf_counter() - t0:.1f} s, wrote {written[name]}", flush=True)
    return written


def cmd_bench(args: argparse.Namespace) -> int:
    """Handler of ``dynprune bench``."""
    extra = list(args.extra)
    # argparse leaves options written after NAME in the remainder: pick ours out of it
    smoke, device, out_dir = args.smoke, args.device, args.out_dir
    rest: list[str] = []
    i = 0
    while i < len(extra):
        a = extra[i]
        if a == "--smoke":
            smoke = True
        elif a in ("--device", "--out-dir") and i + 1 < len(extra):
            if a == "--device":
                device = extra[i + 1]
            else:
                out_dir = extra[i + 1]
            i += 1
        elif a.startswith("--device="):
            device = a.split("=", 1)[1]
        elif a.startswith("--out-dir="):
            out_dir = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    if args.name == "all" and _has_flag(rest, "--out"):
        raise ValueError("bench all writes one file per benchmark: use --out-dir, not --out")
    written = run(names, rest, smoke=smoke, device=device, out_dir=out_dir)
    print("\nresults:")
    for name, path in written.items():
        print(f"  {name:<18} {path}")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``bench`` to the ``dynprune`` sub-command parser."""
    p = sub.add_parser(
        "bench",
        help="run a benchmark script (or all) and write its JSON",
        description="Run benchmarks/<NAME>.py (or all of them in sequence). Flags after NAME that are not "
                    "--smoke / --device / --out-dir are passed to the script (see python -m benchmarks.<NAME> --help).",
    )
    p.add_argument("name", choices=[*BENCHMARKS, "all"], help="benchmark to run, or all")
    p.add_argument("--smoke", action="store_true", help="tiny-llama quick run; JSON to --out-dir or a temp folder")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (passed to every script)")
    p.add_argument("--out-dir", default=None, help="folder for <name>.json (default: each script's own default)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="flags passed through to the script")
    p.set_defaults(fn=cmd_bench)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cli")
    add_commands(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    sys.exit(ns.fn(ns))
