"""benchmarks/gpu.py on the CPU: the smoke run, and the pieces of the GPU path that have exact answers.

The smoke run's timings mean nothing; it checks that every part that can run without CUDA runs
(models, env, compile) and that the CUDA-only parts are recorded as skipped, not dropped. The
static-cache decode step that the CUDA-graph part captures is checked eagerly against the
dynamic-cache decode, so a transformers API change shows up here and not on the lent GPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing the benchmark writes may land in the user's cache."""
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))


def test_gpu_smoke_on_cpu(tmp_path: Path) -> None:
    from benchmarks.gpu import CUDA_ONLY, main

    main(["--smoke", "--device", "cpu", "--threads", "1", "--out", str(tmp_path / "gpu_{device}.json")])
    data = json.loads((tmp_path / "gpu_cpu.json").read_text())  # {device} -> cpu
    assert (tmp_path / "gpu_cpu.png").stat().st_size > 0
    assert data["machine"]["gpu"] == {"cuda": False} and data["timing"] == "time.perf_counter"
    for part in CUDA_ONLY:
        assert data["parts"][part]["skipped"].startswith("needs CUDA")
    assert data["parts"]["models"]["measured"] == ["tiny-llama-config", "tiny-qwen2-config"]
    for name, entry in data["models"].items():
        plans = {p["key"]: p for p in entry["plans"]}
        assert list(plans) == ["full", "skip-1", "skip-2", "heads-uniform", "heads-ragged", "ffn-25", "ffn-50"], name
        L = entry["architecture"]["layers"]
        assert plans["heads-uniform"]["ragged_layers"] == 0 and plans["heads-ragged"]["ragged_layers"] == L
        ops = {"layer_skip", "adapter", "heads-uniform", "ffn-25", "ffn-25_cold_build"}
        assert ops <= set(entry["apply_restore_ms"])
        for p in entry["plans"]:
            assert set(p["batches"]) == {"1", "2"}
            for cell in p["batches"].values():
                assert cell["total"]["speedup"]["n"] == 2 and cell["total"]["speedup"]["median"] > 0
                assert cell["peak_vram_gib"] is None  # no CUDA, no VRAM figure
        for k in (1, 2):  # the skip bound sits between 1 and the naive L / (L - k)
            bound = plans[f"skip-{k}"]["batches"]["1"]["total"]["bound"]
            assert 1.0 < bound < L / (L - k)
        assert plans["full"]["batches"]["1"]["total"]["bound"] == 1.0
    env = data["parts"]["env"]
    for timing in ("live", "profiled"):
        assert env[timing]["steps_per_s"] > 0
        steps = env[timing]["steps"]
        assert len(steps) == 4 and {st["action"] for st in steps} <= set(env[timing]["warm_step_ms_by_action"])
        warm = [st for st in steps if not st["cache_miss"] and st["action"] != "none"]
        assert env[timing]["steady_pruning_steps"] == len(warm)
        assert env[timing]["gpu_fields_present"] is False  # a CPU model: the GPU fields are -1
        assert env[timing]["observation_last"]["vram_free_frac"] == -1.0
    latency = data["parts"]["latency"]  # measured, or skipped where dynprune.latency_model is absent
    assert "error" not in latency
    assert "skipped" in latency or (latency["points"] == 8 and latency["holdout_error"]["n"] == 2)
    calls = data["parts"]["compile"]["calls"]
    assert [c["plan"] for c in calls] == ["full", "skip-1", "full"]
    assert calls[0]["graphs_compiled"] >= 1 and calls[1]["graphs_compiled"] >= 1  # a new plan compiles a graph
    assert calls[2]["graphs_compiled"] == 0  # a plan seen before reuses its graph
    assert all(c["max_abs_diff_vs_eager"] < 1e-4 for c in calls)  # the skip did reach the compiled graph
    assert {r["model"] for r in data["summary"]} == {"tiny-llama-config", "tiny-qwen2-config"}


