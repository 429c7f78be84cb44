"""The held-out evaluation protocol: every table action measured once per prompt, every agent scored on those.

One protocol for ``dynprune test`` (:func:`evaluate_run`), ``benchmarks/offline_rl.py`` and
``benchmarks/pareto.py``:

1. the held-out env (usually ``timing="live"``) is reset on each of its prompts in turn
   (``reset(options={"prompt_id": ...})``), the first reset seeded with ``seed + 1``;
2. on each prompt, every action of the table is measured once (``action_records``: the full
   model is retimed first, so every ratio is against a fresh baseline), and any extra plans
   (pareto's static layer-removal plans) on the same prompt and state;
3. every agent acts on the same observation (its decision time is clocked) and is scored by the
   record of the action it picked; the oracle picks the best reward in hindsight.

So all agents are compared on the same measurements, prompt by prompt. :func:`hull` is the upper
concave envelope of static points (what any per-prompt mixture of static plans reaches).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dynprune.types import StepRecord

if TYPE_CHECKING:
    from envs.run_config import RunConfig

ORACLE = "oracle"
"""Name of the hindsight pick: the action of the best measured reward on each prompt."""


@dataclass(frozen=True)
class PromptMeasurement:
    """One held-out prompt: what every agent saw, every action's record, and each agent's pick.

    Attributes:
        index: Position of the prompt in the evaluation (the records' ``episode``).
        prompt_id: Id of the prompt.
        observation: The observation every agent acted on.
        table: One record per table action (action id = index), measured once.
        plans: Records of the extra plans, by name, measured on the same prompt and state.
        full_latency_s: The full model's latency on this prompt (the baseline the ratios use).
        picks: Action id picked by each agent, and by :data:`ORACLE`.
        act_s: Seconds each agent took to decide (0 for the oracle).
    """

    index: int
    prompt_id: str
    observation: tuple[float, ...]
    table: tuple[StepRecord, ...]
    plans: Mapping[str, StepRecord] = field(default_factory=dict)
    full_latency_s: float = 0.0
    picks: Mapping[str, int] = field(default_factory=dict)
    act_s: Mapping[str, float] = field(default_factory=dict)

    @property
    def rewards(self) -> list[float]:
        """Reward of every table action."""
        return [r.reward for r in self.table]

    def record(self, agent: str) -> StepRecord:
        """The table record of ``agent``'s pick, labelled with the agent, this prompt's index and step 0."""
        return replace(self.table[self.picks[agent]], agent=agent, episode=self.index, step=0)


def measure_held_out(
    env: Any,
    agents: Mapping[str, Any],
    seed: int,
    *,
    plans: Mapping[str, Any] | None = None,
    on_prompt: Callable[[PromptMeasurement, float], None] | None = None,
) -> list[PromptMeasurement]:
    """Run the protocol on every prompt of the held-out ``env``, in the order of ``env.unwrapped.prompts``.

    Each prompt gets its own reset, ``reset(options={"prompt_id": ...})``; the first one is seeded and the
    others go on from it, so the load scenarios and budgets are those of a ``sequential=True`` env visiting
    its prompts in order (a reset that names its prompt draws none).

    Args:
        env: A DynPrune-v0 env (wrapped or not); ``RunConfig.make_env("test")`` builds the held-out one.
        agents: Agents by name (``act(obs, info) -> int``); called once per prompt, in this order.
        seed: The run's seed; the first reset uses ``seed + 1`` (the train env's draws use ``seed``).
        plans: Extra ``PruningPlan``s by name, measured on each prompt after the table.
        on_prompt: Called after each prompt with its measurement and the seconds it took (progress).

    Returns:
        One :class:`PromptMeasurement` per prompt, in the env's order.
    """
    core = env.unwrapped
    if ORACLE in agents:
        raise ValueError(f"an agent is named {ORACLE!r}, the name of the hindsight pick; rename it")
    out: list[PromptMeasurement] = []
    for i, prompt in enumerate(core.prompts):
        t0 = time.perf_counter()
        # the reset computes the prompt's full-model baseline
        obs, info = env.reset(seed=seed + 1 if i == 0 else None, options={"prompt_id": prompt.id})
        table = tuple(core.action_records())
        full_s = float(core.evaluator.baseline(core.current_prompt).latency_s)
        extra = {name: core.record_plan(plan) for name, plan in (plans or {}).items()}
        picks: dict[str, int] = {}
        act_s: dict[str, float] = {}
        for name, agent in agents.items():
            t = time.perf_counter()
            picks[name] = int(agent.act(obs, info))
            act_s[name] = time.perf_counter() - t
        picks[ORACLE], act_s[ORACLE] = int(np.argmax([r.reward for r in table])), 0.0
        m = PromptMeasurement(index=i, prompt_id=str(info["prompt_id"]), observation=tuple(float(x) for x in obs),
                              table=table, plans=extra, full_latency_s=full_s, picks=picks, act_s=act_s)
        out.append(m)
        if on_prompt is not None:
            on_prompt(m, time.perf_counter() - t0)
    return out


def agent_records(measurements: Sequence[PromptMeasurement]) -> list[StepRecord]:
    """Every agent's (and the oracle's) record on every prompt, prompt by prompt, agents in pick order."""
    return [m.record(name) for m in measurements for name in m.picks]


def hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper concave envelope of static points ``(speed-up, quality)``, from the best-quality point rightwards.

    Choosing between two static plans per prompt (at random, with the right odds) reaches every point
    on the segment between them, so this is what any per-prompt mixture of static plans achieves.
    """
    pts = sorted(set(points))
    upper: list[tuple[float, float]] = []
    for x, y in pts:  # Andrew's monotone chain, upper half
        while len(upper) >= 2:
            (x1, y1), (x2, y2) = upper[-2], upper[-1]
            if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= 0:  # the middle point is not above the chord
                upper.pop()
            else:
                break
        upper.append((x, y))
    top = max(range(len(upper)), key=lambda i: (upper[i][1], -upper[i][0]))
    return upper[top:]


