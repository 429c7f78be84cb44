"""Reference agents that learn nothing: a fixed action, uniform random, and the oracle.

- :class:`StaticAgent` always plays one action (the "static pruning" baseline, or
  ``action=0``: the unpruned model when action 0 is "none").
- :class:`RandomAgent` draws uniformly with its own seeded ``numpy.random.Generator``,
  so two agents with the same seed play the same sequence whatever else uses numpy.
- :class:`OracleAgent` asks the environment what every action *would* earn on the
  current prompt (``env.unwrapped.action_rewards()``, computed without advancing the
  env) and plays the best one: the upper bound a learned agent is measured against.
  It cheats by design and costs ``k`` evaluations a step.

All three keep their whole state in the JSON sidecar written by ``save``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agents.base import action_count, read_sidecar, write_sidecar


def _check_kind(path: str | Path, expected: str) -> dict[str, Any]:
    """Read the sidecar at ``path`` and check it was written by an agent of kind ``expected``."""
    kind, kwargs = read_sidecar(path)
    if kind != expected:
        raise ValueError(f"sidecar of {path!s} holds a {kind!r} agent, expected {expected!r}")
    return kwargs


def _check_action(action: int, n_actions: int | None) -> int:
    """Check that ``action`` is a valid id (``0 <= action < n_actions`` when ``n_actions`` is known)."""
    if isinstance(action, bool) or not isinstance(action, int | np.integer):
        raise ValueError(f"action must be an integer id, got {action!r}")
    action = int(action)
    if action < 0 or (n_actions is not None and action >= n_actions):
        bound = "" if n_actions is None else f"..{n_actions - 1}"
        raise ValueError(f"action {action} out of range 0{bound}")
    return action


class StaticAgent:
    """Always plays the same action.

    Args:
        action: The action id to play on every step.
        n_actions: Size of the action space, when known; ``action`` is checked against it.

    Example:
        >>> StaticAgent(2).act(np.zeros(4, dtype=np.float32))
        2
    """

    kind = "static"

    def __init__(self, action: int, n_actions: int | None = None) -> None:
        self.n_actions = None if n_actions is None else int(n_actions)
        self.action = _check_action(action, self.n_actions)
        self.name = f"static({self.action})"

    @classmethod
    def from_env(cls, env: gym.Env | None, action: int = 0) -> StaticAgent:
        """A static agent for ``env`` (``action`` is checked against its action space)."""
        return cls(action, n_actions=action_count(env))

    def act(self, obs: np.ndarray, info: dict[str, Any] | None = None) -> int:
        """Return the fixed action; ``obs`` and ``info`` are ignored."""
        return self.action

    def save(self, path: str | Path) -> None:
        """Write the sidecar ``<path>.agent.json`` (the action is the whole state)."""
        write_sidecar(path, self.kind, {"action": self.action, "n_actions": self.n_actions})

    @classmethod
    def load(cls, path: str | Path, env: gym.Env | None = None) -> StaticAgent:
        """Restore a static agent saved at ``path``; ``env``, when given, re-checks the action."""
        kwargs = _check_kind(path, cls.kind)
        n_actions = action_count(env) if env is not None else kwargs.get("n_actions")
        return cls(int(kwargs["action"]), n_actions=n_actions)


class RandomAgent:
    """Plays an action drawn uniformly from ``0 .. n_actions - 1``.

    The agent owns its ``numpy.random.Generator`` (seeded by ``seed``): the sequence of
    actions depends only on the seed and on how many actions were drawn, not on the
    observations or on any global random state. ``save`` stores the generator's state,
    so a loaded agent continues the sequence where the saved one stopped.

    Args:
        n_actions: Size of the action space (``>= 1``).
        seed: Seed of the generator; ``None`` draws fresh entropy.
    """

    kind = "random"

    def __init__(self, n_actions: int, seed: int | None = None) -> None:
        if isinstance(n_actions, bool) or not isinstance(n_actions, int | np.integer) or n_actions < 1:
            raise ValueError(f"n_actions must be an integer >= 1, got {n_actions!r}")
        self.n_actions = int(n_actions)
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.name = "random"

    @classmethod
    def from_env(cls, env: gym.Env | None, n_actions: int | None = None, seed: int | None = None) -> RandomAgent:
        """A random agent over ``env``'s actions (or ``n_actions`` when no env is given)."""
        env_n = action_count(env)
        if env_n is not None and n_actions is not None and n_actions != env_n:
            raise ValueError(f"n_actions={n_actions} does not match the env's action space of {env_n} actions")
        n = env_n if env_n is not None else n_actions
        if n is None:
            raise ValueError("RandomAgent needs an env or n_actions, got neither")
        return cls(n, seed=seed)

    def act(self, obs: np.ndarray, info: dict[str, Any] | None = None) -> int:
        """Draw one action uniformly at random; ``obs`` and ``info`` are ignored."""
        return int(self.rng.integers(self.n_actions))

    def save(self, path: str | Path) -> None:
        """Write the sidecar ``<path>.agent.json`` with the seed and the generator's current state."""
        state = self.rng.bit_generator.state
        write_sidecar(path, self.kind, {"n_actions": self.n_actions, "seed": self.seed, "rng_state": state})

    @classmethod
    def load(cls, path: str | Path, env: gym.Env | None = None) -> RandomAgent:
        """Restore a random agent saved at ``path``, generator state included; ``env`` is ignored."""
        kwargs = _check_kind(path, cls.kind)
        agent = cls(int(kwargs["n_actions"]), seed=kwargs.get("seed"))
        state = kwargs.get("rng_state")
        if state is not None:
            # the saved state names its bit generator; rebuild that one, then restore the state
            bit_generator = getattr(np.random, state["bit_generator"])()
            bit_generator.state = state
            agent.rng = np.random.Generator(bit_generator)
        return agent


