"""Tests of agents/: the Double-DQN target, DoubleDQN training, the baselines and save/load."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.logger import configure
from torch.nn import functional as F

import agents
import agents.dqn as dqn_module
from agents import (
    Agent,
    DoubleDQN,
    DQNConfig,
    OracleAgent,
    RandomAgent,
    SB3Agent,
    StaticAgent,
    double_dqn_targets,
    dqn_targets,
    load_agent,
    make_agent,
    make_dqn,
    registered_kinds,
    sidecar_path,
)

# reward of each action (columns) in each context (rows); the best action differs per context
REWARDS = np.array(
    [
        [1.0, 0.0, 0.3],
        [0.0, 0.3, 1.0],
        [0.3, 1.0, 0.0],
    ],
    dtype=np.float32,
)
BEST = REWARDS.argmax(axis=1)  # [0, 2, 1]


class ContextBandit(gym.Env[np.ndarray, int]):
    """One-step episodes: observe a one-hot context, pick an action, get ``REWARDS[context, action]``."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self) -> None:
        self.n_contexts, self.n_actions = REWARDS.shape
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(self.n_contexts,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(self.n_actions)
        self.context = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.n_contexts, dtype=np.float32)
        obs[self.context] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.context = int(self.np_random.integers(self.n_contexts))
        return self._obs(), {"context": self.context}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} not in {self.action_space}")
        reward = float(REWARDS[self.context, int(action)])
        return self._obs(), reward, True, False, {"context": self.context}

    def action_rewards(self) -> np.ndarray:
        """What every action would earn in the current context (the oracle's view)."""
        return REWARDS[self.context].copy()


def one_hot(context: int) -> np.ndarray:
    obs = np.zeros(REWARDS.shape[0], dtype=np.float32)
    obs[context] = 1.0
    return obs


