"""The train / test / report commands on tiny-llama: run directories, Ctrl-C and resume."""

from __future__ import annotations

import json

import pytest

from dynprune.cli import build_parser, main
from dynprune.records import read_jsonl
from offline_data.dataset import read_meta

TINY = ["--model", "tiny-llama", "--max-new-tokens", "3", "--profile-tokens", "2", "--profile-repeats", "1",
        "--train-prompts", "6", "--test-prompts", "2", "--reward", "proxy", "--checkpoint-every", "4"]


def run(*argv: str) -> int:
    return main(list(argv))


def test_train_test_report_and_no_silent_overwrite(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert run("train", "--run-dir", run_dir, "--episodes", "12", *TINY) == 0
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert len(records) == 12 and all(r["agent"] == "ddqn" for r in records)
    assert len(read_jsonl(tmp_path / "run" / "train_log.jsonl")) == 12
    # a second train into the same directory is refused without --force
    assert run("train", "--run-dir", run_dir, "--episodes", "12", *TINY) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert run("test", "--run-dir", run_dir, "--test-timing", "profiled") == 0
    summary = json.loads((tmp_path / "run" / "test" / "summary.json").read_text())
    assert {"ddqn", "none", "random", "oracle"} <= set(summary)
    assert summary["oracle"]["mean_reward"] >= max(v["mean_reward"] for v in summary.values()) - 1e-9
    assert run("report", run_dir) == 0
    assert (tmp_path / "run" / "report" / "report.txt").is_file()
    assert run("train", "--run-dir", run_dir, "--episodes", "4", "--force", *TINY) == 0
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 4


def test_ctrl_c_keeps_records_and_resume_continues(tmp_path, monkeypatch):
    from envs.dynprune_env import DynPruneEnv

    run_dir = tmp_path / "run"
    real_step = DynPruneEnv.step
    calls = {"n": 0}

    def interrupted_step(self, action):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real_step(self, action)

    monkeypatch.setattr(DynPruneEnv, "step", interrupted_step)
    assert run("train", "--run-dir", str(run_dir), "--episodes", "16", *TINY) == 130
    assert (run_dir / "checkpoint.zip").is_file() and not (run_dir / "agent.zip").exists()
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 9  # every finished step survived
    monkeypatch.setattr(DynPruneEnv, "step", real_step)
    assert run("train", "--run-dir", str(run_dir), "--resume") == 0
    assert (run_dir / "agent.zip").is_file()
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 16


def test_parser_lists_plugin_commands():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert {"demo", "info", "calibrate", "report", "train", "test", "main"} <= set(choices)


def test_test_without_agent_is_a_clear_error(tmp_path, capsys):
    assert run("test", "--run-dir", str(tmp_path)) == 2
    assert "no trained agent" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--episodes", "x"]])
def test_bad_arguments_exit_nonzero(tmp_path, bad):
    with pytest.raises(SystemExit):
        run("train", "--run-dir", str(tmp_path / "r"), *bad)


def test_budget_range_reaches_the_train_and_test_envs(tmp_path):
    from envs.run_config import RunConfig

    run_dir = tmp_path / "budget"
    argv = [a if a != "proxy" else "latency_budget" for a in TINY]
    assert run("train", "--run-dir", str(run_dir), "--episodes", "4", "--budget-range", "0.9", "0.95", *argv) == 0
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["budget_range"] == [0.9, 0.95]
    for split in ("train", "test"):
        env = RunConfig.from_json(cfg).make_env(split)
        assert env.unwrapped.budget_range == (0.9, 0.95)
        obs, _ = env.reset(seed=0)
        budget = obs[env.unwrapped.observation_names.index("latency_budget")] / env.unwrapped.monitor.budget_scale
        assert 0.9 - 1e-6 <= budget <= 0.95 + 1e-6


def test_explore_budget_range_is_in_the_logs_settings_and_the_offline_run(tmp_path):
    logs = tmp_path / "logs"
    assert run("explore", "--strategy", "sweep", "--out", str(logs), "--model", "tiny-llama", "--prompts", "1",
               "--max-new-tokens", "3", "--profile-tokens", "2", "--profile-repeats", "1",
               "--reward", "latency_budget", "--budget-range", "0.85", "1.1") == 0
    meta = read_meta(logs)
    assert meta["settings"]["env"]["budget_range"] == [0.85, 1.1]
    run_dir = tmp_path / "run"
    assert run("offline", "--logs", str(logs), "--algo", "bc", "--run-dir", str(run_dir), "--steps", "2",
               "--batch-size", "4") == 0
    assert json.loads((run_dir / "config.json").read_text())["budget_range"] == [0.85, 1.1]
