"""Exploration that logs data: DFS and random search over layer sets, and a sweep of the action table.

The search is kept apart from the measurement. :func:`dfs_configs` and :func:`random_configs`
only decide *which* layer sets to try (the DFS asks a ``score_fn`` for each); the runner
measures each set on a real prompt through ``DynPruneEnv.record_plan`` (or every table
action through ``action_records``) and writes the rows as one Parquet shard per prompt
(:mod:`offline_data.dataset`).

Strategies (per prompt):

- ``dfs`` (the thesis' exploration): start from no layer pruned; try adding each layer; keep a
  child when its score (task score when the prompt has one and timing is live, else token
  agreement with the full model; see :func:`offline_data.prefs.row_score`)
  stays at or above ``threshold`` and go deeper from it; when the score drops, backtrack and
  try the next layer. At most ``max_configs`` configurations per prompt, the unpruned one
  included.
- ``random``: ``n_random`` distinct random layer sets of 1 .. ``max_frac * L`` layers.
- ``sweep``: every action of the DynPrune-v0 table.

A pruned layer is replaced by its adapter when the model has one in its adapter slot
(``lm.adapters``), else skipped. Layer 0 is never proposed (``dynprune.selection.layer_order``:
every model tried breaks without it), and layers are tried in ascending block influence, so
the scenario cap is spent on the layers most likely to be prunable.

Resuming and scale-out
----------------------
A prompt is finished when its shard exists; re-running skips it, so a crash loses only the
prompt in flight. :func:`run_worker` measures one list of prompt ids with its own env and is
the unit of scale-out: ``explore(..., workers=N)`` splits the ids round-robin
(:func:`split_round_robin`) over N spawned processes on this machine, or over N Ray tasks
with ``backend="ray"`` (:mod:`offline_data.ray_backend`; ``out_dir`` on storage every node
can write, or shards copied together afterwards: one file per prompt, each carrying the
settings, so merging is copying)::

    from offline_data.explore import explore

    explore(env_kwargs, "dfs", "logs/dfs", workers=16, threads=4, backend="ray")

A Ray task whose worker process dies is run again and skips the prompts already written;
when a worker fails for good, the others finish and :class:`ExploreFailed` says in one line
what failed and that a re-run resumes.

Every prompt's observation and random layer sets are seeded from ``(seed, prompt id)``, so the
rows of a prompt do not depend on how the ids were split or in which order they ran.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from dynprune.fileio import check_writable
from dynprune.validation import require_at_least, require_finite, require_in_range, require_one_of
from offline_data.dataset import migrate_legacy_meta, migrate_renamed_columns, read_meta, shard_path, write_shard

__all__ = [
    "STRATEGIES",
    "ExploreConfig",
    "ExploreFailed",
    "ExploreSummary",
    "Scored",
    "WorkerResult",
    "dfs_configs",
    "explore",
    "prompt_ids_of",
    "random_configs",
    "run_worker",
    "split_round_robin",
]

#: Exploration strategies of :func:`explore`.
STRATEGIES = ("dfs", "random", "sweep")

#: Version of the settings' layout (:func:`offline_data.dataset.read_meta`); 2: stored in every shard.
META_FORMAT = 2


# --------------------------------------------------------------------------- search (pure)


class Scored(NamedTuple):
    """One configuration visited by :func:`dfs_configs`.

    Attributes:
        layers: The pruned layers.
        score: What ``score_fn`` returned for them.
        kept: ``score >= threshold``: the DFS went deeper from this set.
    """

    layers: frozenset[int]
    score: float
    kept: bool


def _layer_list(name: str, layers: Iterable[int], num_layers: int) -> list[int]:
    out = [int(x) for x in layers]
    for layer in out:
        if not 0 <= layer < num_layers:
            raise ValueError(f"{name}: layer {layer} out of range 0..{num_layers - 1}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: layers listed more than once in {out}")
    return out


def dfs_configs(
    num_layers: int,
    score_fn: Callable[[frozenset[int]], float],
    threshold: float,
    max_configs: int = 20,
    order: Sequence[int] | None = None,
    max_layers: int | None = None,
) -> list[Scored]:
    """Depth-first search over sets of pruned layers, pruning branches whose score drops.

    Starts from the empty set (nothing pruned), which is always scored and expanded. From a
    set, each layer of ``order`` not yet in it is tried in turn: the child set is scored;
    when its score is at or above ``threshold`` the search goes deeper from the child, else
    it backtracks and tries the next layer. A set reached twice (``{0, 2}`` from ``{0}`` and
    from ``{2}``) is scored once. The search stops after ``max_configs`` scored sets.

    Args:
        num_layers: Decoder layers of the model.
        score_fn: Score of a set of pruned layers (higher is better); called once per set.
        threshold: A child is kept (expanded) when ``score >= threshold``.
        max_configs: At most this many sets are scored, the empty set included.
        order: Layers to try, in the order tried (default ``0 .. num_layers - 1``).
        max_layers: Largest set tried (default ``num_layers - 1``: one layer always stays).

    Returns:
        The scored sets in visit order.

    Example:
        >>> cost = [1, 6, 2, 3]
        >>> visits = dfs_configs(4, lambda s: 10 - sum(cost[i] for i in s), threshold=5, max_configs=4)
        >>> [sorted(v.layers) for v in visits]
        [[], [0], [0, 1], [0, 2]]
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if max_configs < 1:
        raise ValueError(f"max_configs must be >= 1, got {max_configs}")
    order = list(range(num_layers)) if order is None else _layer_list("order", order, num_layers)
    max_layers = num_layers - 1 if max_layers is None else int(max_layers)
    if not 0 <= max_layers < num_layers:
        raise ValueError(f"max_layers must be in 0..{num_layers - 1}, got {max_layers}")

    visits: list[Scored] = []
    seen: set[frozenset[int]] = set()

    def visit(layers: frozenset[int]) -> bool:
        score = float(score_fn(layers))
        kept = score >= threshold
        visits.append(Scored(layers, score, kept))
        seen.add(layers)
        return kept

    def expand(parent: frozenset[int]) -> None:
        if len(parent) >= max_layers:
            return
        for layer in order:
            if len(visits) >= max_configs:
                return
            if layer in parent:
                continue
            child = parent | {layer}
            if child in seen:
                continue
            # keep: go deeper from the child; drop: backtrack, i.e. try the next layer here
            if visit(child):
                expand(child)

    visit(frozenset())
    expand(frozenset())
    return visits


