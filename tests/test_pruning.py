"""Pruning is exact and reversible: random plans against an independent reference model.

Tolerance: logits under a plan match the from-scratch float64 reference to
``ATOL = 1e-4`` (logits are O(10); the residual gap, ~1e-5, is transformers'
RMSNorm computing in float32 even for a float64 model). Greedy generation with
the KV cache must equal the reference's cache-free greedy decoding token for
token, and after restore the logits must equal the original bit for bit.
"""

from __future__ import annotations

import random

import pytest
import torch
from reference_llama import ReferenceLlama
from torch import nn

from dynprune.plan import PruningPlan

ATOL = 1e-4
N_PLANS = 200
PROMPTS = ["hello there, how are you?", "2+2=", "def f(x): return x", "Paris is the capital of"]


class ResidualAdapter(nn.Module):
    """A random bottleneck adapter: x + up(relu(down(x)))."""

    def __init__(self, hidden: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.down = nn.Linear(hidden, 8, dtype=torch.float64)
        self.up = nn.Linear(8, hidden, dtype=torch.float64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.relu(self.down(x)))


def random_plan(rng: random.Random, lm, adapters: dict[int, nn.Module]) -> PruningPlan:
    g = lm.geometry
    layers = list(range(g.num_layers))
    rng.shuffle(layers)
    n_removed = rng.randint(0, g.num_layers - 1)
    removed = layers[:n_removed]
    n_adapt = rng.randint(0, len(removed))
    adapt, skip = removed[:n_adapt], removed[n_adapt:]
    heads, ffn = {}, {}
    for i in layers[n_removed:]:
        if rng.random() < 0.6:
            heads[i] = rng.randint(1, g.num_heads[i])
        if rng.random() < 0.6:
            ffn[i] = rng.randint(1, g.intermediate_size[i])
    return PruningPlan(
        skip=skip, adapters=adapt, heads=heads, ffn=ffn, modules={i: adapters[i] for i in adapt}, geometry=g
    )


def kept_heads_by_importance(lm, layer: int, keep: int) -> tuple[int, ...]:
    """Top-``keep`` heads by calibrated importance, ties to the lower index; computed here, not by the engine."""
    scores = lm.importance.heads[layer]
    order = sorted(range(len(scores)), key=lambda h: (-scores[h], h))
    return tuple(sorted(order[:keep]))


def kept_channels_by_importance(lm, layer: int, keep: int) -> tuple[int, ...]:
    scores = lm.importance.channels[layer]
    order = sorted(range(len(scores)), key=lambda c: (-scores[c], c))
    return tuple(sorted(order[:keep]))


def structure(lm, plan: PruningPlan) -> dict:
    return {
        "skip": plan.skip,
        "adapters": dict(plan.modules),
        "kept_heads": {i: kept_heads_by_importance(lm, i, k) for i, k in plan.heads},
        "kept_channels": {i: kept_channels_by_importance(lm, i, k) for i, k in plan.ffn},
    }


@pytest.fixture(scope="module")
def reference(tiny_lm) -> ReferenceLlama:
    return ReferenceLlama(tiny_lm.model)


def test_full_model_matches_reference(tiny_lm, reference):
    ids = tiny_lm.encode_prompt(PROMPTS[0])
    torch.testing.assert_close(tiny_lm.logits(ids)[0], reference.logits(ids), atol=ATOL, rtol=0)


def test_random_plans_match_reference_and_restore_exactly(tiny_lm, reference):
    rng = random.Random(1234)
    adapters = {
        i: ResidualAdapter(tiny_lm.geometry.hidden_size, seed=i) for i in range(tiny_lm.geometry.num_layers)
    }
    prompts = [tiny_lm.encode_prompt(p) for p in PROMPTS]
    originals = [tiny_lm.logits(ids) for ids in prompts]
    kinds = {"skip": 0, "adapters": 0, "heads": 0, "ffn": 0, "ragged": 0}
    for n in range(N_PLANS):
        plan = random_plan(rng, tiny_lm, adapters)
        ids = prompts[n % len(prompts)]
        with tiny_lm.apply(plan):
            got = tiny_lm.logits(ids)[0]
            gen = tiny_lm.generate(ids, max_new_tokens=6)
        want_struct = structure(tiny_lm, plan)
        torch.testing.assert_close(
            got,
            reference.logits(ids, **want_struct),
            atol=ATOL,
            rtol=0,
            msg=lambda m, p=plan: f"plan {p.describe()}: {m}",
        )
        want_tokens = reference.greedy(ids, 6, set(tiny_lm.eos_ids), **want_struct)
        assert list(gen.output_ids) == want_tokens, plan.describe()
        # the engine's choice of heads/channels is the importance ranking
        for i, k in plan.heads:
            assert tiny_lm.head_slice(i, k).kept_heads == want_struct["kept_heads"][i]
            kinds["ragged"] += tiny_lm.head_slice(i, k).ragged
        for i, k in plan.ffn:
            assert tiny_lm.ffn_slice(i, k).kept == want_struct["kept_channels"][i]
        assert torch.equal(tiny_lm.logits(ids), originals[n % len(prompts)]), "restore is not bit-exact"
        for kind in ("skip", "adapters", "heads", "ffn"):
            kinds[kind] += bool(getattr(plan, kind))
    # the random plans really mixed every op, ragged GQA groups included
    assert all(v > 10 for v in kinds.values()), kinds


def test_restore_after_exception(tiny_lm):
    ids = tiny_lm.encode_prompt(PROMPTS[1])
    before = tiny_lm.logits(ids)
    layers_before = list(tiny_lm.model.model.layers)
    with pytest.raises(KeyError):
        with tiny_lm.apply(PruningPlan(skip=[0, 2], heads={1: 3}, ffn={3: 7})):
            raise KeyError("boom")
    assert list(tiny_lm.model.model.layers) == layers_before
    assert torch.equal(tiny_lm.logits(ids), before)
    assert tiny_lm.active_plan is None


def test_apply_neither_copies_nor_reloads(tiny_lm):
    ptrs = {n: p.data_ptr() for n, p in tiny_lm.model.named_parameters()}
    plan = PruningPlan(skip=[1], heads={0: 5}, ffn={2: 64})
    with tiny_lm.apply(plan):
        pass
    first = tiny_lm.head_slice(0, 5)
    with tiny_lm.apply(plan):
        assert tiny_lm.head_slice(0, 5) is first  # cached profile, built once
    assert ptrs == {n: p.data_ptr() for n, p in tiny_lm.model.named_parameters()}


def test_whole_kv_group_removed_shrinks_kv_projection_and_cache(tiny_lm):
    g = tiny_lm.geometry
    d, group = g.head_dim, g.group_size[0]
    heads = tiny_lm.importance.heads[0]
    ranked = sorted(range(g.num_heads[0]), key=lambda h: (-heads[h], h))
    keep = 1  # a single head: only its group's K/V rows stay
    slc = tiny_lm.head_slice(0, keep)
    assert slc.kept_heads == (ranked[0],)
    assert slc.kept_groups == (ranked[0] // group,)
    assert slc.k.out_features == d and slc.v.out_features == d and slc.q.out_features == d
    assert slc.o.in_features == d
    from transformers import DynamicCache

    from dynprune.generation import forward_with_cache

    cache = DynamicCache(config=tiny_lm.model.config)
    ids = torch.tensor([tiny_lm.encode_prompt(PROMPTS[0])])
    with tiny_lm.apply(PruningPlan(heads={0: keep}, skip=[1])), torch.inference_mode():
        forward_with_cache(tiny_lm.model, ids, cache)
    assert cache.layers[0].keys.shape[1] == 1  # layer 0 caches one KV head
    assert cache.layers[1].keys.shape[1] == g.num_kv_heads[2]  # layer 2 moved to slot 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"skip": [4]}, "out of range"),
        ({"skip": [-1]}, "out of range"),
        ({"heads": {0: 0}}, "expected 1..8"),
        ({"heads": {0: 9}}, "expected 1..8"),
        ({"ffn": {1: 0}}, "expected 1..128"),
        ({"ffn": {1: 129}}, "expected 1..128"),
        ({"skip": [2, 2]}, "more than once"),
        ({"heads": [(1, 3), (1, 4)]}, "more than once"),
        ({"skip": [0, 1, 2, 3]}, "at least one must stay"),
        ({"skip": [1], "adapters": [1]}, "both skipped"),
        ({"skip": [1], "heads": {1: 2}}, "cannot also be sliced"),
        ({"adapters": [2]}, "none is loaded"),
    ],
)
def test_bad_plans_are_value_errors_and_leave_model_unchanged(tiny_lm, kwargs, message):
    ids = tiny_lm.encode_prompt(PROMPTS[2])
    before = tiny_lm.logits(ids)
    with pytest.raises(ValueError, match=message):
        with tiny_lm.apply(PruningPlan(**kwargs)):
            pytest.fail("a bad plan was applied")
    assert torch.equal(tiny_lm.logits(ids), before)
    assert tiny_lm.active_plan is None


