"""DynPrune-v0: pick a pruning action per prompt, get rewarded for speed at a known quality cost."""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from dynprune.actions import ActionEntry, entry_plan, make_table
from dynprune.complexity import PPL_SCALE, TOKENS_SCALE
from dynprune.plan import PruningPlan
from dynprune.pruning.kv import fraction_held
from dynprune.rewards import Outcome, RewardFn, make_reward, memory_term
from dynprune.runtime import TIMINGS, PlanEvaluator, ProfileConfig
from dynprune.telemetry import make_monitor, snapshot_to_vector
from dynprune.types import Prompt, StepRecord
from envs.episodes import (
    EmbeddingProjection,
    PromptEpisodes,
    check_budget_range,
    observation_layout,
    requested_prompt,
)
from envs.measurement import Measurement, step_info
from envs.rendering import RENDER_HISTORY, render_line, render_steps_image


def step_record(info: dict[str, Any]) -> StepRecord | None:
    """The :class:`StepRecord` of the step an info comes from; ``None`` for a ``reset`` info."""
    from dynprune.records import record_from_dict

    text = info.get("record", "")
    return record_from_dict(json.loads(text)) if text else None


class DynPruneEnv(PromptEpisodes):
    """
    ## Description
    Each step shows the agent one prompt and the machine's state; the agent picks
    how to prune the language model for that prompt (an entry of an action
    table); the environment runs the real model under that plan, measures speed
    and quality against the full model on the same prompt, and returns a reward
    that trades them off. The model is restored after every step.

    ## Action Space
    ``Discrete(n)`` over the action table (``env.unwrapped.action_names``). Default table:

    | id | name       | plan                                                           |
    |----|------------|----------------------------------------------------------------|
    | 0  | none       | the full model                                                 |
    | 1  | heads-5%   | remove 5 % of all query heads, least important first (GQA-safe) |
    | 2  | heads-10%  | 10 % of heads                                                  |
    | 3  | heads-15%  | 15 % of heads                                                  |
    | 4  | layers-5%  | skip round(0.05 L) layers of lowest block influence (or adapters) |
    | 5  | layers-10% | round(0.10 L) layers                                           |
    | 6  | layers-15% | round(0.15 L) layers                                           |
    | 7  | layers-25% | round(0.25 L) layers                                           |
    | 8  | ffn-10%    | remove 10 % of all FFN channels, least important first         |
    | 9  | ffn-25%    | 25 % of FFN channels                                           |

    ``action_table="kv"`` appends KV-cache windows (``dynprune.pruning.kv``: each running layer keeps
    its first 4 cached tokens, StreamingLLM's attention sinks, and its most recent ones):

    | id | name       | plan                                                           |
    |----|------------|----------------------------------------------------------------|
    | 10 | kv-50%     | keep the 4 sinks and the most recent 50 % of the context       |
    | 11 | kv-75%     | keep the 4 sinks and the most recent 25 % of the context       |
    | 12 | kv-w256    | keep the 4 sinks and the last 256 tokens (memory bounded)      |

    A window's quality is measured like any plan's (teacher-forced with the same positions masked,
    or live); its modelled speed-up is that of its plan without the window (the latency model has no
    window terms; measured live on SmolLM2-135M: within -10..+1 %, ``benchmarks/results/kv_cache.json``).

    ## Observation Space
    ``Box(float32)``; names in ``env.unwrapped.observation_names`` and ``info["observation_names"]``.

    | index | name               | min | max | meaning                                            |
    |-------|--------------------|-----|-----|----------------------------------------------------|
    | 0     | cpu_util           | -1  | 1   | CPU utilisation fraction                           |
    | 1     | mem_available_frac | -1  | 1   | available RAM / total                              |
    | 2     | gpu_util           | -1  | 1   | GPU utilisation fraction                           |
    | 3     | vram_free_frac     | -1  | 1   | free VRAM / total                                  |
    | 4     | battery_frac       | -1  | 1   | battery charge                                     |
    | 5     | prompt_tokens      | 0   | 1   | min(1, tokens / 200)                               |
    | 6     | prompt_perplexity  | 0   | 1   | min(1, perplexity / 50) under the full model       |
    | 7     | complexity         | 0   | 1   | 0.6 * [5] + 0.4 * [6] (CASRAP)                     |
    | 8     | latency_budget     | 0   | 2   | latency_budget reward only: budget / full latency, same load |
    | then  | prompt_emb_0..N-1  | -√H | √H  | only with ``prompt_embedding=N``: the prompt's embedding, projected |

    ``prompt_embedding=N`` appends N numbers that describe the prompt's content: the served model's
    input token embeddings mean-pooled over the prompt (``PrunableLM.prompt_embedding``), minus the
    mean of the vocabulary's embeddings (the direction every prompt shares), L2-normalised, then
    projected on N fixed orthonormal random directions (seed 0, so train and test envs agree) and
    scaled by √H (H = hidden size) so each coordinate is of order 1 (Johnson-Lindenstrauss: random
    projections keep the distances between prompts). ``info["prompt_embedding"]`` always carries the
    full mean-pooled vector (float32, size H), for agents that read it directly (the light router).

    A telemetry field the machine does not have (no GPU, no battery) is -1.

    ## Rewards
    ``reward="casrap"`` (default), ``"accuracy_efficiency"``, ``"latency_budget"``,
    ``"proxy"`` (deterministic), or any :class:`dynprune.rewards.RewardFn`.
    Speed-up is per generated token against the full model on the same prompt. With
    ``timing="modelled"`` (default) it comes from the calibrated latency model of this model,
    device, dtype and thread count (``dynprune calibrate --latency``) and quality from one
    memoised teacher-forced pass: the reward of a (prompt, action, load, budget) is deterministic.
    With ``timing="live"`` (evaluation) the plan and the full model are timed side by side.

    Memory: whatever the reward, a step under memory pressure adds
    ``kv_memory_weight * pressure * (1 - kv_fraction)`` (``dynprune.rewards.memory_term``), where
    ``pressure = clip((0.25 - mem_available_frac) / 0.25, 0, 1)`` comes from the observed RAM and
    ``kv_fraction`` is the share of the context's tokens the plan's KV cache holds at its peak:

    | scenario                                   | mem_available_frac | pressure | kv-50% | kv-75% |
    |--------------------------------------------|--------------------|----------|--------|--------|
    | idle, busy_cpu, low_battery, gpu_contention | 0.50-0.70          | 0        | 0      | 0      |
    | low_memory                                 | 0.08 (noise 0.03)  | ~0.68    | ~+0.34 | ~+0.51 |

    This charges each plan ``weight * pressure * kv_fraction`` for the cache it needs, less the
    constant ``weight * pressure`` every plan pays: plans without a KV window (the whole default
    table) keep their rewards, so ``DynPruneTable-v0`` agrees; a window earns its quality cost back
    only when memory is short. ``info["record"]`` carries ``kv_bytes`` / ``baseline_kv_bytes`` (the
    plan's and the full model's KV-cache bytes at their peak) and ``memory_term``.

    ## Starting State
    ``reset`` draws a load scenario (``telemetry="scenario"``), a latency budget
    (with the budget reward) and a prompt from the split, all from ``self.np_random``.
    ``reset(options={"prompt_id": id})`` starts on that prompt of ``env.unwrapped.prompts`` instead
    (evaluation, exploration: one prompt at a time); ``env.unwrapped.current_prompt`` is the prompt
    the next step measures.

    ## Episode End
    After ``prompts_per_episode`` steps (default 1), or early when the reward says
    so (CASRAP: more than 10 % slower). No truncation: wrap with ``max_episode_steps``.

    ## Arguments

    | argument            | default          | meaning                                                     |
    |---------------------|------------------|-------------------------------------------------------------|
    | model               | "smollm2-135m"   | model spec, or a loaded ``PrunableLM``                      |
    | prompts             | "dynprune"       | prompt source (see ``dynprune.tasks``) or a list of Prompt  |
    | split               | "train"          | "train", "test" or None (all)                               |
    | max_new_tokens      | 32               | answer length of the full and pruned model                  |
    | action_table        | "default"        | "default", "kv" (default + KV windows) or a list of ActionEntry / dicts |
    | reward              | "casrap"         | reward name or object                                       |
    | timing              | "modelled"       | "modelled" (latency model + memoised forward), "live" or "profiled" |
    | telemetry           | "scenario"       | "scenario", "live" or "replay"                              |
    | scenario            | None             | scenario name(s), telemetry="scenario" only (None: "mixed") |
    | trace               | None             | trace file for telemetry="replay"                           |
    | prompts_per_episode | 1                | prompts (steps) per episode                                 |
    | sequential          | False            | visit prompts in order (evaluation) instead of at random    |
    | budget_range        | (0.8, 1.2)       | budget / full latency under the load (x budget_scale)       |
    | cache_file          | None             | JSON-lines file caching full-model answers across runs      |
    | profile             | None             | ``ProfileConfig`` of the latency profile                    |
    | memo_file           | None             | JSON file of the quality memo (teacher-forced metrics) across runs |
    | latency_model       | None             | ``LatencyModel`` or its file (default: the cached fit)      |
    | prompt_embedding    | 0                | N > 0 appends N projected prompt-embedding coordinates      |
    | healing             | None             | healing folder (``dynprune heal``): LoRA active under pruned plans only |
    | adapters            | None             | adapters file (``dynprune adapters train``) for pruned layers |
    | kv_memory_weight    | 1.0              | reward per whole KV cache freed at full memory pressure (0: off) |
    | device, dtype       | "auto"           | passed to ``load_model``                                    |
    | render_mode         | None             | "ansi" (last step, one line), "rgb_array" (recent steps)  |

    ```python
    import gymnasium as gym
    env = gym.make("DynPrune-v0", model="tiny-llama", reward="proxy")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    ```

    ## Info
    ``reset`` and ``step`` return the same keys, each of a fixed structure (see ``_info``): the
    prompt of the returned observation (``prompt_id``, ``prompt``, ``prompt_embedding``,
    ``scenario``), then the step just measured (``step_prompt_id``, ``action``, ``action_name``,
    ``plan`` and ``record`` as JSON strings, ``timing``, ``baseline``, ``pruned``, ``budget_s``,
    ``texts``), empty after ``reset``.

    ## Version History
    * v0: first version. Later revisions, same id: render modes; infos with the same keys on reset
      and step (the prompt keys describe the returned observation; ``plan`` and ``record`` became
      JSON strings); ``timing="modelled"`` by default; ``reset(options={"prompt_id": ...})``.
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}

    def __init__(
        self,
        model: Any = "smollm2-135m",
        prompts: str | Sequence[Prompt] = "dynprune",
        split: str | None = "train",
        max_new_tokens: int = 32,
        action_table: str | Sequence[ActionEntry | dict[str, Any]] = "default",
        reward: str | RewardFn = "casrap",
        timing: str = "modelled",
        telemetry: str = "scenario",
        scenario: str | Sequence[str] | None = None,
        trace: str | None = None,
        prompts_per_episode: int = 1,
        sequential: bool = False,
        budget_range: tuple[float, float] = (0.8, 1.2),
        cache_file: str | None = None,
        profile: ProfileConfig | None = None,
        memo_file: str | None = None,
        latency_model: Any = None,
        prompt_embedding: int = 0,
        healing: str | None = None,
        adapters: str | None = None,
        kv_memory_weight: float = 1.0,
        device: str = "auto",
        dtype: str = "auto",
        render_mode: str | None = None,
    ) -> None:
        from dynprune.models import PrunableLM, load_model
        from dynprune.tasks import load_prompts

        if timing not in TIMINGS:
            raise ValueError(f"timing must be one of {TIMINGS}, got {timing!r}")
        if prompts_per_episode < 1:
            raise ValueError(f"prompts_per_episode must be >= 1, got {prompts_per_episode}")
        lo, hi = check_budget_range(budget_range)
        weight_ok = isinstance(kv_memory_weight, (int, float)) and math.isfinite(kv_memory_weight)
        if not (weight_ok and kv_memory_weight >= 0):
            raise ValueError(f"kv_memory_weight must be a finite number >= 0 (0 turns the memory charge off), "
                             f"got {kv_memory_weight!r}")
        self.kv_memory_weight = float(kv_memory_weight)
        if telemetry != "scenario" and scenario is not None:
            raise ValueError(
                f"scenario={scenario!r} is only used with telemetry='scenario', got telemetry={telemetry!r}; "
                "drop scenario= or set telemetry='scenario'"
            )
        if telemetry != "replay" and trace is not None:
            raise ValueError(
                f"trace={trace!r} is only used with telemetry='replay', got telemetry={telemetry!r}; "
                "drop trace= or set telemetry='replay'"
            )
        if telemetry == "scenario" and scenario is None:
            scenario = "mixed"
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.render_mode = render_mode
        if isinstance(profile, dict):  # a JSON env spec (Minari's recover_environment) carries it as a dict
            profile = ProfileConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in profile.items()})
        self.reward_fn = make_reward(reward)
        self.table = make_table(action_table)
        self.timing = timing
        self.prompts_per_episode = prompts_per_episode
        self.sequential = sequential
        self.budget_range = (float(lo), float(hi))
        self.monitor = make_monitor(
            telemetry,
            scenario=scenario if telemetry == "scenario" else None,
            trace=trace if telemetry == "replay" else None,
            device="cpu",
        )
        self.telemetry_mode = telemetry
        self.split = split
        self.prompts = list(prompts) if not isinstance(prompts, str) else load_prompts(prompts, split=split)
        if not self.prompts:
            raise ValueError(f"prompt source {prompts!r} (split {split!r}) has no prompts")
        self.lm = model if isinstance(model, PrunableLM) else load_model(model, device=device, dtype=dtype)
        if not self.lm.has_importance:  # the table's plans select by importance: the cached calibration, now
            self.lm.calibrate()
        # A prompt too long for the context fails here, naming it, not when it is first drawn.
        self.lm.check_prompts_fit(self.prompts, max_new_tokens)
        if healing is not None:  # refuses a healing trained for another model, naming both identities
            from dynprune.healing import attach_healing

            attach_healing(self.lm, healing)
        if adapters is not None:  # before the first table plan is built, so layer actions use them
            from dynprune.adapter_files import load_adapters
            from dynprune.adapters import attach_adapters

            attach_adapters(self.lm, load_adapters(adapters, self.lm))
        if self.lm.device.type == "cuda":
            self.monitor = make_monitor(telemetry, scenario=scenario if telemetry == "scenario" else None,
                                        trace=trace if telemetry == "replay" else None, device=str(self.lm.device))
        self.evaluator = PlanEvaluator(self.lm, max_new_tokens, profile=profile, cache_file=cache_file,
                                       memo=memo_file, latency_model=latency_model)
        self._plans: dict[int, PruningPlan] = {}

        self._projection = self._embedding_projection(int(prompt_embedding))
        self.observation_names, self.observation_space = observation_layout(self.reward_fn.needs_budget,
                                                                             self._projection)
        self.action_space = spaces.Discrete(len(self.table))
        self.action_names: tuple[str, ...] = tuple(e.name for e in self.table)

        self._episode = -1
        self._step_in_episode = 0
        self._cursor = 0
        self._prompt: Prompt = self.prompts[0]
        self._budget_rel: float | None = None
        self._obs = np.zeros(self.observation_space.shape, np.float32)
        self._recent: deque[StepRecord] = deque(maxlen=RENDER_HISTORY)

    # ------------------------------------------------------------------ helpers
    def plan(self, action: int) -> PruningPlan:
        """The plan of an action id (built on first use from calibrated importance)."""
        action = int(action)
        if action not in self._plans:
            self._plans[action] = entry_plan(self.table[action], self.lm, use_adapters=bool(self.lm.adapters))
        return self._plans[action]

    def _embedding_projection(self, n: int) -> EmbeddingProjection | None:
        """The ``prompt_embedding=N`` projection for this model's vocabulary (None for 0)."""
        if n == 0:
            return None
        table = self.lm.model.get_input_embeddings().weight
        return EmbeddingProjection.make(n, table.detach().float().mean(dim=0).cpu().numpy())

    def embedding_coordinates(self, text: str) -> list[float]:
        """The ``prompt_embedding=N`` observation coordinates of a prompt text (empty when N = 0)."""
        if self._projection is None:
            return []
        return self._projection.coordinates(self.lm.prompt_embedding(text)).tolist()

    def _next_prompt(self) -> Prompt:
        if self.sequential:
            prompt = self.prompts[self._cursor % len(self.prompts)]
            self._cursor += 1
            return prompt
        return self.prompts[int(self.np_random.integers(len(self.prompts)))]

    def _observe(self) -> np.ndarray:
        snap = self.monitor.snapshot()
        self._snapshot = snap
        feats = self.evaluator.baseline(self._prompt).features
        vec = snapshot_to_vector(snap) + [
            min(1.0, feats.n_tokens / TOKENS_SCALE),
            min(1.0, feats.perplexity / PPL_SCALE),
            feats.complexity,
        ]
        if self.reward_fn.needs_budget:
            vec.append(float(self._budget_rel))
        vec += self.embedding_coordinates(self._prompt.text)
        obs = np.clip(np.asarray(vec, dtype=np.float32), self.observation_space.low, self.observation_space.high)
        self._obs = obs
        return obs

    def _info(self, step: Measurement | None = None, **extra: Any) -> dict[str, Any]:
        """The info of ``reset`` (no step) and ``step``: the same keys, of the same types, in both.

        The prompt keys describe the prompt of the observation returned with this info (the next one
        to act on); the step keys describe the step just measured (``step_prompt_id`` names its prompt)
        and hold empty values after ``reset``. Every value has a fixed structure: strings, numbers,
        fixed-size arrays and dicts of fixed keys; a missing number is -1 (like a missing telemetry
        field; not NaN, which never equals itself and fails Gymnasium's determinism check); the plan
        and the step's whole record, whose structure varies, are JSON strings
        (``PruningPlan.from_dict(json.loads(info["plan"]))``, :func:`step_record`). That is what
        Minari's ``DataCollector(record_infos=True)`` needs to store infos. ``extra``: a subclass's keys.
        """
        return {
            "observation_names": self.observation_names,
            "prompt_id": self._prompt.id,
            "prompt": self._prompt.text,
            "prompt_embedding": self.lm.prompt_embedding(self._prompt.text),
            "scenario": getattr(self._snapshot, "source", ""),
            **step_info(step, self.timing),
            **extra,
        }

    def _measure(self, plan: PruningPlan, action: int = -1, action_name: str | None = None) -> Measurement:
        """Measure ``plan`` on the current prompt under the observed load and reward it (the env does not advance).

        The one place a step reads its baseline and scales times by the load.
        """
        prompt, snap = self._prompt, self._snapshot
        base = self.evaluator.baseline(prompt)
        cpu = snap.cpu_util if self.telemetry_mode == "live" else None
        ev = self.evaluator.evaluate(prompt, plan, self.timing, cpu_util=cpu, baseline=base)
        # A loaded machine slows the full model and the plan alike: the speed-up stands, the times scale.
        load, full = float(self.monitor.latency_factor), ev.full_latency_s
        full_s, pruned_s = full * load, ev.latency_s * load
        # The budget is relative to the full model under the same load: what it asks of pruning is budget_rel
        # alone (a speed-up of 1 / budget_rel - 1), which the agent observes. (Relative to the unloaded full
        # model, under busy_cpu (x1.6) no plan of the table met any budget of the default range.)
        budget_s = full_s * self._budget_rel if self._budget_rel is not None else None
        fed = len(base.prompt_ids) + max(0, len(base.answer_ids) - 1)  # tokens the KV cache holds at its peak
        outcome = Outcome(
            speedup=ev.speedup,
            baseline_ppl=base.ppl,
            pruned_ppl=ev.ppl,
            prefix_fidelity=ev.prefix_fidelity,  # the same in every timing (see Evaluation)
            task_score=ev.task_score,
            kept_fraction=ev.kept_fraction,
            latency_s=pruned_s,
            budget_s=budget_s,
            kv_fraction=fraction_held(plan.kv, fed),
            mem_available_frac=getattr(snap, "mem_available_frac", None),
        )
        reward, terminated = self.reward_fn(outcome)
        memory = memory_term(outcome, self.kv_memory_weight)  # the KV memory the plan needs, under memory pressure
        return Measurement(
            episode=self._episode,
            step=self._step_in_episode,
            observation=tuple(float(x) for x in self._obs),
            prompt=prompt,
            action=action,
            action_name=action_name or (self.action_names[action] if action >= 0 else plan.describe()),
            plan=plan,
            healing=self.lm.healing_label(plan),
            baseline=base,
            evaluation=ev,
            load_factor=load,
            baseline_latency_s=full_s,
            pruned_latency_s=pruned_s,
            baseline_tokens_per_s=len(base.answer_ids) / full / load,
            pruned_tokens_per_s=ev.tokens_per_s / load,
            outcome=outcome,
            reward=float(reward + memory),
            terminated=bool(terminated),
            memory_term=memory,
        )

    def action_rewards(self) -> np.ndarray:
        """Reward of every action on the current prompt and state, without stepping (for the oracle)."""
        return np.array([self._measure(self.plan(a), a).reward for a in range(self.action_space.n)], dtype=np.float64)

    def record_plan(self, plan: PruningPlan, action: int = -1, action_name: str | None = None) -> StepRecord:
        """Measure any plan on the current prompt and state, without stepping (exploration over layer sets).

        ``action`` is the table id when the plan is a table entry, else -1.
        """
        self.lm.validate(plan)
        return self._measure(plan, action, action_name).record

    def action_records(self) -> list[StepRecord]:
        """The record of every action on the current prompt and state, without stepping (sweeps, oracle).

        In live timing every action's plan is timed beside the full model (forward passes
        interleaved), so every ratio of the sweep compares two timings taken under one load.
        """
        return [self._measure(self.plan(a), a).record for a in range(self.action_space.n)]

    # ---------------------------------------------------------------- gym API
    @property
    def current_prompt(self) -> Prompt:
        """The prompt of the last returned observation: the one the next ``step`` measures (read-only)."""
        return self._prompt

    @property
    def prompt_ids(self) -> tuple[str, ...]:
        """The ids of the env's prompts, in order: what ``reset(options={"prompt_id": ...})`` accepts
        (as ``DynPruneTable-v0.prompt_ids``)."""
        return tuple(p.id for p in self.prompts)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):  # noqa: ANN201
        """Start an episode: new load scenario, latency budget and prompt.

        ``options={"prompt_id": id}`` starts it on that prompt of ``env.unwrapped.prompts`` instead of a
        drawn one (no prompt is drawn: the random stream and the ``sequential`` cursor stay where they
        were); the episode's later prompts are drawn as usual.
        """
        start = requested_prompt(options, self.prompt_ids, type(self).__name__, self.split)  # fails before any change
        super().reset(seed=seed)
        self._begin_episode(seed)
        self._prompt = self._next_prompt() if start is None else self.prompts[start]
        return self._observe(), self._info()

    def step(self, action: Any):  # noqa: ANN201
        """Apply the action's plan to the current prompt, measure, reward, restore."""
        if not self.action_space.contains(action):
            try:
                ok = int(action) == action and self.action_space.contains(int(action))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ValueError(f"action {action!r} is not in {self.action_space} (ids 0..{self.action_space.n - 1})")
        return self._step(int(action))

    def _step(
        self, action: int, plan: PruningPlan | None = None, action_name: str | None = None, **extra_info: Any
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Measure ``action`` (or ``plan``), go on to the next prompt, return ``step``'s five values (subclasses too).

        ``extra_info``: a subclass's info keys for this step.
        """
        m = self._measure(self.plan(action) if plan is None else plan, action, action_name)
        self._recent.append(m.record)
        self._step_in_episode += 1
        terminated = m.terminated or self._step_in_episode >= self.prompts_per_episode
        if not terminated:  # the next prompt's observation; the info below describes it too
            self._prompt = self._next_prompt()
            self._observe()
        return self._obs, m.reward, terminated, False, self._info(m, **extra_info)

    def render(self) -> str | np.ndarray | None:
        """``"ansi"``: one line on the last step; ``"rgb_array"``: speed-up vs quality of the recent steps."""
        if self.render_mode == "ansi":
            return render_line(self._recent[-1] if self._recent else None, self._episode)
        if self.render_mode == "rgb_array":
            return render_steps_image(list(self._recent))
        return None
