"""The suite on a GPU: does dynamic pruning pay on real-size models, and what does it cost?

Random-initialised models of real configurations (latency depends on shapes, not on weight
values), built in code from ``transformers`` config objects (no hub): SmolLM2-135M (the embedded
model), Qwen2.5-0.5B, Llama-3.2-1B (CASRAP's model) and Llama-3.1-8B, in bf16. One run measures,
each part after a warm-up and with CUDA events (``time.perf_counter`` on a CPU):

- ``ceilings``: the card's bf16 matmul rate and device-to-device copy bandwidth (context for the rest).
- ``models``, per model: (a) apply + restore per kind of op (host time: a swap launches no GPU
  work) and the cold build of head / FFN slices with the VRAM those cached slices hold; (b) greedy
  generation of ``new_tokens`` tokens after ``prompt_tokens`` random tokens at batch 1 and batch 8
  under: the full model, skipping k layers (lowest block influence first), slicing query heads
  (group-uniform, and ragged: one head more in one KV group, which takes the gather path of
  ``dynprune_gqa``) and slicing FFN channels; plans interleaved, order rotated each repeat;
  speed-up = within-repeat ratio full / plan (median, min, max), beside the parameter-count bound
  (``benchmarks.utils.work_model`` applied to the plan's kept matmul parameters), for the
  whole generation, its prefill and its decode; (c) peak VRAM of each plan's run.
- ``sparsity``: 2:4 semi-structured sparsity (``torch.sparse.to_sparse_semi_structured``) on the
  FFN matrices of Llama-3.2-1B and Llama-3.1-8B against the dense product, per token count.
- ``env``: DynPrune-v0 steps/s with ``timing="live"`` and ``"profiled"``, NVML telemetry in the
  observation (``telemetry="live"``), and the cost of one telemetry snapshot.
- ``latency``: the latency model (``dynprune.latency_model``, "A reward that carries signal"), fitted
  on the GPU for the env's model: its error on held-out measured points (skipped if not installed).
- ``nf4``: 4-bit NF4 (bitsandbytes, ``dynprune.compress.quantize.quantize_nf4``) against bf16 on
  Llama-3.2-1B: weights in VRAM, generation speed full and with L/4 layers skipped, logits error,
  and whether head / FFN slicing applies to a quantised model.
- ``graphs``: a CUDA graph of one decode step (static KV cache) captured per plan: capture time,
  replay vs eager step, and the graph's memory.
- ``compile``: ``torch.compile`` of the teacher-forced forward (the profiled env step) while the
  plan changes between calls: graphs compiled per plan change, time of each first call, whether a
  plan seen before reuses its graph, compiled vs eager time, and compiled logits vs eager. Last,
  because its compile times are the least predictable.

Parts run in that order, each only while the time budget (``--budget-s``) leaves at least its
minimum; a part skipped for time or failing is recorded as such (with the error), never dropped,
and the JSON is rewritten after every part, so a run cut short keeps what it measured.

Run:
    python -m benchmarks.gpu --device cuda                     # the four models, within --budget-s (400 s)
    bash scripts/device_run.sh                                 # the same on the lent GPU machine
    python -m benchmarks.gpu --smoke --device cpu --out /tmp/gpu.json   # tiny configs, seconds
    python -m benchmarks.gpu --from-json a.json,b.json --out m.json     # merge runs that each skipped parts

Writes ``benchmarks/results/gpu_<device>.json`` (``<device>`` from the GPU's name, e.g.
``nvidia-h200``) and a PNG beside it.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import re
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness
from benchmarks.utils import (
    Bottleneck,
    param_counts,
    parse_ks,
    summary,
    time_apply_restore,
    time_cold_build,
    work_model,
)
from dynprune.generation import forward_with_cache
from dynprune.models import PrunableLM, byte_tokenizer, resolve_device, resolve_dtype
from dynprune.plan import PruningPlan
from dynprune.selection import layers_plan
from dynprune.types import ModelGeometry
from dynprune.validation import require_in_range, require_positive

PARTS = ("ceilings", "models", "sparsity", "env", "latency", "nf4", "graphs", "compile")
CUDA_ONLY = ("ceilings", "sparsity", "nf4", "graphs")
GIB = float(1 << 30)
MIB = float(1 << 20)


@dataclass(frozen=True)
class Architecture:
    """The shapes of a real model, enough to build a random-initialised copy of it."""

    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    tied: bool
    context: int
    source: str

    def __post_init__(self) -> None:
        if self.heads % self.kv_heads:
            raise ValueError(f"{self.heads} query heads do not split into {self.kv_heads} KV groups")
        if self.model_type not in ("llama", "qwen2"):
            raise ValueError(f"model_type must be 'llama' or 'qwen2', got {self.model_type!r}")

    def hf_config(self, bos: int, eos: int, pad: int) -> Any:
        """The ``transformers`` config object. Rotary settings stay at their defaults: they change no shape."""
        from transformers import AutoConfig

        shapes = dict(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.ffn,
                      num_hidden_layers=self.layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
                      head_dim=self.head_dim, max_position_embeddings=self.context, tie_word_embeddings=self.tied)
        return AutoConfig.for_model(self.model_type, **shapes, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                                    attn_implementation="sdpa")


# Shapes from each model's published config.json (the source field names it).
ARCHITECTURES: dict[str, Architecture] = {
    "smollm2-135m": Architecture("llama", 30, 576, 9, 3, 64, 1536, 49152, True, 8192,
                                 "HuggingFaceTB/SmolLM2-135M-Instruct (the embedded model)"),
    "qwen2.5-0.5b": Architecture("qwen2", 24, 896, 14, 2, 64, 4864, 151936, True, 32768, "Qwen/Qwen2.5-0.5B"),
    "llama-3.2-1b": Architecture("llama", 16, 2048, 32, 8, 64, 8192, 128256, True, 131072,
                                 "meta-llama/Llama-3.2-1B (CASRAP's model)"),
    "llama-3.1-8b": Architecture("llama", 32, 4096, 32, 8, 128, 14336, 128256, False, 131072,
                                 "meta-llama/Llama-3.1-8B"),
    # --smoke: the same two families, tiny
    "tiny-llama-config": Architecture("llama", 4, 64, 8, 2, 8, 128, 512, True, 2048, "tiny (smoke)"),
    "tiny-qwen2-config": Architecture("qwen2", 4, 64, 4, 2, 16, 160, 512, True, 2048, "tiny (smoke)"),
}
REAL_MODELS = "smollm2-135m,qwen2.5-0.5b,llama-3.2-1b,llama-3.1-8b"
SMOKE_MODELS = "tiny-llama-config,tiny-qwen2-config"

# Least time a part needs to be started (seconds left in the budget), from the H200 runs of 2026-11-30
# (benchmarks/results/gpu_nvidia-h200_run*.json): eager decode there is host-bound, 15-35 ms per token
# for every model; the first inductor compile of SmolLM2 took 41 s.
PART_MIN_S = {"ceilings": 5, "sparsity": 10, "env": 60, "latency": 45, "nf4": 35, "compile": 70, "graphs": 10}
MODEL_MIN_S = {"llama-3.1-8b": 90.0}
MODEL_MIN_DEFAULT_S = 45.0


@dataclass
class Args(harness.Args):
    """The suite on a GPU: pruning speed-ups, costs, VRAM, env steps/s, torch.compile, 2:4 and NF4.

    ``--seed`` seeds the random weights and prompts; ``--model`` is unused (the models are ``--models``)."""

    models: str = "auto"
    """comma-separated architecture names (see ARCHITECTURES), or auto: the four real ones on CUDA"""
    parts: str = "all"
    """comma-separated parts to run (ceilings, models, sparsity, env, latency, nf4, graphs, compile) or all"""
    budget_s: float = 400.0
    """time budget of the whole run in seconds; a part starts only if enough of it is left"""
    prompt_tokens: int = 128
    """prompt length of the timed generations (random token ids)"""
    new_tokens: int = 16
    """tokens generated per timed run (greedy, exactly this many)"""
    batches: str = "1,8"
    """batch sizes of the timed generations"""
    repeats: int = 3
    """interleaved timed repeats per plan and batch size (after one untimed warm-up run each)"""
    ks: str = "1,L/8,L/4,L/2"
    """layers skipped: integers or fractions of L (L/8, 3L/8 ...)"""
    head_fraction: float = 0.25
    """share of each KV group's query heads removed by the head plans (rounded to whole heads, at least 1)"""
    ffn_fractions: str = "0.25,0.5"
    """shares of FFN channels removed by the FFN plans (kept count rounded down to a multiple of 64)"""
    apply_repeats: int = 200
    """timed apply + restore cycles per kind of op"""
    cold_repeats: int = 3
    """cold builds of the head / FFN slices of a plan"""
    calib_prompts: int = 16
    """calibration windows (x 128 tokens) for block influence and channel importance"""
    env_model: str = "smollm2-135m"
    """architecture of the env part"""
    env_steps: int = 24
    """env steps per timing mode"""
    env_actions: str = "none,heads-10%,layers-25%,ffn-25%"
    """action-table entries the env steps draw from (a few, so the caches warm within the run)"""
    env_prompts: int = 4
    """distinct test prompts the env steps cycle over (so its caches warm up)"""
    env_new_tokens: int = 32
    """answer length in the env"""
    latency_points: int = 16
    """measured points of the latency-model part (a quarter held out to measure its error)"""
    compile_model: str = "smollm2-135m"
    """architecture of the torch.compile and CUDA-graph parts"""
    compile_backend: str = "inductor"
    """torch.compile backend (inductor; eager counts recompiles only)"""
    compile_plans: str = "full,skip,full,ffn,heads"
    """plan sequence of the compile part: full, skip (L/4 layers), ffn (the first FFN share), heads (group-uniform)"""
    nf4_model: str = "llama-3.2-1b"
    """architecture of the NF4 part"""
    sparse_tokens: str = "1,8,128,1024,4096"
    """token counts (rows of the activation) of the 2:4 matmul timings"""
    from_json: str = ""
    """comma-separated result files to merge instead of measuring (later files fill the models and parts
    that earlier ones skipped); writes the merged JSON to --out and its PNG"""
    out: str = "benchmarks/results/gpu_{device}.json"
    """JSON file to write ({device} becomes the GPU's name); the PNG goes beside it"""

    SMOKE = {"env_model": "tiny-llama-config", "compile_model": "tiny-llama-config", "nf4_model": "tiny-llama-config",
             "prompt_tokens": 12, "new_tokens": 4, "batches": "1,2", "repeats": 2, "apply_repeats": 10,
             "cold_repeats": 1, "calib_prompts": 4, "env_steps": 4, "env_prompts": 2, "env_new_tokens": 4,
             "latency_points": 8, "compile_backend": "eager", "compile_plans": "full,skip,full", "sparse_tokens": "8"}
    POSITIVE = ("prompt_tokens", "new_tokens", "repeats", "apply_repeats", "cold_repeats", "calib_prompts", "env_steps",
                "env_prompts", "env_new_tokens", "latency_points")
    SMOKE_TO_TEMP = True

    def __post_init__(self) -> None:
        if self.smoke and self.models == "auto":  # --smoke: tiny configs (other --models are kept)
            self.models = SMOKE_MODELS
        super().__post_init__()
        self.out = self.out.replace("{device}", device_slug(resolve_device(self.device)))
        if self.new_tokens < 2:
            raise ValueError(f"new_tokens must be >= 2 (a prefill and at least one decode step), got {self.new_tokens}")
        require_in_range(self, 0.0, 1.0, "head_fraction", interval="()")
        require_positive(self, "budget_s")
        names = [*self.model_names(), self.env_model, self.compile_model, self.nf4_model]
        unknown = sorted({n for n in names if n not in ARCHITECTURES})
        if unknown:
            raise ValueError(f"unknown architecture(s) {unknown}; expected names from {sorted(ARCHITECTURES)}")
        bad = sorted(set(self.part_names()) - set(PARTS))
        if bad:
            raise ValueError(f"unknown part(s) {bad}; expected some of {list(PARTS)} or all")
        steps = [s.strip() for s in self.compile_plans.split(",") if s.strip()]
        if not steps or not set(steps) <= {"full", "skip", "ffn", "heads"}:
            raise ValueError(f"compile_plans must name full, skip, ffn or heads, got {self.compile_plans!r}")
        self.batch_sizes()
        self.ffn_shares()

    def model_names(self) -> list[str]:
        """The architectures of the ``models`` part (``auto`` resolves to the real four)."""
        text = REAL_MODELS if self.models == "auto" else self.models
        return [m.strip() for m in text.split(",") if m.strip()]

    def part_names(self) -> list[str]:
        """The parts asked for, in run order."""
        if self.parts == "all":
            return list(PARTS)
        asked = {p.strip() for p in self.parts.split(",") if p.strip()}
        return [p for p in PARTS if p in asked] + sorted(asked - set(PARTS))

    def batch_sizes(self) -> list[int]:
        """The batch sizes, each >= 1."""
        sizes = [int(b) for b in self.batches.split(",") if b.strip()]
        if not sizes or min(sizes) < 1:
            raise ValueError(f"batches must be positive integers, got {self.batches!r}")
        return sizes

    def ffn_shares(self) -> list[float]:
        """The FFN shares removed, each in (0, 1)."""
        shares = [float(f) for f in self.ffn_fractions.split(",") if f.strip()]
        if not shares or not all(0.0 < f < 1.0 for f in shares):
            raise ValueError(f"ffn_fractions must be in (0, 1), got {self.ffn_fractions!r}")
        return shares


