"""Run logs (dynprune.records), figures (dynprune.plots) and the report (dynprune.report) on synthetic records."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from dynprune.records import append_record, read_jsonl, read_records, summarise
from dynprune.report import PLOT_FILES, format_table, write_report
from dynprune.types import StepRecord

ACTIONS = ["none", "heads-10%", "layers-10%", "ffn-10%"]


def make_records(n: int = 40, agent: str = "ddqn", seed: int = 0, steps_per_episode: int = 2) -> list[StepRecord]:
    """``n`` plausible StepRecords with random values (fixed seed)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = int(rng.integers(len(ACTIONS)))
        base_lat = float(rng.uniform(0.5, 1.5))
        speedup = float(rng.normal(0.1 * a, 0.05))
        pruned_lat = base_lat / (1 + speedup)
        base_ppl = float(rng.uniform(2, 8))
        ppl_change = float(abs(rng.normal(0.05 * a, 0.02)))
        out.append(
            StepRecord(
                episode=i // steps_per_episode,
                step=i % steps_per_episode,
                split="train",
                prompt_id=f"qa-{i:04d}",
                prompt_tokens=int(rng.integers(5, 200)),
                prompt_perplexity=float(rng.uniform(5, 80)),
                complexity=float(rng.uniform(0, 1)),
                action=a,
                action_name=ACTIONS[a],
                plan={"name": ACTIONS[a], "skip": [3] if a == 2 else [], "adapters": [], "heads": [], "ffn": []},
                timing="live",
                baseline_latency_s=base_lat,
                pruned_latency_s=pruned_lat,
                baseline_tokens_per_s=32 / base_lat,
                pruned_tokens_per_s=32 / pruned_lat,
                speedup=speedup,
                baseline_ppl=base_ppl,
                pruned_ppl=base_ppl * (1 + ppl_change),
                ppl_change=ppl_change,
                token_agreement=float(rng.uniform(0.5, 1)),
                task_score=None if i % 3 else float(rng.integers(2)),
                kept_fraction=float(rng.uniform(0.7, 1)),
                reward=0.7 * speedup - 0.3 * ppl_change,
                terminated=i % steps_per_episode == steps_per_episode - 1,
                observation=tuple(float(x) for x in rng.uniform(0, 1, 7)),
                agent=agent,
            )
        )
    return out


def write_lines(path: Path, records: list[StepRecord]) -> None:
    for r in records:
        append_record(path, r)


def damaged_log(folder: Path, records: list[StepRecord], junk: str) -> Path:
    """``metrics.jsonl`` in ``folder`` with ``records``, then ``junk`` written raw (what a crash leaves)."""
    path = folder / "metrics.jsonl"
    write_lines(path, records)
    with open(path, "a") as fh:
        fh.write(junk)
    return path


# --------------------------------------------------------------------------- records


def test_append_read_round_trip(tmp_path: Path) -> None:
    recs = make_records(40)
    path = tmp_path / "sub" / "metrics.jsonl"
    write_lines(path, recs)
    assert path.read_text().count("\n") == 40
    assert read_records(path) == recs
    assert read_jsonl(path) == [json.loads(json.dumps(dataclasses.asdict(r))) for r in recs]


def test_append_dict_train_log(tmp_path: Path) -> None:
    path = tmp_path / "train_log.jsonl"
    append_record(path, {"timesteps": 10, "episode": 0, "reward": 1.5, "loss": None, "epsilon": 0.9})
    append_record(path, {"timesteps": 20, "episode": 1, "reward": 2.0})
    assert read_jsonl(path)[0]["loss"] is None
    assert read_jsonl(path)[1] == {"timesteps": 20, "episode": 1, "reward": 2.0}


