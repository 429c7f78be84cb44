"""Faults and unusual models, engine side (issue 15).

- Sliding-window models (Qwen2 / Qwen3 with ``max_window_layers`` < layers, Mistral windows):
  under every plan, logits and greedy generation through the window equal those of a
  physically pruned copy built by transformers from a smaller config; live timing
  (``generate_and_score``) works past the window.
- Model identity: changes whenever any weight changes, not with the spelling of a folder's path,
  and is cached by the folder's files.
- Bad inputs: one-line ``ValueError`` naming the value and the remedy, raised where the value
  comes in (``gym.make``, ``generate``, ``PruningPlan.from_dict``, ``load_model``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil

import gymnasium as gym
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, MistralConfig, Qwen2Config, Qwen3Config

import envs  # noqa: F401  (registers the envs)
from dynprune import models
from dynprune.importance import importance_path
from dynprune.models import PrunableLM, byte_tokenizer, fingerprint, load_model, tiny_llama
from dynprune.plan import PruningPlan
from dynprune.types import Prompt

WINDOW = 8
LAYERS = 5
TOKENIZER = byte_tokenizer()


def _config(kind: str, window: int | None) -> object:
    common = dict(
        vocab_size=len(TOKENIZER), hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=8, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
        initializer_range=0.25, bos_token_id=TOKENIZER.bos_token_id, eos_token_id=TOKENIZER.eos_token_id,
        pad_token_id=TOKENIZER.pad_token_id,
    )
    if kind == "mistral":
        return MistralConfig(sliding_window=window, **common)
    cls = Qwen2Config if kind == "qwen2" else Qwen3Config
    # layers 0-1 full attention, 2-4 sliding: a skip moves a layer across the boundary
    return cls(use_sliding_window=True, sliding_window=window, max_window_layers=2, **common)


def _tiny(
    kind: str, window: int | None = WINDOW, device: str = "cpu", dtype: torch.dtype = torch.float64
) -> PrunableLM:
    config = _config(kind, window)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return PrunableLM(model, TOKENIZER, name=f"tiny-{kind}")


class Residual(nn.Module):
    """A stand-in adapter: x + 0.3 tanh(W x)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(64, 64, generator=g, dtype=torch.float64) / 8, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * torch.tanh(x @ self.w.T)


def physically_pruned(lm: PrunableLM, skip: tuple[int, ...], adapters: dict[int, nn.Module]) -> nn.Module:
    """A new model of the kept layers only, built by transformers from a smaller config.

    Kept layer ``i`` becomes layer ``j`` with its own ``layer_types`` entry; an adapter runs
    (a forward pre-hook) on the input of the next kept layer, or of the final norm.
    """
    removed = set(skip) | set(adapters)
    kept = [i for i in range(LAYERS) if i not in removed]
    config = copy.deepcopy(lm.model.config)
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in kept]
    ref = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").to(lm.device, lm.dtype).eval()
    state = {}
    for key, value in lm.model.state_dict().items():
        if key.startswith("model.layers."):
            i, rest = key[len("model.layers."):].split(".", 1)
            if int(i) not in kept:
                continue
            key = f"model.layers.{kept.index(int(i))}.{rest}"
        state[key] = value
    ref.load_state_dict(state, strict=True)
    for a in sorted(adapters):
        following = [j for j, i in enumerate(kept) if i > a]
        target = ref.model.layers[following[0]] if following else ref.model.norm
        module = adapters[a]
        target.register_forward_pre_hook(
            lambda _m, args, kwargs, module=module: ((module(args[0]), *args[1:]), kwargs), with_kwargs=True
        )
    return ref


