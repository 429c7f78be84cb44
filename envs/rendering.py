"""What ``render()`` shows: one line of text (``"ansi"``) or a small chart (``"rgb_array"``).

The chart is the picture a user wants of a pruning agent at work: speed-up against quality
(prefix fidelity to the full model's answer) of the recent steps, each point labelled by its
action, the full model at (0, 1). Drawn with matplotlib's Agg canvas, so it needs no display.
"""

from __future__ import annotations

import numpy as np

from dynprune.types import StepRecord

#: steps kept for the ``rgb_array`` chart
RENDER_HISTORY = 64
#: chart size in pixels (height, width)
IMAGE_SHAPE = (240, 320)


def render_line(record: StepRecord | None, episode: int) -> str:
    """One line on the last step (``"ansi"`` mode); says so before the first step."""
    if record is None:
        return f"episode {episode}: no step yet"
    budget = "" if record.budget_s is None else f" budget {record.budget_s * 1e3:.0f} ms"
    return (
        f"episode {record.episode} step {record.step} prompt {record.prompt_id}: {record.action_name} "
        f"speed-up {record.speedup:+.1%} fidelity {record.prefix_fidelity:.2f} "
        f"latency {record.pruned_latency_s * 1e3:.0f}/{record.baseline_latency_s * 1e3:.0f} ms{budget} "
        f"reward {record.reward:+.3f}{' (terminated)' if record.terminated else ''}"
    )


def render_steps_image(records: list[StepRecord]) -> np.ndarray:
    """Speed-up vs fidelity of ``records`` as an ``IMAGE_SHAPE + (3,)`` uint8 array (``"rgb_array"`` mode)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = IMAGE_SHAPE
    fig = Figure(figsize=(width / 80, height / 80), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter([0.0], [1.0], marker="*", s=80, color="black", label="full model")
    if records:
        speed = np.array([r.speedup for r in records])
        fidelity = np.array([r.prefix_fidelity for r in records])
        # older steps fade: the last one is drawn darkest
        shade = np.linspace(1.0, 0.25, len(records))[::-1]
        ax.scatter(speed, fidelity, c=shade, cmap="Blues", vmin=0.0, vmax=1.0, s=18)
        last = records[-1]
        ax.annotate(last.action_name, (last.speedup, last.prefix_fidelity), fontsize=7)
    ax.set_xlabel("speed-up", fontsize=7)
    ax.set_ylabel("prefix fidelity", fontsize=7)
    ax.set_ylim(-0.05, 1.05)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()
