"""Export logged exploration to a Minari dataset, and read one into d3rlpy.

`Minari <https://minari.farama.org>`_ is Farama's standard format for offline RL data (the
Gymnasium team's D4RL successor); TorchRL, AgileRL and d3rlpy read it. The export follows
:func:`offline_data.dataset.to_mdp_dataset`: every row with a table action (``action >= 0``)
is one one-step episode of DynPrune-v0 (observation, action, reward, terminated). Minari stores
``T + 1`` observations per episode; a DynPrune-v0 episode ends after its only step, so the final
observation repeats the first (nothing is bootstrapped from a terminal state).

The dataset stores the env it came from (:func:`logged_env_spec`): ``DynPrune-v0`` with the
logged env arguments (model, reward, prompts, timing, profile, budget range, ...) and
``max_episode_steps=1``, so ``minari.load_dataset(ID).recover_environment()`` builds the env
the rows were measured on. The export itself builds no env and loads no model.

d3rlpy's own reader, ``d3rlpy.datasets.get_minari`` (2.8.1), concatenates each episode's
observations as Minari stores them, ``T + 1`` per episode beside ``T`` actions, so from the
second episode on observation ``i`` is not the one action ``i`` was taken on (here it would
pair every other row's observation with the wrong action). No dataset in Minari's format can
avoid that, so :func:`to_d3rlpy` reads a Minari dataset into a d3rlpy ``MDPDataset`` with each
episode's final observation left out.

The dataset is built in a temporary folder under the Minari root and renamed into place, so
an interrupted export leaves no half-written dataset; an existing dataset is kept unless
``force``. The root is Minari's own (``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``).

Example:
    >>> to_minari("logs/sweep", "dynprune/smollm2-sweep-v0")  # doctest: +SKIP
    >>> import minari; env = minari.load_dataset("dynprune/smollm2-sweep-v0").recover_environment()  # doctest: +SKIP
    >>> mdp = to_d3rlpy("dynprune/smollm2-sweep-v0")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from offline_data.dataset import load_logs, read_meta

__all__ = ["DATASET_ID", "episodes_summary", "logged_env_spec", "minari_root", "to_d3rlpy", "to_minari"]

# Minari's id grammar: (namespace/)(env_name/)dataset_name(-v<version>)
DATASET_ID = re.compile(r"^([A-Za-z0-9_.-]+/){0,2}[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*-v\d+$")

#: Env arguments that must be names for a JSON env spec to rebuild the env.
_NAMED_ARGS = ("model", "reward", "prompts")


def minari_root() -> Path:
    """Where Minari keeps datasets: ``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def logged_env_spec(meta: dict[str, Any]) -> Any:
    """The ``EnvSpec`` of the env a log directory was explored on (``read_meta(log_dir)``).

    ``DynPrune-v0`` with the logged env arguments as its kwargs and ``max_episode_steps=1``
    (every logged row is a one-step episode). ``gym.make(spec)`` builds that env; the spec
    itself loads nothing.

    Raises:
        ValueError: the logs name no env settings, or the model, reward or prompt source was
            an object rather than a name (a JSON spec cannot rebuild it).
    """
    import gymnasium as gym

    import envs  # noqa: F401 - registers DynPrune-v0

    kwargs = dict((meta.get("settings") or {}).get("env") or {})
    if "model" not in kwargs:
        raise ValueError(f"the logs name no env settings (settings: {meta.get('settings')}); explore them again")
    for key in _NAMED_ARGS:
        if key in kwargs and not isinstance(kwargs[key], str):
            raise ValueError(
                f"the logs' env {key} {kwargs[key]!r} is not a name, so a Minari dataset could not rebuild the env; "
                f"explore with a named {key} (see dynprune.models / dynprune.rewards / dynprune.tasks)"
            )
    # explore steps its env in order; an agent on the recovered env sees prompts at random, as in training
    kwargs.pop("sequential", None)
    base = gym.spec("DynPrune-v0")
    return dataclasses.replace(base, kwargs={**base.kwargs, **kwargs}, max_episode_steps=1)


