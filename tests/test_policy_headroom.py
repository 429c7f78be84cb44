"""benchmarks/policy_headroom.py: a learnable signal is found, an unlearnable one is not, bad logs are named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import policy_headroom as ph


def _rows(n_prompts: int, n_actions: int = 3, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        obs = rng.uniform(0, 1, 3).tolist()
        for a in range(n_actions):
            rows.append({"prompt_id": f"p{p}", "action": a, "action_name": f"a{a}", "observation": obs,
                         "reward": float(rng.normal()), "speedup": 0.1 * a + float(rng.normal(0, 0.05)),
                         "baseline_ppl": 2.0, "ppl": 2.0 + a, "token_agreement": 1.0, "task_score": None,
                         "kept_fraction": 1.0 - 0.1 * a, "latency_s": 1.0})
    return rows


def test_smoke_finds_the_planted_signal(tmp_path):
    out = tmp_path / "h.json"
    result = ph.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text())["best"]["captured"] > 0.8
    assert all(r["static"] < r["policy"] for r in result["results"])


def test_pure_noise_is_not_learnable():
    sweep = ph.sweep_from_rows(_rows(200), ["f0", "f1", "f2"])
    cv = ph.cross_validate(sweep.observations, sweep.rewards, lambda: ph.Ridge(10.0), 5, 0)
    oracle = sweep.rewards.max(1).mean()
    assert (cv["policy"] - cv["static"]) / (oracle - cv["static"]) < 0.2


def test_action_mean_speedup_recomputes_casrap():
    rows = _rows(6)
    sweep = ph.sweep_from_rows(rows, ["f0", "f1", "f2"], speedup="action-mean")
    # every prompt now sees the same speed-up per action, so reward differences come from perplexity only:
    # CASRAP = 0.7 * speedup - 0.3 * ppl degradation (+ bonuses), ppl degradation = a / 2 here
    from dynprune.rewards import CasrapReward, Outcome

    mean_sp = np.mean([r["speedup"] for r in rows if r["action"] == 2])
    expected = CasrapReward()(Outcome(speedup=mean_sp, baseline_ppl=2.0, pruned_ppl=4.0, prefix_fidelity=1.0,
                                      task_score=None, kept_fraction=0.8, latency_s=1.0))[0]
    np.testing.assert_allclose(sweep.rewards[:, 2], expected)


def test_bad_logs_and_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path))  # no default sweep folder there
    with pytest.raises(ValueError, match="no table action"):
        ph.sweep_from_rows([{**_rows(1)[0], "action": -1}], ["f0"])
    with pytest.raises(ValueError, match="only 3 prompts have all 3 actions logged"):
        ph.sweep_from_rows(_rows(3), ["f0", "f1", "f2"])
    with pytest.raises(ValueError, match="--logs DIR is required .* holds no logs yet"):
        ph.Args()
    with pytest.raises(ValueError, match="speedup must be one of"):
        ph.Args(logs="x", speedup="fast")
