"""Helpers shared by the benchmark scripts (none of them imports another script).

- command line: :func:`parse_args` fills an ``Args`` dataclass from argv; the docstring
  under each field (of the class and of its bases) becomes its ``--help`` text
  (CleanRL/tyro style, without the dependency).
- output: :func:`write_json` (atomic), :func:`summary` (median / min / max).
- machine: :func:`machine_info` (CPU, cores, threads, versions, device, date, load),
  :func:`load_average`, :func:`machine_load` (other busy processes over half a second).
- prompts and caches: :func:`seeded_subset` (``envs.run_config``'s), :func:`sweep_logs_dir`, :func:`adapters_file`.
- processes and agents: :func:`run_in_child` (a measurement in a fresh process), :func:`train_table_ddqn`.
- timing: :data:`TIMED_PROMPT`, :func:`sync`, :func:`rotated`, :class:`Bottleneck`, :func:`time_apply_restore`,
  :func:`time_cold_build`, :func:`naive_step`.
- work model: :func:`parse_ks`, :func:`param_counts`, :func:`work_model` (the parameter-count
  bound on the speed-up of skipping layers).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import inspect
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil
import torch
from torch import nn

from dynprune.fileio import atomic_write_json
from envs.run_config import seeded_subset  # noqa: F401 - the one prompt-subset rule, re-exported for the scripts

if TYPE_CHECKING:
    from dynprune.adapter_training import AdapterConfig
    from dynprune.models import PrunableLM
    from dynprune.plan import PruningPlan

T = TypeVar("T")


# ----------------------------------------------------------------------------- command line


def field_docs(cls: type) -> dict[str, str]:
    """``{field name: docstring}`` for the string literal written under each field of a dataclass.

    Bases first, so a subclass that declares a field again with a docstring of its own overrides
    the base's text (a field declared again without one keeps it).
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:], strict=False):
            is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and is_doc:
                docs[node.target.id] = inspect.cleandoc(str(after.value.value))
    return docs


def _base_type(hint: Any) -> tuple[type, bool]:
    """``(type, optional)`` of a field annotation such as ``int``, ``str | None``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported field type {hint!r}: only X or X | None")
        return inner[0], True
    return hint, False


def parse_args(cls: type[T], argv: Sequence[str] | None = None) -> T:
    """Build an ``argparse`` parser from the dataclass ``cls`` and return a filled instance.

    ``bool`` fields become ``--flag / --no-flag``; ``X | None`` fields accept ``none``.
    """
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(
        description=inspect.cleandoc(cls.__doc__ or ""), formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        typ, optional = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = docs.get(f.name, "")
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue

        def convert(text: str, typ: type = typ, optional: bool = optional) -> Any:
            if optional and text.lower() == "none":
                return None
            return typ(text)

        parser.add_argument(flag, type=convert, default=f.default, dest=f.name, help=help_text)
    return cls(**vars(parser.parse_args(argv)))


# ----------------------------------------------------------------------------- output


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented JSON atomically: a crash never leaves a half-written file."""
    return atomic_write_json(path, data)


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int]:
    """``{"median", "min", "max", "n"}`` of ``values`` times ``scale`` (e.g. 1e3 for s -> ms)."""
    if not values:
        raise ValueError("summary of an empty list of measurements")
    scaled = [v * scale for v in values]
    return {"median": statistics.median(scaled), "min": min(scaled), "max": max(scaled), "n": len(scaled)}


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def machine_info(device: Any = "cpu") -> dict[str, Any]:
    """Describe where a benchmark ran: CPU, cores, torch threads, versions, device, date, load."""
    import transformers

    physical = psutil.cpu_count(logical=False)
    mem_gb = round(psutil.virtual_memory().total / 2**30, 1)
    dev = torch.device(device)
    if dev.type == "cuda":
        device_name = torch.cuda.get_device_name(dev)
    else:
        device_name = f"cpu: {cpu_model()}"
    load = load_average()
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "memory_gb": mem_gb,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": device_name,
        "load_average_1m": load,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def machine_load(threads: int | None = None) -> dict[str, Any]:
    """Whether other processes shared the CPU: load average and processes busy over a 0.5 s window.

    ``shared`` is True when the 1-minute load average exceeds this run's torch threads (``threads``;
    None: torch's current count) or another process used more than 10 % of a core in the window.
    """
    if threads is None:
        threads = torch.get_num_threads()
    me = os.getpid()
    procs = []
    for p in psutil.process_iter(["pid"]):
        if p.info["pid"] == me:
            continue
        try:
            p.cpu_percent(None)
            procs.append(p)
        except (psutil.Error, OSError):
            continue
    time.sleep(0.5)
    busy = 0
    for p in procs:
        try:
            if p.cpu_percent(None) > 10.0:
                busy += 1
        except (psutil.Error, OSError):
            continue
    load = load_average()
    return {
        "load_average_1m": load,
        "other_busy_processes": busy,
        "shared": bool(busy > 0 or (load is not None and load > threads)),
    }


