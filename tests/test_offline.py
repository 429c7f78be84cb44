"""Tests of offline_data/ and agents/offline.py: exploration, logged shards, preference pairs, d3rlpy."""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from offline_data.dataset import (
    LOG_FEATURES,
    check_logs,
    load_logs,
    read_meta,
    shard_path,
    shard_paths,
    to_mdp_dataset,
)
from offline_data.explore import (
    ExploreConfig,
    dfs_configs,
    explore,
    random_configs,
    split_round_robin,
)
from offline_data.prefs import compare, preference_pairs, row_score, write_pairs
from tests.conftest import TINY_ENV

N_ACTIONS = 10  # the default DynPrune-v0 action table

# ----------------------------------------------------------------------------- pure search

# A scripted scorer on a 4-layer toy: score = 10 - sum of per-layer costs; threshold 5.
COST = (1, 6, 2, 3)


def toy_score(layers: frozenset[int]) -> float:
    return 10.0 - sum(COST[i] for i in layers)


# Worked by hand: from a kept set, try layers 0..3 in order; a set reached again is not re-scored;
# sets of 4 layers are never tried (one layer always stays).
TOY_VISITS = [
    ((), 10, True),
    ((0,), 9, True),
    ((0, 1), 3, False),  # drops below 5: backtrack
    ((0, 2), 7, True),
    ((0, 1, 2), 1, False),
    ((0, 2, 3), 4, False),
    ((0, 3), 6, True),
    ((0, 1, 3), 0, False),  # {0, 2, 3} was already scored from {0, 2}
    ((1,), 4, False),
    ((2,), 8, True),
    ((1, 2), 2, False),  # {0, 2} already scored
    ((2, 3), 5, True),  # exactly at the threshold: kept
    ((1, 2, 3), -1, False),
    ((3,), 7, True),
    ((1, 3), 1, False),  # {0, 3} and {2, 3} already scored
]


def test_dfs_visit_order_threshold_and_backtracking_on_a_scripted_scorer():
    calls: list[frozenset[int]] = []

    def score(layers: frozenset[int]) -> float:
        calls.append(layers)
        return toy_score(layers)

    visits = dfs_configs(4, score, threshold=5, max_configs=100)
    assert [(tuple(sorted(v.layers)), v.score, v.kept) for v in visits] == TOY_VISITS
    # each set scored once, in the order returned
    assert calls == [v.layers for v in visits]
    # the search only ever goes deeper from a kept set
    kept = {v.layers for v in visits if v.kept}
    for v in visits[1:]:
        assert any(v.layers - {i} in kept for i in v.layers)


@pytest.mark.parametrize("cap", [1, 6, 9])
def test_dfs_stops_at_the_scenario_cap(cap):
    calls = []
    visits = dfs_configs(4, lambda s: calls.append(s) or toy_score(s), threshold=5, max_configs=cap)
    assert len(visits) == len(calls) == cap
    assert [tuple(sorted(v.layers)) for v in visits] == [v[0] for v in TOY_VISITS[:cap]]


def test_dfs_order_and_bad_arguments():
    visits = dfs_configs(4, toy_score, threshold=5, max_configs=3, order=[3, 2])
    assert [tuple(sorted(v.layers)) for v in visits] == [(), (3,), (2, 3)]
    with pytest.raises(ValueError, match="out of range 0..3"):
        dfs_configs(4, toy_score, threshold=5, order=[4])
    with pytest.raises(ValueError, match="max_configs"):
        dfs_configs(4, toy_score, threshold=5, max_configs=0)


def test_random_configs_are_seeded_distinct_and_bounded():
    a = random_configs(8, 6, np.random.default_rng(3), max_frac=0.5, candidates=range(1, 8))
    b = random_configs(8, 6, np.random.default_rng(3), max_frac=0.5, candidates=range(1, 8))
    assert a == b and len(a) == 6 and len(set(a)) == 6
    assert all(1 <= len(c) <= 4 and 0 not in c and list(c) == sorted(c) for c in a)
    assert random_configs(8, 6, np.random.default_rng(4), candidates=range(1, 8)) != a
    # asking for more sets than exist returns every one of them
    everything = random_configs(4, 50, np.random.default_rng(0), max_frac=0.5, candidates=[1, 2, 3])
    assert sorted(everything) == sorted([(1,), (2,), (3,), (1, 2), (1, 3), (2, 3)])


