"""Episode and benchmark figures, and the plain-text run report.

Every ``plot_*`` function takes data already read from a run's files (StepRecords or
their dict form, ``train_log.jsonl`` entries, or a :func:`~dynprune.records.summarise`
result), writes one PNG atomically and returns its path. :func:`write_report` reads
whatever a run directory holds and writes all figures plus ``report.txt`` into
``<run_dir>/report/``; it never re-runs anything.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly,
never through ``pyplot``: nothing is registered in pyplot's global figure list and the
process-wide backend is left alone, so calling these from a notebook, a test or a
long training run leaks no state.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dynprune.fileio import atomic_write_bytes, atomic_write_text
from dynprune.records import (
    GroupSummary,
    read_jsonl,
    read_records,
    record_from_dict,
    summarise,
)
from dynprune.types import StepRecord

__all__ = [
    "PLOT_FILES",
    "format_table",
    "plot_action_means",
    "plot_action_usage",
    "plot_inference_time",
    "plot_loss_curve",
    "plot_perplexity",
    "plot_reward_curve",
    "plot_speedup_fidelity",
    "plot_test_comparison",
    "plot_token_speed",
    "plot_tokens_vs_perplexity",
    "write_report",
]

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

RecordLike = StepRecord | Mapping[str, Any]

_BASELINE_COLOR = "tab:gray"
_PRUNED_COLOR = "tab:blue"

# --------------------------------------------------------------------------- helpers


def _records(records: Iterable[RecordLike]) -> list[StepRecord]:
    """Normalise StepRecords / dicts to StepRecords."""
    return [r if isinstance(r, StepRecord) else record_from_dict(r) for r in records]


def _figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (8.0, 5.0)) -> tuple[Figure, Any]:
    """A figure on its own Agg canvas (not known to pyplot) and its axes."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=True)


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Render ``fig`` to PNG and write it atomically; release the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    fig.clear()
    return atomic_write_bytes(path, buf.getvalue())


def _finite(a: Sequence[float] | np.ndarray) -> np.ndarray:
    """As a float array with non-finite values (inf perplexities, None) turned into NaN."""
    arr = np.array([np.nan if v is None else v for v in a], dtype=float)
    arr[~np.isfinite(arr)] = np.nan
    return arr


def _per_episode(records: list[StepRecord], value: Callable[[StepRecord], float]) -> tuple[np.ndarray, np.ndarray]:
    """Episode indices (sorted) and the mean of ``value`` over each episode's steps."""
    by_ep: dict[int, list[float]] = {}
    for r in records:
        by_ep.setdefault(r.episode, []).append(value(r))
    eps = np.array(sorted(by_ep), dtype=float)
    means = []
    for e in sorted(by_ep):
        v = _finite(by_ep[e])
        means.append(float(np.nanmean(v)) if np.isfinite(v).any() else np.nan)
    return eps, np.array(means, dtype=float)


def _trend(ax: Any, x: np.ndarray, y: np.ndarray, color: str, label: str, unit: str) -> None:
    """Least-squares line ``y = a x + b`` (numpy.polyfit, degree 1) over the finite points."""
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return
    slope, intercept = np.polyfit(x[ok], y[ok], 1)
    xs = np.array([x[ok].min(), x[ok].max()])
    ax.plot(xs, slope * xs + intercept, "--", color=color, lw=1.5, label=f"{label} trend ({slope:+.3g} {unit}/episode)")


def _maybe_log(ax: Any, *arrays: np.ndarray, axis: str = "y") -> bool:
    """Switch to a log scale when positive data spans more than two decades."""
    vals = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.array([])
    if vals.size and (vals > 0).all() and vals.max() / vals.min() > 100:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
        return True
    return False