class OracleAgent:
    """Plays the action with the highest reward on the current prompt, looked up in the env.

    Each call to :meth:`act` asks ``env.unwrapped.action_rewards()`` for the reward every
    action would get right now (shape ``(k,)``, computed without advancing the env) and
    returns its argmax; ties go to the lowest action id (``np.argmax`` returns the first
    maximum), so with "none" as action 0 the oracle never prunes for nothing.

    Args:
        env: The environment it acts in; ``None`` gives an unbound oracle that must be
            :meth:`bind`-ed before :meth:`act` (a loaded oracle without an env).
    """

    kind = "oracle"

    def __init__(self, env: gym.Env | None = None) -> None:
        self.env: gym.Env | None = None
        self.name = "oracle"
        if env is not None:
            self.bind(env)

    @classmethod
    def from_env(cls, env: gym.Env | None) -> OracleAgent:
        """An oracle bound to ``env``."""
        return cls(env)

    def bind(self, env: gym.Env) -> None:
        """Attach the environment whose ``unwrapped.action_rewards()`` the oracle reads."""
        if not callable(getattr(env.unwrapped, "action_rewards", None)):
            name = type(env.unwrapped).__name__
            raise ValueError(f"OracleAgent needs env.unwrapped.action_rewards(), {name} has none")
        self.env = env

    def act(self, obs: np.ndarray, info: dict[str, Any] | None = None) -> int:
        """Return the id of the action with the highest reward now (lowest id on ties); ``obs`` is ignored."""
        if self.env is None:
            raise RuntimeError("OracleAgent is not bound to an env; call bind(env) or load_agent(path, env=env)")
        rewards = np.asarray(self.env.unwrapped.action_rewards(), dtype=np.float64)
        n_actions = action_count(self.env)
        if rewards.ndim != 1 or rewards.shape[0] != n_actions:
            raise ValueError(f"action_rewards() must have shape ({n_actions},), got {rewards.shape}")
        if not np.all(np.isfinite(rewards)):
            raise ValueError(f"action_rewards() must be finite, got {rewards.tolist()}")
        # the first maximum: ties resolve to the lowest action id
        return int(np.argmax(rewards))

    def save(self, path: str | Path) -> None:
        """Write the sidecar ``<path>.agent.json``; the oracle has no state, the env is not saved."""
        write_sidecar(path, self.kind, {})

    @classmethod
    def load(cls, path: str | Path, env: gym.Env | None = None) -> OracleAgent:
        """Restore an oracle saved at ``path``, bound to ``env`` when given."""
        _check_kind(path, cls.kind)
        return cls(env)
