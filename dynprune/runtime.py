"""Evaluate pruning plans on prompts, cheaply and honestly.

:class:`PlanEvaluator` is the engine behind every environment step, the oracle
and exploration. Its cost model:

- The full model's answer to a prompt does not depend on the agent: it is
  generated once per (prompt, generation settings) and cached (memory, and
  optionally a JSON-lines file) with the prompt's features.
- ``timing="modelled"`` (the default for training and sweeps): no generation and no
  clock. Quality from one teacher-forced pass of the pruned model over prompt + full
  answer, memoised exactly (:mod:`dynprune.quality_memo`: one pass per (model, adapters,
  prompt, plan, settings), ever); speed from the calibrated latency model
  (:mod:`dynprune.latency_model`) of this model, device, dtype and thread count, for the
  full model and the plan at this prompt's and answer's lengths. Deterministic for a given
  (prompt, plan); a repeated step is two dictionary lookups.
- ``timing="live"`` (evaluation): the plan and the full model generate the same ``n``
  tokens side by side, forward passes interleaved (:mod:`dynprune.paired_timing`), so the
  speed-up compares timings taken under the same load (a baseline timed at the prompt's
  first visit compared two loads as much as two models); decode steps enter as the median
  ratio of adjacent steps (``PairedRun.speedup``), so a load burst that hits one pass of a
  pair does not move the total; perplexity from the memoised teacher-forced pass.
- ``timing="profiled"``: no generation. Quality comes from one teacher-forced
  pass of the pruned model over prompt + full answer (argmax agreement and
  perplexity); speed from a :class:`LatencyProfile` per (plan, prompt-length
  bucket), measured live the first time (equal-work generations of the full and
  pruned model, interleaved), refined on its next uses until ``min_rounds`` rounds
  are pooled (one round is a few runs under one moment's load: its error is a fixed
  bias for every later use of the cell), and re-measured every ``refresh_steps``
  uses or when the CPU load moved by more than ``refresh_cpu_delta``.

Speed-ups compare equal work: the full model's greedy answer has ``n`` tokens (its
EOS included); a pruned model is timed generating exactly ``n`` tokens after the
same prompt (decoding runs on past an EOS, and its answer is the part up to its
first EOS), and ``speedup = T_full(n) / T_pruned(n) - 1``. A pruned model that stops
early or rambles on is neither rewarded nor punished for its answer's length; its
quality is (fidelity is position-wise agreement with the full answer, a missing or
extra token counting as a mismatch). Profiled mode predicts ``T(n)`` from the
profile's prefill and per-token decode times; modelled mode from the latency model.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from dynprune.fncall import score_calls
from dynprune.latency_model import LatencyModel, load_latency_model, load_or_calibrate_latency, plan_shapes
from dynprune.metrics import fidelity, task_score
from dynprune.models import PrunableLM
from dynprune.paired_timing import paired_generate
from dynprune.plan import NO_PRUNING, PruningPlan
from dynprune.pruning.kv import kv_bytes
from dynprune.quality_memo import QualityMemo, quality_key
from dynprune.types import (
    Baseline,
    Evaluation,
    GenerationResult,
    PlanShapes,
    Prompt,
    PromptFeatures,
    QualityMetrics,
)

log = logging.getLogger(__name__)

TIMINGS = ("modelled", "live", "profiled")
"""Timing modes: ``modelled`` (training, sweeps), ``live`` (evaluation), ``profiled`` (the older live profile)."""
DEFAULT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


def prompt_task_score(prompt: Prompt, text: str) -> float | None:
    """Ground-truth score of an answer: gold answer contained, or function-call ratio; None without truth."""
    if prompt.ground_truth:
        return score_calls(text, list(prompt.ground_truth)).call_ratio
    return task_score(text, prompt.answer)


def teacher_forced_prefix(argmax_ids: Sequence[int], answer_ids: Sequence[int]) -> float:
    """Common prefix of teacher-forced argmaxes and the answer, over the answer's length.

    Equals the live ``prefix_agreement`` of a greedy generation: the model reproduces the
    answer's first j tokens exactly when its argmax after each of those prefixes is the next one.
    """
    n = 0
    for a, b in zip(argmax_ids, answer_ids, strict=False):
        if a != b:
            break
        n += 1
    return n / len(answer_ids) if answer_ids else 1.0


@dataclass
class ProfileCell:
    """Prefill and per-token decode times of the full and pruned model for one (plan, length bucket).

    ``samples`` holds every timed run pooled so far; the four times are their medians.
    """

    samples: list[tuple[float, float, float, float]]
    """every run pooled so far: (full prefill, full per-token, pruned prefill, pruned per-token) seconds"""
    uses: int = 0
    cpu_util: float | None = None
    measured_at: float = field(default_factory=time.time)
    rounds: int = 1

    def _median(self, i: int) -> float:
        return statistics.median(s[i] for s in self.samples)

    @property
    def full_prefill_s(self) -> float:
        return self._median(0)

    @property
    def full_per_token_s(self) -> float:
        return self._median(1)

    @property
    def pruned_prefill_s(self) -> float:
        return self._median(2)

    @property
    def pruned_per_token_s(self) -> float:
        return self._median(3)

    def pool(self, other: ProfileCell) -> None:
        """Add another measurement round's runs."""
        self.samples.extend(other.samples)
        self.rounds += other.rounds

    def speedup(self, n: int) -> float:
        """``T_full(n) / T_pruned(n) - 1`` for an answer of ``n`` tokens."""
        full = self.full_prefill_s + max(0, n - 1) * self.full_per_token_s
        pruned = self.pruned_prefill_s + max(0, n - 1) * self.pruned_per_token_s
        return full / pruned - 1.0


