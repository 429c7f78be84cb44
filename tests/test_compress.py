"""Static compression baselines on the tiny random Llama: each method changes what it should,
folders reload to identical logits, healing lowers the validation loss, bad input fails cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynprune.compress.data import token_windows
from dynprune.compress.folder import EVAL_FILE, METADATA_FILE, load_compressed, read_metadata, save_compressed
from dynprune.compress.healing import TrainConfig, split_windows, train_student
from dynprune.compress.pipeline import (
    DataConfig,
    compress_distill,
    compress_layers,
    compress_quantize,
    compress_sparsity,
    train_windows,
)
from dynprune.compress.removal import angular_distances, remove_layers, removed_copy, select_layers
from dynprune.compress.sparsity import SparsityConfig, measured_sparsity, prunable_linears, prune
from dynprune.models import PrunableLM, load_model
from dynprune.plan import PruningPlan

DATA = DataConfig(seq_len=32, max_windows=48)
IDS = torch.tensor([[256, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]])


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Calibrations go to a temporary cache, not the user's."""
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=IDS.to(next(model.parameters()).device), use_cache=False).logits


# ----------------------------------------------------------------------------- layer removal


def test_selections(tiny_lm32: PrunableLM) -> None:
    n = tiny_lm32.geometry.num_layers
    windows = train_windows(tiny_lm32, DATA)
    assert select_layers(tiny_lm32, "last", 1) == (n - 1,)
    bi = tiny_lm32.importance.block_influence
    assert select_layers(tiny_lm32, "block_influence", 2) == tuple(sorted(sorted(range(n), key=bi.__getitem__)[:2]))
    dist = angular_distances(tiny_lm32, windows, 2)
    assert len(dist) == n - 1 and all(0.0 <= d <= 1.0 for d in dist)
    start = dist.index(min(dist))
    assert select_layers(tiny_lm32, "angular", 2, windows) == (start, start + 1)


def test_remove_layers_makes_smaller_model(tiny_lm32: PrunableLM) -> None:
    before = _logits(tiny_lm32.model)
    model = removed_copy(tiny_lm32, [1, 2])
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert model.model.layers[1] is not tiny_lm32._layers[3]  # a copy: the source is untouched
    assert torch.equal(_logits(tiny_lm32.model), before)
    # Same as skipping those layers in the source model.
    with tiny_lm32.apply(PruningPlan(skip=[1, 2])):
        skipped = _logits(tiny_lm32.model)
    torch.testing.assert_close(_logits(model), skipped)
    # The KV cache works with the renumbered layers: cached decoding equals a full forward.
    lm = PrunableLM(model, tiny_lm32.tokenizer, name="removed")
    out = lm.generate(IDS[0].tolist(), max_new_tokens=5, ignore_eos=True).output_ids
    full = lm.logits(IDS[0].tolist() + list(out[:-1]))[0, IDS.shape[1] - 1 :].argmax(-1).tolist()
    assert full == list(out)


def test_remove_every_layer_is_refused(tiny_lm32: PrunableLM) -> None:
    n = tiny_lm32.geometry.num_layers
    with pytest.raises(ValueError, match=r"k=4 layers to remove is out of range.*1\.\.3"):
        select_layers(tiny_lm32, "last", n)
    with pytest.raises(ValueError, match="cannot remove all 4 layers"):
        removed_copy(tiny_lm32, range(n))
    with pytest.raises(ValueError, match=r"out of range 0\.\.3"):
        removed_copy(tiny_lm32, [4])
    with pytest.raises(ValueError, match="selection must be one of"):
        select_layers(tiny_lm32, "random", 1)
    with pytest.raises(ValueError, match="at least one"):
        remove_layers(removed_copy(tiny_lm32, [0]), [])


# ----------------------------------------------------------------------------- healing / distillation


def test_lora_healing_lowers_validation_loss(tiny_lm32: PrunableLM) -> None:
    c = compress_layers(
        tiny_lm32, "block_influence", 2, heal="ce", train=TrainConfig(max_steps=40, eval_every=10, lr=2e-3), data=DATA
    )
    rep = c.metadata.report["healing"]
    assert rep["val_ce_best"] < rep["val_ce_before"] - 0.1
    assert rep["best_step"] > 0 and rep["config"]["r"] == 32 and rep["config"]["alpha"] == 16
    # LoRA merged: a plain model of the removed shape, with no LoRA modules left, and changed weights.
    assert not any("lora" in n for n, _ in c.model.named_parameters())
    plain = removed_copy(tiny_lm32, c.metadata.removed_layers)
    assert sum(p.numel() for p in c.model.parameters()) == sum(p.numel() for p in plain.parameters())
    assert not torch.equal(c.model.model.layers[0].mlp.down_proj.weight, plain.model.layers[0].mlp.down_proj.weight)
    assert not torch.equal(_logits(c.model), _logits(plain))


