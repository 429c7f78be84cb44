"""Timed greedy / sampled decoding and teacher-forced scoring with a KV cache.

A short explicit loop (nanoGPT style) instead of ``model.generate``: it times
prefill (time to first token) and decode separately, has no logits-processor
overhead, and runs unchanged under any pruning plan because it only calls the
model's forward with transformers' own ``DynamicCache``.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from transformers import Cache, DynamicCache

from dynprune.metrics import Timer, perplexity
from dynprune.pruning.kv import prefill_chunk
from dynprune.types import ScoreResult


def cache_keyword(model: nn.Module) -> str:
    """The name under which ``model.forward`` takes a KV cache object.

    transformers 5.24 renamed ``past_key_values=`` to ``cache=`` (the old name warns and goes
    in 5.40); earlier 5.x releases (5.17 on the GPU image, for one) only know the old name.
    """
    return _cache_keyword(type(model))


@functools.cache
def _cache_keyword(model_class: type) -> str:
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward_with_cache(model: nn.Module, input_ids: torch.Tensor, cache: Cache, **kwargs: object) -> torch.Tensor:
    """Run ``model`` on ``input_ids`` through ``cache`` (updated in place); return the logits.

    Under a KV-window plan a long input runs in chunks (``dynprune.pruning.kv.prefill_chunk``), so
    no pass holds more than a chunk's scores and the cache no more than the window and a chunk;
    the logits are those of one pass.
    """
    kwargs[cache_keyword(model)] = cache
    chunk = prefill_chunk(model) if input_ids.shape[1] > 1 else None
    if chunk is None or input_ids.shape[1] <= chunk:
        return model(input_ids=input_ids, use_cache=True, **kwargs).logits
    keep = kwargs.pop("logits_to_keep", 0)
    pieces = list(torch.split(input_ids, chunk, dim=1))
    last_only = isinstance(keep, int) and 0 < keep <= pieces[-1].shape[1]
    rows = []
    for i, piece in enumerate(pieces):
        if last_only and i < len(pieces) - 1:
            model(input_ids=piece, use_cache=True, logits_to_keep=1, **kwargs)  # fills the cache only
            continue
        rows.append(model(input_ids=piece, use_cache=True, logits_to_keep=keep if last_only else 0, **kwargs).logits)
    logits = torch.cat(rows, dim=1)
    return logits if last_only or not keep else logits[:, -keep:]


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature <= 0.0:
        return int(logits.argmax(-1))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def decode(
    model: nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    eos_ids: Iterable[int],
    *,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    ignore_eos: bool = False,
) -> tuple[list[int], int, float, float]:
    """Generate up to ``max_new_tokens`` tokens after ``prompt_ids``.

    With ``ignore_eos`` decoding runs for exactly ``max_new_tokens`` tokens (an
    end-of-sequence token is kept in the output): timings of different plans then
    cover the same amount of work.

    Returns ``(output_ids, produced, prefill_s, decode_s)``: ``output_ids`` has
    no end-of-sequence token; ``produced`` counts every token the model emitted,
    an end-of-sequence token included (it cost a forward pass like any other).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    device = next(model.parameters()).device
    eos = set() if ignore_eos else set(eos_ids)
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    cache = DynamicCache(config=model.config)
    out: list[int] = []
    with Timer(device) as prefill:
        logits = forward_with_cache(model, ids, cache, logits_to_keep=1)
        token = _pick(logits[0, -1], temperature, generator)
    produced = 1
    with Timer(device) as rest:
        while token not in eos:
            out.append(token)
            if len(out) >= max_new_tokens:
                break
            step = torch.tensor([[token]], dtype=torch.long, device=device)
            logits = forward_with_cache(model, step, cache, logits_to_keep=1)
            token = _pick(logits[0, -1], temperature, generator)
            produced += 1
    return out, produced, prefill.seconds, rest.seconds


