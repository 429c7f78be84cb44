"""Plan-conditional healing on tiny-llama: it heals pruned plans, leaves the full model bit-exact,
restores exactly, and refuses a model it was not trained for."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from dynprune.healing import (
    HealingConfig,
    LoRALinear,
    PlanHealing,
    attach_healing,
    load_healing,
    read_info,
)
from dynprune.healing_train import HealTrainConfig, batched_generate, train_healing
from dynprune.models import PrunableLM, tiny_llama
from dynprune.plan import NO_PRUNING, PruningPlan
from dynprune.types import Prompt

IDS = list(range(3, 60))


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))


def _kl(lm: PrunableLM, plan: PruningPlan, ids: list[int], start: int = 1) -> float:
    """Exact mean KL(original || plan) of the next-token distributions predicting ``ids[start:]`` (full vocabulary)."""
    ref = torch.log_softmax(lm.logits(ids)[0, start - 1 : -1].double(), -1)
    with lm.apply(plan):
        got = torch.log_softmax(lm.logits(ids)[0, start - 1 : -1].double(), -1)
    return float((ref.exp() * (ref - got)).sum(-1).mean())


def _random_healing(lm: PrunableLM, config: HealingConfig | None = None) -> PlanHealing:
    healing = PlanHealing.for_model(lm, config or HealingConfig(grouping="kind"))
    with torch.no_grad():
        for pair in healing.pairs.values():
            pair.B.normal_(0.0, 0.05)
    healing.clear_cache()
    return healing


def _prompts(n: int) -> list[Prompt]:
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    return [Prompt(id=f"p{i}", text=f"{words[i % 8]} {words[(3 * i + 1) % 8]} number {i}", split="train")
            for i in range(n)]


ONE_PLAN_TABLE = ({"name": "layers-25%", "kind": "layers", "amount": 0.25},)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_lm32: PrunableLM) -> tuple[Path, PlanHealing, object]:
    """Healing trained on tiny-llama for one layer plan (validation texts repeat training texts)."""
    out = tmp_path_factory.mktemp("heal") / "tiny-heal"
    # every text twice: the held-out validation prompts repeat training texts, so the validation KL
    # measures the training objective (a random model has nothing to generalise)
    prompts = [p for p in _prompts(12) for p in (p, Prompt(id=p.id + "b", text=p.text, split="train"))]
    config = HealTrainConfig(max_new_tokens=12, sampled=0, steps=40, batch_size=8, lr=5e-3, warmup=2,
                             eval_every=20, table=ONE_PLAN_TABLE, val_fraction=0.25)
    healing, report = train_healing(tiny_lm32, out, config, HealingConfig(grouping="kind", rank=4), prompts=prompts,
                                    progress=False)
    return out, healing, report


def test_training_lowers_kl_of_the_pruned_plan(trained: tuple, tiny_lm32: PrunableLM) -> None:
    out, healing, report = trained
    first, best = report.validations[0]["plans"]["layers-25%"]["kl"], report.best_val_kl["layers"]
    assert report.best_step["layers"] > 0 and best < 0.8 * first
    plan = PruningPlan.from_dict(read_info(out).plans["layers-25%"])
    # the KL the training lowers: over the original's greedy answer to a training prompt
    prompt = tiny_lm32.encode_prompt(_prompts(1)[0].text)
    ids = [*prompt, *batched_generate(tiny_lm32, [prompt], 12)[0]]
    before = _kl(tiny_lm32, plan, ids, len(prompt))
    attach_healing(tiny_lm32, out)
    try:
        after = _kl(tiny_lm32, plan, ids, len(prompt))
        assert tiny_lm32.healing_label(plan) == f"tiny-heal@{tiny_lm32.healing.fingerprint}:layers"
        assert tiny_lm32.healing_label(NO_PRUNING) is None
    finally:
        tiny_lm32.set_healing(None)
    assert after < before
    assert report.steps == 40 and report.stopped == "steps"
    assert {p.name for p in out.iterdir()} == {"healing.json", "lora.safetensors"}


def test_none_is_the_original_bit_for_bit(tiny_lm32: PrunableLM) -> None:
    ref = tiny_lm32.logits(IDS)
    tiny_lm32.set_healing(_random_healing(tiny_lm32))
    try:
        with tiny_lm32.apply(NO_PRUNING):
            assert torch.equal(tiny_lm32.logits(IDS), ref)
            assert tiny_lm32.healing_label(NO_PRUNING) is None
        assert torch.equal(tiny_lm32.logits(IDS), ref)
    finally:
        tiny_lm32.set_healing(None)


@pytest.mark.parametrize("grouping,placement", [("kind", "all"), ("shared", "cut")])
def test_restore_is_exact_with_healing_active(tiny_lm32: PrunableLM, grouping: str, placement: str) -> None:
    lm = tiny_lm32
    ref = lm.logits(IDS)
    originals = [(m, name, getattr(m, name)) for layer in lm._layers for m in (layer.self_attn, layer.mlp)
                 for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
                 if hasattr(m, name)]
    healing = _random_healing(lm, HealingConfig(grouping=grouping, placement=placement))
    lm.set_healing(healing)
    plans = [PruningPlan(skip=[1]), PruningPlan(heads={0: 5, 2: 3}), PruningPlan(ffn={1: 50, 3: 100}),
             PruningPlan(skip=[2], heads={0: 6}, ffn={1: 60})]
    try:
        for plan in plans:
            for merged in (True, False):
                healing.merged = merged
                unhealed = None
                with lm.apply(plan):
                    healed = lm.logits(IDS)
                lm.set_healing(None)
                with lm.apply(plan):
                    unhealed = lm.logits(IDS)
                lm.set_healing(healing)
                assert not torch.allclose(healed, unhealed)  # the healing did act under the plan
                assert torch.equal(lm.logits(IDS), ref)
                assert all(getattr(m, name) is orig for m, name, orig in originals)
        with pytest.raises(RuntimeError, match="boom"), lm.apply(plans[0]):
            raise RuntimeError("boom")
        assert torch.equal(lm.logits(IDS), ref)
        # merged serving computes what the trained (unmerged) modules compute
        healing.merged = False
        with lm.apply(plans[3]):
            assert isinstance(lm._layers[0].mlp.down_proj, LoRALinear)
            unmerged = lm.logits(IDS)
        healing.merged = True
        with lm.apply(plans[3]):
            merged = lm.logits(IDS)
        assert torch.allclose(merged, unmerged, atol=1e-4)
    finally:
        lm.set_healing(None)


def test_folder_for_another_model_is_refused(trained: tuple, tiny_lm32: PrunableLM) -> None:
    out, healing, _ = trained
    model, tokenizer = tiny_llama(torch.float32, seed=1)
    other = PrunableLM(model, tokenizer, name="tiny-llama-seed1")
    with pytest.raises(ValueError) as err:
        load_healing(out, other)
    assert tiny_lm32.model_id in str(err.value) and other.model_id in str(err.value)
    with pytest.raises(ValueError, match="not for this model"):
        other.set_healing(healing)
    with pytest.raises(ValueError, match="not a healing folder"):
        load_healing(out.parent, tiny_lm32)


def _record(info: dict) -> dict:
    """The step's record from an env info (a JSON string, or a dict in older versions)."""
    rec = info["record"]
    return json.loads(rec) if isinstance(rec, str) else rec


