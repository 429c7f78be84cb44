"""Tests of offline_data/relabel.py: latency-budget rows under more budgets (hindsight relabelling)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest

from dynprune.rewards import LatencyBudgetReward
from dynprune.runtime import ProfileConfig
from offline_data.dataset import OPTIONAL_COLUMNS, load_logs, read_meta, shard_paths, to_mdp_dataset
from offline_data.explore import explore, prompt_ids_of
from offline_data.relabel import budget_span, relabel_budgets, relabel_row

BUDGET_ENV = {
    "model": "tiny-llama",
    "reward": "latency_budget",
    "max_new_tokens": 3,
    "profile": ProfileConfig(new_tokens=2, repeats=1, min_rounds=1),
    "split": "train",
}
N_ACTIONS = 10


@pytest.fixture(scope="module")
def budget_logs(tmp_path_factory) -> Path:
    """A sweep of 3 prompts under the latency-budget reward, live timing (task scores where prompts have gold)."""
    out = tmp_path_factory.mktemp("budget-sweep")
    ids = prompt_ids_of(BUDGET_ENV)[:3]
    explore({**BUDGET_ENV, "timing": "live"}, "sweep", out, prompt_ids=ids)
    return out


def _names(log_dir: Path) -> list[str]:
    return read_meta(log_dir)["observation_names"]


def test_logged_rows_carry_prefix_fidelity_and_budget(budget_logs):
    ds = load_logs(budget_logs)
    assert len(ds) == 3 * N_ACTIONS
    i = _names(budget_logs).index("latency_budget")
    for row in ds:
        assert 0.0 <= row["prefix_fidelity"] <= 1.0
        # the env's rule: budget in seconds = full-model latency x observed budget (float32 in the observation)
        assert row["budget_s"] == pytest.approx(row["baseline_latency_s"] * row["observation"][i], rel=1e-6)
    full = [r for r in ds if r["action"] == 0]
    assert all(r["prefix_fidelity"] == 1.0 for r in full)


def test_a_row_under_its_own_budget_gets_its_logged_reward(budget_logs):
    names = _names(budget_logs)
    for row in load_logs(budget_logs):
        own = row["budget_s"] / row["baseline_latency_s"]
        assert relabel_row(row, own, names)["reward"] == pytest.approx(row["reward"], abs=1e-9)


def test_relabelled_rewards_follow_the_budget_rule_by_hand(budget_logs):
    names = _names(budget_logs)
    row = next(r for r in load_logs(budget_logs) if r["action"] == 7)
    for task_score, quality in ((row["task_score"], row["task_score"]), (None, row["prefix_fidelity"])):
        # quality = the task score when the prompt has gold, else the prefix fidelity (the env's rule)
        r = {**row, "task_score": task_score}
        assert quality is not None
        ratio = r["latency_s"] / r["baseline_latency_s"]  # the budget this plan just meets
        assert relabel_row(r, ratio * 1.01, names)["reward"] == pytest.approx(quality)
        # missed by 10 %: quality - 1 - penalty x overshoot
        assert relabel_row(r, ratio / 1.1, names)["reward"] == pytest.approx(quality - 1.0 - 2.0 * 0.1)
    row = {**row, "task_score": None}
    ratio = row["latency_s"] / row["baseline_latency_s"]
    missed = relabel_row(row, ratio / 1.1, names)
    assert missed["observation"][names.index("latency_budget")] == pytest.approx(ratio / 1.1)
    assert missed["budget_s"] == pytest.approx(row["latency_s"] / 1.1)
    stricter = relabel_row(row, ratio / 1.1, names, reward=LatencyBudgetReward(penalty=5.0))
    assert stricter["reward"] == pytest.approx(row["prefix_fidelity"] - 1.0 - 5.0 * 0.1)


def test_relabel_budgets_copies_every_row_with_one_fresh_budget_per_prompt_and_copy(budget_logs):
    ds = load_logs(budget_logs)
    names = _names(budget_logs)
    i = names.index("latency_budget")
    out = relabel_budgets(ds, names, budgets_per_row=4, budget_range=(0.5, 1.5), seed=3)
    assert len(out) == 4 * len(ds)
    assert out.select(range(len(ds))).to_list() == ds.to_list()  # the logged rows come first, unchanged
    for copy in range(1, 4):
        part = out.select(range(copy * len(ds), (copy + 1) * len(ds))).to_list()
        by_prompt: dict[str, set[float]] = {}
        for new, old in zip(part, ds.to_list(), strict=True):
            assert new["prompt_id"] == old["prompt_id"] and new["action"] == old["action"]
            assert new["latency_s"] == old["latency_s"]  # measurements are not touched
            budget = new["observation"][i]
            assert 0.5 <= budget <= 1.5
            by_prompt.setdefault(new["prompt_id"], set()).add(budget)
            # relative: the observation holds the budget in float32, and a loaded machine's live latencies can
            # overshoot it 50-fold (a reward near -95 is 4e-6 off through that rounding alone)
            assert new["reward"] == pytest.approx(relabel_row(old, budget, names)["reward"], rel=1e-6, abs=1e-6)
            other = [x for j, x in enumerate(new["observation"]) if j != i]
            assert other == [x for j, x in enumerate(old["observation"]) if j != i]
        assert all(len(b) == 1 for b in by_prompt.values())  # every action of a prompt sees the prompt's budget
    again = relabel_budgets(ds, names, budgets_per_row=4, budget_range=(0.5, 1.5), seed=3)
    assert again.to_list() == out.to_list()
    other_seed = relabel_budgets(ds, names, budgets_per_row=4, budget_range=(0.5, 1.5), seed=4)
    assert other_seed["observation"] != out["observation"]
    # the d3rlpy export sees every copy as its own one-step episode
    assert int(to_mdp_dataset(out, N_ACTIONS).transition_count) == 4 * len(ds)


def test_default_range_is_the_logged_budget_span(budget_logs):
    ds = load_logs(budget_logs)
    names = _names(budget_logs)
    lo, hi = budget_span(ds, names)
    budgets = np.asarray(relabel_budgets(ds, names, 5, seed=0)["observation"])[:, names.index("latency_budget")]
    assert lo - 1e-6 <= budgets.min() and budgets.max() <= hi + 1e-6
    assert relabel_budgets(ds, names, 1) is ds


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"budgets_per_row": 0}, "budgets_per_row must be >= 1"),
     ({"budgets_per_row": 2, "budget_range": (1.2, 0.8)}, "budget_range must satisfy"),
     ({"budgets_per_row": 2, "budget_range": (0.0, 1.0)}, "budget_range must satisfy")],
)
def test_bad_arguments_are_clear_errors(budget_logs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        relabel_budgets(load_logs(budget_logs), _names(budget_logs), **kwargs)


def test_logs_without_a_budget_field_are_refused(tmp_path):
    env = {**BUDGET_ENV, "reward": "proxy"}
    explore(env, "sweep", tmp_path, prompt_ids=prompt_ids_of(env)[:1])
    with pytest.raises(ValueError, match="no 'latency_budget' field"):
        relabel_budgets(load_logs(tmp_path), _names(tmp_path), 2)


def test_old_shards_read_with_nulls_and_cannot_be_relabelled(budget_logs, tmp_path):
    """Shards written before prefix_fidelity / budget_s were logged still load; relabelling them says why not."""
    # the old layout: settings in a file beside the shards
    (tmp_path / "meta.json").write_text(json.dumps(read_meta(budget_logs)))
    for path in shard_paths(budget_logs):
        table = pq.read_table(path)
        table = table.drop_columns(list(OPTIONAL_COLUMNS))
        pq.write_table(table, tmp_path / path.name)
    ds = load_logs(tmp_path)
    assert len(ds) == 3 * N_ACTIONS and set(ds["prefix_fidelity"]) == {None} and set(ds["budget_s"]) == {None}
    rows = ds.to_list()
    rows[0]["task_score"] = None  # a prompt without gold: its quality would be the missing prefix fidelity
    with pytest.raises(ValueError, match="explore again"):
        relabel_budgets(datasets.Dataset.from_list(rows, features=ds.features), _names(tmp_path), 2)


def test_offline_command_relabels_budgets(budget_logs, tmp_path, capsys):
    from dynprune.cli import build_parser

    run_dir = tmp_path / "run"
    args = build_parser().parse_args(["offline", "--logs", str(budget_logs), "--algo", "cql", "--run-dir", str(run_dir),
                                 "--steps", "4", "--batch-size", "8", "--relabel-budgets", "3",
                                 "--relabel-range", "0.8", "1.2"])
    assert args.fn(args) == 0
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["transitions"] == 3 * 3 * N_ACTIONS
    assert cfg["relabel_budgets"] == 3 and cfg["relabel_range"] == [0.8, 1.2]
    assert cfg["budget_range"] == [0.8, 1.2]  # the env default the logs were drawn with, for dynprune test
    assert "relabelled 30 logged rows under 3 budgets each: 90 rows" in capsys.readouterr().out


def test_benchmark_refuses_relabelling_without_a_budget_reward():
    from benchmarks.offline_rl import Args

    with pytest.raises(ValueError, match="needs reward latency_budget"):
        Args(reward="casrap", relabel_budgets=4)
    assert Args(reward="latency_budget", relabel_budgets=4).relabel_budgets == 4