def _ref_logits(ref: nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return ref(input_ids=torch.tensor([ids], device=ref.device), use_cache=False).logits[0]


KINDS = [("qwen2", WINDOW), ("qwen3", WINDOW), ("mistral", WINDOW)]
PLANS = [
    ((0,), {}),
    ((1,), {}),
    ((2,), {}),
    ((0, 3), {}),
    ((1, 2), {}),
    ((), {1: 11}),
    ((0,), {2: 12}),
    ((), {4: 14}),
]
PROMPT = [TOKENIZER.bos_token_id, *range(40, 60)]  # 21 tokens: longer than the window


@pytest.mark.parametrize(("kind", "window"), KINDS, ids=[k for k, _ in KINDS])
def test_sliding_window_plans_match_a_physically_pruned_copy(kind, window):
    lm = _tiny(kind, window)
    config = lm.model.config
    types_before, before = getattr(config, "layer_types", None), lm.logits(PROMPT)
    for skip, adapter_seeds in PLANS:
        adapters = {i: Residual(seed) for i, seed in adapter_seeds.items()}
        ref = physically_pruned(lm, skip, adapters)
        plan = PruningPlan(skip=skip, adapters=tuple(adapters), modules=adapters)
        with lm.apply(plan):
            got = lm.logits(PROMPT)[0]
        diff = float((got - _ref_logits(ref, PROMPT)).abs().max())
        assert diff < 1e-9, f"{kind} {plan.describe()}: max |logit difference| {diff}"
    # restore is exact: the same config objects, bit-equal logits
    assert getattr(config, "layer_types", None) is types_before and config.num_hidden_layers == LAYERS
    assert torch.equal(lm.logits(PROMPT), before)


GEN_KINDS = [("qwen2", WINDOW), ("qwen3", WINDOW), ("mistral", WINDOW), ("mistral", 4096)]


@pytest.mark.parametrize(("kind", "window"), GEN_KINDS, ids=[f"{k}-w{w}" for k, w in GEN_KINDS])
def test_generation_through_the_window_matches_a_physically_pruned_copy(kind, window):
    """KV-cache decoding and live timing (generate_and_score) past the window, under skip plans."""
    lm = _tiny(kind, window)
    prompt, n = PROMPT[:6], 14  # prompt + answer = 20 tokens: past a window of 8
    target = list(range(70, 70 + n))
    for skip, adapter_seeds in [((1,), {}), ((0, 3), {}), ((2,), {4: 14})]:
        adapters = {i: Residual(seed) for i, seed in adapter_seeds.items()}
        ref = physically_pruned(lm, skip, adapters)
        with lm.apply(PruningPlan(skip=skip, adapters=tuple(adapters), modules=adapters)):
            out = list(lm.generate(prompt, max_new_tokens=n, ignore_eos=True).output_ids)
            gen, score = lm.generate_and_score(prompt, n, target)
        # greedy: each token is the reference's argmax after the tokens before it
        ref_next = _ref_logits(ref, prompt + out[:-1])[len(prompt) - 1:].argmax(-1).tolist()
        assert out == ref_next, (kind, skip)
        assert list(gen.output_ids) == out
        logprobs = torch.log_softmax(_ref_logits(ref, prompt + target[:-1])[len(prompt) - 1:], -1)
        ref_nll = float(-logprobs.gather(1, torch.tensor(target)[:, None]).mean())
        assert score.nll == pytest.approx(ref_nll, abs=1e-5), (kind, skip)  # scored in float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("kind", "window"), GEN_KINDS, ids=[f"{k}-w{w}" for k, w in GEN_KINDS])
def test_sliding_window_plans_on_cuda(kind, window, dtype):
    """On the GPU the pruned model and the physically pruned copy run the same kernels: equal logits and tokens."""
    lm = _tiny(kind, window, device="cuda", dtype=dtype)
    prompt, n = PROMPT[:6], 14
    for skip in [(0,), (1,), (2,), (0, 3), (1, 2)]:
        ref = physically_pruned(lm, skip, {})
        with lm.apply(PruningPlan(skip=skip)):
            got = lm.logits(PROMPT)[0]
            out = list(lm.generate(prompt, max_new_tokens=n, ignore_eos=True).output_ids)
            gen, _ = lm.generate_and_score(prompt, n, list(range(70, 70 + n)))
        assert torch.equal(got, _ref_logits(ref, PROMPT)), (kind, skip)
        assert out == _ref_logits(ref, prompt + out[:-1])[len(prompt) - 1:].argmax(-1).tolist(), (kind, skip)
        assert list(gen.output_ids) == out


def test_a_cache_made_for_a_plan_outside_apply_fits_it():
    """``lm.new_cache(plan)`` lays the cache out for the plan's kept layers (paired timing makes it early)."""
    from dynprune.generation import forward_with_cache

    lm = _tiny("qwen2")
    plan, prompt, n = PruningPlan(skip=(1,)), PROMPT[:6], 12
    cache = lm.new_cache(plan)
    assert lm.model.config.num_hidden_layers == LAYERS  # made without leaving the plan in place
    out, step = [], torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            with lm.apply(plan):
                out.append(int(forward_with_cache(lm.model, step, cache)[0, -1].argmax()))
            step = torch.tensor([[out[-1]]])
    ref = physically_pruned(lm, (1,), {})
    assert out == _ref_logits(ref, prompt + out[:-1])[len(prompt) - 1:].argmax(-1).tolist()


def test_a_layer_layout_that_cannot_be_kept_is_refused_at_load(tmp_path):
    """A config listing sliding layers without a window: refused at load, naming the setting."""
    config = Qwen2Config(
        vocab_size=len(TOKENIZER), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, layer_types=["full_attention", "sliding_attention"], use_sliding_window=False,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "m")
    TOKENIZER.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match=r"layer 1 is 'sliding_attention' in config.layer_types") as err:
        load_model(str(tmp_path / "m"), device="cpu")
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- identity


