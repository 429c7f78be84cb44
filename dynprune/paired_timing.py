"""Time a plan and the full model side by side, one forward pass each in turn, so both see the same load.

A live speed-up compares two timings. Taken at different moments (the full model when a
prompt was first seen, the plan later) they compare two loads as much as two models: on a
shared CPU two back-to-back runs of the same model differ by -35..+15 %. Here the two models
generate the same number of tokens after the same prompt with one KV cache each, their forward
passes alternating (prefill, prefill, step, step, ...; who goes first alternates), so any load
that lasts longer than one forward pass (tens of milliseconds) slows both alike and the ratio of
their sums is the plan's speed-up under that load.

Both generate greedily for exactly ``n`` tokens (end-of-sequence ignored: equal work). Only the
forward passes and argmaxes are timed; putting the plan in place and taking it out between two
passes (an attribute swap, ``PrunableLM.apply``) is not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dynprune.generation import forward_with_cache
from dynprune.metrics import Timer
from dynprune.models import PrunableLM
from dynprune.plan import PruningPlan
from dynprune.types import GenerationResult, PairedRun


class _Stream:
    """One model's side of a paired generation: its cache, its tokens, its clocks."""

    def __init__(self, lm: PrunableLM, plan: PruningPlan | None) -> None:
        self.lm, self.plan = lm, plan
        # laid out for the plan's kept layers (each slot of its layer's own type: sliding windows)
        self.cache = lm.new_cache(plan)
        self.out: list[int] = []
        self.prefill_s = 0.0
        self.steps: list[float] = []

    def step(self, input_ids: torch.Tensor, prefill: bool) -> None:
        """One timed forward pass and greedy pick, under the plan when there is one."""
        if self.plan is None:
            self._forward(input_ids, prefill)
        else:
            with self.lm.apply(self.plan):
                self._forward(input_ids, prefill)

    def _forward(self, input_ids: torch.Tensor, prefill: bool) -> None:
        with Timer(self.lm.device) as t:
            logits = forward_with_cache(self.lm.model, input_ids, self.cache, logits_to_keep=1)
            token = int(logits[0, -1].argmax(-1))
        if prefill:
            self.prefill_s = t.seconds
        else:
            self.steps.append(t.seconds)
        self.out.append(token)

    def result(self, prompt_ids: Sequence[int]) -> GenerationResult:
        decode_s = sum(self.steps)
        latency = self.prefill_s + decode_s
        return GenerationResult(
            prompt_ids=tuple(prompt_ids), output_ids=tuple(self.out), text=self.lm.decode_ids(self.out),
            prefill_s=self.prefill_s, decode_s=decode_s, latency_s=latency, new_tokens=len(self.out),
            tokens_per_s=len(self.out) / latency if latency > 0 else float("inf"), produced=len(self.out),
        )


@torch.inference_mode()
def paired_generate(lm: PrunableLM, plan: PruningPlan, prompt_ids: Sequence[int], n_tokens: int) -> PairedRun:
    """Generate ``n_tokens`` greedy tokens with the full model and with ``plan``, forward passes interleaved.

    Returns both timed generations (:class:`~dynprune.types.PairedRun`); their latency ratio is
    the plan's speed-up under the load of this moment.
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    if lm.active_plan is not None:
        raise RuntimeError("paired_generate applies the plan itself; call it outside lm.apply(...)")
    if len(prompt_ids) + n_tokens > lm.geometry.max_position:
        raise ValueError(f"{len(prompt_ids)} prompt tokens + {n_tokens} new exceed context {lm.geometry.max_position}")
    lm.validate(plan)
    full, pruned = _Stream(lm, None), _Stream(lm, plan)
    prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=lm.device)
    for i in range(n_tokens):
        # who goes first alternates, so neither always runs on a cache the other just warmed
        order = (full, pruned) if i % 2 == 0 else (pruned, full)
        for s in order:
            inp = prompt if i == 0 else torch.tensor([[s.out[-1]]], dtype=torch.long, device=lm.device)
            s.step(inp, prefill=i == 0)
    return PairedRun(full=full.result(prompt_ids), pruned=pruned.result(prompt_ids),
                     full_steps=tuple(full.steps), pruned_steps=tuple(pruned.steps))
