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
    row = {"task_score": task, "fidelity": 0.4, "timing": timing}
    assert row_score(row) == want
    rec = dataclasses.replace(make_records(1)[0], task_score=task, token_agreement=0.4, timing=timing)
    assert _score(rec) == want