def test_budget_skips_parts_and_records_why(tmp_path: Path) -> None:
    from benchmarks.gpu import main

    out = tmp_path / "g.json"
    main(["--smoke", "--device", "cpu", "--budget-s", "1", "--parts", "models,env,compile", "--out", str(out)])
    data = json.loads(out.read_text())
    assert all("over the time budget" in e["skipped"] for e in data["models"].values())
    assert "over the time budget" in data["parts"]["env"]["skipped"]
    assert "over the time budget" in data["parts"]["compile"]["skipped"]


def test_without_cuda_the_real_run_measures_nothing(tmp_path: Path) -> None:
    from benchmarks.gpu import main

    out = tmp_path / "g.json"
    assert main(["--device", "cpu", "--out", str(out)]) == {"skipped": "no CUDA device"}
    assert not out.exists()


def test_args_errors() -> None:
    from benchmarks.gpu import Args

    with pytest.raises(ValueError, match="llama-9b"):
        Args(models="llama-9b")
    with pytest.raises(ValueError, match="warp"):
        Args(parts="models,warp")
    with pytest.raises(ValueError, match="compile_plans"):
        Args(compile_plans="full,adapters")
    with pytest.raises(ValueError, match="batches"):
        Args(batches="0")


def test_head_plans_are_group_uniform_or_ragged() -> None:
    from benchmarks.gpu import Args, build, calibrate_for_timing, head_removed_per_group, timing_plans

    lm = build("tiny-llama-config", torch.device("cpu"), torch.float32, seed=0)
    calibrate_for_timing(lm, n_prompts=2)
    plans = {p.key: p.plan for p in timing_plans(lm, Args(smoke=True))}
    g = lm.geometry  # 8 query heads over 2 KV groups: a quarter of each group is 1 head
    assert head_removed_per_group(g, 0.25) == 1
    assert dict(plans["heads-uniform"].heads) == {i: 6 for i in range(g.num_layers)}
    for i in range(g.num_layers):
        uniform = lm.head_slice(i, 6)
        assert not uniform.ragged and uniform.num_key_value_groups == 3 and uniform.kept_groups == (0, 1)
        assert lm.head_slice(i, 7).ragged
    assert dict(plans["ffn-25"].ffn) == {i: 96 for i in range(g.num_layers)}  # 128 - 32: small widths unaligned


def test_ffn_keep_aligns_real_widths() -> None:
    from benchmarks.gpu import ffn_keep

    assert ffn_keep(8192, 0.25) == 6144
    assert ffn_keep(1536, 0.25) == 1152
    assert ffn_keep(4864, 0.25) == 3648 - 3648 % 64 == 3648  # 4864 - 1216, a multiple of 64
    assert ffn_keep(14336, 0.3) == (14336 - 4301) // 64 * 64
    assert ffn_keep(128, 0.25) == 96


def test_plan_counts_remove_the_sliced_matmuls() -> None:
    from benchmarks.gpu import build, plan_counts
    from benchmarks.utils import param_counts
    from dynprune.plan import PruningPlan

    lm = build("tiny-llama-config", torch.device("cpu"), torch.float32, seed=0)
    g, counts = lm.geometry, param_counts(lm)
    h, d = g.hidden_size, g.head_dim
    plan = PruningPlan(heads={0: 6}, ffn={1: 100})
    sliced = plan_counts(counts, g, plan)
    assert sliced["layer_matmul"][0] == counts["layer_matmul"][0] - 2 * h * 2 * d  # q rows and o columns of 2 heads
    assert sliced["attention_width"][0] == 6 * d
    assert sliced["layer_matmul"][1] == counts["layer_matmul"][1] - 3 * h * 28
    assert sliced["layer_matmul"][2:] == counts["layer_matmul"][2:]
    # the matmul parameters kept match the plan's own kept fraction of linear work (lm_head included)
    kept = (sum(sliced["layer_matmul"]) + counts["lm_head_matmul"]) / (
        sum(counts["layer_matmul"]) + counts["lm_head_matmul"])
    assert kept == pytest.approx(plan.kept_fraction(g))


def test_two_four_mask() -> None:
    from benchmarks.gpu import two_four_mask

    w = torch.randn(8, 16)
    m = two_four_mask(w)
    groups = m.reshape(8, 4, 4)
    assert ((groups != 0).sum(-1) == 2).all()  # exactly two of every four inputs kept
    kept_abs = groups.abs().sum(-1)
    assert torch.allclose(kept_abs, w.reshape(8, 4, 4).abs().topk(2, dim=-1).values.sum(-1))  # the largest two


