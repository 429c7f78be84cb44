"""The latency model, the quality memo, modelled timing and the honest live step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dynprune.latency_model import (
    DECODE_FEATURES,
    PREFILL_FEATURES,
    LatencyCalibration,
    LatencyKey,
    LatencyModel,
    fit_coefficients,
    fit_latency_model,
    load_latency_model,
    load_or_calibrate_latency,
    nnls,
    plan_shapes,
    save_latency_model,
)
from dynprune.plan import PruningPlan
from dynprune.types import LatencyPoint, PlanShapes


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Latency models, importance and memos go to a temporary cache."""
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ----------------------------------------------------------------------------- fitting


def test_nnls_clips_what_least_squares_makes_negative() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    b = np.array([2.0, 1.0, 0.0])  # unconstrained: x = (2, -1)
    np.testing.assert_allclose(np.linalg.lstsq(a, b, rcond=None)[0], [2.0, -1.0], atol=1e-12)
    x = nnls(a, b)
    assert (x >= 0).all()
    np.testing.assert_allclose(x, [1.0, 0.0], atol=1e-12)  # best non-negative fit: the mean, slope 0
    rng = np.random.default_rng(0)
    a = rng.random((40, 6))
    truth = np.array([0.5, 0.0, 2.0, 0.0, 1.0, 3.0])
    np.testing.assert_allclose(nnls(a, a @ truth), truth, atol=1e-10)


def _synthetic_points(rng: np.random.Generator, pre: np.ndarray, dec: np.ndarray, loads: np.ndarray) -> list:
    """Points whose times are exactly load * features . coefficients."""
    from dynprune.latency_model import decode_features, mean_context, prefill_features

    full = PlanShapes(layers=30, attn_params=30_000_000, ffn_params=80_000_000, q_width=17_000, kv_width=6_000)
    points = []
    for load in loads:
        layers = int(rng.integers(10, 30))
        shapes = PlanShapes(
            layers=layers, attn_params=int(rng.integers(10, 30)) * 1_000_000,
            ffn_params=int(rng.integers(20, 80)) * 1_000_000, q_width=int(rng.integers(5_000, 17_000)),
            kv_width=int(rng.integers(2_000, 6_000)), ragged_layers=int(rng.integers(0, 6)),
            ragged_width=int(rng.integers(0, 4_000)), adapter_layers=int(rng.integers(0, 4)),
            adapter_params=int(rng.integers(0, 300_000)),
        )
        n, big_n = int(rng.integers(4, 300)), int(rng.integers(2, 40))

        def run(s: PlanShapes, n: int = n, big_n: int = big_n, load: float = load) -> tuple[float, float]:
            return (load * float(prefill_features(s, n) @ pre),
                    load * (big_n - 1) * float(decode_features(s, mean_context(n, big_n)) @ dec))

        points.append(LatencyPoint("synthetic", {}, full, shapes, n, big_n, (run(full),), (run(shapes),)))
    return points


def test_fit_recovers_known_coefficients() -> None:
    """Exact synthetic times: the fit gives back the coefficients that made them, zeros included."""
    rng = np.random.default_rng(1)
    pre_scale = np.array([1e-3, 1e-6, 1e-4, 1e-7, 1e-10, 1e-10, 1e-12, 1e-5, 1e-9, 1e-5, 1e-10])
    dec_scale = np.array([1e-3, 1e-7, 1e-4, 1e-10, 1e-10, 1e-11, 1e-11, 1e-5, 1e-10, 1e-5, 1e-10])
    pre = rng.uniform(0.5, 2.0, len(PREFILL_FEATURES)) * pre_scale
    dec = rng.uniform(0.5, 2.0, len(DECODE_FEATURES)) * dec_scale
    pre[3] = 0.0  # a cost the machine does not have must come back as zero, not as a negative
    points = _synthetic_points(rng, pre, dec, np.ones(80))
    got_pre, got_dec, loads = fit_coefficients(points, per_point_load=False)
    np.testing.assert_allclose(got_pre, pre, rtol=1e-6, atol=1e-16)
    np.testing.assert_allclose(got_dec, dec, rtol=1e-6, atol=1e-16)
    assert (loads == 1).all()

    # every point under its own load (median 1): the alternating fit recovers coefficients and loads
    true_loads = np.exp(rng.normal(0, 0.3, 81))
    true_loads /= np.median(true_loads)
    points = _synthetic_points(rng, pre, dec, true_loads)
    got_pre, got_dec, loads = fit_coefficients(points, per_point_load=True, iterations=200)
    np.testing.assert_allclose(loads, true_loads, rtol=1e-4)
    assert np.all(np.abs(got_pre - pre) <= 1e-3 * pre + 1e-4 * pre_scale)
    assert np.all(np.abs(got_dec - dec) <= 1e-3 * dec + 1e-4 * dec_scale)
    # a fit that ignores the loads is off
    naive_pre, _, _ = fit_coefficients(points, per_point_load=False)
    assert not np.allclose(naive_pre, pre, rtol=1e-2)