def test_env_records_which_healing_was_active(trained: tuple, tiny_lm32: PrunableLM) -> None:
    import gymnasium as gym

    from dynprune.records import record_from_dict

    out, _, _ = trained
    env = gym.make("DynPrune-v0", model=tiny_lm32, prompts=_prompts(3), split=None, reward="proxy",
                   max_new_tokens=4, healing=str(out),
                   action_table=[{"name": "none", "kind": "none"}, *ONE_PLAN_TABLE,
                                 {"name": "ffn-25%", "kind": "ffn", "amount": 0.25}])
    try:
        env.reset(seed=0)
        labels = []
        for action in (0, 1, 2):
            _, _, _, _, info = env.step(action)
            labels.append(_record(info)["healing"])
            env.reset()
        assert labels[0] is None  # the none action is never healed
        assert labels[1] == tiny_lm32.healing_label(env.unwrapped.plan(1)) and labels[1].endswith(":layers")
        assert labels[2] is None  # the ffn group was not trained: served unhealed
        old = dict(_record(info))
        del old["healing"]  # a log written before the field existed still reads
        assert record_from_dict(old).healing is None
    finally:
        env.close()
        tiny_lm32.set_healing(None)


def test_memo_key_names_the_active_healing(tiny_lm32: PrunableLM) -> None:
    from dynprune.quality_memo import quality_key

    plan, answer = PruningPlan(skip=[1]), [5, 6, 7]
    plain = quality_key(tiny_lm32, plan, IDS, answer, 8)
    tiny_lm32.set_healing(_random_healing(tiny_lm32))
    try:
        assert quality_key(tiny_lm32, plan, IDS, answer, 8) != plain
        assert quality_key(tiny_lm32, NO_PRUNING, IDS, answer, 8) == quality_key(
            tiny_lm32.__class__(tiny_lm32.model, tiny_lm32.tokenizer, model_id=tiny_lm32.model_id), NO_PRUNING,
            IDS, answer, 8)
    finally:
        tiny_lm32.set_healing(None)
    assert quality_key(tiny_lm32, plan, IDS, answer, 8) == plain


