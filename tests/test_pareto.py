"""benchmarks/pareto.py: the frontier arithmetic by hand, overlays, and a smoke run on tiny-llama."""

from __future__ import annotations

import json

import pytest

from benchmarks import pareto


def _pt(speedup: float, fidelity: float) -> dict:
    return {"speedup": {"mean": speedup}, "fidelity": {"mean": fidelity}}


def test_frontier_keeps_the_best_quality_at_each_speed():
    pts = [_pt(0.0, 1.0), _pt(0.1, 0.8), _pt(0.2, 0.9), _pt(0.3, 0.2), _pt(0.25, 0.1)]
    front = pareto.frontier(pts)
    # (0.1, 0.8) is dominated by (0.2, 0.9): faster and better; (0.25, 0.1) by (0.3, 0.2)
    assert front == [(0.0, 1.0), (0.2, 0.9), (0.3, 0.2)]
    assert pareto.frontier_quality(front, 0.05) == 0.9  # best static at least 5 % fast
    assert pareto.frontier_quality(front, 0.2) == 0.9
    assert pareto.frontier_quality(front, 0.21) == 0.2
    assert pareto.frontier_quality(front, 0.31) is None  # nothing static is that fast


def test_controller_cost_lowers_the_speedup():
    # 25 % faster (T_plan = 0.8 T_full); a decision costing 0.1 T_full makes it 0.9 T_full
    assert pareto.with_cost(0.25, 0.1, 1.0) == pytest.approx(1 / 0.9 - 1)
    assert pareto.with_cost(0.25, 0.0, 1.0) == pytest.approx(0.25)


def test_overlays_are_read_and_checked(tmp_path):
    good = tmp_path / "router.json"
    good.write_text(json.dumps({"pareto_points": [{"name": "orpo", "family": "router", "speedup": 0.1,
                                                   "fidelity": 0.7}]}))
    pts = pareto.load_overlays(f"{good},{tmp_path / 'missing.json'}")
    assert [p["name"] for p in pts] == ["orpo"] and pts[0]["source"] == str(good)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"pareto_points": [{"name": "x", "family": "router"}]}))
    with pytest.raises(ValueError, match=r"bad.json: a pareto point lacks \['fidelity', 'speedup'\]"):
        pareto.load_overlays(str(bad))


def test_bad_arguments():
    with pytest.raises(ValueError, match="--smoke needs --out"):
        pareto.Args(smoke=True)
    with pytest.raises(ValueError, match="ks must be comma-separated integers, got 'a,b'"):
        pareto.Args(ks="a,b")
    with pytest.raises(ValueError, match="algos must name some of"):
        pareto.Args(algos="cql,nope")


def test_smoke_run_writes_json_png_and_table(tmp_path):
    overlay = tmp_path / "compress.json"
    overlay.write_text(json.dumps({"pareto_points": [{"name": "int8", "family": "compression", "speedup": 0.05,
                                                      "fidelity": 0.9}]}))
    out = tmp_path / "pareto.json"
    result = pareto.main(["--smoke", "--out", str(out), "--overlays", str(overlay)])
    assert out.is_file() and out.with_suffix(".png").stat().st_size > 0
    table = out.with_suffix(".md").read_text()
    assert "| none | none |" in table and "double-dqn" in table and "oracle" in table
    saved = json.loads(out.read_text())
    assert saved["test_prompts"] == 2 and len(saved["per_prompt"]) == 2
    names = {p["name"] for p in saved["points"]}
    assert {"none", "heads-5%", "ffn-25%", "random", "double-dqn", "offline-cql", "oracle"} <= names
    assert {f"{o}-{m}-{k}" for o in ("last", "influence") for m in ("skip", "adapters") for k in (1, 2)} <= names
    assert [c["name"] for c in saved["curves"]] == [
        "last layers, skip", "last layers, adapters", "influence layers, skip", "influence layers, adapters"]
    # the full model is a static point: the frontier starts at quality 1 and speed-up 0
    assert [0.0, 1.0] in saved["frontier"]
    none = next(p for p in saved["points"] if p["name"] == "none")
    assert none["speedup"]["mean"] == 0.0 and none["fidelity"]["mean"] == 1.0
    # learned agents carry their measured decision time, the verdict compares them with the frontier
    ddqn = next(p for p in saved["points"] if p["name"] == "double-dqn")
    assert ddqn["controller_ms"] > 0 and sum(ddqn["action_mix"].values()) == 2
    assert set(saved["verdict"]) == {"double-dqn", "offline-cql"}
    assert saved["hull"][0][1] == 1.0  # the full model (fidelity 1) tops the hull of static plans
    for v in saved["verdict"].values():
        assert v["reward_gap_to_oracle"] >= 0  # the oracle picks each prompt's best table action
    assert saved["overlays"][0]["name"] == "int8"
    # --reanalyse recomputes the same verdict from the file, without measuring
    again = pareto.main(["--reanalyse", "--out", str(out)])
    assert again["verdict"] == json.loads(json.dumps(saved["verdict"]))
    assert result["oracle"]["reward"] >= max(p["reward"] for p in saved["points"] if p["family"] == "none")


def test_hull_is_the_best_mixture_of_static_plans():
    pts = [_pt(0.0, 1.0), _pt(0.1, 0.3), _pt(0.2, 0.5), _pt(0.3, 0.0), _pt(-0.05, 0.2)]
    h = pareto.hull(pts)
    # (0.1, 0.3) lies under the chord from (0, 1) to (0.2, 0.5); the slower, worse point is left out
    assert h == [(0.0, 1.0), (0.2, 0.5), (0.3, 0.0)]
    assert pareto.hull_quality(h, 0.1) == pytest.approx(0.75)  # half-and-half mix of none and the 20 % plan
    assert pareto.hull_quality(h, 0.25) == pytest.approx(0.25)
    assert pareto.hull_quality(h, -0.1) == 1.0 and pareto.hull_quality(h, 0.31) is None
