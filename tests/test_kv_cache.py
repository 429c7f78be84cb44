"""KV-cache windows (sinks + recent tokens) against an independent reference, on the tiny Llama.

The reference (tests/reference_llama.py) is a from-scratch float64 forward with no cache: the
window enters it only as a mask over (query, key) positions written here with plain Python
comparisons, so the engine's eviction, mask offsets and hooks are checked against attention with
the same positions masked out. ``ATOL`` as in test_pruning.py (transformers' float32 rotary).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import gymnasium as gym
import pytest
import torch
from reference_llama import ReferenceLlama
from transformers import AutoModelForCausalLM, Qwen2Config

import envs  # noqa: F401  (registers DynPrune-v0)
from dynprune.actions import ActionEntry, entry_plan, make_table
from dynprune.generation import forward_with_cache
from dynprune.latency_model import DECODE_FEATURES, PREFILL_FEATURES, LatencyModel, latency_key
from dynprune.models import PrunableLM, byte_tokenizer
from dynprune.paired_timing import paired_generate
from dynprune.plan import PruningPlan
from dynprune.pruning.kv import KVWindow, SinkWindowLayer, fraction_held, kv_bytes, kv_cache_bytes
from dynprune.records import record_from_dict
from dynprune.rewards import memory_pressure
from dynprune.runtime import PlanEvaluator
from dynprune.types import Prompt

ATOL = 1e-4
TEXT = "The quick brown fox jumps over the lazy dog, then runs far away into the green hills."


def visible(window: KVWindow):
    """``visible(query, key)`` of a window, written independently of ``dynprune.pruning.kv``."""
    def fn(i: int, j: int) -> bool:
        recent = window.window if window.window is not None else max(1, math.ceil(window.fraction * (i + 1)))
        return j < window.sinks or j > i - recent
    return fn


@pytest.fixture(scope="module")
def ref(tiny_lm):
    return ReferenceLlama(tiny_lm.model)


@pytest.fixture(scope="module")
def ids(tiny_lm):
    return [tiny_lm.bos_id, *tiny_lm.encode_text(TEXT)]


@pytest.fixture(params=["sdpa", "eager"])
def attn(request, tiny_lm):
    """Run a test under both attention implementations the window supports."""
    cfg = tiny_lm.model.config
    old = cfg._attn_implementation
    cfg._attn_implementation = request.param
    yield request.param
    cfg._attn_implementation = old


WINDOWS = [KVWindow(sinks=2, window=7), KVWindow(sinks=0, window=5), KVWindow(sinks=4, fraction=0.5),
           KVWindow(sinks=1, fraction=0.25)]


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: w.describe())
def test_cache_free_pass_matches_masked_reference(tiny_lm, ref, ids, attn, window):
    with tiny_lm.apply(PruningPlan(kv=window)):
        got = tiny_lm.logits(ids)[0]
    want = ref.logits(ids, visible=visible(window))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # the window really cuts: far from the full model's logits
    assert (ref.logits(ids) - want).abs().max() > 0.1


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: w.describe())
def test_cached_steps_and_chunks_match_reference_and_evict(tiny_lm, ref, ids, attn, window):
    """Prefill, single-token steps and a multi-token chunk on an already evicted cache."""
    want = ref.logits(ids, visible=visible(window))
    with tiny_lm.apply(PruningPlan(kv=window)):
        cache = tiny_lm.new_cache()
        rows = [forward_with_cache(tiny_lm.model, torch.tensor([ids[:20]]), cache)[0]]
        for t in ids[20:40]:
            rows.append(forward_with_cache(tiny_lm.model, torch.tensor([[t]]), cache)[0])
        rows.append(forward_with_cache(tiny_lm.model, torch.tensor([ids[40:]]), cache)[0])
    torch.testing.assert_close(torch.cat(rows), want, atol=ATOL, rtol=0)
    n = len(ids)
    layer = cache.layers[0]
    assert isinstance(layer, SinkWindowLayer) and cache.get_seq_length() == n
    # between steps a layer holds the sinks and what the next position may see: W(n) - 1 recent tokens
    recent = window.window if window.window is not None else math.ceil(window.fraction * (n + 1))
    assert layer.keys.shape[-2] == window.sinks + recent - 1
    kv_heads, head_dim = tiny_lm.geometry.num_kv_heads[0], tiny_lm.geometry.head_dim
    per_token = 2 * kv_heads * head_dim * tiny_lm.model.dtype.itemsize * tiny_lm.geometry.num_layers
    assert kv_cache_bytes(cache) == per_token * (window.sinks + recent - 1)


def test_generation_under_the_plan_matches_cache_free_greedy(tiny_lm, ref, ids):
    window = KVWindow(sinks=2, window=6)
    prompt = ids[:24]
    with tiny_lm.apply(PruningPlan(kv=window)):
        out = tiny_lm.generate(prompt, 12, ignore_eos=True).output_ids
    assert list(out) == ref.greedy(prompt, 12, set(), visible=visible(window))
    # paired timing runs the plan beside the full model: the plan's stream gives the same tokens
    run = paired_generate(tiny_lm, PruningPlan(kv=window), prompt, 12)
    assert run.pruned.output_ids == out
    assert run.full.output_ids == tiny_lm.generate(prompt, 12, ignore_eos=True).output_ids


def test_combined_with_skip_matches_reference(tiny_lm, ref, ids):
    window = KVWindow(sinks=1, window=9)
    plan = PruningPlan(skip=[1], kv=window)
    with tiny_lm.apply(plan):
        got = tiny_lm.logits(ids)[0]
        score = tiny_lm.generate_and_score(ids[:30], 4, ids[30:])[1]
    want = ref.logits(ids, skip=[1], visible=visible(window))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    # the scoring pass runs the target as one chunk on the evicted prompt cache
    assert list(score.argmax_ids) == want[29:-1].argmax(-1).tolist()


def test_restore_is_bit_exact_and_combines_with_every_kind(tiny_lm, ids):
    before = tiny_lm.logits(ids)
    gen_before = tiny_lm.generate(ids[:16], 8, ignore_eos=True).output_ids
    plan = PruningPlan(skip=[2], heads={0: 5}, ffn={1: 64}, kv=KVWindow(sinks=2, fraction=0.5))
    with tiny_lm.apply(plan):
        pruned = tiny_lm.logits(ids)
        tiny_lm.generate(ids[:16], 8, ignore_eos=True)
    assert not torch.equal(pruned, before)
    with pytest.raises(RuntimeError, match="boom"), tiny_lm.apply(plan):
        raise RuntimeError("boom")
    assert torch.equal(tiny_lm.logits(ids), before)
    assert tiny_lm.generate(ids[:16], 8, ignore_eos=True).output_ids == gen_before
    assert all(not a.self_attn._forward_pre_hooks for a in tiny_lm.model.model.layers)
    # a full-model cache made after the plan holds every token again
    cache = tiny_lm.new_cache()
    forward_with_cache(tiny_lm.model, torch.tensor([ids]), cache)
    assert type(cache.layers[0]).__name__ == "DynamicLayer" and cache.layers[0].keys.shape[-2] == len(ids)


def test_snapshot_of_window_layers_is_exact(tiny_lm, ids):
    """decode_and_score restores the prompt's cache from shallow copies; eviction never writes in place."""
    with tiny_lm.apply(PruningPlan(kv=KVWindow(sinks=2, window=5))):
        cache = tiny_lm.new_cache()
        forward_with_cache(tiny_lm.model, torch.tensor([ids[:20]]), cache)
        snap = [copy.copy(layer) for layer in cache.layers]
        keys = [layer.keys.clone() for layer in snap]
        for t in ids[20:30]:
            forward_with_cache(tiny_lm.model, torch.tensor([[t]]), cache)
        with pytest.raises(RuntimeError, match="cannot be cropped"):
            cache.layers[0].crop(-1)
    assert all(torch.equal(k, layer.keys) and layer.seen == 20 for k, layer in zip(keys, snap, strict=True))


