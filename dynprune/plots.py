"""Episode and benchmark figures.

Every ``plot_*`` function takes data already read from a run's files (StepRecords or
their dict form, ``train_log.jsonl`` entries, or a :func:`~dynprune.records.summarise`
result), writes one PNG atomically and returns its path. The run report that draws them
all from a run directory is :mod:`dynprune.report`.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly,
never through ``pyplot``: nothing is registered in pyplot's global figure list and the
process-wide backend is left alone, so calling these from a notebook, a test or a
long training run leaks no state.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dynprune.fileio import atomic_write_bytes
from dynprune.records import (
    GroupSummary,
    record_from_dict,
)
from dynprune.types import StepRecord

__all__ = [
    "agent_sort_key",
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
]

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


def _episode_means(records: Iterable[RecordLike], quantity: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Episode indices and the per-episode means of ``baseline_<quantity>`` and ``pruned_<quantity>``."""
    recs = _records(records)
    eps, base = _per_episode(recs, lambda r: getattr(r, f"baseline_{quantity}"))
    _, pruned = _per_episode(recs, lambda r: getattr(r, f"pruned_{quantity}"))
    return eps, base, pruned


def _baseline_vs_pruned(
    eps: np.ndarray, base: np.ndarray, pruned: np.ndarray, trend_unit: str | None
) -> tuple[Figure, Any]:
    """Baseline and pruned as two lines over the episodes; with ``trend_unit``, each with its trend line."""
    fig, ax = _figure()
    m = _marker(len(eps))
    ax.plot(eps, base, marker=m, ms=3, color=_BASELINE_COLOR, label="baseline (full model)")
    ax.plot(eps, pruned, marker=m, ms=3, color=_PRUNED_COLOR, label="pruned")
    if trend_unit is not None:
        _trend(ax, eps, base, _BASELINE_COLOR, "baseline", trend_unit)
        _trend(ax, eps, pruned, _PRUNED_COLOR, "pruned", trend_unit)
    return fig, ax


def _finish(fig: Figure, ax: Any, path: str | os.PathLike[str], title: str, ylabel: str) -> Path:
    """Title, labels (x: the episode), grid and the legend below; write the PNG."""
    ax.set(title=title, xlabel="episode (index)", ylabel=ylabel)
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return _save(fig, path)


def plot_token_speed(records: Iterable[RecordLike], path: str | os.PathLike[str]) -> Path:
    """Baseline vs pruned generation throughput (tokens/s) per episode, with linear trend lines."""
    fig, ax = _baseline_vs_pruned(*_episode_means(records, "tokens_per_s"), trend_unit="tokens/s")
    return _finish(fig, ax, path, "Token speed per episode", "generation speed (tokens/s)")


def plot_inference_time(records: Iterable[RecordLike], path: str | os.PathLike[str]) -> Path:
    """Baseline vs pruned inference latency per episode (mean over the episode's steps)."""
    eps, base, pruned = _episode_means(records, "latency_s")
    scale, unit = _latency_scale(base, pruned)
    fig, ax = _baseline_vs_pruned(eps, base * scale, pruned * scale, trend_unit=unit)
    return _finish(fig, ax, path, "Inference time per episode", f"latency ({unit})")


def plot_perplexity(records: Iterable[RecordLike], path: str | os.PathLike[str]) -> Path:
    """Perplexity of the full model's answer under the baseline and the pruned model, per episode."""
    eps, base, pruned = _episode_means(records, "ppl")
    fig, ax = _baseline_vs_pruned(eps, base, pruned, trend_unit=None)
    log = _maybe_log(ax, base, pruned)
    ylabel = "perplexity of full model's answer (unitless" + (", log scale)" if log else ")")
    return _finish(fig, ax, path, "Answer perplexity per episode", ylabel)


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
    return _finish(fig, ax, path, "Reward per episode", "episode reward (unitless)")


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


def agent_sort_key(name: str) -> tuple[int, str]:
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