def test_batched_generate_matches_single_decoding(tiny_lm32: PrunableLM) -> None:
    lm = tiny_lm32
    prompts = [lm.encode_prompt(p.text) for p in _prompts(5)]
    for plan in (NO_PRUNING, PruningPlan(skip=[1])):
        with lm.apply(plan):
            batched = batched_generate(lm, prompts, 6, batch_size=3)
            for ids, answer in zip(prompts, batched, strict=True):
                g = lm.generate(ids, 6)
                stopped = g.produced > len(g.output_ids)
                assert answer == g.output_ids + ((min(lm.eos_ids),) if stopped else ())


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="grouping"):
        HealingConfig(grouping="per-layer")
    with pytest.raises(ValueError, match="targets"):
        HealingConfig(targets=("q_proj", "lm_head"))
    with pytest.raises(ValueError, match="kind_weights"):
        HealTrainConfig(kind_weights=(0.0, 0.0, 0.0))
    assert HealTrainConfig.from_dict(HealTrainConfig(extra_layer_ks=(4, 1)).to_dict()).extra_layer_ks == (1, 4)
    assert HealingConfig.from_dict(HealingConfig(targets=("o_proj", "q_proj")).to_dict()).targets == (
        "q_proj", "o_proj")


def test_float16_folder_loads_to_the_same_fingerprint(tmp_path: Path, tiny_lm32: PrunableLM) -> None:
    from dynprune.healing import HealingInfo, save_healing

    healing = _random_healing(tiny_lm32, HealingConfig(rank=2))
    info = HealingInfo(model_id=tiny_lm32.model_id, model_spec="tiny-llama", config=healing.config.to_dict(),
                       table=[], plans={}, trained_groups=("layers", "heads", "ffn"))
    save_healing(healing, tmp_path / "h16", info, dtype="float16")
    loaded = load_healing(tmp_path / "h16", tiny_lm32)
    assert loaded.fingerprint == healing.fingerprint == read_info(tmp_path / "h16").fingerprint
    pair = next(iter(loaded.pairs.values()))
    assert torch.equal(pair.B, pair.B.half().float())  # stored in half precision
    with pytest.raises(FileExistsError):
        save_healing(healing, tmp_path / "h16", info)