def test_split_round_robin_and_config_validation():
    assert split_round_robin(["a", "b", "c", "d", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
    assert split_round_robin(["a"], 3) == [["a"], [], []]
    with pytest.raises(ValueError, match="strategy"):
        ExploreConfig(strategy="bfs")


# ----------------------------------------------------------------------------- exploration on tiny-llama


@pytest.fixture(scope="module")
def dfs_logs(tmp_path_factory, prompt_ids) -> Path:
    out = tmp_path_factory.mktemp("dfs")
    explore(TINY_ENV, "dfs", out, prompt_ids=prompt_ids, threshold=0.0, max_configs=4)
    return out


def test_explore_writes_one_complete_shard_per_prompt(dfs_logs, prompt_ids):
    assert [p.name for p in shard_paths(dfs_logs)] == sorted(f"shard-{pid}.parquet" for pid in prompt_ids)
    ds = load_logs(dfs_logs)
    assert len(ds) == 3 * 4 and set(ds.features) == set(LOG_FEATURES)
    meta = read_meta(dfs_logs)
    assert meta["n_actions"] == N_ACTIONS and len(meta["observation_names"]) == 8
    for pid in prompt_ids:
        rows = [r for r in ds if r["prompt_id"] == pid]
        assert [r["order"] for r in rows] == [0, 1, 2, 3]
        # the DFS starts from the full model, which is table action 0
        assert rows[0]["layers"] == [] and rows[0]["action"] == 0 and rows[0]["action_name"] == "none"
        # threshold 0 keeps everything: each row adds one layer to a previous one, never layer 0
        for r in rows[1:]:
            assert 0 not in r["layers"] and 1 <= len(r["layers"]) <= 3
            assert any(sorted(set(r["layers"]) - {i}) == q["layers"] for q in rows for i in r["layers"])
        assert len({tuple(r["observation"]) for r in rows}) == 1 and len(rows[0]["observation"]) == 8
        for r in rows:
            assert r["strategy"] == "dfs" and r["timing"] == "modelled" and np.isfinite(r["reward"])
            assert json.loads(r["plan"])["skip"] == r["layers"]


def test_sweep_logs_every_table_action(sweep_logs, prompt_ids):
    ds = load_logs(sweep_logs)
    assert len(ds) == 3 * N_ACTIONS
    assert sorted(ds["action"]) == sorted(list(range(N_ACTIONS)) * 3)


def test_resume_after_a_crash_loses_nothing_already_written(tmp_path, monkeypatch, prompt_ids):
    from envs.dynprune_env import DynPruneEnv

    out = tmp_path / "logs"
    real = DynPruneEnv.record_plan

    def crash_on_second_prompt(self, plan, action=-1, action_name=None):
        if self.current_prompt.id == prompt_ids[1]:
            raise RuntimeError("simulated crash")
        return real(self, plan, action=action, action_name=action_name)

    monkeypatch.setattr(DynPruneEnv, "record_plan", crash_on_second_prompt)
    with pytest.raises(RuntimeError, match="simulated crash"):
        explore(TINY_ENV, "random", out, prompt_ids=prompt_ids, n_random=2)
    first = shard_path(out, prompt_ids[0])
    assert shard_paths(out) == [first]
    assert not list(out.glob(".*tmp"))  # no half-written shard left behind
    stat, content = first.stat().st_mtime_ns, first.read_bytes()

    monkeypatch.setattr(DynPruneEnv, "record_plan", real)
    summary = explore(TINY_ENV, "random", out, prompt_ids=prompt_ids, n_random=2)
    assert summary.skipped == (prompt_ids[0],) and summary.done == tuple(prompt_ids[1:])
    assert first.stat().st_mtime_ns == stat and first.read_bytes() == content
    assert len(shard_paths(out)) == 3 and len(load_logs(out)) == 3 * 2
    # nothing left to do on a third run
    assert explore(TINY_ENV, "random", out, prompt_ids=prompt_ids, n_random=2).done == ()
    # other settings in the same directory are refused
    with pytest.raises(ValueError, match="other settings"):
        explore(TINY_ENV, "random", out, prompt_ids=prompt_ids, n_random=3)


def test_a_truncated_shard_is_reported_by_name_and_the_rest_load(dfs_logs, tmp_path, prompt_ids):
    logs = tmp_path / "logs"
    shutil.copytree(dfs_logs, logs)
    broken = shard_path(logs, prompt_ids[1])
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    damaged = check_logs(logs)
    assert [path for path, _ in damaged] == [broken]
    with pytest.warns(RuntimeWarning, match=broken.name):
        ds = load_logs(logs)
    assert len(ds) == 2 * 4 and set(ds["prompt_id"]) == {prompt_ids[0], prompt_ids[2]}
    # a re-run measures the damaged prompt again and leaves the others alone
    with pytest.warns(RuntimeWarning, match=broken.name):
        summary = explore(TINY_ENV, "dfs", logs, prompt_ids=prompt_ids, threshold=0.0, max_configs=4)
    assert summary.done == (prompt_ids[1],) and check_logs(logs) == []


@pytest.mark.slow
def test_two_spawned_workers_write_the_same_rows_as_one(dfs_logs, tmp_path, prompt_ids):
    # ~10 s: each spawned process imports torch and builds its own env
    summary = explore(TINY_ENV, "dfs", tmp_path, prompt_ids=prompt_ids, threshold=0.0, max_configs=4, workers=2,
                      threads=1)
    assert [w.done for w in summary.workers] == [(prompt_ids[0], prompt_ids[2]), (prompt_ids[1],)]
    one, two = load_logs(dfs_logs), load_logs(tmp_path)
    # each prompt is seeded by its id: the split over workers does not change its rows
    for column in ("prompt_id", "observation", "layers", "action", "token_agreement", "ppl"):
        assert one[column] == two[column]


def test_pruned_layers_use_their_adapter_when_the_model_has_one(tmp_path, prompt_ids):
    from dynprune.adapter_files import save_adapters
    from dynprune.adapter_training import AdapterConfig, init_adapters
    from dynprune.models import load_model

    lm = load_model("tiny-llama", device="cpu")
    config = AdapterConfig(layers=(2, 3))
    path = save_adapters(init_adapters(lm, config), tmp_path / "a.safetensors", lm.model_id, config.bottleneck)
    logs = tmp_path / "logs"
    explore(TINY_ENV, "dfs", logs, prompt_ids=prompt_ids[:1], threshold=0.0, max_configs=8, adapters=path)
    rows = load_logs(logs).to_list()
    assert len(rows) == 8 and read_meta(logs)["settings"]["explore"]["adapters"] == str(path.resolve())
    for r in rows:
        plan = json.loads(r["plan"])
        assert plan["adapters"] == [i for i in r["layers"] if i in (2, 3)]
        assert plan["skip"] == [i for i in r["layers"] if i not in (2, 3)]
    assert any(1 in r["layers"] and 2 in r["layers"] for r in rows)


# ----------------------------------------------------------------------------- preference pairs


def _row(pid, layers, agreement, task=None, timing="profiled", plan=None):
    return {"prompt_id": pid, "layers": layers, "token_agreement": agreement, "task_score": task, "timing": timing,
            "plan": json.dumps(plan or {"skip": layers, "heads": {}, "ffn": {}})}


def test_preference_pairs_winner_rule_by_hand():
    rows = [
        _row("p", [], 1.0),
        _row("p", [1], 1.0),
        _row("p", [2], 0.5),
        _row("p", [1], 0.1),  # the same layer set again: only its first row counts
        _row("p", [], 0.9, plan={"skip": [], "heads": {"0": 3}, "ffn": {}}),  # not a layer set
        _row("p", [1, 2], 1.0),
        _row("q", [1], 0.7),  # equal score and equal size: a tie, no pair
        _row("q", [2], 0.7),
        # live rows of a prompt with ground truth rank by task score, not token agreement
        _row("r", [], 1.0, task=1.0, timing="live"),
        _row("r", [3], 0.9, task=0.0, timing="live"),
        _row("r", [1], 0.2, task=1.0, timing="live"),
    ]
    got = [(p["prompt_id"], p["winner_layers"], p["loser_layers"], p["winner_score"], p["loser_score"])
           for p in preference_pairs(rows, mode="all")]
    assert got == [
        ("p", [1], [], 1.0, 1.0),  # equal score: more layers pruned wins
        ("p", [], [2], 1.0, 0.5),  # higher score wins
        ("p", [1, 2], [], 1.0, 1.0),
        ("p", [1], [2], 1.0, 0.5),
        ("p", [1, 2], [1], 1.0, 1.0),
        ("p", [1, 2], [2], 1.0, 0.5),
        ("r", [], [3], 1.0, 0.0),
        ("r", [1], [], 1.0, 1.0),
        ("r", [1], [3], 1.0, 0.0),
    ]
    assert compare(0.5, 1, 0.5, 3) == -1 and compare(0.6, 1, 0.5, 3) == 1 and compare(0.5, 2, 0.5, 2) == 0
    # profiled rows ignore a task score that only the unpruned-equivalent plans carry
    assert row_score(_row("x", [], 0.25, task=1.0)) == 0.25
    assert len(preference_pairs(rows, mode="all", max_pairs_per_prompt=2)) == 2 + 2


def test_random_preference_pairs_are_seeded_subsets(tmp_path):
    rows = [_row("p", [i], 0.1 * i) for i in range(1, 7)] + [_row("q", [1], 0.3), _row("q", [2], 0.4)]
    everything = preference_pairs(rows, mode="all")
    a = preference_pairs(rows, mode="random", seed=1, max_pairs_per_prompt=4)
    assert a == preference_pairs(rows, mode="random", seed=1, max_pairs_per_prompt=4)
    assert len(a) == 4 + 1 and all(p in everything for p in a)
    assert len(preference_pairs(rows, mode="random", seed=1)) == 6 + 1  # default: one pair per layer set
    path = write_pairs(a, tmp_path / "pairs.parquet")
    import datasets

    assert datasets.Dataset.from_parquet(str(path), cache_dir=str(tmp_path / "cache")).to_list() == a


# ----------------------------------------------------------------------------- d3rlpy export and training


def test_mdp_export_has_one_step_episodes_and_the_full_action_space():
    import d3rlpy
    import datasets

    base = {k: None for k in LOG_FEATURES}
    rows = []
    for i, action in enumerate([0, 4, -1, 2, -1, 4]):
        rows.append({**base, "prompt_id": f"p{i}", "observation": [float(i)] * 8, "layers": [], "action": action,
                     "reward": 0.1 * i, "token_agreement": 1.0})
    ds = datasets.Dataset.from_list(rows, features=LOG_FEATURES)
    mdp = to_mdp_dataset(ds, n_actions=N_ACTIONS)
    # action 9 never appears in the data, yet the action space has all 10 actions
    assert mdp.dataset_info.action_space == d3rlpy.ActionSpace.DISCRETE
    assert mdp.dataset_info.action_size == N_ACTIONS
    assert mdp.transition_count == len(mdp.episodes) == 4
    assert all(ep.size() == 1 and ep.terminated for ep in mdp.episodes)
    assert [int(ep.actions[0, 0]) for ep in mdp.episodes] == [0, 4, 2, 4]
    np.testing.assert_allclose([float(ep.rewards[0, 0]) for ep in mdp.episodes], [0.0, 0.1, 0.3, 0.5], rtol=1e-6)
    with pytest.raises(ValueError, match="outside the action table"):
        to_mdp_dataset(ds, n_actions=4)
    with pytest.raises(ValueError, match="none of the"):
        to_mdp_dataset(ds.filter(lambda r: r["action"] < 0), n_actions=N_ACTIONS)


@pytest.fixture(scope="module")
def sweep_mdp(sweep_logs):
    return to_mdp_dataset(load_logs(sweep_logs), n_actions=N_ACTIONS)


@pytest.mark.parametrize("algo", ["cql", "bcq", "ddqn", "bc"])
def test_train_offline_acts_in_the_action_space_and_round_trips(algo, sweep_mdp, sweep_logs, tmp_path):
    from agents import load_agent, make_agent
    from agents.base import read_sidecar
    from agents.offline import D3rlpyAgent, train_offline

    agent = train_offline(sweep_mdp, algo, n_steps=4, seed=0, batch_size=8)
    assert isinstance(agent, D3rlpyAgent) and agent.n_actions == N_ACTIONS and len(agent.train_metrics) == 1
    obs = np.asarray(load_logs(sweep_logs)["observation"], dtype=np.float32)
    actions = [agent.act(o) for o in obs]
    assert all(isinstance(a, int) and 0 <= a < N_ACTIONS for a in actions)
    agent.save(tmp_path / "agent.zip")
    assert read_sidecar(tmp_path / "agent.zip")[0] == "d3rlpy"
    same = load_agent(tmp_path / "agent.zip")
    assert isinstance(same, D3rlpyAgent) and same.algo_name == algo and same.name == f"offline-{algo}"
    assert [same.act(o) for o in obs] == actions
    assert not list(tmp_path.glob(".d3rlpy-*")) and not Path("d3rlpy_logs").exists()
    if algo == "cql":  # the registry builds an untrained one for an env
        import gymnasium as gym

        env = gym.make("CartPole-v1")
        fresh = make_agent("d3rlpy", env, algo="bc", seed=0)
        assert fresh.act(env.reset(seed=0)[0]) in (0, 1)
    with pytest.raises(ValueError, match="unknown offline algorithm"):
        train_offline(sweep_mdp, "sac", n_steps=1)


def _parser() -> argparse.ArgumentParser:
    import agents.cli
    import agents.offline_cli
    import offline_data.cli

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    agents.cli.add_commands(sub)
    offline_data.cli.add_commands(sub)
    agents.offline_cli.add_commands(sub)
    return parser


def _run(*argv: str) -> int:
    args = _parser().parse_args(list(argv))
    return int(args.fn(args) or 0)


def test_offline_command_writes_a_run_that_dynprune_test_evaluates(sweep_logs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert _run("offline", "--logs", str(sweep_logs), "--algo", "ddqn", "--run-dir", str(run_dir), "--steps", "4",
                "--batch-size", "8", "--test-prompts", "2", "--test-timing", "profiled") == 0
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model"] == "tiny-llama" and cfg["reward"] == "proxy" and cfg["max_new_tokens"] == 3
    assert (cfg["profile_tokens"], cfg["profile_repeats"]) == (2, 1) and cfg["transitions"] == 30
    assert (run_dir / "agent.zip").is_file() and (run_dir / "train_log.jsonl").is_file()
    with pytest.raises(ValueError, match="already holds a run"):
        _run("offline", "--logs", str(sweep_logs), "--algo", "bc", "--run-dir", str(run_dir), "--steps", "4")
    assert _run("test", "--run-dir", str(run_dir)) == 0
    summary = json.loads((run_dir / "test" / "summary.json").read_text())
    assert {"offline-ddqn", "none", "random", "oracle"} <= set(summary)
    assert summary["offline-ddqn"]["n"] == 2


def test_explore_and_prefs_commands(dfs_logs, tmp_path, prompt_ids, capsys):
    out = tmp_path / "pairs.parquet"
    assert _run("prefs", "--logs", str(dfs_logs), "--mode", "all", "--out", str(out)) == 0
    assert out.is_file() and "pairs from 12 rows" in capsys.readouterr().out
    logs = tmp_path / "logs"
    argv = ["explore", "--strategy", "random", "--out", str(logs), "--model", "tiny-llama", "--prompts", "1",
            "--n-random", "2", "--reward", "proxy", "--max-new-tokens", "3", "--profile-tokens", "2",
            "--profile-repeats", "1"]
    assert _run(*argv) == 0
    assert [p.name for p in shard_paths(logs)] == [f"shard-{prompt_ids[0]}.parquet"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_logs(logs)) == 2


def test_shard_names_are_safe_and_distinct(tmp_path):
    names = {shard_path(tmp_path, pid).name for pid in ["a/b", "a_b", "a b", ".hidden", "qa-0001"]}
    assert len(names) == 5 and "shard-qa-0001.parquet" in names
    assert all("/" not in n and not n.startswith(".") for n in names)
    assert shard_paths(tmp_path) == []


def test_ray_backend_without_ray_names_the_install(tmp_path, prompt_ids, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ModuleNotFoundError, match="pip install ray"):
        explore(TINY_ENV, "dfs", tmp_path, prompt_ids=prompt_ids, backend="ray")


def test_minari_export_round_trips_the_sweep(sweep_logs, tmp_path, monkeypatch):
    import minari

    from offline_data.dataset import load_logs
    from offline_data.minari_export import episodes_summary, to_minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    path = to_minari(sweep_logs, "dynprune/tiny-sweep-v0")
    assert path == tmp_path / "minari" / "dynprune" / "tiny-sweep-v0" and path.is_dir()
    assert not [p for p in (tmp_path / "minari").iterdir() if p.name.startswith(".dynprune-export-")]
    rows = [r for r in load_logs(sweep_logs).to_list() if r["action"] >= 0]
    data = minari.load_dataset("dynprune/tiny-sweep-v0")
    assert data.total_episodes == len(rows) and data.total_steps == len(rows)
    assert data.action_space.n == 10
    for ep, row in zip(data.iterate_episodes(), rows, strict=True):
        assert ep.actions.tolist() == [row["action"]] and ep.terminations.tolist() == [True]
        assert ep.rewards[0] == pytest.approx(row["reward"])
        np.testing.assert_allclose(ep.observations[0], np.asarray(row["observation"], np.float32))
    summary = episodes_summary("dynprune/tiny-sweep-v0")
    assert summary["episodes"] == len(rows)
    assert summary["mean_reward"] == pytest.approx(np.mean([r["reward"] for r in rows]), rel=1e-5)
    # never overwritten silently; --force replaces it whole
    with pytest.raises(ValueError, match="already exists"):
        to_minari(sweep_logs, "dynprune/tiny-sweep-v0")
    assert to_minari(sweep_logs, "dynprune/tiny-sweep-v0", force=True) == path
    with pytest.raises(ValueError, match="dataset_id must look like 'namespace/name-v0'"):
        to_minari(sweep_logs, "no version")


def test_minari_command(sweep_logs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "m"))
    assert _run("minari", "--logs", str(sweep_logs), "--dataset-id", "dynprune/cli-sweep-v1") == 0
    assert "dynprune/cli-sweep-v1: 30 one-step episodes" in capsys.readouterr().out
    with pytest.raises(ValueError, match="already exists"):
        _run("minari", "--logs", str(sweep_logs), "--dataset-id", "dynprune/cli-sweep-v1")


def test_writing_no_pairs_is_a_clear_error(tmp_path):
    from offline_data.prefs import write_pairs

    with pytest.raises(ValueError, match="no preference pairs to write"):
        write_pairs([], tmp_path / "pairs.parquet")
    assert not (tmp_path / "pairs.parquet").exists()


def test_max_scenarios_is_a_deprecated_alias_and_old_logs_resume(dfs_logs, tmp_path, prompt_ids, capsys):
    import pyarrow.parquet as pq

    from offline_data.cli import add_commands
    from offline_data.dataset import META_KEY

    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    add_commands(sub)
    args = sub.choices["explore"].parse_args(["--strategy", "dfs", "--out", "x", "--max-scenarios", "7"])
    assert args.max_configs == 7 and "use --max-configs" in capsys.readouterr().err
    with pytest.warns(DeprecationWarning, match="max_configs"):
        with pytest.raises(ValueError, match="max_configs must be >= 1"):
            explore(TINY_ENV, "dfs", tmp_path / "none", prompt_ids=prompt_ids, max_scenarios=0)
    # logs whose shards say max_scenarios (written before the rename) read and resume as the same settings
    old = tmp_path / "old"
    old.mkdir()
    for path in shard_paths(dfs_logs)[:1]:
        table = pq.read_table(path)
        meta = json.loads(table.schema.metadata[META_KEY])
        explore_settings = meta["settings"]["explore"]
        explore_settings["max_scenarios"] = explore_settings.pop("max_configs")
        pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta)}), old / path.name)
    assert read_meta(old)["settings"] == read_meta(dfs_logs)["settings"]
    summary = explore(TINY_ENV, "dfs", old, prompt_ids=prompt_ids[:1], threshold=0.0, max_configs=4)
    assert summary.skipped == (prompt_ids[0],)
