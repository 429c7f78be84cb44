"""The router on tiny models: top-k relaxations, losses against hand computations, training, files, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from agents.router import cli as router_cli
from agents.router.agent import RouterAgent, nearest_entry
from agents.router.configs import METHODS, DPOConfig, FBCConfig, ORPOConfig
from agents.router.data import RouterData, fbc_targets, load_router_data
from agents.router.losses import (
    config_logprob,
    dpo_loss,
    fbc_loss,
    orpo_loss,
    plackett_luce_set_logprob,
    ratio_bin_logprob,
)
from agents.router.model import FEATURES, Router, RouterConfig, RouterOutput, SentenceEncoder, load_router
from agents.router.topk import TOPK_METHODS, gumbel_topk, hard_topk, sinkhorn_topk
from agents.router.train import train_router, trainable_parameters

WORDS = ["what", "is", "the", "capital", "of", "france", "two", "plus", "write", "a", "poem", "about", "rain",
         "sum", "list", "numbers", "python", "function", "?", "."]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A random 1-layer BERT (hidden 8) with a word-level vocabulary, saved as an AutoModel folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=16)
    tok.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=8, max_position_embeddings=16, type_vocab_size=1)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def encoder(tiny_bert) -> SentenceEncoder:
    return SentenceEncoder(tiny_bert)


def make_router(encoder: SentenceEncoder, num_layers: int = 4, seed: int = 0) -> Router:
    torch.manual_seed(seed)
    cfg = RouterConfig(num_layers=num_layers, in_dim=encoder.dim, features="minilm", encoder=encoder.path, hidden=16)
    return Router(cfg, encoder=encoder)


TEXTS = {"p1": "what is the capital of france ?", "p2": "two plus two", "p3": "write a poem about rain",
         "p4": "sum a list of numbers in python", "p5": "python function"}


def toy_data() -> RouterData:
    """Five prompts on a 4-layer model; layer 0 is never pruned (as the exploration does)."""
    configs = {
        "p1": [((), 1.0), ((3,), 1.0), ((2, 3), 0.5), ((1,), 0.25)],
        "p2": [((), 1.0), ((1,), 1.0), ((1, 2), 1.0), ((1, 2, 3), 0.0)],
        "p3": [((), 1.0), ((2,), 0.75), ((3,), 0.5)],
        "p4": [((), 1.0), ((3,), 1.0), ((1, 3), 1.0)],
        "p5": [((), 1.0), ((2,), 1.0), ((2, 3), 0.0)],
    }
    from offline_data.prefs import preference_pairs

    rows = [{"prompt_id": p, "layers": list(layers), "token_agreement": s, "task_score": None}
            for p, items in configs.items() for layers, s in items]
    return RouterData(4, dict(TEXTS), configs, preference_pairs(rows))


# ----------------------------------------------------------------------------- top-k


def test_sinkhorn_topk_converges_to_hard_topk():
    torch.manual_seed(0)
    scores = torch.randn(3, 10, dtype=torch.float64)
    k = torch.tensor([2, 5, 7])
    hard = hard_topk(scores, k)
    mean_err, max_err = [], []
    for tau in (1.0, 0.1, 0.01, 0.001):
        soft = sinkhorn_topk(scores, k, tau=tau, n_iter=500)
        np.testing.assert_allclose(soft.sum(dim=1).numpy(), k.numpy(), atol=1e-3)
        assert bool(((soft >= 0) & (soft <= 1 + 1e-12)).all())
        mean_err.append(float((soft - hard).abs().mean()))
        max_err.append(float((soft - hard).abs().max()))
    assert all(b < a for a, b in zip(mean_err, mean_err[1:], strict=False)), mean_err
    assert mean_err[0] > 0.1 and max_err[-1] < 2e-3, (mean_err, max_err)


def test_sinkhorn_topk_has_gradients_and_edge_k():
    scores = torch.randn(2, 6, requires_grad=True)
    soft = sinkhorn_topk(scores, torch.tensor([0, 6]), tau=0.1)
    assert torch.equal(soft[0], torch.zeros(6)) and torch.equal(soft[1], torch.ones(6))
    soft = sinkhorn_topk(scores, 3, tau=0.5)
    (soft * torch.arange(6.0)).sum().backward()
    assert scores.grad is not None and float(scores.grad.abs().sum()) > 0


def test_gumbel_topk_sums_to_k_and_tends_to_hard_topk():
    torch.manual_seed(1)
    logits = torch.randn(4, 8, dtype=torch.float64)
    k = torch.tensor([1, 3, 3, 6])
    g = torch.Generator().manual_seed(0)
    soft = gumbel_topk(logits, k, tau=0.5, generator=g)
    np.testing.assert_allclose(soft.sum(dim=1).numpy(), k.numpy(), atol=1e-6)
    cold = gumbel_topk(logits, k, tau=1e-3, noise=False)
    np.testing.assert_allclose(cold.numpy(), hard_topk(logits, k).numpy(), atol=1e-6)
    x = logits.clone().requires_grad_(True)
    st = gumbel_topk(x, k, tau=0.5, hard=True, generator=g)
    assert set(np.unique(st.detach().numpy()).tolist()) <= {0.0, 1.0}
    (st * torch.arange(8.0, dtype=torch.float64)).sum().backward()
    assert float(x.grad.abs().sum()) > 0


def test_topk_bad_input():
    with pytest.raises(ValueError, match="k must be in 0..4"):
        hard_topk(torch.zeros(1, 4), 5)
    with pytest.raises(ValueError, match="tau must be > 0"):
        sinkhorn_topk(torch.zeros(1, 4), 1, tau=0.0)
    with pytest.raises(ValueError, match=r"\[batch, layers\]"):
        gumbel_topk(torch.zeros(4), 1)


# ----------------------------------------------------------------------------- losses by hand

# a 2-example batch on a 4-layer model whose layer 0 is protected: free layers 1, 2, 3
L = 4
FREE = torch.tensor([1, 2, 3])
OUT = RouterOutput(
    logits=torch.tensor([[9.0, 0.5, -1.0, 2.0], [9.0, -0.3, 1.2, 0.0]], dtype=torch.float64),
    mu=torch.tensor([0.3, 0.6], dtype=torch.float64),
    log_sigma=torch.tensor([-3.0, -4.0], dtype=torch.float64),
)
WIN = torch.tensor([[0, 0, 0, 1], [0, 1, 1, 0]], dtype=torch.float64)  # {3}, {1, 2}
LOSE = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.float64)  # {1, 2}, {}


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def bern(logits: list[float], mask: list[int]) -> float:
    return sum(math.log(sig(x)) if m else math.log(1.0 - sig(x)) for x, m in zip(logits, mask, strict=True))


def normal_lp(r: float, mu: float, ls: float) -> float:
    s = math.exp(ls)
    return -0.5 * ((r - mu) / s) ** 2 - ls - 0.5 * math.log(2 * math.pi)


def phi(z: float) -> float:
    """Standard normal CDF; erfc keeps the lower tail accurate (1 + erf(z) cancels to 0 there)."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