def test_model_predicts_speedups_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pre = np.full(len(PREFILL_FEATURES), 1e-9)
    dec = np.full(len(DECODE_FEATURES), 1e-9)
    points = _synthetic_points(rng, pre, dec, np.ones(30))
    key = LatencyKey("m@abc", "cpu", "float32", 1)
    model = fit_latency_model(points[:20], key, holdout=points[20:], per_point_load=False)
    assert model.holdout is not None and model.holdout.n == 10
    assert model.holdout.median_abs_rel_error < 1e-6 and model.fit_error.p90_abs_rel_error < 1e-6
    p = points[0]
    want = sum(p.full_runs[0]) / sum(p.plan_runs[0]) - 1
    assert model.speedup(p.full, p.shapes, p.prompt_tokens, p.new_tokens) == pytest.approx(want, rel=1e-6)
    path = save_latency_model(model, tmp_path / "lat.json")
    assert load_latency_model(path, key) == model
    with pytest.raises(ValueError, match="fitted for"):
        load_latency_model(path, LatencyKey("m@abc", "cpu", "float32", 2))
    data = json.loads(path.read_text())
    data["decode"].pop("kv_cache")
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="kv_cache"):
        load_latency_model(path)
    with pytest.raises(ValueError, match="non-negative"):
        LatencyModel(key, tuple([-1.0] * len(PREFILL_FEATURES)), tuple([0.0] * len(DECODE_FEATURES)))
    with pytest.raises(ValueError, match="new_tokens"):
        LatencyCalibration(new_tokens=(1, 4))


# ----------------------------------------------------------------------------- on a model


def test_plan_shapes_follow_the_plan(tiny_lm32) -> None:
    lm = tiny_lm32
    g = lm.geometry
    h, d = g.hidden_size, g.head_dim
    full = plan_shapes(lm, PruningPlan())
    assert full.layers == g.num_layers
    assert full.attn_params == sum(h * d * (2 * q + 2 * kv) for q, kv in zip(g.num_heads, g.num_kv_heads, strict=True))
    assert full.ffn_params == sum(3 * h * f for f in g.intermediate_size)
    assert full.ragged_layers == full.adapter_layers == 0
    skip = plan_shapes(lm, PruningPlan(skip=[1, 2]))
    assert skip.layers == g.num_layers - 2 and skip.ffn_params == full.ffn_params - 2 * 3 * h * g.intermediate_size[1]
    for keep in range(1, g.num_heads[0]):
        s = plan_shapes(lm, PruningPlan(heads={0: keep}))
        hs = lm.head_slice(0, keep)
        assert s.q_width == full.q_width - (g.num_heads[0] - keep) * d
        assert s.kv_width == full.kv_width - (g.num_kv_heads[0] - len(hs.kept_groups)) * d
        assert s.ragged_layers == int(hs.kv_index is not None)
    assert any(plan_shapes(lm, PruningPlan(heads={0: k})).ragged_layers for k in range(1, g.num_heads[0]))
    assert plan_shapes(lm, PruningPlan(ffn={3: 64})).ffn_params == full.ffn_params - 3 * h * 64


