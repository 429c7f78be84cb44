"""Offline RL on logged exploration data with d3rlpy, and the d3rlpy agent wrapper.

:func:`train_offline` trains one of d3rlpy's discrete-action learners on a d3rlpy
``MDPDataset`` (``offline_data.dataset.to_mdp_dataset``: one-step episodes, one per logged
(prompt, table action)):

| name     | d3rlpy config          | what it learns                                                   |
|----------|------------------------|------------------------------------------------------------------|
| ``cql``  | ``DiscreteCQLConfig``  | Q-values, penalised on actions absent from the data (CQL, 2020)  |
| ``bcq``  | ``DiscreteBCQConfig``  | Q-values, acting only among actions the data takes (BCQ, 2019)   |
| ``ddqn`` | ``DoubleDQNConfig``    | plain Double-DQN Q-values on the fixed data                      |
| ``bc``   | ``DiscreteBCConfig``   | imitation of the logged actions (no reward)                      |

CQL: Kumar et al., "Conservative Q-Learning for Offline RL", NeurIPS 2020; discrete BCQ:
Fujimoto et al., "Benchmarking Batch Deep RL Algorithms", 2019.

Every DynPrune-v0 episode is one step, so each transition is terminal and each Q-target is
the logged reward: the Q-learners regress rewards per (observation, action), CQL and BCQ
keeping the greedy action near the logged ones. Behaviour cloning imitates whatever the
data holds: on a sweep (every action on every prompt) it learns the action mix, not the
best action, so it is a baseline rather than a controller.

:class:`D3rlpyAgent` wraps a trained (or untrained) d3rlpy algorithm as an
:class:`~agents.base.Agent` of kind ``"d3rlpy"``; :func:`agents.load_agent` restores it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agents.base import action_count, find_sidecar, read_sidecar, write_sidecar

__all__ = ["ALGOS", "D3rlpyAgent", "quiet_d3rlpy", "train_offline"]

#: Offline algorithms by short name -> d3rlpy config class name.
ALGOS: dict[str, str] = {
    "cql": "DiscreteCQLConfig",
    "bcq": "DiscreteBCQConfig",
    "ddqn": "DoubleDQNConfig",
    "bc": "DiscreteBCConfig",
}

#: Defaults that :func:`train_offline` passes to every d3rlpy config unless overridden.
#: d3rlpy's own learning rate (6.25e-5, tuned for Atari) is slow for a small bandit dataset.
DEFAULT_CONFIG: dict[str, Any] = {"batch_size": 64, "learning_rate": 3e-4}

#: Name of the d3rlpy file inside an agent's zip.
LEARNABLE_NAME = "learnable.d3"


def quiet_d3rlpy() -> None:
    """Keep d3rlpy's structlog messages (dataset info, parameters, every epoch) to warnings and above."""
    import logging

    import d3rlpy  # noqa: F401 - configures structlog on import; filter after that
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _config_class(algo: str) -> Any:
    """The d3rlpy config class of a short algorithm name."""
    if algo not in ALGOS:
        raise ValueError(f"unknown offline algorithm {algo!r}; expected one of {sorted(ALGOS)}")
    import d3rlpy

    return getattr(d3rlpy.algos, ALGOS[algo])


def _make_algo(algo: str, device: str, **config: Any) -> Any:
    """An unbuilt d3rlpy algorithm with :data:`DEFAULT_CONFIG` under ``config``."""
    cls = _config_class(algo)
    kwargs = {**DEFAULT_CONFIG, **config}
    try:
        return cls(**kwargs).create(device=device)
    except TypeError as err:
        raise ValueError(f"bad {ALGOS[algo]} arguments {sorted(kwargs)}: {err}") from None


def _fit(
    learner: Any,
    dataset: Any,
    n_steps: int,
    n_steps_per_epoch: int | None,
    log_dir: str | os.PathLike[str] | None,
    experiment_name: str,
) -> list[tuple[int, dict[str, float]]]:
    """``learner.fit`` with dynprune's settings: no files unless ``log_dir``, no progress bar."""
    import d3rlpy

    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    info = dataset.dataset_info
    if info.action_space != d3rlpy.ActionSpace.DISCRETE:
        raise ValueError(f"offline agents need a DISCRETE dataset, got {info.action_space.name}")
    # d3rlpy runs n_steps // n_steps_per_epoch epochs: an epoch longer than n_steps would train nothing
    per_epoch = min(n_steps, n_steps_per_epoch or 1_000)
    if log_dir is None:
        adapter: Any = d3rlpy.logging.NoopAdapterFactory()
    else:
        adapter = d3rlpy.logging.FileAdapterFactory(root_dir=str(log_dir))
    return learner.fit(
        dataset,
        n_steps=n_steps,
        n_steps_per_epoch=per_epoch,
        experiment_name=experiment_name,
        with_timestamp=False,
        logger_adapter=adapter,
        show_progress=False,
        # parameters are saved by agent.save, not every epoch
        save_interval=10**9,
    )