def _legend_below(fig: Figure, ax: Any) -> None:
    """Legend under the axes, so it never hides data."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small", frameon=False)


def _marker(n: int) -> str:
    return "o" if n <= 60 else ""


def _action_order(records: list[StepRecord]) -> list[str]:
    """Action names ordered by action id (the action table's order)."""
    first: dict[str, int] = {}
    for r in records:
        first.setdefault(r.action_name, r.action)
    return sorted(first, key=lambda n: (first[n], n))


def _palette(names: Sequence[str]) -> dict[str, Any]:
    """A stable colour per name (tab10 up to 10 names, tab20 up to 20, then a hue wheel)."""
    from matplotlib import colormaps

    n = len(names)
    if n <= 10:
        cmap, pos = colormaps["tab10"], [i / 10 for i in range(n)]
    elif n <= 20:
        cmap, pos = colormaps["tab20"], [i / 20 for i in range(n)]
    else:
        cmap, pos = colormaps["hsv"], [i / n for i in range(n)]
    return {name: cmap(p) for name, p in zip(names, pos, strict=True)}


def _latency_scale(*arrays: np.ndarray) -> tuple[float, str]:
    """Show sub-second latencies in ms, longer ones in s."""
    vals = np.concatenate([a[np.isfinite(a)] for a in arrays])
    return (1000.0, "ms") if vals.size and np.nanmax(vals) < 1.0 else (1.0, "s")


# --------------------------------------------------------------------------- per-episode figures


def plot_token_speed(records: Iterable[RecordLike], path: str | os.PathLike[str]) -> Path:
    """Baseline vs pruned generation throughput (tokens/s) per episode, with linear trend lines."""
    recs = _records(records)
    eps, base = _per_episode(recs, lambda r: r.baseline_tokens_per_s)
    _, pruned = _per_episode(recs, lambda r: r.pruned_tokens_per_s)
    fig, ax = _figure()
    m = _marker(len(eps))
    ax.plot(eps, base, marker=m, ms=3, color=_BASELINE_COLOR, label="baseline (full model)")
    ax.plot(eps, pruned, marker=m, ms=3, color=_PRUNED_COLOR, label="pruned")
    _trend(ax, eps, base, _BASELINE_COLOR, "baseline", "tokens/s")
    _trend(ax, eps, pruned, _PRUNED_COLOR, "pruned", "tokens/s")
    ax.set(title="Token speed per episode", xlabel="episode (index)", ylabel="generation speed (tokens/s)")
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return _save(fig, path)


def plot_inference_time(records: Iterable[RecordLike], path: str | os.PathLike[str]) -> Path:
    """Baseline vs pruned inference latency per episode (mean over the episode's steps)."""
    recs = _records(records)
    eps, base = _per_episode(recs, lambda r: r.baseline_latency_s)
    _, pruned = _per_episode(recs, lambda r: r.pruned_latency_s)
    scale, unit = _latency_scale(base, pruned)
    fig, ax = _figure()
    m = _marker(len(eps))
    ax.plot(eps, base * scale, marker=m, ms=3, color=_BASELINE_COLOR, label="baseline (full model)")
    ax.plot(eps, pruned * scale, marker=m, ms=3, color=_PRUNED_COLOR, label="pruned")
    _trend(ax, eps, base * scale, _BASELINE_COLOR, "baseline", unit)
    _trend(ax, eps, pruned * scale, _PRUNED_COLOR, "pruned", unit)
    ax.set(title="Inference time per episode", xlabel="episode (index)", ylabel=f"latency ({unit})")
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return _save(fig, path)


def plot_perplexity(records: Iterable[RecordLike], path: str | os.PathLike[str]) -> Path:
    """Perplexity of the full model's answer under the baseline and the pruned model, per episode."""
    recs = _records(records)
    eps, base = _per_episode(recs, lambda r: r.baseline_ppl)
    _, pruned = _per_episode(recs, lambda r: r.pruned_ppl)
    fig, ax = _figure()
    m = _marker(len(eps))
    ax.plot(eps, base, marker=m, ms=3, color=_BASELINE_COLOR, label="baseline (full model)")
    ax.plot(eps, pruned, marker=m, ms=3, color=_PRUNED_COLOR, label="pruned")
    log = _maybe_log(ax, base, pruned)
    ax.set(
        title="Answer perplexity per episode",
        xlabel="episode (index)",
        ylabel="perplexity of full model's answer (unitless" + (", log scale)" if log else ")"),
    )
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return _save(fig, path)


# --------------------------------------------------------------------------- per-action figures


def plot_tokens_vs_perplexity(records: Iterable[RecordLike], path: str | os.PathLike[str]) -> Path:
    """Prompt length vs prompt perplexity, one point per step, coloured by the chosen action."""
    recs = _records(records)
    order = _action_order(recs)
    colors = _palette(order)
    fig, ax = _figure(figsize=(8.0, 5.0))
    all_ppl = _finite([r.prompt_perplexity for r in recs])
    for name in order:
        sel = [r for r in recs if r.action_name == name]
        ax.scatter(
            [r.prompt_tokens for r in sel],
            _finite([r.prompt_perplexity for r in sel]),
            s=18,
            alpha=0.75,
            color=colors[name],
            label=f"{name} (n={len(sel)})",
        )
    log = _maybe_log(ax, all_ppl)
    ax.set(
        title="Prompt length vs prompt perplexity, by chosen action",
        xlabel="prompt length (tokens)",
        ylabel="prompt perplexity under full model (unitless" + (", log scale)" if log else ")"),
    )
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, title="action", fontsize="small", loc="outside right upper")
    return _save(fig, path)


