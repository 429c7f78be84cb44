"""Speed limit, env cost, memory and the ``dynprune bench`` command, on the tiny random model.

The numbers of a smoke run mean nothing; these tests check that the scripts run, write the
keys the README tables read, and that the pieces with exact answers (the work model, the
phase clock, the peak-memory reader, the dispatch) give them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importance calibrations go to a temporary cache, not the user's."""
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- speed limit


def test_work_model_by_hand() -> None:
    from benchmarks.utils import work_model

    counts = {"layer_matmul": [10, 10], "attention_width": [1, 1], "lm_head_matmul": 6, "vocab_size": 3,
              "hidden_size": 2}
    # prompt of 2 tokens, 2 new tokens: prefill 2 tokens (context sum 1 + 2 = 3), one decode step at context 3
    full = work_model(counts, prompt_tokens=2, new_tokens=2, skipped=set())
    fixed = 6 + 3 + 2  # lm_head + argmax + final norm, per produced token
    assert full["prefill"] == 2 * (2 * 10 + 2 * 1 * 3) + fixed == 63
    assert full["decode"] == 2 * (10 + 2 * 1 * 3) + fixed == 43
    assert full["total"] == 106 and full["total_fixed"] == 2 * fixed
    half = work_model(counts, prompt_tokens=2, new_tokens=2, skipped={1})
    assert half["total"] == 26 + fixed + 16 + fixed == 64
    bound = full["total"] / half["total"]
    assert 1.0 < bound < 2.0  # below the naive L/(L-k) = 2: the fixed part does not shrink


def test_parse_ks() -> None:
    from benchmarks.utils import parse_ks

    assert parse_ks("1,L/8,L/4,3L/8,L/2", 30) == [1, 3, 7, 11, 15]
    assert parse_ks("L/8, 1", 4) == [1]  # L/8 of 4 rounds to 0, raised to 1; duplicates merge
    with pytest.raises(ValueError, match="'x'"):
        parse_ks("1,x", 30)
    with pytest.raises(ValueError, match="k=30"):
        parse_ks("30", 30)


def test_speed_limit_smoke(tmp_path: Path) -> None:
    from benchmarks.speed_limit import main

    out = tmp_path / "sl.json"
    main(["--smoke", "--out", str(out), "--threads", "1"])
    data = json.loads(out.read_text())
    assert {"args", "machine", "load", "model", "param_counts", "rows", "cuda_measured", "timing"} <= set(data)
    assert data["cuda_measured"] is False and "nothing CUDA was measured" in data["notes"]
    counts = data["param_counts"]
    assert counts["tied_embeddings"] is True and counts["lm_head_matmul"] == counts["embedding_lookup"]
    L = data["model"]["num_layers"]
    assert [r["k"] for r in data["rows"]] == [1, 2]  # tiny-llama, L = 4: 1, L/8 -> 1, L/4 -> 1, 3L/8 -> 1, L/2 -> 2
    for r in data["rows"]:
        assert r["naive"] == pytest.approx(L / (L - r["k"]))
        for part in ("total", "prefill", "decode"):
            p = r[part]
            assert 1.0 < p["bound"] <= r["naive"]
            assert p["speedup"]["n"] == 3 and p["speedup"]["min"] <= p["speedup"]["median"] <= p["speedup"]["max"]
            assert p["measured_over_bound"]["median"] == pytest.approx(p["speedup"]["median"] / p["bound"])
        t = r["total"]  # the time-weighted bound lies between the prefill and the decode bounds
        lo, hi = sorted((r["prefill"]["bound"], r["decode"]["bound"]))
        assert lo - 1e-9 <= t["bound_time_weighted"] <= hi + 1e-9
    assert (tmp_path / "sl.png").stat().st_size > 0


# ----------------------------------------------------------------------------- env cost


def test_phase_clock_outermost_owns_time() -> None:
    from benchmarks.env_cost import PhaseClock

    clock = PhaseClock()
    inner = clock.timed(lambda: sum(range(1000)), lambda r, dt: {"scoring": dt})
    outer = clock.timed(lambda: inner() + inner(), lambda r, dt: {"baseline_miss": dt})
    inner()
    outer()
    step = clock.take(10.0)
    assert set(step) == {"scoring", "baseline_miss", "other"}  # the inner calls inside outer add nothing
    assert step["other"] == pytest.approx(10.0 - step["scoring"] - step["baseline_miss"])
    assert clock.take(0.0) == {"other": 0.0}  # take starts a new step


