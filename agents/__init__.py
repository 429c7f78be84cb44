"""Every dynprune controller behind one :class:`Agent` protocol.

Agents see observations (and optionally the step's ``info``) and return discrete action
ids; they never touch the model. Build one with :func:`make_agent`, restore any saved one
with :func:`load_agent`::

    from agents import load_agent, make_agent

    agent = make_agent("double_dqn", env, seed=0)
    agent.model.learn(5_000)
    agent.save("runs/ddqn")
    agent = load_agent("runs/ddqn")

Registered kinds: ``static``, ``random``, ``oracle`` (:mod:`agents.baselines`) and
``dqn``, ``double_dqn`` (:mod:`agents.dqn`), ``d3rlpy`` (:mod:`agents.offline`), ``router``
(:mod:`agents.router`). The DQN names (``DoubleDQN``, ``SB3Agent``,
``make_dqn`` ...) are imported on first access, so ``import agents`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agents.base import (
    Agent,
    AgentSpec,
    load_agent,
    make_agent,
    register_agent,
    registered_kinds,
    sidecar_path,
)
from agents.baselines import OracleAgent, RandomAgent, StaticAgent

if TYPE_CHECKING:
    from agents.dqn import DoubleDQN, DQNConfig, SB3Agent, double_dqn_targets, dqn_targets, make_dqn

register_agent("static", "agents.baselines:StaticAgent")
register_agent("random", "agents.baselines:RandomAgent")
register_agent("oracle", "agents.baselines:OracleAgent")
register_agent("dqn", "agents.dqn:SB3Agent", double=False)
register_agent("double_dqn", "agents.dqn:SB3Agent", double=True)
register_agent("d3rlpy", "agents.offline:D3rlpyAgent")
register_agent("router", "agents.router.agent:RouterAgent")

_LAZY = {"DoubleDQN", "DQNConfig", "SB3Agent", "double_dqn_targets", "dqn_targets", "make_dqn"}


def __getattr__(name: str) -> Any:
    """Import the torch-backed DQN names from :mod:`agents.dqn` on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module("agents.dqn"), name)
    raise AttributeError(f"module 'agents' has no attribute {name!r}")


__all__ = [
    "Agent",
    "AgentSpec",
    "DQNConfig",
    "DoubleDQN",
    "OracleAgent",
    "RandomAgent",
    "SB3Agent",
    "StaticAgent",
    "double_dqn_targets",
    "dqn_targets",
    "load_agent",
    "make_agent",
    "make_dqn",
    "register_agent",
    "registered_kinds",
    "sidecar_path",
]
