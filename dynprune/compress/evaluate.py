"""Evaluate a compressed model against its source: size, speed, perplexity, fidelity, task score.

Everything is measured in one run on the same machine:

- **size**: :func:`~dynprune.compress.folder.model_size_bytes` of both models, and their ratio;
- **speed**: greedy decoding of exactly ``timing_tokens`` tokens (EOS ignored) after the same
  prompt, source and compressed runs interleaved (A B, then B A, ...) so slow drifts of a shared
  machine hit both; the speed-up of a repeat is ``T_source / T_compressed`` of that repeat,
  reported as median and min / max over repeats, with latencies and tokens/s;
- **perplexity**: token-weighted over non-overlapping windows of the held-out prompts;
- **fidelity**: teacher-forced argmax agreement with the source over those windows, the mean
  KL(source || compressed) per token, and the token agreement / exact match of greedy answers
  to held-out prompts with the source's answers (:func:`dynprune.metrics.fidelity`);
- **task score**: gold answer contained in the greedy answer (:func:`dynprune.metrics.task_score`),
  on the held-out prompts that carry one.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from dynprune.compress.data import prompt_texts, split_prompts, token_windows
from dynprune.compress.folder import model_size_bytes
from dynprune.generation import decode
from dynprune.metrics import fidelity, task_score
from dynprune.validation import require_at_least

if TYPE_CHECKING:
    from dynprune.models import PrunableLM
    from dynprune.types import Prompt

MB = 2**20


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation.

    Attributes:
        n_prompts: Held-out prompts answered greedily by both models (fidelity, task score).
        max_new_tokens: Answer length limit of those generations.
        repeats: Timed repeats per model (interleaved with the source).
        timing_tokens: Tokens generated per timed run (EOS ignored: equal work).
        seq_len: Tokens per perplexity window.
        max_windows: Perplexity windows at most.
    """

    n_prompts: int = 10
    max_new_tokens: int = 24
    repeats: int = 5
    timing_tokens: int = 32
    seq_len: int = 64
    max_windows: int = 32

    def __post_init__(self) -> None:
        require_at_least(self, 1, "n_prompts", "max_new_tokens", "repeats", "timing_tokens", "max_windows")
        require_at_least(self, 2, "seq_len")


@torch.inference_mode()
def _window_stats(model: nn.Module, windows: torch.Tensor, device: torch.device) -> tuple[float, torch.Tensor]:
    """Token-weighted mean NLL over ``windows`` and the log-probabilities (float32, CPU)."""
    logps = []
    nll_sum, count = 0.0, 0
    for w in windows:
        ids = w[None].to(device)
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
        logp = F.log_softmax(logits, dim=-1)
        target = ids[0, 1:]
        nll_sum += float(-logp.gather(-1, target[:, None]).sum())
        count += target.numel()
        logps.append(logp.cpu())
    return nll_sum / count, torch.stack(logps)


def _held_out(n: int) -> list[Prompt]:
    """The first ``n`` test prompts with a gold answer, then without (a fixed, source-order choice)."""
    pool = split_prompts("test")
    ordered = [p for p in pool if p.answer] + [p for p in pool if not p.answer]
    return ordered[:n]


@dataclass
class Reference:
    """The source model's side of an evaluation, measured once and reused for every compressed model.

    Attributes:
        config: The settings it was measured with.
        windows: Held-out token windows (perplexity, teacher-forced fidelity).
        nll: Source mean NLL over the windows.
        logp: Source log-probabilities over the windows.
        prompts: Held-out prompts answered greedily.
        prompt_ids: Their token ids.
        answers: The source's greedy answers.
        size_bytes: Source size (:func:`model_size_bytes`).
    """

    config: EvalConfig
    windows: torch.Tensor
    nll: float
    logp: torch.Tensor
    prompts: list[Prompt]
    prompt_ids: list[list[int]]
    answers: list[list[int]]
    size_bytes: int