def test_validation_errors_name_the_bad_value(tiny_lm):
    with pytest.raises(ValueError, match="window must be an integer >= 1.*got 0"):
        KVWindow(window=0)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\).*got 1.5"):
        KVWindow(fraction=1.5)
    with pytest.raises(ValueError, match="exactly one of window.*window=8, fraction=0.5"):
        KVWindow(window=8, fraction=0.5)
    with pytest.raises(ValueError, match="sinks must be an integer >= 0, got -1"):
        KVWindow(sinks=-1, window=8)
    with pytest.raises(ValueError, match="sinks 4 \\+ window 2044 = 2048 tokens reach the context of 2048"):
        PruningPlan(kv={"sinks": 4, "window": 2044}, geometry=tiny_lm.geometry)
    with pytest.raises(ValueError, match=r"unknown keys \['size'\]"):
        PruningPlan.from_dict({"kv": {"size": 3}})
    cfg = tiny_lm.model.config
    old, cfg._attn_implementation = cfg._attn_implementation, "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="'flash_attention_2'"), tiny_lm.apply(PruningPlan(kv=KVWindow(window=4))):
            pass
    finally:
        cfg._attn_implementation = old


def test_plan_round_trip_and_old_plans_unchanged():
    plan = PruningPlan(skip=[1], kv=KVWindow(sinks=4, fraction=0.25), name="x")
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["kv"] == {"sinks": 4, "fraction": 0.25}
    assert PruningPlan.from_dict(data) == plan and hash(PruningPlan.from_dict(data)) == hash(plan)
    assert "kv" not in PruningPlan(skip=[1]).to_dict()  # plans without a window serialise as before
    assert PruningPlan(kv={"window": 8}).describe() == "kv[s4+w8]"
    assert not PruningPlan(kv={"window": 8}).is_empty
    assert PruningPlan(kv={"window": 8}) != PruningPlan(kv={"window": 9})


