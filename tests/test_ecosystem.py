"""The ecosystem's own tools on our envs: SB3's vec envs, render modes, Minari's collector, save/load,
TensorBoard, progress off a terminal, registration as installed by pip, no deprecated API."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env

import envs
from dynprune.progress import Progress, ProgressConfig, format_duration
from dynprune.runtime import ProfileConfig
from envs.dynprune_env import step_record

ROOT = Path(__file__).resolve().parents[1]
FAST = {"model": "tiny-llama", "max_new_tokens": 4, "reward": "proxy",
        "profile": ProfileConfig(new_tokens=2, repeats=1, min_rounds=1)}


@pytest.mark.slow
def test_make_vec_env_and_subproc_train_dqn(monkeypatch):
    """SB3 asks for render_mode="rgb_array" by default; both vec env kinds train a few DQN steps."""
    from stable_baselines3 import DQN
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the subprocess envs' torch: a tiny model spins on more threads
    for cls in (None, SubprocVecEnv):
        kwargs = {"vec_env_cls": cls} if cls is not None else {}
        venv = make_vec_env("DynPrune-v0", n_envs=2, seed=0, env_kwargs=FAST, **kwargs)
        try:
            model = DQN("MlpPolicy", venv, learning_starts=4, train_freq=1, buffer_size=64, batch_size=4,
                        policy_kwargs={"net_arch": [8]}, seed=0)
            model.learn(8)
            assert model.num_timesteps >= 8
            frames = venv.get_images()
            assert len(frames) == 2 and frames[0].ndim == 3 and frames[0].shape[2] == 3
        finally:
            venv.close()


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
@pytest.mark.parametrize("mode", ["ansi", "rgb_array"])
def test_render_modes(env_id, mode, tiny_lm32):
    env = gym.make(env_id, **{**FAST, "model": tiny_lm32, "render_mode": mode})
    env.reset(seed=0)
    first = env.render()
    env.step(env.action_space.sample())
    out = env.render()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(env.unwrapped)  # its render check included
    if mode == "ansi":
        assert "no step yet" in first
        assert isinstance(out, str) and "\n" not in out and "speed-up" in out and "reward" in out
    else:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        assert not np.array_equal(first, out)  # the step's point is drawn


def test_bad_render_mode_names_the_choices(tiny_lm32):
    with pytest.raises(ValueError, match=r"render_mode must be one of \['ansi', 'rgb_array'\].*'video'"):
        gym.make("DynPrune-v0", **{**FAST, "model": tiny_lm32, "render_mode": "video"})


@pytest.mark.parametrize("env_id", envs.ENV_IDS)
def test_reset_and_step_infos_have_the_same_keys_and_types(env_id, tiny_lm32):
    env = gym.make(env_id, **{**FAST, "model": tiny_lm32, "prompts_per_episode": 2})
    _, info0 = env.reset(seed=0)
    obs, _, _, _, info1 = env.step(env.action_space.sample())
    assert info0.keys() == info1.keys()
    assert {k: type(v) for k, v in info0.items()} == {k: type(v) for k, v in info1.items()}
    # the prompt keys describe the observation they come with: the next prompt after a step
    assert info1["step_prompt_id"] == info0["prompt_id"]
    core = env.unwrapped
    assert info1["prompt_id"] == core.current_prompt.id and info1["prompt"] == core.current_prompt.text
    assert step_record(info1).prompt_id == info1["step_prompt_id"] and step_record(info0) is None


def test_minari_data_collector_records_infos(tmp_path, monkeypatch, tiny_lm32):
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    env = minari.DataCollector(gym.make("DynPrune-v0", **{**FAST, "model": tiny_lm32}), record_infos=True)
    for episode in range(3):
        env.reset(seed=episode)
        env.step(env.action_space.sample())
    dataset = env.create_dataset(dataset_id="dynprune/collector-test-v0", algorithm_name="random")
    episodes = list(dataset.iterate_episodes())
    assert len(episodes) == 3
    infos = episodes[0].infos
    text = [s.decode() if isinstance(s, bytes) else str(s) for s in infos["step_prompt_id"]]
    first = infos["prompt_id"][0]
    assert text == ["", first.decode() if isinstance(first, bytes) else str(first)]
    assert len(infos["prompt_embedding"]) == 2


def test_sb3_agent_saved_without_suffix_loads_from_its_zip(tmp_path, tiny_lm32):
    from agents.base import load_agent
    from agents.dqn import SB3Agent, make_dqn

    env = gym.make("DynPrune-v0", **{**FAST, "model": tiny_lm32})
    agent = SB3Agent(make_dqn(env, seed=0, policy_kwargs={"net_arch": [8]}))
    agent.save(tmp_path / "x")
    obs, info = env.reset(seed=0)
    for path in (tmp_path / "x", tmp_path / "x.zip"):
        loaded = load_agent(path)
        assert int(loaded.act(obs, info)) == int(agent.act(obs, info))
    with pytest.raises(FileNotFoundError, match="no agent sidecar"):
        load_agent(tmp_path / "y.zip")


def test_no_deprecated_api_in_our_code(tiny_lm32):
    """Generation, scoring and an env step with every FutureWarning/DeprecationWarning an error."""
    env = gym.make("DynPrune-v0", **{**FAST, "model": tiny_lm32, "timing": "live"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        tiny_lm32.generate("What is two plus two?", max_new_tokens=3)
        tiny_lm32.score(tiny_lm32.encode_prompt("The capital of France is"), [5, 6, 7])
        tiny_lm32.text_perplexity("The capital of France is Paris.")
        env.reset(seed=0)
        env.step(5)


def test_progress_prints_lines_off_a_terminal():
    out = io.StringIO()
    with Progress(10, "train", "episodes", config=ProgressConfig(every=4), stream=out, tty=False) as bar:
        for i in range(10):
            bar.update(1, value=float(i))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # after 4, after 8, and the closing line at 10
    assert lines[0].startswith("[train] 4/10 episodes (40 %)") and "ETA" in lines[0]
    assert lines[-1].startswith("[train] 10/10 episodes (100 %)") and "mean reward +4.500 (last 10)" in lines[-1]
    assert format_duration(267) == "4 min 27 s" and format_duration(float("nan")) == "?"
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        ProgressConfig(every=0)


@pytest.mark.slow
def test_train_cli_progress_and_tensorboard(tmp_path):
    """`dynprune train` into a pipe prints progress lines; --tensorboard writes our scalars."""
    run, tb = tmp_path / "run", tmp_path / "tb"
    cmd = [sys.executable, "-m", "dynprune.cli", "train", "--run-dir", str(run), "--model", "tiny-llama",
           "--episodes", "60", "--max-new-tokens", "3", "--reward", "proxy", "--profile-tokens", "2",
           "--profile-repeats", "1", "--tensorboard", str(tb), "--checkpoint-every", "1000"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    progress = [ln for ln in res.stdout.splitlines() if ln.startswith("[train] ") and "episodes (" in ln]
    assert progress and progress[-1].startswith("[train] 60/60 episodes (100 %)"), res.stdout
    assert json.loads((run / "config.json").read_text())["tensorboard"] == str(tb)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = [p.parent for p in tb.rglob("events.out.tfevents.*")]
    acc = EventAccumulator(str(events_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"dynprune/reward", "dynprune/speedup", "dynprune/prefix_fidelity"} <= tags, tags


@pytest.mark.slow
def test_gym_make_needs_no_import_after_pip_install(tmp_path):
    """Install the project as a user would (a fresh venv, `pip install .`) and gym.make with no import."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # the dependencies come from this environment (already installed from the lock): a .pth of paths
    Path(site, "deps.pth").write_text(ours + "\n")
    res = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                          "--no-index", str(ROOT)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    probe = ("import gymnasium as gym; env = gym.make('DynPrune-v0', model='tiny-llama', reward='proxy', "
             "max_new_tokens=2); print(env.spec.id, env.reset(seed=0)[0].shape)")
    res = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[0] == "DynPrune-v0"
    installed = subprocess.run([str(py), "-c", "import envs; print(envs.__file__)"], capture_output=True,
                               text=True, cwd=tmp_path).stdout
    assert installed.startswith(site), installed  # the installed copy, not the checkout