def test_identity_changes_whenever_any_weight_changes():
    model, _ = tiny_llama(torch.float32)
    base = fingerprint(model)
    seen = {base}
    for name, p in model.named_parameters():
        flat = p.data.view(-1)
        old = float(flat[-1])
        flat[-1] = old + 1e-3
        fp = fingerprint(model)
        flat[-1] = old
        assert fp not in seen, f"changing the last value of {name} left the identity at {fp}"
        seen.add(fp)
    assert fingerprint(model) == base


@pytest.fixture
def saved_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))
    model, tokenizer = tiny_llama(torch.float32)
    folder = tmp_path / "models" / "x"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer, folder


def test_identity_of_a_folder_changes_when_any_weight_is_saved_again(saved_tiny, monkeypatch):
    model, tokenizer, folder = saved_tiny
    first = load_model(str(folder), device="cpu", dtype="float32").model_id
    # unchanged files: the cached identity, no second hash of the weights
    with monkeypatch.context() as m:
        m.setattr(models, "fingerprint", lambda _model: pytest.fail("hashed the weights of an unchanged folder"))
        assert load_model(str(folder), device="cpu", dtype="float32").model_id == first
    for name in ("model.layers.2.mlp.up_proj.weight", "model.layers.0.self_attn.v_proj.weight"):
        with torch.no_grad():
            dict(model.named_parameters())[name].view(-1)[7] += 1e-3
        model.save_pretrained(folder)
        again = load_model(str(folder), device="cpu", dtype="float32").model_id
        assert again != first, f"{name} changed and was saved, the identity stayed {first}"
        first = again


def test_identity_does_not_depend_on_the_spelling_of_the_path(saved_tiny, monkeypatch):
    _, _, folder = saved_tiny
    monkeypatch.chdir(folder.parent.parent)
    spellings = ["models/x", "./models/x", f"{folder.resolve()}/", "models/../models/x"]
    ids = {load_model(s, device="cpu", dtype="float32").model_id for s in spellings}
    assert len(ids) == 1, ids
    assert next(iter(ids)).startswith("x@")
    assert len({importance_path(i) for i in ids}) == 1


def test_identity_of_an_in_memory_model_equals_that_of_its_saved_folder(saved_tiny):
    model, tokenizer, folder = saved_tiny
    loaded = load_model(str(folder), device="cpu", dtype="float32")
    assert loaded.model_id.split("@")[1] == PrunableLM(model, tokenizer).model_id.split("@")[1]