def test_kv_table_entries(tiny_lm):
    table = make_table("kv")
    assert [e.name for e in table[: len(make_table("default"))]] == [e.name for e in make_table("default")]
    plans = {e.name: entry_plan(e, tiny_lm) for e in table if e.kind == "kv"}
    assert plans["kv-50%"].kv == KVWindow(sinks=4, fraction=0.5)
    assert plans["kv-75%"].kv == KVWindow(sinks=4, fraction=0.25)
    entry = ActionEntry.from_dict({"name": "kv-w64", "kind": "kv", "window": 64, "sinks": 2})
    assert entry_plan(entry, tiny_lm).kv == KVWindow(sinks=2, window=64)
    with pytest.raises(ValueError, match="kv-bad.*amount in \\(0, 1\\) or a window"):
        ActionEntry("kv-bad", "kv")


def test_kv_bytes_formula():
    w = KVWindow(sinks=4, window=100)
    assert w.held_tokens(50) == 50 and w.held_tokens(1000) == 104
    assert kv_bytes(192, 1000, 4, w) == 2 * 192 * 104 * 4 and kv_bytes(192, 1000, 4) == 2 * 192 * 1000 * 4
    assert fraction_held(KVWindow(sinks=4, fraction=0.5), 1000) == pytest.approx(504 / 1000)
    assert fraction_held(None, 1000) == 1.0


# ----------------------------------------------------------------------------- runtime and env

LONG = [Prompt(id=f"long-{i}", text=" ".join([TEXT] * 3) + f" Question {i}: what ran away?") for i in range(2)]


def _latency_model(lm):
    """Fixed, positive coefficients: deterministic modelled timing without a calibration."""
    return LatencyModel(latency_key(lm), tuple([1e-4] * len(PREFILL_FEATURES)), tuple([1e-4] * len(DECODE_FEATURES)))