# ----------------------------------------------------------------------------- clocks and budget


class Budget:
    """Seconds since the start against the run's budget."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def allows(self, need_s: float) -> bool:
        """True when at least ``need_s`` seconds of the budget are left."""
        return self.elapsed() + need_s <= self.limit_s

    def skipped(self, need_s: float) -> dict[str, Any]:
        return {"skipped": f"over the time budget: {self.elapsed():.0f} s of {self.limit_s:.0f} s used, "
                           f"needs about {need_s:.0f} s"}


class Clock:
    """Marks on a timeline: CUDA events on the current stream, else ``perf_counter``.

    ``seconds()`` waits for the last mark and returns the time between consecutive marks, so on a
    GPU it covers the kernels (and any gap while the host was still launching them).
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:], strict=False)]
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls, each timed alone."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        clock = Clock(device)
        clock.mark()
        fn()
        clock.mark()
        times.append(clock.seconds()[0])
    return statistics.median(times)


def vram(device: torch.device) -> dict[str, float] | None:
    """Allocated and reserved GiB now (None off CUDA)."""
    if device.type != "cuda":
        return None
    return {"allocated_gib": torch.cuda.memory_allocated(device) / GIB,
            "reserved_gib": torch.cuda.memory_reserved(device) / GIB}


def free_memory(device: torch.device) -> None:
    """Collect garbage and hand cached blocks back, between models."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def failure(exc: BaseException) -> dict[str, str]:
    """What a failed part records: the error and the last lines of its traceback."""
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": "".join(tb)[-3000:]}


# ----------------------------------------------------------------------------- models and plans


def build(name: str, device: torch.device, dtype: torch.dtype, seed: int) -> PrunableLM:
    """A random-initialised model of architecture ``name`` on ``device``, with a byte-level tokenizer.

    Token ids of the byte tokenizer (259 of them) are a subset of every vocabulary here; prompts are
    random ids over the whole vocabulary anyway. The lm_head keeps the real vocabulary size.
    """
    from transformers import AutoModelForCausalLM

    arch = ARCHITECTURES[name]
    tokenizer = byte_tokenizer()
    config = arch.hf_config(tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    return PrunableLM(model, tokenizer, name=f"{name}-random")


def group_head_scores(g: ModelGeometry) -> tuple[tuple[float, ...], ...]:
    """Head scores that make head plans group-aware: head ``h`` scores its place in its KV group.

    With ``score = h % group_size`` the ``m * kv_heads`` lowest-scored heads of a layer are the first
    ``m`` of every group, so removing that many leaves every group ``group_size - m`` heads (the
    uniform GQA path, smaller ``q``/``o`` matmuls); removing one fewer leaves one group a head more
    (the ragged path). Calibrated scores of a random model rank heads arbitrarily; the timing of a
    plan depends on its shapes, which these scores fix.
    """
    rows = []
    for nq, nkv in zip(g.num_heads, g.num_kv_heads, strict=True):
        size = nq // nkv
        rows.append(tuple(float(h % size) for h in range(nq)))
    return tuple(rows)


def calibrate_for_timing(lm: PrunableLM, n_prompts: int) -> dict[str, float]:
    """Calibrate block influence and channel importance (``dynprune.importance.calibrate``) on the
    shipped prompts, set group-aware head scores, and return the calibration's seconds."""
    from dynprune.importance import calibrate

    t0 = time.perf_counter()
    imp = calibrate(lm, n_prompts=n_prompts, seq_len=min(128, lm.geometry.max_position))
    sync(lm.device)
    seconds = time.perf_counter() - t0
    lm.set_importance(dataclasses.replace(imp, heads=group_head_scores(lm.geometry)))
    return {"calibrate_s": seconds, "windows": n_prompts}


