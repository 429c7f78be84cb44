"""benchmarks/answer.py's statistics, the action router, live reward tables, and the whole run on tiny-llama."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.router.action_router import ActionRouterConfig, preference_pairs, train_action_router
from benchmarks import answer


def _held(n: int = 40, seed: int = 0) -> answer.Heldout:
    """A synthetic held-out pass: 3 actions; the best action depends on the sign of the first observation."""
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 1.0], size=n)
    speed = np.tile([0.0, 0.2, 0.4], (n, 1))
    quality = np.column_stack([np.ones(n), np.where(x > 0, 0.95, 0.3), np.where(x > 0, 0.3, 0.9)])
    reward = quality + speed
    steps = tuple((np.array([xi], np.float32), {"prompt_id": f"p{i}"}) for i, xi in enumerate(x))
    return answer.Heldout(tuple(f"p{i}" for i in range(n)), steps, reward, speed, quality, np.full((n, 3), np.nan))


def _args(**kw) -> answer.Args:
    return answer.Args(out="/tmp/not-written.json", reps=200, poi_reps=20, **kw)


def test_hull_mixture_interpolates_between_static_points() -> None:
    h = answer.upper_hull([(0.0, 1.0, 0), (0.2, 0.5, 1), (0.4, 0.5, 2), (0.1, 0.2, 3)])
    assert [p[2] for p in h] == [0, 2]  # 1 lies under the chord from 0 to 2, 3 under everything
    a, b, lam = answer.hull_mixture(h, 0.1)
    assert (a, b) == (0, 2) and lam == pytest.approx(0.75)
    assert answer.hull_mixture(h, -0.1) == (0, 0, 1.0)
    assert answer.hull_mixture(h, 0.5) is None  # faster than every static mixture


def test_a_per_prompt_policy_beats_static_and_the_hull() -> None:
    held = _held()
    right = [int(np.argmax(r)) for r in held.reward]
    runs = {"smart": [right, right, right], "fixed": [[1] * len(right)] * 3}
    res = answer.score(_args(), held, runs)
    smart, fixed = res["agents"]["smart"], res["agents"]["fixed"]
    assert smart["lead_kept"] == pytest.approx(1.0) and smart["seed_agreement"] == 1.0
    assert smart["vs_best_static"]["ci"][0] > 0 and smart["poi_vs_best_static"]["p"] > 0.5
    assert smart["hull_quality"]["ci"][0] > 0  # above every static mixture at its own speed-up
    assert res["goal"]["agent"] == "smart" and res["goal"]["met"]
    assert fixed["lead_kept"] <= 0 and fixed["hull_quality"]["mean"] <= 1e-9
    assert res["agents"]["oracle"]["reward_mean"] == pytest.approx(held.reward.max(axis=1).mean())
    lo, hi = smart["reward_iqm_ci"]
    assert lo <= smart["reward_iqm"] <= hi


def test_seeds_that_disagree_miss_the_goal() -> None:
    held = _held()
    right = [int(np.argmax(r)) for r in held.reward]
    wrong = [2 if a == 1 else 1 for a in right]
    res = answer.score(_args(), held, {"flaky": [right, wrong, right]})
    assert res["agents"]["flaky"]["seed_agreement"] == 0.0
    assert res["goal"]["seeds_agree_80"] is False and res["goal"]["met"] is False


@pytest.mark.parametrize("method", ["fbc", "dpo", "orpo"])
def test_action_router_learns_the_prompt_dependent_best_action(method: str) -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(80, 8)).astype(np.float32)
    rewards = np.column_stack([np.zeros(80), emb[:, 0], -emb[:, 0]])  # action 1 when emb[0] > 0, else 2
    feats = np.concatenate([emb, np.zeros((80, 3), np.float32)], axis=1)
    router = train_action_router(feats, rewards, ActionRouterConfig(method=method, epochs=150), seed=0)
    test = rng.normal(size=(40, 8)).astype(np.float32)
    picks = [router.act(np.zeros(8, np.float32), {"prompt_embedding": e}) for e in test]
    assert np.mean([p == (1 if e[0] > 0 else 2) for p, e in zip(picks, test, strict=True)]) > 0.85


def test_router_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="method"):
        ActionRouterConfig(method="ppo")
    p, w, l_ = preference_pairs(np.array([[0.0, 1.0, 1.005]]), margin=0.01)
    assert list(zip(w, l_, strict=True)) == [(1, 0), (2, 0)]  # 1 vs 2 differ by less than the margin
    with pytest.raises(ValueError, match="no preference pairs"):
        train_action_router(np.zeros((2, 4)), np.zeros((2, 3)), ActionRouterConfig(method="orpo"))


def test_args_are_checked() -> None:
    with pytest.raises(ValueError, match="rewards"):
        answer.Args(out="/tmp/x.json", rewards="casrap,speed")
    with pytest.raises(ValueError, match="seeds"):
        answer.Args(out="/tmp/x.json", seeds=0)


def test_a_live_table_measures_served_answers(tiny_lm32, tmp_path: Path) -> None:
    from dynprune.latency_model import LatencyCalibration, calibrate_latency
    from dynprune.table import build_table, read_table
    from dynprune.tasks import load_prompts

    latency, _ = calibrate_latency(tiny_lm32, LatencyCalibration(points=4, repeats=1, prompt_tokens=(4, 16),
                                                                 new_tokens=(2, 3)))
    prompts = load_prompts("dynprune", split="test")[:2]
    out = tmp_path / "live.parquet"
    build_table(tiny_lm32, prompts, out, max_new_tokens=4, latency_model=latency, timing="live", progress=None)
    t = read_table(out)
    assert t.meta["timing"] == "live" and t.meta["healing"] is None
    assert t.actions["speedup"][:, 0].tolist() == [0.0, 0.0]  # "none" is the full model by definition
    assert np.isfinite(t.actions["speedup"]).all() and (t.actions["latency_s"] > 0).all()
    with pytest.raises(ValueError, match="timing"):  # a modelled build does not resume a live table
        build_table(tiny_lm32, prompts, out, max_new_tokens=4, latency_model=latency, progress=None)
    with pytest.raises(ValueError, match="timing must be"):
        build_table(tiny_lm32, prompts, tmp_path / "x.parquet", timing="profiled", progress=None)


@pytest.mark.slow  # trains every agent twice on a tiny table: about a minute on 2 cores
def test_answer_smoke_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "answer.json"
    work = tmp_path / "work"
    argv = ["--smoke", "--out", str(out), "--work", str(work), "--rewards", "latency_budget", "--threads", "1"]
    result = answer.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    for suffix in (".png", "_intervals.png", "_winloss.png", "_profiles.png"):
        assert (tmp_path / f"answer{suffix}").stat().st_size > 0
    for variant in ("original", "healed"):
        res = result["results"][variant]["latency_budget"]
        agents = res["agents"]
        assert {"ddqn", "cql", "bcq", "fbc-light", "dpo-light", "orpo-light", "random", "oracle"} <= set(agents)
        assert agents["ddqn"]["runs"] == 2 and "poi_vs_best_static" in agents["ddqn"]
        assert res["prompts"] == 4
    assert result["tables"]["healed"]["healing"] is not None and result["tables"]["original"]["healing"] is None
    picks = sorted(p.name for p in (work / "picks" / "healed" / "latency_budget").iterdir())
    assert "ddqn-s1.json" in picks
    # a second run resumes: nothing is measured or retrained, the same picks give the same numbers
    again = answer.main([*argv, "--score-only"])
    assert again["results"]["original"]["latency_budget"]["agents"]["ddqn"]["reward_mean"] == \
        result["results"]["original"]["latency_budget"]["agents"]["ddqn"]["reward_mean"]
    assert again["walls"]["original_latency_budget_agents_s"] < result["walls"]["original_latency_budget_agents_s"]
    assert "original_heldout_live_s" in result["walls"] and "original_heldout_live_s" not in again["walls"]
    with pytest.raises(ValueError, match="score-only"):
        answer.main(["--smoke", "--out", str(out), "--work", str(tmp_path / "empty"), "--score-only"])
