"""DynPruneLayers-v0 on the tiny model: layer masks, adapters, info, bad actions, checkers."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from dynprune.adapter_training import init_adapters
from dynprune.plan import PruningPlan
from dynprune.runtime import ProfileConfig
from envs.dynprune_env import step_record

# min_rounds=1: a profile cell is measured once, so two identically seeded steps give identical info
FAST = {"max_new_tokens": 3, "reward": "proxy", "profile": ProfileConfig(new_tokens=2, repeats=1, min_rounds=1)}


def make(lm, **kw):
    return gym.make("DynPruneLayers-v0", **{**FAST, "model": lm, **kw})


def test_registered_and_checkers_pass(tiny_lm32):
    assert "DynPruneLayers-v0" in envs.ENV_IDS and "DynPruneLayers-v0" in gym.registry
    env = make(tiny_lm32)
    assert env.action_space == gym.spaces.MultiBinary(3) and env.unwrapped.layer_ids == (1, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped, warn=True)


def test_mask_step_matches_the_same_plan_on_dynprune(tiny_lm32):
    env = make(tiny_lm32, sequential=True)
    table_env = gym.make("DynPrune-v0", **{**FAST, "model": tiny_lm32, "sequential": True})
    obs, info = env.reset(seed=0)
    obs_t, info_t = table_env.reset(seed=0)
    assert info["prompt"] == info_t["prompt"] and isinstance(info["prompt"], str)
    np.testing.assert_array_equal(info["prompt_embedding"], info_t["prompt_embedding"])
    np.testing.assert_array_equal(obs, obs_t)  # same observation as DynPrune-v0
    mask = np.array([1, 0, 1], dtype=np.int8)
    assert env.unwrapped.action_layers(mask) == [1, 3]
    np.testing.assert_array_equal(env.unwrapped.layers_to_action([1, 3]), mask)
    _, reward, terminated, truncated, info = env.step(mask)
    plan = json.loads(info["plan"])
    assert info["layers"].tolist() == [1, 0, 1] and plan["skip"] == [1, 3] and plan["adapters"] == []
    # the same plan through the table env's record_plan gives the same proxy reward (deterministic)
    rec = table_env.unwrapped.record_plan(PruningPlan(skip=[1, 3]))
    assert reward == pytest.approx(rec.reward) and step_record(info).kept_fraction == pytest.approx(rec.kept_fraction)
    assert terminated and not truncated
    _, info = env.reset()
    _, reward0, _, _, info0 = env.step(np.zeros(3, dtype=np.int8))
    assert not info0["layers"].any() and info0["pruned"]["speedup"] == 0.0


def test_pruned_layers_use_adapters_when_loaded(tiny_lm32):
    from dynprune.types import Prompt

    lm = tiny_lm32
    saved = dict(lm.adapters)
    try:
        lm.adapters.update({2: init_adapters(lm)[2]})
        env = make(lm, prompts=[Prompt(id="p", text="Hello there", category="qa", split="train")])
        env.reset(seed=0)
        _, _, _, _, info = env.step(np.array([1, 1, 0]))
        plan = json.loads(info["plan"])
        assert plan["adapters"] == [2] and plan["skip"] == [1]
        plain = make(lm, use_adapters=False, prompts=[Prompt(id="p", text="Hello there", category="qa",
                                                             split="train")])
        assert plain.unwrapped.mask_plan([1, 1, 0]) == PruningPlan(skip=[1, 2])
    finally:
        lm.adapters.clear()
        lm.adapters.update(saved)


@pytest.mark.parametrize(
    ("action", "match"),
    [
        (np.array([0, 1, 0, 1]), "expected 3 values of 0/1 for layers 1..3"),
        (np.array([0, 2, 0]), "expected 3 values of 0/1"),
        ("010", "expected 3 values of 0/1"),
    ],
)
def test_bad_actions_are_refused(tiny_lm32, action, match):
    env = make(tiny_lm32)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_no_action_table(tiny_lm32):
    with pytest.raises(ValueError, match="has no action table"):
        make(tiny_lm32, action_table="default")
    env = make(tiny_lm32)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="no table"):
        env.unwrapped.action_records()
    with pytest.raises(ValueError, match="layer 0 cannot be pruned here; expected layers 1..3"):
        env.unwrapped.layers_to_action([0])


def test_every_action_is_a_valid_plan(tiny_lm32):
    env = make(tiny_lm32)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.ones(3, dtype=np.int8))  # the most pruning: layer 0 alone stays
    assert info["layers"].tolist() == [1, 1, 1]