def test_new_importance_rebuilds_the_healed_slices(tiny_lm32: PrunableLM) -> None:
    from dynprune.importance import calibrate

    lm = tiny_lm32
    plan = PruningPlan(heads={0: 5}, ffn={1: 60})
    healing = _random_healing(lm)
    original = lm.importance
    lm.set_healing(healing)
    try:
        with lm.apply(plan):
            before = lm.logits(IDS)
        other = calibrate(lm, texts=["zzz yyy xxx www " * 8], n_prompts=2, seq_len=24)
        lm.set_importance(other)  # other heads / channels are kept: the healed slices must follow
        with lm.apply(plan):
            after = lm.logits(IDS)
        lm.set_healing(None)
        with lm.apply(plan):
            plain = lm.logits(IDS)
        healing.merged = False
        lm.set_healing(healing)
        with lm.apply(plan):
            unmerged = lm.logits(IDS)
        assert torch.allclose(after, unmerged, atol=1e-4) and not torch.allclose(after, plain)
        assert not torch.allclose(before, after)
    finally:
        lm.set_healing(None)
        lm.set_importance(original)


def test_a_stopped_run_resumes_where_it_was(tmp_path: Path, tiny_lm32: PrunableLM,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import dynprune.healing_train as ht

    prompts = [p for p in _prompts(6) for p in (p, Prompt(id=p.id + "b", text=p.text, split="train"))]
    config = HealTrainConfig(max_new_tokens=6, sampled=0, steps=8, batch_size=4, lr=5e-3, warmup=1, eval_every=4,
                             table=ONE_PLAN_TABLE, val_fraction=0.25)
    real, calls = ht.validate, []

    def interrupted(*a: object, **k: object) -> object:
        calls.append(1)
        if len(calls) == 3:  # the last validation (step 8): as if Ctrl-C hit there
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ht, "validate", interrupted)
    out = tmp_path / "h"
    quiet = {"prompts": prompts, "progress": False, "log": lambda _: None}
    with pytest.raises(KeyboardInterrupt):
        train_healing(tiny_lm32, out, config, HealingConfig(rank=2), **quiet)
    assert not out.exists() and (ht.work_folder(out) / "checkpoint.pt").is_file()
    assert tiny_lm32.healing is None  # the model is left as it was
    monkeypatch.setattr(ht, "validate", real)
    with pytest.raises(ValueError, match="another run"):  # other settings: refused, not mixed in
        train_healing(tiny_lm32, out, dataclasses.replace(config, lr=1e-3), HealingConfig(rank=2), **quiet)
    _, report = train_healing(tiny_lm32, out, config, HealingConfig(rank=2), **quiet)
    assert report.resumed_from == 4 and report.steps == 8
    assert [v["step"] for v in report.validations] == [0, 4, 8]
    assert out.is_dir() and not ht.work_folder(out).exists()