def random_configs(
    num_layers: int,
    n: int,
    rng: np.random.Generator,
    max_frac: float = 0.5,
    candidates: Sequence[int] | None = None,
) -> list[tuple[int, ...]]:
    """``n`` distinct random sets of pruned layers.

    Each set's size is drawn uniformly from ``1 .. k_max`` with
    ``k_max = min(max(1, floor(max_frac * num_layers)), len(candidates), num_layers - 1)``,
    then that many layers are drawn from ``candidates`` without replacement. Fewer than ``n``
    sets come back when fewer distinct sets exist.

    Args:
        num_layers: Decoder layers of the model.
        n: Number of sets wanted.
        rng: Source of randomness (``np.random.default_rng(seed)``).
        max_frac: Largest fraction of the layers pruned in one set, in (0, 1].
        candidates: Layers that may be pruned (default all).

    Returns:
        Sorted layer tuples, in the order drawn.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 < max_frac <= 1.0:
        raise ValueError(f"max_frac must be in (0, 1], got {max_frac}")
    pool = list(range(num_layers)) if candidates is None else sorted(_layer_list("candidates", candidates, num_layers))
    k_max = min(max(1, math.floor(max_frac * num_layers + 1e-9)), len(pool), num_layers - 1)
    if k_max < 1 or n == 0:
        return []
    # distinct sets that exist at all; asking for more would never end
    available = sum(math.comb(len(pool), k) for k in range(1, k_max + 1))
    wanted = min(n, available)
    out: list[tuple[int, ...]] = []
    seen: set[tuple[int, ...]] = set()
    while len(out) < wanted:
        k = int(rng.integers(1, k_max + 1))
        layers = tuple(sorted(int(x) for x in rng.choice(pool, size=k, replace=False)))
        if layers not in seen:
            seen.add(layers)
            out.append(layers)
    return out


def split_round_robin(prompt_ids: Sequence[str], n: int) -> list[list[str]]:
    """Deal prompt ids to ``n`` workers round-robin: worker ``i`` gets ids ``i, i + n, ...``.

    Returns ``n`` lists (some empty when there are fewer ids than workers).
    """
    if n < 1:
        raise ValueError(f"number of workers must be >= 1, got {n}")
    return [list(prompt_ids[i::n]) for i in range(n)]


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ExploreConfig:
    """What to try on each prompt.

    Attributes:
        strategy: ``"dfs"``, ``"random"`` or ``"sweep"``.
        threshold: DFS: a layer set is expanded when its score is at or above this.
        max_configs: DFS: configurations measured per prompt, the unpruned one included (``max_scenarios``
            in logs written before the rename: a scenario is a load profile elsewhere).
        n_random: Random: layer sets per prompt.
        max_frac: Random: largest fraction of the layers pruned in one set.
        seed: Seeds each prompt's observation and random sets together with its id.
        adapters: Adapters file (``dynprune adapters train``) attached to the model before
            exploring: a pruned layer with an adapter is replaced by it, the others are skipped.
    """

    strategy: str = "dfs"
    threshold: float = 0.8
    max_configs: int = 20
    n_random: int = 5
    max_frac: float = 0.5
    seed: int = 0
    adapters: str | None = None

    def __post_init__(self) -> None:
        """Check every value; raise ``ValueError`` naming the bad one."""
        require_one_of(self, "strategy", STRATEGIES)
        if self.max_configs < 1:
            raise ValueError(f"ExploreConfig.max_configs must be >= 1, got {self.max_configs}; pass --max-configs N "
                             "with N >= 1")
        require_at_least(self, 1, "n_random")
        require_in_range(self, 0, 1, "max_frac", interval="(]")
        require_finite(self, "threshold")


@dataclass(frozen=True)
class WorkerResult:
    """What one :func:`run_worker` call did.

    Attributes:
        worker: Index of the worker.
        done: Prompt ids measured and written by this call, in order.
        skipped: Prompt ids whose shard already existed.
        rows: Rows written.
        seconds: Wall time of the call, env construction included.
        threads: Torch intra-op threads the call measured with (read in its process).
    """

    worker: int
    done: tuple[str, ...]
    skipped: tuple[str, ...]
    rows: int
    seconds: float
    threads: int


@dataclass(frozen=True)
class ExploreSummary:
    """What :func:`explore` did, over all workers.

    The counts come from the log directory, not from adding up the workers' reports: a Ray
    task retried after its worker died reports the prompts its first attempt wrote as
    "already there", yet this run measured them.

    Attributes:
        out_dir: The log directory.
        workers: One result per worker (Ray: per task, its last attempt), in worker order.
        done: Prompt ids measured in this run, in the order given.
        skipped: Prompt ids whose shard existed before this run, in the order given.
        rows: Rows in the shards of ``done``.
    """

    out_dir: Path
    workers: tuple[WorkerResult, ...]
    done: tuple[str, ...]
    skipped: tuple[str, ...]
    rows: int


class ExploreFailed(RuntimeError):
    """Some exploration workers failed; the prompts they finished are kept and a re-run resumes.

    The message is one line: each failed worker with its error's first line, the prompts
    logged so far, and the hint to re-run the same command.
    """


def _jsonable(value: Any) -> Any:
    """A JSON form of an env argument (a loaded model by its spec name, a dataclass as a dict)."""
    from dynprune.models import PrunableLM

    if isinstance(value, PrunableLM):
        return value.name
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _settings(env_kwargs: dict[str, Any], config: ExploreConfig) -> dict[str, Any]:
    """The part of the logs' settings (:func:`offline_data.dataset.read_meta`) that must match to share a folder."""
    # a JSON round trip so that freshly built settings compare equal to ones read back
    return json.loads(json.dumps({"env": _jsonable(env_kwargs), "explore": asdict(config)}))