@pytest.fixture
def one_torch_thread() -> Any:
    """Run torch on one thread: tiny MLPs gain nothing from more, and on a busy machine
    (other processes on the cores) two spinning intra-op threads made training ~6x slower."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


# --- the targets on a crafted batch -------------------------------------------------------

# three transitions, three actions; online argmax = [1, 0, 2], target argmax = [0, 1, 2]
Q_ONLINE_NEXT = th.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0], [0.0, 0.0, 5.0]])
Q_TARGET_NEXT = th.tensor([[4.0, 1.0, 0.0], [2.0, 6.0, 1.0], [1.0, 0.0, 3.0]])
BATCH_REWARDS = th.tensor([[1.0], [0.0], [-1.0]])
BATCH_DONES = th.tensor([[0.0], [0.0], [1.0]])
GAMMA = 0.5


def test_dqn_target_on_crafted_batch() -> None:
    # r + gamma * (1 - done) * max_a Q_target: 1 + 0.5*4, 0 + 0.5*6, -1 (terminal)
    expected = th.tensor([[3.0], [3.0], [-1.0]])
    got = dqn_targets(Q_TARGET_NEXT, BATCH_REWARDS, BATCH_DONES, GAMMA)
    assert th.equal(got, expected)


def test_double_dqn_target_on_crafted_batch_differs_from_dqn() -> None:
    # online net picks [1, 0, 2]; target net values them [1, 2, 3]
    # r + gamma * (1 - done) * Q_target(s', a*): 1 + 0.5*1, 0 + 0.5*2, -1 (terminal)
    expected = th.tensor([[1.5], [1.0], [-1.0]])
    got = double_dqn_targets(Q_ONLINE_NEXT, Q_TARGET_NEXT, BATCH_REWARDS, BATCH_DONES, GAMMA)
    assert th.equal(got, expected)
    assert not th.equal(got, dqn_targets(Q_TARGET_NEXT, BATCH_REWARDS, BATCH_DONES, GAMMA))


def test_targets_accept_flat_rewards_tensor_gamma_and_break_ties_low() -> None:
    q_online = th.tensor([[2.0, 2.0, 0.0]])  # tie between actions 0 and 1 -> action 0
    q_target = th.tensor([[7.0, 9.0, 0.0]])
    gamma = th.tensor([0.25])  # per-sample (n-step) discount
    got = double_dqn_targets(q_online, q_target, th.tensor([1.0]), th.tensor([0.0]), gamma)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(1.0 + 0.25 * 7.0)
    assert dqn_targets(q_target, th.tensor([1.0]), th.tensor([0.0]), 1.0).item() == pytest.approx(10.0)


def test_targets_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        double_dqn_targets(Q_ONLINE_NEXT, Q_TARGET_NEXT[:2], BATCH_REWARDS, BATCH_DONES, GAMMA)
    with pytest.raises(ValueError, match="rewards must have shape"):
        dqn_targets(Q_TARGET_NEXT, BATCH_REWARDS[:2], BATCH_DONES[:2], GAMMA)
    with pytest.raises(ValueError, match="dones must have the shape"):
        dqn_targets(Q_TARGET_NEXT, BATCH_REWARDS, BATCH_DONES.flatten(), GAMMA)


# --- DoubleDQN.train uses the double target ------------------------------------------------


def bootstrapping_model(model_cls: type[DQN], seed: int = 0, **kwargs: Any) -> DQN:
    """A model on ContextBandit whose buffer holds non-terminal transitions and whose target net differs."""
    model = model_cls(
        "MlpPolicy",
        ContextBandit(),
        policy_kwargs=dict(net_arch=[16], optimizer_class=th.optim.SGD),
        learning_rate=0.1,
        gamma=0.9,
        batch_size=8,
        seed=seed,
        device="cpu",
        **kwargs,
    )
    model.set_logger(configure(None, []))
    rng = np.random.default_rng(seed)
    for _ in range(8):
        # done = False, so the target bootstraps from the next observation
        model.replay_buffer.add(
            one_hot(int(rng.integers(3)))[None],
            one_hot(int(rng.integers(3)))[None],
            np.array([[rng.integers(3)]]),
            np.array([rng.normal()], dtype=np.float32),
            np.array([False]),
            [{}],
        )
    # after init the target net is a copy of the online net, so both targets would agree: perturb it
    with th.no_grad():
        generator = th.Generator().manual_seed(seed)
        for param in model.q_net_target.parameters():
            param.add_(th.randn(param.shape, generator=generator))
    return model


def manual_step(policy: Any, batch: Any, gamma: float, lr: float, max_grad_norm: float, double: bool) -> float:
    """One SGD step of ``policy`` on ``batch`` with the target written out by hand; returns the loss."""
    with th.no_grad():
        q_target_next = policy.q_net_target(batch.next_observations)
        if double:
            # online net selects, target net evaluates
            a_star = policy.q_net(batch.next_observations).argmax(dim=1, keepdim=True)
            next_values = q_target_next.gather(1, a_star)
        else:
            next_values = q_target_next.max(dim=1, keepdim=True).values
        target = batch.rewards + (1 - batch.dones) * gamma * next_values
    current = policy.q_net(batch.observations).gather(1, batch.actions.long())
    loss = F.smooth_l1_loss(current, target)
    policy.optimizer.zero_grad()
    loss.backward()
    th.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
    with th.no_grad():
        for param in policy.parameters():
            if param.grad is not None:
                param.sub_(lr * param.grad)
    return loss.item()


def capture_batches(model: DQN) -> list[Any]:
    """Make ``model.replay_buffer.sample`` record what it returns."""
    batches: list[Any] = []
    sample = model.replay_buffer.sample

    def spy(*args: Any, **kwargs: Any) -> Any:
        batch = sample(*args, **kwargs)
        batches.append(batch)
        return batch

    model.replay_buffer.sample = spy  # type: ignore[method-assign]
    return batches


@pytest.mark.parametrize("double", [True, False])
def test_train_step_matches_manual_target(double: bool) -> None:
    model = bootstrapping_model(DoubleDQN, double_q=double)
    before = copy.deepcopy(model.policy)
    batches = capture_batches(model)
    model.train(gradient_steps=1, batch_size=8)
    (batch,) = batches
    # the same step by hand, with this test's own target, on a copy of the pre-step policy
    loss = manual_step(before, batch, gamma=0.9, lr=0.1, max_grad_norm=model.max_grad_norm, double=double)
    assert model.logger.name_to_value["train/loss"] == pytest.approx(loss)
    assert model._n_updates == 1
    for got, want in zip(model.q_net.parameters(), before.q_net.parameters(), strict=True):
        assert th.allclose(got, want, atol=1e-6)
    # and the other target would have given another loss: the batch tells the two apart
    other = manual_step(copy.deepcopy(before), batch, 0.9, 0.1, model.max_grad_norm, double=not double)
    assert other != pytest.approx(loss)


def test_double_q_false_reproduces_sb3_dqn() -> None:
    ours = bootstrapping_model(DoubleDQN, double_q=False)
    theirs = bootstrapping_model(DQN)
    for model in (ours, theirs):
        # replay sampling draws from numpy's global generator
        np.random.seed(0)
        model.train(gradient_steps=3, batch_size=8)
    for got, want in zip(ours.q_net.parameters(), theirs.q_net.parameters(), strict=True):
        assert th.equal(got, want)
    assert ours.logger.name_to_value["train/loss"] == theirs.logger.name_to_value["train/loss"]


@pytest.mark.usefixtures("one_torch_thread")
def test_train_calls_double_dqn_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"double": 0, "dqn": 0}
    real_double, real_dqn = dqn_module.double_dqn_targets, dqn_module.dqn_targets

    def spy_double(*args: Any) -> th.Tensor:
        calls["double"] += 1
        return real_double(*args)

    def spy_dqn(*args: Any) -> th.Tensor:
        calls["dqn"] += 1
        return real_dqn(*args)

    monkeypatch.setattr(dqn_module, "double_dqn_targets", spy_double)
    monkeypatch.setattr(dqn_module, "dqn_targets", spy_dqn)
    model = DoubleDQN("MlpPolicy", ContextBandit(), policy_kwargs=dict(net_arch=[16]), learning_starts=16, seed=0)
    model.learn(64)
    assert calls["double"] == model._n_updates > 0
    assert calls["dqn"] == 0


# --- DoubleDQN learns a contextual bandit ---------------------------------------------------


def test_synthetic_env_passes_sb3_check_env() -> None:
    check_env(ContextBandit(), warn=True)


def greedy_actions(model: DQN) -> list[int]:
    return [int(model.predict(one_hot(c), deterministic=True)[0]) for c in range(REWARDS.shape[0])]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("seed", [0, 1])
def test_double_dqn_learns_best_action_per_context(seed: int) -> None:
    # seed= seeds python, numpy, torch and the action space; the env is seeded by its first reset
    # reliability: 100 of 100 seeds learn all three contexts at 3000 steps (and 50 of 50 at 800)
    env = ContextBandit()
    model = DoubleDQN(
        "MlpPolicy",
        env,
        policy_kwargs=dict(net_arch=[32]),
        learning_rate=1e-3,
        learning_starts=100,
        batch_size=32,
        train_freq=1,
        target_update_interval=100,
        exploration_fraction=0.3,
        seed=seed,
        device="cpu",
    )
    model.learn(3000)
    assert greedy_actions(model) == BEST.tolist()


# --- make_dqn and DQNConfig ---------------------------------------------------------------


def test_make_dqn_defaults_and_overrides() -> None:
    model = make_dqn(ContextBandit(), seed=0, learning_rate=5e-4, net_arch=[8], tensorboard_log=None)
    assert isinstance(model, DoubleDQN) and model.double_q
    assert model.learning_rate == 5e-4
    assert model.policy_kwargs["net_arch"] == [8]
    assert model.train_freq.frequency == DQNConfig.train_freq == 1
    assert not make_dqn(ContextBandit(), double=False).double_q


@pytest.mark.parametrize(
    ("field", "value"),
    [("learning_rate", 0.0), ("gamma", 1.5), ("exploration_final_eps", -0.1), ("net_arch", ()), ("tau", 0.0)],
)
def test_dqn_config_rejects_bad_values(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        DQNConfig(**{field: value})


def test_make_dqn_rejects_unknown_override() -> None:
    with pytest.raises(ValueError, match="not_a_param"):
        make_dqn(ContextBandit(), not_a_param=1)
    with pytest.raises(ValueError, match="batch_size"):
        make_dqn(ContextBandit(), batch_size=0)


# --- baselines ------------------------------------------------------------------------------


class StubEnv:
    """Just enough of an env for the oracle: an action space and ``unwrapped.action_rewards``."""

    def __init__(self, rewards: list[float]) -> None:
        self.rewards = np.array(rewards)
        self.action_space = gym.spaces.Discrete(len(rewards))

    @property
    def unwrapped(self) -> StubEnv:
        return self

    def action_rewards(self) -> np.ndarray:
        return self.rewards


def test_static_agent() -> None:
    agent = StaticAgent(2)
    assert isinstance(agent, Agent)
    assert [agent.act(one_hot(c)) for c in range(3)] == [2, 2, 2]
    with pytest.raises(ValueError, match=r"action 3 out of range 0\.\.2"):
        StaticAgent.from_env(ContextBandit(), action=3)


def test_random_agent_is_seeded_and_covers_actions() -> None:
    first, second, other = RandomAgent(3, seed=7), RandomAgent(3, seed=7), RandomAgent(3, seed=8)
    obs = one_hot(0)
    draws = [first.act(obs) for _ in range(200)]
    assert draws == [second.act(one_hot(1)) for _ in range(200)]
    assert draws != [other.act(obs) for _ in range(200)]
    assert set(draws) == {0, 1, 2}
    # the global numpy state does not leak in
    np.random.seed(123)
    assert RandomAgent(3, seed=7).act(obs) == draws[0]
    with pytest.raises(ValueError, match="n_actions"):
        RandomAgent(0)


def test_oracle_agent_picks_best_and_breaks_ties_low() -> None:
    assert OracleAgent(StubEnv([0.1, 0.5, 0.2])).act(one_hot(0)) == 1
    assert OracleAgent(StubEnv([0.5, 0.1, 0.5])).act(one_hot(0)) == 0
    with pytest.raises(ValueError, match="finite"):
        OracleAgent(StubEnv([0.5, float("nan"), 0.1])).act(one_hot(0))
    # through a wrapper: the oracle asks env.unwrapped
    env = gym.wrappers.TimeLimit(ContextBandit(), max_episode_steps=1)
    oracle = OracleAgent(env)
    for seed in range(6):
        obs, info = env.reset(seed=seed)
        assert oracle.act(obs, info) == BEST[info["context"]]
    with pytest.raises(ValueError, match="action_rewards"):
        OracleAgent(gym.make("CartPole-v1"))
    with pytest.raises(RuntimeError, match="bind"):
        OracleAgent().act(one_hot(0))


# --- registry, save and load ------------------------------------------------------------------


def test_make_agent_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(ValueError, match="unknown agent kind 'nope'") as error:
        make_agent("nope", ContextBandit())
    for kind in ("static", "random", "oracle", "dqn", "double_dqn"):
        assert kind in registered_kinds()
        assert kind in str(error.value)


def test_load_agent_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="agent.json"):
        load_agent(tmp_path / "missing")
    sidecar_path(tmp_path / "odd").write_text(json.dumps({"format": 1, "kind": "nope", "kwargs": {}}))
    with pytest.raises(ValueError, match="unknown agent kind 'nope'"):
        load_agent(tmp_path / "odd")


def test_static_and_oracle_round_trip(tmp_path: Path) -> None:
    env = ContextBandit()
    static = make_agent("static", env, action=1)
    static.save(tmp_path / "static")
    loaded = load_agent(tmp_path / "static")
    assert isinstance(loaded, StaticAgent) and loaded.act(one_hot(0)) == 1 and loaded.name == "static(1)"

    make_agent("oracle", env).save(tmp_path / "oracle")
    oracle = load_agent(tmp_path / "oracle", env=env)
    assert isinstance(oracle, OracleAgent)
    obs, _ = env.reset(seed=3)
    assert oracle.act(obs) == BEST[env.context]


def test_random_round_trip_continues_the_sequence(tmp_path: Path) -> None:
    agent = make_agent("random", ContextBandit(), seed=11)
    obs = one_hot(0)
    head = [agent.act(obs) for _ in range(5)]
    agent.save(tmp_path / "rand")
    loaded = load_agent(tmp_path / "rand")
    assert isinstance(loaded, RandomAgent) and loaded.n_actions == 3
    assert [loaded.act(obs) for _ in range(50)] == [agent.act(obs) for _ in range(50)]
    fresh = RandomAgent(3, seed=11)
    assert head == [fresh.act(obs) for _ in range(5)]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("kind", ["dqn", "double_dqn"])
def test_sb3_agent_round_trip(tmp_path: Path, kind: str) -> None:
    env = ContextBandit()
    agent = make_agent(kind, env, seed=0, net_arch=[8], learning_starts=8)
    assert isinstance(agent, SB3Agent) and isinstance(agent, Agent) and agent.kind == kind
    agent.model.learn(32)
    agent.save(tmp_path / "runs" / "model")
    assert (tmp_path / "runs" / "model.zip").is_file()
    assert json.loads(sidecar_path(tmp_path / "runs" / "model").read_text())["kind"] == kind
    loaded = load_agent(tmp_path / "runs" / "model")
    assert isinstance(loaded, SB3Agent) and loaded.kind == kind
    assert type(loaded.model) is DoubleDQN and loaded.model.double_q == (kind == "double_dqn")
    for context in range(3):
        obs = one_hot(context)
        assert loaded.act(obs) == agent.act(obs)
        np.testing.assert_allclose(loaded.q_values(obs), agent.q_values(obs))


def test_sb3_agent_wraps_plain_dqn(tmp_path: Path) -> None:
    agent = SB3Agent(DQN("MlpPolicy", ContextBandit(), policy_kwargs=dict(net_arch=[8]), seed=0))
    assert agent.kind == "dqn"
    agent.save(tmp_path / "plain.zip")
    loaded = load_agent(tmp_path / "plain.zip", env=ContextBandit())
    assert type(loaded.model) is DQN
    assert loaded.act(one_hot(2)) == agent.act(one_hot(2))


def test_lazy_exports() -> None:
    assert agents.DoubleDQN is DoubleDQN
    with pytest.raises(AttributeError):
        agents.not_there  # noqa: B018


# --- on the real environment ----------------------------------------------------------------


@pytest.mark.usefixtures("one_torch_thread")
def test_every_kind_acts_on_dynprune_env(tiny_lm32: Any, tmp_path: Path) -> None:
    import envs  # noqa: F401 - registers DynPrune-v0
    from dynprune.runtime import ProfileConfig

    env = gym.make(
        "DynPrune-v0",
        model=tiny_lm32,
        reward="proxy",
        max_new_tokens=4,
        profile=ProfileConfig(new_tokens=2, repeats=1),
    )
    obs, info = env.reset(seed=0)
    n_actions = int(env.action_space.n)
    from agents.router.model import Router, RouterConfig

    # the light router (reads info["prompt_embedding"]), untrained: any router acts through the table mapping
    router = Router(RouterConfig(num_layers=tiny_lm32.geometry.num_layers, in_dim=tiny_lm32.geometry.hidden_size,
                                 features="tokens", encoder=None, hidden=16))
    for kind in registered_kinds():
        if kind in ("random", "dqn", "double_dqn"):
            agent = make_agent(kind, env, seed=0)
        elif kind == "router":
            agent = make_agent(kind, env, router=router)
        else:
            agent = make_agent(kind, env)
        action = agent.act(obs, info)
        assert 0 <= action < n_actions, kind
        agent.save(tmp_path / kind)
        # a restored agent plays what the original plays next (random: the same next draw)
        assert load_agent(tmp_path / kind, env=env).act(obs, info) == agent.act(obs, info), kind
    # the oracle plays the best action of the table, and stepping it earns that reward
    table = env.unwrapped.action_rewards()
    action = make_agent("oracle", env).act(obs, info)
    assert action == int(np.argmax(table))
    _, reward, _, _, _ = env.step(action)
    assert reward == pytest.approx(table.max())