def hull_quality(h: Sequence[tuple[float, float]], speedup: float) -> float | None:
    """Quality of the best static mixture at ``speedup`` on hull ``h`` (None beyond the fastest static point)."""
    if speedup <= h[0][0]:
        return h[0][1]
    for (x1, y1), (x2, y2) in zip(h, h[1:], strict=False):
        if x1 <= speedup <= x2:
            return y1 + (y2 - y1) * (speedup - x1) / (x2 - x1)
    return None


def evaluate_run(run_dir: Path, cfg: RunConfig, lm: Any = None, progress: bool = True) -> dict[str, Any]:
    """Evaluate a run directory's trained agent (``agent.zip``) and the baselines (random, none, every static
    action) on the held-out prompts of ``cfg`` by :func:`measure_held_out`; write ``test/<agent>.jsonl`` (as
    each prompt is measured) and ``test/summary.json``; print the summary table and return it.

    ``dynprune test`` and ``main`` (online runs) and ``dynprune offline --test`` call it."""
    from agents.base import load_agent
    from agents.baselines import RandomAgent, StaticAgent
    from dynprune.fileio import atomic_write_json
    from dynprune.progress import Progress
    from dynprune.records import append_record, summarise
    from dynprune.report import format_table

    name = cfg.extra["agent"]
    env = cfg.make_env("test", lm=lm)
    core = env.unwrapped
    trained = load_agent(run_dir / "agent.zip", env=env)
    agents: dict[str, Any] = {name: trained, "random": RandomAgent(core.action_space.n, seed=cfg.seed)}
    for a, action_name in enumerate(core.action_names):
        agents["none" if a == 0 else f"static-{action_name}"] = StaticAgent(a, core.action_space.n)
    out_dir = run_dir / "test"
    # the files an earlier evaluation wrote, not the folder: anything else a user put there stays
    for old in [*out_dir.glob("*.jsonl"), out_dir / "summary.json"]:
        old.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = Progress(len(core.prompts), "test", "prompts", value_name=f"{name} reward", enabled=progress)

    def write(m: Any, _seconds: float) -> None:  # as each prompt is measured: a killed test keeps its prompts
        for agent in m.picks:
            append_record(out_dir / f"{agent}.jsonl", asdict(m.record(agent)))
        bar.update(1, m.table[m.picks[name]].reward)

    measurements = measure_held_out(env, agents, cfg.seed, on_prompt=write)
    bar.close()
    summary = summarise(agent_records(measurements), by="agent")
    atomic_write_json(out_dir / "summary.json", summary)
    print(format_table(summary))
    return summary
