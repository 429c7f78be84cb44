"""Export logged exploration to a Minari dataset, so other offline-RL libraries can read it.

`Minari <https://minari.farama.org>`_ is Farama's standard format for offline RL data (the
Gymnasium team's D4RL successor); TorchRL, AgileRL and d3rlpy read it. The export follows
:func:`offline_data.dataset.to_mdp_dataset`: every row with a table action (``action >= 0``)
is one one-step episode of DynPrune-v0 (observation, action, reward, terminated). Minari stores
``T + 1`` observations per episode; a DynPrune-v0 episode ends after its only step, so the final
observation repeats the first (nothing is bootstrapped from a terminal state).

The dataset is built in a temporary folder under the Minari root and renamed into place, so
an interrupted export leaves no half-written dataset; an existing dataset is kept unless
``force``. The root is Minari's own (``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``).

Example:
    >>> to_minari("logs/sweep", "dynprune/smollm2-sweep-v0")  # doctest: +SKIP
    >>> import minari; minari.load_dataset("dynprune/smollm2-sweep-v0").total_episodes  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from offline_data.dataset import load_logs, read_meta

# Minari's id grammar: (namespace/)(env_name/)dataset_name(-v<version>)
DATASET_ID = re.compile(r"^([A-Za-z0-9_.-]+/){0,2}[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*-v\d+$")


def minari_root() -> Path:
    """Where Minari keeps datasets: ``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


@contextlib.contextmanager
def _datasets_path(path: Path) -> Iterator[None]:
    """Point Minari at ``path`` for the block (it reads the variable on every call)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


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
        ValueError: a malformed id, an existing dataset without ``force``, or logs without a table action.
    """
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    import envs  # noqa: F401 - registers DynPrune-v0 (its spec goes into the dataset)

    if not DATASET_ID.match(dataset_id):
        raise ValueError(
            f"dataset_id must look like 'namespace/name-v0' (Minari's (namespace/)name-v<N>), got {dataset_id!r}"
        )
    root = minari_root()
    final = root / dataset_id
    if final.exists() and not force:
        raise ValueError(f"Minari dataset {dataset_id!r} already exists at {final}; pass force=True (--force)")
    meta = read_meta(log_dir)
    ds = load_logs(log_dir)
    n_actions = int(meta["n_actions"])
    rows = [r for r in ds.to_list() if r["action"] >= 0]
    if not rows:
        raise ValueError(f"{log_dir} has no row with a table action (action >= 0); a sweep logs every action")
    bad = sorted({r["action"] for r in rows if r["action"] >= n_actions})
    if bad:
        raise ValueError(f"{log_dir}: actions {bad} are outside the logged table of {n_actions} actions")
    dim = len(rows[0]["observation"])
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
    settings = meta.get("settings", {})
    description = (
        f"DynPrune-v0 one-step episodes logged by dynprune explore ({settings.get('explore', {}).get('strategy')}) "
        f"on {meta.get('model_id')}: observation fields {meta.get('observation_names')}, actions "
        f"{meta.get('action_names')}. Settings: {json.dumps(settings, sort_keys=True)}"
    )
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".dynprune-export-", dir=root))
    try:
        with _datasets_path(staging), warnings.catch_warnings():
            # no contact e-mail to give; eval env = the collection env (DynPrune-v0, spec below)
            warnings.filterwarnings("ignore", message=r".*(author_email|eval_env).*", category=UserWarning)
            minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=buffers,
                env=gym.spec("DynPrune-v0"),
                action_space=act_space,
                observation_space=obs_space,
                algorithm_name=f"dynprune explore --strategy {settings.get('explore', {}).get('strategy', '?')}",
                author=author,
                description=description,
                data_format="arrow",
            )
        if final.exists():  # force: the old dataset goes only once the new one is complete
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / dataset_id, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def episodes_summary(dataset_id: str) -> dict[str, Any]:
    """Episodes, steps and mean reward of a stored Minari dataset (a quick check after export)."""
    import minari

    data = minari.load_dataset(dataset_id)
    rewards = [float(ep.rewards.sum()) for ep in data.iterate_episodes()]
    return {"episodes": data.total_episodes, "steps": data.total_steps, "mean_reward": float(np.mean(rewards))}