def test_evaluation_counts_kv_bytes_and_a_window_shortens_modelled_decode(tiny_lm32):
    ev = PlanEvaluator(tiny_lm32, max_new_tokens=6, latency_model=_latency_model(tiny_lm32))
    prompt = LONG[0]
    base = ev.baseline(prompt)
    fed = len(base.prompt_ids) + len(base.answer_ids) - 1
    g = tiny_lm32.geometry
    full_bytes = 2 * g.num_layers * g.num_kv_heads[0] * g.head_dim * 4 * fed
    window = KVWindow(sinks=4, window=16)
    none, kv, skip = (ev.evaluate(prompt, p) for p in (PruningPlan(), PruningPlan(kv=window), PruningPlan(skip=[0])))
    assert none.kv_bytes == none.full_kv_bytes == full_bytes
    assert kv.kv_bytes == full_bytes * 20 // fed and kv.full_kv_bytes == full_bytes
    assert skip.kv_bytes == full_bytes * 3 // 4  # a skipped layer caches nothing
    # modelled timing counts a window latency-neutral (the latency model has no window terms)
    assert kv.speedup == 0.0
    both = PruningPlan(skip=[0], kv=window)
    assert ev.modelled_latency_s(both, base) == ev.modelled_latency_s(PruningPlan(skip=[0]), base)
    # the live path measures the same bytes (shapes, not timings)
    live = ev.evaluate(prompt, PruningPlan(kv=window), timing="live")
    assert live.kv_bytes == kv.kv_bytes and live.text is not None


def test_memory_term_charges_the_kv_cache_under_low_memory_only(tiny_lm32):
    kw = {"model": tiny_lm32, "prompts": LONG, "split": None, "max_new_tokens": 6, "action_table": "kv",
          "reward": "accuracy_efficiency", "latency_model": _latency_model(tiny_lm32), "sequential": True}
    table = make_table("kv")
    names = [e.name for e in table]
    by_scenario = {}
    for scenario in ("idle", "low_memory"):
        env = gym.make("DynPrune-v0", scenario=scenario, **kw).unwrapped
        env.reset(seed=0)
        records = env.action_records()
        by_scenario[scenario] = records
        mem = env._snapshot.mem_available_frac
        for r in records:
            if not r.action_name.startswith("kv"):
                assert r.memory_term == 0.0  # plans without a window: rewards as before
            assert r.kv_bytes <= r.baseline_kv_bytes
            # the JSON round trip keeps the new fields
            assert record_from_dict(json.loads(json.dumps(dataclasses.asdict(r)))) == r
        kvr = records[names.index("kv-75%")]
        assert kvr.kv_bytes < kvr.baseline_kv_bytes
        expect = memory_pressure(mem) * (1 - kvr.kv_bytes / kvr.baseline_kv_bytes)
        assert kvr.memory_term == pytest.approx(expect, rel=1e-12)
    assert all(r.memory_term == 0.0 for r in by_scenario["idle"])
    assert by_scenario["low_memory"][names.index("kv-75%")].memory_term > 0.4
    idle_best = max(by_scenario["idle"], key=lambda r: r.reward)
    assert not idle_best.action_name.startswith("kv")  # under idle a window only costs quality
    # the same quality, a different reward: only the memory term moved
    for a, b in zip(by_scenario["idle"], by_scenario["low_memory"], strict=True):
        assert b.reward - b.memory_term == pytest.approx(a.reward, abs=1e-12)
    with pytest.raises(ValueError, match="kv_memory_weight must be a finite number >= 0.*-1"):
        gym.make("DynPrune-v0", kv_memory_weight=-1, **kw)


def test_memory_pressure_values():
    assert memory_pressure(0.70) == 0.0 and memory_pressure(0.25) == 0.0
    assert memory_pressure(0.08) == pytest.approx(0.68)
    assert memory_pressure(0.0) == 1.0 and memory_pressure(None) == 0.0 and memory_pressure(-1.0) == 0.0


@pytest.mark.parametrize("window", [KVWindow(sinks=2, window=7), KVWindow(sinks=1, fraction=0.25)],
                         ids=lambda w: w.describe())
