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
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.utils import machine_info, parse_args, write_json

DEFAULT_OUT = "benchmarks/results/main_job.json"


@dataclass
class Args:
    """Main job: wall time of ``dynprune main`` and its held-out table."""

    model: str = "smollm2-135m"
    """model spec passed to ``dynprune main``"""
    fresh_cache: bool = True
    """run with an empty DYNPRUNE_CACHE (conversion and calibration included in the time)"""
    out: str = DEFAULT_OUT
    """output JSON"""
    smoke: bool = False
    """tiny-llama, 8 episodes, 2 test prompts (for the test suite); needs --out"""

    def __post_init__(self) -> None:
        if self.smoke and self.out == DEFAULT_OUT:  # never overwrite the real results with a smoke run
            raise ValueError("--smoke needs --out PATH (the real results file is not overwritten by a smoke run)")


def _time_load(spec: str, cache: str) -> float:
    code = (
        "import time; t = time.perf_counter(); from dynprune.models import load_model; "
        f"load_model({spec!r}, device='cpu'); print(time.perf_counter() - t)"
    )
    env = {**os.environ, "DYNPRUNE_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return and write the JSON."""
    args = parse_args(Args, argv)
    extra = ["--episodes", "8", "--train-prompts", "4", "--test-prompts", "2", "--max-new-tokens", "3",
             "--profile-tokens", "2", "--profile-repeats", "1"] if args.smoke else []
    model = "tiny-llama" if args.smoke else args.model
    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "cache") if args.fresh_cache else os.environ.get("DYNPRUNE_CACHE", "")
        env = {**os.environ, **({"DYNPRUNE_CACHE": cache} if cache else {})}
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "dynprune.cli", "main", "--model", model, "--run-dir", str(run_dir), *extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        summary = json.loads((run_dir / "test" / "summary.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())
        load_cached = _time_load(model, cache) if cache else None
        load_convert = _time_load(model, str(Path(tmp) / "cache2"))
    result = {
        "args": asdict(args),
        "machine": machine_info("cpu"),
        "config": config,
        "wall_s": wall,
        "load_s": {"from_converted_cache": load_cached, "from_empty_cache": load_convert},
        "summary": summary,
        "notes": "wall_s: `dynprune main` end to end in a subprocess (model load, calibration if the cache is "
                 "empty, training, live held-out evaluation, report). load_s: load_model in a fresh process; "
                 "from_empty_cache includes the one-off GGUF conversion for the embedded model.",
    }
    write_json(result, args.out)
    print(f"dynprune main: {wall:.0f} s; load {load_convert:.1f} s from an empty cache, "
          f"{load_cached if load_cached is None else round(load_cached, 1)} s from the converted cache")
    for name, row in summary.items():
        print(f"  {name:<18} reward {row['mean_reward']:+.3f}  speed-up {100 * row['mean_speedup']:+.1f} %  "
              f"fidelity {row['mean_fidelity']:.3f}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