def test_kd_healing_lowers_kl_to_teacher(tiny_lm32: PrunableLM) -> None:
    c = compress_layers(
        tiny_lm32, "last", 1, heal="kd", train=TrainConfig(max_steps=40, eval_every=10, lr=2e-3, temperature=1.5),
        data=DATA,
    )  # fmt: skip
    rep = c.metadata.report["healing"]
    assert rep["config"]["loss"] == "kd" and rep["config"]["temperature"] == 1.5
    assert min(rep["val_loss"]) < rep["val_loss"][0]


def test_distillation_trains_every_weight(tiny_lm32: PrunableLM) -> None:
    train = TrainConfig(loss="kd", kd_weight=0.5, lora=False, lr=1e-3, max_steps=30, eval_every=10)
    c = compress_distill(tiny_lm32, "last", 1, train=train, data=DATA)
    rep = c.metadata.report["training"]
    assert rep["trainable_params"] == sum(p.numel() for p in c.model.parameters())
    assert min(rep["val_loss"]) < rep["val_loss"][0]
    assert c.metadata.method == "distill" and c.metadata.num_layers == 3
    assert not any(p.requires_grad for p in c.model.parameters())
    with pytest.raises(ValueError, match="need loss='kd', lora=False"):
        compress_distill(tiny_lm32, "last", 1, train=TrainConfig(loss="ce"), data=DATA)


def test_early_stopping_keeps_best_weights(tiny_lm32: PrunableLM) -> None:
    windows = train_windows(tiny_lm32, DATA)
    tr, va = split_windows(windows, 0.2)
    student = removed_copy(tiny_lm32, [3])
    # A huge learning rate diverges: patience runs out and the step-0 weights come back.
    config = TrainConfig(lr=5.0, max_steps=200, eval_every=2, patience=2, lora=False)
    before = _logits(student)
    model, rep = train_student(student, tr, va, config)
    assert rep.stopped_early and rep.steps < 200 and rep.best_step == 0
    torch.testing.assert_close(_logits(model), before)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"loss": "mse"}, "loss must be one of"),
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"kd_weight": 1.5}, r"kd_weight must be in \[0, 1\]"),
        ({"r": 0}, "r must be >= 1"),
        ({"target_modules": ("lm_head",)}, "target_modules"),
    ],
)
def test_train_config_validation(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


# ----------------------------------------------------------------------------- sparsity


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5])
def test_unstructured_sparsity_reached(tiny_lm32: PrunableLM, method: str, sparsity: float) -> None:
    c = compress_sparsity(tiny_lm32, SparsityConfig(method, sparsity), DATA)
    for m in prunable_linears(c.model).values():  # per output row, as Wanda prescribes
        zeros_per_row = (m.weight == 0).sum(dim=1)
        assert torch.all(zeros_per_row == int(sparsity * m.in_features))
    assert c.metadata.report["sparsity_reached"] == pytest.approx(measured_sparsity(c.model))
    assert measured_sparsity(tiny_lm32.model) == 0.0  # source untouched
    assert torch.equal(c.model.lm_head.weight, tiny_lm32.model.lm_head.weight)  # embeddings / head kept


def test_wanda_uses_activations(tiny_lm32: PrunableLM) -> None:
    mag = compress_sparsity(tiny_lm32, SparsityConfig("magnitude", 0.5), DATA).model
    wanda = compress_sparsity(tiny_lm32, SparsityConfig("wanda", 0.5), DATA).model
    masks = [(a.weight == 0) for a in prunable_linears(mag).values()]
    wmasks = [(b.weight == 0) for b in prunable_linears(wanda).values()]
    assert any(not torch.equal(a, b) for a, b in zip(masks, wmasks, strict=True))
    with pytest.raises(ValueError, match="calibration windows"):
        prune(removed_copy(tiny_lm32, [0]), SparsityConfig("wanda", 0.5))


def test_two_four_pattern(tiny_lm32: PrunableLM) -> None:
    c = compress_sparsity(tiny_lm32, SparsityConfig("2:4", 0.5), DATA)
    for m in prunable_linears(c.model).values():
        groups = (m.weight != 0).reshape(m.out_features, -1, 4).sum(-1)
        assert torch.all(groups <= 2)
    assert c.metadata.report["sparsity_reached"] >= 0.5
    assert c.metadata.report["semi_structured_kernels"] is False  # CPU: masked dense weights


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_bad_sparsity(bad: object) -> None:
    with pytest.raises(ValueError, match=r"sparsity must be .*\[0, 1\)"):
        SparsityConfig("magnitude", bad)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- quantisation