def test_truncated_last_line_is_skipped(tmp_path: Path) -> None:
    recs = make_records(5)
    line = json.dumps(dataclasses.asdict(make_records(6)[5]))
    path = damaged_log(tmp_path, recs, line[: len(line) // 2])  # crash mid-write: half a line, no newline
    with pytest.warns(RuntimeWarning, match=r"metrics\.jsonl:6: skipping a truncated last line"):
        assert read_records(path) == recs
    with pytest.warns(RuntimeWarning, match=r"metrics\.jsonl:6"):
        assert len(read_jsonl(path)) == 5


def test_append_after_crash_drops_partial_tail(tmp_path: Path) -> None:
    recs = make_records(4)
    path = damaged_log(tmp_path, recs[:2], '{"episode": 1, "ste')
    with pytest.warns(RuntimeWarning, match="half-written last line"):
        append_record(path, recs[2])
    append_record(path, recs[3])
    assert read_records(path) == recs


def test_malformed_middle_line_raises_with_file_and_line(tmp_path: Path) -> None:
    recs = make_records(4)
    path = damaged_log(tmp_path, recs[:2], "{not json}\n")
    write_lines(path, recs[2:])
    with pytest.raises(ValueError, match=rf"{path}:3: malformed JSON line"):
        read_records(path)
    with pytest.raises(ValueError, match=rf"{path}:3"):
        read_jsonl(path)


def test_valid_json_that_is_not_a_step_record_raises(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    write_lines(path, make_records(2))
    append_record(path, {"episode": 3})
    with pytest.raises(ValueError, match=rf"{path}:3: not a StepRecord.*missing"):
        read_records(path)


def test_summarise_hand_checked() -> None:
    base = make_records(3)
    vals = [  # (action, name, reward, speedup, token_agreement, ppl_change, task_score)
        (0, "none", 0.0, 0.0, 1.0, 0.0, 1.0),
        (2, "layers-10%", 0.3, 0.2, 0.8, 0.1, None),
        (2, "layers-10%", -0.6, 0.1, 0.6, 0.5, 0.0),
    ]
    recs = [
        dataclasses.replace(r, action=a, action_name=n, reward=rw, speedup=s, token_agreement=f, ppl_change=p,
                            task_score=t)
        for r, (a, n, rw, s, f, p, t) in zip(base, vals, strict=True)
    ]
    out = summarise(recs)
    assert list(out) == ["ddqn"]
    s = out["ddqn"]
    assert s["n"] == 3
    assert s["mean_reward"] == pytest.approx(-0.1)
    assert s["mean_speedup"] == pytest.approx(0.1)
    assert s["mean_token_agreement"] == pytest.approx(0.8)
    assert s["mean_ppl_change"] == pytest.approx(0.2)
    assert s["mean_task_score"] == pytest.approx(0.5)
    # population std of (0, 0.2, 0.1): sqrt(((-0.1)^2 + 0.1^2 + 0) / 3)
    assert s["std_speedup"] == pytest.approx(math.sqrt(0.02 / 3))
    assert s["action_mix"] == {"none": 1, "layers-10%": 2}
    # per action, and from dicts
    by_action = summarise([dataclasses.asdict(r) for r in recs], by="action_name")
    assert by_action["layers-10%"]["n"] == 2
    assert by_action["layers-10%"]["mean_reward"] == pytest.approx(-0.15)
    assert summarise([], by=None) == {}
    with pytest.raises(ValueError, match="by must be"):
        summarise(recs, by="nope")


def test_format_table_lists_groups() -> None:
    summary = {"none": summarise(make_records(4, "none"))["none"], "ddqn": summarise(make_records(4))["ddqn"]}
    table = format_table(summary)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["agent", "n", "reward"]
    assert lines[2].startswith("none") and lines[3].startswith("ddqn")
    assert format_table({}) == "(no data)"


# --------------------------------------------------------------------------- report


def test_write_report_full_run(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    figs_before = plt.get_fignums()
    recs = make_records(40)
    write_lines(tmp_path / "metrics.jsonl", recs)
    rng = np.random.default_rng(1)
    for ep in range(20):
        loss = None if ep < 3 else float(rng.uniform(0.1, 1.0))
        entry = {"timesteps": 2 * (ep + 1), "episode": ep, "reward": float(rng.normal()), "loss": loss}
        append_record(tmp_path / "train_log.jsonl", {**entry, "epsilon": 1 / (ep + 1)})
    agents = ["ddqn", "none", "static-layers-10%", "random", "oracle"]
    for k, name in enumerate(agents):
        write_lines(tmp_path / "test" / f"{name}.jsonl", make_records(12, agent=name, seed=10 + k))

    written = write_report(tmp_path)

    report_dir = tmp_path / "report"
    assert {p.name for p in written} == set(PLOT_FILES.values()) | {"report.txt"}
    for name in PLOT_FILES.values():
        png = report_dir / name
        assert png.stat().st_size > 1000, name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (report_dir / "report.txt").read_text()
    for name in agents:
        assert name in text
    assert "episodes: 20" in text
    assert "first 10 %" in text and "last 10 %" in text
    assert not [p for p in report_dir.iterdir() if p.name.startswith(".")], "temp files left behind"
    assert plt.get_fignums() == figs_before, "figures leaked into pyplot"


def test_write_report_empty_run_dir(tmp_path: Path) -> None:
    written = write_report(tmp_path)
    assert written == [tmp_path / "report" / "report.txt"]
    text = written[0].read_text()
    assert "No data found" in text
    assert "No training data" in text and "No test data" in text


def test_write_report_partial_and_unreadable_inputs(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text("")  # exists, empty
    (tmp_path / "test").mkdir()
    write_lines(tmp_path / "test" / "none.jsonl", make_records(6, agent="none"))
    good = json.dumps(dataclasses.asdict(make_records(1)[0]))
    (tmp_path / "test" / "broken.jsonl").write_text(f"{good}\nnot json\n{good}\n")
    written = write_report(tmp_path)
    names = {p.name for p in written}
    assert names == {"test_comparison.png", "test_speedup_fidelity.png", "report.txt"}
    text = (tmp_path / "report" / "report.txt").read_text()
    assert "none" in text
    assert "broken.jsonl:2: malformed JSON line" in text
    assert "broken.jsonl: no records" not in text
    assert "metrics.jsonl: no records" in text