def plot_action_usage(records: Iterable[RecordLike], path: str | os.PathLike[str]) -> Path:
    """Bar chart of how often each action was chosen."""
    recs = _records(records)
    order = _action_order(recs)
    colors = _palette(order)
    counts = [sum(r.action_name == name for r in recs) for name in order]
    fig, ax = _figure(figsize=(max(6.0, 0.9 * len(order) + 2), 4.5))
    bars = ax.bar(order, counts, color=[colors[n] for n in order])
    total = max(1, sum(counts))
    ax.bar_label(bars, labels=[f"{c}\n({100 * c / total:.0f} %)" for c in counts], fontsize="small")
    ax.set(title=f"Action usage ({total} steps)", xlabel="action", ylabel="times chosen (steps)")
    ax.margins(y=0.2)
    ax.tick_params(axis="x", labelrotation=30)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_action_means(records: Iterable[RecordLike], path: str | os.PathLike[str]) -> Path:
    """Two panels per action: mean pruned latency and mean pruned answer perplexity (error bars: std).

    A dashed line marks the baseline mean over all steps, for reference.
    """
    recs = _records(records)
    order = _action_order(recs)
    colors = [_palette(order)[n] for n in order]
    lat = [_finite([r.pruned_latency_s for r in recs if r.action_name == n]) for n in order]
    ppl = [_finite([r.pruned_ppl for r in recs if r.action_name == n]) for n in order]
    base_lat = _finite([r.baseline_latency_s for r in recs])
    base_ppl = _finite([r.baseline_ppl for r in recs])
    scale, unit = _latency_scale(base_lat, *lat)

    def stats(groups: list[np.ndarray], k: float = 1.0) -> tuple[list[float], list[float]]:
        means = [float(np.nanmean(g)) * k if np.isfinite(g).any() else np.nan for g in groups]
        stds = [float(np.nanstd(g)) * k if np.isfinite(g).any() else np.nan for g in groups]
        return means, stds

    fig, (ax1, ax2) = _figure(1, 2, figsize=(max(10.0, 1.4 * len(order) + 4), 4.5))
    m, s = stats(lat, scale)
    ax1.bar(order, m, yerr=s, capsize=3, color=colors)
    if np.isfinite(base_lat).any():
        ax1.axhline(np.nanmean(base_lat) * scale, ls="--", color=_BASELINE_COLOR, label="baseline mean")
        ax1.legend(fontsize="small")
    ax1.set(title="Mean pruned latency per action", xlabel="action", ylabel=f"latency ({unit})")
    m, s = stats(ppl)
    ax2.bar(order, m, yerr=s, capsize=3, color=colors)
    if np.isfinite(base_ppl).any():
        ax2.axhline(np.nanmean(base_ppl), ls="--", color=_BASELINE_COLOR, label="baseline mean")
        ax2.legend(fontsize="small")
    ax2.set(title="Mean pruned answer perplexity per action", xlabel="action", ylabel="perplexity (unitless)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Per-action means (error bars: one standard deviation)")
    return _save(fig, path)


# --------------------------------------------------------------------------- training curves