def to_minari(
    log_dir: str | os.PathLike[str],
    dataset_id: str,
    *,
    force: bool = False,
    author: str | None = None,
) -> Path:
    """Write the table-action rows of a log directory as the Minari dataset ``dataset_id``.

    Args:
        log_dir: A folder written by ``dynprune explore`` (a sweep gives every action).
        dataset_id: Minari id, e.g. ``"dynprune/smollm2-sweep-v0"`` (must end in ``-v<N>``).
        force: Replace an existing dataset of that id.
        author: Stored in the dataset's metadata.

    Returns:
        The dataset's folder.

    Raises:
        ValueError: a malformed id, an existing dataset without ``force``, logs without a table
            action, or logs whose env cannot be named in a spec (:func:`logged_env_spec`).
    """
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    if not DATASET_ID.match(dataset_id):
        raise ValueError(
            f"dataset_id must look like 'namespace/name-v0' (Minari's (namespace/)name-v<N>), got {dataset_id!r}"
        )
    root = minari_root()
    final = root / dataset_id
    if final.exists() and not force:
        raise ValueError(f"Minari dataset {dataset_id!r} already exists at {final}; pass force=True (--force)")
    meta = read_meta(log_dir)
    spec = logged_env_spec(meta)
    settings = meta.get("settings", {})
    if settings.get("explore", {}).get("adapters"):
        warnings.warn(
            f"{log_dir} was explored with adapters ({settings['explore']['adapters']}); DynPrune-v0 takes no adapters "
            "argument, so recover_environment() builds the env without them (pruned layers are skipped)",
            UserWarning,
            stacklevel=2,
        )
    ds = load_logs(log_dir)
    n_actions = int(meta["n_actions"])
    rows = [r for r in ds.to_list() if r["action"] >= 0]
    if not rows:
        raise ValueError(f"{log_dir} has no row with a table action (action >= 0); a sweep logs every action")
    bad = sorted({r["action"] for r in rows if r["action"] >= n_actions})
    if bad:
        raise ValueError(f"{log_dir}: actions {bad} are outside the logged table of {n_actions} actions")
    dim = len(rows[0]["observation"])
    if dim != len(meta["observation_names"]):
        raise ValueError(f"{log_dir}: observations have {dim} values, the logs name {len(meta['observation_names'])}")
    obs_space = gym.spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
    act_space = gym.spaces.Discrete(n_actions)
    buffers = []
    for i, r in enumerate(rows):
        obs = np.asarray(r["observation"], dtype=np.float32)
        buffers.append(EpisodeBuffer(
            id=i,
            observations=np.stack([obs, obs]),  # T + 1 observations: the terminal one repeats (never used)
            actions=np.array([r["action"]], dtype=np.int64),
            rewards=[float(r["reward"])],
            terminations=[True],
            truncations=[False],
            infos={},
        ))
    strategy = settings.get("explore", {}).get("strategy", "?")
    description = (
        f"DynPrune-v0 one-step episodes logged by dynprune explore ({strategy}) on {meta.get('model_id')}: "
        f"observation fields {meta.get('observation_names')}, actions {meta.get('action_names')}. "
        f"Settings: {json.dumps(settings, sort_keys=True)}"
    )
    metadata: dict[str, Any] = {
        "dataset_id": dataset_id,
        "algorithm_name": f"dynprune explore --strategy {strategy}",
        "description": description,
        "minari_version": minari.__version__,
        # evaluate on the env the data came from; recover_environment() needs dynprune installed
        "eval_env_spec": spec.to_json(),
        "requirements": ["dynprune"],
    }
    if author is not None:
        metadata["author"] = {author}
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".dynprune-export-", dir=root))
    try:
        data_path = staging / dataset_id / "data"
        data_path.parent.mkdir(parents=True)
        # Minari's storage API, not create_dataset_from_buffers: given an env spec, that one
        # calls gym.make(spec), which loads the model only to read spaces we pass anyway
        storage = MinariStorage.new(
            data_path, observation_space=obs_space, action_space=act_space, env_spec=spec, data_format="arrow"
        )
        storage.update_metadata(metadata)
        storage.update_episodes(buffers)
        if final.exists():  # force: the old dataset goes only once the new one is complete
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / dataset_id, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def to_d3rlpy(dataset: Any) -> Any:
    """A d3rlpy ``MDPDataset`` of a Minari dataset, each observation beside the action taken on it.

    Use this instead of ``d3rlpy.datasets.get_minari``, which pairs observations and actions
    wrongly on every Minari dataset of more than one episode (see the module docstring). Each
    episode contributes its first ``T`` observations, its ``T`` actions and rewards; its last
    step is terminal when Minari says terminated, a timeout when truncated.

    Args:
        dataset: A ``minari.MinariDataset`` or the id of a local one.

    Returns:
        ``d3rlpy.dataset.MDPDataset`` with the dataset's action space (discrete with all its
        actions, whether or not each appears, or continuous).

    Raises:
        ValueError: the dataset has no episodes, or its observations or actions are not flat arrays.
    """
    import d3rlpy
    import gymnasium as gym
    import minari

    data = minari.load_dataset(dataset) if isinstance(dataset, str) else dataset
    observations, actions, rewards, terminals, timeouts = [], [], [], [], []
    for ep in data.iterate_episodes():
        if not isinstance(ep.observations, np.ndarray) or not isinstance(ep.actions, np.ndarray):
            raise ValueError(f"episode {ep.id}: to_d3rlpy reads array observations and actions, not dicts or tuples")
        steps = len(ep.actions)
        # Minari keeps T + 1 observations: the last one follows the last action and is never acted on
        observations.append(ep.observations[:steps])
        actions.append(ep.actions)
        rewards.append(ep.rewards)
        terminals.append(ep.terminations)
        timeouts.append(ep.truncations)
    if not actions:
        raise ValueError(f"Minari dataset {data.id!r} has no episodes")
    space = data.action_space
    if isinstance(space, gym.spaces.Discrete):
        kind, size = d3rlpy.ActionSpace.DISCRETE, int(space.n)
    else:
        kind, size = d3rlpy.ActionSpace.CONTINUOUS, int(np.prod(space.shape))
    return d3rlpy.dataset.MDPDataset(
        observations=np.concatenate(observations),
        actions=np.concatenate(actions),
        rewards=np.concatenate(rewards),
        terminals=np.concatenate(terminals).astype(np.float32),
        timeouts=np.concatenate(timeouts).astype(np.float32),
        action_space=kind,
        action_size=size,
    )


def episodes_summary(dataset_id: str) -> dict[str, Any]:
    """Episodes, steps and mean reward of a stored Minari dataset (a quick check after export)."""
    import minari

    data = minari.load_dataset(dataset_id)
    rewards = [float(ep.rewards.sum()) for ep in data.iterate_episodes()]
    return {"episodes": data.total_episodes, "steps": data.total_steps, "mean_reward": float(np.mean(rewards))}
