"""envs.run_config.RunConfig: validation, the config.json round trip (old runs included), the env kwargs and
flags, the prompt-subset rule, and that an offline run's held-out env attaches the logs' adapters."""

from __future__ import annotations

import argparse
import json

import pytest

from dynprune.cli import main
from dynprune.records import read_jsonl
from envs.run_config import RunConfig, seeded_subset


def test_json_round_trip_keeps_every_setting_and_the_commands_own():
    cfg = RunConfig(model="tiny-llama", reward="latency_budget", budget_range=(0.9, 1.1), healing="h",
                    adapters="a.safetensors", test_prompts=3, seed=7, extra={"agent": "ddqn", "episodes": 12})
    data = json.loads(json.dumps(cfg.to_json()))  # through JSON: the tuple comes back as a list
    assert data["budget_range"] == [0.9, 1.1] and data["agent"] == "ddqn"
    assert RunConfig.from_json(data) == cfg


def test_reads_a_config_written_before_run_config():
    # the keys agents.cli wrote (no prompt_embedding, healing, adapters; "mixed" beside live telemetry)
    old = {"agent": "ddqn", "episodes": 12, "model": "tiny-llama", "device": "auto", "reward": "proxy",
           "timing": "modelled", "test_timing": "live", "telemetry": "live", "scenario": "mixed",
           "max_new_tokens": 3, "train_prompts": 6, "test_prompts": 2, "profile_tokens": 2, "profile_repeats": 1,
           "budget_range": None, "checkpoint_every": 4, "seed": 0, "created": "2026-01-01 00:00:00"}
    cfg = RunConfig.from_json(old)
    kwargs = cfg.env_kwargs("test")
    assert kwargs["scenario"] is None and kwargs["timing"] == "live" and kwargs["prompt_embedding"] == 0
    assert "adapters" not in kwargs and "healing" not in kwargs and "budget_range" not in kwargs
    assert cfg.extra == {"agent": "ddqn", "episodes": 12, "checkpoint_every": 4, "created": "2026-01-01 00:00:00"}
    assert {k: v for k, v in cfg.to_json().items() if k in old} == {**old, "scenario": None}


@pytest.mark.parametrize(("change", "match"), [
    ({"timing": "fast"}, r"'fast'.*--timing"),
    ({"telemetry": "live", "scenario": "idle"}, r"'idle'.*drop --scenario"),
    ({"test_prompts": 0}, r"0.*--test-prompts N"),
    ({"budget_range": (1.2, 0.8)}, r"\(1.2, 0.8\).*--budget-range"),
    ({"max_new_tokens": 0}, r"0.*--max-new-tokens"),
    ({"extra": {"seed": 1}}, r"\['seed'\].*as fields"),
])
def test_bad_settings_name_the_value_and_the_remedy(change, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**change)


def test_flags_declared_once_and_parsed_back():
    p = argparse.ArgumentParser()
    RunConfig.add_arguments(p, skip=("train_prompts",), defaults={"test_prompts": 5})
    ns = p.parse_args(["--model", "tiny-llama", "--budget-range", "0.9", "1.0", "--adapters", "a.safetensors"])
    cfg = RunConfig.from_args(ns, agent="ddqn")
    assert (cfg.model, cfg.budget_range, cfg.adapters, cfg.test_prompts) == ("tiny-llama", (0.9, 1.0),
                                                                               "a.safetensors", 5)
    assert cfg.train_prompts is None and cfg.extra == {"agent": "ddqn"}
    assert cfg.env_kwargs("train")["adapters"] == "a.safetensors"
    with pytest.raises(SystemExit):
        p.parse_args(["--train-prompts", "3"])  # skipped
    with pytest.raises(ValueError, match="not RunConfig flags"):
        RunConfig.add_arguments(argparse.ArgumentParser(), skip=("episodes",))


def test_seeded_subset_is_one_rule():
    items = list(range(20))
    a = seeded_subset(items, 5, seed=3)
    assert a == seeded_subset(items, 5, seed=3) and a == sorted(a) and len(set(a)) == 5
    assert a != seeded_subset(items, 5, seed=4)
    assert seeded_subset(items, None, 0) == items and seeded_subset(items, 50, 0) == items


def test_offline_run_on_adapter_logs_is_tested_with_those_adapters(tmp_path):
    """The held-out env of an offline agent trained on adapter logs attaches the same adapters (it used not to:
    config.json named the file and nothing read it, so the layer actions skipped the layers instead)."""
    from dynprune.adapter_files import save_adapters
    from dynprune.adapter_training import AdapterConfig, init_adapters
    from dynprune.models import load_model

    lm = load_model("tiny-llama")  # the spec the commands load (the file is checked against its model id)
    config = AdapterConfig()
    adapters = save_adapters(init_adapters(lm, config), tmp_path / "a.safetensors", lm.model_id, config.bottleneck)
    logs, run_dir = tmp_path / "logs", tmp_path / "run"
    assert main(["explore", "--strategy", "sweep", "--out", str(logs), "--prompts", "1", "--adapters", str(adapters),
                 "--model", "tiny-llama", "--max-new-tokens", "3", "--profile-tokens", "2", "--profile-repeats", "1",
                 "--reward", "proxy", "--timing", "profiled"]) == 0
    assert main(["offline", "--logs", str(logs), "--algo", "bc", "--run-dir", str(run_dir), "--steps", "2",
                 "--batch-size", "4", "--test", "--test-prompts", "1", "--test-timing", "profiled"]) == 0
    # the table's layer actions on the held-out prompt: each removes its layers by their adapters, as in the logs
    plans = [r["plan"] for p in sorted((run_dir / "test").glob("static-layers*.jsonl")) for r in read_jsonl(p)]
    removing = [plan for plan in plans if plan["skip"] or plan["adapters"]]
    assert removing, plans
    assert all(plan["adapters"] and not plan["skip"] for plan in removing), removing