@torch.inference_mode()
def teacher_forced(model: nn.Module, context_ids: Sequence[int], target_ids: Sequence[int]) -> ScoreResult:
    """Score ``target_ids`` after ``context_ids`` in one forward pass.

    Returns the mean NLL and perplexity of the target tokens, and the fraction of
    target positions where the model's argmax is the target token (teacher-forced
    agreement: the quality signal that needs no generation).
    """
    if not context_ids:
        raise ValueError("context_ids is empty; prepend a BOS token to score from the start")
    if not target_ids:
        raise ValueError("target_ids is empty; nothing to score")
    device = next(model.parameters()).device
    ids = torch.tensor([list(context_ids) + list(target_ids)], dtype=torch.long, device=device)
    n = len(target_ids)
    with Timer(device) as t:
        # Only the positions that predict target tokens need vocabulary logits.
        logits = model(input_ids=ids, use_cache=False, logits_to_keep=n + 1).logits[0, :-1].float()
        target = ids[0, -n:]
        logprobs = torch.log_softmax(logits, dim=-1)
        nll = float(-logprobs.gather(1, target[:, None]).mean())
        argmax = logits.argmax(-1)
        agree = float((argmax == target).float().mean())
    return ScoreResult(
        nll=nll,
        perplexity=perplexity(nll),
        n_tokens=n,
        agreement=agree,
        argmax_ids=tuple(argmax.tolist()),
        forward_s=t.seconds,
    )


@torch.inference_mode()
def decode_and_score(
    model: nn.Module, prompt_ids: Sequence[int], n_tokens: int, target_ids: Sequence[int]
) -> tuple[list[int], float, float, ScoreResult]:
    """Generate exactly ``n_tokens`` greedy tokens (timed), then score ``target_ids`` after the prompt.

    The scoring reuses the generation's KV cache, put back to the prompt's state, so the
    prompt is run once for both: the scoring pass costs ``len(target_ids)`` tokens, not
    ``len(prompt) + len(target_ids)``. Only the generation is timed. Returns
    ``(output_ids, prefill_s, decode_s, score)``.
    """
    if n_tokens < 1 or not target_ids:
        raise ValueError(f"need n_tokens >= 1 and a non-empty target, got {n_tokens} and {len(target_ids)}")
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long, device=device)
    cache = DynamicCache(config=model.config)
    out: list[int] = []
    with Timer(device) as prefill:
        first_logits = forward_with_cache(model, ids, cache, logits_to_keep=1)[0, -1]
        token = int(first_logits.argmax(-1))
    # The prompt's cache, kept for the scoring pass. Decode steps replace each layer's tensors
    # (transformers cache_utils: DynamicLayer.update concatenates, a sliding-window layer slices
    # the result) and never write into them, so shallow copies of the layers are an exact snapshot.
    # ``cache.crop`` cannot do this for sliding-window layers (Mistral, Qwen2/3 windows) once
    # prompt + answer pass the window: it raises, and with past recording transformers 5.17
    # returns more states than the mask covers.
    prompt_layers = [copy.copy(layer) for layer in cache.layers]
    with Timer(device) as rest:
        out.append(token)
        while len(out) < n_tokens:
            step = torch.tensor([[token]], dtype=torch.long, device=device)
            logits = forward_with_cache(model, step, cache, logits_to_keep=1)
            token = int(logits[0, -1].argmax(-1))
            out.append(token)
    t0 = Timer(device)
    with t0:
        cache.layers = prompt_layers  # back to the prompt alone
        target = torch.tensor(list(target_ids), dtype=torch.long, device=device)
        rows = [first_logits[None].float()]
        if len(target_ids) > 1:
            rest_logits = forward_with_cache(model, target[None, :-1], cache)[0]
            rows.append(rest_logits.float())
        logits = torch.cat(rows, dim=0)
        logprobs = torch.log_softmax(logits, dim=-1)
        nll = float(-logprobs.gather(1, target[:, None]).mean())
        argmax = logits.argmax(-1)
        agree = float((argmax == target).float().mean())
    score = ScoreResult(
        nll=nll,
        perplexity=perplexity(nll),
        n_tokens=len(target_ids),
        agreement=agree,
        argmax_ids=tuple(argmax.tolist()),
        forward_s=t0.seconds,
    )
    return out, prefill.seconds, rest.seconds, score
