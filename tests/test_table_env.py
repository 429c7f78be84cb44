"""DynPruneTable-v0 and the reward-table builder."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import envs
from dynprune.latency_model import LatencyCalibration, LatencyModel, calibrate_latency
from dynprune.table import ACTION_COLUMNS, build_table, read_table

MAX_NEW = 6


def _prompts():
    """A few prompts of each split, in the shipped order."""
    from dynprune.tasks import load_prompts

    every = load_prompts("dynprune", split=None)
    train = [p for p in every if p.split == "train"][:5]
    test = [p for p in every if p.split == "test"][:3]
    return sorted(train + test, key=every.index)


@pytest.fixture(scope="module")
def latency(tiny_lm32) -> LatencyModel:
    model, _ = calibrate_latency(tiny_lm32, LatencyCalibration(points=8, repeats=1, prompt_tokens=(4, 32),
                                                               new_tokens=(2, 4)))
    return model


@pytest.fixture(scope="module")
def table_file(tiny_lm32, latency, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("table") / "tiny.parquet"
    build_table(tiny_lm32, _prompts(), out, max_new_tokens=MAX_NEW, latency_model=latency, progress=None)
    return out


def test_table_holds_every_prompt_and_action(table_file: Path, tiny_lm32, latency) -> None:
    from dynprune.actions import DEFAULT_TABLE

    t = read_table(table_file)
    assert t.n_prompts == len(_prompts()) and list(t.prompts["prompt_id"]) == [p.id for p in _prompts()]
    assert t.action_names == tuple(e.name for e in DEFAULT_TABLE)
    assert t.meta["model_id"] == tiny_lm32.model_id and t.meta["max_new_tokens"] == MAX_NEW
    assert LatencyModel.from_dict(t.meta["latency_model"]) == latency
    for col in ACTION_COLUMNS:
        assert t.actions[col].shape == (t.n_prompts, len(DEFAULT_TABLE))
    assert (t.actions["speedup"][:, 0] == 0).all() and (t.actions["prefix_fidelity"][:, 0] == 1).all()
    assert t.prompts["embedding"].shape == (t.n_prompts, tiny_lm32.geometry.hidden_size)
    assert set(t.select("test").prompts["split"]) == {"test"} and t.select("test").n_prompts == 3
    with pytest.raises(ValueError, match="no prompts of split 'validation'"):
        t.select("validation")


def test_the_table_env_shares_dynprune_envs_episodes_and_loads_no_torch() -> None:
    """One copy of the observation layout and the episode draws (envs.episodes) serves both envs, and
    the table env still runs without the model stack."""
    import subprocess
    import sys

    from envs.episodes import PromptEpisodes
    from envs.table_env import DynPruneTableEnv

    assert issubclass(DynPruneTableEnv, PromptEpisodes)
    code = "import sys, envs.table_env; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("reward", ["casrap", "latency_budget", "accuracy_efficiency"])
def test_table_env_equals_the_modelled_env(reward: str, table_file: Path, tiny_lm32, latency) -> None:
    """Same seed, same actions: the same observations, rewards and ends as DynPrune-v0(timing="modelled")."""
    train = [p for p in _prompts() if p.split == "train"]
    live = gym.make("DynPrune-v0", model=tiny_lm32, prompts=train, split=None, timing="modelled", reward=reward,
                    max_new_tokens=MAX_NEW, latency_model=latency, prompt_embedding=4, prompts_per_episode=2)
    table = gym.make("DynPruneTable-v0", table=str(table_file), split="train", reward=reward, prompt_embedding=4,
                     prompts_per_episode=2)
    assert live.unwrapped.observation_names == table.unwrapped.observation_names
    assert live.unwrapped.action_names == table.unwrapped.action_names
    actions = np.random.default_rng(5).integers(0, 10, size=40)
    obs_l, info_l = live.reset(seed=3)
    obs_t, info_t = table.reset(seed=3)
    rewards = []
    for a in actions:
        assert info_l["prompt_id"] == info_t["prompt_id"] and info_l["scenario"] == info_t["scenario"]
        np.testing.assert_array_equal(obs_l, obs_t)
        np.testing.assert_array_equal(info_l["prompt_embedding"], info_t["prompt_embedding"])
        np.testing.assert_array_equal(live.unwrapped.action_rewards(), table.unwrapped.action_rewards())
        obs_l, r_l, term_l, _, info_l = live.step(a)
        obs_t, r_t, term_t, _, info_t = table.step(a)
        assert r_l == r_t and term_l == term_t
        rewards.append(r_t)
        if term_l:
            obs_l, info_l = live.reset()
            obs_t, info_t = table.reset()
    assert len(set(rewards)) > 3


def test_table_env_passes_the_checkers(table_file: Path) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    assert "DynPruneTable-v0" in envs.TABLE_ENV_IDS and "DynPruneTable-v0" in gym.registry
    env = gym.make("DynPruneTable-v0", table=str(table_file), reward="latency_budget")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped, warn=True)
    with pytest.raises(ValueError, match="is not in Discrete"):
        env.reset(seed=0)
        env.step(10)
    with pytest.raises(ValueError, match="neither a file nor a shipped table"):
        gym.make("DynPruneTable-v0", table="no-such-table")


def test_double_dqn_trains_on_the_table(table_file: Path) -> None:
    from agents.dqn import make_dqn

    env = gym.make("DynPruneTable-v0", table=str(table_file), reward="casrap")
    model = make_dqn(env, double=True, seed=0, learning_starts=16, batch_size=8, buffer_size=256,
                     policy_kwargs={"net_arch": [16]})
    before = [p.detach().clone() for p in model.policy.q_net.parameters()]
    model.learn(128)
    assert model.num_timesteps == 128
    assert any(not np.array_equal(b.numpy(), a.detach().numpy()) for b, a in zip(
        before, model.policy.q_net.parameters(), strict=True))


def test_table_build_resumes(tiny_lm32, latency, tmp_path: Path) -> None:
    from dynprune.runtime import PlanEvaluator

    prompts = _prompts()[:6]
    out = tmp_path / "t.parquet"
    lines: list[str] = []
    build_table(tiny_lm32, prompts[:3], out, max_new_tokens=MAX_NEW, latency_model=latency, flush_every=2,
                progress=lines.append)
    assert read_table(out).n_prompts == 3
    calls = {"n": 0}
    original = PlanEvaluator.quality

    def counting(self, *a, **k):
        calls["n"] += 1
        return original(self, *a, **k)

    PlanEvaluator.quality = counting  # type: ignore[method-assign]
    try:
        build_table(tiny_lm32, prompts, out, max_new_tokens=MAX_NEW, latency_model=latency, progress=lines.append)
    finally:
        PlanEvaluator.quality = original  # type: ignore[method-assign]
    assert "3 already in" in lines[-2] and "3 to measure" in lines[-2]
    assert calls["n"] == 3 * 9  # only the three new prompts, every action but "none"
    resumed = read_table(out)
    fresh_out = tmp_path / "fresh.parquet"
    build_table(tiny_lm32, prompts, fresh_out, max_new_tokens=MAX_NEW, latency_model=latency, progress=None)
    fresh = read_table(fresh_out)
    assert list(resumed.prompts["prompt_id"]) == [p.id for p in prompts]
    for col in ACTION_COLUMNS:
        np.testing.assert_array_equal(resumed.actions[col], fresh.actions[col])
    with pytest.raises(ValueError, match="max_new_tokens"):
        build_table(tiny_lm32, prompts, out, max_new_tokens=MAX_NEW + 1, latency_model=latency, progress=None)


def test_table_env_benchmark_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.table_env import main

    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "te.json"
    main(["--smoke", "--out", str(out)])
    data = json.loads(out.read_text())
    assert data["steps_per_s"] == data["speed"]["one_prompt_episodes"]["steps_per_s"]["median"] > 0
    assert data["speed"]["ten_prompt_episodes"]["steps_per_cpu_s"]["n"] == 2
    assert set(data["met"]) == {"steps_per_s"} and data["table"]["timing"] == "modelled"
    ddqn = data["ddqn"]
    assert ddqn["steps"] == 300 and sum(ddqn["ddqn_actions"].values()) == ddqn["prompts"] * ddqn["passes"]
    assert ddqn["mean_reward"]["oracle"] >= max(v for k, v in ddqn["mean_reward"].items() if k != "oracle")


def test_table_vs_live_benchmark_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.table_vs_live import main, spearman

    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "tvl.json"
    main(["--smoke", "--out", str(out)])
    data = json.loads(out.read_text())
    assert len(data["prompt_ids"]) == 4 and len(data["per_prompt"]["live"]) == 4
    assert {"ddqn", "random", "oracle", "static-none"} <= set(data["mean_reward"])
    assert data["mean_reward"]["static-none"] == {"table": 0.0, "live": 0.0}
    assert -1.0 <= data["spearman"] <= 1.0 and set(data["met"]) == {"spearman"}


def test_a_table_built_before_the_token_agreement_rename_still_reads(table_file: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    new = read_table(table_file)
    old = pq.read_table(table_file)
    meta = old.schema.metadata
    old = old.rename_columns(["fidelity" if c == "token_agreement" else c for c in old.column_names])
    old = old.replace_schema_metadata(meta)
    pq.write_table(old, tmp_path / "old.parquet")
    again = read_table(tmp_path / "old.parquet")
    np.testing.assert_array_equal(again.actions["token_agreement"], new.actions["token_agreement"])
    assert "fidelity" not in again.actions
