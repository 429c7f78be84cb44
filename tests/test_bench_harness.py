"""benchmarks/harness.py: the shared settings, the smoke guard, and run()'s stamps and files.

Plus the rule the harness exists for: no benchmark script imports another script.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks import harness
from benchmarks.utils import field_docs, parse_args

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SHARED = {"__init__", "cli", "harness", "utils"}
NOT_PORTED: set[str] = set()
"""Scripts not yet on the harness (none now)."""
DEFAULT_OUT = {"gpu": "benchmarks/results/gpu_{device}.json"}
"""Default result files not named ``benchmarks/results/<script>.json`` ({device}: the GPU's name)."""


@dataclass
class Args(harness.Args):
    """A benchmark that counts."""

    n: int = 3
    """how many"""
    out: str = "benchmarks/results/count.json"

    SMOKE = {"n": 2}
    POSITIVE = ("n",)


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
    args = Args(smoke=True, out="/tmp/x.json", n=7)
    assert args.model == "tiny-llama"  # every smoke run is on the tiny random model
    assert args.n == 2 and Args(n=7).n == 7  # the script's SMOKE settings replace the given ones in a smoke run
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        Args(n=0)  # POSITIVE fields are checked by the base


def test_flags_and_help_come_from_the_base_and_the_script() -> None:
    docs = field_docs(Args)
    assert docs["n"] == "how many" and docs["seed"].startswith("seed of the run")
    assert docs["out"].startswith("JSON file to write")  # declared again without a docstring: the base's stays
    args = parse_args(Args, ["--n", "5", "--threads", "none", "--dtype", "float32", "--smoke", "--out", "o.json"])
    assert (args.n, args.threads, args.dtype, args.smoke, args.model) == (2, None, "float32", True, "tiny-llama")


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


def test_checkpoints_write_what_was_measured_before_a_failure(tmp_path: Path) -> None:
    out = tmp_path / "c.json"

    def measure(a: Args, lm: Any, checkpoint: harness.Checkpoint) -> dict[str, Any]:
        checkpoint({"parts": {"first": 1}})
        raise RuntimeError("the second part crashed")

    args = parse_args(Args, ["--out", str(out), "--threads", "1"])
    with pytest.raises(RuntimeError, match="second part"):
        harness.run(args, measure, model=False, checkpoints=True, machine_extra=lambda device: {"gpu": str(device)})
    saved = json.loads(out.read_text())
    assert list(saved) == ["args", "machine", "parts", "wall_s"] and saved["parts"] == {"first": 1}
    assert saved["machine"]["gpu"] == saved["machine"]["device"]  # machine_extra's keys join the machine's
    with pytest.raises(ValueError, match=r"\['machine'\]"):
        harness.run(args, lambda a, lm, checkpoint: checkpoint({"machine": 1}), model=False, checkpoints=True)


def test_run_in_child_returns_the_childs_dict_and_names_a_failure() -> None:
    from benchmarks.utils import run_in_child

    assert run_in_child("json:loads", "[1, 2]", "loads") == [1, 2]  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"(?s)the broken child failed \(exit 1\).*JSONDecodeError"):
        run_in_child("json:loads", "{", "the broken child")  # type: ignore[arg-type]


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
    """Its Args subclass harness.Args (model / device / dtype / threads / seed / out / smoke declared once), its
    entry point is ``main(argv)`` and it hands its measurement to ``harness.run`` (no prologue or JSON of its own)."""
    import importlib
    import inspect

    from benchmarks.cli import BENCHMARKS as REGISTRY

    for name, module_name in REGISTRY.items():
        if name in NOT_PORTED:
            continue
        module = importlib.import_module(module_name)
        assert issubclass(module.Args, harness.Args), name
        assert harness.default_of(module.Args, "out") == DEFAULT_OUT.get(name, f"benchmarks/results/{name}.json")
        assert list(inspect.signature(module.main).parameters) == ["argv"], name
        source = inspect.getsource(module)
        assert "harness.run(" in source, name
        for own in (r"\bwrite_json\(", r"\bmachine_info\(", r"\bfix_threads\(args"):
            assert not re.search(own, source), f"{name} calls {own} itself"


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