# ----------------------------------------------------------------------------- prompts and caches


def sweep_logs_dir(model: str, reward: str, timing: str, prompts: int, max_new_tokens: int, seed: int,
                   prompt_embedding: int = 0) -> Path:
    """The folder in dynprune's cache that ``benchmarks/offline_rl.py`` sweeps into for these settings."""
    from dynprune.models import cache_dir

    slug = re.sub(r"[^A-Za-z0-9._-]", "_", model)
    return cache_dir() / "logs" / (
        f"offline_rl-{slug}-{reward}-{timing}-n{prompts}-tok{max_new_tokens}-seed{seed}"
        + (f"-emb{prompt_embedding}" if prompt_embedding else "")
    )


def adapters_file(model_id: str, config: AdapterConfig) -> Path:
    """The file in dynprune's cache that adapters distilled with ``config`` on ``model_id`` are saved to."""
    from dynprune.models import cache_dir

    safe = model_id.replace("/", "_").replace("@", "-")
    stem = f"{safe}-b{config.bottleneck}-e{config.epochs}-n{config.n_prompts}-s{config.seq_len}-seed{config.seed}"
    return cache_dir() / "adapters" / f"{stem}.safetensors"


# ----------------------------------------------------------------------------- processes and agents


def run_in_child(target: str, spec: dict[str, Any], what: str) -> dict[str, Any]:
    """Run ``target(spec)`` in a fresh Python process and return the dict it returns.

    ``target`` is ``"module:function"`` (e.g. ``"benchmarks.memory:child_plan"``); ``spec`` goes to the
    child as JSON and the child prints the result as JSON on its last line. A fresh process is what a
    peak-memory measurement needs: nothing this process loaded counts. Raises ``RuntimeError`` naming
    ``what`` with the end of the child's stderr when it fails.
    """
    module, _, function = target.partition(":")
    code = (f"import json, sys; from {module} import {function}; "
            f"r = {function}(json.loads(sys.argv[1])); print('\\n' + json.dumps(r))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@dataclasses.dataclass(frozen=True)
class TrainedAgent:
    """An agent and the seconds its training took."""

    model: Any
    train_s: float


def train_table_ddqn(table: Any, reward: str, steps: int, seed: int) -> TrainedAgent:
    """A Double DQN (``agents.dqn.make_dqn`` defaults) trained ``steps`` steps on a reward table's train split."""
    import gymnasium as gym

    import envs  # noqa: F401 - registers the ids
    from agents.dqn import make_dqn

    env = gym.make("DynPruneTable-v0", table=table, reward=reward, split="train")
    model = make_dqn(env, double=True, seed=seed)
    t0 = time.perf_counter()
    model.learn(steps)
    return TrainedAgent(model, time.perf_counter() - t0)


# ----------------------------------------------------------------------------- timing

TIMED_PROMPT = (
    "Explain in a few sentences why the sky looks blue during the day and red at sunset, "
    "and name the physical effect responsible."
)
"""The prompt of the timed generations of pruning_overhead, speed_limit and memory (an answer of 32+ tokens)."""


def rotated(items: Sequence[T], r: int) -> list[T]:
    """``items`` started at position ``r`` (mod its length): repeat ``r`` of an interleaved timing runs them
    in this order, so each item runs early and late equally often."""
    i = r % len(items)
    return [*items[i:], *items[:i]]


class Bottleneck(nn.Module):
    """A stand-in adapter, ``x + up(relu(down(x)))`` with a zero-initialised ``up``: identity at start."""

    def __init__(self, hidden: int, bottleneck: int = 64) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.relu(self.down(x)))


def sync(lm: PrunableLM) -> None:
    """Wait for queued GPU work, so a host-side clock covers it."""
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)


def time_apply_restore(lm: PrunableLM, plan: PruningPlan, repeats: int) -> list[float]:
    """Seconds of ``with lm.apply(plan): pass`` (validate, swap in, swap back), ``repeats`` times."""
    with lm.apply(plan):  # builds and caches any slices: the timed cycles see a warm cache
        pass
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with lm.apply(plan):
            pass
        times.append(time.perf_counter() - t0)
    return times