@dataclass(frozen=True)
class ProfileConfig:
    """Settings of the latency profile.

    Args:
        new_tokens: Tokens generated per timing run (equal work for every plan).
        repeats: Interleaved full/pruned runs per measurement (median taken).
        min_rounds: Measurement rounds pooled per cell: a new cell is measured again on each of
            its next uses until it has this many (spread over time, so one moment's load does not
            bias every later use), then trusted until it is refreshed.
        refresh_steps: Re-measure a cell after this many uses.
        refresh_cpu_delta: Re-measure when CPU utilisation moved more than this since the measurement.
        buckets: Prompt-length bucket upper edges, in tokens.
    """

    new_tokens: int = 16
    repeats: int = 2
    min_rounds: int = 3
    refresh_steps: int = 500
    refresh_cpu_delta: float = 0.25
    buckets: tuple[int, ...] = DEFAULT_BUCKETS

    def __post_init__(self) -> None:
        if self.new_tokens < 1:
            raise ValueError(f"new_tokens must be >= 1, got {self.new_tokens}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.min_rounds < 1:
            raise ValueError(f"min_rounds must be >= 1, got {self.min_rounds}")
        if self.refresh_steps < 1:
            raise ValueError(f"refresh_steps must be >= 1, got {self.refresh_steps}")
        if list(self.buckets) != sorted(set(self.buckets)) or not self.buckets:
            raise ValueError(f"buckets must be increasing and non-empty, got {self.buckets}")


class LatencyProfile:
    """Latency ratios per (plan, prompt-length bucket), measured live and refreshed."""

    def __init__(self, lm: PrunableLM, config: ProfileConfig | None = None) -> None:
        self.lm = lm
        self.config = config or ProfileConfig()
        self.cells: dict[tuple[PruningPlan, int], ProfileCell] = {}
        self.measurements = 0

    def bucket(self, n_tokens: int) -> int:
        """Upper edge of the bucket holding a prompt of ``n_tokens`` tokens."""
        for edge in self.config.buckets:
            if n_tokens <= edge:
                return edge
        return self.config.buckets[-1]

    def _measure(self, plan: PruningPlan, prompt_ids: tuple[int, ...], cpu_util: float | None) -> ProfileCell:
        cfg, lm = self.config, self.lm
        n = max(2, cfg.new_tokens)
        full, pruned = [], []
        for _ in range(cfg.repeats):  # interleave so drift hits both alike
            full.append(lm.generate(prompt_ids, n, ignore_eos=True))
            with lm.apply(plan):
                pruned.append(lm.generate(prompt_ids, n, ignore_eos=True))
        self.measurements += 1
        return ProfileCell(
            samples=[
                (f.prefill_s, f.per_token_s, p.prefill_s, p.per_token_s) for f, p in zip(full, pruned, strict=True)
            ],
            cpu_util=cpu_util,
        )

    def cell(self, plan: PruningPlan, prompt_ids: tuple[int, ...], cpu_util: float | None = None) -> ProfileCell:
        """The cell for ``plan`` at this prompt's length; measured now if missing or stale."""
        key = (plan, self.bucket(len(prompt_ids)))
        cell = self.cells.get(key)
        stale = cell is not None and (
            cell.uses >= self.config.refresh_steps
            or (
                cpu_util is not None
                and cell.cpu_util is not None
                and abs(cpu_util - cell.cpu_util) > self.config.refresh_cpu_delta
            )
        )
        if cell is None or stale:
            cell = self._measure(plan, prompt_ids, cpu_util)
            self.cells[key] = cell
        elif cell.rounds < self.config.min_rounds:
            cell.pool(self._measure(plan, prompt_ids, cpu_util))
        cell.uses += 1
        return cell


def _estimated(
    timing: str, speedup: float, latency_s: float, n: int, q: QualityMetrics, kept: float, t0: float
) -> Evaluation:
    """The evaluation of a plan whose speed is estimated (``"modelled"`` or ``"profiled"``) and whose quality
    is the memoised teacher-forced one ``q``; ``n`` answer tokens; ``t0`` when the evaluation started."""
    return Evaluation(
        timing=timing,
        speedup=speedup,
        latency_s=latency_s,
        tokens_per_s=n / latency_s,
        ppl=q.ppl,
        token_agreement=q.token_agreement,
        exact_match=q.exact_match,
        task_score=q.task_score,
        text=None,
        kept_fraction=kept,
        seconds=time.perf_counter() - t0,
        prefix_fidelity=q.prefix_fidelity,
    )


class PlanEvaluator:
    """Measures plans on prompts for one model and generation setting.

    Args:
        lm: The model.
        max_new_tokens: Answer length limit for the full model and live generations.
        profile: Latency-profile settings for ``timing="profiled"``.
        cache_file: Optional JSON-lines file caching baselines across runs (appended,
            one line per prompt, so a crash keeps every finished line).
        memo: The quality memo: a :class:`QualityMemo`, a file for one, or None (memory only).
        latency_model: For ``timing="modelled"``: a :class:`LatencyModel` or its JSON file;
            None loads the cached one of this model, device, dtype and thread count (fitted
            on first use, ``dynprune calibrate --latency``).
    """

    def __init__(
        self,
        lm: PrunableLM,
        max_new_tokens: int = 32,
        profile: ProfileConfig | None = None,
        cache_file: str | Path | None = None,
        memo: QualityMemo | str | Path | None = None,
        latency_model: LatencyModel | str | Path | None = None,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.lm = lm
        self.max_new_tokens = max_new_tokens
        self.profile = LatencyProfile(lm, profile)
        self.memo = memo if isinstance(memo, QualityMemo) else QualityMemo(memo)
        self._latency_model = (
            load_latency_model(latency_model) if isinstance(latency_model, (str, Path)) else latency_model
        )
        self._shapes: dict[PruningPlan, PlanShapes] = {}
        self._kept: dict[PruningPlan, float] = {}
        self._modelled_s: dict[tuple[PruningPlan, int, int], float] = {}
        # (baseline key, plan) -> metrics: the in-process fast path in front of the memo's content key
        self._quality: dict[tuple[str, PruningPlan, str | None], QualityMetrics] = {}
        self.forward_passes = 0  # teacher-forced passes run (memo misses)
        self._baselines: dict[str, Baseline] = {}
        self.cache_file = Path(cache_file) if cache_file else None
        self.baseline_seconds = 0.0  # time spent on full-model work (cache misses)
        self.cache_hits = 0
        self._warm = False
        if self.cache_file and self.cache_file.is_file():
            self._load_cache()

    # ---------------------------------------------------------------- caching
    def _key(self, prompt: Prompt) -> str:
        return f"v4|{self.lm.model_id}|{self.max_new_tokens}|{prompt.text}"

    def _load_cache(self) -> None:
        assert self.cache_file is not None
        lines = self.cache_file.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                f = row["baseline"]
                f["features"] = PromptFeatures(**f["features"])
                f["prompt_ids"], f["answer_ids"] = tuple(f["prompt_ids"]), tuple(f["answer_ids"])
                self._baselines[row["key"]] = Baseline(**f)
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                if n == len(lines):  # a crash mid-write leaves at most the last line truncated
                    log.warning("%s:%d: ignoring truncated last line", self.cache_file, n)
                    continue
                raise ValueError(f"{self.cache_file}:{n}: malformed baseline cache line: {e}") from e

    def _append_cache(self, key: str, baseline: Baseline) -> None:
        assert self.cache_file is not None
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.cache_file, "a") as fh:
            fh.write(json.dumps({"key": key, "baseline": asdict(baseline)}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def warmup(self) -> None:
        """One short generation so the first timed one excludes first-call costs."""
        if not self._warm:
            self.lm.warmup()
            self._warm = True

    def _answer(
        self, ids: tuple[int, ...], n: int | None = None
    ) -> tuple[GenerationResult, tuple[int, ...], str]:
        """One timed generation and the greedy answer in it.

        Without ``n`` (the full model): greedy decoding up to EOS or ``max_new_tokens``.
        With ``n`` (a pruned model): exactly ``n`` tokens, EOS or not, so its timing covers
        the same work as the full model's answer of ``n`` tokens; its answer is the part up
        to and including its first EOS. Returns the generation, the answer ids (with the
        EOS when the model stopped) and the answer text.
        """
        if n is None:
            gen = self.lm.generate(ids, self.max_new_tokens)
            out = gen.output_ids
            stopped = gen.produced > len(out)
            eos = min(self.lm.eos_ids) if self.lm.eos_ids else self.lm.bos_id
            return gen, (*out, eos) if stopped else out, gen.text
        gen = self.lm.generate(ids, n, ignore_eos=True)
        answer, text = self._until_eos(gen.output_ids)
        return gen, answer, text

    def _until_eos(self, out: tuple[int, ...]) -> tuple[tuple[int, ...], str]:
        """The answer inside a generation that ran past EOS: tokens up to and including the first EOS."""
        cut = next((i for i, t in enumerate(out) if t in self.lm.eos_ids), None)
        tokens = out if cut is None else out[:cut]
        answer = tokens if cut is None else (*tokens, out[cut])
        return answer, self.lm.decode_ids(tokens)

    def baseline(self, prompt: Prompt) -> Baseline:
        """The full model's answer and metrics for ``prompt`` (computed once, then cached)."""
        key = self._key(prompt)
        hit = self._baselines.get(key)
        if hit is not None:
            self.cache_hits += 1
            return hit
        t0 = time.perf_counter()
        self.warmup()
        lm = self.lm
        features = lm.prompt_features(prompt.text)
        ids = tuple(lm.encode_prompt(prompt.text, max_new_tokens=self.max_new_tokens))
        gen, answer, text = self._answer(ids)
        score = lm.score(ids, answer)
        base = Baseline(
            prompt_ids=ids,
            answer_ids=answer,
            text=text,
            latency_s=gen.latency_s,
            tokens_per_s=gen.tokens_per_s,
            prefill_s=gen.prefill_s,
            per_token_s=gen.per_token_s or 0.0,
            ppl=score.perplexity,
            task_score=prompt_task_score(prompt, text),
            features=features,
        )
        self._baselines[key] = base
        if self.cache_file:
            self._append_cache(key, base)
        self.baseline_seconds += time.perf_counter() - t0
        return base

    def retime_baseline(self, prompt: Prompt) -> Baseline:
        """Time the full model on ``prompt`` again (same work), so live ratios use a fresh baseline."""
        base = self.baseline(prompt)
        t0 = time.perf_counter()
        gen = self.lm.generate(base.prompt_ids, len(base.answer_ids), ignore_eos=True)
        base = replace(base, latency_s=gen.latency_s, tokens_per_s=gen.tokens_per_s,
                       prefill_s=gen.prefill_s, per_token_s=gen.per_token_s or 0.0)
        self._baselines[self._key(prompt)] = base
        self.baseline_seconds += time.perf_counter() - t0
        return base

    # ------------------------------------------------------------ modelled parts
    @property
    def latency_model(self) -> LatencyModel:
        """The latency model of ``timing="modelled"`` (the cached fit of this model, loaded on first use)."""
        if self._latency_model is None:
            self._latency_model = load_or_calibrate_latency(self.lm)
        return self._latency_model

    def shapes(self, plan: PruningPlan) -> PlanShapes:
        """What ``plan`` leaves of the model (cached per plan)."""
        hit = self._shapes.get(plan)
        if hit is None:
            hit = self._shapes[plan] = plan_shapes(self.lm, plan)
        return hit

    def _kept_fraction(self, plan: PruningPlan) -> float:
        hit = self._kept.get(plan)
        if hit is None:
            hit = self._kept[plan] = plan.kept_fraction(self.lm.geometry)
        return hit

    def modelled_latency_s(self, plan: PruningPlan, base: Baseline) -> float:
        """The latency model's seconds for ``plan`` generating the full answer's length after the prompt."""
        key = (plan, len(base.prompt_ids), len(base.answer_ids))
        hit = self._modelled_s.get(key)
        if hit is None:
            # The latency model has no KV-window terms: it was fitted on full caches, and windows do not
            # follow its context terms (SmolLM2-135M, 1 CPU thread, ~550-token prompts: decode steps
            # 0-5 % faster, prefill 0-50 % slower in masked chunks; benchmarks/results/kv_cache.json),
            # so a window's modelled latency is that of its plan without the window: latency-neutral.
            timed = replace(plan, kv=None) if plan.kv is not None else plan
            hit = self.latency_model.latency_s(self.shapes(timed), key[1], key[2])
            self._modelled_s[key] = hit
        return hit

    def kv_bytes(self, plan: PruningPlan, base: Baseline) -> int:
        """KV-cache bytes ``plan`` holds at its peak on this prompt and answer (the last token's pass)."""
        fed = len(base.prompt_ids) + max(0, len(base.answer_ids) - 1)  # the last answer token is never fed
        return kv_bytes(self.shapes(plan).kv_width, fed, self.lm.dtype.itemsize, plan.kv)

    def quality(self, prompt: Prompt, plan: PruningPlan, base: Baseline | None = None) -> QualityMetrics:
        """Teacher-forced quality of ``plan`` on ``prompt``: from the memo, else one forward pass (then memoised)."""
        base = base or self.baseline(prompt)
        fast = (self._key(prompt), plan, self.lm.healing_label(plan))  # healing attached later: another entry
        hit = None if plan.adapters else self._quality.get(fast)  # adapters may be retrained: key by content
        if hit is not None:
            return hit
        key = quality_key(self.lm, plan, base.prompt_ids, base.answer_ids, self.max_new_tokens)
        hit = self.memo.get(key)
        if hit is None:
            with self.lm.apply(plan):
                score = self.lm.score(base.prompt_ids, base.answer_ids)
            self.forward_passes += 1
            exact = score.agreement == 1.0
            hit = QualityMetrics(
                ppl=score.perplexity,
                token_agreement=score.agreement,
                exact_match=float(exact),
                prefix_fidelity=teacher_forced_prefix(score.argmax_ids, base.answer_ids),
                # every argmax agrees: the pruned greedy answer is the full one, and so is its task score
                task_score=base.task_score if exact else None,
            )
            self.memo.put(key, hit)
        if not plan.adapters:
            self._quality[fast] = hit
        return hit

    # ------------------------------------------------------------- evaluation
    def evaluate(
        self, prompt: Prompt, plan: PruningPlan, timing: str = "modelled", cpu_util: float | None = None,
        *, baseline: Baseline | None = None,
    ) -> Evaluation:
        """Measure ``plan`` on ``prompt``; the empty plan is the full model by definition (speed-up 0).

        Every timing also gives the KV-cache bytes of the plan and of the full model (counted from
        shapes, the same in every timing). ``baseline`` is ``self.baseline(prompt)`` when the caller
        holds it already (an env step reads it once for the evaluation, the reward and the record).
        """
        if timing not in TIMINGS:
            raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")
        base = self.baseline(prompt) if baseline is None else baseline
        ev = self._evaluate(prompt, plan, timing, cpu_util, base)
        return replace(ev, kv_bytes=self.kv_bytes(plan, base), full_kv_bytes=self.kv_bytes(NO_PRUNING, base))

    def _evaluate(
        self, prompt: Prompt, plan: PruningPlan, timing: str, cpu_util: float | None, base: Baseline
    ) -> Evaluation:
        t0 = time.perf_counter()
        kept = self._kept_fraction(plan)
        n = len(base.answer_ids)
        if plan.is_empty:
            latency = self.modelled_latency_s(NO_PRUNING, base) if timing == "modelled" else base.latency_s
            return Evaluation(
                timing=timing,
                speedup=0.0,
                latency_s=latency,
                tokens_per_s=n / latency,
                ppl=base.ppl,
                token_agreement=1.0,
                exact_match=1.0,
                task_score=base.task_score,
                text=base.text if timing == "live" else None,
                kept_fraction=kept,
                seconds=time.perf_counter() - t0,
                prefix_fidelity=1.0,
            )
        if timing == "modelled":
            q = self.quality(prompt, plan, base)
            full_s = self.modelled_latency_s(NO_PRUNING, base)
            plan_s = self.modelled_latency_s(plan, base)
            return _estimated("modelled", full_s / plan_s - 1.0, plan_s, n, q, kept, t0)
        if timing == "live":
            # the full model is timed beside the plan (forward passes interleaved): one load, two models
            run = paired_generate(self.lm, plan, base.prompt_ids, n)
            answer, text = self._until_eos(run.pruned.output_ids)
            fid = fidelity(answer, base.answer_ids)
            q = self.quality(prompt, plan, base)
            return Evaluation(
                timing="live",
                speedup=run.speedup,
                latency_s=run.pruned_latency_s,
                tokens_per_s=n / run.pruned_latency_s,
                ppl=q.ppl,
                token_agreement=fid.token_agreement,
                exact_match=fid.exact_match,
                task_score=prompt_task_score(prompt, text) if base.task_score is not None else None,
                text=text,
                kept_fraction=kept,
                seconds=time.perf_counter() - t0,
                prefix_fidelity=fid.prefix_agreement,
            )
        cell = self.profile.cell(plan, base.prompt_ids, cpu_util)
        q = self.quality(prompt, plan, base)
        speedup = cell.speedup(n)
        return _estimated("profiled", speedup, base.latency_s / (1.0 + speedup), n, q, kept, t0)
