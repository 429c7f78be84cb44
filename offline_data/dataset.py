"""Logged exploration data on disk: Parquet shards, their schema, and the d3rlpy export.

A log directory (``dynprune explore --out DIR``) holds::

    meta.json                  settings of the exploration (env, strategy), observation and action names
    shard-<prompt id>.parquet  every configuration measured on one prompt (one row each)

One shard per prompt, written whole (a temporary file, then ``os.replace``), so a crash
loses at most the prompt in flight and a shard on disk is always complete. Shards are
independent: :func:`load_logs` reads every readable shard and skips a damaged one with a
warning naming the file; :func:`check_logs` lists the damaged ones.

Row schema (:data:`LOG_FEATURES`):

| column               | type          | meaning                                                    |
|----------------------|---------------|------------------------------------------------------------|
| prompt_id, split     | string        | the prompt and its split                                   |
| observation          | list[float32] | the observation an agent would act on (env order)          |
| layers               | list[int32]   | decoder layers pruned (skipped or replaced by an adapter)  |
| action, action_name  | int32, string | the DynPrune-v0 table action (-1 when the plan is not one)  |
| plan                 | string        | ``PruningPlan.to_dict()`` as JSON                          |
| timing               | string        | ``"profiled"`` or ``"live"``                               |
| latency_s            | float64       | pruned latency (baseline: ``baseline_latency_s``)          |
| tokens_per_s         | float64       | pruned throughput (baseline: ``baseline_tokens_per_s``)    |
| ppl, ppl_change      | float64       | perplexity of the full model's answer, relative change     |
| fidelity             | float64       | agreement with the full model's answer                     |
| prefix_fidelity      | float64, null | share of the full answer before the first difference (the rewards' fidelity) |
| task_score           | float64, null | gold-answer score, null when the prompt has none (or profiled) |
| speedup              | float64       | ``baseline_latency / pruned_latency - 1``                  |
| kept_fraction        | float64       | fraction of matmul FLOPs kept                              |
| reward               | float64       | the env's reward for this configuration                    |
| budget_s             | float64, null | latency budget of the row (latency_budget reward), else null |

``prefix_fidelity`` and ``budget_s`` came after the first format: shards without them
still read, with nulls there (:data:`OPTIONAL_COLUMNS`).
| baseline_ppl         | float64       | perplexity of the full model's answer under the full model |
| strategy             | string        | ``"dfs"``, ``"random"`` or ``"sweep"``                     |
| order                | int32         | visit order of the configuration within its prompt         |
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dynprune.fileio import atomic_path, atomic_write_text

__all__ = [
    "LOG_FEATURES",
    "META_FILE",
    "OPTIONAL_COLUMNS",
    "SHARD_PREFIX",
    "check_logs",
    "load_logs",
    "read_meta",
    "shard_path",
    "shard_paths",
    "to_mdp_dataset",
    "write_meta",
    "write_shard",
]

#: Schema of one logged row (see the module docstring).
LOG_FEATURES = datasets.Features(
    {
        "prompt_id": datasets.Value("string"),
        "split": datasets.Value("string"),
        "observation": datasets.Sequence(datasets.Value("float32")),
        "layers": datasets.Sequence(datasets.Value("int32")),
        "action": datasets.Value("int32"),
        "action_name": datasets.Value("string"),
        "plan": datasets.Value("string"),
        "timing": datasets.Value("string"),
        "latency_s": datasets.Value("float64"),
        "tokens_per_s": datasets.Value("float64"),
        "ppl": datasets.Value("float64"),
        "ppl_change": datasets.Value("float64"),
        "fidelity": datasets.Value("float64"),
        "prefix_fidelity": datasets.Value("float64"),
        "task_score": datasets.Value("float64"),
        "speedup": datasets.Value("float64"),
        "kept_fraction": datasets.Value("float64"),
        "reward": datasets.Value("float64"),
        "budget_s": datasets.Value("float64"),
        "baseline_latency_s": datasets.Value("float64"),
        "baseline_tokens_per_s": datasets.Value("float64"),
        "baseline_ppl": datasets.Value("float64"),
        "strategy": datasets.Value("string"),
        "order": datasets.Value("int32"),
    }
)

#: Columns added after the first log format: a shard without them still reads, with nulls there.
OPTIONAL_COLUMNS = ("prefix_fidelity", "budget_s")

#: Settings file of a log directory.
META_FILE = "meta.json"

#: Shard files are ``shard-<prompt id>.parquet``.
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".parquet"

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


# --------------------------------------------------------------------------- paths


def shard_path(log_dir: str | os.PathLike[str], prompt_id: str) -> Path:
    """The shard file of one prompt: ``<log_dir>/shard-<prompt id>.parquet``.

    Characters outside ``[A-Za-z0-9._-]`` become ``_`` and the name then gets a short hash of
    the real id, so two ids never share a file and the name stays portable.
    """
    safe = _SAFE.sub("_", prompt_id)
    if safe != prompt_id or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha1(prompt_id.encode()).hexdigest()[:8]}"
    return Path(log_dir) / f"{SHARD_PREFIX}{safe}{SHARD_SUFFIX}"


def shard_paths(log_dir: str | os.PathLike[str]) -> list[Path]:
    """Every shard file of a log directory, sorted by name (temporary files excluded)."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"log directory {log_dir} does not exist")
    return sorted(log_dir.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}"))


