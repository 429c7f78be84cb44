"""Prompt complexity features: token count, prompt perplexity, complexity score.

The complexity score is CASRAP's: ``0.6 * min(1, tokens / 200) + 0.4 * min(1, ppl / 50)``
(CASRAP: RL-driven runtime pruning). Both inputs are measured on the raw prompt
text (no chat template) under the *full* model: the template's fixed tokens would
dilute the signal, and the features must not depend on the agent's choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dynprune.types import PromptFeatures

if TYPE_CHECKING:
    from dynprune.models import PrunableLM

TOKENS_SCALE = 200.0
PPL_SCALE = 50.0


def complexity_score(n_tokens: int, perplexity: float) -> float:
    """CASRAP complexity: ``0.6*min(1, n/200) + 0.4*min(1, ppl/50)``, in [0, 1]."""
    if n_tokens < 0:
        raise ValueError(f"token count must be >= 0, got {n_tokens}")
    if not perplexity >= 0:
        raise ValueError(f"perplexity must be >= 0, got {perplexity}")
    return 0.6 * min(1.0, n_tokens / TOKENS_SCALE) + 0.4 * min(1.0, perplexity / PPL_SCALE)


def prompt_features(lm: PrunableLM, text: str) -> PromptFeatures:
    """Measure a prompt's features under ``lm`` (which must be unpruned)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"prompt must be a non-empty string, got {text!r}")
    ids = lm.encode_text(text)
    if len(ids) + 1 > lm.geometry.max_position:
        raise ValueError(
            f"prompt is {len(ids)} tokens; the model's context is {lm.geometry.max_position} tokens"
        )
    score = lm.score([lm.bos_id], ids)
    return PromptFeatures(
        n_tokens=len(ids),
        perplexity=score.perplexity,
        complexity=complexity_score(len(ids), score.perplexity),
    )
