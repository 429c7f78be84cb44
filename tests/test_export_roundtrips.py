"""Our logs through the ecosystem's own readers: pyarrow, pandas and datasets on a log folder,
Minari's ``recover_environment`` and d3rlpy on an exported dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dynprune.runtime import ProfileConfig
from offline_data.dataset import (
    LEGACY_META_FILE,
    LOG_FEATURES,
    META_KEY,
    load_logs,
    migrate_legacy_meta,
    read_meta,
    shard_paths,
)
from offline_data.explore import explore, prompt_ids_of
from tests.conftest import TINY_ENV

BUDGET_ENV = {**TINY_ENV, "reward": "latency_budget", "budget_range": (0.85, 1.1)}
N_ACTIONS = 10


@pytest.fixture(scope="module")
def budget_logs(tmp_path_factory, prompt_ids) -> Path:
    out = tmp_path_factory.mktemp("budget")
    explore(BUDGET_ENV, "sweep", out, prompt_ids=prompt_ids[:2])
    return out


# ----------------------------------------------------------------------------- the log folder


def test_a_log_folder_is_one_parquet_dataset_for_pyarrow_pandas_and_datasets(sweep_logs, tmp_path):
    import datasets
    import pandas as pd
    import pyarrow.dataset as pads

    n = 3 * N_ACTIONS
    assert {p.name for p in sweep_logs.iterdir()} == {p.name for p in shard_paths(sweep_logs)}
    table = pads.dataset(sweep_logs, format="parquet").to_table()
    assert table.num_rows == n and set(table.column_names) == set(LOG_FEATURES)
    frame = pd.read_parquet(sweep_logs)
    assert len(frame) == n and sorted(frame["action"]) == sorted(list(range(N_ACTIONS)) * 3)
    ds = datasets.load_dataset("parquet", data_dir=str(sweep_logs), cache_dir=str(tmp_path / "cache"))
    assert ds["train"].num_rows == n and ds["train"].features == LOG_FEATURES
    # a worker killed mid-write leaves a hidden temporary file (dynprune.fileio.atomic_path): all three skip it
    killed = tmp_path / "killed"
    shutil.copytree(sweep_logs, killed)
    (killed / ".shard-qa-9999.parquet.x1y2.tmp").write_bytes(b"PAR1 half a shard")
    assert pads.dataset(killed, format="parquet").to_table().num_rows == len(pd.read_parquet(killed)) == n
    assert datasets.load_dataset("parquet", data_dir=str(killed), cache_dir=str(tmp_path / "c2"))["train"].num_rows == n
    # the settings travel inside every shard
    for path in shard_paths(sweep_logs):
        assert json.loads(pq.read_schema(path).metadata[META_KEY]) == read_meta(sweep_logs)
    meta = read_meta(sweep_logs)
    assert meta["n_actions"] == N_ACTIONS and meta["settings"]["env"]["model"] == "tiny-llama"


def _legacy_copy(src: Path, dst: Path) -> dict:
    """``src`` in the layout written before the settings moved into the shards: ``meta.json`` beside bare shards."""
    dst.mkdir()
    meta = {**read_meta(src), "format": 1}
    for path in shard_paths(src):
        table = pq.read_table(path)
        bare = {k: v for k, v in (table.schema.metadata or {}).items() if k != META_KEY}
        pq.write_table(table.replace_schema_metadata(bare), dst / path.name)
    (dst / LEGACY_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return meta


def test_an_old_folder_with_meta_json_reads_and_explore_migrates_it(sweep_logs, tmp_path, prompt_ids):
    import pandas as pd
    import pyarrow as pa

    old = tmp_path / "old"
    meta = _legacy_copy(sweep_logs, old)
    (old / ".user-notes").write_text("not ours")
    assert read_meta(old) == meta and len(load_logs(old)) == 3 * N_ACTIONS
    with pytest.raises(pa.ArrowInvalid):  # why the settings moved
        pd.read_parquet(old)
    # resuming the exploration (one more prompt) migrates the folder first
    more = prompt_ids_of(TINY_ENV)[:4]
    summary = explore(TINY_ENV, "sweep", old, prompt_ids=more)
    assert summary.skipped == tuple(prompt_ids) and summary.done == (more[3],)
    assert not (old / LEGACY_META_FILE).exists() and (old / ".user-notes").read_text() == "not ours"
    for path in shard_paths(old):
        assert json.loads(pq.read_schema(path).metadata[META_KEY])["settings"] == meta["settings"]
    assert len(pd.read_parquet(old)) == 4 * N_ACTIONS
    # the migrated shards hold the same rows as before
    assert load_logs(old).select(range(3 * N_ACTIONS)).to_list() == load_logs(sweep_logs).to_list()


def test_a_meta_json_that_is_not_ours_is_never_touched(sweep_logs, tmp_path):
    folder = tmp_path / "foreign"
    _legacy_copy(sweep_logs, folder)
    (folder / LEGACY_META_FILE).write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a dynprune settings file"):
        migrate_legacy_meta(folder)
    with pytest.raises(ValueError, match="other settings"):
        explore(TINY_ENV, "sweep", folder, prompt_ids=prompt_ids_of(TINY_ENV)[:1])
    assert (folder / LEGACY_META_FILE).read_text() == '{"hello": 1}'
    assert all(META_KEY not in (pq.read_schema(p).metadata or {}) for p in shard_paths(folder))


def test_two_explorations_copied_into_one_folder_are_named(sweep_logs, budget_logs, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(sweep_logs, mixed)
    odd = shard_paths(budget_logs)[0]
    shutil.copy(odd, mixed / "shard-zz.parquet")
    with pytest.raises(ValueError, match="shard-zz.parquet .*different settings"):
        read_meta(mixed)


# ----------------------------------------------------------------------------- Minari and d3rlpy


def _export(logs: Path, dataset_id: str, monkeypatch) -> Path:
    from offline_data.minari_export import to_minari

    def no_model(*args, **kwargs):
        raise AssertionError("the export loaded a model")

    with monkeypatch.context() as m:
        m.setattr("dynprune.models.load_model", no_model)
        return to_minari(logs, dataset_id)


@pytest.mark.parametrize("logs_name", ["sweep_logs", "budget_logs"])
def test_recover_environment_rebuilds_the_logged_env_and_the_export_loads_no_model(
    logs_name, request, tmp_path, monkeypatch
):
    import minari

    logs = request.getfixturevalue(logs_name)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    _export(logs, "dynprune/tiny-v0", monkeypatch)
    data = minari.load_dataset("dynprune/tiny-v0")
    meta = read_meta(logs)
    env = data.recover_environment()
    try:
        core = env.unwrapped
        assert env.spec.max_episode_steps == 1
        assert core.lm.name == "tiny-llama" and core.reward_fn.name == meta["settings"]["env"]["reward"]
        assert core.evaluator.profile.config == ProfileConfig(new_tokens=2, repeats=1)
        assert list(core.observation_names) == meta["observation_names"]
        assert env.observation_space.shape == data.observation_space.shape
        assert env.action_space == data.action_space
        if logs_name == "budget_logs":
            assert env.observation_space.shape == (9,) and core.budget_range == (0.85, 1.1)
        obs, _ = env.reset(seed=0)
        assert obs.shape == data.observation_space.shape
        *_, terminated, truncated, _ = env.step(0)
        assert terminated or truncated
    finally:
        env.close()
    assert data.recover_environment(eval_env=True).spec == env.spec


def test_d3rlpy_gets_each_observation_beside_its_logged_action(sweep_logs, tmp_path, monkeypatch):
    import d3rlpy

    from offline_data.minari_export import to_d3rlpy

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    _export(sweep_logs, "dynprune/tiny-v0", monkeypatch)
    rows = [r for r in load_logs(sweep_logs).to_list() if r["action"] >= 0]
    mdp = to_d3rlpy("dynprune/tiny-v0")
    assert mdp.dataset_info.action_space == d3rlpy.ActionSpace.DISCRETE and mdp.dataset_info.action_size == N_ACTIONS
    assert len(mdp.episodes) == mdp.transition_count == len(rows)
    for ep, row in zip(mdp.episodes, rows, strict=True):
        np.testing.assert_array_equal(ep.observations[0], np.asarray(row["observation"], np.float32))
        assert int(ep.actions[0, 0]) == row["action"] and ep.terminated
        assert float(ep.rewards[0, 0]) == pytest.approx(row["reward"])

    # d3rlpy's own reader no longer stops on a missing max_episode_steps, but it stacks Minari's
    # T + 1 observations beside T actions: from the second episode on, observation i is not the
    # one action i was taken on. If this starts failing, d3rlpy fixed it and to_d3rlpy can go.
    from d3rlpy.datasets import get_minari

    theirs, env = get_minari("dynprune/tiny-v0")
    env.close()
    obs = np.concatenate([ep.observations for ep in theirs.episodes])
    logged = np.asarray([r["observation"] for r in rows], np.float32)
    assert not np.array_equal(obs[: len(rows)], logged)