# ----------------------------------------------------------------------------- errors


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_generate_none_is_a_value_error(tiny_lm32):
    with pytest.raises(ValueError, match="a text or a sequence of token ids, got NoneType") as err:
        tiny_lm32.generate(None)
    _one_line(err)


@pytest.mark.parametrize("bad", [99999, -1])
def test_out_of_vocabulary_token_id_is_named(tiny_lm32, bad):
    vocab = tiny_lm32.model.get_input_embeddings().weight.shape[0]
    with pytest.raises(ValueError, match=rf"token id {bad} at position 1 is outside the vocabulary 0\.\.{vocab - 1}"):
        tiny_lm32.generate([5, bad], max_new_tokens=2)
    with pytest.raises(ValueError, match=rf"target: token id {bad}"):
        tiny_lm32.generate_and_score([5, 6], 2, [bad])
    with pytest.raises(ValueError, match=rf"target: token id {bad}"):
        tiny_lm32.score([5], [bad])


@pytest.mark.parametrize("temperature", [-0.5, float("nan"), float("inf")])
def test_bad_temperature_is_refused(tiny_lm32, temperature):
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0 \(0 = greedy\)"):
        tiny_lm32.generate("Hi", max_new_tokens=2, temperature=temperature)


@pytest.mark.parametrize("data", [{"heads": {"a": 3}}, {"ffn": {"1.5": 2}}, {"heads": {"": 1}}])
def test_plan_from_dict_names_a_non_numeric_layer_key(data):
    field, (key, _) = next(iter(data.items())), next(iter(next(iter(data.values())).items()))
    with pytest.raises(ValueError, match=rf"plan field '{field[0]}': key {key!r} is not a layer index"):
        PruningPlan.from_dict(data)


@pytest.mark.parametrize("budget_range", [(0.8,), (0.8, 1.0, 1.2), "0.8", None, ("low", 1.0)])
def test_budget_range_that_is_not_two_numbers(tiny_lm32, budget_range):
    with pytest.raises(ValueError, match="budget_range must be two numbers") as err:
        gym.make("DynPrune-v0", model=tiny_lm32, reward="proxy", budget_range=budget_range)
    assert repr(budget_range) in _one_line(err)


@pytest.mark.parametrize(("telemetry", "kwargs"), [("live", {"scenario": "busy"}), ("live", {"scenario": "mixed"}),
                                                   ("replay", {"scenario": "idle", "trace": "t.jsonl"}),
                                                   ("scenario", {"trace": "t.jsonl"})])
def test_telemetry_arguments_the_mode_does_not_use(tiny_lm32, telemetry, kwargs):
    with pytest.raises(ValueError, match="is only used with telemetry="):
        gym.make("DynPrune-v0", model=tiny_lm32, reward="proxy", telemetry=telemetry, **kwargs)


def test_live_telemetry_without_a_scenario_is_accepted(tiny_lm32):
    env = gym.make("DynPrune-v0", model=tiny_lm32, reward="proxy", telemetry="live")
    assert env.unwrapped.telemetry_mode == "live"
    env.close()


def test_a_prompt_longer_than_the_context_fails_at_make_naming_it(tiny_lm32):
    prompts = [Prompt(id="ok", text="Hello"), Prompt(id="essay-7", text="x" * 3000, source="mine")]
    with pytest.raises(ValueError, match=r"prompt 'essay-7' \(mine\) is 3001 tokens, \+32 to generate") as err:
        gym.make("DynPrune-v0", model=tiny_lm32, reward="proxy", prompts=prompts, split=None)
    assert "2048" in _one_line(err)
    # fits alone, not with the answer
    edge = [Prompt(id="edge", text="y" * 2030)]
    with pytest.raises(ValueError, match=r"prompt 'edge' .* \+32 to generate = 2063"):
        gym.make("DynPrune-v0", model=tiny_lm32, reward="proxy", prompts=edge, split=None)
    gym.make("DynPrune-v0", model=tiny_lm32, reward="proxy", prompts=edge, split=None, max_new_tokens=8).close()