FREE_LOGITS = [[0.5, -1.0, 2.0], [-0.3, 1.2, 0.0]]
MU, LS = [0.3, 0.6], [-3.0, -4.0]


def test_fbc_loss_matches_hand_computation():
    got = fbc_loss(OUT, WIN, FREE, L).loss.item()
    # targets: k = 1 -> r* = 1.5/4 = 0.375; k = 2 -> r* = 2.5/4 = 0.625
    mse = ((0.3 - 0.375) ** 2 + (0.6 - 0.625) ** 2) / 2
    bce_terms = []
    for logits, mask in zip(FREE_LOGITS, ([0, 0, 1], [1, 1, 0]), strict=True):
        for x, m in zip(logits, mask, strict=True):
            bce_terms.append(-(m * math.log(sig(x)) + (1 - m) * math.log(1 - sig(x))))
    expected = mse + sum(bce_terms) / len(bce_terms)
    assert got == pytest.approx(expected, rel=1e-12)
    # the layer weight scales only the BCE term
    got2 = fbc_loss(OUT, WIN, FREE, L, layer_weight=2.0).loss.item()
    assert got2 == pytest.approx(mse + 2 * sum(bce_terms) / len(bce_terms), rel=1e-12)


def test_config_logprob_and_dpo_loss_match_hand_computation():
    ref = RouterOutput(OUT.logits * 0.5, OUT.mu * 0 + 0.5, OUT.log_sigma * 0 - 3.5)
    pw = config_logprob(OUT, WIN, FREE, L).total
    pl = config_logprob(OUT, LOSE, FREE, L).total
    rw = config_logprob(ref, WIN, FREE, L).total
    rl = config_logprob(ref, LOSE, FREE, L).total
    hand = {}
    for name, out_mu, out_ls, scale in (("p", MU, LS, 1.0), ("r", [0.5, 0.5], [-3.5, -3.5], 0.5)):
        for tag, masks in (("w", ([0, 0, 1], [1, 1, 0])), ("l", ([1, 1, 0], [0, 0, 0]))):
            vals = []
            for b in range(2):
                k = sum(masks[b])
                vals.append(normal_lp((k + 0.5) / 4, out_mu[b], out_ls[b])
                            + bern([scale * x for x in FREE_LOGITS[b]], masks[b]))
            hand[name + tag] = vals
    np.testing.assert_allclose(pw.numpy(), hand["pw"], rtol=1e-12)
    np.testing.assert_allclose(rl.numpy(), hand["rl"], rtol=1e-12)
    beta = 0.2
    got = dpo_loss(pw, pl, rw, rl, beta=beta)
    margins = [beta * ((hand["pw"][b] - hand["rw"][b]) - (hand["pl"][b] - hand["rl"][b])) for b in range(2)]
    expected = sum(-math.log(sig(m)) for m in margins) / 2
    assert got.loss.item() == pytest.approx(expected, rel=1e-12)
    assert got.metrics["rewards/margins"] == pytest.approx(sum(margins) / 2, rel=1e-9)


