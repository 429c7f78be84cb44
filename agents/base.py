"""The ``Agent`` protocol, the agent registry and the JSON sidecar that lets any agent be reloaded.

Every controller of a dynprune environment (a Double DQN, an offline learner, the router,
a static plan, random, the oracle) is an :class:`Agent`: it sees an observation (and
optionally the step's ``info`` dict) and returns a discrete action id. It never touches
the model.

Saving and loading
------------------
``agent.save(path)`` always writes a small JSON *sidecar* at ``sidecar_path(path)``
(``<path>.agent.json``)::

    {"format": 1, "kind": "random", "kwargs": {"n_actions": 5, "seed": 0, ...}}

Agents with weights (an SB3 model) write their own files next to it and name them in
``kwargs`` (paths relative to the sidecar's folder, so a saved agent can be moved).
Agents without weights (static, random, oracle) keep everything in the sidecar.
:func:`load_agent` reads the sidecar, looks ``kind`` up in the registry and calls that
class's ``load``, so one call restores any agent kind::

    agent = make_agent("random", env, seed=0)
    agent.save("runs/random")          # writes runs/random.agent.json
    same = load_agent("runs/random")   # a RandomAgent in the same state

Registry
--------
:func:`register_agent` maps a *kind* to a class by a string entry point
(``"module:Class"``, imported on first use, so ``import agents`` stays cheap) plus
default keyword arguments. :func:`make_agent` builds a fresh agent for an env with the
class's ``from_env`` classmethod.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np

#: Version of the sidecar layout; bumped when its keys change.
SIDECAR_FORMAT = 1

#: Suffix appended to an agent's path to name its sidecar.
SIDECAR_SUFFIX = ".agent.json"


@runtime_checkable
class Agent(Protocol):
    """What every dynprune controller offers.

    Attributes:
        name: Short human-readable label used in logs, tables and plots (``"static(3)"``).
    """

    name: str

    def act(self, obs: np.ndarray, info: dict[str, Any] | None = None) -> int:
        """Choose an action id for one (unbatched) observation.

        Args:
            obs: The environment's observation, shape ``observation_space.shape``.
            info: The ``info`` dict returned with ``obs`` by ``reset``/``step``; optional.

        Returns:
            A discrete action id in ``0 .. action_space.n - 1``.
        """
        ...

    def save(self, path: str | Path) -> None:
        """Write the agent under ``path``; always writes the sidecar ``sidecar_path(path)``."""
        ...

    @classmethod
    def load(cls, path: str | Path, env: gym.Env | None = None) -> Agent:
        """Restore an agent written by :meth:`save` (``env`` binds agents that need one)."""
        ...


class AgentFactory(Protocol):
    """What a registered agent class must offer beyond :class:`Agent`: construction from an env."""

    @classmethod
    def from_env(cls, env: gym.Env | None, **kwargs: Any) -> Agent:
        """Build a fresh agent for ``env`` (its action space sizes the agent)."""
        ...

    @classmethod
    def load(cls, path: str | Path, env: gym.Env | None = None) -> Agent:
        """Restore an agent written by ``save``."""
        ...


@dataclass(frozen=True)
class AgentSpec:
    """One registry entry.

    Attributes:
        kind: The registry key, also written to the sidecar (``"double_dqn"``).
        entry_point: ``"module:Class"``; the class offers ``from_env`` and ``load``.
        kwargs: Default keyword arguments for ``from_env``; ``make_agent``'s own kwargs override them.
    """

    kind: str
    entry_point: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self) -> type[AgentFactory]:
        """Import and return the class named by :attr:`entry_point`."""
        module_name, sep, attr = self.entry_point.partition(":")
        if not sep or not module_name or not attr:
            raise ValueError(
                f"entry point of agent kind {self.kind!r} must be 'module:Class', got {self.entry_point!r}"
            )
        module = importlib.import_module(module_name)
        try:
            return getattr(module, attr)
        except AttributeError:
            raise ValueError(
                f"entry point of agent kind {self.kind!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None


_REGISTRY: dict[str, AgentSpec] = {}


def register_agent(kind: str, entry_point: str, **kwargs: Any) -> None:
    """Register an agent kind.

    Args:
        kind: Registry key, e.g. ``"static"``. Re-registering a kind replaces it.
        entry_point: ``"module:Class"``; imported on first use.
        **kwargs: Default keyword arguments passed to the class's ``from_env``.
    """
    if not kind or not isinstance(kind, str):
        raise ValueError(f"agent kind must be a non-empty string, got {kind!r}")
    _REGISTRY[kind] = AgentSpec(kind=kind, entry_point=entry_point, kwargs=dict(kwargs))


def registered_kinds() -> list[str]:
    """The registered agent kinds, sorted."""
    return sorted(_REGISTRY)


def agent_spec(kind: str) -> AgentSpec:
    """The registry entry of ``kind``; ``ValueError`` listing the valid kinds when unknown."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"unknown agent kind {kind!r}; expected one of {registered_kinds()}") from None