@pytest.mark.parametrize(("fmt", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_cast(tiny_lm32: PrunableLM, fmt: str, dtype: torch.dtype) -> None:
    c = compress_quantize(tiny_lm32, fmt)
    assert all(p.dtype == dtype for p in c.model.parameters())
    assert 1.9 < c.metadata.compression_ratio <= 2.0  # half the bytes, less the float32 rotary tables
    assert next(tiny_lm32.model.parameters()).dtype == torch.float32


def test_int8_dynamic(tiny_lm32: PrunableLM) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    c = compress_quantize(tiny_lm32, "int8")
    assert all(isinstance(m, DynamicLinear) for m in prunable_linears_any(c.model))
    assert c.metadata.quantization == "int8_dynamic" and c.metadata.size_mb < c.metadata.source_size_mb
    assert isinstance(c.to_save.model.layers[0].self_attn.q_proj, torch.nn.Linear)  # the float source is saved
    q, ref = _logits(c.model).flatten(), _logits(tiny_lm32.model).flatten()
    assert not torch.equal(q, ref)  # really quantised ...
    assert torch.nn.functional.cosine_similarity(q, ref, dim=0) > 0.99  # ... and close


def prunable_linears_any(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Every decoder projection, whatever its module type."""
    return [
        getattr(getattr(layer, part), name)
        for layer in model.model.layers
        for part, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                            ("mlp", ("gate_proj", "up_proj", "down_proj")))
        for name in names
    ]  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_nf4_needs_cuda(tiny_lm32: PrunableLM, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="INT4 NF4 quantisation needs CUDA"):
        compress_quantize(tiny_lm32, "nf4")
    from dynprune.cli import main

    out = tmp_path / "nf4"
    assert main(["compress", "quantize", "--model", "tiny-llama", "--out", str(out), "--format", "nf4"]) == 2
    assert not out.exists()


def test_bad_format(tiny_lm32: PrunableLM) -> None:
    with pytest.raises(ValueError, match=r"one of \('fp16', 'bf16', 'int8', 'nf4'\), got 'int3'"):
        compress_quantize(tiny_lm32, "int3")


# ----------------------------------------------------------------------------- folders


def _made(tiny_lm32: PrunableLM, kind: str):  # noqa: ANN202
    if kind == "layers":
        return compress_layers(tiny_lm32, "angular", 2, data=DATA)
    if kind == "wanda":
        return compress_sparsity(tiny_lm32, SparsityConfig("wanda", 0.5), DATA)
    return compress_quantize(tiny_lm32, kind)


@pytest.mark.parametrize("kind", ["layers", "wanda", "fp16", "bf16", "int8"])
def test_folder_reloads_to_identical_logits(tiny_lm32: PrunableLM, tmp_path: Path, kind: str) -> None:
    c = _made(tiny_lm32, kind)
    out = save_compressed(c.to_save, tiny_lm32.tokenizer, tmp_path / kind, c.metadata, evaluation={"x": 1})
    assert {METADATA_FILE, EVAL_FILE, "config.json", "model.safetensors"} <= {p.name for p in out.iterdir()}
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["method"] == c.metadata.method and meta["source_model"] == "tiny-llama"
    assert meta["size_mb"] > 0 and meta["num_layers"] == len(c.model.model.layers)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # As a model spec: load_model(folder) gives the same model, prunable on top.
    lm = load_model(str(out), device="cpu")
    assert torch.equal(_logits(lm.model), _logits(c.model))
    assert lm.geometry.num_layers == len(c.model.model.layers)
    with lm.apply(PruningPlan(skip=[0])):
        assert lm.generate(IDS[0].tolist(), max_new_tokens=3, ignore_eos=True).new_tokens == 3
    model, _, meta2 = load_compressed(out)
    assert meta2.to_dict() == read_metadata(out).to_dict()


def test_folder_refuses_overwrite_and_writes_nothing_on_failure(
    tiny_lm32: PrunableLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = compress_quantize(tiny_lm32, "fp16")
    out = tmp_path / "m"
    save_compressed(c.to_save, tiny_lm32.tokenizer, out, c.metadata)
    with pytest.raises(FileExistsError, match="pass force=True"):
        save_compressed(c.to_save, tiny_lm32.tokenizer, out, c.metadata)
    first = (out / METADATA_FILE).read_text()

    class Boom(RuntimeError):
        pass

    def fail(*a: object, **k: object) -> None:
        raise Boom("disk full")

    monkeypatch.setattr(tiny_lm32.tokenizer, "save_pretrained", fail)
    with pytest.raises(Boom):
        save_compressed(c.to_save, tiny_lm32.tokenizer, out, c.metadata, force=True)
    with pytest.raises(Boom):
        save_compressed(c.to_save, tiny_lm32.tokenizer, tmp_path / "new", c.metadata)
    assert not (tmp_path / "new").exists()
    assert (out / METADATA_FILE).read_text() == first  # the old folder is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "m"] or sorted(
        p.name for p in tmp_path.iterdir()
    ) == ["m"]


def test_folder_without_metadata(tiny_lm32: PrunableLM, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    tiny_lm32.model.save_pretrained(plain)
    tiny_lm32.tokenizer.save_pretrained(plain)
    with pytest.raises(ValueError, match="has no dynprune_compress.json"):
        load_compressed(plain)
    (plain / METADATA_FILE).write_text('{"format": 1, "method": "layers"}')
    with pytest.raises(ValueError, match="metadata lacks the field"):
        read_metadata(plain)
    (plain / METADATA_FILE).unlink()
    from dynprune.cli import main

    assert main(["compress", "eval", str(plain)]) == 2
    assert not (plain / EVAL_FILE).exists()


def test_token_windows_never_cycle(tiny_lm32: PrunableLM) -> None:
    w = token_windows(tiny_lm32, ["ab", "cd"], seq_len=2)
    assert w.shape == (3, 2)  # 6 tokens (a b EOS c d EOS)
    with pytest.raises(ValueError, match="fewer than one window"):
        token_windows(tiny_lm32, ["a"], seq_len=8)


# ----------------------------------------------------------------------------- command line and benchmark


def test_cli_layers_heal_writes_folder_and_eval(tmp_path: Path) -> None:
    from dynprune.cli import main

    out = tmp_path / "healed"
    args = ["compress", "layers", "--model", "tiny-llama", "--device", "cpu", "--out", str(out), "--select", "last",
            "--k", "1", "--heal", "ce", "--steps", "6", "--eval-every", "3", "--seq-len", "32", "--eval-prompts", "2",
            "--max-new-tokens", "4", "--repeats", "2", "--timing-tokens", "4"]  # fmt: skip
    assert main(args) == 0
    meta = read_metadata(out)
    assert meta.removed_layers == (3,) and meta.num_layers == 3 and meta.settings["heal"] == "ce"
    ev = json.loads((out / EVAL_FILE).read_text())
    assert ev["speedup"]["n"] == 2 and ev["size_mb"] < ev["source_size_mb"] and ev["num_layers"] == 3
    assert 0.0 <= ev["teacher_forced_agreement"] <= 1.0 and ev["perplexity"] > 0
    assert main(args) == 2  # exists: refused without --force
    bad = ["compress", "sparsify", "--model", "tiny-llama", "--out", str(tmp_path / "s"), "--sparsity", "1.0"]
    assert main(bad) == 2 and not (tmp_path / "s").exists()


def test_benchmark_smoke(tmp_path: Path) -> None:
    from benchmarks.compress import main

    out = tmp_path / "compress.json"
    data = main(["--smoke", "--out", str(out), "--threads", "1"])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(data["rows"]))
    methods = {r["method"] for r in saved["rows"]}
    assert {"source", "layers", "layers+heal-ce", "layers+heal-kd", "magnitude", "wanda", "2:4", "fp16", "bf16",
            "int8", "distill"} <= methods  # fmt: skip
    for r in saved["rows"]:
        assert r["size_mb"] > 0 and r["speedup"]["median"] > 0 and r["perplexity"] > 0
    assert "shared" in saved["note"].lower()
    assert (tmp_path / "compress.png").stat().st_size > 0


def test_env_runs_on_a_compressed_folder(tiny_lm32: PrunableLM, tmp_path: Path) -> None:
    """Dynamic pruning on top of static compression: the env takes the folder as its model spec."""
    import gymnasium as gym

    import envs  # noqa: F401 - registers DynPrune-v0

    c = compress_layers(tiny_lm32, "last", 1, data=DATA)
    out = save_compressed(c.to_save, tiny_lm32.tokenizer, tmp_path / "removed", c.metadata)
    env = gym.make("DynPrune-v0", model=str(out), device="cpu", reward="proxy", max_new_tokens=4)
    try:
        assert env.unwrapped.lm.geometry.num_layers == 3
        env.reset(seed=0)
        _, reward, *_ = env.step(env.action_space.sample())
        assert isinstance(reward, float)
    finally:
        env.close()