class D3rlpyAgent:
    """A d3rlpy discrete-action algorithm as an :class:`~agents.base.Agent`.

    :meth:`act` is the algorithm's greedy action (``algo.predict``). :meth:`save` writes a zip
    holding d3rlpy's own file (config + weights, ``algo.save``) and the JSON sidecar;
    :meth:`load` (or :func:`agents.load_agent`) reads it back with ``d3rlpy.load_learnable``.

    Args:
        algo: A built d3rlpy algorithm (trained by ``fit``, or built with ``create_impl``).
        algo_name: Its short name (``"cql"``, ``"bcq"``, ``"ddqn"``, ``"bc"``).
        name: Label for logs and tables; defaults to ``offline-<algo_name>``.

    Example:
        >>> agent = train_offline(to_mdp_dataset(load_logs("logs/sweep"), 10), "cql", n_steps=2_000)  # doctest: +SKIP
        >>> agent.save("runs/cql/agent.zip")  # + runs/cql/agent.zip.agent.json  # doctest: +SKIP
    """

    kind = "d3rlpy"

    def __init__(self, algo: Any, algo_name: str, name: str | None = None) -> None:
        if algo_name not in ALGOS:
            raise ValueError(f"unknown offline algorithm {algo_name!r}; expected one of {sorted(ALGOS)}")
        if algo.impl is None:
            raise ValueError("the d3rlpy algorithm is not built yet: fit it, or call create_impl(obs_shape, n_actions)")
        self.algo = algo
        self.algo_name = algo_name
        self.name = name if name is not None else f"offline-{algo_name}"
        #: d3rlpy's per-epoch ``(epoch, metrics)`` of every :meth:`fit` so far.
        self.train_metrics: list[tuple[int, dict[str, float]]] = []

    @property
    def n_actions(self) -> int:
        """Size of the discrete action space."""
        return int(self.algo.action_size)

    @classmethod
    def from_env(
        cls, env: gym.Env | None, algo: str = "cql", device: str = "cpu:0", seed: int | None = None, **config: Any
    ) -> D3rlpyAgent:
        """An untrained agent sized for ``env``; train it with :meth:`fit`.

        Args:
            env: Supplies the observation shape and the (Discrete) action count.
            algo: ``"cql"``, ``"bcq"``, ``"ddqn"`` or ``"bc"``.
            device: Torch device of the networks (``"cpu:0"``, ``"cuda:0"``).
            seed: Seeds d3rlpy (Python, NumPy and torch global generators) before building.
            **config: d3rlpy config arguments over :data:`DEFAULT_CONFIG`.
        """
        n = action_count(env)
        if env is None or n is None:
            raise ValueError("a d3rlpy agent needs an env (observation shape, action count), got None")
        if seed is not None:
            import d3rlpy

            d3rlpy.seed(int(seed))
        learner = _make_algo(algo, device, **config)
        learner.create_impl(tuple(env.observation_space.shape), n)
        return cls(learner, algo)

    def fit(self, dataset: Any, n_steps: int, n_steps_per_epoch: int | None = None,
            log_dir: str | os.PathLike[str] | None = None) -> list[tuple[int, dict[str, float]]]:
        """Train (further) on a d3rlpy dataset; returns d3rlpy's per-epoch ``(epoch, metrics)``.

        ``log_dir`` receives d3rlpy's CSV logs; without it nothing is written to disk
        (d3rlpy's default would be ``./d3rlpy_logs`` in the working directory).
        """
        if int(dataset.dataset_info.action_size) != self.n_actions:
            raise ValueError(
                f"dataset has {dataset.dataset_info.action_size} actions, the agent {self.n_actions}"
            )
        metrics = _fit(self.algo, dataset, n_steps, n_steps_per_epoch, log_dir, self.name)
        self.train_metrics.extend(metrics)
        return metrics

    def act(self, obs: np.ndarray, info: dict[str, Any] | None = None) -> int:
        """The greedy action for one observation; ``info`` is ignored."""
        x = np.asarray(obs, dtype=np.float32).reshape(1, -1)
        return int(np.asarray(self.algo.predict(x)).reshape(-1)[0])

    def save(self, path: str | Path) -> None:
        """Write ``<path>.zip`` (``path`` itself when it ends in ``.zip``) and ``<path>.agent.json``.

        The zip holds d3rlpy's file (``algo.save``: serialised config and weights); it is
        written to a temporary name and renamed, so a crash never leaves half an agent.
        """
        path = Path(path)
        zip_path = path if path.suffix == ".zip" else path.with_name(path.name + ".zip")
        zip_path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=".d3rlpy-", dir=zip_path.parent))
        try:
            learnable = tmp_dir / LEARNABLE_NAME
            self.algo.save(str(learnable))
            tmp_zip = tmp_dir / zip_path.name
            with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.write(learnable, LEARNABLE_NAME)
            os.replace(tmp_zip, zip_path)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        import d3rlpy

        write_sidecar(
            path,
            self.kind,
            {"algo": self.algo_name, "model_file": zip_path.name, "name": self.name, "d3rlpy": d3rlpy.__version__},
        )

    @classmethod
    def load(cls, path: str | Path, env: gym.Env | None = None, device: str = "cpu:0") -> D3rlpyAgent:
        """Restore an agent saved at ``path`` onto ``device``; ``env`` (optional) is checked against it."""
        import d3rlpy

        kind, kwargs = read_sidecar(path)
        if kind != cls.kind:
            raise ValueError(f"sidecar of {path!s} holds a {kind!r} agent, expected {cls.kind!r}")
        zip_path = find_sidecar(path).parent / kwargs["model_file"]
        with tempfile.TemporaryDirectory(prefix="d3rlpy-load-") as tmp:
            with zipfile.ZipFile(zip_path) as zf:
                if LEARNABLE_NAME not in zf.namelist():
                    raise ValueError(f"{zip_path} has no {LEARNABLE_NAME}; not a saved d3rlpy agent")
                zf.extract(LEARNABLE_NAME, tmp)
            learner = d3rlpy.load_learnable(str(Path(tmp) / LEARNABLE_NAME), device=device)
        agent = cls(learner, kwargs["algo"], name=kwargs.get("name"))
        n = action_count(env)
        if n is not None and n != agent.n_actions:
            raise ValueError(f"agent {zip_path} has {agent.n_actions} actions, the env {n}")
        return agent