def time_cold_build(lm: PrunableLM, plan: PruningPlan, repeats: int) -> list[float]:
    """Seconds to build every head / FFN slice of ``plan`` from an empty cache, ``repeats`` times."""
    imp = lm.importance
    times = []
    for _ in range(repeats):
        lm.set_importance(imp)  # same scores, empty slice cache
        sync(lm)
        t0 = time.perf_counter()
        for layer, keep in plan.heads:
            lm.head_slice(layer, keep)
        for layer, keep in plan.ffn:
            lm.ffn_slice(layer, keep)
        sync(lm)
        times.append(time.perf_counter() - t0)
    return times


def naive_step(lm: PrunableLM, text: str, plan: PruningPlan, max_new_tokens: int) -> None:
    """The uncached step: full generation, pruned generation, prompt ppl, ppl of both answers."""
    ids = lm.encode_prompt(text, max_new_tokens=max_new_tokens)
    full = lm.generate(ids, max_new_tokens)
    lm.text_perplexity(text)
    with lm.apply(plan):
        pruned = lm.generate(ids, max_new_tokens)
        if pruned.output_ids:
            lm.score(ids, list(pruned.output_ids))
    if full.output_ids:
        lm.score(ids, list(full.output_ids))


# ----------------------------------------------------------------------------- the work model of skipping layers


def parse_ks(text: str, num_layers: int) -> list[int]:
    """``"1,L/8,3L/4"`` -> sorted distinct layer counts for a model of ``num_layers`` layers (each >= 1).

    Raises ``ValueError`` naming an entry that is not an integer or ``aL/b``, or that is not in 1..L-1.
    """
    ks: set[int] = set()
    for raw in text.split(","):
        item = raw.strip().replace(" ", "")
        if not item:
            continue
        if "L" in item:
            num, _, den = item.partition("/")
            coeff = num.replace("L", "") or "1"
            try:
                k = int(coeff) * num_layers // int(den or "1")
            except ValueError as e:
                raise ValueError(f"ks entry {raw!r} is neither an integer nor of the form aL/b") from e
            k = max(1, k)
        else:
            try:
                k = int(item)
            except ValueError as e:
                raise ValueError(f"ks entry {raw!r} is neither an integer nor of the form aL/b") from e
        if not 1 <= k < num_layers:
            raise ValueError(f"ks entry {raw!r} gives k={k}; k must be in 1..{num_layers - 1}")
        ks.add(k)
    if not ks:
        raise ValueError(f"ks {text!r} names no layer count")
    return sorted(ks)


def _linear_params(module: torch.nn.Module) -> int:
    """Weights (and biases) of the ``nn.Linear`` modules under ``module``: the parameters that are matmuls."""
    return sum(p.numel() for m in module.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())


def param_counts(lm: PrunableLM) -> dict[str, Any]:
    """Parameter counts by role, read from the loaded model itself."""
    model = lm.model
    layers = list(lm.decoder.layers)
    per_layer = [_linear_params(layer) for layer in layers]
    per_layer_norm = [sum(p.numel() for p in layer.parameters()) - n
                      for layer, n in zip(layers, per_layer, strict=True)]
    embed = lm.decoder.embed_tokens.weight
    head = model.lm_head.weight
    g = lm.geometry
    return {
        "layer_matmul": per_layer,
        "layer_elementwise": per_layer_norm,
        "lm_head_matmul": head.numel(),
        "embedding_lookup": embed.numel(),
        "tied_embeddings": embed.data_ptr() == head.data_ptr(),
        "final_norm": sum(p.numel() for p in lm.decoder.norm.parameters()),
        "vocab_size": g.vocab_size,
        "hidden_size": g.hidden_size,
        "attention_width": [h * g.head_dim for h in g.num_heads],
        "total_unique": sum(p.numel() for p in model.parameters()),
    }