def prompt_ids_of(env_kwargs: dict[str, Any]) -> list[str]:
    """Ids of the prompts the env would see (source and split of ``env_kwargs``), in source order.

    Loads prompt text only, not the model, so a coordinator can split the work cheaply.
    """
    from dynprune.tasks import load_prompts

    source = env_kwargs.get("prompts", "dynprune")
    split = env_kwargs.get("split", "train")
    prompts = load_prompts(source, split=split) if isinstance(source, str) else list(source)
    return [p.id for p in prompts]


# --------------------------------------------------------------------------- measurement


def _prompt_seed(seed: int, prompt_id: str) -> int:
    """A per-prompt seed that does not depend on which worker or in which order the prompt runs."""
    return (int(seed) * 1_000_003 + zlib.crc32(prompt_id.encode("utf-8"))) % (2**31)


def _score(rec: Any) -> float:
    """The DFS score of a record: task score when the prompt has one (live timing), else token agreement.

    The same rule as :func:`offline_data.prefs.row_score`, so the DFS and the preference
    pairs rank configurations alike.
    """
    from offline_data.prefs import row_score

    return row_score({"task_score": rec.task_score, "token_agreement": rec.token_agreement, "timing": rec.timing})


def _row(rec: Any, strategy: str, order: int) -> dict[str, Any]:
    """One log row from a StepRecord."""
    plan = rec.plan
    return {
        "prompt_id": rec.prompt_id,
        "split": rec.split,
        "observation": [float(x) for x in rec.observation],
        "layers": sorted(int(i) for i in list(plan.get("skip", ())) + list(plan.get("adapters", ()))),
        "action": int(rec.action),
        "action_name": rec.action_name,
        "plan": json.dumps(plan, sort_keys=True),
        "timing": rec.timing,
        "latency_s": float(rec.pruned_latency_s),
        "tokens_per_s": float(rec.pruned_tokens_per_s),
        "ppl": float(rec.pruned_ppl),
        "ppl_change": float(rec.ppl_change),
        "token_agreement": float(rec.token_agreement),
        "prefix_fidelity": None if rec.prefix_fidelity is None else float(rec.prefix_fidelity),
        "task_score": None if rec.task_score is None else float(rec.task_score),
        "speedup": float(rec.speedup),
        "kept_fraction": float(rec.kept_fraction),
        "reward": float(rec.reward),
        "budget_s": None if rec.budget_s is None else float(rec.budget_s),
        "healing": rec.healing,
        "baseline_latency_s": float(rec.baseline_latency_s),
        "baseline_tokens_per_s": float(rec.baseline_tokens_per_s),
        "baseline_ppl": float(rec.baseline_ppl),
        "strategy": strategy,
        "order": int(order),
    }