def _moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (NaN for the first ``window - 1``)."""
    out = np.full_like(y, np.nan, dtype=float)
    if window < 1 or len(y) < window:
        return out
    c = np.cumsum(np.insert(np.nan_to_num(y), 0, 0.0))
    out[window - 1 :] = (c[window:] - c[:-window]) / window
    return out


def plot_reward_curve(
    entries: Iterable[Mapping[str, Any]], path: str | os.PathLike[str], window: int | None = None
) -> Path:
    """Per-episode reward with a trailing moving average.

    Args:
        entries: Mappings with ``"episode"`` and ``"reward"`` (``train_log.jsonl`` lines,
            or episode returns built from StepRecords).
        path: Where to write the PNG.
        window: Moving-average width in episodes; default about a tenth of the episodes (1..50).
    """
    rows = [e for e in entries if e.get("reward") is not None]
    x = np.array([float(e.get("episode", i)) for i, e in enumerate(rows)])
    y = _finite([float(e["reward"]) for e in rows])
    w = window if window is not None else max(1, min(50, len(y) // 10))
    fig, ax = _figure()
    ax.plot(x, y, color=_PRUNED_COLOR, alpha=0.35, lw=1, label="episode reward")
    if w > 1:
        ax.plot(x, _moving_average(y, w), color=_PRUNED_COLOR, lw=2, label=f"moving average ({w} episodes)")
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set(title="Reward per episode", xlabel="episode (index)", ylabel="episode reward (unitless)")
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return _save(fig, path)


def plot_loss_curve(entries: Iterable[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Training loss against environment timesteps; epsilon on a second axis when logged.

    Entries without a loss (``None``/missing, e.g. before learning starts) are left out.
    """
    rows = list(entries)
    x_all = np.array([float(e.get("timesteps", i)) for i, e in enumerate(rows)])
    loss = _finite([e.get("loss") for e in rows])
    eps = _finite([e.get("epsilon") for e in rows])
    fig, ax = _figure()
    ok = np.isfinite(loss)
    ax.plot(x_all[ok], loss[ok], color="tab:red", lw=1, label="loss")
    if ok.sum() >= 10:
        w = max(2, min(50, int(ok.sum()) // 10))
        ax.plot(x_all[ok], _moving_average(loss[ok], w), color="darkred", lw=2, label=f"moving average ({w} points)")
    _maybe_log(ax, loss[ok])
    ax.set(title="Training loss", xlabel="environment steps (timesteps)", ylabel="loss (unitless)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if np.isfinite(eps).any():
        ax2 = ax.twinx()
        ok_eps = np.isfinite(eps)
        (h,) = ax2.plot(x_all[ok_eps], eps[ok_eps], color=_BASELINE_COLOR, ls=":", lw=1.5, label="epsilon")
        ax2.set_ylabel("exploration epsilon (probability)")
        ax2.set_ylim(0, max(1.0, float(np.nanmax(eps))))
        handles.append(h)
        labels.append("epsilon")
    ax.legend(handles, labels, fontsize="small")
    return _save(fig, path)


# --------------------------------------------------------------------------- test comparison


def _agent_sort_key(name: str) -> tuple[int, str]:
    """Baselines first (none, static-*, random), learned agents, the oracle last."""
    if name == "none":
        return (0, name)
    if name.startswith("static"):
        return (1, name)
    if name == "random":
        return (2, name)
    if name == "oracle":
        return (4, name)
    return (3, name)


def _nan(v: float | None) -> float:
    return np.nan if v is None or not math.isfinite(v) else float(v)


def plot_test_comparison(summary: Mapping[str, GroupSummary], path: str | os.PathLike[str]) -> Path:
    """Three bar panels, one bar per agent: mean reward, mean speed-up (%), mean fidelity (error bars: std)."""
    names = list(summary)
    colors = _palette(names)
    fig, axes = _figure(1, 3, figsize=(max(12.0, 1.8 * len(names) + 3), 4.8))
    panels = [
        ("mean_reward", "std_reward", 1.0, "Mean reward", "reward per step (unitless)"),
        ("mean_speedup", "std_speedup", 100.0, "Mean speed-up", "speed-up vs full model (%)"),
        ("mean_token_agreement", "std_token_agreement", 1.0, "Mean token agreement",
         "token agreement with full model (0-1)"),
    ]
    for ax, (mk, sk, k, title, ylabel) in zip(axes, panels, strict=True):
        means = [_nan(summary[n][mk]) * k for n in names]  # type: ignore[literal-required]
        stds = [_nan(summary[n][sk]) * k for n in names]  # type: ignore[literal-required]
        bars = ax.bar(names, means, yerr=stds, capsize=3, color=[colors[n] for n in names])
        ax.bar_label(bars, fmt="%.3g", fontsize="x-small", padding=2)
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set(title=title, xlabel="agent", ylabel=ylabel)
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
    n_steps = ", ".join(f"{n}: {summary[n]['n']}" for n in names)
    fig.suptitle(f"Test comparison (error bars: one std; steps per agent: {n_steps})", fontsize="medium")
    return _save(fig, path)


def plot_speedup_fidelity(summary: Mapping[str, GroupSummary], path: str | os.PathLike[str]) -> Path:
    """Speed-up vs fidelity, one point per agent, error bars = one standard deviation on each axis."""
    names = list(summary)
    colors = _palette(names)
    fig, ax = _figure(figsize=(7.5, 5.5))
    for n in names:
        s = summary[n]
        x, y = _nan(s["mean_speedup"]) * 100, _nan(s["mean_token_agreement"])
        ax.errorbar(
            x,
            y,
            xerr=_nan(s["std_speedup"]) * 100,
            yerr=_nan(s["std_token_agreement"]),
            fmt="o",
            ms=7,
            capsize=3,
            color=colors[n],
            label=f"{n} (n={s['n']})",
        )
        if np.isfinite(x) and np.isfinite(y):
            ax.annotate(n, (x, y), textcoords="offset points", xytext=(6, 6), fontsize="small")
    ax.axvline(0.0, color="black", lw=0.6)
    ax.set(
        title="Speed-up vs fidelity per agent (up and right is better)",
        xlabel="mean speed-up vs full model (%)",
        ylabel="mean fidelity: token agreement with full model (0-1)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    return _save(fig, path)


# --------------------------------------------------------------------------- text report


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
    for f in sorted(test_files, key=lambda p: _agent_sort_key(p.stem)):
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