@dataclass(frozen=True)
class NamedPlan:
    """A plan with the key and kind the JSON files it under."""

    key: str
    kind: str
    plan: PruningPlan


def head_removed_per_group(g: ModelGeometry, fraction: float) -> int:
    """Query heads removed from each KV group by the head plans (at least 1, at most group size - 1)."""
    size = g.num_heads[0] // g.num_kv_heads[0]
    return min(size - 1, max(1, round(fraction * size)))


def ffn_keep(width: int, share: float) -> int:
    """Channels kept when ``share`` goes; rounded down to a multiple of 64 on real widths (tensor-core tiles)."""
    keep = width - round(share * width)
    if width >= 1024:
        keep = max(64, keep // 64 * 64)
    return max(1, keep)


def timing_plans(lm: PrunableLM, args: Args) -> list[NamedPlan]:
    """The full model, layer skips, group-uniform and ragged head slices, and FFN slices."""
    g, imp = lm.geometry, lm.importance
    plans = [NamedPlan("full", "full", PruningPlan(name="full"))]
    for k in parse_ks(args.ks, g.num_layers):
        plans.append(NamedPlan(f"skip-{k}", "skip", layers_plan(imp, g, k, name=f"skip {k}")))
    size = g.num_heads[0] // g.num_kv_heads[0]
    if size > 1:
        m = head_removed_per_group(g, args.head_fraction)
        uniform = {i: g.num_heads[i] - m * g.num_kv_heads[i] for i in range(g.num_layers)}
        plans.append(NamedPlan("heads-uniform", "heads", PruningPlan(heads=uniform, name=f"heads -{m}/group")))
        if g.num_kv_heads[0] > 1:
            ragged = {i: c + 1 for i, c in uniform.items()}
            ragged_plan = PruningPlan(heads=ragged, name=f"heads -{m}/group, ragged")
            plans.append(NamedPlan("heads-ragged", "heads", ragged_plan))
    for share in args.ffn_shares():
        keep = {i: ffn_keep(g.intermediate_size[i], share) for i in range(g.num_layers)}
        plans.append(NamedPlan(f"ffn-{round(100 * share)}", "ffn", PruningPlan(ffn=keep, name=f"ffn -{share:.0%}")))
    for p in plans:
        lm.validate(p.plan)
    return plans


def plan_counts(counts: dict[str, Any], g: ModelGeometry, plan: PruningPlan) -> dict[str, Any]:
    """``param_counts`` as the plan leaves them: sliced layers lose their removed heads' and channels' matmuls.

    Skipped layers are left to ``work_model``'s ``skipped`` set. Biases of sliced rows are not counted
    (a few thousand numbers against millions).
    """
    h, d = g.hidden_size, g.head_dim
    heads, ffn = dict(plan.heads), dict(plan.ffn)
    layer = list(counts["layer_matmul"])
    width = list(counts["attention_width"])
    for i in range(g.num_layers):
        nq, nkv, nf = g.num_heads[i], g.num_kv_heads[i], g.intermediate_size[i]
        q = heads.get(i, nq)
        kv = min(nkv, q)  # a KV group survives while any of its query heads does (upper bound)
        layer[i] -= 2 * h * (nq - q) * d + 2 * h * (nkv - kv) * d + 3 * h * (nf - ffn.get(i, nf))
        width[i] = q * d
    return {**counts, "layer_matmul": layer, "attention_width": width}


# ----------------------------------------------------------------------------- part: models


@torch.inference_mode()
def generate_batch(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[float, float, float]:
    """Greedy-generate exactly ``new_tokens`` tokens for every row of ``ids``; return (total, prefill, per token) s.

    The next tokens stay on the device (no host sync per token), as a batched server would run; the
    KV cache is transformers' ``DynamicCache``, as in ``dynprune.generation``.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    clock = Clock(ids.device)
    clock.mark()
    logits = forward_with_cache(model, ids, cache, logits_to_keep=1)
    token = logits[:, -1].argmax(-1, keepdim=True)
    clock.mark()
    for _ in range(new_tokens - 1):
        logits = forward_with_cache(model, token, cache, logits_to_keep=1)
        token = logits[:, -1].argmax(-1, keepdim=True)
    clock.mark()
    prefill, decode = clock.seconds()
    return prefill + decode, prefill, decode / (new_tokens - 1)


def measure_apply(lm: PrunableLM, plans: list[NamedPlan], args: Args) -> dict[str, Any]:
    """Apply + restore per kind of op (host ms, cache warm) and cold slice builds (ms, device synced)."""
    g, imp = lm.geometry, lm.importance
    by_key = {p.key: p.plan for p in plans}
    k = max(1, g.num_layers // 4)
    skip = layers_plan(imp, g, k, name=f"skip {k}")
    adapter = PruningPlan(adapters=skip.skip, name=f"adapters on {k} layers",
                          modules={i: Bottleneck(g.hidden_size).to(lm.device, lm.dtype) for i in skip.skip})
    ops = {"layer_skip": skip, "adapter": adapter}
    ops.update({key: by_key[key] for key in ("heads-uniform", "heads-ragged") if key in by_key})
    ffn_key = next(p.key for p in plans if p.kind == "ffn")
    ops[ffn_key] = by_key[ffn_key]
    result: dict[str, Any] = {}
    for key in [k for k in ops if ops[k].heads or ops[k].ffn]:  # cold builds first: the warm cycles fill the cache
        times = time_cold_build(lm, ops[key], args.cold_repeats)
        result[f"{key}_cold_build"] = summary(times, 1e3)
    for key, plan in ops.items():
        result[key] = {"plan": plan.describe(), **summary(time_apply_restore(lm, plan, args.apply_repeats), 1e3)}
    lm.set_importance(lm.importance)  # empty the slice cache: the timing part measures what each plan's slices hold
    return result


def measure_plans(lm: PrunableLM, plans: list[NamedPlan], args: Args, budget: Budget) -> list[dict[str, Any]]:
    """Generation time of every plan at every batch size, interleaved; peak VRAM; bounds.

    A batch size is started only while the budget has 10 s left; a skipped one is recorded as such.
    """
    g, dev = lm.geometry, lm.device
    counts = param_counts(lm)
    rows: list[dict[str, Any]] = []
    for p in plans:
        before = torch.cuda.memory_allocated(dev) if dev.type == "cuda" else 0
        with lm.apply(p.plan):  # builds and caches this plan's slices
            pass
        sync(dev)
        slices = (torch.cuda.memory_allocated(dev) - before) / MIB if dev.type == "cuda" else None
        ragged = sum(lm.head_slice(i, c).ragged for i, c in p.plan.heads) if p.plan.heads else 0
        rows.append({"key": p.key, "kind": p.kind, "plan": p.plan.describe(), "skip": list(p.plan.skip),
                     "kept_fraction": p.plan.kept_fraction(g), "slice_cache_mib": slices,
                     "ragged_layers": ragged, "batches": {}})
    gen = torch.Generator().manual_seed(args.seed)
    for batch in args.batch_sizes():
        if not budget.allows(10.0):
            for row in rows:
                row["batches"][str(batch)] = budget.skipped(10.0)
            continue
        ids = torch.randint(0, g.vocab_size, (batch, args.prompt_tokens), generator=gen).to(dev)

        def run(p: NamedPlan, ids: torch.Tensor = ids) -> tuple[float, float, float]:
            with lm.apply(p.plan):
                return generate_batch(lm.model, ids, args.new_tokens)

        for p in plans:  # one untimed run per plan: first-call costs stay out
            run(p)
        times: list[list[tuple[float, float, float]]] = [[] for _ in plans]
        peaks: list[float | None] = [None] * len(plans)
        for r in range(args.repeats):
            for j in range(len(plans)):
                i = (r + j) % len(plans)  # rotate: each plan runs early and late equally often
                if r == 0 and dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                times[i].append(run(plans[i]))
                if r == 0 and dev.type == "cuda":
                    peaks[i] = torch.cuda.max_memory_allocated(dev) / GIB
        full = times[0]
        work_full = work_model(counts, args.prompt_tokens, args.new_tokens, set())
        for i, p in enumerate(plans):
            work = work_model(plan_counts(counts, g, p.plan), args.prompt_tokens, args.new_tokens, set(p.plan.skip))
            cell: dict[str, Any] = {"peak_vram_gib": peaks[i]}
            for part, idx in (("total", 0), ("prefill", 1), ("decode", 2)):
                speedups = [f[idx] / t[idx] for f, t in zip(full, times[i], strict=True)]
                bound = work_full[part] / work[part]
                cell[part] = {"seconds": summary([t[idx] for t in times[i]]), "speedup": summary(speedups),
                              "bound": bound, "measured_over_bound": statistics.median(speedups) / bound}
            cell["tokens_per_s"] = batch * args.new_tokens / cell["total"]["seconds"]["median"]
            rows[i]["batches"][str(batch)] = cell
        print(f"    batch {batch}: " + ", ".join(
            f"{r['key']} {r['batches'][str(batch)]['total']['speedup']['median']:.2f}x" for r in rows[1:]), flush=True)
    return rows


def part_models(args: Args, device: torch.device, dtype: torch.dtype, budget: Budget,
                save: Callable[[], None], result: dict[str, Any]) -> None:
    """Per model: apply/restore costs, plan speed-ups at each batch size against the bound, VRAM."""
    for name in args.model_names():
        need = MODEL_MIN_S.get(name, MODEL_MIN_DEFAULT_S)
        if not budget.allows(need):
            result[name] = budget.skipped(need)
            continue
        print(f"  {name} ...", flush=True)
        t0 = time.perf_counter()
        lm = None
        try:
            lm = build(name, device, dtype, args.seed)
            sync(device)
            entry: dict[str, Any] = {
                "architecture": dataclasses.asdict(ARCHITECTURES[name]),
                "parameters": sum(p.numel() for p in lm.model.parameters()),
                "build_s": time.perf_counter() - t0,
                "vram_weights": vram(device),
            }
            entry["calibration"] = calibrate_for_timing(lm, args.calib_prompts)
            plans = timing_plans(lm, args)
            entry["apply_restore_ms"] = measure_apply(lm, plans, args)
            entry["plans"] = measure_plans(lm, plans, args, budget)
            entry["vram_with_all_slices"] = vram(device)
            entry["wall_s"] = time.perf_counter() - t0
            result[name] = entry
        except Exception as exc:  # one model failing must not lose the others
            result[name] = failure(exc)
            print(f"  {name} FAILED: {result[name]['error']}", flush=True)
        finally:
            del lm  # drop the model (and its cached slices) before the next one is built
            free_memory(device)
        save()


# ----------------------------------------------------------------------------- part: ceilings


def part_ceilings(device: torch.device) -> dict[str, Any]:
    """The card's bf16 matmul rate (8192^3, random data) and device-to-device copy bandwidth (1 GiB)."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    t = median_time(lambda: a @ b, device, 10)
    src = torch.randn(1 << 29, device=device, dtype=torch.bfloat16)  # 1 GiB
    dst = torch.empty_like(src)
    c = median_time(lambda: dst.copy_(src), device, 10)
    return {"bf16_matmul_tflops": 2 * n**3 / t / 1e12, "copy_gb_per_s": 2 * src.numel() * 2 / c / 1e9,
            "notes": "median of 10 after 2 warm-ups; copy counts bytes read + written"}


# ----------------------------------------------------------------------------- part: 2:4 sparsity


def two_four_mask(w: torch.Tensor) -> torch.Tensor:
    """``w`` with the two smallest-magnitude entries of every 4 consecutive inputs set to zero (2:4)."""
    groups = w.reshape(w.shape[0], -1, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return (groups * mask).reshape(w.shape)


def part_sparsity(args: Args, device: torch.device) -> dict[str, Any]:
    """Dense vs 2:4 semi-structured ``F.linear`` on real FFN shapes, per backend and token count."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    shapes = {}
    for name in ("llama-3.2-1b", "llama-3.1-8b"):
        a = ARCHITECTURES[name]
        shapes[f"{name} up/gate"] = (a.ffn, a.hidden)
        shapes[f"{name} down"] = (a.hidden, a.ffn)
    tokens = [int(t) for t in args.sparse_tokens.split(",") if t.strip()]
    backends = {"cusparselt": False, "cutlass": True}
    rows = []
    for label, (out_f, in_f) in shapes.items():
        w = two_four_mask(torch.randn(out_f, in_f, device=device, dtype=torch.bfloat16))
        for backend, force_cutlass in backends.items():
            SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
            try:
                ws = to_sparse_semi_structured(w)
            except Exception as exc:
                rows.append({"shape": label, "backend": backend, **failure(exc)})
                continue
            for m in tokens:
                x = torch.randn(m, in_f, device=device, dtype=torch.bfloat16)
                row: dict[str, Any] = {"shape": label, "out": out_f, "in": in_f, "backend": backend, "tokens": m}
                try:
                    dense = torch.nn.functional.linear(x, w)
                    sparse = torch.nn.functional.linear(x, ws)
                    row["rel_error"] = float((sparse.float() - dense.float()).norm() / dense.float().norm())
                    td = median_time(lambda x=x, w=w: torch.nn.functional.linear(x, w), device, 20)
                    ts = median_time(lambda x=x, ws=ws: torch.nn.functional.linear(x, ws), device, 20)
                    row.update(dense_us=td * 1e6, sparse_us=ts * 1e6, speedup=td / ts)
                except Exception as exc:
                    row.update(failure(exc))
                rows.append(row)
            del ws
    SparseSemiStructuredTensor._FORCE_CUTLASS = False
    ok = [r for r in rows if "speedup" in r]
    return {"rows": rows, "best_speedup": max((r["speedup"] for r in ok), default=None),
            "cusparselt_available": bool(getattr(torch.backends, "cusparselt", None)
                                         and torch.backends.cusparselt.is_available()),
            "notes": "weights pruned 2:4 by magnitude; dense = the same masked matrix stored dense; "
                     "median of 20 timed calls; speedup = dense / sparse"}


# ----------------------------------------------------------------------------- part: env


def part_env(args: Args, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """DynPrune-v0 steps/s, live and profiled timing, with live telemetry (NVML on a GPU)."""
    import numpy as np

    from dynprune.tasks import load_prompts
    from dynprune.telemetry import TELEMETRY_FIELDS, make_monitor
    from envs.dynprune_env import DynPruneEnv

    lm = build(args.env_model, device, dtype, args.seed)
    calibrate_for_timing(lm, args.calib_prompts)
    prompts = load_prompts("dynprune", split="test")[: args.env_prompts]
    out: dict[str, Any] = {"model": args.env_model, "prompts": len(prompts), "new_tokens": args.env_new_tokens}
    monitor = make_monitor("live", device=str(device))
    monitor.snapshot()
    snap_times = []
    for _ in range(20):
        t0 = time.perf_counter()
        snap = monitor.snapshot()
        snap_times.append(time.perf_counter() - t0)
    out["telemetry_snapshot_ms"] = summary(snap_times, 1e3)
    out["telemetry_snapshot"] = {f: getattr(snap, f) for f in TELEMETRY_FIELDS}
    wanted = [a.strip() for a in args.env_actions.split(",") if a.strip()]
    for timing in ("live", "profiled"):
        env = DynPruneEnv(model=lm, prompts=prompts, timing=timing, telemetry="live", reward="casrap",
                          max_new_tokens=args.env_new_tokens, sequential=True)
        missing = sorted(set(wanted) - set(env.action_names))
        if missing:
            raise ValueError(f"env_actions {missing} are not in the action table {list(env.action_names)}")
        actions = [env.action_names.index(a) for a in wanted]
        rng = np.random.default_rng(args.seed)
        ev = env.evaluator
        obs, _ = env.reset(seed=args.seed)
        steps, obs_rows = [], []
        for _ in range(args.env_steps):
            action = actions[int(rng.integers(len(actions)))]
            before = (ev.baseline_seconds, ev.profile.measurements)
            t0 = time.perf_counter()
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                obs, _ = env.reset()
            dt = time.perf_counter() - t0
            # a cache miss: the prompt's full-model baseline or a latency-profile cell was measured in this step
            miss = (ev.baseline_seconds, ev.profile.measurements) != before
            steps.append({"action": env.action_names[action], "seconds": dt, "cache_miss": miss})
            obs_rows.append(obs)
        names = env.observation_names
        last = obs_rows[-1]
        # Steady state: pruning actions without a cache miss. "none" is excluded: the empty plan is the
        # full model by definition and its step measures nothing (a cached baseline), so it would
        # stand for a cost no pruning step has.
        warm = [st["seconds"] for st in steps if not st["cache_miss"] and st["action"] != "none"]
        per_action = {}
        for name in wanted:
            times = [st["seconds"] for st in steps if st["action"] == name and not st["cache_miss"]]
            per_action[name] = summary(times, 1e3) if times else None
        total = sum(st["seconds"] for st in steps)
        out[timing] = {
            "steps_per_s": len(steps) / total,
            "steady_pruning_steps_per_s": len(warm) / sum(warm) if warm else None,
            "steady_pruning_steps": len(warm),
            "warm_step_ms_by_action": per_action,
            "cache_misses": sum(st["cache_miss"] for st in steps),
            "baseline_seconds": ev.baseline_seconds,
            "profile_measurements": ev.profile.measurements,
            "observation_last": {n: float(last[names.index(n)]) for n in TELEMETRY_FIELDS},
            "gpu_fields_present": bool(all(r[names.index("vram_free_frac")] >= 0 for r in obs_rows)),
            "steps": steps,
        }
        env.close()
    live, prof = out["live"], out["profiled"]
    if live["steady_pruning_steps_per_s"] and prof["steady_pruning_steps_per_s"]:
        out["profiled_over_live_steady"] = prof["steady_pruning_steps_per_s"] / live["steady_pruning_steps_per_s"]
    out["notes"] = ("a step = env.step + the reset that follows it (one prompt per episode), actions drawn from "
                    "env_actions; steady = pruning actions (not none) in steps with no cache miss (full-model "
                    "baseline cached, latency-profile cell measured its min_rounds); the env's default ProfileConfig")
    return out


# ----------------------------------------------------------------------------- part: latency model


def part_latency(args: Args, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Fit the latency model on this device for the env's model; its error on held-out points."""
    try:
        from dynprune.latency_model import LatencyCalibration, calibrate_latency
    except ImportError as exc:
        return {"skipped": f"dynprune.latency_model is not installed ({exc})"}
    lm = build(args.env_model, device, dtype, args.seed)
    calibrate_for_timing(lm, args.calib_prompts)
    t0 = time.perf_counter()
    model, points = calibrate_latency(lm, LatencyCalibration(points=args.latency_points, seed=args.seed))
    return {"model": args.env_model, "calibrate_s": time.perf_counter() - t0, "points": len(points),
            "holdout_error": dataclasses.asdict(model.holdout) if model.holdout else None,
            "fit_error": dataclasses.asdict(model.fit_error) if model.fit_error else None,
            "settings": model.settings,
            "notes": "error of predicted speed-ups T_full / T_plan on measured points: |predicted / measured - 1|; "
                     "points = random plans of every kind at random prompt and answer lengths, each timed "
                     "interleaved with the full model (dynprune.latency_model.calibrate_latency)"}


# ----------------------------------------------------------------------------- part: NF4


def part_nf4(args: Args, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """NF4 (bitsandbytes) against bf16: VRAM of the weights, generation speed, logits error, slicing."""
    import bitsandbytes

    from dynprune.compress.quantize import quantize_nf4

    lm = build(args.nf4_model, device, dtype, args.seed)
    calibrate_for_timing(lm, args.calib_prompts)
    sync(device)
    before = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    qmodel = quantize_nf4(lm.model, lm.tokenizer, device)
    sync(device)
    bf16_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    out: dict[str, Any] = {"model": args.nf4_model, "bitsandbytes": bitsandbytes.__version__,
                           "quantize_s": time.perf_counter() - t0,
                           "weights_gib": {"bf16": bf16_bytes / GIB,
                                           "nf4_allocated": (torch.cuda.memory_allocated(device) - before) / GIB}}
    qlm = PrunableLM(qmodel, lm.tokenizer, name=f"{args.nf4_model}-random-nf4")
    ids = torch.randint(0, lm.geometry.vocab_size, (1, args.prompt_tokens),
                        generator=torch.Generator().manual_seed(args.seed)).to(device)
    with torch.inference_mode():
        ref, q = lm.model(input_ids=ids).logits.float(), qlm.model(input_ids=ids).logits.float()
    out["logits_rel_error"] = float((q - ref).norm() / ref.norm())
    out["top1_agreement"] = float((q.argmax(-1) == ref.argmax(-1)).float().mean())
    k = max(1, lm.geometry.num_layers // 4)
    skip = layers_plan(lm.importance, lm.geometry, k).skip
    cases = {"bf16 full": (lm, PruningPlan()), f"bf16 skip {k}": (lm, PruningPlan(skip=skip)),
             "nf4 full": (qlm, PruningPlan()), f"nf4 skip {k}": (qlm, PruningPlan(skip=skip))}
    for batch in args.batch_sizes():
        x = torch.randint(0, lm.geometry.vocab_size, (batch, args.prompt_tokens)).to(device)

        def run(case: tuple[PrunableLM, PruningPlan], x: torch.Tensor = x) -> tuple[float, float, float]:
            with case[0].apply(case[1]):
                return generate_batch(case[0].model, x, args.new_tokens)

        names = list(cases)
        for name in names:
            run(cases[name])
        times: dict[str, list[tuple[float, float, float]]] = {n: [] for n in names}
        for r in range(args.repeats):
            for j in range(len(names)):
                name = names[(r + j) % len(names)]
                times[name].append(run(cases[name]))
        base = times["bf16 full"]
        out[f"batch_{batch}"] = {
            name: {"total_s": summary([t[0] for t in ts]), "decode_token_s": summary([t[2] for t in ts]),
                   "speedup_vs_bf16_full": summary([b[0] / t[0] for b, t in zip(base, ts, strict=True)])}
            for name, ts in times.items()
        }
    for kind, plan in (("heads", PruningPlan(heads={0: lm.geometry.num_heads[0] - lm.geometry.num_kv_heads[0]})),
                       ("ffn", PruningPlan(ffn={0: lm.geometry.intermediate_size[0] // 2}))):
        try:
            qlm.set_importance(dataclasses.replace(lm.importance, model_id=qlm.model_id))
            with qlm.apply(plan):
                pass
            out[f"{kind}_slicing"] = "applies"
        except Exception as exc:
            out[f"{kind}_slicing"] = f"{type(exc).__name__}: {exc}"
    return out


# ----------------------------------------------------------------------------- part: torch.compile


def part_compile(args: Args, device: torch.device, dtype: torch.dtype, budget: Budget) -> dict[str, Any]:
    """torch.compile of the teacher-forced forward while the plan changes from call to call."""
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    lm = build(args.compile_model, device, dtype, args.seed)
    calibrate_for_timing(lm, args.calib_prompts)
    plans = {p.key: p for p in timing_plans(lm, args)}
    k = max(1, lm.geometry.num_layers // 4)
    named = {"full": plans["full"], "skip": NamedPlan(f"skip-{k}", "skip", layers_plan(lm.importance, lm.geometry, k)),
             "ffn": next(p for p in plans.values() if p.kind == "ffn"), "heads": plans.get("heads-uniform")}
    sequence = [named[s.strip()] for s in args.compile_plans.split(",") if s.strip() and named[s.strip()]]
    n = args.prompt_tokens + args.new_tokens
    gen = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, lm.geometry.vocab_size, (1, n), generator=gen).to(device)
    dynamo.reset()
    compiled = torch.compile(lm.model, backend=args.compile_backend, dynamic=False)
    limit = getattr(dynamo.config, "recompile_limit", None) or getattr(dynamo.config, "cache_size_limit", None)
    out: dict[str, Any] = {"model": args.compile_model, "backend": args.compile_backend, "tokens": n,
                           "recompile_limit": limit, "calls": []}

    def forward(model: torch.nn.Module) -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids=ids, use_cache=False, logits_to_keep=args.new_tokens + 1).logits

    first_s: float | None = None
    for p in sequence:
        need = max(10.0, 1.5 * first_s) if first_s else PART_MIN_S["compile"]
        if not budget.allows(need):
            out["calls"].append({"plan": p.key, **budget.skipped(need)})
            continue
        with lm.apply(p.plan):
            eager_logits = forward(lm.model)
            eager_s = median_time(lambda: forward(lm.model), device, 5)
            graphs0 = counters["stats"]["unique_graphs"]
            sync(device)
            t0 = time.perf_counter()
            logits = forward(compiled)
            sync(device)
            call_s = time.perf_counter() - t0
            first_s = first_s or call_s
            new_graphs = counters["stats"]["unique_graphs"] - graphs0
            compiled_s = median_time(lambda: forward(compiled), device, 5)
            steady_graphs = counters["stats"]["unique_graphs"] - graphs0 - new_graphs
            diff = float((logits.float() - eager_logits.float()).abs().max())
            scale = float(eager_logits.float().abs().max())
        out["calls"].append({"plan": p.key, "first_call_s": call_s, "graphs_compiled": new_graphs,
                             "graphs_compiled_in_steady_calls": steady_graphs, "eager_s": eager_s,
                             "compiled_s": compiled_s, "compiled_speedup": eager_s / compiled_s,
                             "max_abs_diff_vs_eager": diff, "max_abs_logit": scale})
        print(f"    {p.key}: first call {call_s:.1f} s, {new_graphs} graph(s), "
              f"eager {eager_s * 1e3:.2f} ms, compiled {compiled_s * 1e3:.2f} ms, diff {diff:.3g}", flush=True)
    out["counters"] = {key: dict(counters[key]) for key in ("stats", "recompiles", "frames") if key in counters}
    out["notes"] = ("forward over prompt + answer without a cache (the profiled env step); compiled once "
                    "(dynamic=False), then the plan changes between calls; graphs_compiled = new unique graphs "
                    "on the plan's first call; a plan seen before that compiles nothing reuses its cached graph")
    dynamo.reset()
    return out


# ----------------------------------------------------------------------------- part: CUDA graphs


def static_decode_step(lm: PrunableLM, prompt: torch.Tensor, extra: int) -> tuple[Callable[[], torch.Tensor], Any]:
    """Prefill ``prompt`` into a ``StaticCache`` and return a decode step whose inputs are static tensors.

    The step feeds one token at a fixed position and rewrites the same cache slot each call, so every
    call does the same work at the same addresses: what a CUDA graph needs. transformers 5.x's
    ``StaticLayer`` ignores ``cache_position`` and writes at its own device-side counter
    (``cumulative_length``, advanced in place by every update, inside a graph replay too), so the step
    first sets each counter back to the prompt length; without that, repeated calls or replays would
    walk off the end of the cache.
    """
    from transformers import StaticCache

    model, n = lm.model, prompt.shape[1]
    cache = StaticCache(config=model.config, max_cache_len=n + extra)
    with torch.inference_mode():
        logits = forward_with_cache(model, prompt, cache, cache_position=torch.arange(n, device=prompt.device))
    counters = [layer.cumulative_length for layer in getattr(cache, "layers", ())
                if getattr(layer, "is_initialized", False) and isinstance(getattr(layer, "cumulative_length", None),
                                                                          torch.Tensor)]
    token = logits[:, -1:].argmax(-1).clone()
    position = torch.tensor([n], device=prompt.device)

    def step() -> torch.Tensor:
        with torch.inference_mode():
            for counter in counters:
                counter.fill_(n)
            return forward_with_cache(model, token, cache, cache_position=position, logits_to_keep=1)

    return step, cache


def part_graphs(args: Args, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """One CUDA graph per plan for a static-cache decode step: capture cost, replay vs eager, memory."""
    lm = build(args.compile_model, device, dtype, args.seed)
    calibrate_for_timing(lm, args.calib_prompts)
    plans = {p.key: p for p in timing_plans(lm, args)}
    k = max(1, lm.geometry.num_layers // 4)
    chosen = [plans["full"], NamedPlan(f"skip-{k}", "skip", layers_plan(lm.importance, lm.geometry, k)),
              next(p for p in plans.values() if p.kind == "ffn")]
    if "heads-uniform" in plans:
        chosen.append(plans["heads-uniform"])
    prompt = torch.randint(0, lm.geometry.vocab_size, (1, args.prompt_tokens),
                           generator=torch.Generator().manual_seed(args.seed)).to(device)
    rows, graphs = [], []
    for p in chosen:
        row: dict[str, Any] = {"plan": p.key}
        try:
            with lm.apply(p.plan):
                step, cache = static_decode_step(lm, prompt, 64)
                eager = step().clone()
                eager_s = median_time(step, device, 20)
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    for _ in range(3):
                        step()
                torch.cuda.current_stream(device).wait_stream(side)
                sync(device)
                before = torch.cuda.memory_allocated(device)
                graph = torch.cuda.CUDAGraph()
                t0 = time.perf_counter()
                with torch.cuda.graph(graph):
                    static_out = step()
                sync(device)
                capture_s = time.perf_counter() - t0
                graph_mib = (torch.cuda.memory_allocated(device) - before) / MIB
            # Replay outside lm.apply: the graph holds the plan's kernels and weight addresses itself.
            replay_s = median_time(graph.replay, device, 20)
            graph.replay()
            sync(device)
            row.update(eager_step_ms=eager_s * 1e3, replay_step_ms=replay_s * 1e3, speedup=eager_s / replay_s,
                       capture_s=capture_s, graph_pool_mib=graph_mib,
                       max_abs_diff_vs_eager=float((static_out.float() - eager.float()).abs().max()))
            graphs.append((graph, cache, static_out))  # keep alive: one graph per plan, as a server would
        except Exception as exc:
            row.update(failure(exc))
        rows.append(row)
        print(f"    graph {p.key}: {row.get('speedup', row.get('error'))}", flush=True)
    return {"model": args.compile_model, "rows": rows, "graphs_alive": len(graphs),
            "vram_with_graphs": vram(device),
            "notes": "decode step at batch 1 after a prompt of prompt_tokens, StaticCache; one graph per plan "
                     "(a graph bakes in the plan's kernels and weights: switching plans = replaying another "
                     "graph); replay timed outside lm.apply"}


# ----------------------------------------------------------------------------- machine, summary, plot


def gpu_record(device: torch.device) -> dict[str, Any]:
    """Name, memory, compute capability, driver and CUDA versions of the GPU (None off CUDA)."""
    if device.type != "cuda":
        return {"cuda": False}
    props = torch.cuda.get_device_properties(device)
    rec: dict[str, Any] = {"cuda": True, "name": props.name, "memory_gib": props.total_memory / GIB,
                           "multiprocessors": props.multi_processor_count,
                           "capability": f"{props.major}.{props.minor}", "torch_cuda": torch.version.cuda,
                           "cudnn": torch.backends.cudnn.version()}
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        rec["driver"] = pynvml.nvmlSystemGetDriverVersion()
        rec["power_limit_w"] = pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000
        rec["sm_clock_max_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
        rec["temperature_c"] = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
    except Exception as exc:  # telemetry must never fail the run
        rec["nvml_error"] = f"{type(exc).__name__}: {exc}"
    return rec


def device_slug(device: torch.device) -> str:
    """``nvidia-h200`` for an NVIDIA H200; ``cpu`` on a CPU."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def headline(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per measured model: the numbers the README table shows."""
    rows = []
    for name, entry in result.get("models", {}).items():
        if not isinstance(entry, dict) or "plans" not in entry:
            continue
        plans = {p["key"]: p for p in entry["plans"]}
        L = entry["architecture"]["layers"]
        quarter = plans.get(f"skip-{max(1, L // 4)}")
        row: dict[str, Any] = {"model": name, "parameters_b": entry["parameters"] / 1e9,
                               "apply_restore_skip_ms": entry["apply_restore_ms"]["layer_skip"]["median"]}
        for b, cell in plans["full"]["batches"].items():
            if "total" not in cell:  # skipped for time
                continue
            row[f"b{b}_decode_ms_per_token"] = cell["decode"]["seconds"]["median"] * 1e3
            row[f"b{b}_peak_vram_gib"] = cell["peak_vram_gib"]
            for key, p in (("skip_L/4", quarter), ("heads", plans.get("heads-uniform")),
                           ("heads_ragged", plans.get("heads-ragged")), ("ffn25", plans.get("ffn-25")),
                           ("ffn50", plans.get("ffn-50"))):
                if p is not None:
                    c = p["batches"][b]["total"]
                    row[f"b{b}_{key}_speedup"] = c["speedup"]["median"]
                    row[f"b{b}_{key}_bound"] = c["bound"]
        rows.append(row)
    return rows


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Skip speed-up vs k/L against the bound; slicing speed-ups; 2:4 speed-ups; compile first-call times."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    (ax1, ax2), (ax3, ax4) = fig.subplots(2, 2)
    models = {n: e for n, e in result.get("models", {}).items() if isinstance(e, dict) and "plans" in e}
    colors = dict(zip(models, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"),
                      strict=False))
    def done(entry: dict[str, Any]) -> list[str]:  # batch sizes measured (not skipped for time)
        return sorted((b for b, c in entry["plans"][0]["batches"].items() if "total" in c), key=int)

    for name, entry in models.items():
        L = entry["architecture"]["layers"]
        skips = [p for p in entry["plans"] if p["kind"] in ("full", "skip")]
        xs = [len(p["skip"]) / L for p in skips]
        for b, style in zip(done(entry), ("o-", "s--", "^:"), strict=False):
            ax1.plot(xs, [p["batches"][b]["total"]["speedup"]["median"] for p in skips], style,
                     color=colors[name], label=f"{name} b{b}")
        if done(entry):
            b = done(entry)[0]
            ax1.plot(xs, [p["batches"][b]["total"]["bound"] for p in skips], color=colors[name], alpha=0.3, lw=4)
    ax1.set(xlabel="share of layers skipped k/L", ylabel="speed-up (x), whole generation",
            title="layer skipping (thick pale: parameter-count bound)")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    keys = ["heads-uniform", "heads-ragged", "ffn-25", "ffn-50"]
    width = 0.8 / max(1, 2 * len(models))
    for j, (name, entry) in enumerate(models.items()):
        plans = {p["key"]: p for p in entry["plans"]}
        for bi, b in enumerate(done(entry)[:2]):
            vals = [plans[k]["batches"][b]["total"]["speedup"]["median"] if k in plans else 0.0 for k in keys]
            xs = [i + (2 * j + bi) * width for i in range(len(keys))]
            ax2.bar(xs, vals, width, color=colors[name], alpha=1.0 if bi == 0 else 0.5, label=f"{name} b{b}")
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_xticks([i + 0.4 - width / 2 for i in range(len(keys))], keys)
    ax2.set(ylabel="speed-up (x), whole generation", title="head and FFN slicing")
    ax2.set_ylim(0, 1.45)
    if ax2.get_legend_handles_labels()[0]:
        ax2.legend(fontsize=7, ncol=4, loc="upper center")
    sparse = result.get("parts", {}).get("sparsity", {})
    for shape in sorted({r["shape"] for r in sparse.get("rows", []) if "speedup" in r}):
        for backend in ("cusparselt", "cutlass"):
            pts = [(r["tokens"], r["speedup"]) for r in sparse["rows"]
                   if r.get("shape") == shape and r.get("backend") == backend and "speedup" in r]
            if pts:
                style = "o-" if backend == "cusparselt" else "x--"
                ax3.plot(*zip(*pts, strict=True), style, label=f"{shape} {backend}")
    ax3.axhline(1.0, color="k", lw=0.8)
    ax3.set_xscale("log")
    ax3.set(xlabel="tokens (activation rows)", ylabel="dense / 2:4 time", title="2:4 semi-structured sparsity")
    if ax3.get_legend_handles_labels()[0]:
        ax3.legend(fontsize=6)
    graphs = [r for r in result.get("parts", {}).get("graphs", {}).get("rows", []) if "replay_step_ms" in r]
    if graphs:
        xs = range(len(graphs))
        ax4.bar([x - 0.2 for x in xs], [r["eager_step_ms"] for r in graphs], 0.4, color="tab:gray", label="eager")
        ax4.bar([x + 0.2 for x in xs], [r["replay_step_ms"] for r in graphs], 0.4, color="tab:blue",
                label="CUDA graph replay")
        ax4.set_xticks(list(xs), [r["plan"] for r in graphs], fontsize=8)
        ax4.legend(fontsize=7, loc="upper right")
    comp = result.get("parts", {}).get("compile", {})
    lines = [f"torch.compile ({comp.get('backend', '-')}), teacher-forced forward:"]
    for c in comp.get("calls", []):
        if "first_call_s" in c:
            lines.append(f"{c['plan']}: first call {c['first_call_s']:.1f} s, {c['graphs_compiled']} new graph(s), "
                         f"{c['compiled_speedup']:.2f}x eager")
    if len(lines) > 1:
        ax4.text(0.02, 0.97, "\n".join(lines), transform=ax4.transAxes, va="top", fontsize=7,
                 bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    ax4.set(ylabel="ms per decode step (batch 1)",
            title=f"{result.get('parts', {}).get('graphs', {}).get('model', '')}: CUDA graph per plan; torch.compile")
    m = result.get("machine", {})
    fig.suptitle(f"{m.get('device_name', '?')}, torch {m.get('torch', '?')}, transformers "
                 f"{m.get('transformers', '?')}, {m.get('date', '')[:10]}", fontsize=9)
    fig.savefig(path, format="png", dpi=100)
    return path


# ----------------------------------------------------------------------------- main


def measure(args: Args, lm: None, checkpoint: harness.Checkpoint) -> dict[str, Any]:
    """Run the parts in order within the budget; checkpoint the JSON after each."""
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    budget = Budget(args.budget_s)
    result: dict[str, Any] = {
        "dtype": str(dtype),
        "timing": "CUDA events after a warm-up" if device.type == "cuda" else "time.perf_counter",
        "models": {},
        "parts": {},
    }

    def save() -> None:
        result["summary"] = headline(result)
        checkpoint(result)

    for part in args.part_names():
        if part in CUDA_ONLY and device.type != "cuda":
            result["parts"][part] = {"skipped": f"needs CUDA; device is {device}"}
            continue
        print(f"== {part} ({budget.elapsed():.0f} s of {args.budget_s:.0f} s)", flush=True)
        if part == "models":
            t0 = time.perf_counter()
            part_models(args, device, dtype, budget, save, result["models"])
            result["parts"]["models"] = {"measured": [n for n, e in result["models"].items() if "plans" in e],
                                         "wall_s": time.perf_counter() - t0}
            save()
            continue
        need = PART_MIN_S[part]
        if not budget.allows(need):
            result["parts"][part] = budget.skipped(need)
            save()
            continue
        t0 = time.perf_counter()
        try:
            if part == "ceilings":
                out = part_ceilings(device)
            elif part == "sparsity":
                out = part_sparsity(args, device)
            elif part == "env":
                out = part_env(args, device, dtype)
            elif part == "latency":
                out = part_latency(args, device, dtype)
            elif part == "nf4":
                out = part_nf4(args, device, dtype)
            elif part == "compile":
                out = part_compile(args, device, dtype, budget)
            else:
                out = part_graphs(args, device, dtype)
            out["wall_s"] = time.perf_counter() - t0
        except Exception as exc:  # a CUDA-only feature that fails is recorded with its error
            out = {**failure(exc), "wall_s": time.perf_counter() - t0}
            print(f"  {part} FAILED: {out['error']}", flush=True)
        result["parts"][part] = out
        free_memory(device)
        save()
    result["summary"] = headline(result)
    return result


def merge_results(paths: list[Path], out: Path) -> dict[str, Any]:
    """Merge result files of runs on one machine: later files fill the models and parts earlier ones skipped.

    Nothing is re-measured; each file's args, date and wall time are kept under ``merged_from``.
    """
    if not paths:
        raise ValueError("--from-json names no file")
    runs = [json.loads(p.read_text()) for p in paths]
    names = {r["machine"].get("device_name") for r in runs}
    if len(names) != 1:
        raise ValueError(f"result files come from different devices {sorted(map(str, names))}; merge one device's runs")
    merged = copy.deepcopy(runs[0])
    for run in runs[1:]:
        for name, entry in run.get("models", {}).items():
            if "plans" in entry or name not in merged["models"]:
                merged["models"][name] = entry
        for part, entry in run.get("parts", {}).items():
            if "skipped" not in entry or part not in merged["parts"]:
                merged["parts"][part] = entry
    merged["merged_from"] = [{"file": p.name, "date": r["machine"].get("date"), "wall_s": r.get("wall_s"),
                              "args": r.get("args")} for p, r in zip(paths, runs, strict=True)]
    merged["summary"] = headline(merged)
    merged.pop("wall_s", None)
    print(f"merged {', '.join(p.name for p in paths)}")
    return harness.save(merged, out, table=print_table, files=FILES)


def print_table(result: dict[str, Any]) -> None:
    """The headline numbers per model and each part's state."""
    for row in result["summary"]:
        print(f"\n{row['model']} ({row['parameters_b']:.2f} B params), apply+restore skip "
              f"{row['apply_restore_skip_ms']:.3f} ms")
        for b in ("1", "8", "2"):
            if f"b{b}_decode_ms_per_token" in row:
                cells = [f"{k} {row[f'b{b}_{k}_speedup']:.2f}x (bound {row[f'b{b}_{k}_bound']:.2f})"
                         for k in ("skip_L/4", "heads", "heads_ragged", "ffn25", "ffn50") if f"b{b}_{k}_speedup" in row]
                print(f"  batch {b}: decode {row[f'b{b}_decode_ms_per_token']:.2f} ms/token; " + "; ".join(cells))
    for name, entry in result["models"].items():
        if "plans" not in entry:
            print(f"{name}: {entry.get('error') or entry.get('skipped')}")
    for part, out in result["parts"].items():
        state = out.get("error") or out.get("skipped") or f"done in {out.get('wall_s', 0):.0f} s"
        print(f"part {part}: {state}")


FILES = {".png": plot}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the parts in order within the budget (or merge runs with --from-json); write JSON and PNG."""
    args = harness.parse_args(Args, argv)
    if args.from_json:
        return merge_results([Path(p.strip()) for p in args.from_json.split(",") if p.strip()], Path(args.out))
    if resolve_device(args.device).type != "cuda" and not args.smoke and args.models == "auto":
        print("gpu: no CUDA device; nothing measured. Use --device cuda on a GPU machine, --smoke on a CPU, "
              "or name small --models to run the CPU-capable parts.", flush=True)
        return {"skipped": "no CUDA device"}
    return harness.run(args, measure, model=False, table=print_table, files=FILES,
                       machine_extra=lambda device: {"gpu": gpu_record(device)}, checkpoints=True)


if __name__ == "__main__":
    main()