def test_plan_validates_on_creation_with_geometry(tiny_lm):
    with pytest.raises(ValueError, match="layer 7 out of range 0..3"):
        PruningPlan(skip=[7], geometry=tiny_lm.geometry)


def test_plans_do_not_nest(tiny_lm):
    with tiny_lm.apply(PruningPlan(skip=[0])):
        with pytest.raises(RuntimeError, match="already applied"):
            with tiny_lm.apply(PruningPlan(skip=[1])):
                pass
    assert tiny_lm.active_plan is None


def test_bad_prompts(tiny_lm):
    with pytest.raises(ValueError, match="non-empty"):
        tiny_lm.encode_prompt("")
    with pytest.raises(ValueError, match="non-empty"):
        tiny_lm.generate("   ")
    with pytest.raises(ValueError, match="context is 2048 tokens"):
        tiny_lm.encode_prompt("x" * 2100)
    with pytest.raises(ValueError, match="context"):
        tiny_lm.generate("x" * 2030, max_new_tokens=32)


def test_plan_round_trips_through_dict(tiny_lm):
    plan = PruningPlan(skip=[3], heads={0: 5}, ffn={1: 64, 2: 32}, name="mine")
    again = PruningPlan.from_dict(plan.to_dict(), geometry=tiny_lm.geometry)
    assert again == plan and hash(again) == hash(plan)
    assert 0 < plan.kept_fraction(tiny_lm.geometry) < 1
    assert PruningPlan().kept_fraction(tiny_lm.geometry) == 1.0


def test_sampling_is_seeded(tiny_lm32):
    a = tiny_lm32.generate("hello", max_new_tokens=8, temperature=1.0, seed=3)
    b = tiny_lm32.generate("hello", max_new_tokens=8, temperature=1.0, seed=3)
    assert a.output_ids == b.output_ids
    assert a.latency_s == pytest.approx(a.prefill_s + a.decode_s)