def test_a_long_prompt_in_a_file_is_named_by_file_and_line(tiny_lm32, tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": "a", "text": "hi"}, {}, {"text": "z" * 3000}]
    path.write_text("\n".join(json.dumps(r) if r else "" for r in rows) + "\n")
    with pytest.raises(ValueError, match=rf"prompt 'prompts-3' \({path} line 3\) is 3001 tokens"):
        gym.make("DynPrune-v0", model=tiny_lm32, reward="proxy", prompts=str(path), split=None)
    csv_path = tmp_path / "p.csv"
    csv_path.write_text('id,text\nfine,"two\nlines"\nlong,' + "w" * 3000 + "\n")
    with pytest.raises(ValueError, match=rf"prompt 'long' \({csv_path} line 4\)"):
        gym.make("DynPrune-v0", model=tiny_lm32, reward="proxy", prompts=str(csv_path), split=None)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf") / "good"
    model, tokenizer = tiny_llama(torch.float32, num_layers=1)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _broken(hf_folder, tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(hf_folder, folder)
    return folder


def _config_json(folder):
    return json.loads((folder / "config.json").read_text())


@pytest.mark.parametrize(
    ("name", "break_it", "message"),
    [
        ("no-weights", lambda f: (f / "model.safetensors").unlink(), r"holds no weights .*model\.save_pretrained"),
        ("no-tokenizer", lambda f: (f / "tokenizer.json").unlink(), r"has no tokenizer .*tokenizer\.save_pretrained"),
        ("truncated-config", lambda f: (f / "config.json").write_text('{"model_type": "llama", "hidd'),
         r"config\.json line 1 column \d+: not valid JSON"),
        ("empty-config", lambda f: (f / "config.json").write_text(""), r"config\.json line 1 column 1: not valid JSON"),
        ("no-model-type", lambda f: (f / "config.json").write_text(
            json.dumps({k: v for k, v in _config_json(f).items() if k != "model_type"})), r"has no 'model_type'"),
        ("bad-value", lambda f: (f / "config.json").write_text(json.dumps({**_config_json(f), "hidden_size": "big"})),
         r"cannot read the config of model .*'hidden_size'.*expected int"),
        ("list-config", lambda f: (f / "config.json").write_text("[1, 2]"), r"holds a JSON list"),
    ],
)
def test_a_broken_model_folder_is_a_one_line_error(hf_folder, tmp_path, name, break_it, message):
    folder = _broken(hf_folder, tmp_path, name)
    break_it(folder)
    with pytest.raises(ValueError, match=message) as err:
        load_model(str(folder), device="cpu")
    assert name in _one_line(err)


def test_a_model_spec_that_is_a_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="is a file; expected a Hugging Face model folder"):
        load_model(str(path), device="cpu")


def test_an_identity_cache_that_cannot_be_written_is_only_skipped(saved_tiny, tmp_path, monkeypatch):
    """A cache folder that cannot be made (here: a file stands where it should be) costs a hash, not the load."""
    _, _, folder = saved_tiny
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("DYNPRUNE_CACHE", str(blocker))
    a = load_model(str(folder), device="cpu", dtype="float32").model_id
    assert load_model(str(folder), device="cpu", dtype="float32").model_id == a


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    from dynprune.fileio import atomic_dir

    dest = tmp_path / "out"
    with atomic_dir(dest) as tmp:
        (tmp / "old.txt").write_text("old")
        os.chmod(tmp / "old.txt", 0o600)  # what safetensors does to its file
    umask = os.umask(0)
    os.umask(umask)
    assert (dest / "old.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert dest.stat().st_mode & 0o777 == 0o777 & ~umask
    with pytest.raises(RuntimeError, match="mid-write"), atomic_dir(dest) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("mid-write")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    with atomic_dir(dest) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