@pytest.mark.parametrize("plan_kind", ["full", "skip", "ffn"])
def test_static_decode_step_matches_the_dynamic_cache(plan_kind: str) -> None:
    from transformers import DynamicCache

    from benchmarks.gpu import build, calibrate_for_timing, static_decode_step
    from dynprune.generation import forward_with_cache
    from dynprune.plan import PruningPlan

    lm = build("tiny-llama-config", torch.device("cpu"), torch.float32, seed=0)
    calibrate_for_timing(lm, n_prompts=2)
    plan = {"full": PruningPlan(), "skip": PruningPlan(skip=[2]), "ffn": PruningPlan(ffn={1: 64})}[plan_kind]
    prompt = torch.randint(0, lm.geometry.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1))
    with lm.apply(plan), torch.inference_mode():
        step, _ = static_decode_step(lm, prompt, extra=4)
        static = step()
        for _ in range(6):  # more calls than the cache has free slots: the step rewrites the same slot
            again = step()
        cache = DynamicCache(config=lm.model.config)
        first = forward_with_cache(lm.model, prompt, cache, logits_to_keep=1)
        token = first[:, -1:].argmax(-1)
        dynamic = forward_with_cache(lm.model, token, cache, logits_to_keep=1)
    torch.testing.assert_close(static, dynamic, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, static)


def test_batches_past_the_budget_are_recorded_and_drawn(tmp_path: Path) -> None:
    from benchmarks.gpu import Args, Budget, build, calibrate_for_timing, headline, measure_plans, plot, timing_plans

    args = Args(smoke=True)
    lm = build("tiny-llama-config", torch.device("cpu"), torch.float32, seed=0)
    calibrate_for_timing(lm, n_prompts=2)
    plans = timing_plans(lm, args)
    rows = measure_plans(lm, plans, args, Budget(1e-9))  # no time left: every batch size skipped
    assert all("over the time budget" in cell["skipped"] for row in rows for cell in row["batches"].values())
    entry = {"architecture": {"layers": 4}, "parameters": 1, "apply_restore_ms": {"layer_skip": {"median": 0.1}},
             "plans": rows}
    result = {"models": {"tiny-llama-config": entry}, "parts": {}, "machine": {}}
    assert headline(result) == [{"model": "tiny-llama-config", "parameters_b": 1e-9, "apply_restore_skip_ms": 0.1}]
    assert plot(result, tmp_path / "p.png").stat().st_size > 0


def test_merge_fills_what_earlier_runs_skipped(tmp_path: Path) -> None:
    from benchmarks.gpu import main

    machine = {"device_name": "GPU X", "date": "2026-11-30"}
    first = {"args": {"parts": "all"}, "machine": machine, "wall_s": 400.0,
             "models": {"m": {"skipped": "over the time budget"}},
             "parts": {"ceilings": {"copy_gb_per_s": 1.0}, "env": {"skipped": "over the time budget"}}}
    second = {"args": {"parts": "env"}, "machine": {**machine, "date": "2026-11-30b"}, "wall_s": 100.0,
              "models": {}, "parts": {"env": {"steps_per_s": 2.0}, "ceilings": {"skipped": "not asked"}}}
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, run in zip(paths, (first, second), strict=True):
        path.write_text(json.dumps(run))
    out = tmp_path / "m.json"
    merged = main(["--from-json", ",".join(map(str, paths)), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(merged))
    assert merged["parts"] == {"ceilings": {"copy_gb_per_s": 1.0}, "env": {"steps_per_s": 2.0}}
    assert merged["models"] == {"m": {"skipped": "over the time budget"}}  # nothing measured it later
    assert [m["file"] for m in merged["merged_from"]] == ["a.json", "b.json"]
    assert (tmp_path / "m.png").stat().st_size > 0
    second["machine"] = {"device_name": "GPU Y"}
    paths[1].write_text(json.dumps(second))
    with pytest.raises(ValueError, match="different devices"):
        main(["--from-json", ",".join(map(str, paths)), "--out", str(out)])