# --------------------------------------------------------------------------- writing


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_shard(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    """Write one prompt's rows as a Parquet shard, atomically.

    The rows go through ``datasets.Dataset.from_list(rows, features=LOG_FEATURES).to_parquet``
    into ``.<name>.tmp`` beside the target, which is fsync-ed and then renamed over ``path``:
    a reader (or a crash) never sees half a shard.

    Raises:
        ValueError: ``rows`` is empty or a row lacks a column of :data:`LOG_FEATURES`.
    """
    path = Path(path)
    if not rows:
        raise ValueError(f"{path.name}: refusing to write a shard with no rows")
    missing = sorted(set(LOG_FEATURES) - set(rows[0]))
    if missing:
        raise ValueError(f"{path.name}: rows lack columns {missing}")
    ds = datasets.Dataset.from_list(rows, features=LOG_FEATURES)
    # datasets draws a progress bar per write; one bar per shard is noise
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with atomic_path(path) as tmp:
            ds.to_parquet(str(tmp))
            _fsync(tmp)
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    return path


def write_meta(log_dir: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Write ``meta.json`` of a log directory atomically (JSON, sorted keys)."""
    path = Path(log_dir) / META_FILE
    return atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


def read_meta(log_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``meta.json`` of a log directory.

    Raises:
        FileNotFoundError: the directory has no ``meta.json`` (not written by ``dynprune explore``).
    """
    path = Path(log_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {log_dir} is not a dynprune explore log directory")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- reading


def _read_shard(path: Path) -> pa.Table:
    """Read one shard and cast it to the log schema; raises on a damaged or foreign file."""
    table = pq.read_table(path)
    for name in OPTIONAL_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, type=LOG_FEATURES[name].pa_type))
    missing = sorted(set(LOG_FEATURES) - set(table.column_names))
    if missing:
        raise ValueError(f"missing columns {missing}")
    return table.select(list(LOG_FEATURES)).cast(LOG_FEATURES.arrow_schema)


def check_logs(log_dir: str | os.PathLike[str]) -> list[tuple[Path, str]]:
    """Damaged shards of a log directory: ``[(path, error message), ...]``; empty when all read.

    A shard is damaged when Parquet cannot read it (truncated, overwritten, not Parquet) or
    when it lacks a column of :data:`LOG_FEATURES`.
    """
    bad: list[tuple[Path, str]] = []
    for path in shard_paths(log_dir):
        try:
            _read_shard(path)
        except Exception as err:  # noqa: BLE001 - any failure to read means damaged
            bad.append((path, f"{type(err).__name__}: {err}"))
    return bad


def load_logs(log_dir: str | os.PathLike[str]) -> datasets.Dataset:
    """Every row of every readable shard of a log directory, as one in-memory ``datasets.Dataset``.

    A damaged shard is skipped with a ``RuntimeWarning`` naming the file; the other shards
    load as usual. Rows come in shard-name order, then in visit order within a shard.

    Raises:
        FileNotFoundError: ``log_dir`` does not exist.
    """
    tables = []
    for path in shard_paths(log_dir):
        try:
            tables.append(_read_shard(path))
        except Exception as err:  # noqa: BLE001 - a damaged shard must not hide the others
            warnings.warn(
                f"{path}: skipping damaged log shard ({type(err).__name__}: {err})", RuntimeWarning, stacklevel=2
            )
    table = pa.concat_tables(tables) if tables else LOG_FEATURES.arrow_schema.empty_table()
    return datasets.Dataset(table)


# --------------------------------------------------------------------------- d3rlpy


def to_mdp_dataset(ds: datasets.Dataset, n_actions: int) -> Any:
    """Export logged rows to a d3rlpy ``MDPDataset`` of one-step episodes.

    Every DynPrune-v0 episode is one prompt and one action, so each row becomes its own
    episode (terminal = 1, no next state to bootstrap from). Only rows whose ``action`` is a
    table action (``>= 0``) are kept: a DFS or random layer set that is not in the action
    table has no discrete action to learn. The action space is set explicitly
    (``ActionSpace.DISCRETE``, ``action_size=n_actions``) rather than inferred from the
    actions that happen to appear in the data.

    Args:
        ds: Rows with the :data:`LOG_FEATURES` columns (``load_logs``).
        n_actions: Size of the env's action table (``env.action_space.n``).

    Returns:
        ``d3rlpy.dataset.MDPDataset``.

    Raises:
        ValueError: no row has a table action, an action is ``>= n_actions``, or the
            observations have different lengths.
    """
    import d3rlpy

    if n_actions < 1:
        raise ValueError(f"n_actions must be >= 1, got {n_actions}")
    actions_all = np.asarray(ds["action"], dtype=np.int64)
    keep = np.flatnonzero(actions_all >= 0)
    if keep.size == 0:
        raise ValueError(
            f"none of the {len(ds)} logged rows is a table action (all action = -1); "
            "log with --strategy sweep, or DFS/random whose layer sets match the table"
        )
    actions = actions_all[keep]
    if actions.max() >= n_actions:
        raise ValueError(f"logged action {int(actions.max())} is outside the action table 0..{n_actions - 1}")
    sub = ds.select(keep.tolist())
    obs_rows = sub["observation"]
    lengths = {len(o) for o in obs_rows}
    if len(lengths) != 1:
        raise ValueError(f"observations have different lengths {sorted(lengths)}; logs from different envs mixed")
    observations = np.asarray(obs_rows, dtype=np.float32)
    rewards = np.asarray(sub["reward"], dtype=np.float32)
    # one step per episode: every transition is terminal
    terminals = np.ones(len(keep), dtype=np.float32)
    return d3rlpy.dataset.MDPDataset(
        observations=observations,
        actions=actions,
        rewards=rewards,
        terminals=terminals,
        action_space=d3rlpy.ActionSpace.DISCRETE,
        action_size=int(n_actions),
    )
