"""Token windows for calibration, healing and evaluation, cut from a prompt split.

Each prompt's text (followed by its gold answer when it has one) is tokenised, the
texts are joined by the end-of-sequence token and the stream is cut into
non-overlapping windows. Unlike :func:`dynprune.importance.calibration_windows` the
stream is never cycled, so a held-out window can never repeat a training window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from dynprune.importance import token_stream

if TYPE_CHECKING:
    from dynprune.models import PrunableLM
    from dynprune.types import Prompt


def prompt_texts(prompts: Sequence[Prompt]) -> list[str]:
    """``text`` (plus ``" " + answer`` when the prompt has a gold answer) of each prompt."""
    return [p.text + (f" {p.answer}" if p.answer else "") for p in prompts]


def split_prompts(split: str) -> list[Prompt]:
    """The shipped prompt set's ``"train"`` or ``"test"`` split."""
    from dynprune.tasks import load_prompts

    return load_prompts("dynprune", split=split)


def token_windows(lm: PrunableLM, texts: Sequence[str], seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """``[n, seq_len]`` non-overlapping windows of the texts joined by EOS (at most ``max_windows``).

    Raises ``ValueError`` when the texts give no full window.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be >= 1 or None, got {max_windows}")
    stream = token_stream(lm, texts)
    n = len(stream) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(f"the texts give {len(stream)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)
