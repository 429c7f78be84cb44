"""Gymnasium environments of dynprune; importing this module only registers them.

The entry points are strings, so ``import envs`` is cheap: torch and
transformers load at ``gym.make``. ``gym.make("DynPrune-v0")`` also works in a
fresh interpreter with nothing imported: Gymnasium 1.x has no plugin entry
point, so the package ships a one-line ``dynprune_envs.pth`` hook
(:mod:`dynprune_envs_hook`, installed by ``pip install .`` and ``pip install -e .``)
that registers these ids right after ``gymnasium`` is first imported.
"""

from gymnasium.envs.registration import register, registry

ENV_IDS = ("DynPrune-v0", "DynPruneLayers-v0")
"""Environments around a loaded model (``model=`` argument)."""
TABLE_ENV_IDS = ("DynPruneTable-v0",)
"""Environments served from a reward table (``table=`` argument; no model)."""


def register_envs() -> None:
    """Register every dynprune environment id (idempotent)."""
    if "DynPrune-v0" not in registry:
        register(id="DynPrune-v0", entry_point="envs.dynprune_env:DynPruneEnv")
    if "DynPruneLayers-v0" not in registry:
        register(id="DynPruneLayers-v0", entry_point="envs.layers_env:DynPruneLayersEnv")
    if "DynPruneTable-v0" not in registry:
        register(id="DynPruneTable-v0", entry_point="envs.table_env:DynPruneTableEnv")


register_envs()