def test_long_inputs_run_in_chunks_with_the_same_logits(tiny_lm, ref, ids, monkeypatch, window):
    """A cached pass longer than the prefill chunk runs chunk by chunk; every position's logits as in one pass."""
    import dynprune.pruning.kv as kv_module

    monkeypatch.setattr(kv_module, "MIN_PREFILL_CHUNK", 16)
    monkeypatch.setattr(kv_module, "PREFILL_CHUNK", 16)
    want = ref.logits(ids, visible=visible(window))
    calls = []
    hook = tiny_lm.model.model.register_forward_pre_hook(lambda m, a, k: calls.append(k["input_ids"].shape[1]),
                                                         with_kwargs=True)
    try:
        with tiny_lm.apply(PruningPlan(kv=window)):
            every = forward_with_cache(tiny_lm.model, torch.tensor([ids]), tiny_lm.new_cache())[0]
            cache = tiny_lm.new_cache()
            last = forward_with_cache(tiny_lm.model, torch.tensor([ids]), cache, logits_to_keep=1)[0]
            tail = forward_with_cache(tiny_lm.model, torch.tensor([ids[:40]]), tiny_lm.new_cache(), logits_to_keep=20)
    finally:
        hook.remove()
    n_chunks = math.ceil(len(ids) / 16)
    assert calls[:n_chunks] == [16] * (n_chunks - 1) + [len(ids) - 16 * (n_chunks - 1)]
    torch.testing.assert_close(every, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(last, want[-1:], atol=ATOL, rtol=0)
    torch.testing.assert_close(tail[0], ref.logits(ids[:40], visible=visible(window))[-20:], atol=ATOL, rtol=0)
    assert cache.get_seq_length() == len(ids)
    # without a window nothing is chunked
    calls.clear()
    hook = tiny_lm.model.model.register_forward_pre_hook(lambda m, a, k: calls.append(k["input_ids"].shape[1]),
                                                         with_kwargs=True)
    try:
        forward_with_cache(tiny_lm.model, torch.tensor([ids]), tiny_lm.new_cache(), logits_to_keep=1)
    finally:
        hook.remove()
    assert calls == [len(ids)]


def _tiny_qwen2() -> PrunableLM:
    """A float64 tiny Qwen2: layers 0-1 full attention, 2-3 their own sliding window of 8 (transformers' layout)."""
    tok = byte_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                         use_sliding_window=True, sliding_window=8, max_window_layers=2, initializer_range=0.25,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return PrunableLM(model.double().eval().requires_grad_(False), tok, name="tiny-qwen2")


def test_sliding_layers_keep_their_own_window_and_cached_steps_match_the_masked_pass():
    """Qwen2 mixing full and sliding layers: the window goes on the full ones only, in transformers' own cache."""
    lm = _tiny_qwen2()
    ids = [lm.bos_id, *lm.encode_text(TEXT)][:48]
    before = lm.logits(ids)
    plans = (PruningPlan(kv=KVWindow(sinks=2, window=6)), PruningPlan(skip=[1], kv=KVWindow(sinks=1, fraction=0.3)))
    for plan in plans:
        with lm.apply(plan):
            masked = lm.logits(ids)[0]  # no cache: the window as a mask
            cache = lm.new_cache()
            rows = [forward_with_cache(lm.model, torch.tensor([ids[:16]]), cache)[0]]
            rows += [forward_with_cache(lm.model, torch.tensor([[t]]), cache)[0] for t in ids[16:]]
            kinds = [type(layer).__name__ for layer in cache.layers]
        torch.testing.assert_close(torch.cat(rows), masked, atol=1e-9, rtol=0)
        n_full = 2 - len(plan.skip)
        assert kinds == ["SinkWindowLayer"] * n_full + ["DynamicSlidingWindowLayer"] * 2
    assert torch.equal(lm.logits(ids), before)
    with pytest.raises(ValueError, match="needs a running full-attention layer"), \
            lm.apply(PruningPlan(skip=[0, 1], kv=KVWindow(window=4))):
        pass
    assert torch.equal(lm.logits(ids), before)