def test_heal_command_writes_a_folder_the_env_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from dynprune.cli import main

    monkeypatch.setattr("dynprune.healing_cli.load_model_from_args", lambda args, calibrate=False: _cli_model())
    rows = [{"id": f"{p.id}{c}", "text": p.text, "split": "train"} for p in _prompts(6) for c in "ab"]
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "healed"
    argv = ["heal", "--model", "tiny-llama", "--out", str(out), "--prompts", str(source), "--max-new-tokens", "6",
            "--sampled", "0", "--steps", "6", "--eval-every", "3", "--lr", "5e-3", "--warmup", "1",
            "--val-fraction", "0.25", "--rank", "2", "--save-dtype", "float16"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out and read_info(out).config["grouping"] == "shared"
    assert main(argv) == 2  # the folder exists: refused without --force
    assert "--force" in capsys.readouterr().err


_CLI_MODEL: list[PrunableLM] = []


def _cli_model() -> PrunableLM:
    """One float32 tiny-llama for the CLI test (calibrated like the fixtures)."""
    if not _CLI_MODEL:
        from tests.conftest import tiny

        _CLI_MODEL.append(tiny(torch.float32))
    return _CLI_MODEL[0]


def _saved_random_healing(lm: PrunableLM, folder: Path) -> PlanHealing:
    """A random kind-grouped healing for ``lm`` written to ``folder`` as ``dynprune heal`` would."""
    from dynprune.healing import HealingInfo, save_healing

    healing = _random_healing(lm, HealingConfig(grouping="kind", rank=2))
    info = HealingInfo(model_id=lm.model_id, model_spec="tiny-llama", config=healing.config.to_dict(), table=[],
                       plans={}, trained_groups=("layers", "heads", "ffn"))
    save_healing(healing, folder, info)
    return load_healing(folder, lm)


def test_explore_logs_and_the_router_data_say_which_healing(tmp_path: Path) -> None:
    from agents.router.train import load_router_data
    from dynprune.models import load_model
    from dynprune.runtime import ProfileConfig
    from offline_data.dataset import load_logs
    from offline_data.explore import explore, prompt_ids_of

    env = {"model": "tiny-llama", "reward": "proxy", "max_new_tokens": 3, "split": "train",
           "profile": ProfileConfig(new_tokens=2, repeats=1)}
    healing = _saved_random_healing(load_model("tiny-llama", device="cpu"), tmp_path / "tiny-heal")
    ids = prompt_ids_of(env)[:1]
    healed, plain = tmp_path / "healed", tmp_path / "plain"
    explore({**env, "healing": str(tmp_path / "tiny-heal")}, "dfs", healed, prompt_ids=ids, threshold=0.0,
            max_configs=4)
    explore(env, "dfs", plain, prompt_ids=ids, threshold=0.0, max_configs=4)
    rows = load_logs(healed).to_list()
    assert any(r["layers"] for r in rows)
    for r in rows:  # layer sets are healed by the layers group; the full model never is
        assert r["healing"] == (f"tiny-heal@{healing.fingerprint}:layers" if r["layers"] else None)
    assert all(r["healing"] is None for r in load_logs(plain).to_list())
    assert load_router_data([healed]).healing == f"tiny-heal@{healing.fingerprint}"
    assert load_router_data([plain]).healing is None
    with pytest.raises(ValueError, match="different healings"):  # scores under two healings do not mix
        load_router_data([healed, plain])


def test_a_table_built_healed_serves_and_names_its_healing(trained: tuple, tiny_lm32: PrunableLM,
                                                            tmp_path: Path) -> None:
    import gymnasium as gym

    import envs  # noqa: F401 - registers the ids
    from dynprune.actions import make_table
    from dynprune.latency_model import LatencyCalibration, calibrate_latency
    from dynprune.table import build_table, read_table
    from dynprune.tasks import load_prompts

    out, healing, _ = trained
    latency, _ = calibrate_latency(tiny_lm32, LatencyCalibration(points=4, repeats=1, prompt_tokens=(4, 16),
                                                                 new_tokens=(2, 3)))
    actions = make_table([{"name": "none", "kind": "none"}, *ONE_PLAN_TABLE,
                          {"name": "ffn-25%", "kind": "ffn", "amount": 0.25}])
    prompts = load_prompts("dynprune", split="train")[:2]
    plain_file, healed_file = tmp_path / "plain.parquet", tmp_path / "healed.parquet"
    kw = {"max_new_tokens": 4, "actions": actions, "latency_model": latency, "progress": None}
    build_table(tiny_lm32, prompts, plain_file, **kw)
    attach_healing(tiny_lm32, out)
    try:
        build_table(tiny_lm32, prompts, healed_file, **kw)
        with pytest.raises(ValueError, match="healing"):  # a healed build does not resume an unhealed table
            build_table(tiny_lm32, prompts, plain_file, **kw)
    finally:
        tiny_lm32.set_healing(None)
    plain, healed = read_table(plain_file), read_table(healed_file)
    layers = healed.action_names.index("layers-25%")
    assert healed.actions["prefix_fidelity"][:, 0].tolist() == plain.actions["prefix_fidelity"][:, 0].tolist()
    assert healed.actions["ppl"][:, layers].tolist() != plain.actions["ppl"][:, layers].tolist()  # healed numbers

    env = gym.make("DynPruneTable-v0", table=healed_file, split=None, reward="proxy", healing=str(out))
    core = env.unwrapped
    assert core.healing == f"tiny-heal@{healing.fingerprint}"
    env.reset(seed=0)
    labels = []
    for action in range(3):
        labels.append(env.step(action)[4]["healing"])
        env.reset()
    # as DynPrune-v0 records them: none never healed, the trained layers group, ffn (untrained) unhealed
    assert labels == [None, f"tiny-heal@{healing.fingerprint}:layers", None]
    assert gym.make("DynPruneTable-v0", table=plain_file, split=None).unwrapped.healing is None
    with pytest.raises(ValueError, match="built unhealed"):
        gym.make("DynPruneTable-v0", table=plain_file, split=None, healing=str(out))
    with pytest.raises(ValueError, match="not a healing folder"):
        gym.make("DynPruneTable-v0", table=healed_file, split=None, healing=str(tmp_path))


def test_healing_benchmark_side_by_side_measures_the_baselines_on_the_k_rows(tmp_path: Path) -> None:
    """``--rows k``: the k rows only, each with unhealed, the healings and the thesis' adapters; static
    removal + LoRA at the static ks; no targets (they are judged on the table's actions)."""
    from benchmarks.healing import ADAPTERS, STATIC, Args, main

    out = tmp_path / "side.json"
    data = main(["--smoke", "--rows", "k", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == data["rows"]
    assert [r["name"] for r in data["rows"]] == ["k=1", "k=2"] and "targets" not in data
    assert data["baselines"] == [ADAPTERS, STATIC]
    k1, k2 = data["rows"]
    assert {"unhealed", "kind", "shared", ADAPTERS, STATIC} <= set(k1) and STATIC not in k2 and ADAPTERS in k2
    for q in (k1[ADAPTERS], k1[STATIC], k2[ADAPTERS]):
        assert 0 <= q["greedy_agreement"] <= 1 and q["kl"] > 0
    # adapters replace the row's layers: a different model from skipping them
    assert k1[ADAPTERS]["kl"] != k1["unhealed"]["kl"]
    report = data["baseline_settings"][STATIC]["reports"]["k=1"]
    assert report["steps"] >= 1 and data["baseline_settings"][STATIC]["train"]["loss"] == "kd"
    with pytest.raises(ValueError, match="rows must be"):
        Args(smoke=True, out=str(out), rows="table")


def test_init_trains_a_finished_healing_further(trained: tuple, tiny_lm32: PrunableLM, tmp_path: Path) -> None:
    """``init``: the run starts from the folder's weights (step 0 validates as its best step did), records
    where it started, and refuses a folder of other healing settings."""
    out, _, report = trained
    prompts = [p for p in _prompts(12) for p in (p, Prompt(id=p.id + "b", text=p.text, split="train"))]
    config = HealTrainConfig(max_new_tokens=12, sampled=0, steps=10, batch_size=8, lr=1e-3, warmup=2,
                             eval_every=10, table=ONE_PLAN_TABLE, val_fraction=0.25, init=str(out))
    more, again = train_healing(tiny_lm32, tmp_path / "more", config, HealingConfig(grouping="kind", rank=4),
                                prompts=prompts, progress=False)
    start = again.validations[0]["plans"]["layers-25%"]["kl"]
    # the saved weights are float32 like the training ones: step 0 is the init's best step, up to float noise
    assert start == pytest.approx(report.best_val_kl["layers"], rel=1e-4)
    assert start < 0.8 * report.validations[0]["plans"]["layers-25%"]["kl"]  # not a fresh LoRA
    info = read_info(tmp_path / "more")
    assert info.training["init"] == str(out) and info.trained_groups == ("layers",)
    assert again.best_val_kl["layers"] <= start
    with pytest.raises(ValueError, match="was trained with healing settings"):
        train_healing(tiny_lm32, tmp_path / "other", config, HealingConfig(grouping="kind", rank=8),
                      prompts=prompts, progress=False)