def test_env_cost_smoke(tmp_path: Path) -> None:
    from benchmarks.env_cost import PHASES, main

    out = tmp_path / "ec.json"
    # scenario telemetry: the profile is never refreshed for CPU load, so the steady state is exact
    main(["--smoke", "--out", str(out), "--threads", "1", "--telemetry", "scenario"])
    data = json.loads(out.read_text())
    assert {"args", "machine", "load", "steps", "exploration", "cuda_measured", "notes"} <= set(data)
    steps = data["steps"]
    assert steps["naive"]["steps_per_s"]["n"] == 2  # one naive block per repeat
    for mode in ("live", "profiled", "modelled"):
        assert steps[mode]["steady"]["over_naive"]["n"] == 2
        assert steps[mode]["cold"]["steps_per_s"] > 0
        # the cold pass computes every baseline; the steady blocks find them cached
        assert "baseline_miss" in steps[mode]["cold"]["breakdown"]
        assert "baseline_miss" not in steps[mode]["steady"]["breakdown"]
        assert "baseline_hit" in steps[mode]["steady"]["breakdown"]
        for part in ("cold", "steady"):
            b = steps[mode][part]["breakdown"]
            assert set(b) <= set(PHASES)
            assert sum(v["share"] for v in b.values()) == pytest.approx(1.0)
    live_phases = set(steps["live"]["steady"]["breakdown"])
    assert {"prefill", "decode", "paired_switch", "telemetry", "quality_lookup"} <= live_phases  # timed side by side
    # modelled: the teacher-forced pass once per (prompt, plan) in the cold pass, then memo and model lookups only
    assert "scoring" in steps["modelled"]["cold"]["breakdown"]
    modelled = set(steps["modelled"]["steady"]["breakdown"])
    assert {"quality_lookup", "latency_model", "baseline_hit"} <= modelled
    assert not {"scoring", "prefill", "decode", "apply"} & modelled
    assert data["modelled_over_naive"] == steps["modelled"]["steady"]["over_naive"]["median"] > 1
    assert set(data["met"]) == set(data["targets"]) == {"modelled_over_naive"}
    # profiled: cells measured in the cold pass, pooled once more (smoke: 2 rounds), then only looked up
    assert "profile_measure" in steps["profiled"]["cold"]["breakdown"]
    assert steps["profiled"]["pooling"]["passes"] == 1
    assert "profile_measure" in steps["profiled"]["pooling"]["breakdown"]
    assert steps["profiled"]["steady"]["profile_measurements_in_steady_state"] == 0
    assert "profile_measure" not in steps["profiled"]["steady"]["breakdown"]
    assert "decode" not in steps["profiled"]["steady"]["breakdown"]  # no generation in a trusted profiled step
    for mode in ("live", "profiled", "modelled"):
        e = data["exploration"][mode]
        assert e["configs_per_s"]["n"] == 2 and e["overall_configs_per_s"] > 0
        assert len(e["configs_per_s_by_prompt"]) == 2 and e["configs_per_s_after_pooling"] is None
    assert "paired_switch" in data["exploration"]["live"]["breakdown_per_config"]
    assert (tmp_path / "ec.png").stat().st_size > 0


# ----------------------------------------------------------------------------- memory


def test_peak_during_sees_an_allocation() -> None:
    from benchmarks.memory import peak_during

    def allocate() -> None:
        block = bytearray(64 << 20)  # 64 MiB, touched so it is resident
        block[:: 4096] = b"x" * len(block[:: 4096])
        del block

    r = peak_during(allocate)
    assert r["delta_rss"] >= 48 << 20, r
    assert r["peak_rss"] >= r["rss_before"]


