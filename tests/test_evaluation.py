"""agents.evaluation: every action measured once per held-out prompt, every agent and the oracle scored on
those measurements, and the static mixture hull."""

from __future__ import annotations

import dataclasses

import pytest

from agents.baselines import RandomAgent, StaticAgent
from agents.evaluation import ORACLE, agent_records, hull, hull_quality, measure_held_out
from envs.run_config import RunConfig


@pytest.fixture(scope="module")
def held_out(tiny_lm):
    cfg = RunConfig(model="tiny-llama", reward="proxy", test_timing="profiled", max_new_tokens=3, profile_tokens=2,
                    profile_repeats=1, test_prompts=3, seed=5)
    env = cfg.make_env("test", lm=tiny_lm)
    yield env, cfg
    env.close()


def test_every_agent_is_scored_on_the_same_measurements(held_out):
    env, cfg = held_out
    core = env.unwrapped
    n = core.action_space.n
    agents = {"random": RandomAgent(n, seed=0), "none": StaticAgent(0, n), "last": StaticAgent(n - 1, n)}
    seen = []
    ms = measure_held_out(env, agents, cfg.seed, plans={"again-none": core.plan(0)},
                          on_prompt=lambda m, s: seen.append((m.index, s >= 0)))
    assert [m.prompt_id for m in ms] == [p.id for p in core.prompts]  # every held-out prompt once, in order
    assert seen == [(i, True) for i in range(len(ms))]
    for m in ms:
        assert len(m.table) == n and [r.action for r in m.table] == list(range(n))
        assert m.picks["none"] == 0 and m.picks["last"] == n - 1
        assert m.table[m.picks[ORACLE]].reward == max(m.rewards)  # the oracle: best reward in hindsight
        assert set(m.act_s) == {*agents, ORACLE} and m.act_s[ORACLE] == 0.0
        assert m.plans["again-none"].prompt_id == m.prompt_id and m.full_latency_s > 0
        for name, action in m.picks.items():  # an agent's record is the table's record of its pick
            rec = m.record(name)
            assert rec.agent == name and rec.episode == m.index and rec.step == 0
            assert dataclasses.replace(rec, agent=m.table[action].agent, episode=m.table[action].episode,
                                       step=m.table[action].step) == m.table[action]
    records = agent_records(ms)
    assert len(records) == len(ms) * (len(agents) + 1)
    assert [r.agent for r in records[: len(agents) + 1]] == [*agents, ORACLE]


def test_an_agent_named_oracle_is_refused(held_out):
    env, cfg = held_out
    with pytest.raises(ValueError, match="'oracle'"):
        measure_held_out(env, {ORACLE: StaticAgent(0, env.unwrapped.action_space.n)}, cfg.seed)


def test_hull_is_the_best_mixture_of_static_points():
    h = hull([(0.0, 1.0), (0.1, 0.3), (0.2, 0.5), (0.3, 0.0), (-0.05, 0.2)])
    # (0.1, 0.3) lies under the chord from (0, 1) to (0.2, 0.5); the slower, worse point is left out
    assert h == [(0.0, 1.0), (0.2, 0.5), (0.3, 0.0)]
    assert hull_quality(h, 0.1) == pytest.approx(0.75)
    assert hull_quality(h, -0.1) == 1.0 and hull_quality(h, 0.31) is None


def test_each_prompt_is_named_at_its_reset_so_an_env_that_draws_prompts_gives_the_same_walk(held_out, tiny_lm):
    # measure_held_out resets on every prompt by id: an env that would draw its prompts at random visits the
    # same prompts in the same order, with the same observations (load and budget draws), as the sequential one
    _, cfg = held_out
    cfg = dataclasses.replace(cfg, reward="latency_budget")
    walks = []
    for sequential in (True, False):
        env = cfg.make_env("test", lm=tiny_lm, sequential=sequential)
        n = env.unwrapped.action_space.n
        ms = measure_held_out(env, {"none": StaticAgent(0, n)}, cfg.seed)
        walks.append([(m.prompt_id, m.observation) for m in ms])
        assert [m.prompt_id for m in ms] == [p.id for p in env.unwrapped.prompts]
        env.close()
    assert walks[0] == walks[1]
    assert len({obs for _, obs in walks[0]}) == len(walks[0])  # the budgets differ from prompt to prompt