def test_calibration_is_cached_per_key(tiny_lm32, private_cache: Path) -> None:
    import torch

    from dynprune.latency_model import latency_key, latency_path

    cfg = LatencyCalibration(points=10, repeats=1, prompt_tokens=(4, 32), new_tokens=(2, 4))
    lines: list[str] = []
    model = load_or_calibrate_latency(tiny_lm32, cfg, progress=lines.append)
    assert len(lines) == 10 and "point 10/10" in lines[-1]
    assert model.key == latency_key(tiny_lm32) and model.key.threads == torch.get_num_threads()
    assert latency_path(model.key).is_file() and latency_path(model.key).is_relative_to(private_cache)
    assert model.holdout is not None and model.holdout.n == 2 and model.n_points == 8
    assert load_or_calibrate_latency(tiny_lm32, cfg, progress=lines.append) is model  # no new measurement
    assert len(lines) == 10
    refit = load_or_calibrate_latency(tiny_lm32, cfg, refit=True, progress=lines.append)
    assert len(lines) == 20 and refit is not model


# ----------------------------------------------------------------------------- memo and evaluator


def _prompts(n: int):
    from dynprune.tasks import load_prompts

    return load_prompts("dynprune", split="test")[:n]


@pytest.fixture(scope="module")
def tiny_latency(tiny_lm32) -> LatencyModel:
    """A small real fit on the tiny model (its quality does not matter to these tests)."""
    from dynprune.latency_model import calibrate_latency

    model, _ = calibrate_latency(tiny_lm32, LatencyCalibration(points=8, repeats=1, prompt_tokens=(4, 32),
                                                               new_tokens=(2, 4)))
    return model


