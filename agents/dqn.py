"""Double DQN on stable-baselines3, its defaults for dynprune, and the SB3 agent wrapper.

stable-baselines3's ``DQN`` bootstraps from ``max_a Q_target(s', a)``: the target network
both selects and evaluates the next action, which over-estimates Q-values (van Hasselt
et al., "Deep Reinforcement Learning with Double Q-learning", AAAI 2016). Double DQN
decouples the two: the online network selects ``a* = argmax_a Q_online(s', a)`` and the
target network evaluates it, ``Q_target(s', a*)``. :class:`DoubleDQN` is SB3's ``DQN``
with exactly that change in :meth:`DoubleDQN.train`; :func:`double_dqn_targets` and
:func:`dqn_targets` are the two targets as pure functions.

In ``DynPrune-v0`` an episode is one prompt and one action, so every transition is
terminal (``done = 1``) and the target reduces to the reward: ``gamma`` and the choice
of target only matter when an env bootstraps (multi-step episodes, or a time-limit
truncation, which SB3 stores as not-done). The defaults in :class:`DQNConfig` are chosen
for that contextual-bandit setting.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3 import DQN
from torch.nn import functional as F

from agents.base import find_sidecar, read_sidecar, write_sidecar
from dynprune.validation import require_at_least, require_in_range, require_positive


def _check_targets_args(rewards: th.Tensor, dones: th.Tensor, *q_next: th.Tensor) -> None:
    """Check the shapes shared by :func:`dqn_targets` and :func:`double_dqn_targets`."""
    for q in q_next:
        if q.ndim != 2:
            raise ValueError(f"next-state Q-values must have shape (batch, n_actions), got {tuple(q.shape)}")
    if len(q_next) == 2 and q_next[0].shape != q_next[1].shape:
        raise ValueError(
            f"online and target Q-values must have the same shape, got {tuple(q_next[0].shape)} "
            f"and {tuple(q_next[1].shape)}"
        )
    batch = q_next[0].shape[0]
    if rewards.numel() != batch or rewards.ndim not in (1, 2):
        raise ValueError(f"rewards must have shape ({batch},) or ({batch}, 1), got {tuple(rewards.shape)}")
    if dones.shape != rewards.shape:
        raise ValueError(f"dones must have the shape of rewards {tuple(rewards.shape)}, got {tuple(dones.shape)}")


def dqn_targets(
    q_target_next: th.Tensor,
    rewards: th.Tensor,
    dones: th.Tensor,
    gamma: float | th.Tensor,
) -> th.Tensor:
    """The DQN target ``r + gamma * (1 - done) * max_a Q_target(s', a)`` (Mnih et al., 2015).

    This is what stable-baselines3's ``DQN.train`` computes.

    Args:
        q_target_next: Target-network Q-values of the next observations, shape ``(batch, n_actions)``.
        rewards: Rewards, shape ``(batch,)`` or ``(batch, 1)``.
        dones: 1.0 where the episode terminated (no bootstrap), 0.0 otherwise; shape of ``rewards``.
        gamma: Discount, a float or a tensor broadcastable to ``rewards`` (per-sample n-step discounts).

    Returns:
        The TD targets, shape of ``rewards``.
    """
    _check_targets_args(rewards, dones, q_target_next)
    # the target network both selects and evaluates the next action: its max over actions
    next_values = q_target_next.max(dim=1).values
    # line the next-state values up with the rewards ((batch,) or (batch, 1))
    next_values = next_values.reshape(rewards.shape)
    # one-step TD target; terminal transitions keep only the reward
    return rewards + (1.0 - dones) * gamma * next_values


def double_dqn_targets(
    q_online_next: th.Tensor,
    q_target_next: th.Tensor,
    rewards: th.Tensor,
    dones: th.Tensor,
    gamma: float | th.Tensor,
) -> th.Tensor:
    """The Double-DQN target ``r + gamma * (1 - done) * Q_target(s', argmax_a Q_online(s', a))``.

    From van Hasselt, Guez and Silver, "Deep Reinforcement Learning with Double Q-learning" (2016).
    Ties in the online argmax go to the lowest action id (``torch.argmax`` returns the first maximum).

    Args:
        q_online_next: Online-network Q-values of the next observations, shape ``(batch, n_actions)``.
        q_target_next: Target-network Q-values of the same observations, same shape.
        rewards: Rewards, shape ``(batch,)`` or ``(batch, 1)``.
        dones: 1.0 where the episode terminated (no bootstrap), 0.0 otherwise; shape of ``rewards``.
        gamma: Discount, a float or a tensor broadcastable to ``rewards`` (per-sample n-step discounts).

    Returns:
        The TD targets, shape of ``rewards``.
    """
    _check_targets_args(rewards, dones, q_online_next, q_target_next)
    # select the next action with the online network
    next_actions = q_online_next.argmax(dim=1, keepdim=True)
    # evaluate that action with the target network
    next_values = q_target_next.gather(dim=1, index=next_actions)
    # line the next-state values up with the rewards ((batch,) or (batch, 1))
    next_values = next_values.reshape(rewards.shape)
    # one-step TD target; terminal transitions keep only the reward
    return rewards + (1.0 - dones) * gamma * next_values


class DoubleDQN(DQN):
    """stable-baselines3's ``DQN`` with the Double-DQN target.

    Takes every argument of :class:`stable_baselines3.DQN`, plus:

    Args:
        double_q: ``True`` (default) trains on :func:`double_dqn_targets`; ``False`` on
            :func:`dqn_targets`, which reproduces SB3's ``DQN`` exactly (an ablation switch
            with everything else equal).

    Example:
        >>> model = DoubleDQN("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[16]))
        >>> model = model.learn(64)
    """

    def __init__(self, *args: Any, double_q: bool = True, **kwargs: Any) -> None:
        self.double_q = bool(double_q)
        super().__init__(*args, **kwargs)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """Run ``gradient_steps`` gradient steps on replay batches of ``batch_size``.

        Identical to ``DQN.train`` (Huber loss, gradient-norm clipping at ``max_grad_norm``,
        the learning-rate schedule, ``train/loss`` and ``train/n_updates`` logging) except for
        the TD target, which is :func:`double_dqn_targets` (or :func:`dqn_targets` when
        ``double_q`` is ``False``).
        """
        # switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # update the learning rate according to its schedule
        self._update_learning_rate(self.policy.optimizer)

        losses = []
        for _ in range(gradient_steps):
            # sample a batch of transitions from the replay buffer
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            # n-step replay discounts by gamma**n_steps (gamma**k when the episode ended after k steps)
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma

            with th.no_grad():
                # target-network Q-values of the next observations
                q_target_next = self.q_net_target(replay_data.next_observations)
                if self.double_q:
                    # online-network Q-values of the same observations, to select the next action
                    q_online_next = self.q_net(replay_data.next_observations)
                    target_q_values = double_dqn_targets(
                        q_online_next, q_target_next, replay_data.rewards, replay_data.dones, discounts
                    )
                else:
                    target_q_values = dqn_targets(q_target_next, replay_data.rewards, replay_data.dones, discounts)

            # current Q-value estimates of every action
            current_q_values = self.q_net(replay_data.observations)
            # keep the Q-value of the action actually taken
            current_q_values = th.gather(current_q_values, dim=1, index=replay_data.actions.long())

            # Huber loss between estimate and target (less sensitive to outliers than MSE)
            loss = F.smooth_l1_loss(current_q_values, target_q_values)
            losses.append(loss.item())

            # optimise the online network
            self.policy.optimizer.zero_grad()
            loss.backward()
            # clip the gradient norm
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()

        # count the gradient steps (the target network syncs on env steps, in _on_step)
        self._n_updates += gradient_steps

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))


@dataclass(frozen=True)
class DQNConfig:
    """Default hyper-parameters of :func:`make_dqn`, for one-step (contextual bandit) episodes.

    The exploration schedule is relative to the budget passed to ``learn(total_timesteps)``:
    epsilon decays linearly from ``exploration_initial_eps`` to ``exploration_final_eps`` over
    the first ``exploration_fraction`` of it.
    """

    learning_rate: float = 1e-3
    """Adam step size; larger than SB3's 1e-4 because targets are plain rewards (no bootstrap drift)."""
    buffer_size: int = 50_000
    """Replay capacity in transitions (one per prompt); env steps are expensive, so keep them all."""
    learning_starts: int = 64
    """Env steps collected (at random) before the first gradient step."""
    batch_size: int = 64
    """Transitions per gradient step."""
    gamma: float = 0.99
    """Discount; inert when every episode is one step (done = 1), kept at SB3's default for multi-step envs."""
    tau: float = 1.0
    """Target-network soft-update coefficient; 1.0 is a hard copy every ``target_update_interval``."""
    train_freq: int = 1
    """Env steps between gradient updates: every step, since each step costs a model run."""
    gradient_steps: int = 1
    """Gradient steps per update."""
    target_update_interval: int = 250
    """Env steps between target-network updates."""
    exploration_fraction: float = 0.5
    """Fraction of the ``learn`` budget over which epsilon decays."""
    exploration_initial_eps: float = 1.0
    """Epsilon at the start of ``learn``."""
    exploration_final_eps: float = 0.05
    """Epsilon after the decay."""
    max_grad_norm: float = 10.0
    """Gradient-norm clip."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the Q-network MLP."""
    device: str = "cpu"
    """Torch device of the Q-network; a 64x64 MLP is faster on CPU and leaves the GPU to the LLM."""
    verbose: int = 0
    """SB3 verbosity."""

    def __post_init__(self) -> None:
        """Check every value; raise ``ValueError`` naming the first bad one."""
        require_positive(
            self, "learning_rate", "buffer_size", "batch_size", "train_freq", "target_update_interval", "max_grad_norm"
        )
        require_at_least(self, 0, "learning_starts", "verbose")
        if not (self.gradient_steps >= 1 or self.gradient_steps == -1):
            raise ValueError(
                f"DQNConfig.gradient_steps must be >= 1 or -1 (as many as env steps), got {self.gradient_steps!r}"
            )
        require_in_range(self, 0, 1, "gamma", "exploration_initial_eps", "exploration_final_eps")
        require_in_range(self, 0, 1, "tau", "exploration_fraction", interval="(]")
        if self.exploration_final_eps > self.exploration_initial_eps:
            raise ValueError(
                f"DQNConfig.exploration_final_eps ({self.exploration_final_eps!r}) must not exceed "
                f"exploration_initial_eps ({self.exploration_initial_eps!r})"
            )
        if len(self.net_arch) == 0 or any(int(width) < 1 for width in self.net_arch):
            raise ValueError(f"DQNConfig.net_arch must be a non-empty sequence of widths >= 1, got {self.net_arch!r}")

    def model_kwargs(self) -> dict[str, Any]:
        """The ``DoubleDQN(...)`` keyword arguments these values stand for (``net_arch`` goes in ``policy_kwargs``)."""
        kwargs = dataclasses.asdict(self)
        net_arch = kwargs.pop("net_arch")
        kwargs["policy_kwargs"] = {"net_arch": [int(width) for width in net_arch]}
        return kwargs


_CONFIG_FIELDS = frozenset(field.name for field in dataclasses.fields(DQNConfig))


def make_dqn(
    env: gym.Env,
    double: bool = True,
    seed: int | None = None,
    config: DQNConfig | None = None,
    **overrides: Any,
) -> DoubleDQN:
    """An untrained (Double) DQN for ``env`` with dynprune's defaults.

    Args:
        env: Environment with a ``Box`` observation space and a ``Discrete`` action space.
        double: ``True`` for the Double-DQN target, ``False`` for SB3's DQN target.
        seed: Seed of the model (network init, exploration, replay sampling).
        config: Base hyper-parameters; :class:`DQNConfig` defaults when ``None``.
        **overrides: Either :class:`DQNConfig` fields (validated like the config) or any other
            ``DoubleDQN``/``DQN`` constructor argument (``tensorboard_log``, ``policy_kwargs`` ...).
            ``policy_kwargs`` is merged over the config's ``net_arch``.

    Returns:
        The model; train it with ``model.learn(total_timesteps)``.

    Raises:
        ValueError: an override is neither a config field nor a constructor argument, or a value is invalid.

    Example:
        >>> model = make_dqn(env, seed=0, learning_rate=5e-4)  # doctest: +SKIP
        >>> model.learn(5_000)  # doctest: +SKIP
    """
    config = config if config is not None else DQNConfig()
    config_overrides = {key: value for key, value in overrides.items() if key in _CONFIG_FIELDS}
    extra = {key: value for key, value in overrides.items() if key not in _CONFIG_FIELDS}
    if "net_arch" in config_overrides:
        config_overrides["net_arch"] = tuple(config_overrides["net_arch"])
    # dataclasses.replace re-runs __post_init__, so overrides are validated like the defaults
    config = dataclasses.replace(config, **config_overrides)

    allowed = set(inspect.signature(DQN.__init__).parameters) - {"self", "policy", "env", "_init_setup_model"}
    unknown = sorted(set(extra) - allowed)
    if unknown:
        raise ValueError(
            f"unknown make_dqn arguments {unknown}; expected DQNConfig fields {sorted(_CONFIG_FIELDS)} "
            f"or DQN arguments {sorted(allowed - _CONFIG_FIELDS)}"
        )
    kwargs = config.model_kwargs()
    # user policy_kwargs go over the config's net_arch
    user_policy_kwargs = extra.pop("policy_kwargs", None) or {}
    kwargs["policy_kwargs"] = {**kwargs["policy_kwargs"], **user_policy_kwargs}
    kwargs.update(extra)
    return DoubleDQN("MlpPolicy", env, seed=seed, double_q=double, **kwargs)


#: SB3 algorithm classes an :class:`SB3Agent` can save and load, by name.
_ALGOS: dict[str, type[DQN]] = {"DQN": DQN, "DoubleDQN": DoubleDQN}


def _kind_of(model: DQN) -> str:
    """Registry kind of a model: ``double_dqn`` for a DoubleDQN with ``double_q``, else ``dqn``."""
    return "double_dqn" if isinstance(model, DoubleDQN) and model.double_q else "dqn"


class SB3Agent:
    """A stable-baselines3 DQN or :class:`DoubleDQN` model as an :class:`~agents.base.Agent`.

    :meth:`act` is the greedy (deterministic) policy. :meth:`save` writes SB3's zip and the
    sidecar; the kind is ``"double_dqn"`` or ``"dqn"`` after the model's target.

    Args:
        model: The model (trained or not); train it through ``agent.model.learn(...)``.
        name: Label for logs and plots; defaults to the kind.

    Example:
        >>> agent = make_agent("double_dqn", env, seed=0)  # doctest: +SKIP
        >>> agent.model.learn(5_000)  # doctest: +SKIP
        >>> agent.save("runs/ddqn")  # runs/ddqn.zip + runs/ddqn.agent.json  # doctest: +SKIP
    """

    def __init__(self, model: DQN, name: str | None = None) -> None:
        if not isinstance(model, DQN):
            raise ValueError(f"SB3Agent wraps a stable_baselines3 DQN or DoubleDQN, got {type(model).__name__}")
        self.model = model
        self.kind = _kind_of(model)
        self.name = name if name is not None else self.kind

    @classmethod
    def from_env(cls, env: gym.Env | None, double: bool = True, seed: int | None = None, **overrides: Any) -> SB3Agent:
        """An untrained agent built by :func:`make_dqn` (same arguments)."""
        if env is None:
            raise ValueError("an SB3 agent needs an env to build its model, got None")
        return cls(make_dqn(env, double=double, seed=seed, **overrides))

    def act(self, obs: np.ndarray, info: dict[str, Any] | None = None) -> int:
        """The greedy action ``argmax_a Q(obs, a)``; ``info`` is ignored."""
        action, _ = self.model.predict(np.asarray(obs), deterministic=True)
        return int(np.asarray(action).reshape(-1)[0])

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Online-network Q-values of one observation, shape ``(n_actions,)``."""
        obs_tensor, _ = self.model.policy.obs_to_tensor(np.asarray(obs))
        with th.no_grad():
            return self.model.q_net(obs_tensor).cpu().numpy().reshape(-1)

    def save(self, path: str | Path) -> None:
        """Write ``<path>.zip`` (SB3's format; ``path`` itself when it ends in ``.zip``) and ``<path>.agent.json``."""
        path = Path(path)
        zip_path = path if path.suffix == ".zip" else path.with_name(path.name + ".zip")
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        self.model.save(zip_path)
        # the zip is named relative to the sidecar so the pair can be moved together
        relative = zip_path.name
        write_sidecar(path, self.kind, {"algo": type(self.model).__name__, "model_file": relative, "name": self.name})

    @classmethod
    def load(cls, path: str | Path, env: gym.Env | None = None, device: str = "cpu") -> SB3Agent:
        """Restore an agent saved at ``path`` onto ``device``; ``env`` is needed only to keep training."""
        kind, kwargs = read_sidecar(path)
        if kind not in ("dqn", "double_dqn"):
            raise ValueError(f"sidecar of {path!s} holds a {kind!r} agent, expected 'dqn' or 'double_dqn'")
        algo = kwargs.get("algo")
        if algo not in _ALGOS:
            raise ValueError(f"sidecar of {path!s} names algo {algo!r}, expected one of {sorted(_ALGOS)}")
        zip_path = find_sidecar(path).parent / kwargs["model_file"]
        model = _ALGOS[algo].load(zip_path, env=env, device=device)
        return cls(model, name=kwargs.get("name"))
