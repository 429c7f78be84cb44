"""The settings of a run on DynPrune-v0: one typed object, its ``config.json``, its env kwargs and its CLI flags.

``dynprune train / test / main``, ``dynprune explore / offline`` and the benchmarks build their
envs from a :class:`RunConfig`; ``config.json`` of a run directory is :meth:`RunConfig.to_json`
(flat keys: the env settings below, then the command's own settings such as ``agent`` or
``episodes``, kept in :attr:`RunConfig.extra`). :meth:`RunConfig.from_json` also reads the
``config.json`` of runs written before this module (the same flat keys, some missing).

Importing this module is cheap (no torch): the CLIs declare their flags with it.

::

    cfg = RunConfig(model="tiny-llama", reward="proxy", test_prompts=4)
    env = cfg.make_env("test")                      # gym.make("DynPrune-v0", **cfg.env_kwargs("test"), ...)
    RunConfig.from_json(cfg.to_json()) == cfg       # True
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

TELEMETRIES = ("scenario", "live", "replay")
"""Telemetry modes of DynPrune-v0 (``dynprune.telemetry.make_monitor``)."""
SPLITS = ("train", "test")
"""The prompt splits a run builds envs on."""


def seeded_subset(items: Sequence[T], k: int | None, seed: int) -> list[T]:
    """``k`` items drawn without replacement, kept in their original order; all of them when ``k`` is None
    or ``k >= len(items)``.

    The one rule of ``--train-prompts`` / ``--test-prompts`` (and the benchmarks' prompt subsets): the
    same seed picks the same items.
    """
    import numpy as np

    if k is None or k >= len(items):
        return list(items)
    idx = sorted(np.random.default_rng(seed).choice(len(items), size=k, replace=False).tolist())
    return [items[i] for i in idx]


def _timings() -> tuple[str, ...]:
    from dynprune.runtime import TIMINGS  # heavy (torch): only when a config is built

    return TIMINGS


@dataclass(frozen=True)
class RunConfig:
    """Settings of the envs of a run (train and held-out), the prompt subsets and the seed.

    Args:
        model: Model spec (``dynprune.models``), e.g. ``"smollm2-135m"`` or ``"tiny-llama"``.
        reward: Reward name (``dynprune.rewards``).
        timing: Timing of the train env: ``modelled``, ``live`` or ``profiled``.
        test_timing: Timing of the held-out env.
        max_new_tokens: Answer length limit of the full and the pruned model.
        telemetry: ``scenario``, ``live`` or ``replay``.
        scenario: Load scenario(s) of ``telemetry="scenario"`` (None: the env's default, mixed).
        device: Device of the model (``load_model``).
        profile_tokens: Tokens per latency-profile timing run.
        profile_repeats: Interleaved full/pruned runs per latency-profile measurement.
        prompt_embedding: N > 0 appends N projected prompt-embedding coordinates to the observation.
        budget_range: ``latency_budget``: budget / full latency drawn from this range (None: the env's).
        healing: Healing folder (``dynprune heal``) the envs attach.
        adapters: Adapters file (``dynprune adapters train``) the envs attach (pruned layers use them).
        prompt_source: Prompt source (``dynprune.tasks``).
        train_prompts: Seeded subset of the train split (None: all).
        test_prompts: Seeded subset of the test split (None: all).
        seed: Seed of the subsets, the agents and the resets.
        extra: The command's own settings (``agent``, ``episodes``, ``algo`` ...), written beside the
            env settings in ``config.json`` and read back as they were.
    """

    model: str = "smollm2-135m"
    reward: str = "casrap"
    timing: str = "modelled"
    test_timing: str = "live"
    max_new_tokens: int = 24
    telemetry: str = "scenario"
    scenario: str | None = None
    device: str = "auto"
    profile_tokens: int = 12
    profile_repeats: int = 2
    prompt_embedding: int = 0
    budget_range: tuple[float, float] | None = None
    healing: str | None = None
    adapters: str | None = None
    prompt_source: str = "dynprune"
    train_prompts: int | None = None
    test_prompts: int | None = None
    seed: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict, compare=True)

    def __post_init__(self) -> None:
        for name in ("model", "reward"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a name (a string), got {getattr(self, name)!r}; "
                                 f"pass --{name} NAME")
        for name in ("timing", "test_timing"):
            if getattr(self, name) not in _timings():
                raise ValueError(f"{name} {getattr(self, name)!r} is not a timing; pass "
                                 f"--{name.replace('_', '-')} one of {_timings()}")
        if self.telemetry not in TELEMETRIES:
            raise ValueError(f"telemetry {self.telemetry!r} is not a telemetry; pass --telemetry one of {TELEMETRIES}")
        if self.scenario is not None and self.telemetry != "scenario":
            raise ValueError(f"scenario {self.scenario!r} is only used with --telemetry scenario, got telemetry "
                             f"{self.telemetry!r}; drop --scenario or pass --telemetry scenario")
        for name in ("max_new_tokens", "profile_tokens", "profile_repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}; "
                                 f"pass --{name.replace('_', '-')} N with N >= 1")
        if not isinstance(self.prompt_embedding, int) or self.prompt_embedding < 0:
            raise ValueError(f"prompt_embedding must be an integer >= 0, got {self.prompt_embedding!r}; "
                             "pass --prompt-embedding 0 (none) or N > 0")
        for name in ("train_prompts", "test_prompts"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None (all) or an integer >= 1, got {value!r}; "
                                 f"pass --{name.replace('_', '-')} N with N >= 1, or leave it out")
        if self.budget_range is not None:
            try:
                lo, hi = (float(x) for x in self.budget_range)
            except (TypeError, ValueError) as err:
                raise ValueError(f"budget_range must be two numbers LOW HIGH, got {self.budget_range!r}; "
                                 "pass --budget-range 0.8 1.2") from err
            if not 0 < lo <= hi:
                raise ValueError(f"budget_range must satisfy 0 < LOW <= HIGH, got {self.budget_range!r}; "
                                 "pass e.g. --budget-range 0.8 1.2")
            object.__setattr__(self, "budget_range", (lo, hi))  # a JSON list reads back as the same tuple
        if not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}; pass --seed N")
        clash = sorted(set(self.extra) & set(self.field_names()))
        if clash:
            raise ValueError(f"extra settings {clash} are RunConfig fields; pass them as fields, not in extra")
        object.__setattr__(self, "extra", dict(self.extra))

    # ------------------------------------------------------------------ names
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The env/run settings (every field but ``extra``), in ``config.json`` order."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """The ``config.json`` dict: every setting under its own key, then :attr:`extra`'s keys."""
        out: dict[str, Any] = {name: getattr(self, name) for name in self.field_names()}
        if out["budget_range"] is not None:
            out["budget_range"] = list(out["budget_range"])
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunConfig:
        """Read a ``config.json`` dict, also one written before this class (missing keys take the defaults).

        Runs written before ``--scenario`` defaulted to None stored ``"mixed"`` whatever the telemetry,
        which the env refuses beside live/replay telemetry: that is read as None. An empty
        ``budget_range`` (older offline runs) is None.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a run config is a JSON object, got {type(data).__name__}; restore config.json")
        names = set(cls.field_names())
        kwargs = {k: v for k, v in data.items() if k in names}
        if kwargs.get("scenario") == "mixed" and kwargs.get("telemetry", "scenario") != "scenario":
            kwargs["scenario"] = None
        if not kwargs.get("budget_range"):
            kwargs["budget_range"] = None
        return cls(**kwargs, extra={k: v for k, v in data.items() if k not in names})

    @classmethod
    def from_env_settings(cls, env: Mapping[str, Any], **settings: Any) -> RunConfig:
        """The settings of an env recorded as its DynPrune-v0 keyword arguments (the ``settings["env"]`` that
        ``dynprune explore`` writes into every shard), so a held-out env matches the one the data came from:
        DynPrune-v0's defaults for what ``env`` does not name; ``settings`` (the held-out options, the seed,
        ``adapters``, ``extra``) on top."""
        import inspect

        from dynprune.runtime import ProfileConfig
        from envs.dynprune_env import DynPruneEnv

        params = inspect.signature(DynPruneEnv.__init__).parameters
        env = {**{k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}, **env}
        for key in ("model", "reward"):
            if not isinstance(env[key], str):
                raise ValueError(f"the logs' env {key} {env[key]!r} is not a name; dynprune test needs a named {key}")
        profile = env.get("profile") or {}
        defaults = ProfileConfig()  # the env's profile when the logs name none
        source = env["prompts"]
        return cls(**{
            "model": env["model"],
            "reward": env["reward"],
            "timing": env["timing"],
            "max_new_tokens": env["max_new_tokens"],
            "telemetry": env["telemetry"],
            "scenario": env["scenario"],
            "device": env["device"],
            "profile_tokens": profile.get("new_tokens", defaults.new_tokens),
            "profile_repeats": profile.get("repeats", defaults.repeats),
            "prompt_embedding": env.get("prompt_embedding", 0),
            "budget_range": env["budget_range"],  # the held-out env draws budgets as the logs' env did
            "healing": env.get("healing"),  # the held-out env attaches the same healing folder
            "prompt_source": source if isinstance(source, str) else "dynprune",
            "train_prompts": None,
            **settings,
        })

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some settings changed (fields, or keys of :attr:`extra`), validated again."""
        names = set(self.field_names())
        extra = {**self.extra, **{k: v for k, v in changes.items() if k not in names}}
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if k in names}, extra=extra)

    # ------------------------------------------------------------------ envs
    def env_kwargs(self, split: str) -> dict[str, Any]:
        """Keyword arguments of ``gym.make("DynPrune-v0", ...)`` for the ``split`` env (train or test timing).

        The prompt subsets are not here (``make_env`` applies them); settings at their defaults
        that the env would also default are left out, so explore's recorded settings stay as before.
        """
        from dynprune.runtime import ProfileConfig

        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        kwargs: dict[str, Any] = {
            "model": self.model,
            "split": split,
            "reward": self.reward,
            "timing": self.timing if split == "train" else self.test_timing,
            "max_new_tokens": self.max_new_tokens,
            "telemetry": self.telemetry,
            "scenario": self.scenario,
            "device": self.device,
            "profile": ProfileConfig(new_tokens=self.profile_tokens, repeats=self.profile_repeats),
            "prompt_embedding": self.prompt_embedding,
        }
        if self.budget_range is not None:
            kwargs["budget_range"] = tuple(self.budget_range)
        if self.prompt_source != "dynprune":
            kwargs["prompts"] = self.prompt_source
        if self.healing is not None:  # the env attaches it; explore's shards record it
            kwargs["healing"] = self.healing
        if self.adapters is not None:  # the env attaches them before its first plan is built
            kwargs["adapters"] = self.adapters
        return kwargs

    def prompt_limit(self, split: str) -> int | None:
        """The seeded subset size of ``split`` (``train_prompts`` or ``test_prompts``)."""
        return self.train_prompts if split == "train" else self.test_prompts

    def make_env(self, split: str, lm: Any = None, **overrides: Any) -> Any:
        """``gym.make("DynPrune-v0")`` for ``split`` on its seeded prompt subset; the test env visits its
        prompts in order. ``lm``: an already loaded ``PrunableLM`` to use instead of loading ``model``."""
        import gymnasium as gym

        import envs  # noqa: F401 - registers DynPrune-v0
        from dynprune.tasks import load_prompts

        kwargs = self.env_kwargs(split)
        if lm is not None:
            kwargs["model"] = lm
        if split == "test":
            kwargs["sequential"] = True
        limit = self.prompt_limit(split)
        if limit is not None:  # the subset is the env's prompt list: nobody reassigns env.unwrapped.prompts
            kwargs["prompts"] = seeded_subset(load_prompts(kwargs.get("prompts", "dynprune"), split=split),
                                              limit, self.seed)
        return gym.make("DynPrune-v0", **{**kwargs, **overrides})

    # ------------------------------------------------------------------ CLI
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, *, skip: Sequence[str] = (),
                      defaults: Mapping[str, Any] | None = None) -> None:
        """Declare the flags of the settings (``--model`` ... ``--seed``) on ``parser``, but those in ``skip``
        (field names); ``defaults`` overrides some fields' defaults (e.g. ``train_prompts=40``)."""
        base = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.name != "extra"}
        d = {**base, **(defaults or {})}
        timings = ("modelled", "live", "profiled")  # dynprune.runtime.TIMINGS (validated in __post_init__)
        flags: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
            "model": (("--model",), {"help": "model spec (dynprune.models)"}),
            "device": (("--device",), {"help": "device of the model"}),
            "reward": (("--reward",), {"help": "reward (casrap, accuracy_efficiency, latency_budget, proxy)"}),
            "timing": (("--timing",), {"choices": timings, "help": "timing of the train env: modelled (latency "
                                       "model + memoised quality, deterministic), live or profiled"}),
            "test_timing": (("--test-timing",), {"choices": timings, "help": "timing of the held-out env"}),
            "telemetry": (("--telemetry",), {"choices": TELEMETRIES}),
            "scenario": (("--scenario",), {"help": "load scenario(s), --telemetry scenario only (default: mixed)"}),
            "max_new_tokens": (("--max-new-tokens",), {"type": int}),
            "profile_tokens": (("--profile-tokens",), {"type": int, "help": "tokens per latency-profile timing run"}),
            "profile_repeats": (("--profile-repeats",), {"type": int}),
            "prompt_embedding": (("--prompt-embedding",), {
                "type": int, "metavar": "N",
                "help": "append N projected prompt-embedding coordinates to the observation"}),
            "budget_range": (("--budget-range",), {
                "type": float, "nargs": 2, "metavar": ("LOW", "HIGH"),
                "help": "latency_budget reward: budget / full-model latency drawn from this range (default 0.8 1.2)"}),
            "healing": (("--healing",), {
                "help": "healing folder (dynprune heal): its LoRA runs under every pruned plan"}),
            "adapters": (("--adapters",), {
                "help": "adapters file (dynprune adapters train): pruned layers are replaced by their adapter"}),
            "prompt_source": (("--prompt-source",), {"help": "prompt source (see dynprune.tasks)"}),
            "train_prompts": (("--train-prompts",), {"type": int, "help": "random subset of the train split"}),
            "test_prompts": (("--test-prompts",), {"type": int, "help": "random subset of the test split"}),
            "seed": (("--seed",), {"type": int}),
        }
        unknown = sorted(set(skip) - set(flags))
        if unknown:
            raise ValueError(f"skip names {unknown}, which are not RunConfig flags; use some of {sorted(flags)}")
        for name, (names, kw) in flags.items():
            if name not in skip:
                parser.add_argument(*names, dest=name, default=d[name], **kw)

    @classmethod
    def from_args(cls, namespace: argparse.Namespace, **extra: Any) -> RunConfig:
        """The settings parsed by :meth:`add_arguments` (fields a parser skipped keep their defaults);
        ``extra``: the command's own settings to keep in ``config.json``."""
        values = vars(namespace)
        return cls(**{k: values[k] for k in cls.field_names() if k in values}, extra=extra)
