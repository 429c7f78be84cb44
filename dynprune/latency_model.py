"""A calibrated latency model: prefill and per-token decode time of any plan, from its shapes.

The expected latency of a dense decoder under a plan is a deterministic function of shapes
alone: which layers run, how many query / KV heads and FFN channels each keeps, how long the
prompt, the answer and the KV cache are. What varies from one timed run to the next is load,
not signal. So the env's ``timing="modelled"`` asks this model, not a clock.

**Model.** A generation of ``N`` tokens after an ``n``-token prompt costs one prefill
(``n`` tokens, logits of the last position only) and ``N - 1`` single-token decode steps,
step ``j`` attending over ``n + j`` positions. Each phase is linear in work counts
(:data:`PREFILL_FEATURES`, :data:`DECODE_FEATURES`):

- per forward pass, whatever the plan: the embedding lookup, final norm, lm_head (``V x H``,
  one position) and argmax over ``V``, the Python loop: these never shrink (``forward``);
- per running decoder layer: a fixed overhead (module calls, kernel launches, norms; ``layers``);
- matmul work: the running layers' q/k/v/o weights and gate/up/down weights, times the tokens
  fed (batch-1 decode is bandwidth bound: every weight is read once per step, so weights, not
  FLOPs, are the unit, and the two groups get their own coefficient because their shapes run
  at different speeds);
- attention over the cache: attended positions x kept query width (scores and values), and
  for decode, cache length x kept KV width (the cache grows by concatenation: every step
  copies and reads it);
- ragged GQA layers (kept query heads spread unevenly over KV heads) gather K/V per query head
  (``dynprune.pruning.heads``): a per-layer cost plus the gathered width x positions;
- adapter layers: a per-layer cost plus their weights.

``T(plan, n, N) = prefill(plan, n) + (N - 1) * step(plan, n + N / 2)`` (the step cost is
linear in the context, so the mean context gives the sum exactly).

**Fit.** Coefficients are fitted by non-negative least squares (Lawson and Hanson 1974, ch. 23:
every coefficient is a cost per unit of work, so none can be negative) on relative residuals,
from measurements of random plans of every kind at random prompt and answer lengths, each
timed interleaved with the full model at the same lengths. Interleaving gives every point its
own load factor: the fit alternates between the coefficients and one multiplicative load per
point (``t = load_point * f(shapes) . theta``), so a machine that got busier between two points
biases neither; only ratios within a point carry the shape signal. Loads are normalised to a
median of 1, so absolute predictions are those of the calibration's typical load.

A fitted model is cached per (model identity, device, dtype, torch threads) as JSON in
``<dynprune cache>/latency/``, like importance; ``dynprune calibrate --latency`` refits it.
Its error on calibration points left out of the fit is stored with it.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dynprune.fileio import atomic_write_json
from dynprune.plan import PruningPlan
from dynprune.types import LatencyPoint, PlanShapes
from dynprune.validation import require_at_least, require_in_range

if TYPE_CHECKING:
    from dynprune.models import PrunableLM

log = logging.getLogger(__name__)

FORMAT = 1
PREFILL_FEATURES: tuple[str, ...] = (
    "forward", "tokens", "layers", "layer_tokens", "attn_proj", "ffn", "attn_scores",
    "ragged_layers", "ragged_gather", "adapter_layers", "adapter_params",
)
"""Work counts of a prefill of ``n`` tokens (see :func:`prefill_features`)."""
DECODE_FEATURES: tuple[str, ...] = (
    "forward", "context", "layers", "attn_proj", "ffn", "attn_scores", "kv_cache",
    "ragged_layers", "ragged_gather", "adapter_layers", "adapter_params",
)
"""Work counts of one decode step at context ``c`` (see :func:`decode_features`)."""
PLAN_KINDS = ("layers", "heads", "ffn", "mixed", "adapters")


# ----------------------------------------------------------------------------- shapes and features


def plan_shapes(lm: PrunableLM, plan: PruningPlan) -> PlanShapes:
    """What ``plan`` leaves of ``lm``: running layers, kept weights and widths, ragged layers, adapters.

    Kept KV heads and raggedness come from the head slice the plan will really use
    (``lm.head_slice``: the least important heads go, a KV group goes with its last query head).
    """
    lm.validate(plan)
    g = lm.geometry
    h, d = g.hidden_size, g.head_dim
    heads, ffn = dict(plan.heads), dict(plan.ffn)
    layers = attn = ffn_p = qw = kvw = rl = rw = al = ap = 0
    for i in range(g.num_layers):
        if i in plan.skip:
            continue
        if i in plan.adapters:
            module = plan.module_for(i) or lm.adapters[i]
            al += 1
            ap += sum(p.numel() for p in module.parameters())
            continue
        nq = heads.get(i, g.num_heads[i])
        if nq < g.num_heads[i]:
            hs = lm.head_slice(i, nq)
            nkv, ragged = len(hs.kept_groups), hs.kv_index is not None
        else:
            nkv, ragged = g.num_kv_heads[i], False
        layers += 1
        attn += h * d * (2 * nq + 2 * nkv)  # q and o: nq heads; k and v: nkv heads
        ffn_p += 3 * h * ffn.get(i, g.intermediate_size[i])
        qw += nq * d
        kvw += nkv * d
        if ragged:
            rl += 1
            rw += nq * d
    return PlanShapes(layers, attn, ffn_p, qw, kvw, rl, rw, al, ap)


def prefill_features(s: PlanShapes, n: int) -> np.ndarray:
    """Work counts of a prefill of ``n`` prompt tokens, in the order of :data:`PREFILL_FEATURES`."""
    attended = n * (n + 1) / 2  # token t attends to t positions (causal)
    return np.array([
        1.0, n, s.layers, n * s.layers, n * s.attn_params, n * s.ffn_params, attended * s.q_width,
        s.ragged_layers, n * s.ragged_width, s.adapter_layers, n * s.adapter_params,
    ], dtype=np.float64)


def decode_features(s: PlanShapes, context: float) -> np.ndarray:
    """Work counts of one decode step attending over ``context`` positions (:data:`DECODE_FEATURES`)."""
    return np.array([
        1.0, context, s.layers, s.attn_params, s.ffn_params, context * s.q_width, context * s.kv_width,
        s.ragged_layers, context * s.ragged_width, s.adapter_layers, s.adapter_params,
    ], dtype=np.float64)


def mean_context(prompt_tokens: int, new_tokens: int) -> float:
    """Mean positions attended by the ``new_tokens - 1`` decode steps after a prompt: ``n + N / 2``."""
    return prompt_tokens + new_tokens / 2.0


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class LatencyKey:
    """What a latency model is valid for: one model, device, dtype and torch thread count."""

    model_id: str
    device: str
    dtype: str
    threads: int

    @property
    def slug(self) -> str:
        """A file-name-safe form of the key."""
        raw = f"{self.model_id}-{self.device}-{self.dtype}-t{self.threads}"
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)


def latency_key(lm: PrunableLM, threads: int | None = None) -> LatencyKey:
    """The key of ``lm`` as it runs now (torch's current thread count unless given)."""
    import torch

    dev = lm.device
    device = f"cuda:{torch.cuda.get_device_name(dev)}" if dev.type == "cuda" else dev.type
    return LatencyKey(lm.model_id, device, str(lm.dtype).replace("torch.", ""),
                      int(threads if threads is not None else torch.get_num_threads()))


@dataclass(frozen=True)
class LatencyError:
    """Error of predicted speed-ups on measured points.

    ``rel_error`` of a point is ``|predicted / measured - 1|`` of the speed-up as a ratio
    (``T_full / T_plan``; measured: the median over the point's interleaved repeats).
    """

    n: int
    median_abs_rel_error: float
    p90_abs_rel_error: float
    max_abs_rel_error: float


@dataclass(frozen=True)
class LatencyModel:
    """Prefill and decode-step latency of any plan of one model on one device, dtype and thread count.

    Build with :func:`fit_latency_model` or :func:`calibrate_latency`; load with
    :func:`load_latency_model` / :func:`load_or_calibrate_latency`.
    """

    key: LatencyKey
    prefill_coef: tuple[float, ...]
    decode_coef: tuple[float, ...]
    holdout: LatencyError | None = None
    fit_error: LatencyError | None = None
    n_points: int = 0
    created: str = ""
    settings: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if len(self.prefill_coef) != len(PREFILL_FEATURES) or len(self.decode_coef) != len(DECODE_FEATURES):
            raise ValueError(
                f"latency model has {len(self.prefill_coef)} prefill and {len(self.decode_coef)} decode coefficients; "
                f"expected {len(PREFILL_FEATURES)} and {len(DECODE_FEATURES)} (a file of another format: refit with "
                "dynprune calibrate --latency)"
            )
        if any(not math.isfinite(c) or c < 0 for c in self.prefill_coef + self.decode_coef):
            raise ValueError("latency coefficients must be finite and non-negative")
        object.__setattr__(self, "_pre", np.asarray(self.prefill_coef, dtype=np.float64))
        object.__setattr__(self, "_dec", np.asarray(self.decode_coef, dtype=np.float64))

    def prefill_s(self, shapes: PlanShapes, prompt_tokens: int) -> float:
        """Predicted prefill seconds (time to first token) of an ``n``-token prompt."""
        return float(prefill_features(shapes, prompt_tokens) @ self._pre)  # type: ignore[attr-defined]

    def step_s(self, shapes: PlanShapes, context: float) -> float:
        """Predicted seconds of one decode step attending over ``context`` positions."""
        return float(decode_features(shapes, context) @ self._dec)  # type: ignore[attr-defined]

    def latency_s(self, shapes: PlanShapes, prompt_tokens: int, new_tokens: int) -> float:
        """Predicted seconds to generate ``new_tokens`` tokens after ``prompt_tokens`` (prefill + decode)."""
        if prompt_tokens < 1 or new_tokens < 1:
            raise ValueError(f"need prompt_tokens >= 1 and new_tokens >= 1, got {prompt_tokens} and {new_tokens}")
        steps = new_tokens - 1
        decode = steps * self.step_s(shapes, mean_context(prompt_tokens, new_tokens)) if steps else 0.0
        return self.prefill_s(shapes, prompt_tokens) + decode

    def speedup(self, full: PlanShapes, plan: PlanShapes, prompt_tokens: int, new_tokens: int) -> float:
        """Predicted ``T_full / T_plan - 1`` for the same prompt and answer length."""
        return self.latency_s(full, prompt_tokens, new_tokens) / self.latency_s(plan, prompt_tokens, new_tokens) - 1.0

    def point_error(self, points: Sequence[LatencyPoint]) -> LatencyError:
        """Error of this model's speed-ups on measured points."""
        errors = [abs(self.predicted_ratio(p) / p.measured_ratio - 1.0) for p in points]
        return error_summary(errors)

    def predicted_ratio(self, p: LatencyPoint) -> float:
        """Predicted ``T_full / T_plan`` of a measured point."""
        return self.speedup(p.full, p.shapes, p.prompt_tokens, p.new_tokens) + 1.0

    # ---------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        """JSON form (coefficients named by feature)."""
        return {
            "format": FORMAT,
            "key": asdict(self.key),
            "prefill": dict(zip(PREFILL_FEATURES, self.prefill_coef, strict=True)),
            "decode": dict(zip(DECODE_FEATURES, self.decode_coef, strict=True)),
            "holdout": asdict(self.holdout) if self.holdout else None,
            "fit_error": asdict(self.fit_error) if self.fit_error else None,
            "n_points": self.n_points,
            "created": self.created,
            "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyModel:
        """Inverse of :meth:`to_dict`."""
        if data.get("format") != FORMAT:
            raise ValueError(f"latency model format {data.get('format')!r}, expected {FORMAT}; refit it")
        pre, dec = data["prefill"], data["decode"]
        missing = [f for f in PREFILL_FEATURES if f not in pre] + [f for f in DECODE_FEATURES if f not in dec]
        if missing:
            raise ValueError(f"latency model lacks coefficients {missing}; refit with dynprune calibrate --latency")
        return cls(
            key=LatencyKey(**data["key"]),
            prefill_coef=tuple(float(pre[f]) for f in PREFILL_FEATURES),
            decode_coef=tuple(float(dec[f]) for f in DECODE_FEATURES),
            holdout=LatencyError(**data["holdout"]) if data.get("holdout") else None,
            fit_error=LatencyError(**data["fit_error"]) if data.get("fit_error") else None,
            n_points=int(data.get("n_points", 0)),
            created=str(data.get("created", "")),
            settings=dict(data.get("settings", {})),
        )


def error_summary(errors: Sequence[float]) -> LatencyError:
    """Median, 90th percentile and max of absolute relative errors."""
    if not errors:
        raise ValueError("no points to measure an error on")
    arr = np.asarray(errors, dtype=np.float64)
    return LatencyError(len(arr), float(np.median(arr)), float(np.percentile(arr, 90)), float(arr.max()))


# ----------------------------------------------------------------------------- fitting


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """``argmin ||a x - b||`` subject to ``x >= 0`` (Lawson and Hanson 1974, algorithm NNLS, ch. 23).

    Active-set method: move the variable with the largest gradient into the passive (free) set,
    solve least squares on the passive set, and step back to the feasible region whenever that
    solution leaves it.
    """
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * np.linalg.norm(a, 1) * max(m, n)
    max_iter = max_iter or 3 * n
    w = a.T @ (b - a @ x)
    it = 0
    while (~passive).any() and (w[~passive] > tol).any() and it < max_iter:
        it += 1
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            s = np.zeros(n)
            s[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (s[passive] > tol).all():
                break
            # step from x towards s until the first passive variable hits zero, and drop it
            neg = passive & (s <= tol)
            alpha = float(np.min(x[neg] / (x[neg] - s[neg])))
            x = x + alpha * (s - x)
            passive &= x > tol
            x[~passive] = 0.0
        x = s
        w = a.T @ (b - a @ x)
    return x


@dataclass(frozen=True)
class _Rows:
    """The fit's design: one row per (point, model, phase) with the point it belongs to."""

    x: np.ndarray  # rows x (prefill features + decode features), block-diagonal by phase
    y: np.ndarray  # seconds (prefill) or seconds per step (decode)
    point: np.ndarray  # row -> point index


def point_times(p: LatencyPoint) -> tuple[float, float, float, float]:
    """Robust ``(full prefill, full step, plan prefill, plan step)`` seconds of a measured point.

    The full model's times are its medians; the plan's are those times the median ratio of
    adjacent measurements (prefills: per run; decode steps: per step, the two models' passes
    alternating), so a load spike that hits one pass of a pair moves one ratio of many.
    """
    full_pre = statistics.median(r[0] for r in p.full_runs)
    plan_pre = full_pre * statistics.median(b[0] / a[0] for a, b in zip(p.full_runs, p.plan_runs, strict=True))
    if p.full_steps:
        fs = [x for run in p.full_steps for x in run]
        ps = [x for run in p.plan_steps for x in run]
        full_step = statistics.median(fs)
        plan_step = full_step * statistics.median(b / a for a, b in zip(fs, ps, strict=True))
    else:
        steps = max(1, p.new_tokens - 1)
        full_step = statistics.median(r[1] for r in p.full_runs) / steps
        plan_step = full_step * statistics.median(
            b[1] / a[1] if a[1] > 0 else 1.0 for a, b in zip(p.full_runs, p.plan_runs, strict=True))
    return full_pre, full_step, plan_pre, plan_step


def _design(points: Sequence[LatencyPoint]) -> _Rows:
    npre, ndec = len(PREFILL_FEATURES), len(DECODE_FEATURES)
    xs, ys, idx = [], [], []
    for j, p in enumerate(points):
        ctx = mean_context(p.prompt_tokens, p.new_tokens)
        full_pre, full_step, plan_pre, plan_step = point_times(p)
        for shapes, pre, step in ((p.full, full_pre, full_step), (p.shapes, plan_pre, plan_step)):
            row = np.zeros(npre + ndec)
            row[:npre] = prefill_features(shapes, p.prompt_tokens)
            xs.append(row)
            ys.append(pre)
            idx.append(j)
            if p.new_tokens > 1:
                row = np.zeros(npre + ndec)
                row[npre:] = decode_features(shapes, ctx)
                xs.append(row)
                ys.append(step)
                idx.append(j)
    return _Rows(np.array(xs), np.array(ys), np.array(idx))


def fit_coefficients(
    points: Sequence[LatencyPoint], per_point_load: bool = True, iterations: int = 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit ``(prefill_coef, decode_coef, load per point)`` on measured points.

    Minimises the squared relative residuals ``((load_j * f . theta - t) / t)^2`` over every
    (point, model, phase) median time, ``theta >= 0``; with ``per_point_load`` it alternates
    between ``theta`` (non-negative least squares) and the loads (closed form), loads
    normalised to a median of 1. Columns are scaled to unit norm for the solver.
    """
    if len(points) < 2:
        raise ValueError(f"need at least 2 measured points to fit a latency model, got {len(points)}")
    rows = _design(points)
    if (rows.y <= 0).any():
        raise ValueError("a measured time is not positive; the timer failed")
    load = np.ones(len(points))
    theta = np.zeros(rows.x.shape[1])
    for _ in range(iterations if per_point_load else 1):
        # relative residuals: divide each row by its target, so the target becomes 1
        a = rows.x * (load[rows.point] / rows.y)[:, None]
        scale = np.linalg.norm(a, axis=0)
        scale[scale == 0] = 1.0  # a feature never exercised (e.g. no adapters): coefficient 0
        theta = nnls(a / scale, np.ones(len(rows.y))) / scale
        if not per_point_load:
            break
        pred = rows.x @ theta
        num = np.bincount(rows.point, pred / rows.y, minlength=len(points))
        den = np.bincount(rows.point, (pred / rows.y) ** 2, minlength=len(points))
        new = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
        new /= np.median(new)
        if np.max(np.abs(new - load)) < 1e-9:
            load = new
            break
        load = new
    npre = len(PREFILL_FEATURES)
    return theta[:npre], theta[npre:], load


def fit_latency_model(
    points: Sequence[LatencyPoint], key: LatencyKey, holdout: Sequence[LatencyPoint] = (),
    per_point_load: bool = True, settings: dict[str, Any] | None = None,
) -> LatencyModel:
    """Fit a :class:`LatencyModel` on ``points``; its error is measured on ``holdout`` (not fitted on)."""
    pre, dec, _ = fit_coefficients(points, per_point_load=per_point_load)
    model = LatencyModel(key, tuple(pre.tolist()), tuple(dec.tolist()), n_points=len(points),
                         created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                         settings=dict(settings or {}))
    fit_err = model.point_error(points)
    held = model.point_error(holdout) if holdout else None
    return LatencyModel(model.key, model.prefill_coef, model.decode_coef, held, fit_err, len(points),
                        model.created, model.settings)


# ----------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class LatencyCalibration:
    """Settings of a latency calibration.

    Args:
        points: Measured (plan, prompt length, answer length) points, fit and holdout together.
        holdout: Fraction of the points left out of the fit to measure its error.
        repeats: Paired full/plan generations per point (forward passes interleaved; medians taken).
        prompt_tokens: Prompt length range (log-uniform), tokens.
        new_tokens: Answer length range (uniform), tokens; at least 2 (one decode step).
        adapters: Include plans with adapter layers (the model's own adapters, else fresh ones).
        per_point_load: Fit one load factor per point (see the module docstring).
        seed: Seed of the plans, lengths and prompt tokens.
    """

    points: int = 48
    holdout: float = 0.25
    repeats: int = 2
    prompt_tokens: tuple[int, int] = (8, 256)
    new_tokens: tuple[int, int] = (2, 24)
    adapters: bool = True
    per_point_load: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        require_at_least(self, 4, "points")
        require_in_range(self, 0, 1, "holdout", interval="[)")
        require_at_least(self, 1, "repeats")
        lo, hi = self.prompt_tokens
        if not 1 <= lo <= hi:
            raise ValueError(f"prompt_tokens must satisfy 1 <= low <= high, got {self.prompt_tokens}")
        lo, hi = self.new_tokens
        if not 2 <= lo <= hi:
            raise ValueError(
                f"new_tokens must satisfy 2 <= low <= high (at least one decode step), got {self.new_tokens}"
            )


def random_plan(
    lm: PrunableLM, kind: str, rng: np.random.Generator, adapters: dict[int, Any] | None = None
) -> PruningPlan:
    """A random plan of ``kind`` (:data:`PLAN_KINDS`): random layers, per-layer head / channel counts.

    Layer 0 is never removed (as in every action table). ``adapters`` gives the modules of
    ``"adapters"`` plans (default: the model's own).
    """
    g = lm.geometry
    L = g.num_layers
    if kind not in PLAN_KINDS:
        raise ValueError(f"plan kind must be one of {PLAN_KINDS}, got {kind!r}")

    def some_layers(k_max: int) -> list[int]:
        k = int(rng.integers(1, max(1, k_max) + 1))
        return sorted(int(i) for i in rng.choice(np.arange(1, L), size=min(k, L - 1), replace=False))

    def heads(layers: Sequence[int]) -> dict[int, int]:
        return {i: int(rng.integers(1, g.num_heads[i])) for i in layers if g.num_heads[i] > 1}

    def ffn(layers: Sequence[int]) -> dict[int, int]:
        return {i: int(rng.integers(max(1, g.intermediate_size[i] // 8), g.intermediate_size[i]))
                for i in layers}

    name = f"random-{kind}"
    if kind == "layers":
        return PruningPlan(skip=some_layers(max(1, L // 2)), name=name, geometry=g)
    if kind == "heads":
        return PruningPlan(heads=heads(some_layers(L)), name=name, geometry=g)
    if kind == "ffn":
        return PruningPlan(ffn=ffn(some_layers(L)), name=name, geometry=g)
    if kind == "mixed":
        skip = some_layers(max(1, L // 4))
        rest = [i for i in range(L) if i not in skip]
        sliced = [i for i in rest if rng.random() < 0.5]
        h = heads([i for i in sliced if rng.random() < 0.5])
        f = ffn([i for i in sliced if rng.random() < 0.5])
        return PruningPlan(skip=skip, heads=h, ffn=f, name=name, geometry=g)
    slots = adapters if adapters is not None else lm.adapters
    chosen = [i for i in some_layers(max(1, L // 4)) if i in slots]
    if not chosen:
        chosen = sorted(slots)[:1]
    return PruningPlan(adapters=chosen, modules={i: slots[i] for i in chosen}, name=name, geometry=g)


def _whole(lm: PrunableLM, plan: PruningPlan | None, ids: Sequence[int], new_tokens: int) -> tuple[float, float]:
    """One timed generation of exactly ``new_tokens`` tokens, alone: (prefill seconds, decode seconds)."""
    if plan is None:
        g = lm.generate(ids, new_tokens, ignore_eos=True)
    else:
        with lm.apply(plan):
            g = lm.generate(ids, new_tokens, ignore_eos=True)
    return g.prefill_s, g.decode_s


PROTOCOLS = ("paired", "whole")


def measure_point(
    lm: PrunableLM, plan: PruningPlan, prompt_tokens: int, new_tokens: int, repeats: int,
    rng: np.random.Generator, kind: str = "", full_shapes: PlanShapes | None = None, protocol: str = "paired",
) -> LatencyPoint:
    """Time ``plan`` and the full model on one random prompt of ``prompt_tokens`` tokens, ``repeats`` times.

    ``protocol="paired"`` (calibration): each repeat is one paired generation of ``new_tokens``
    tokens (``dynprune.paired_timing``: the two models' forward passes alternate, so both see
    the same load). ``"whole"``: each repeat times the two models' whole generations one after
    the other (the order alternates), as a deployment runs one model at a time. One short
    untimed run of the plan first keeps its first-call costs out.
    """
    from dynprune.paired_timing import paired_generate

    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    g = lm.geometry
    if prompt_tokens + new_tokens > g.max_position:
        raise ValueError(f"{prompt_tokens} + {new_tokens} tokens exceed the context {g.max_position}")
    # token values do not change the work; a fixed random prompt keeps the run reproducible
    ids = [lm.bos_id] + [int(t) for t in rng.integers(0, g.vocab_size, size=prompt_tokens - 1)]
    paired_generate(lm, plan, ids[: min(8, len(ids))], 2)
    if protocol == "whole":
        full_runs, plan_runs = [], []
        for r in range(repeats):
            if r % 2 == 0:
                full_runs.append(_whole(lm, None, ids, new_tokens))
                plan_runs.append(_whole(lm, plan, ids, new_tokens))
            else:
                plan_runs.append(_whole(lm, plan, ids, new_tokens))
                full_runs.append(_whole(lm, None, ids, new_tokens))
        return LatencyPoint(kind or plan.name, plan.to_dict(), full_shapes or plan_shapes(lm, PruningPlan()),
                            plan_shapes(lm, plan), prompt_tokens, new_tokens, tuple(full_runs), tuple(plan_runs))
    runs = [paired_generate(lm, plan, ids, new_tokens) for _ in range(repeats)]
    return LatencyPoint(
        kind=kind or plan.name,
        plan=plan.to_dict(),
        full=full_shapes or plan_shapes(lm, PruningPlan()),
        shapes=plan_shapes(lm, plan),
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        full_runs=tuple((r.full.prefill_s, r.full.decode_s) for r in runs),
        plan_runs=tuple((r.pruned.prefill_s, r.pruned.decode_s) for r in runs),
        full_steps=tuple(r.full_steps for r in runs),
        plan_steps=tuple(r.pruned_steps for r in runs),
    )


def sample_lengths(rng: np.random.Generator, prompt_tokens: tuple[int, int], new_tokens: tuple[int, int],
                   max_position: int) -> tuple[int, int]:
    """A prompt length (log-uniform) and an answer length (uniform) that fit the context."""
    lo, hi = prompt_tokens
    n = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    big_n = int(rng.integers(new_tokens[0], new_tokens[1] + 1))
    n = max(1, min(n, max_position - big_n))
    return n, big_n


def calibration_adapters(lm: PrunableLM) -> dict[int, Any]:
    """Adapters for the calibration's adapter plans: the model's own, else fresh ones (same shapes)."""
    if lm.adapters:
        return dict(lm.adapters)
    from dynprune.adapter_training import AdapterConfig, init_adapters

    return dict(init_adapters(lm, AdapterConfig()))


def measure_points(
    lm: PrunableLM, n_points: int, repeats: int, prompt_tokens: tuple[int, int], new_tokens: tuple[int, int],
    seed: int, kinds: Sequence[str] = PLAN_KINDS, progress: Callable[[str], None] | None = None,
) -> list[LatencyPoint]:
    """``n_points`` random points: plan kinds in turn, random lengths, each timed interleaved with the full model."""
    if lm.active_plan is not None:
        raise RuntimeError("measure latency points outside lm.apply(...)")
    rng = np.random.default_rng(seed)
    adapters = calibration_adapters(lm) if "adapters" in kinds else {}
    full = plan_shapes(lm, PruningPlan())
    lm.warmup()
    points = []
    t0 = time.perf_counter()
    for i in range(n_points):
        kind = kinds[i % len(kinds)]
        plan = random_plan(lm, kind, rng, adapters)
        n, big_n = sample_lengths(rng, prompt_tokens, new_tokens, lm.geometry.max_position)
        points.append(measure_point(lm, plan, n, big_n, repeats, rng, kind=kind, full_shapes=full))
        if progress is not None:
            el = time.perf_counter() - t0
            progress(f"latency calibration: point {i + 1}/{n_points} ({kind}, prompt {n}, answer {big_n}), "
                     f"{el:.0f} s, eta {el / (i + 1) * (n_points - i - 1):.0f} s")
    return points


def calibrate_latency(
    lm: PrunableLM, config: LatencyCalibration | None = None, progress: Callable[[str], None] | None = None
) -> tuple[LatencyModel, list[LatencyPoint]]:
    """Measure random points on ``lm``, fit on all but the holdout share, report the holdout error."""
    config = config or LatencyCalibration()
    kinds = PLAN_KINDS if config.adapters else tuple(k for k in PLAN_KINDS if k != "adapters")
    points = measure_points(lm, config.points, config.repeats, config.prompt_tokens, config.new_tokens,
                            config.seed, kinds=kinds, progress=progress)
    n_hold = int(round(config.holdout * len(points)))
    # a fixed interleaved split: every kind and length range lands on both sides
    hold_idx = set(np.random.default_rng(config.seed + 1).choice(len(points), size=n_hold, replace=False).tolist())
    fit_pts = [p for i, p in enumerate(points) if i not in hold_idx]
    held = [p for i, p in enumerate(points) if i in hold_idx]
    model = fit_latency_model(fit_pts, latency_key(lm), held, per_point_load=config.per_point_load,
                              settings=asdict(config))
    return model, points


# ----------------------------------------------------------------------------- cache


def latency_path(key: LatencyKey) -> Path:
    """Cache file of the latency model for ``key``."""
    from dynprune.models import cache_dir

    return cache_dir() / "latency" / f"{key.slug}.json"


def save_latency_model(model: LatencyModel, path: str | Path | None = None) -> Path:
    """Write ``model`` as JSON atomically (default: its cache file)."""
    return atomic_write_json(Path(path) if path else latency_path(model.key), model.to_dict())


def load_latency_model(path: str | Path, key: LatencyKey | None = None) -> LatencyModel:
    """Read a latency model; with ``key``, refuse one made for another model, device, dtype or thread count."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no latency model at {path}; fit one with: dynprune calibrate --latency")
    try:
        model = LatencyModel.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a latency model file: {e}") from e
    if key is not None and model.key != key:
        raise ValueError(f"{path} was fitted for {model.key}, not for {key}; refit with dynprune calibrate --latency")
    return model


_LOADED: dict[tuple[LatencyKey, str], LatencyModel] = {}


def load_or_calibrate_latency(
    lm: PrunableLM, config: LatencyCalibration | None = None, refit: bool = False,
    progress: Callable[[str], None] | None = None,
) -> LatencyModel:
    """The cached latency model of ``lm`` as it runs now; fitted (and cached) when missing or when ``refit``."""
    key = latency_key(lm)
    path = latency_path(key)
    memo = (key, str(path))
    if not refit:
        if memo in _LOADED:
            return _LOADED[memo]
        if path.is_file():
            try:
                model = load_latency_model(path, key)
                _LOADED[memo] = model
                return model
            except ValueError as e:
                log.warning("ignoring unusable latency model %s: %s", path, e)
    log.warning("fitting the latency model of %s (%s, %s, %d threads); cached in %s",
                key.model_id, key.device, key.dtype, key.threads, path)
    # a line per point: on a fresh machine the fit runs minutes before the job's own progress starts
    model, _ = calibrate_latency(lm, config, progress=progress or log.warning)
    save_latency_model(model, path)
    _LOADED[memo] = model
    return model