def reference(source: PrunableLM, config: EvalConfig | None = None) -> Reference:
    """Measure the source model's side of :func:`evaluate` once."""
    config = config or EvalConfig()
    if source.active_plan is not None:
        raise RuntimeError("evaluate against the full source model: call outside lm.apply(...)")
    prompts = _held_out(config.n_prompts)
    windows = token_windows(source, prompt_texts(split_prompts("test")), config.seq_len, config.max_windows)
    nll, logp = _window_stats(source.model, windows, source.device)
    ids = [source.encode_prompt(p.text, max_new_tokens=config.max_new_tokens) for p in prompts]
    answers = [decode(source.model, i, config.max_new_tokens, source.eos_ids)[0] for i in ids]
    return Reference(config, windows, nll, logp, prompts, ids, answers, model_size_bytes(source.model))


def evaluate(
    source: PrunableLM, model: nn.Module, config: EvalConfig | None = None, ref: Reference | None = None
) -> dict[str, Any]:
    """Measure ``model`` (a compressed copy of ``source.model``) against ``source``; a JSON-ready dict.

    Pass ``ref`` (from :func:`reference` with the same config) to reuse the source's measurements.
    """
    config = config or (ref.config if ref is not None else EvalConfig())
    if ref is None:
        ref = reference(source, config)
    elif ref.config != config:
        raise ValueError(f"reference was measured with {ref.config}, not with {config}")
    device = next(model.parameters()).device
    size = model_size_bytes(model)
    nll, logp = _window_stats(model, ref.windows, device)
    agreement = float((logp.argmax(-1) == ref.logp.argmax(-1)).float().mean())
    # KL(p_source || p_compressed) per token position
    kl = float((ref.logp.exp() * (ref.logp - logp)).sum(-1).mean())

    agree, exact, scores, src_scores = [], [], [], []
    for p, ids, answer in zip(ref.prompts, ref.prompt_ids, ref.answers, strict=True):
        out = decode(model, ids, config.max_new_tokens, source.eos_ids)[0]
        fid = fidelity(out, answer)
        agree.append(fid.token_agreement)
        exact.append(fid.exact_match)
        if p.answer:
            scores.append(task_score(source.decode_ids(out), p.answer))
            src_scores.append(task_score(source.decode_ids(answer), p.answer))

    timing = time_pair(source, model, config)
    return {
        "size_mb": size / MB,
        "source_size_mb": ref.size_bytes / MB,
        "compression_ratio": ref.size_bytes / size,
        "num_layers": len(model.model.layers),
        "perplexity": math.exp(min(nll, 700.0)),
        "source_perplexity": math.exp(min(ref.nll, 700.0)),
        "teacher_forced_agreement": agreement,
        "kl_to_source": kl,
        "generation_token_agreement": statistics.fmean(agree),
        "generation_exact_match": statistics.fmean(exact),
        "task_score": statistics.fmean(scores) if scores else None,
        "source_task_score": statistics.fmean(src_scores) if src_scores else None,
        "n_task_prompts": len(scores),
        **timing,
        "config": asdict(config),
        "n_windows": int(ref.windows.shape[0]),
        "n_prompts": len(ref.prompts),
        "device": str(device),
    }


def time_pair(source: PrunableLM, model: nn.Module, config: EvalConfig) -> dict[str, Any]:
    """Interleaved timing of source and compressed greedy decoding; speed-up per repeat."""
    prompt = _held_out(1)[0]
    ids = source.encode_prompt(prompt.text, max_new_tokens=config.timing_tokens)
    runs = {"source": source.model, "compressed": model}
    for m in runs.values():  # warm-up: allocators, kernels, quantised packing
        decode(m, ids, 4, set(), ignore_eos=True)
    lat: dict[str, list[float]] = {"source": [], "compressed": []}
    for r in range(config.repeats):
        order = ("source", "compressed") if r % 2 == 0 else ("compressed", "source")
        for name in order:
            _, produced, pre, dec = decode(runs[name], ids, config.timing_tokens, set(), ignore_eos=True)
            lat[name].append(pre + dec)
    ratios = [s / c for s, c in zip(lat["source"], lat["compressed"], strict=True)]
    n = config.timing_tokens
    return {
        "latency_ms": statistics.median(lat["compressed"]) * 1e3,
        "source_latency_ms": statistics.median(lat["source"]) * 1e3,
        "tokens_per_s": n / statistics.median(lat["compressed"]),
        "source_tokens_per_s": n / statistics.median(lat["source"]),
        "speedup": {
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
            "n": len(ratios),
        },
        "latency_compressed_s": lat["compressed"],
        "latency_source_s": lat["source"],
        "prompt_tokens": len(ids),
        "timing_tokens": n,
    }
