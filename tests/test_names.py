"""One name, one quantity: token agreement is not prefix fidelity, quality has one rule, and files written
under the old names still read."""

from __future__ import annotations

import dataclasses
import json

import pytest

from dynprune.quality_memo import QualityMemo
from dynprune.records import read_records, record_from_dict, summarise
from dynprune.rewards import Outcome, ProxyReward, quality
from dynprune.types import QualityMetrics
from offline_data.prefs import row_score
from tests.test_records_plots import make_records


def test_records_written_with_fidelity_read_it_as_token_agreement(tmp_path):
    rec = make_records(1)[0]
    old = dataclasses.asdict(rec)
    old["fidelity"] = old.pop("token_agreement")
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (again,) = read_records(path)
    assert again == rec and record_from_dict(old).token_agreement == rec.token_agreement
    assert summarise([again], by=None)["all"]["mean_token_agreement"] == rec.token_agreement


def test_a_memo_written_with_fidelity_still_reads(tmp_path):
    path = tmp_path / "memo.json"
    metrics = QualityMetrics(ppl=2.0, token_agreement=0.5, exact_match=0.0, prefix_fidelity=0.25)
    memo = QualityMemo(path)
    memo.put("k", metrics)
    memo.flush()
    data = json.loads(path.read_text())
    text = json.dumps(data).replace('"token_agreement"', '"fidelity"')
    assert '"fidelity"' in text
    path.write_text(text)
    assert QualityMemo(path).get("k") == metrics


def test_rewards_see_the_prefix_fidelity():
    outcome = Outcome(speedup=0.0, baseline_ppl=1.0, pruned_ppl=1.0, prefix_fidelity=0.25, task_score=None,
                      kept_fraction=1.0)
    assert ProxyReward()(outcome) == (0.25, False)
    assert outcome.fidelity == 0.25  # the deprecated name reads the same number


@pytest.mark.parametrize(("task", "timing", "want"), [(0.9, "live", 0.9), (None, "live", 0.4), (0.9, "profiled", 0.4)])
def test_one_quality_rule_for_rewards_preferences_and_exploration(task, timing, want):
    from offline_data.explore import _score

    assert quality(task, 0.4) == (task if task is not None else 0.4)
    assert Outcome(0.0, 1.0, 1.0, prefix_fidelity=0.4, task_score=task, kept_fraction=1.0).quality == quality(task, 0.4)
    # the logs: a profiled row's task score is known only for plans that reproduce the full answer, so not used
    row = {"task_score": task, "token_agreement": 0.4, "timing": timing}
    assert row_score(row) == want
    rec = dataclasses.replace(make_records(1)[0], task_score=task, token_agreement=0.4, timing=timing)
    assert _score(rec) == want


def _shards_written_with_fidelity(src, dst):
    """The shards of ``src`` as ``write_shard`` wrote them before the rename: the token agreement in a
    ``fidelity`` column (the ``datasets`` features in the footer say so too), the settings under META_KEY."""
    import datasets
    import pyarrow.parquet as pq

    from offline_data.dataset import LOG_FEATURES, META_KEY, shard_paths

    def old_name(column: str) -> str:
        return "fidelity" if column == "token_agreement" else column

    old_features = datasets.Features({old_name(k): v for k, v in LOG_FEATURES.items()})
    dst.mkdir()
    for path in shard_paths(src):
        table = pq.read_table(path)
        rows = [{old_name(k): v for k, v in r.items()} for r in table.to_pylist()]
        old = datasets.Dataset.from_list(rows, features=old_features).data.table
        old = old.replace_schema_metadata({**old.schema.metadata, META_KEY: table.schema.metadata[META_KEY]})
        pq.write_table(old, dst / path.name)
        names = pq.read_schema(dst / path.name).names
        assert "fidelity" in names and "token_agreement" not in names


def test_log_shards_written_with_fidelity_read_it_as_token_agreement(sweep_logs, tmp_path):
    from offline_data.dataset import LOG_FEATURES, check_logs, load_logs, read_meta
    from offline_data.prefs import preference_pairs

    old = tmp_path / "old"
    _shards_written_with_fidelity(sweep_logs, old)
    assert check_logs(old) == [] and read_meta(old) == read_meta(sweep_logs)
    again, new = load_logs(old), load_logs(sweep_logs)
    assert again.features == LOG_FEATURES and again.to_list() == new.to_list()
    assert preference_pairs(again) == preference_pairs(new)  # ranked by the same token agreement


def test_resuming_an_exploration_of_old_shards_renames_their_column(sweep_logs, prompt_ids, tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq

    from offline_data.dataset import load_logs, shard_paths
    from offline_data.explore import explore, prompt_ids_of
    from tests.conftest import TINY_ENV

    old = tmp_path / "old"
    _shards_written_with_fidelity(sweep_logs, old)
    more = prompt_ids_of(TINY_ENV)[:4]
    summary = explore(TINY_ENV, "sweep", old, prompt_ids=more)
    assert summary.skipped == tuple(prompt_ids) and summary.done == (more[3],)
    # every shard now names the column as the new one does: the folder is one dataset again
    assert all("fidelity" not in pq.read_schema(p).names for p in shard_paths(old))
    frame = pd.read_parquet(old)
    assert len(frame) == 4 * 10 and frame["token_agreement"].notna().all()
    assert load_logs(old).select(range(3 * 10)).to_list() == load_logs(sweep_logs).to_list()
