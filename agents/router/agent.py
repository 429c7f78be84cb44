"""RouterAgent: the trained router behind the Agent protocol, on DynPruneLayers-v0 and DynPrune-v0.

- On ``DynPruneLayers-v0`` (``MultiBinary(L - 1)`` over layers ``1..L-1``) it returns the router's
  layer mask in the env's layout (``env.unwrapped.layer_ids``; the router never prunes layer 0).
- On ``DynPrune-v0`` (``Discrete``: the action table) it returns the table entry *nearest* to the
  router's layer set: the smallest Hamming distance between the router's mask and the entry's
  pruned layers, among the entries that only remove whole layers (``none`` and ``layers-x%``);
  ties go to the entry that prunes fewer layers (the conservative one), then to the lower id.
  The entries' layer sets are read once from the env when the agent is built
  (``env.unwrapped.plan(a)``), so the agent itself never touches the model.

The router reads the prompt from ``info``: ``info["prompt"]`` (MiniLM router) or
``info["prompt_embedding"]`` (the light router). ``act`` without that key is a ``ValueError``.

Saved as ``<path>.router.safetensors`` (weights + metadata: num_layers, method, features,
encoder) beside the agent sidecar ``<path>.agent.json``; loading checks the layer count against
the env when one is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.base import read_sidecar, write_sidecar
from agents.router.model import Router, SentenceEncoder, load_router

__all__ = ["RouterAgent", "env_num_layers", "nearest_entry", "table_layer_sets"]

WEIGHTS_SUFFIX = ".router.safetensors"


def env_num_layers(env: gym.Env) -> int:
    """Decoder layers of the model behind a DynPrune env (read from the engine's geometry)."""
    n = getattr(env.unwrapped, "num_layers", None)
    if n is not None:
        return int(n)
    lm = getattr(env.unwrapped, "lm", None)
    if lm is None:
        raise ValueError(f"cannot tell the number of layers of {type(env.unwrapped).__name__}: no MultiBinary "
                         "action space and no .lm")
    return int(lm.geometry.num_layers)


def table_layer_sets(env: gym.Env) -> list[tuple[int, ...] | None]:
    """Pruned layers of every action of a DynPrune-v0 table; ``None`` for entries that slice heads/FFN."""
    core = env.unwrapped
    out: list[tuple[int, ...] | None] = []
    for a in range(int(env.action_space.n)):
        plan = core.plan(a)
        out.append(None if (plan.heads or plan.ffn) else tuple(plan.removed_layers))
    return out


def nearest_entry(mask: np.ndarray, table: Sequence[tuple[int, ...] | None]) -> int:
    """Id of the table entry nearest to ``mask`` (Hamming distance; ties: fewer layers, then lower id)."""
    chosen = {int(i) for i in np.flatnonzero(np.asarray(mask))}
    best: tuple[int, int, int] | None = None
    for a, layers in enumerate(table):
        if layers is None:
            continue
        key = (len(chosen.symmetric_difference(layers)), len(layers), a)
        if best is None or key < best:
            best = key
    if best is None:
        raise ValueError("the action table has no layer-only entry (none / layers-x%) to map the router's choice to")
    return best[2]


def _layout(env: gym.Env | None) -> tuple[list[tuple[int, ...] | None] | None, tuple[int, ...] | None]:
    """``(table layer sets, None)`` for DynPrune-v0, ``(None, layer_ids)`` for DynPruneLayers-v0."""
    if env is None:
        return None, None
    if isinstance(env.action_space, gym.spaces.Discrete):
        return table_layer_sets(env), None
    layer_ids = getattr(env.unwrapped, "layer_ids", None)
    if layer_ids is None:
        name = type(env.unwrapped).__name__
        raise ValueError(f"RouterAgent acts on DynPrune-v0 or DynPruneLayers-v0, got {name}")
    return None, tuple(layer_ids)


class RouterAgent:
    """Acts with a trained :class:`~agents.router.model.Router`.

    Args:
        router: The router.
        table: For DynPrune-v0: the layer sets of its actions (:func:`table_layer_sets`);
            ``None``: return a layer mask.
        layer_ids: For DynPruneLayers-v0: the layer each action position prunes
            (``env.unwrapped.layer_ids``); ``None``: a mask over all ``L`` layers.
        sample: ``True``: ``r ~ N(mu, sigma^2)`` (exploration); ``False``: ``r = mu`` (evaluation).
        seed: Seed of the sampling noise.
        name: Label in tables (default ``router-<method>``).
    """

    kind = "router"

    def __init__(
        self,
        router: Router,
        table: Sequence[tuple[int, ...] | None] | None = None,
        layer_ids: Sequence[int] | None = None,
        sample: bool = False,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        self.router = router.eval()
        self.table = None if table is None else [None if t is None else tuple(int(i) for i in t) for t in table]
        if self.table is not None:
            for t in self.table:
                for i in t or ():
                    if not 0 <= i < router.config.num_layers:
                        raise ValueError(f"table layer {i} out of range 0..{router.config.num_layers - 1}")
        self.layer_ids = None if layer_ids is None else tuple(int(i) for i in layer_ids)
        if self.layer_ids is not None and not set(router.config.protected) >= (
            set(range(router.config.num_layers)) - set(self.layer_ids)
        ):
            raise ValueError(
                f"the env prunes only layers {list(self.layer_ids)}; the router may prune others "
                f"(protected: {list(router.config.protected)})"
            )
        self.sample = bool(sample)
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self.name = name or f"router-{router.method}"
        self.last_ratio: float | None = None
        self.last_mask: np.ndarray | None = None

    @classmethod
    def from_env(cls, env: gym.Env | None, router: Router | str | Path | None = None, **kwargs: Any) -> RouterAgent:
        """A router agent for ``env``: on DynPrune-v0 the table's layer sets are read for the mapping.

        ``router`` is a :class:`Router` or a router checkpoint file (its layer count is checked).
        """
        if router is None:
            raise ValueError("RouterAgent needs a router (a Router or a checkpoint path from dynprune router train)")
        n = None if env is None else env_num_layers(env)
        if not isinstance(router, Router):
            router, _ = load_router(router, num_layers=n)
        elif n is not None and router.config.num_layers != n:
            raise ValueError(f"the router is for {router.config.num_layers} decoder layers; the env's model has {n}")
        table, layer_ids = _layout(env)
        return cls(router, table=table, layer_ids=layer_ids, **kwargs)

    # ----------------------------------------------------------------- acting
    def _features(self, infos: Sequence[dict[str, Any] | None]) -> torch.Tensor:
        cfg = self.router.config
        key = "prompt" if cfg.features == "minilm" else "prompt_embedding"
        for info in infos:
            if info is None or key not in info:
                raise ValueError(
                    f"the {cfg.features!r} router reads info[{key!r}]; pass the info dict of reset/step to act()"
                )
        if cfg.features == "minilm":
            return self.router.features(texts=[info["prompt"] for info in infos])  # type: ignore[index]
        return self.router.features(embeddings=np.stack([np.asarray(info[key]) for info in infos]))  # type: ignore[index]

    def masks(self, infos: Sequence[dict[str, Any]]) -> np.ndarray:
        """Layer masks for a batch of prompts (one encoder pass for all of them)."""
        masks, ratios = self.router.decide(self._features(infos), sample=self.sample, generator=self._generator)
        self.last_ratio = float(ratios[-1]) if len(ratios) else None
        return masks

    def act(self, obs: np.ndarray, info: dict[str, Any] | None = None) -> Any:
        """The router's layer mask (DynPruneLayers-v0) or the nearest table action id (DynPrune-v0)."""
        mask = self.masks([info])[0]  # type: ignore[list-item]
        self.last_mask = mask
        if self.table is not None:
            return nearest_entry(mask, self.table)
        if self.layer_ids is not None:
            return mask[list(self.layer_ids)]
        return mask

    # ----------------------------------------------------------------- files
    def save(self, path: str | Path) -> None:
        """Write ``<path>.router.safetensors`` and the sidecar ``<path>.agent.json``."""
        path = Path(path)
        weights = path.with_name(path.name + WEIGHTS_SUFFIX)
        self.router.save(weights)
        write_sidecar(path, self.kind, {
            "weights": weights.name, "table": None if self.table is None else [
                None if t is None else list(t) for t in self.table],
            "layer_ids": None if self.layer_ids is None else list(self.layer_ids),
            "sample": self.sample, "seed": self.seed, "name": self.name,
        })

    @classmethod
    def load(
        cls, path: str | Path, env: gym.Env | None = None, encoder: SentenceEncoder | None = None
    ) -> RouterAgent:
        """Restore an agent saved at ``path``; with ``env``, the layer count must match its model."""
        kind, kwargs = read_sidecar(path)
        if kind != cls.kind:
            raise ValueError(f"sidecar of {path!s} holds a {kind!r} agent, expected {cls.kind!r}")
        path = Path(path)
        weights = path.parent / kwargs["weights"]
        n = None if env is None else env_num_layers(env)
        router, _ = load_router(weights, num_layers=n, encoder=encoder)
        table, layer_ids = kwargs.get("table"), kwargs.get("layer_ids")
        if env is not None:
            table, layer_ids = _layout(env)
        return cls(router, table=table, layer_ids=layer_ids, sample=kwargs.get("sample", False),
                   seed=kwargs.get("seed", 0),
                   name=kwargs.get("name"))
