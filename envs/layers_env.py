"""DynPruneLayers-v0: pick which decoder layers to prune for each prompt (a layer mask)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from dynprune.plan import PruningPlan
from envs.dynprune_env import DynPruneEnv
from envs.measurement import Measurement


class DynPruneLayersEnv(DynPruneEnv):
    """
    ## Description
    The layer-set version of DynPrune-v0: the same engine, prompts, observation and rewards,
    but the agent names the decoder layers to prune itself (the thesis' router acts here).
    A pruned layer is replaced by its adapter when the model has one loaded
    (``env.unwrapped.lm.adapters``, e.g. ``dynprune.adapters.attach_adapters``), else skipped.

    ## Action Space
    ``MultiBinary(L - 1)``, ``L`` = the model's decoder layers: ``action[j] = 1`` prunes layer
    ``j + 1`` (``env.unwrapped.layer_ids[j]``). Layer 0 always runs: every model tried breaks
    without it and the exploration never proposes it, and this way every action of the space is
    a valid plan (at least one layer stays). All zeros is the full model.
    ``env.unwrapped.layers_to_action(layers)`` and ``action_layers(action)`` convert.

    ## Observation Space
    As DynPrune-v0 (``env.unwrapped.observation_names``): telemetry, prompt tokens, prompt
    perplexity, complexity, the latency budget with that reward, and with ``prompt_embedding=N``
    N projected coordinates of the served model's mean-pooled prompt token embedding.
    ``info`` always carries ``"prompt"`` (the text) and ``"prompt_embedding"`` (the full
    hidden-size vector), so a router can read the prompt without touching the model.

    ## Rewards
    As DynPrune-v0: ``reward="casrap"`` (default), ``"accuracy_efficiency"``, ``"latency_budget"``,
    ``"proxy"``, or a :class:`dynprune.rewards.RewardFn`.

    ## Starting State
    As DynPrune-v0: ``reset`` draws a load scenario, a budget (budget reward) and a prompt;
    ``reset(options={"prompt_id": id})`` starts on that prompt instead.

    ## Episode End
    As DynPrune-v0: after ``prompts_per_episode`` steps, or early when the reward says so.

    ## Arguments
    Every argument of DynPrune-v0 except ``action_table`` (there is none), plus:

    | argument     | default | meaning                                                            |
    |--------------|---------|--------------------------------------------------------------------|
    | use_adapters | True    | replace pruned layers by their adapters when loaded (else skip them) |

    ```python
    import gymnasium as gym
    import envs  # registers the ids
    env = gym.make("DynPruneLayers-v0", model="tiny-llama", reward="proxy")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    print(info["plan"], info["prompt"])
    ```

    ## Version History
    * v0: first version.
    """

    def __init__(self, use_adapters: bool = True, **kwargs: Any) -> None:
        if "action_table" in kwargs:
            raise ValueError("DynPruneLayers-v0 has no action table (its action is a layer mask); drop action_table")
        super().__init__(**kwargs)
        self.use_adapters = bool(use_adapters)
        self.num_layers = int(self.lm.geometry.num_layers)
        #: the decoder layer each action position prunes (layer 0 always runs)
        self.layer_ids: tuple[int, ...] = tuple(range(1, self.num_layers))
        self.action_space = spaces.MultiBinary(len(self.layer_ids))

    # ------------------------------------------------------------------ helpers
    def _check_mask(self, action: Any) -> np.ndarray:
        try:
            mask = np.asarray(action)
        except (TypeError, ValueError):
            mask = None
        n = len(self.layer_ids)
        ok = (
            mask is not None and mask.shape == (n,) and mask.dtype != object
            and np.issubdtype(mask.dtype, np.number) and bool(np.isin(mask, (0, 1)).all())
        )
        if not ok:
            raise ValueError(
                f"action {action!r} is not a layer mask: expected {n} values of 0/1 for layers "
                f"1..{self.num_layers - 1} ({self.action_space})"
            )
        return mask.astype(np.int8)

    def action_layers(self, action: Any) -> list[int]:
        """The decoder layers an action prunes."""
        return [self.layer_ids[j] for j in np.flatnonzero(self._check_mask(action))]

    def layers_to_action(self, layers: Any) -> np.ndarray:
        """The action that prunes ``layers`` (each in 1..L-1)."""
        action = np.zeros(len(self.layer_ids), dtype=np.int8)
        for layer in layers:
            if int(layer) not in self.layer_ids:
                raise ValueError(f"layer {layer} cannot be pruned here; expected layers 1..{self.num_layers - 1}")
            action[self.layer_ids.index(int(layer))] = 1
        return action

    def mask_plan(self, action: Any) -> PruningPlan:
        """The plan of an action: each pruned layer replaced by its adapter when one is loaded, else skipped."""
        layers = self.action_layers(action)
        slots = self.lm.adapters if self.use_adapters else {}
        adapted = [i for i in layers if i in slots]
        skipped = [i for i in layers if i not in slots]
        return PruningPlan(skip=skipped, adapters=adapted, geometry=self.lm.geometry)

    def action_rewards(self) -> np.ndarray:
        """Not defined here: there is no finite action table (use ``record_plan(mask_plan(mask))`` per mask)."""
        raise TypeError(
            "DynPruneLayers-v0 has 2^L actions and no table; measure masks with record_plan(env.mask_plan(mask))"
        )

    def action_records(self) -> list[Any]:
        """Not defined here: there is no finite action table (use ``record_plan(mask_plan(mask))`` per mask)."""
        raise TypeError(
            "DynPruneLayers-v0 has 2^L actions and no table; measure masks with record_plan(env.mask_plan(mask))"
        )

    def _info(self, step: Measurement | None = None, **extra: Any) -> dict[str, Any]:
        """DynPrune-v0's info plus ``layers``: the step's mask over ``layer_ids`` (zeros after ``reset``)."""
        extra.setdefault("layers", np.zeros(len(self.layer_ids), dtype=np.int8))
        return super()._info(step, **extra)

    # ---------------------------------------------------------------- gym API
    def step(self, action: Any):  # noqa: ANN201
        """Apply the mask's plan to the current prompt, measure, reward, restore."""
        plan = self.mask_plan(action)
        return self._step(-1, plan, plan.describe(), layers=self.layers_to_action(plan.removed_layers))