def test_memory_smoke_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole script with its children run in this process (fresh processes cost ~5-30 s each here)."""
    import benchmarks.memory as mem

    kinds = []

    def in_process(kind: str, spec: dict) -> dict:
        kinds.append(kind)
        return mem.CHILDREN[kind](spec)

    monkeypatch.setattr(mem, "run_child", in_process)
    out = tmp_path / "mem.json"
    mem.main(["--smoke", "--actions", "none,layers-25%", "--out", str(out), "--threads", "1", "--dqn-steps", "4",
              "--offline-steps", "3", "--sweep-prompts", "1"])
    assert kinds == ["plan", "plan", "dqn", "offline"]
    data = json.loads(out.read_text())
    assert set(data["plans"]) == {"none", "layers-25%"}
    assert set(data["training"]) == {"ddqn (online, LLM in process)", "d3rlpy bc (offline)"}
    for r in [*data["plans"].values(), *data["training"].values()]:
        assert r["runs"] == 1
        assert r["peak_rss_mib"]["median"] >= r["rss_before_mib"]["median"] > 50  # torch and a model loaded
    assert "peak_over_none_mib" in data["plans"]["layers-25%"]
    assert data["cuda_measured"] is False and "nothing CUDA was measured" in data["notes"]
    assert (tmp_path / "mem.png").stat().st_size > 0
    with pytest.raises(ValueError, match="heads-99%"):
        mem.main(["--smoke", "--actions", "heads-99%", "--out", str(out)])


@pytest.mark.slow
def test_memory_child_process() -> None:
    """One real fresh-process measurement (the script's path): a loaded tiny model, its peak after the work."""
    from benchmarks.memory import run_child

    r = run_child("plan", {"model": "tiny-llama", "device": "cpu", "dtype": "auto", "threads": 1, "seed": 0,
                           "max_new_tokens": 3, "action": "layers-25%", "prompt": "Hello there"})
    assert r["device"] == "cpu" and r["peak_rss"] >= r["rss_loaded"] > 50 << 20
    assert r["method"].startswith("VmHWM")  # Linux: the exact peak mark, not sampling


# ----------------------------------------------------------------------------- dynprune bench


def test_registry_modules_have_main() -> None:
    import importlib
    import inspect

    from benchmarks.cli import BENCHMARKS

    for name, module in BENCHMARKS.items():
        mod = importlib.import_module(module)
        assert callable(mod.main), name
        assert len(inspect.signature(mod.main).parameters) == 1, name


def test_bench_command_dispatch(tmp_path: Path) -> None:
    from dynprune.cli import main

    assert main(["bench", "speed_limit", "--smoke", "--out-dir", str(tmp_path), "--threads", "1"]) == 0
    data = json.loads((tmp_path / "speed_limit.json").read_text())
    assert data["args"]["smoke"] is True and data["args"]["threads"] == 1  # --threads passed through
    assert (tmp_path / "speed_limit.png").is_file()


def test_bench_argv_and_errors(tmp_path: Path) -> None:
    import benchmarks.env_throughput as et
    import benchmarks.main_job as mj
    from benchmarks.cli import out_path, run, script_argv

    argv = script_argv(et, "env_throughput", ["--steps", "2"], smoke=True, device="cpu", out_dir=tmp_path)
    assert argv == ["--steps", "2", "--smoke", "--device", "cpu", "--out", str(tmp_path / "env_throughput.json")]
    # main_job passes --device on to `dynprune main`
    assert script_argv(mj, "main_job", [], smoke=False, device="cuda", out_dir=None) == ["--device", "cuda"]
    # a script without a --device flag: an error for it alone, skipped (with a note) within `all`
    no_device = type("M", (), {"Args": type("Args", (), {"__dataclass_fields__": {"out": None}})})
    with pytest.raises(ValueError, match="plain"):
        script_argv(no_device, "plain", [], smoke=False, device="cuda", out_dir=None)
    assert script_argv(no_device, "plain", [], smoke=False, device="cuda", out_dir=None, strict_device=False) == []
    with pytest.raises(ValueError, match="nope"):
        run(["nope"])
    # the JSON path: --out when given, else the default of the script's Args.out
    assert out_path(["--out", "x.json"], et) == "x.json"
    assert out_path([], et) == "benchmarks/results/env_throughput.json"


def test_bench_all_rejects_out() -> None:
    from dynprune.cli import main

    assert main(["bench", "all", "--smoke", "--out", "x.json"]) == 2  # a ValueError, reported as exit 2
