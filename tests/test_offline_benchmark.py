"""benchmarks/offline_rl.py runs end to end in smoke mode (tiny random model) and writes its JSON.

The numbers of a smoke run mean nothing; the test checks that the script runs and that its
output has the keys the README and plots read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importance calibrations and the sweep's logs go to a temporary cache, not the user's."""
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow
def test_offline_rl_smoke(tmp_path: Path) -> None:
    from benchmarks.offline_rl import main

    out = tmp_path / "offline_rl.json"
    result = main(["--smoke", "--out", str(out), "--threads", "1"])
    data = json.loads(out.read_text())
    assert data["claim"] == json.loads(json.dumps(result["claim"]))
    assert {"args", "machine", "model", "logs_dir", "action_names", "sweep", "dataset", "training", "test",
            "agents", "test_prompts", "claim"} <= set(data)
    n_actions = len(data["action_names"])
    assert Path(data["logs_dir"]).is_relative_to(tmp_path / "cache")

    sweep = data["sweep"]
    assert sweep["prompts_measured"] == 4 and sweep["configs"] == 4 * n_actions
    assert sweep["configs_per_s"] > 0
    for key in ("all_prompts", "first_half", "second_half"):
        assert sweep[key]["configs_per_s"] > 0 and 0.0 < sweep[key]["baseline_share"] < 1.0
    assert [p["configs"] for p in sweep["per_prompt"]] == [n_actions] * 4
    assert data["dataset"]["transitions"] == 4 * n_actions

    assert set(data["training"]) == {"cql", "bcq", "ddqn", "bc"}
    names = [row["agent"] for row in data["agents"]]
    expected = {"offline-cql", "offline-bcq", "offline-ddqn", "offline-bc", "random", "none", "oracle"}
    assert expected <= set(names)
    assert sum(n.startswith("static-") for n in names) == n_actions - 1
    for row in data["agents"]:
        assert row["n"] == 2 and sum(row["action_mix"].values()) == 2
        assert {"mean_reward", "std_reward", "mean_speedup", "mean_token_agreement"} <= set(row)
    # every agent was scored on the same measurements: nobody beats the oracle
    oracle = next(row["mean_reward"] for row in data["agents"] if row["agent"] == "oracle")
    assert all(row["mean_reward"] <= oracle + 1e-9 for row in data["agents"])
    assert len(data["test_prompts"]) == 2 and all(len(p["rewards"]) == n_actions for p in data["test_prompts"])

    claim = data["claim"]
    assert isinstance(claim["cql_beats_random"], bool) and isinstance(claim["cql_beats_best_static"], bool)
    assert claim["best_static"] == "none" or claim["best_static"].startswith("static-")


def test_offline_rl_smoke_needs_out() -> None:
    from benchmarks.offline_rl import main

    with pytest.raises(ValueError, match="--out"):
        main(["--smoke"])