def work_model(counts: dict[str, Any], prompt_tokens: int, new_tokens: int, skipped: set[int]) -> dict[str, float]:
    """Multiply-accumulates of one generation, split into what skipping shrinks and what it does not.

    The formula and its assumptions:

    - A decoder layer costs ``P_i`` MACs per token that passes through it, ``P_i`` being its
      ``nn.Linear`` parameter count (q, k, v, o, gate, up, down), plus attention over the KV
      cache: ``2 * W_i * c`` MACs for a token at context length ``c`` (``QK^T`` and ``AV``,
      ``W_i`` = query heads x head dim). RMSNorms and the residual adds are elementwise and
      left out (``layer_elementwise``: a few thousand numbers per layer).
    - Tokens through the layers: the prompt's ``n`` in the prefill, then ``N - 1`` single-token
      decode steps (the last generated token is never fed back); exactly ``N`` new tokens.
    - Fixed work, whatever the plan: the lm_head (``V x H`` MACs) once per produced token (the
      prefill keeps the logits of its last position only, ``logits_to_keep=1``); sampling (greedy
      argmax over ``V`` logits, counted as ``V``); the final norm (``H``). The embedding is a
      lookup (a row copy), not a matmul: 0 MACs, even when its matrix is tied to the lm_head.
    - Time is proportional to this work. This holds when compute-bound (large prefills) and,
      for batch-1 decode, when bound by memory bandwidth too, since every weight matrix is
      read once per forward pass (bytes are parameters x dtype size, the same ratio). What it
      leaves out is per-step overhead that does not scale with parameters (the Python decode
      loop, kernel launches, allocator work): that is what ``measured / bound`` < 1 shows.

    Returns the prefill, decode and total MACs, each with its fixed (unshrinkable) part.
    """
    n, big_n = prompt_tokens, new_tokens
    kept = [i for i in range(len(counts["layer_matmul"])) if i not in skipped]
    fixed_per_token = counts["lm_head_matmul"] + counts["vocab_size"] + counts["hidden_size"]

    def layers_work(tokens: int, context_sum: int) -> float:
        # tokens through each kept layer x its matmul params + attention over the cached context
        return float(sum(tokens * counts["layer_matmul"][i] + 2 * counts["attention_width"][i] * context_sum
                         for i in kept))

    # prefill: n tokens; token t (1-based) attends to t positions
    prefill_layers = layers_work(n, n * (n + 1) // 2)
    prefill_fixed = float(fixed_per_token)  # one position's logits
    # decode: N - 1 steps; step j feeds one token at context n + j
    steps = max(0, big_n - 1)
    decode_layers = layers_work(steps, sum(n + j for j in range(1, steps + 1)))
    decode_fixed = float(steps * fixed_per_token)
    return {
        "prefill": prefill_layers + prefill_fixed,
        "prefill_fixed": prefill_fixed,
        "decode": decode_layers + decode_fixed,
        "decode_fixed": decode_fixed,
        "total": prefill_layers + prefill_fixed + decode_layers + decode_fixed,
        "total_fixed": prefill_fixed + decode_fixed,
    }


def smoke_table(folder: Path) -> Path:
    """A small table on tiny-llama (both splits), built by the same code as the shipped one."""
    import torch

    from dynprune.latency_model import LatencyCalibration, calibrate_latency
    from dynprune.models import load_model
    from dynprune.table import build_table
    from dynprune.tasks import load_prompts

    torch.set_num_threads(1)
    lm = load_model("tiny-llama", device="cpu", calibrate=True)
    every = load_prompts("dynprune", split=None)
    prompts = [p for p in every if p.split == "train"][:6] + [p for p in every if p.split == "test"][:4]
    lat, _ = calibrate_latency(lm, LatencyCalibration(points=8, repeats=1, prompt_tokens=(4, 32), new_tokens=(2, 4)))
    return build_table(lm, prompts, folder / "smoke.parquet", max_new_tokens=4, latency_model=lat, progress=None)


# ----------------------------------------------------------------------------- peak memory of a region


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss() -> int:
    """Resident set size of this process, bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_during(fn: Callable[[], Any], device: Any = None) -> dict[str, Any]:
    """Run ``fn`` and return the RSS before it and the peak RSS during it (and peak VRAM on CUDA), bytes.

    Method: reset the kernel's peak mark (``/proc/self/clear_refs`` = 5) and read ``VmHWM``
    after; where that is not possible, sample RSS every millisecond in a thread.
    """
    import gc

    import torch

    gc.collect()
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        vram_before = torch.cuda.memory_allocated(device)
    lifetime_peak = _status_kib("VmHWM")
    before = current_rss()
    method = "VmHWM after /proc/self/clear_refs=5"
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        sampler = None
    except OSError:
        method = "psutil RSS sampled every 1 ms"
        peak_box = {"peak": before}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak_box["peak"] = max(peak_box["peak"], current_rss())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    if sampler is None:
        hwm = _status_kib("VmHWM")
        peak = hwm * 1024 if hwm is not None else current_rss()
    else:
        stop.set()
        sampler.join()
        peak = max(peak_box["peak"], current_rss())
    out: dict[str, Any] = {
        "rss_before": before,
        "peak_rss": peak,
        "delta_rss": peak - before,
        "process_peak_before": lifetime_peak * 1024 if lifetime_peak is not None else None,
        "method": method,
        "seconds": seconds,
    }
    if cuda:
        torch.cuda.synchronize(device)
        out.update(vram_before=vram_before, peak_vram_allocated=torch.cuda.max_memory_allocated(device),
                   peak_vram_reserved=torch.cuda.max_memory_reserved(device))
    return out