def test_orpo_loss_matches_hand_computation():
    cw = config_logprob(OUT, WIN, FREE, L, ratio_term="bin")
    cl = config_logprob(OUT, LOSE, FREE, L, ratio_term="bin")

    def logp(b: int, mask: list[int]) -> float:
        k = sum(mask)
        s = math.exp(LS[b])
        p_bin = phi(((k + 1) / 4 - MU[b]) / s) - phi((k / 4 - MU[b]) / s)
        return (math.log(p_bin) + bern(FREE_LOGITS[b], mask)) / (1 + 3)  # ratio + 3 free layers

    w = [logp(0, [0, 0, 1]), logp(1, [1, 1, 0])]
    lo = [logp(0, [1, 1, 0]), logp(1, [0, 0, 0])]
    np.testing.assert_allclose((cw.total / cw.terms).numpy(), w, rtol=1e-9)

    def log_odds(lp: float) -> float:
        return lp - math.log(1 - math.exp(lp))

    beta = 0.3
    nll = -(w[0] + w[1]) / 2
    ratio = [-math.log(sig(log_odds(w[b]) - log_odds(lo[b]))) for b in range(2)]
    expected = nll + beta * sum(ratio) / 2
    assert orpo_loss(cw, cl, beta=beta).loss.item() == pytest.approx(expected, rel=1e-9)


