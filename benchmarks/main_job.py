"""The README's main job, measured: wall time and the held-out table it prints.

Runs ``dynprune main`` (train a Double DQN on the embedded model, test it on held-out
prompts, write the report) as the user would, in a subprocess, from an empty cache folder
by default, so the time includes the one-off GGUF conversion and the importance
calibration. Then times loading the model from that converted cache and, in a second empty
cache folder, from the GGUF (the conversion). Writes the run's held-out summary beside the
times.

Run:
    python -m benchmarks.main_job                 # embedded SmolLM2-135M, ~6 min on 2 cores
    python -m benchmarks.main_job --smoke --out /tmp/mj.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness
from dynprune.models import PrunableLM


@dataclass
class Args(harness.Args):
    """Main job: wall time of ``dynprune main`` and its held-out table.

    ``model``, ``device`` and ``seed`` are passed to ``dynprune main``; ``threads`` reaches its
    process (and the load timings') as ``OMP_NUM_THREADS``, which sets torch's thread count.
    """

    out: str = "benchmarks/results/main_job.json"
    fresh_cache: bool = True
    """run with an empty DYNPRUNE_CACHE (conversion and calibration included in the time)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype != "auto":
            raise ValueError(f"dtype {self.dtype!r}: dynprune main has no --dtype; run main_job with dtype auto")


def _time_load(spec: str, device: str, cache: str, env: dict[str, str]) -> float:
    code = (
        "import time; t = time.perf_counter(); from dynprune.models import load_model; "
        f"load_model({spec!r}, device={device!r}); print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**env, "DYNPRUNE_CACHE": cache}, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
    """``dynprune main`` in a subprocess, then the model's load time from its cache and from an empty one."""
    extra = ["--episodes", "8", "--train-prompts", "4", "--test-prompts", "2", "--max-new-tokens", "3",
             "--profile-tokens", "2", "--profile-repeats", "1"] if args.smoke else []
    # smoke: one thread unless --threads says otherwise (a tiny model on two threads of a loaded machine spins:
    # 56 s against 16 s for the same smoke run at load 5 on 2 cores)
    n_threads = 1 if args.threads is None and args.smoke else args.threads
    threads = {} if n_threads is None else {"OMP_NUM_THREADS": str(n_threads)}
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "cache") if args.fresh_cache else os.environ.get("DYNPRUNE_CACHE", "")
        env = {**os.environ, **threads, **({"DYNPRUNE_CACHE": cache} if cache else {})}
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "dynprune.cli", "main", "--model", args.model, "--device", args.device,
               "--seed", str(args.seed), "--run-dir", str(run_dir), *extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        summary = json.loads((run_dir / "test" / "summary.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        load_cached = _time_load(args.model, args.device, cache, env) if cache else None
        load_convert = _time_load(args.model, args.device, str(Path(tmp) / "cache2"), env)
    return {
        "config": config,
        "dynprune_main_s": wall,
        "load_s": {"from_converted_cache": load_cached, "from_empty_cache": load_convert},
        "summary": summary,
        "notes": "dynprune_main_s: `dynprune main` end to end in a subprocess (model load, calibration if the "
                 "cache is empty, training, live held-out evaluation, report). load_s: load_model in a fresh "
                 "process; from_empty_cache includes the one-off GGUF conversion for the embedded model.",
    }


def print_table(result: dict[str, Any]) -> None:
    """The wall and load times, and the held-out table of the run."""
    wall, load = result["dynprune_main_s"], result["load_s"]
    cached = load["from_converted_cache"]
    print(f"dynprune main: {wall:.0f} s; load {load['from_empty_cache']:.1f} s from an empty cache, "
          f"{cached if cached is None else round(cached, 1)} s from the converted cache")
    for name, row in result["summary"].items():
        print(f"  {name:<18} reward {row['mean_reward']:+.3f}  speed-up {100 * row['mean_speedup']:+.1f} %  "
              f"token agreement {row['mean_token_agreement']:.3f}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the flags, run, write the JSON and print the table; return the result."""
    return harness.run(harness.parse_args(Args, argv), measure, model=False, table=print_table)


if __name__ == "__main__":
    main()
