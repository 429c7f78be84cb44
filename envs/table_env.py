"""DynPruneTable-v0: DynPrune-v0 served from a reward table, at table-lookup speed."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from dynprune.complexity import PPL_SCALE, TOKENS_SCALE
from dynprune.rewards import Outcome, RewardFn, make_reward
from dynprune.table import RewardTable, read_table
from dynprune.telemetry import make_monitor, snapshot_to_vector
from envs.episodes import (
    EmbeddingProjection,
    PromptEpisodes,
    check_budget_range,
    observation_layout,
    requested_prompt,
)

TABLES_DIR = Path(__file__).parent / "tables"
DEFAULT_TABLE = "smollm2-135m"


def table_path(table: str | Path) -> Path:
    """A table file: a path, or the name of a table shipped in ``envs/tables/`` (``"smollm2-135m"``)."""
    p = Path(table)
    if p.suffix == ".parquet" or p.exists():
        return p
    shipped = TABLES_DIR / f"{table}.parquet"
    if shipped.is_file():
        return shipped
    have = sorted(f.stem for f in TABLES_DIR.glob("*.parquet"))
    raise ValueError(f"table {table!r} is neither a file nor a shipped table (shipped: {have}); "
                     "build one with: dynprune table build --model MODEL --out FILE.parquet")


def healing_fingerprint(folder: str | Path) -> str:
    """The weights' fingerprint a healing folder records (its ``healing.json``, ``dynprune.healing.read_info``).

    Read here as plain JSON, so this module needs no torch.
    """
    path = Path(folder) / "healing.json"  # dynprune.healing.INFO_FILE
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{folder} is not a healing folder with a fingerprint ({path}: {e}); "
                         "make one with dynprune heal --out DIR") from None


class DynPruneTableEnv(PromptEpisodes):
    """
    ## Description
    DynPrune-v0 with every (prompt, action) measured once beforehand (NAS-Bench-201 style):
    ``dynprune table build`` runs each action of the action table on each prompt with
    ``timing="modelled"`` (quality exact from a teacher-forced pass, speed from the calibrated
    latency model) and stores the numbers in a Parquet file; this env serves them with the same
    observation, rewards, load scenarios, budgets and seeding as ``DynPrune-v0(timing="modelled")``
    on the same model, without loading the model: tens of thousands of steps per second, for
    agent research, hyper-parameter sweeps and many seeds. Agents trained here are tested live on
    ``DynPrune-v0(timing="live")``.

    ## Action Space
    ``Discrete(n)`` over the table's actions (``env.unwrapped.action_names``; the default table
    of DynPrune-v0: none, heads-5/10/15 %, layers-5/10/15/25 %, ffn-10/25 %).

    ## Observation Space
    As DynPrune-v0 (``env.unwrapped.observation_names``): telemetry (5), prompt tokens, prompt
    perplexity, complexity, ``latency_budget`` with the budget reward, then with
    ``prompt_embedding=N`` N projected coordinates of the prompt's mean input embedding (the
    table stores the embedding and the vocabulary's mean).

    ## Rewards
    As DynPrune-v0: ``reward="casrap"`` (default), ``"accuracy_efficiency"``, ``"latency_budget"``,
    ``"proxy"`` or a :class:`dynprune.rewards.RewardFn`, on the stored modelled speed-up, latency,
    perplexity, prefix fidelity and task score, with the load factor and budget of the episode.

    ## Starting State
    As DynPrune-v0: ``reset`` draws a load scenario, a budget (budget reward) and a prompt of the split;
    ``reset(options={"prompt_id": id})`` starts on that prompt (``env.unwrapped.prompt_ids``) instead.

    ## Episode End
    As DynPrune-v0: after ``prompts_per_episode`` steps, or early when the reward says so.

    ## Arguments

    | argument            | default        | meaning                                                      |
    |---------------------|----------------|--------------------------------------------------------------|
    | table               | "smollm2-135m" | a table file, or the name of one shipped in ``envs/tables/`` |
    | split               | "train"        | "train", "test" or None (all)                                |
    | reward              | "casrap"       | reward name or object                                        |
    | telemetry           | "scenario"     | "scenario", "live" or "replay"                               |
    | scenario            | None           | scenario name(s) for telemetry="scenario" (None: "mixed")    |
    | trace               | None           | trace file for telemetry="replay"                            |
    | prompts_per_episode | 1              | prompts (steps) per episode                                  |
    | sequential          | False          | visit prompts in order instead of at random                  |
    | budget_range        | (0.8, 1.2)     | budget / full latency under the load (x budget_scale)        |
    | prompt_embedding    | 0              | N > 0 appends N projected prompt-embedding coordinates       |
    | healing             | None           | healing folder the table must have been built with (checked) |

    ```python
    import gymnasium as gym
    import envs  # registers the ids
    env = gym.make("DynPruneTable-v0", table="smollm2-135m", split="train")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    ```

    A table built with healing (``dynprune table build --healing DIR``) serves its pruned actions
    healed: ``env.unwrapped.healing`` names it and each step's ``info["healing"]`` is the label
    DynPrune-v0 records for the action (None for ``none`` and for unhealed tables).

    ## Version History
    * v0: first version.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        table: str | Path | RewardTable = DEFAULT_TABLE,
        split: str | None = "train",
        reward: str | RewardFn = "casrap",
        telemetry: str = "scenario",
        scenario: str | Sequence[str] | None = None,
        trace: str | None = None,
        prompts_per_episode: int = 1,
        sequential: bool = False,
        budget_range: tuple[float, float] = (0.8, 1.2),
        prompt_embedding: int = 0,
        healing: str | Path | None = None,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"DynPruneTable-v0 has no render modes, got {render_mode!r}")
        if prompts_per_episode < 1:
            raise ValueError(f"prompts_per_episode must be >= 1, got {prompts_per_episode}")
        lo, hi = check_budget_range(budget_range)
        if telemetry == "scenario" and scenario is None:
            scenario = "mixed"
        data = table if isinstance(table, RewardTable) else read_table(table_path(table))
        self.data = data.select(split)
        self.split = split
        self.reward_fn = make_reward(reward)
        self.prompts_per_episode = prompts_per_episode
        self.sequential = sequential
        self.budget_range = (float(lo), float(hi))
        self.telemetry_mode = telemetry
        self.monitor = make_monitor(telemetry, scenario=scenario if telemetry == "scenario" else None,
                                    trace=trace if telemetry == "replay" else None, device=self.data.meta["device"])
        self.timing = str(self.data.meta.get("timing", "modelled"))
        self.action_names: tuple[str, ...] = self.data.action_names
        stored = self.data.meta.get("healing")  # None: built unhealed (or before tables recorded healing)
        if healing is not None:
            want, have = healing_fingerprint(healing), None if stored is None else stored["fingerprint"]
            if want != have:
                built = "unhealed" if stored is None else f"with healing {stored['name']}@{have}"
                raise ValueError(f"the table was built {built}, not with healing {healing} ({want}); build one "
                                 f"with: dynprune table build --healing {healing} --out FILE.parquet")
        self.healing: str | None = None if stored is None else f"{stored['name']}@{stored['fingerprint']}"
        """``"<name>@<fingerprint>"`` of the healing the table's pruned actions were measured with, or None."""
        self._healing_labels: tuple[str | None, ...] = (
            tuple(stored["labels"]) if stored is not None else (None,) * len(self.action_names))
        self.action_space = spaces.Discrete(len(self.action_names))
        self.plans: tuple[dict[str, Any], ...] = tuple(a["plan"] for a in self.data.meta["actions"])

        p, a = self.data.prompts, self.data.actions
        self.prompt_ids: tuple[str, ...] = tuple(str(x) for x in p["prompt_id"])
        self._texts = tuple(str(x) for x in p["text"])
        # Prompt features exactly as DynPrune-v0 computes them from the full model's PromptFeatures.
        self._prompt_obs = [
            [min(1.0, float(n) / TOKENS_SCALE), min(1.0, float(ppl) / PPL_SCALE), float(c)]
            for n, ppl, c in zip(p["feature_tokens"], p["prompt_perplexity"], p["complexity"], strict=True)
        ]
        self._baseline_ppl = p["baseline_ppl"].tolist()
        # per (prompt, action), as Python floats: indexing a list is faster than a numpy scalar
        self._speedup = a["speedup"].tolist()
        self._latency = a["latency_s"].tolist()
        self._ppl = a["ppl"].tolist()
        self._prefix = a["prefix_fidelity"].tolist()
        self._kept = a["kept_fraction"].tolist()
        self._task = [[None if math.isnan(x) else x for x in row] for row in a["task_score"].tolist()]

        # the prompt_embedding=N coordinates of every prompt, computed as DynPrune-v0 does
        projection = EmbeddingProjection.make(int(prompt_embedding), self.data.meta["vocab_mean_embedding"]) \
            if prompt_embedding else None
        self._emb_obs = None if projection is None else \
            np.array([projection.coordinates(e) for e in self.data.prompts["embedding"]], dtype=np.float64)
        self.observation_names, self.observation_space = observation_layout(self.reward_fn.needs_budget, projection)
        self._low, self._high = self.observation_space.low, self.observation_space.high

        self._episode = -1
        self._step_in_episode = 0
        self._cursor = 0
        self._index = 0
        self._budget_rel: float | None = None
        self._snapshot: Any = None
        self._obs = np.zeros(self.observation_space.shape, np.float32)

    # ------------------------------------------------------------------ helpers
    def _next_prompt(self) -> int:
        if self.sequential:
            i = self._cursor % len(self.prompt_ids)
            self._cursor += 1
            return i
        return int(self.np_random.integers(len(self.prompt_ids)))

    def _observe(self) -> np.ndarray:
        snap = self.monitor.snapshot()
        self._snapshot = snap
        vec = snapshot_to_vector(snap) + self._prompt_obs[self._index]
        if self.reward_fn.needs_budget:
            vec.append(float(self._budget_rel))
        if self._emb_obs is not None:
            vec += self._emb_obs[self._index].tolist()
        obs = np.asarray(vec, dtype=np.float32)
        # np.clip(obs, low, high) as DynPrune-v0 does, in place (two ufuncs: a third of np.clip's overhead)
        np.maximum(obs, self._low, out=obs)
        np.minimum(obs, self._high, out=obs)
        self._obs = obs
        return obs

    def _info(self) -> dict[str, Any]:
        i = self._index
        return {
            "observation_names": self.observation_names,
            "prompt_id": self.prompt_ids[i],
            "prompt": self._texts[i],
            "prompt_embedding": self.data.prompts["embedding"][i],
            "scenario": getattr(self._snapshot, "source", ""),
        }

    def outcome(self, prompt: int, action: int, factor: float, budget_rel: float | None) -> Outcome:
        """The :class:`Outcome` DynPrune-v0 would give this (prompt row, action) under a load factor and budget."""
        # the full model's latency as DynPrune-v0 derives it (Evaluation.full_latency_s), bit for bit
        full = self._latency[prompt][action] * (1.0 + self._speedup[prompt][action])
        return Outcome(
            speedup=self._speedup[prompt][action],
            baseline_ppl=self._baseline_ppl[prompt],
            pruned_ppl=self._ppl[prompt][action],
            prefix_fidelity=self._prefix[prompt][action],
            task_score=self._task[prompt][action],
            kept_fraction=self._kept[prompt][action],
            latency_s=self._latency[prompt][action] * factor,
            budget_s=full * factor * budget_rel if budget_rel is not None else None,
        )

    def action_outcomes(self) -> list[Outcome]:
        """The :class:`Outcome` of every action on the current prompt, load and budget (action-id order)."""
        factor = float(self.monitor.latency_factor)
        return [self.outcome(self._index, a, factor, self._budget_rel) for a in range(self.action_space.n)]

    def action_rewards(self) -> np.ndarray:
        """Reward of every action on the current prompt, load and budget (for the oracle)."""
        return np.array([self.reward_fn(o)[0] for o in self.action_outcomes()], dtype=np.float64)

    # ---------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):  # noqa: ANN201
        """Start an episode: new load scenario, latency budget and prompt (the same draws as DynPrune-v0).

        ``options={"prompt_id": id}`` starts it on that prompt instead of a drawn one, as in DynPrune-v0.
        """
        start = requested_prompt(options, self.prompt_ids, type(self).__name__, self.split)  # fails before any change
        super().reset(seed=seed)
        self._begin_episode(seed)
        self._index = self._next_prompt() if start is None else start
        return self._observe(), self._info()

    def step(self, action: Any):  # noqa: ANN201
        """Look up the action's stored outcome on the current prompt, reward it, go on to the next prompt."""
        try:
            a = int(action)
            ok = a == action and 0 <= a < self.action_space.n
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"action {action!r} is not in {self.action_space} (ids 0..{self.action_space.n - 1})")
        i = self._index
        factor = float(self.monitor.latency_factor)
        outcome = self.outcome(i, a, factor, self._budget_rel)
        reward, terminated = self.reward_fn(outcome)
        self._step_in_episode += 1
        terminated = bool(terminated) or self._step_in_episode >= self.prompts_per_episode
        info = {
            "step_prompt_id": self.prompt_ids[i],
            "action_name": self.action_names[a],
            "timing": self.timing,
            "speedup": outcome.speedup,
            "prefix_fidelity": outcome.prefix_fidelity,
            "budget_s": outcome.budget_s,
            "healing": self._healing_labels[a],
        }
        if not terminated:
            self._index = self._next_prompt()
            obs = self._observe()
        else:
            obs = self._obs
        info.update(self._info())
        return obs, float(reward), terminated, False, info