def test_plackett_luce_matches_hand_computation():
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.1]], dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1, 0]], dtype=torch.float64)
    # picks in descending logit order: layer 2 (2.0) then layer 0 (0.5)
    e = [math.exp(x) for x in (0.5, -1.0, 2.0, 0.1)]
    expected = math.log(e[2] / sum(e)) + math.log(e[0] / (sum(e) - e[2]))
    assert plackett_luce_set_logprob(logits, mask).item() == pytest.approx(expected, rel=1e-12)
    assert plackett_luce_set_logprob(logits, torch.zeros_like(mask)).item() == 0.0


def test_ratio_bin_logprob_is_stable_in_the_tails():
    mu = torch.tensor([0.5, 0.5, 0.01], dtype=torch.float64, requires_grad=True)
    ls = torch.tensor([-7.0, -7.0, -7.0], dtype=torch.float64)
    k = torch.tensor([15, 0, 29])  # 15/30 = mu (inside), 0 and 29: hundreds of sigmas away
    lp = ratio_bin_logprob(k, mu, ls, 30)
    assert bool(torch.isfinite(lp).all()), lp
    assert lp[0].item() == pytest.approx(math.log(phi((16 / 30 - 0.5) / math.exp(-7)) - 0.5), rel=1e-9)
    assert lp[1].item() < -1e4 and lp[2].item() < -1e4
    lp.sum().backward()
    assert bool(torch.isfinite(mu.grad).all())


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (FBCConfig, {"epochs": 0}, "FBCConfig.epochs must be >= 1, got 0"),
        (FBCConfig, {"topk": "softsort"}, "FBCConfig.topk must be one of"),
        (DPOConfig, {"beta": -1.0}, "DPOConfig.beta must be > 0 and finite, got -1.0"),
        (ORPOConfig, {"eval_fraction": 1.0}, r"ORPOConfig.eval_fraction must be in \[0, 1\), got 1.0"),
        (DPOConfig, {"set_term": "listnet"}, r"set_term must be one of \(.bernoulli., .plackett_luce.\), got"),
    ],
)
def test_configs_name_the_bad_value(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_router_config_validates():
    with pytest.raises(ValueError, match="protected: layer 9 out of range 0..3"):
        RouterConfig(num_layers=4, in_dim=8, protected=(9,))
    with pytest.raises(ValueError, match="features must be one of"):
        RouterConfig(num_layers=4, in_dim=8, features="bert")


def test_cli_choices_match_the_modules():
    assert router_cli.METHODS == METHODS
    assert router_cli.FEATURES == FEATURES
    assert router_cli.TOPK_METHODS == TOPK_METHODS


# ----------------------------------------------------------------------------- training


def test_fbc_targets_take_the_most_pruned_successful_configuration():
    targets = fbc_targets(toy_data().configs, threshold=1.0)
    assert targets == {"p1": (3,), "p2": (1, 2), "p3": (), "p4": (1, 3), "p5": (2,)}


@pytest.mark.parametrize(
    "config",
    [FBCConfig(epochs=3, batch_size=2, lr=1e-2, eval_fraction=0.2, eval_every=1),
     FBCConfig(epochs=3, batch_size=2, lr=1e-2, topk="sinkhorn", eval_fraction=0.0),
     FBCConfig(epochs=3, batch_size=2, lr=1e-2, topk="gumbel", eval_fraction=0.0),
     DPOConfig(epochs=3, batch_size=4, lr=1e-2, eval_fraction=0.2, eval_every=1),
     DPOConfig(epochs=3, batch_size=4, lr=1e-2, set_term="plackett_luce", eval_fraction=0.0),
     ORPOConfig(epochs=3, batch_size=4, lr=1e-2, eval_fraction=0.2, eval_every=1)],
    ids=["fbc", "fbc-sinkhorn", "fbc-gumbel", "dpo", "dpo-pl", "orpo"],
)
def test_training_changes_every_trainable_parameter(config, encoder, tmp_path):
    router = make_router(encoder)
    if config.method == "dpo":  # DPO starts from a router that differs from random init, as after FBC
        train_router(router, toy_data(), FBCConfig(epochs=2, batch_size=2, lr=1e-2, eval_fraction=0.0))
    before = {n: p.detach().clone() for n, p in router.net.named_parameters()}
    result = train_router(router, toy_data(), config, run_dir=tmp_path / "run")
    trained = dict(trainable_parameters(router, config))
    assert trained, "no trainable parameters"
    for name, p in router.net.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        assert changed == (name in trained), f"{name}: changed={changed}, trainable={name in trained}"
    assert len(result.history) == 3 and all(math.isfinite(r["train/loss"]) for r in result.history)
    if config.eval_fraction > 0:
        assert result.eval_prompts and any(k.startswith("eval/") for k in result.history[-1])
    assert (tmp_path / "run" / "router.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()
    assert (tmp_path / "run" / "train_log.jsonl").read_text().count("\n") == 3


def test_fbc_learns_the_targets(encoder):
    router = make_router(encoder)
    data = toy_data()
    train_router(router, data, FBCConfig(epochs=400, batch_size=5, lr=3e-2, eval_fraction=0.0))
    masks, _ = router.decide(router.features([data.texts[p] for p in TEXTS]))
    targets = fbc_targets(data.configs, 1.0)
    got = {p: tuple(int(i) for i in np.flatnonzero(m)) for p, m in zip(TEXTS, masks, strict=True)}
    assert got == targets


def test_training_rejects_mismatched_data(encoder):
    router = make_router(encoder, num_layers=6)
    with pytest.raises(ValueError, match="measured on a 4-layer model; the router has 6"):
        train_router(router, toy_data(), FBCConfig(epochs=1))
    data = toy_data()
    data.pairs = []
    with pytest.raises(ValueError, match="orpo needs preference pairs"):
        train_router(make_router(encoder), data, ORPOConfig(epochs=1))


# ----------------------------------------------------------------------------- files


def test_save_load_gives_identical_outputs(encoder, tmp_path):
    router = make_router(encoder)
    train_router(router, toy_data(), ORPOConfig(epochs=2, eval_fraction=0.0))
    x = router.features(list(TEXTS.values()))
    path = router.save(tmp_path / "r.safetensors")
    loaded, meta = load_router(path, num_layers=4, encoder=encoder)
    assert meta["method"] == "orpo" and meta["num_layers"] == "4" and meta["features"] == "minilm"
    a, b = router(x), loaded(x)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    agent = RouterAgent(router)
    agent.save(tmp_path / "agent")
    same = RouterAgent.load(tmp_path / "agent", encoder=encoder)
    infos = [{"prompt": t} for t in TEXTS.values()]
    np.testing.assert_array_equal(agent.masks(infos), same.masks(infos))
    # a generic load through the registry (importing agents.router registers the kind)
    from agents.base import load_agent

    again = load_agent(tmp_path / "agent")
    assert isinstance(again, RouterAgent) and again.router.method == "orpo"


def test_checkpoint_for_another_layer_count_is_refused(encoder, tmp_path):
    path = make_router(encoder, num_layers=4).save(tmp_path / "r.safetensors")
    with pytest.raises(ValueError, match="router for a model with 4 decoder layers; this model has 30"):
        load_router(path, num_layers=30)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a valid router checkpoint"):
        load_router(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="no router checkpoint"):
        load_router(tmp_path / "missing.safetensors")


def test_empty_preference_file_is_refused(tmp_path, tiny_lm32):
    from offline_data.explore import explore
    from offline_data.prefs import PAIR_FEATURES

    logs = tmp_path / "logs"
    kw = {"model": tiny_lm32, "max_new_tokens": 3, "reward": "proxy"}
    explore(kw, "dfs", logs, prompt_ids=["qa-0001"], max_configs=3)
    # an empty pairs file with the pairs schema (written with pyarrow: prefs.write_pairs([]) fails in datasets)
    import pyarrow.parquet as pq

    pq.write_table(PAIR_FEATURES.arrow_schema.empty_table(), tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match="holds no preference pairs"):
        load_router_data([logs], pairs=tmp_path / "empty.parquet")
    with pytest.raises(FileNotFoundError, match="no preference pairs file"):
        load_router_data([logs], pairs=tmp_path / "missing.parquet")


def test_long_prompt_is_truncated_with_a_warning(encoder):
    long_text = " ".join(["rain"] * 100)  # 100 tokens + CLS/SEP, the tiny encoder takes 16
    with pytest.warns(UserWarning, match=r"102 encoder tokens is longer than the encoder's limit 16; truncated"):
        vec = encoder.encode([long_text])
    assert vec.shape == (1, encoder.dim) and torch.isfinite(vec).all()
    assert encoder.tokenizer(["rain"])["input_ids"][0][1] != encoder.tokenizer.unk_token_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode([long_text])  # cached: encoded (and warned about) once


def test_encoder_pools_and_normalises_and_caches(encoder):
    vecs = encoder.encode(["two plus two", "python function", "two plus two"])
    np.testing.assert_allclose(vecs.norm(dim=1).numpy(), 1.0, rtol=1e-6)
    assert torch.equal(vecs[0], vecs[2])
    # the same mean pooling by hand: mask-weighted mean of the last hidden state, then L2 norm
    batch = encoder.tokenizer(["two plus two"], return_tensors="pt")
    with torch.no_grad():
        h = encoder.model(**batch).last_hidden_state[0]
    manual = torch.nn.functional.normalize(h.mean(dim=0), dim=0)
    torch.testing.assert_close(vecs[0], manual)
    with pytest.raises(ValueError, match="non-empty strings"):
        encoder.encode([""])


# ----------------------------------------------------------------------------- agent


def test_nearest_entry_uses_hamming_then_fewer_layers():
    table = [(), None, (5,), (5, 9), (5, 9, 12)]
    assert nearest_entry(np.array([0] * 16), table) == 0
    mask = np.zeros(16, dtype=np.int8)
    mask[[5, 9]] = 1
    assert nearest_entry(mask, table) == 3
    mask[:] = 0
    mask[[9]] = 1  # distance 1 to () and to (5, 9): the one with fewer layers wins
    assert nearest_entry(mask, table) == 0
    with pytest.raises(ValueError, match="no layer-only entry"):
        nearest_entry(mask, [None])


@pytest.mark.filterwarnings("ignore:prompt of .* encoder tokens:UserWarning")
def test_router_agent_acts_on_both_envs(encoder, tiny_lm32):
    import gymnasium as gym

    import envs  # noqa: F401
    from dynprune.runtime import ProfileConfig

    fast = {"model": tiny_lm32, "max_new_tokens": 3, "reward": "proxy", "profile": ProfileConfig(2, 1)}
    router = make_router(encoder, num_layers=tiny_lm32.geometry.num_layers)
    with torch.no_grad():  # a router that prunes about half the layers
        router.net.mu_head.bias.fill_(0.0)
        router.net.mu_head.weight.zero_()
    layers_env = gym.make("DynPruneLayers-v0", **fast)
    agent = RouterAgent.from_env(layers_env, router)
    obs, info = layers_env.reset(seed=0)
    mask = agent.act(obs, info)
    assert layers_env.action_space.contains(mask) and int(mask.sum()) == 2
    np.testing.assert_array_equal(mask, agent.last_mask[1:])  # the env's layout: layers 1..3
    _, _, _, _, info2 = layers_env.step(mask)
    np.testing.assert_array_equal(info2["layers"], mask)  # the step's mask over layers 1..3
    table_env = gym.make("DynPrune-v0", **fast)
    table_agent = RouterAgent.from_env(table_env, router)
    obs, info = table_env.reset(seed=0)
    a = table_agent.act(obs, info)
    assert table_env.action_space.contains(a)
    assert a == nearest_entry(table_agent.last_mask, table_agent.table)
    with pytest.raises(ValueError, match=r"reads info\['prompt'\]"):
        agent.act(obs, None)
    wrong = make_router(encoder, num_layers=6)
    with pytest.raises(ValueError, match="router is for 6 decoder layers; the env's model has 4"):
        RouterAgent.from_env(layers_env, wrong)


def test_light_router_reads_the_prompt_embedding(tiny_lm32):
    import gymnasium as gym

    import envs  # noqa: F401

    env = gym.make("DynPruneLayers-v0", model=tiny_lm32, max_new_tokens=3, reward="proxy")
    hidden = tiny_lm32.geometry.hidden_size
    router = Router(RouterConfig(num_layers=4, in_dim=hidden, features="tokens", encoder=None, hidden=16))
    agent = RouterAgent.from_env(env, router)
    obs, info = env.reset(seed=0)
    assert env.action_space.contains(agent.act(obs, info))
    with pytest.raises(ValueError, match=r"reads info\['prompt_embedding'\]"):
        agent.act(obs, {"prompt": info["prompt"]})
    with pytest.raises(ValueError, match=f"must have {hidden} numbers"):
        agent.act(obs, {"prompt_embedding": np.zeros(hidden + 1, np.float32)})


def test_cli_trains_fbc_then_dpo(tmp_path, tiny_bert, tiny_lm32):
    from dynprune.cli import main
    from offline_data.explore import explore

    logs = tmp_path / "logs"
    explore({"model": tiny_lm32, "max_new_tokens": 3, "reward": "proxy"}, "dfs", logs,
            prompt_ids=["qa-0001", "qa-0003", "qa-0004"], max_configs=4)
    fbc = tmp_path / "fbc"
    rc = main(["router", "train", "--method", "fbc", "--logs", str(logs), "--run-dir", str(fbc),
               "--encoder", tiny_bert, "--epochs", "2", "--eval-fraction", "0.3", "--success-threshold", "0.5"])
    assert rc == 0 and (fbc / "router.safetensors").is_file() and (fbc / "agent.agent.json").is_file()
    rc = main(["router", "train", "--method", "dpo", "--logs", str(logs), "--run-dir", str(tmp_path / "dpo"),
               "--init", str(fbc / "router.safetensors"), "--epochs", "2", "--beta", "0.5"])
    assert rc == 0
    _, meta = load_router(tmp_path / "dpo" / "router.safetensors", num_layers=4)
    assert meta["method"] == "dpo"
    # an existing run is not overwritten without --force
    assert main(["router", "train", "--method", "fbc", "--logs", str(logs), "--run-dir", str(fbc),
                 "--encoder", tiny_bert, "--epochs", "1"]) == 2


@pytest.mark.embedded
def test_real_minilm_encodes_prompts():
    enc = SentenceEncoder()
    assert enc.dim == 384 and enc.max_length == 256 and enc.spec == "minilm"
    v = enc.encode(["What is the capital of France?", "Write a poem about rain.", "What is the capital of Italy?"])
    np.testing.assert_allclose(v.norm(dim=1).numpy(), 1.0, rtol=1e-5)
    # related questions are closer than unrelated ones
    assert float(v[0] @ v[2]) > float(v[0] @ v[1])
    with pytest.warns(UserWarning, match="longer than the encoder's limit 256"):
        enc.encode(["word " * 400])


@pytest.mark.filterwarnings("ignore:prompt of .* encoder tokens:UserWarning")
def test_benchmark_smoke(tmp_path, monkeypatch):
    from benchmarks.router import main

    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path / "cache"))  # logs, runs and calibration stay in tmp

    result = main(["--smoke", "--out", str(tmp_path / "router.json")])
    methods = [r["method"] for r in result["table"]]
    assert methods[0] == "none" and "router-orpo-light" in methods and methods[-1].startswith("oracle")
    assert set(result["router_cost"]) >= {"fbc", "dpo", "orpo", "orpo-light"}
    oracle = result["table"][-1]
    assert all(oracle["quality"] >= r["quality"] - 1e-12 for r in result["table"])