def _layer_set_plan(layers: Iterable[int], lm: Any) -> Any:
    """The plan that prunes ``layers``: each replaced by its adapter when the model has one, else skipped."""
    from dynprune.plan import PruningPlan

    layers = sorted(layers)
    adapted = [i for i in layers if i in lm.adapters]
    skipped = [i for i in layers if i not in lm.adapters]
    return PruningPlan(skip=skipped, adapters=adapted, geometry=lm.geometry)


class _PromptExplorer:
    """Measures configurations on the env's current prompt and collects their rows."""

    def __init__(self, core: Any, config: ExploreConfig) -> None:
        from dynprune.selection import layer_order

        self.core = core
        self.config = config
        self.num_layers = int(core.lm.geometry.num_layers)
        # layers in ascending block influence, layer 0 left out (see the module docstring)
        self.candidates = layer_order(core.lm.importance, "influence")
        # layer-only table plans -> their action id (the first id when two entries coincide)
        self.table: dict[Any, int] = {}
        for action in reversed(range(int(core.action_space.n))):
            plan = core.plan(action)
            if not (plan.heads or plan.ffn):
                self.table[plan] = action

    def _measure(self, layers: Iterable[int], rows: list[dict[str, Any]]) -> float:
        plan = _layer_set_plan(layers, self.core.lm)
        action = self.table.get(plan, -1)
        rec = self.core.record_plan(plan, action=action)
        rows.append(_row(rec, self.config.strategy, len(rows)))
        return _score(rec)

    def rows(self, prompt_id: str) -> list[dict[str, Any]]:
        """Every row of the configured strategy on the current prompt."""
        cfg = self.config
        rows: list[dict[str, Any]] = []
        if cfg.strategy == "dfs":
            dfs_configs(
                self.num_layers,
                lambda layers: self._measure(layers, rows),
                threshold=cfg.threshold,
                max_configs=cfg.max_configs,
                order=self.candidates,
            )
        elif cfg.strategy == "random":
            # its own stream, apart from the env's (seeded by _prompt_seed)
            rng = np.random.default_rng([int(cfg.seed), zlib.crc32(prompt_id.encode("utf-8")), 1])
            for layers in random_configs(self.num_layers, cfg.n_random, rng, cfg.max_frac, self.candidates):
                self._measure(layers, rows)
        else:  # sweep
            for rec in self.core.action_records():
                rows.append(_row(rec, cfg.strategy, len(rows)))
        return rows


