"""Ray as a backend of ``dynprune explore``: one Ray task per round-robin shard of prompt ids.

Each task runs :func:`offline_data.explore.run_worker` unchanged, so a task writes one shard
per prompt as it goes and skips prompts whose shard exists. That is what makes Ray's retry
safe: when a worker process dies mid-task, Ray runs the task again (``retries`` times) and the
new attempt picks up after the last shard the dead one wrote. When the retries are spent, the
exploration ends with one line naming the failed tasks, and a re-run resumes.

Which Ray runtime (:func:`ray_runtime`):

- the one this process already joined (``ray.init(...)`` called before);
- else the cluster ``RAY_ADDRESS`` names (``ray start --head`` on a machine, then
  ``RAY_ADDRESS=<head>:6379``; ``out_dir`` must be on storage every node can write);
- else a private runtime on this machine (:func:`start_local_ray`), bound to 127.0.0.1 only
  and stopped when the exploration ends.

A task reserves as many Ray CPUs as it runs torch threads (``threads``, default 1), so Ray
never runs more threads on a node than it has cores.

Example::

    from offline_data.explore import explore

    explore({"model": "smollm2-135m"}, "sweep", "logs/sweep", workers=8, threads=2, backend="ray")
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from offline_data.explore import ExploreConfig, WorkerResult, describe_error, run_worker, split_round_robin

__all__ = ["CLUSTER_ENV", "LOOPBACK", "ray_runtime", "run_ray_tasks", "start_local_ray"]

#: The address a private local runtime binds to.
LOOPBACK = "127.0.0.1"

#: Ray reads this when ``ray`` is imported: "0" keeps every process it starts on loopback.
CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ModuleNotFoundError("backend='ray' needs Ray: pip install 'dynprune[ray]' (or pip install ray)") from e
    return ray


def start_local_ray(num_cpus: int | None = None) -> None:
    """Start a private Ray runtime on this machine that listens on 127.0.0.1 only.

    ``address="local"`` starts a new runtime even when another one (someone's ``ray start``)
    runs on the machine, and ``ray.shutdown()`` stops every process it started. No dashboard.

    Args:
        num_cpus: CPUs Ray may hand out (default: all cores).
    """
    # Ray 2.60 given only _node_ip_address=127.0.0.1 still bound its GCS server, raylet and
    # workers to every interface ('::') here; with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its
    # single-machine mode) everything stayed on loopback (tests/test_ray_backend.py checks
    # the sockets). Ray reads the variable when it is imported, in this process and in the
    # ones it starts, so it must be set before the first `import ray`.
    if "ray" in sys.modules and os.environ.get(CLUSTER_ENV) != "0":
        warnings.warn(
            f"ray was imported before {CLUSTER_ENV}=0 was set: the local Ray runtime may listen on every "
            f"interface; set {CLUSTER_ENV}=0 in the environment before importing ray",
            RuntimeWarning,
            stacklevel=2,
        )
    os.environ.setdefault(CLUSTER_ENV, "0")
    ray = _import_ray()
    ray.init(
        address="local",
        num_cpus=num_cpus,
        _node_ip_address=LOOPBACK,
        include_dashboard=False,
        configure_logging=False,
    )


@contextlib.contextmanager
def ray_runtime() -> Iterator[bool]:
    """Ray for one exploration; yields True when the runtime is a private one started here.

    Uses the runtime this process joined already (left running), else joins ``RAY_ADDRESS``
    (disconnects afterwards), else starts :func:`start_local_ray` (stopped afterwards, every
    process it started with it).
    """
    if "ray" in sys.modules and _import_ray().is_initialized():
        yield False
        return
    local = not os.environ.get("RAY_ADDRESS")
    if local:
        start_local_ray()
    else:
        _import_ray().init(configure_logging=False)
    try:
        yield local
    finally:
        _import_ray().shutdown()


def run_ray_tasks(
    prompt_ids: Sequence[str],
    env_kwargs: dict[str, Any],
    config: ExploreConfig,
    out_dir: Path,
    tasks: int,
    threads: int | None = None,
    retries: int = 3,
    progress: bool = False,
) -> tuple[list[WorkerResult], list[str]]:
    """Run one Ray task per round-robin shard of ``prompt_ids`` and wait for all of them.

    Args:
        prompt_ids: Prompts to measure (the caller left out those already logged).
        env_kwargs: ``gym.make("DynPrune-v0", ...)`` arguments; the model named by spec.
        config: What to try per prompt.
        out_dir: The log directory, on storage every node can write.
        tasks: Number of tasks (shards of prompt ids).
        threads: Torch threads of each task, which reserves as many Ray CPUs (default 1).
        retries: Times Ray runs a task again after its worker process died.
        progress: Tasks print one line per prompt (Ray forwards them to this process).

    Returns:
        The results of the tasks that finished, and one line per task that failed
        (``"worker <i>: <error type>: <first line>"``); the other tasks finish first.
    """
    from dynprune.models import PrunableLM

    if isinstance(env_kwargs.get("model"), PrunableLM):
        raise ValueError("backend='ray' needs the model named by spec (each task loads its own), got a loaded model")
    threads = 1 if threads is None else int(threads)
    shards = [(i, shard) for i, shard in enumerate(split_round_robin(list(prompt_ids), tasks)) if shard]
    if not shards:
        return [], []
    with ray_runtime() as local:
        ray = _import_ray()
        if local and threads > int(ray.cluster_resources().get("CPU", 0)):
            raise ValueError(
                f"threads={threads}: each Ray task reserves that many CPUs and this machine's Ray runtime has "
                f"{int(ray.cluster_resources().get('CPU', 0))}; use fewer threads"
            )
        # retry_exceptions=False: an error raised by run_worker (a bad prompt id, a bug) would only
        # repeat; a dead worker process (killed, out of memory) is what a retry is for
        task = ray.remote(run_worker).options(num_cpus=threads, max_retries=retries, retry_exceptions=False)
        refs = [
            # absolute: a task's working directory need not be this process's
            (i, task.remote(shard, env_kwargs, config, str(Path(out_dir).resolve()), worker=i, threads=threads,
                            progress=progress))
            for i, shard in shards
        ]
        results: list[WorkerResult] = []
        errors: list[str] = []
        for i, ref in refs:
            try:
                results.append(ray.get(ref))
            except ray.exceptions.RayTaskError as err:  # run_worker raised: report its own error
                cause = err.cause if err.cause is not None else err
                errors.append(f"worker {i}: {describe_error(cause)}")
            except ray.exceptions.RayError as err:  # the worker died and the retries are spent
                errors.append(f"worker {i}: {describe_error(err)}")
    return results, errors
