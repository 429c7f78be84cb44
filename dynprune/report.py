"""The run report: ``report.txt`` and every figure of a run directory, from the files it holds.

:func:`write_report` reads whatever a run directory holds (``metrics.jsonl``, ``train_log.jsonl``,
``test/<agent>.jsonl``) and writes the figures (:mod:`dynprune.plots`) and ``report.txt`` into
``<run_dir>/report/``; it never re-runs anything. :func:`format_table` is the per-agent table it
prints (and ``dynprune test`` and the benchmarks print).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dynprune.fileio import atomic_write_text
from dynprune.plots import (
    agent_sort_key,
    plot_action_means,
    plot_action_usage,
    plot_inference_time,
    plot_loss_curve,
    plot_perplexity,
    plot_reward_curve,
    plot_speedup_fidelity,
    plot_test_comparison,
    plot_token_speed,
    plot_tokens_vs_perplexity,
)
from dynprune.records import GroupSummary, read_jsonl, read_records, summarise
from dynprune.types import StepRecord

__all__ = ["PLOT_FILES", "format_table", "write_report"]

#: File names :func:`write_report` uses, by figure.
PLOT_FILES = {
    "token_speed": "token_speed.png",
    "inference_time": "inference_time.png",
    "perplexity": "perplexity.png",
    "tokens_vs_perplexity": "tokens_vs_perplexity.png",
    "action_usage": "action_usage.png",
    "action_means": "action_means.png",
    "reward_curve": "reward_curve.png",
    "loss_curve": "loss_curve.png",
    "test_comparison": "test_comparison.png",
    "test_speedup_fidelity": "test_speedup_fidelity.png",
}


def _fmt(v: float | None, k: float = 1.0, digits: int = 3, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    v = v * k
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:+.{digits}g}" if sign else f"{v:.{digits}g}"


def format_table(summary: Mapping[str, GroupSummary], name_header: str = "agent") -> str:
    """Fixed-width table, one row per group of a :func:`~dynprune.records.summarise` result.

    Columns: name, steps, mean reward (+/- std), mean speed-up %, mean fidelity, mean
    perplexity change %, mean task score (``-`` when none), action mix (``name=count``).
    """
    if not summary:
        return "(no data)"
    headers = [name_header, "n", "reward", "speed-up %", "agreement", "ppl change %", "task", "action mix"]
    rows = []
    for name, s in summary.items():
        rows.append(
            [
                name,
                str(s["n"]),
                f"{_fmt(s['mean_reward'], sign=True)} +/- {_fmt(s['std_reward'], digits=2)}",
                _fmt(s["mean_speedup"], 100.0, sign=True),
                _fmt(s["mean_token_agreement"]),
                _fmt(s["mean_ppl_change"], 100.0, sign=True),
                _fmt(s["mean_task_score"]),
                " ".join(f"{a}={c}" for a, c in s["action_mix"].items()),
            ]
        )
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    right = {1, 2, 3, 4, 5, 6}

    def line(cells: list[str]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def _episode_returns(records: list[StepRecord]) -> list[dict[str, Any]]:
    """Sum of step rewards per episode, as ``{"episode", "reward"}`` rows (train_log's shape)."""
    totals: dict[int, float] = {}
    for r in records:
        totals[r.episode] = totals.get(r.episode, 0.0) + r.reward
    return [{"episode": e, "reward": totals[e]} for e in sorted(totals)]


def _read(path: Path, reader: Callable[[Path], list[Any]], notes: list[str]) -> list[Any] | None:
    """Read one input; a missing (``[]``) or unreadable (``None``) file becomes a note, not a crash."""
    if not path.exists():
        notes.append(f"{path.name}: not found")
        return []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            data = reader(path)
        except (OSError, ValueError) as err:
            notes.append(f"could not read {path}: {err}")
            data = None
    for w in caught:
        notes.append(str(w.message))
        warnings.warn(str(w.message), w.category, stacklevel=3)
    return data


def _training_section(records: list[StepRecord], train_log: list[dict[str, Any]]) -> list[str]:
    """Lines of the report's training section."""
    out = ["TRAINING", "========"]
    if not records and not train_log:
        out.append("No training data (metrics.jsonl and train_log.jsonl are missing or empty).")
        return out
    if train_log and any(e.get("reward") is not None for e in train_log):
        rewards = [e for e in train_log if e.get("reward") is not None]
        source = "train_log.jsonl"
    else:
        rewards = _episode_returns(records)
        source = "metrics.jsonl (sum of step rewards)"
    episodes = {r.episode for r in records} | {e["episode"] for e in train_log if "episode" in e}
    out.append(
        f"episodes: {len(episodes)}    steps in metrics.jsonl: {len(records)}    train_log entries: {len(train_log)}"
    )
    if records:
        splits = sorted({r.split for r in records})
        timing = sorted({r.timing for r in records})
        out.append(f"splits: {', '.join(splits)}    timing: {', '.join(timing)}")
    if rewards:
        y = [float(e["reward"]) for e in rewards]
        k = max(1, math.ceil(0.1 * len(y)))
        first, last = y[:k], y[-k:]
        out.append(f"episode reward from {source}:")
        out.append(f"  mean of first 10 % ({k} episodes): {_fmt(sum(first) / k, sign=True, digits=4)}")
        out.append(f"  mean of last 10 %  ({k} episodes): {_fmt(sum(last) / k, sign=True, digits=4)}")
    losses = [e.get("loss") for e in train_log if e.get("loss") is not None]
    if losses:
        out.append(f"loss: first {_fmt(float(losses[0]))}, last {_fmt(float(losses[-1]))} ({len(losses)} logged)")
    if records:
        overall = summarise(records, by=None)["all"]
        out.append("action mix: " + ", ".join(f"{a}={c}" for a, c in overall["action_mix"].items()))
        out.append("")
        out.append("All training steps:")
        out.append(format_table(summarise(records, by=None), name_header="group"))
        out.append("")
        out.append("Per action:")
        out.append(format_table(summarise(records, by="action_name"), name_header="action"))
    return out


def write_report(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Read a run directory's logs and write figures and ``report.txt`` into ``<run_dir>/report/``.

    Inputs, each optional: ``metrics.jsonl`` (StepRecords), ``train_log.jsonl`` (training
    progress) and ``test/<agent>.jsonl`` (StepRecords of one evaluated agent; the file
    stem names the agent). Figures whose inputs are missing or empty are skipped and the
    report says so; an unreadable file is noted in the report and the rest still runs.

    Returns:
        The files written, figures first, ``report.txt`` last. Names: see :data:`PLOT_FILES`.
    """
    run_dir = Path(run_dir)
    out_dir = run_dir / "report"
    notes: list[str] = []
    written: list[Path] = []

    records: list[StepRecord] = _read(run_dir / "metrics.jsonl", read_records, notes) or []
    train_log: list[dict[str, Any]] = _read(run_dir / "train_log.jsonl", read_jsonl, notes) or []
    test: dict[str, list[StepRecord]] = {}
    test_dir = run_dir / "test"
    test_files = sorted(test_dir.glob("*.jsonl")) if test_dir.is_dir() else []
    if not test_files:
        notes.append("test/*.jsonl: not found")
    for f in sorted(test_files, key=lambda p: agent_sort_key(p.stem)):
        recs = _read(f, read_records, notes)
        if recs:
            test[f.stem] = recs
        elif recs is not None:
            notes.append(f"test/{f.name}: no records")

    def fig(key: str, fn: Callable[..., Path], *args: Any) -> None:
        written.append(fn(*args, out_dir / PLOT_FILES[key]))

    # training figures from metrics.jsonl
    if records:
        fig("token_speed", plot_token_speed, records)
        fig("inference_time", plot_inference_time, records)
        fig("perplexity", plot_perplexity, records)
        fig("tokens_vs_perplexity", plot_tokens_vs_perplexity, records)
        fig("action_usage", plot_action_usage, records)
        fig("action_means", plot_action_means, records)
    elif (run_dir / "metrics.jsonl").exists() and not any("metrics.jsonl:" in n for n in notes):
        notes.append("metrics.jsonl: no records; per-episode and per-action figures skipped")
    # reward curve: train_log when it carries rewards, else episode returns from metrics.jsonl
    reward_rows = [e for e in train_log if e.get("reward") is not None] or _episode_returns(records)
    if reward_rows:
        fig("reward_curve", plot_reward_curve, reward_rows)
    if any(e.get("loss") is not None for e in train_log):
        fig("loss_curve", plot_loss_curve, train_log)
    elif train_log:
        notes.append("train_log.jsonl: no loss logged; loss curve skipped")

    # test comparison
    test_summary: dict[str, GroupSummary] = {name: summarise(recs, by=None)["all"] for name, recs in test.items()}
    if test_summary:
        fig("test_comparison", plot_test_comparison, test_summary)
        fig("test_speedup_fidelity", plot_speedup_fidelity, test_summary)

    # the text report
    lines = [f"dynprune run report: {run_dir}", ""]
    lines += _training_section(records, train_log)
    lines += ["", "TEST", "===="]
    if test_summary:
        lines.append(f"agents: {len(test_summary)}; speed-up and ppl change are % vs the full model")
        lines.append(format_table(test_summary))
    else:
        lines.append("No test data (test/<agent>.jsonl files are missing or empty).")
    if not records and not train_log and not test_summary:
        lines[2:2] = ["No data found in this run directory.", ""]
    lines += ["", "FILES", "====="]
    lines += [f"  {p.name}" for p in written] or ["  (no figures: no data)"]
    if notes:
        lines += ["", "NOTES", "====="]
        lines += [f"  {n}" for n in notes]
    written.append(atomic_write_text(out_dir / "report.txt", "\n".join(lines) + "\n"))
    return written
