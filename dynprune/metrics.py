"""Measurements: timing, fidelity to the full model, task scores.

Timing follows one rule: on a GPU, CUDA events recorded on the stream after a
warm-up, read after a synchronise; on a CPU, ``time.perf_counter`` with torch's
thread count fixed (:func:`fix_threads`) so runs compare. A timing is only ever
reported as a ratio against a baseline measured in the same run.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence

import torch

from dynprune.fncall import score_calls
from dynprune.types import Fidelity

__all__ = [
    "Timer",
    "fidelity",
    "fix_threads",
    "perplexity",
    "score_calls",
    "task_score",
]


def fix_threads(n: int | None = None) -> int:
    """Fix torch's intra-op thread count (default: all physical cores torch sees); return it."""
    if n is not None:
        if n < 1:
            raise ValueError(f"thread count must be >= 1, got {n}")
        torch.set_num_threads(n)
    return torch.get_num_threads()


class Timer:
    """Wall-clock timer for one region of device work.

    Use ``with Timer(device) as t: ...`` then read ``t.seconds``. On CUDA it
    records events on the current stream and synchronises on exit, so the time
    covers the kernels, not just their launch; on CPU it is ``perf_counter``.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.seconds = 0.0
        self._cuda = self.device.type == "cuda"

    def __enter__(self) -> Timer:
        if self._cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


def perplexity(nll: float) -> float:
    """Perplexity from a mean negative log-likelihood in nats (capped to avoid overflow)."""
    return math.exp(min(nll, 700.0))


def fidelity(output_ids: Sequence[int], reference_ids: Sequence[int]) -> Fidelity:
    """Agreement of a pruned model's greedy output with the full model's.

    ``token_agreement`` compares position by position over the longer sequence
    (a missing token is a mismatch), ``prefix_agreement`` is the common-prefix
    length over the reference length, ``exact_match`` is 1.0 for identical outputs.
    Two empty outputs agree fully.
    """
    out, ref = list(output_ids), list(reference_ids)
    longest = max(len(out), len(ref))
    if longest == 0:
        return Fidelity(1.0, 1.0, 1.0)
    same = sum(1 for a, b in zip(out, ref, strict=False) if a == b)
    prefix = 0
    for a, b in zip(out, ref, strict=False):
        if a != b:
            break
        prefix += 1
    return Fidelity(
        token_agreement=same / longest,
        prefix_agreement=prefix / len(ref) if ref else float(not out),
        exact_match=float(out == ref),
    )


_WS = re.compile(r"\s+")


def _normalise(text: str) -> str:
    return _WS.sub(" ", text.lower()).strip().rstrip(".")


def task_score(output: str, answer: str | None) -> float | None:
    """1.0 when the gold ``answer`` occurs in ``output`` (case- and space-insensitive), else 0.0.

    Numbers match as whole tokens, so "12" does not earn credit inside "312".
    Returns ``None`` when there is no gold answer.
    """
    if answer is None:
        return None
    gold, text = _normalise(answer), _normalise(output)
    if not gold:
        raise ValueError("gold answer is empty")
    if re.fullmatch(r"-?\d+(\.\d+)?", gold):
        nums = re.findall(r"-?\d+(?:,\d{3})*(?:\.\d+)?", text)
        return float(any(_same_number(n.replace(",", ""), gold) for n in nums))
    return float(gold in text)


def _same_number(a: str, b: str) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-9)
    except ValueError:
        return False
