"""Bottleneck adapters: identity at init, distillation lowers per-layer MSE, files, plans, CLI.

Fidelity of an adapter plan against plain skipping is not asserted: on a random
tiny model nothing says a locally better reconstruction gives better greedy tokens.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch
from conftest import CALIBRATION_TEXTS

from dynprune.adapter_files import load_adapters, save_adapters
from dynprune.adapter_training import (
    AdapterConfig,
    AdapterReport,
    init_adapters,
    plot_adapter_mse,
    record_layer_io,
    train_adapters,
)
from dynprune.adapters import BottleneckAdapter, attach_adapters
from dynprune.adapters_cli import add_adapter_commands, output_paths
from dynprune.models import PrunableLM, load_model
from dynprune.plan import PruningPlan
from dynprune.types import Prompt

SMALL = AdapterConfig(bottleneck=16, epochs=6, n_prompts=16, seq_len=32, batch_size=4, batch_tokens=64, lr=3e-3)
IDS = [1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls run faster on one thread, and far faster on a CPU shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm() -> PrunableLM:
    """A float64 tiny Llama of this module's own (tests attach adapters to it)."""
    return load_model("tiny-llama", device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def trained(lm: PrunableLM) -> AdapterReport:
    return train_adapters(lm, CALIBRATION_TEXTS, SMALL)


@pytest.fixture()
def clean_slots(lm: PrunableLM):
    yield
    lm.adapters.clear()


def test_fresh_adapter_is_the_identity(lm, clean_slots):
    a = BottleneckAdapter(64, 16, dtype=torch.float64)
    x = torch.randn(2, 5, 64, dtype=torch.float64) * 10
    assert torch.equal(a(x), x)
    # so replacing a layer by a fresh adapter is exactly skipping it
    attach_adapters(lm, {2: a})
    with lm.apply(PruningPlan(adapters=[2])):
        adapted = lm.logits(IDS)
    with lm.apply(PruningPlan(skip=[2])):
        skipped = lm.logits(IDS)
    assert torch.equal(adapted, skipped)


def test_record_layer_io_chains_layers(lm):
    windows = torch.tensor([IDS, IDS[::-1]])
    io = record_layer_io(lm, windows)
    assert sorted(io) == [0, 1, 2, 3]
    for i in range(3):
        assert torch.equal(io[i][1], io[i + 1][0])  # a layer's output is the next one's input
    x, y = io[0]
    assert x.shape == (2, len(IDS), 64) and x.dtype == torch.float32
    assert sorted(record_layer_io(lm, windows, layers=[1])) == [1]
    with pytest.raises(ValueError, match="layer 9 out of range"):
        record_layer_io(lm, windows, layers=[9])


def test_training_lowers_every_layers_heldout_mse(trained, lm):
    r = trained
    assert r.model_id == lm.model_id and r.layers == (0, 1, 2, 3) and r.bottleneck == 16
    assert r.n_windows + r.n_heldout == SMALL.n_prompts and r.n_sources == len(CALIBRATION_TEXTS)
    assert r.steps == SMALL.epochs * r.n_windows * SMALL.seq_len // SMALL.batch_tokens
    ratios = r.mse_ratio
    assert all(t < i for t, i in zip(r.mse_trained, r.mse_identity, strict=True)), (r.mse_identity, r.mse_trained)
    assert max(ratios) < 0.99 and sum(ratios) / len(ratios) < 0.95, ratios
    # training loss falls from the first epoch to the last, layer by layer
    assert all(b < a for a, b in zip(r.epoch_loss[0], r.epoch_loss[-1], strict=True))
    for a in r.adapters.values():
        assert a.up.weight.dtype == torch.float64 and not a.training
        assert not any(p.requires_grad for p in a.parameters())


def test_training_changes_every_parameter(lm):
    cfg = AdapterConfig(bottleneck=8, epochs=1, n_prompts=4, seq_len=16, batch_size=2, batch_tokens=16, layers=[1, 3])
    fresh = init_adapters(lm, cfg)
    before = {(i, n): p.detach().clone() for i, m in fresh.items() for n, p in m.named_parameters()}
    report = train_adapters(lm, CALIBRATION_TEXTS, cfg, adapters=fresh)
    assert report.layers == (1, 3) and report.adapters[1] is fresh[1]
    for (i, name), old in before.items():
        new = dict(report.adapters[i].named_parameters())[name]
        assert not torch.equal(new.double(), old.double()), f"layer {i} {name} did not change"


def test_same_seed_same_adapters(lm):
    cfg = AdapterConfig(bottleneck=8, epochs=1, n_prompts=4, seq_len=16, batch_size=2, layers=[2])
    a = train_adapters(lm, CALIBRATION_TEXTS, cfg)
    b = train_adapters(lm, CALIBRATION_TEXTS, cfg)
    assert a.mse_trained == b.mse_trained
    assert all(torch.equal(p, q) for p, q in zip(a.adapters[2].parameters(), b.adapters[2].parameters(), strict=True))


def test_save_load_round_trip_and_plan(trained, lm, tmp_path, clean_slots):
    path = save_adapters(trained.adapters, tmp_path / "a.safetensors", lm.model_id, trained.bottleneck)
    loaded = load_adapters(path, lm)
    assert sorted(loaded) == list(trained.layers)
    x = torch.randn(3, 7, 64, dtype=torch.float64)
    for i, m in loaded.items():
        assert m.bottleneck == 16 and torch.equal(m(x), trained.adapters[i](x))
    full = lm.logits(IDS)
    attach_adapters(lm, loaded)
    plan = PruningPlan(adapters=[1], geometry=lm.geometry)
    with lm.apply(plan):
        adapted = lm.logits(IDS)
        generated = lm.generate(IDS, max_new_tokens=4)
    with lm.apply(PruningPlan(skip=[1])):
        skipped = lm.logits(IDS)
    assert not torch.equal(adapted, full) and not torch.equal(adapted, skipped)
    assert len(generated.output_ids) <= 4
    assert torch.equal(lm.logits(IDS), full)  # restored bit for bit


def test_loading_for_another_model_names_both_ids(trained, lm, tmp_path):
    path = save_adapters(trained.adapters, tmp_path / "a.safetensors", lm.model_id, trained.bottleneck)
    other = PrunableLM(lm.model, lm.tokenizer, name="other")
    assert other.model_id != lm.model_id
    with pytest.raises(ValueError, match=re.escape(lm.model_id)) as e:
        load_adapters(path, other)
    assert other.model_id in str(e.value)


def test_damaged_and_foreign_files(trained, lm, tmp_path):
    good = save_adapters(trained.adapters, tmp_path / "a.safetensors", lm.model_id, trained.bottleneck)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01 not a safetensors file")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for bad in (garbage, truncated):
        with pytest.raises(ValueError, match=re.escape(str(bad))):
            load_adapters(bad, lm)
    from dynprune.importance import calibrate, save_importance

    imp = save_importance(calibrate(lm, CALIBRATION_TEXTS, n_prompts=2, seq_len=8), tmp_path / "imp.safetensors")
    with pytest.raises(ValueError, match="not an adapters file"):
        load_adapters(imp, lm)
    narrow = {0: BottleneckAdapter(32, 4)}
    wrong = save_adapters(narrow, tmp_path / "narrow.safetensors", lm.model_id, 4)
    with pytest.raises(ValueError, match="hidden size 32"):
        load_adapters(wrong, lm)
    with pytest.raises(FileNotFoundError):
        load_adapters(tmp_path / "missing.safetensors", lm)
    with pytest.raises(ValueError, match="hidden size 32"):
        attach_adapters(lm, narrow)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bottleneck": 0}, "bottleneck"),
        ({"lr": -1.0}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"n_prompts": 1}, "n_prompts"),
        ({"heldout_fraction": 1.0}, "heldout_fraction"),
        ({"layers": [1, 1]}, "repeats"),
        ({"layers": [-1]}, "-1"),
        ({"only_correct": "yes"}, "only_correct"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdapterConfig(**kwargs)


def test_bad_training_requests(lm):
    cfg = AdapterConfig(bottleneck=4, epochs=1, n_prompts=4, seq_len=8, layers=[7])
    with pytest.raises(ValueError, match="layer 7 out of range"):
        train_adapters(lm, CALIBRATION_TEXTS, cfg)
    with pytest.raises(ValueError, match="at least 2"):
        train_adapters(lm, ["only one text"], AdapterConfig(n_prompts=4, seq_len=8))
    with pytest.raises(ValueError, match="only_correct needs prompts"):
        train_adapters(lm, CALIBRATION_TEXTS, AdapterConfig(only_correct=True))
    with pytest.raises(ValueError, match="not both"):
        train_adapters(lm, CALIBRATION_TEXTS, prompts=[Prompt(id="a", text="hi")])
    with pytest.raises(RuntimeError, match="outside lm.apply"), lm.apply(PruningPlan(skip=[1])):
        train_adapters(lm, CALIBRATION_TEXTS, cfg)


def test_only_correct_keeps_the_prompts_the_full_model_gets_right(lm):
    cfg = AdapterConfig(bottleneck=4, epochs=1, n_prompts=4, seq_len=16, only_correct=True, max_new_tokens=3)
    texts = ["What is 2+2?", "Name a colour.", "Capital of France?", "Say hi.", "Count to three."]
    prompts = []
    for i, text in enumerate(texts):
        out = lm.generate(text, max_new_tokens=3).text
        # the random model's own answer is "gold" for even prompts; odd ones cannot be matched
        gold = out if i % 2 == 0 and out.strip() else "zz-never-said-zz"
        prompts.append(Prompt(id=f"p{i}", text=text, answer=gold))
    right = sum(p.answer != "zz-never-said-zz" for p in prompts)
    assert right >= 2, "the tiny model's answers should be usable as gold"
    no_truth = Prompt(id="free", text="Tell me something.")
    report = train_adapters(lm, config=cfg, prompts=[*prompts, no_truth])
    assert report.source == "correct prompts" and report.n_sources == right
    wrong = [Prompt(id=p.id, text=p.text, answer="zz-never-said-zz") for p in prompts]
    with pytest.raises(ValueError, match="answered none of the 5 prompts"):
        train_adapters(lm, config=cfg, prompts=wrong)


def test_report_json_and_plot(trained, tmp_path):
    again = AdapterReport.from_json(trained.to_json())
    assert again == trained and again.adapters == {}
    data = json.loads(trained.to_json())
    assert data["layers"] == [0, 1, 2, 3] and len(data["mse_ratio"]) == 4 and "adapters" not in data
    png = plot_adapter_mse(trained, tmp_path / "mse.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="dynprune")
    sub = parser.add_subparsers(dest="command", required=True)
    add_adapter_commands(sub)
    args = parser.parse_args(list(argv))
    return args.fn(args)


def test_cli_writes_files_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "tiny.safetensors"
    argv = [
        "adapters",
        "train",
        "--model",
        "tiny-llama",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--bottleneck",
        "8",
        "--epochs",
        "1",
        "--n-prompts",
        "4",
        "--seq-len",
        "16",
        "--layers",
        "1,2",
    ]
    assert run_cli(*argv) == 0
    table = capsys.readouterr().out
    assert "adapter MSE" in table and re.search(r"^\s+2\s", table, re.M)
    adapters, report, plot = output_paths(out)
    assert report.name == "tiny.mse.json" and plot.name == "tiny.mse.png"
    assert all(p.is_file() for p in (adapters, report, plot))
    assert json.loads(report.read_text())["layers"] == [1, 2]
    before = adapters.read_bytes()
    with pytest.raises(ValueError, match="--force"):
        run_cli(*argv)
    assert adapters.read_bytes() == before
    assert run_cli(*argv, "--force", "--seed", "3") == 0
    assert adapters.read_bytes() != before
    lm = load_model("tiny-llama", device="cpu")
    assert sorted(load_adapters(adapters, lm)) == [1, 2]


def test_cli_layers_are_comma_separated_integers(capsys):
    with pytest.raises(SystemExit):
        run_cli("adapters", "train", "--out", "x.safetensors", "--layers", "1,two")
    assert "expected comma-separated layer indices such as 1,2,5, got '1,two'" in capsys.readouterr().err