def _shard_readable(path: Path) -> bool:
    """True when ``path`` exists and its Parquet footer reads; a damaged one is reported and redone."""
    if not path.exists():
        return False
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except Exception as err:  # noqa: BLE001 - any failure means the shard must be measured again
        warnings.warn(f"{path}: damaged log shard ({err}); measuring its prompt again", RuntimeWarning, stacklevel=3)
        return False
    return True


def _check_meta(out_dir: Path, settings: dict[str, Any]) -> None:
    """Refuse a log directory that was written with other settings."""
    try:
        old = read_meta(out_dir).get("settings")
    except FileNotFoundError:  # a new folder, or nothing finished in it yet
        return
    if old != settings:
        raise ValueError(
            f"{out_dir} holds logs explored with other settings ({old}); now {settings}. Use another --out directory."
        )


def _make_env(env_kwargs: dict[str, Any]) -> Any:
    import gymnasium as gym

    import envs  # noqa: F401 - registers DynPrune-v0

    # no sequential=True: run_worker names each prompt at its reset, so the env's own prompt order is never used
    return gym.make("DynPrune-v0", **env_kwargs)


def run_worker(
    prompt_ids: Sequence[str],
    env_kwargs: dict[str, Any],
    config: ExploreConfig,
    out_dir: str | os.PathLike[str],
    worker: int = 0,
    threads: int | None = None,
    progress: bool = False,
) -> WorkerResult:
    """Explore a list of prompts with one env of its own and write one shard per prompt.

    The unit of scale-out: :func:`explore` runs one per process; a Ray task can wrap it as
    is (see the module docstring). Prompts whose shard exists are skipped. Each shard is
    written whole after its prompt is measured, so an exception (or a kill) loses only the
    prompt in flight.

    Args:
        prompt_ids: Prompts to explore, all from the env's prompt source and split.
        env_kwargs: Keyword arguments of ``gym.make("DynPrune-v0", ...)``.
        config: What to try per prompt.
        out_dir: The log directory (created if missing).
        worker: Index of this worker, for messages.
        threads: Torch intra-op threads of this process (``None`` leaves torch's choice).
        progress: Print one line per prompt.

    Returns:
        What was measured and skipped.

    Raises:
        ValueError: an id is not in the env's prompts, or ``out_dir`` holds logs of other settings.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    settings = _settings(env_kwargs, config)
    _check_meta(out_dir, settings)
    pending = [pid for pid in prompt_ids if not _shard_readable(shard_path(out_dir, pid))]
    pending_set = set(pending)
    skipped = tuple(pid for pid in prompt_ids if pid not in pending_set)
    from dynprune.metrics import fix_threads

    # fix_threads(None) only reads the count
    n_threads = fix_threads(threads)
    if not pending:
        return WorkerResult(worker, (), skipped, 0, time.perf_counter() - t0, n_threads)

    env = _make_env(env_kwargs)
    core = env.unwrapped
    if config.adapters is not None:
        from dynprune.adapter_files import load_adapters
        from dynprune.adapters import attach_adapters

        # before the first table plan is built, so layer actions use the adapters too
        attach_adapters(core.lm, load_adapters(config.adapters, core.lm))
    known = {p.id for p in core.prompts}
    unknown = [pid for pid in pending if pid not in known]
    if unknown:
        env.close()
        raise ValueError(f"prompt ids {unknown[:5]} are not in the env's prompts ({len(known)} prompts)")
    # every shard carries the settings (offline_data.dataset.read_meta)
    meta = {
        "format": META_FORMAT,
        "settings": settings,
        "model_id": core.lm.model_id,
        "num_layers": int(core.lm.geometry.num_layers),
        "observation_names": list(core.observation_names),
        "action_names": list(core.action_names),
        "n_actions": int(core.action_space.n),
    }
    explorer = _PromptExplorer(core, config)
    done: list[str] = []
    n_rows = 0
    try:
        for pid in pending:
            t = time.perf_counter()
            # a reset on the prompt, seeded by it: its observation does not depend on which
            # worker runs it or what ran before
            env.reset(seed=_prompt_seed(config.seed, pid), options={"prompt_id": pid})
            rows = explorer.rows(pid)
            write_shard(shard_path(out_dir, pid), rows, meta)
            done.append(pid)
            n_rows += len(rows)
            if progress:
                print(
                    f"[explore w{worker}] {pid}: {len(rows)} rows in {time.perf_counter() - t:.1f} s "
                    f"({len(done)}/{len(pending)})",
                    flush=True,
                )
    finally:
        env.close()
    return WorkerResult(worker, tuple(done), skipped, n_rows, time.perf_counter() - t0, n_threads)


def _first_line(text: str) -> str:
    """The first non-empty line of an error message (Ray's carry a traceback below it)."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def describe_error(err: BaseException) -> str:
    """``"TypeName: first line"`` of an exception, for one-line failure reports."""
    return f"{type(err).__name__}: {_first_line(str(err))}"


def _run_processes(
    ids: Sequence[str], env_kwargs: dict[str, Any], config: ExploreConfig, out_dir: Path, workers: int,
    threads: int | None, progress: bool,
) -> tuple[list[WorkerResult], list[str]]:
    """One spawned process per round-robin shard of prompt ids; returns the results and one line per failure."""
    from dynprune.models import PrunableLM

    if isinstance(env_kwargs.get("model"), PrunableLM):
        raise ValueError("workers > 1 need the model named by spec (each process loads its own), got a loaded model")
    threads = threads if threads is not None else max(1, (os.cpu_count() or 1) // workers)
    results: list[WorkerResult] = []
    errors: list[str] = []
    # spawn, not fork: a forked torch process with threads already started can deadlock
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [
            (i, pool.submit(run_worker, shard, env_kwargs, config, out_dir, worker=i, threads=threads,
                            progress=progress))
            for i, shard in enumerate(split_round_robin(ids, workers))
            if shard
        ]
        for i, future in futures:
            try:
                results.append(future.result())
            except Exception as err:  # noqa: BLE001 - report every failed worker, keep the others' shards
                errors.append(f"worker {i}: {describe_error(err)}")
    return results, errors


def explore(
    env_kwargs: dict[str, Any],
    strategy: str,
    out_dir: str | os.PathLike[str],
    prompt_ids: Sequence[str] | None = None,
    threshold: float = 0.8,
    max_configs: int = 20,
    n_random: int = 5,
    seed: int = 0,
    workers: int = 1,
    max_frac: float = 0.5,
    adapters: str | os.PathLike[str] | None = None,
    progress: bool = False,
    backend: str = "processes",
    threads: int | None = None,
    retries: int = 3,
    max_scenarios: int | None = None,
) -> ExploreSummary:
    """Explore prompts and log every measured configuration as Parquet shards in ``out_dir``.

    Prompts whose shard is already in ``out_dir`` are skipped; the others are dealt
    round-robin to the workers. A folder written before the settings moved into the shards
    is migrated first (:func:`offline_data.dataset.migrate_legacy_meta`).

    Args:
        env_kwargs: Keyword arguments of ``gym.make("DynPrune-v0", ...)``. With ``workers > 1``
            or Ray they must be picklable and name the model by spec (each process loads its own).
        strategy: ``"dfs"``, ``"random"`` or ``"sweep"`` (see the module docstring).
        out_dir: The log directory; re-running into it skips finished prompts.
        prompt_ids: Prompts to explore (default: every prompt of the env's source and split).
        threshold: DFS keep threshold on the score (task score, else token agreement).
        max_configs: DFS configurations per prompt.
        n_random: Random layer sets per prompt.
        seed: Seed of observations and random sets (combined with each prompt id).
        workers: Processes (spawned), or Ray tasks; prompt ids are dealt round-robin.
        max_frac: Random: largest fraction of layers pruned in one set.
        adapters: Adapters file to attach to the model (pruned layers use their adapter).
        progress: Print one line per prompt.
        backend: ``"processes"`` (spawned processes on this machine) or ``"ray"``: one Ray task
            per shard of prompt ids (:mod:`offline_data.ray_backend`: the runtime of an earlier
            ``ray.init``, else the cluster ``RAY_ADDRESS`` names, else a private one on this
            machine bound to 127.0.0.1; ``out_dir`` must be on storage every node can write).
        threads: Torch threads of each worker. Default: torch's choice with one in-process
            worker, cores / workers with processes, 1 per Ray task (a Ray task reserves as many
            CPUs as it runs threads).
        retries: Ray: times a task is run again after its worker process died (a re-run skips
            the prompts the dead attempt finished).
        max_scenarios: Deprecated name of ``max_configs`` (a warning; it wins when given).

    Returns:
        What was measured and skipped.

    Raises:
        ValueError: bad settings, or ``out_dir`` holds logs explored with other settings.
        ExploreFailed: a worker process (or Ray task) failed; the others finish first and every
            finished prompt is kept, so a re-run resumes. With one in-process worker its error
            is raised as is.
    """
    if max_scenarios is not None:
        warnings.warn("explore(max_scenarios=...) is deprecated; pass max_configs=", DeprecationWarning, stacklevel=2)
        max_configs = max_scenarios
    config = ExploreConfig(
        strategy=strategy, threshold=threshold, max_configs=max_configs, n_random=n_random,
        max_frac=max_frac, seed=seed, adapters=None if adapters is None else str(Path(adapters).resolve()),
    )
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if backend not in ("processes", "ray"):
        raise ValueError(f"backend must be 'processes' or 'ray', got {backend!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 (or None for the default), got {threads}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    out_dir = Path(out_dir)
    _check_meta(out_dir, _settings(env_kwargs, config))
    ids = list(prompt_ids) if prompt_ids is not None else prompt_ids_of(env_kwargs)
    if len(set(ids)) != len(ids):
        raise ValueError("prompt ids must be unique")
    check_writable(out_dir)  # before any model loads: a read-only or full folder fails now, not after a prompt
    # after the settings check: only a folder of these very settings is rewritten
    migrate_legacy_meta(out_dir)
    migrate_renamed_columns(out_dir)
    skipped = tuple(pid for pid in ids if _shard_readable(shard_path(out_dir, pid)))
    logged = set(skipped)
    pending = [pid for pid in ids if pid not in logged]
    errors: list[str] = []
    if backend == "ray":
        from offline_data.ray_backend import run_ray_tasks

        results, errors = run_ray_tasks(pending, env_kwargs, config, out_dir, tasks=workers, threads=threads,
                                        retries=retries, progress=progress)
    elif workers == 1:
        results = [run_worker(pending, env_kwargs, config, out_dir, threads=threads, progress=progress)]
    else:
        results, errors = _run_processes(pending, env_kwargs, config, out_dir, workers, threads, progress)
    # counted from the folder: a retried Ray task reports what its dead attempt wrote as skipped
    done = tuple(pid for pid in pending if _shard_readable(shard_path(out_dir, pid)))
    if errors:
        logged_now = len(skipped) + len(done)
        raise ExploreFailed(
            f"{len(errors)} exploration worker{'s' if len(errors) > 1 else ''} failed ({'; '.join(errors)}); "
            f"finished prompts are kept ({logged_now} of {len(ids)} logged in {out_dir}): re-run to resume"
        )
    import pyarrow.parquet as pq

    rows = sum(pq.read_metadata(shard_path(out_dir, pid)).num_rows for pid in done)
    return ExploreSummary(out_dir, tuple(results), done, skipped, rows)
