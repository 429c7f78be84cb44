"""Every benchmark script runs end to end in smoke mode (tiny random model) and writes its JSON.

The numbers of a smoke run mean nothing; these tests only check that the scripts run and
that their output files have the keys that plots and the README read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importance calibrations and adapter files go to a temporary cache, not the user's."""
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))


def test_adapters_smoke(tmp_path: Path) -> None:
    from benchmarks.adapters import main

    out = tmp_path / "adapters.json"
    result = main(["--smoke", "--out", str(out), "--threads", "1"])
    data = json.loads(out.read_text())
    assert data["results"] == json.loads(json.dumps(result["results"]))
    assert {"args", "machine", "model_id", "training", "results", "claim", "adapters_file"} <= set(data)
    assert isinstance(data["claim"]["adapters_beat_skip_at_L/4"], bool)
    assert data["training"]["layers"] == list(range(4))
    assert len(data["training"]["mse_identity"]) == len(data["training"]["mse_trained"]) == 4
    rows = data["results"]
    assert [r["mode"] for r in rows] == ["skip", "adapters"]  # tiny-llama: L/4 = L/8 = 1, one k
    for r in rows:
        assert r["k"] == 1 and len(r["layers"]) == 1
        assert 0.0 <= r["fidelity_mean"] <= 1.0 and 0.0 <= r["fidelity_median"] <= 1.0
        assert r["ppl_ratio_gmean"] > 0
        assert 0.0 <= r["live_token_agreement"] <= 1.0 and r["live_exact_match"] in (0.0, 0.5, 1.0)
        assert r["live_speedup_median"] > 0
        assert r["n_test"] == 4 and r["n_live"] == 2
    assert rows[0]["layers"] == rows[1]["layers"]  # the same layers, skipped or adapted
    assert (tmp_path / "adapters_mse.png").stat().st_size > 0
    assert Path(data["adapters_file"]).is_file()
    assert Path(data["adapters_file"]).is_relative_to(tmp_path / "cache")


def test_adapters_smoke_needs_out() -> None:
    from benchmarks.adapters import main

    with pytest.raises(ValueError, match="--out"):
        main(["--smoke"])


def test_env_throughput_smoke(tmp_path: Path) -> None:
    from benchmarks.env_throughput import main

    out = tmp_path / "env_throughput.json"
    main(["--smoke", "--out", str(out), "--threads", "1"])
    data = json.loads(out.read_text())
    assert {"args", "machine", "model_id", "results", "profiled_vs_live_tokens_per_s", "targets", "met"} <= set(data)
    assert set(data["results"]) == {"naive", "live", "profiled"}
    for mode in ("live", "profiled"):
        assert data["results"][mode]["steps_per_s"] > 0
        assert "speedup_over_naive" in data["results"][mode]
    assert data["profiled_vs_live_tokens_per_s"]["n"] >= 1
    assert set(data["met"]) == set(data["targets"])


def test_pruning_overhead_smoke(tmp_path: Path) -> None:
    from benchmarks.pruning_overhead import main

    out = tmp_path / "pruning_overhead.json"
    main(["--smoke", "--out", str(out), "--threads", "1"])
    data = json.loads(out.read_text())
    assert {"args", "machine", "model", "apply_restore_ms", "layer_skip", "targets", "met"} <= set(data)
    assert set(data["apply_restore_ms"]) == {
        "heads_cold_build",
        "ffn_cold_build",
        "layer_skip",
        "adapter",
        "heads",
        "ffn",
    }
    assert data["layer_skip"][0]["k"] == 0  # the full model first
    assert all(row["speedup"] > 0 for row in data["layer_skip"])
    assert set(data["met"]) == set(data["targets"])


def test_main_job_smoke(tmp_path):
    from benchmarks import main_job

    out = tmp_path / "mj.json"
    result = main_job.main(["--smoke", "--out", str(out)])
    assert out.is_file() and 0 < result["dynprune_main_s"] <= result["wall_s"]
    assert {"ddqn", "none", "random", "oracle"} <= set(result["summary"])
    assert result["load_s"]["from_empty_cache"] > 0
    with pytest.raises(ValueError, match="--smoke needs --out"):
        main_job.Args(smoke=True)


def test_env_throughput_smoke_never_overwrites_the_results() -> None:
    from benchmarks.env_throughput import Args

    with pytest.raises(ValueError, match="--smoke needs --out"):
        Args(smoke=True)


def test_healing_smoke(tmp_path: Path) -> None:
    from benchmarks.healing import main

    out = tmp_path / "healing.json"
    main(["--smoke", "--out", str(out)])
    data = json.loads(out.read_text())
    assert {"args", "machine", "model_id", "rows", "targets", "training", "none_bit_identical", "wall_s"} <= set(data)
    variants = ["unhealed", "kind", "shared"]
    assert data["variants"] == variants and data["served"] == "shared" and all(data["none_bit_identical"].values())
    names = [r["name"] for r in data["rows"]]
    assert names[:2] == ["none", "heads-5%"] and names[-2:] == ["k=1", "k=2"]
    for r in data["rows"]:
        for v in variants:
            q = r[v]
            assert 0 <= q["tf_agreement"] <= 1 and 0 <= q["greedy_agreement"] <= 1 and q["kl"] >= 0
            if r["name"] != "none":
                assert q["net_speedup"] > 0 and q["apply_restore_ms"] > 0
    none = next(r for r in data["rows"] if r["name"] == "none")
    assert none["shared"]["kl"] == 0.0 and none["shared"]["active_healing"] is None
    assert set(data["targets"]) >= {"none_bit_identical", "every_action_kl_lower", "net_speedup>=80%_of_unhealed"}
    assert set(data["targets_by_variant"]) == {"kind", "shared"} == set(data["training"])
    assert (tmp_path / "healing.png").stat().st_size > 0
    with pytest.raises(ValueError, match="--smoke needs --out"):
        main(["--smoke"])
    from benchmarks.healing import healing_folders

    with pytest.raises(ValueError, match="name=folder"):
        healing_folders("unhealed=/x")
    assert list(healing_folders("b=/x,a={cache}/y")) == ["b", "a"]