def test_memo_hit_returns_identical_metrics_without_a_forward_pass(tiny_lm32, tiny_latency, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from dynprune.quality_memo import QualityMemo
    from dynprune.runtime import PlanEvaluator

    memo_file = tmp_path / "memo.json"
    plans = [PruningPlan(skip=[1]), PruningPlan(heads={0: 5}), PruningPlan(ffn={2: 40}), PruningPlan(skip=[2])]
    first = PlanEvaluator(tiny_lm32, max_new_tokens=6, memo=memo_file, latency_model=tiny_latency)
    want = {(p.id, plan): first.evaluate(p, plan, "modelled") for p in _prompts(3) for plan in plans}
    assert first.forward_passes == 12
    again = [first.evaluate(p, plan, "modelled") for p in _prompts(3) for plan in plans]
    assert first.forward_passes == 12  # the in-process fast path
    first.memo.flush()
    assert memo_file.is_file() and len(QualityMemo(memo_file)) == 12

    second = PlanEvaluator(tiny_lm32, max_new_tokens=6, memo=memo_file, latency_model=tiny_latency)
    for p in _prompts(3):
        second.baseline(p)  # the full answers (not part of the memo)

    def no_forward(*a, **k):
        raise AssertionError("a memo hit must not run the model")

    monkeypatch.setattr(tiny_lm32, "score", no_forward)
    for (pid, plan), w in want.items():
        prompt = next(p for p in _prompts(3) if p.id == pid)
        got = second.evaluate(prompt, plan, "modelled")
        for f in ("speedup", "latency_s", "ppl", "token_agreement", "exact_match", "task_score", "prefix_fidelity"):
            assert getattr(got, f) == getattr(w, f), f
    assert second.forward_passes == 0 and second.memo.hits == 12
    assert [e.speedup for e in again] == [want[k].speedup for k in want]


def test_memo_key_covers_model_settings_and_adapters(tiny_lm32) -> None:
    import torch

    from dynprune.adapters import BottleneckAdapter
    from dynprune.quality_memo import quality_key

    plan = PruningPlan(skip=[1])
    k = quality_key(tiny_lm32, plan, (1, 2, 3), (4, 5), 8)
    assert k == quality_key(tiny_lm32, PruningPlan(skip=[1], name="other name"), (1, 2, 3), (4, 5), 8)
    assert k != quality_key(tiny_lm32, PruningPlan(skip=[2]), (1, 2, 3), (4, 5), 8)
    assert k != quality_key(tiny_lm32, plan, (1, 2, 3), (4, 6), 8)
    assert k != quality_key(tiny_lm32, plan, (1, 2, 3), (4, 5), 9)
    ad = BottleneckAdapter(tiny_lm32.geometry.hidden_size, 4)
    with_ad = PruningPlan(adapters=[1], modules={1: ad})
    k1 = quality_key(tiny_lm32, with_ad, (1,), (2,), 8)
    with torch.no_grad():
        next(ad.parameters()).add_(1.0)
    assert quality_key(tiny_lm32, with_ad, (1,), (2,), 8) != k1  # retrained adapters: a new key


def test_modelled_evaluation_is_deterministic_and_uses_the_model(tiny_lm32, tiny_latency) -> None:
    from dynprune.runtime import PlanEvaluator

    ev = PlanEvaluator(tiny_lm32, max_new_tokens=6, latency_model=tiny_latency)
    prompt = _prompts(1)[0]
    base = ev.baseline(prompt)
    plan = PruningPlan(skip=[1, 2])
    got = ev.evaluate(prompt, plan, "modelled")
    n_p, n = len(base.prompt_ids), len(base.answer_ids)
    want = tiny_latency.speedup(plan_shapes(tiny_lm32, PruningPlan()), plan_shapes(tiny_lm32, plan), n_p, n)
    assert got.speedup == pytest.approx(want, rel=1e-12) and got.timing == "modelled" and got.text is None
    assert got.full_latency_s == pytest.approx(tiny_latency.latency_s(plan_shapes(tiny_lm32, PruningPlan()), n_p, n))
    none = ev.evaluate(prompt, PruningPlan(), "modelled")
    assert none.speedup == 0.0 and none.latency_s == pytest.approx(got.full_latency_s)
    from dataclasses import replace

    again = ev.evaluate(prompt, plan, "modelled")
    assert replace(again, seconds=0.0) == replace(got, seconds=0.0)  # everything but the wall time it took


def test_paired_live_step_times_both_models_on_the_same_work(tiny_lm32, tiny_latency) -> None:
    from dynprune.paired_timing import paired_generate
    from dynprune.runtime import PlanEvaluator

    lm = tiny_lm32
    ids = lm.encode_prompt("The river rose after days of rain.")
    plan = PruningPlan(skip=[1], heads={0: 5}, ffn={2: 40})
    run = paired_generate(lm, plan, ids, 7)
    with lm.apply(plan):
        want_pruned = lm.generate(ids, 7, ignore_eos=True)
    want_full = lm.generate(ids, 7, ignore_eos=True)
    assert run.pruned.output_ids == want_pruned.output_ids and run.full.output_ids == want_full.output_ids
    assert run.full.produced == run.pruned.produced == 7 and lm.active_plan is None
    assert run.sum_speedup == pytest.approx(run.full.latency_s / run.pruned.latency_s - 1)
    # the live step's estimate: decode steps at the full model's median step over the median ratio of adjacent steps
    import statistics

    ratio = statistics.median(f / p for f, p in zip(run.full_steps, run.pruned_steps, strict=True))
    med = statistics.median(run.full_steps)
    want = (run.full.prefill_s + 6 * med) / (run.pruned.prefill_s + 6 * med / ratio) - 1
    assert len(run.full_steps) == len(run.pruned_steps) == 6 and run.speedup == pytest.approx(want)
    assert run.full.prefill_s > 0 and run.pruned.decode_s > 0

    ev = PlanEvaluator(lm, max_new_tokens=6, latency_model=tiny_latency)
    prompt = _prompts(1)[0]
    live = ev.evaluate(prompt, plan, "live")
    modelled = ev.evaluate(prompt, plan, "modelled")
    assert live.timing == "live" and live.text is not None
    assert live.ppl == modelled.ppl  # both from the memoised teacher-forced pass
    assert live.prefix_fidelity == pytest.approx(modelled.prefix_fidelity)
    assert live.full_latency_s == pytest.approx(live.latency_s * (1 + live.speedup))


# ----------------------------------------------------------------------------- the env


def _modelled_env_rewards(model: str, seed: int, actions: list[int], **kw) -> list[float]:
    import gymnasium as gym

    import envs  # noqa: F401

    env = gym.make("DynPrune-v0", model=model, timing="modelled", reward="casrap", telemetry="scenario",
                   max_new_tokens=6, **kw)
    rewards = []
    env.reset(seed=seed)
    for a in actions:
        _, r, term, trunc, info = env.step(a)
        assert info["timing"] == "modelled"
        rewards.append(r)
        if term or trunc:
            env.reset()
    return rewards


def test_modelled_env_same_seed_same_rewards(private_cache: Path) -> None:
    """Two DynPrune-v0(timing="modelled", reward="casrap", telemetry="scenario") envs, one seed: one reward sequence."""
    from dynprune.models import load_model

    # a small fit into the (private) cache first: both envs then read it, as every env does after the first
    load_or_calibrate_latency(load_model("tiny-llama", device="cpu", calibrate=True),
                              LatencyCalibration(points=8, repeats=1))
    actions = [int(a) for a in np.random.default_rng(3).integers(0, 10, size=50)]
    prompts = _prompts(6)
    first = _modelled_env_rewards("tiny-llama", 7, actions, prompts=prompts, split=None)
    second = _modelled_env_rewards("tiny-llama", 7, actions, prompts=prompts, split=None)  # a second loaded model
    assert first == second
    assert len(set(first)) > 3  # the rewards do vary with prompt, action and load
    assert len(list((private_cache / "latency").iterdir())) == 1


@pytest.mark.embedded
def test_modelled_env_same_seed_same_rewards_embedded(private_cache: Path) -> None:
    import torch

    from dynprune.latency_model import calibrate_latency
    from dynprune.models import load_model

    torch.set_num_threads(1)
    lm = load_model("smollm2-135m", device="cpu")
    lm.calibrate(n_prompts=8, seq_len=64)  # a private cache: a small calibration (any importance will do here)
    lat, _ = calibrate_latency(lm, LatencyCalibration(points=6, repeats=1, prompt_tokens=(8, 32), new_tokens=(2, 4)))
    actions = [int(a) for a in np.random.default_rng(4).integers(0, 10, size=50)]
    kw = {"prompts": _prompts(4), "split": None, "latency_model": lat}
    first = _modelled_env_rewards(lm, 11, actions, **kw)
    second = _modelled_env_rewards(lm, 11, actions, **kw)
    assert first == second and len(set(first)) > 3


# ----------------------------------------------------------------------------- benchmarks (smoke)


def test_latency_model_benchmark_smoke(tmp_path: Path, private_cache: Path) -> None:
    from benchmarks.latency_model import TARGETS, main

    out = tmp_path / "lm.json"
    result = main(["--smoke", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["held_out"]["points"] == 9 + 4 == len(data["held_out"]["rows"])  # table plans + one per kind
    assert {r["kind_group"] for r in data["held_out"]["rows"]} == {"table", "layers", "heads", "ffn", "mixed"}
    for key in ("median_abs_rel_error", "p90_abs_rel_error"):
        assert data["held_out"][key] == result["held_out"][key] >= 0
    assert data["held_out_paired"]["n"] == 13 and data["profiled"]["n"] == 2
    assert set(data["met"]) == set(TARGETS) and data["latency_model"]["holdout"]["n"] >= 1
    row = data["held_out"]["rows"][0]
    assert len(row["ratios"]) == 3 and row["measured_ratio"] == sorted(row["ratios"])[1]
    assert row["abs_rel_error"] == pytest.approx(abs(row["predicted_ratio"] / row["measured_ratio"] - 1))
    assert "load_average_1m_during" in data["load"]


def test_live_honesty_benchmark_smoke(tmp_path: Path, private_cache: Path) -> None:
    from benchmarks.live_honesty import main

    out = tmp_path / "lh.json"
    main(["--smoke", "--out", str(out), "--busy", "1"])
    data = json.loads(out.read_text())
    assert data["before"]["n"] == data["after"]["n"] == len(data["rows"]) == 3
    assert data["background"]["processes"] == 1 and data["background"]["switches"] >= 1
    for r in data["rows"]:
        assert r["after_abs_error"] == pytest.approx(abs(r["after_speedup"] - r["reference_speedup"]))
        assert r["after_sum_abs_error"] == pytest.approx(abs(r["after_sum_speedup"] - r["reference_speedup"]))
        assert len(r["reference_runs"]) == 2
    assert set(data["met"]) == {"after_median_abs_error"}