def make_agent(kind: str, env: gym.Env | None = None, **kwargs: Any) -> Agent:
    """Build a fresh agent of a registered kind.

    Args:
        kind: One of :func:`registered_kinds` (``"static"``, ``"random"``, ``"oracle"``,
            ``"dqn"``, ``"double_dqn"`` ...).
        env: The environment the agent will act in. Agents read its action space; the
            oracle queries it; SB3 agents train on it. ``None`` works only for agents that
            need nothing from it (``static``; ``random`` given ``n_actions``).
        **kwargs: Keyword arguments of the kind's ``from_env`` (they override the registered defaults).

    Returns:
        The new agent.

    Raises:
        ValueError: ``kind`` is not registered (the message lists the valid kinds).

    Example:
        >>> agent = make_agent("static", None, action=0)
        >>> agent.act(np.zeros(3, dtype=np.float32))
        0
    """
    spec = agent_spec(kind)
    cls = spec.resolve()
    return cls.from_env(env, **{**spec.kwargs, **kwargs})


def sidecar_path(path: str | Path) -> Path:
    """The sidecar of an agent saved at ``path``: ``<path>.agent.json`` (a sidecar path maps to itself)."""
    path = Path(path)
    if path.name.endswith(SIDECAR_SUFFIX):
        return path
    return path.with_name(path.name + SIDECAR_SUFFIX)


def find_sidecar(path: str | Path) -> Path:
    """The sidecar of an agent saved at ``path``, also when ``path`` names the file ``save`` wrote.

    ``agent.save("x")`` of an SB3 agent writes ``x.zip`` and ``x.agent.json``; a user then naturally
    loads ``"x.zip"``, whose own sidecar name would be ``x.zip.agent.json``. So when that does not
    exist, the sidecar of the path without its suffix is the one. Returns the first that exists, else
    ``sidecar_path(path)``.
    """
    path = Path(path)
    first = sidecar_path(path)
    if not first.is_file() and path.suffix and not path.name.endswith(SIDECAR_SUFFIX):
        stem = sidecar_path(path.with_suffix(""))
        if stem.is_file():
            return stem
    return first


def write_sidecar(path: str | Path, kind: str, kwargs: Mapping[str, Any]) -> Path:
    """Write the JSON sidecar of an agent saved at ``path``.

    Args:
        path: The agent's path (as given to ``save``) or its sidecar path.
        kind: Registered kind that :func:`load_agent` dispatches on.
        kwargs: JSON-serialisable state the kind's ``load`` needs.

    Returns:
        The sidecar's path.
    """
    if kind not in _REGISTRY:
        raise ValueError(f"cannot save agent of unregistered kind {kind!r}; expected one of {registered_kinds()}")
    target = sidecar_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": SIDECAR_FORMAT, "kind": kind, "kwargs": dict(kwargs)}
    target.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return target


def read_sidecar(path: str | Path) -> tuple[str, dict[str, Any]]:
    """Read the sidecar of an agent saved at ``path``.

    Args:
        path: The agent's path (as given to ``save``) or its sidecar path.

    Returns:
        ``(kind, kwargs)`` as written by :func:`write_sidecar`.

    Raises:
        FileNotFoundError: no sidecar at ``sidecar_path(path)``.
        ValueError: the file is not a dynprune agent sidecar of a known format.
    """
    target = find_sidecar(path)
    if not target.is_file():
        raise FileNotFoundError(f"no agent sidecar at {target} (expected the file written by agent.save({path!s}))")
    try:
        payload = json.loads(target.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"agent sidecar {target} is not valid JSON: {error}") from None
    if not isinstance(payload, dict) or not {"format", "kind", "kwargs"} <= payload.keys():
        raise ValueError(f"agent sidecar {target} must hold keys 'format', 'kind', 'kwargs', got {payload!r}")
    if payload["format"] != SIDECAR_FORMAT:
        raise ValueError(f"agent sidecar {target} has format {payload['format']!r}, expected {SIDECAR_FORMAT}")
    if not isinstance(payload["kwargs"], dict):
        raise ValueError(f"agent sidecar {target}: 'kwargs' must be an object, got {payload['kwargs']!r}")
    return str(payload["kind"]), payload["kwargs"]


def load_agent(path: str | Path, env: gym.Env | None = None) -> Agent:
    """Restore any agent written by its ``save``, whatever its kind.

    Args:
        path: The path given to ``save`` (or the sidecar's path).
        env: Environment to bind: required by the oracle to act, optional for SB3 agents
            (needed only to keep training), ignored by the others.

    Returns:
        The restored agent.

    Raises:
        FileNotFoundError: no sidecar at ``sidecar_path(path)``.
        ValueError: the sidecar names an unregistered kind (the message lists the valid kinds).
    """
    kind, _ = read_sidecar(path)
    cls = agent_spec(kind).resolve()
    return cls.load(path, env=env)


def action_count(env: gym.Env | None) -> int | None:
    """``env.action_space.n`` for a ``Discrete`` action space, ``None`` without an env.

    Raises:
        ValueError: the env's action space is not ``Discrete``.
    """
    if env is None:
        return None
    space = env.action_space
    if not isinstance(space, gym.spaces.Discrete):
        raise ValueError(f"agents need a Discrete action space, got {space!r}")
    if int(space.start) != 0:
        raise ValueError(f"agents need a Discrete action space starting at 0, got start={int(space.start)}")
    return int(space.n)
