"""benchmarks/harness.py: the shared settings, the smoke guard, and run()'s stamps and files.

Plus the rule the harness exists for: no benchmark script imports another script.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks import harness
from benchmarks.utils import field_docs, parse_args

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SHARED = {"__init__", "cli", "harness", "utils"}
NOT_PORTED = {"env_cost", "gpu", "latency_model", "healing", "table_env", "live_honesty", "table_vs_live"}
"""Scripts whose owners move them onto the harness themselves (they still import other scripts' helpers)."""


@dataclass
class Args(harness.Args):
    """A benchmark that counts."""

    out: str = "benchmarks/results/count.json"
    n: int = 3
    """how many"""


def count(args: Args, lm: Any) -> dict[str, Any]:
    return {"lm": lm, "values": list(range(args.n))}


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))


def test_smoke_guard_and_common_checks() -> None:
    with pytest.raises(ValueError, match="--smoke needs --out"):
        Args(smoke=True)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        Args(threads=0)
    with pytest.raises(ValueError, match="out is empty"):
        Args(out="")
    args = Args(smoke=True, out="/tmp/x.json")
    assert args.model == "tiny-llama"  # every smoke run is on the tiny random model
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        Args(n=0).require_positive("n")


def test_flags_and_help_come_from_the_base_and_the_script() -> None:
    docs = field_docs(Args)
    assert docs["n"] == "how many" and docs["seed"].startswith("seed of the run")
    assert docs["out"].startswith("JSON file to write")  # declared again without a docstring: the base's stays
    args = parse_args(Args, ["--n", "5", "--threads", "none", "--dtype", "float32", "--smoke", "--out", "o.json"])
    assert (args.n, args.threads, args.dtype, args.smoke, args.model) == (5, None, "float32", True, "tiny-llama")


def test_run_stamps_writes_and_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "count.json"
    drawn: list[Path] = []

    def draw(result: dict[str, Any], path: Path) -> None:
        assert path.suffix == ".png" and path.parent.name.startswith(".draft-")  # a draft beside the target
        path.write_bytes(b"png")
        drawn.append(path)

    result = harness.run(parse_args(Args, ["--out", str(out), "--n", "2", "--threads", "1"]), count, model=False,
                         table=lambda r: print("TABLE", r["values"]), files={"_plot.png": draw})
    assert list(result) == ["args", "machine", "lm", "values", "wall_s"]
    assert result["lm"] is None and result["values"] == [0, 1] and result["wall_s"] > 0
    assert result["args"]["n"] == 2 and result["machine"]["torch_threads"] == 1
    assert "load_average_1m_end" in result["machine"]
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert (tmp_path / "sub" / "count_plot.png").read_bytes() == b"png" and not drawn[0].exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["count.json", "count_plot.png"]  # no draft left
    printed = capsys.readouterr().out
    assert "TABLE [0, 1]" in printed and f"wrote {out}, {tmp_path / 'sub' / 'count_plot.png'}" in printed


def test_run_loads_the_model_and_refuses_stamp_keys(tmp_path: Path) -> None:
    args = parse_args(Args, ["--smoke", "--out", str(tmp_path / "c.json"), "--threads", "1"])
    seen = {}

    def measure(a: Args, lm: Any) -> dict[str, Any]:
        seen["layers"] = lm.geometry.num_layers
        return {"wall_s": 1.0}

    with pytest.raises(ValueError, match=r"\['wall_s'\]"):
        harness.run(args, measure)
    assert seen["layers"] == 4  # tiny-llama, loaded from args.model
    assert not (tmp_path / "c.json").exists()  # nothing written when the measurement is refused


def test_a_failing_writer_leaves_no_file(tmp_path: Path) -> None:
    def broken(result: dict[str, Any], path: Path) -> None:
        path.write_bytes(b"half")
        raise RuntimeError("plot failed")

    with pytest.raises(RuntimeError, match="plot failed"):
        harness.save({"x": 1}, tmp_path / "r.json", files={".png": broken})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            if node.module == "benchmarks":  # from benchmarks import x
                names.update(f"benchmarks.{a.name}" for a in node.names)
    return names


def test_no_script_imports_another_script() -> None:
    scripts = {p.stem: p for p in BENCHMARKS.glob("*.py") if p.stem not in SHARED}
    offenders = {}
    for name, path in scripts.items():
        if name in NOT_PORTED:
            continue
        others = {m for m in _imported_modules(path) if m.startswith("benchmarks.")
                  and m.split(".")[1] not in SHARED}
        if others:
            offenders[name] = sorted(others)
    assert offenders == {}


def test_every_ported_script_runs_on_the_harness() -> None:
    import importlib

    from benchmarks.cli import BENCHMARKS as REGISTRY

    for name, module_name in REGISTRY.items():
        if name in NOT_PORTED:
            continue
        module = importlib.import_module(module_name)
        assert issubclass(module.Args, harness.Args), name
        assert harness.default_of(module.Args, "out") == f"benchmarks/results/{name}.json", name


def test_every_script_with_a_model_shares_the_common_args() -> None:
    """model / device / dtype / threads / seed / out / smoke are declared once (harness.Args), also by the scripts
    that still write their own JSON; gpu and healing build their own models, table_env loads none."""
    import importlib

    from benchmarks.cli import BENCHMARKS as REGISTRY

    for name, module_name in REGISTRY.items():
        if name in {"gpu", "healing", "table_env"}:
            continue
        args = importlib.import_module(module_name).Args
        assert issubclass(args, harness.Args), name
        assert harness.default_of(args, "out") == f"benchmarks/results/{name}.json", name


def test_policy_headroom_default_sweep_is_offline_rl_default() -> None:
    from benchmarks import offline_rl, policy_headroom
    from benchmarks.utils import sweep_logs_dir

    o = offline_rl.Args()
    expected = sweep_logs_dir(o.model, o.reward, o.timing, o.train_prompts, o.max_new_tokens, o.seed)
    p = policy_headroom.OFFLINE_RL_SWEEP
    assert sweep_logs_dir("smollm2-135m", seed=0, **p) == expected


@pytest.mark.slow  # three fresh model processes and a tiny latency fit: ~30 s on an idle 2-core CPU
def test_kv_cache_smoke(tmp_path: Path) -> None:
    """benchmarks/kv_cache.py end to end on tiny-llama: every action beside the full model, the sweep, the load."""
    from benchmarks import kv_cache

    out = tmp_path / "kv.json"
    result = kv_cache.main(["--smoke", "--out", str(out), "--threads", "1"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert list(result["actions"]) == ["none", "kv-50%", "kv-w256"]
    none, half = result["actions"]["none"], result["actions"]["kv-50%"]
    assert half["kv_bytes_held_max_mib"]["median"] < none["kv_bytes_held_max_mib"]["median"]
    assert half["kv_fraction_counted"]["median"] < 0.6 and none["kv_fraction_counted"]["median"] == 1.0
    for key in ("speedup", "prefix_fidelity", "token_agreement", "peak_rss_over_loaded_mib"):
        assert half[key] is not None
    for reward in ("accuracy_efficiency", "casrap"):
        sweep = result["sweep"][reward]
        assert set(sweep["best_idle"]) == {p["id"] for p in result["prompts"]}
        idle = sweep["scenarios"]["idle"][0]["actions"]
        assert all(a["memory_term"] == 0.0 for a in idle.values())
    assert "load_average" in json.dumps(result["machine_load_start"])