def train_offline(
    mdp_dataset: Any,
    algo: str,
    n_steps: int = 10_000,
    seed: int = 0,
    device: str = "cpu:0",
    n_steps_per_epoch: int | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
    **config: Any,
) -> D3rlpyAgent:
    """Train a d3rlpy discrete-action learner on logged data.

    Args:
        mdp_dataset: A d3rlpy ``MDPDataset`` with a DISCRETE action space
            (``offline_data.dataset.to_mdp_dataset``).
        algo: ``"cql"``, ``"bcq"``, ``"ddqn"`` or ``"bc"`` (see :data:`ALGOS`).
        n_steps: Gradient steps.
        seed: Seeds d3rlpy (network init and batch sampling use the global generators).
        device: Torch device, d3rlpy style (``"cpu:0"``, ``"cuda:0"``).
        n_steps_per_epoch: Steps per logged epoch (default ``min(n_steps, 1000)``).
        log_dir: Folder for d3rlpy's CSV logs; ``None`` writes nothing.
        name: Agent label (default ``offline-<algo>``).
        **config: d3rlpy config arguments over :data:`DEFAULT_CONFIG` (``alpha=`` for CQL,
            ``action_flexibility=`` for BCQ, ``learning_rate=``, ``batch_size=`` ...).

    Returns:
        The trained agent; ``agent.train_metrics`` holds d3rlpy's per-epoch metrics.

    Raises:
        ValueError: an unknown algorithm or config argument, or a dataset that is not discrete.
    """
    import d3rlpy

    _config_class(algo)  # unknown names fail before any work
    d3rlpy.seed(int(seed))
    learner = _make_algo(algo, device, **config)
    label = name if name is not None else f"offline-{algo}"
    # fit builds the networks from the dataset's shapes (observation size, action_size)
    metrics = _fit(learner, mdp_dataset, n_steps, n_steps_per_epoch, log_dir, label)
    agent = D3rlpyAgent(learner, algo, name=label)
    agent.train_metrics = list(metrics)
    return agent
