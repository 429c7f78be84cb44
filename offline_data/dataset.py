"""Logged exploration data on disk: Parquet shards, their schema, and the d3rlpy export.

A log directory (``dynprune explore --out DIR``) holds Parquet files and nothing else::

    shard-<prompt id>.parquet  every configuration measured on one prompt (one row each)

One shard per prompt, written whole (a temporary file, then ``os.replace``), so a crash
loses at most the prompt in flight and a shard on disk is always complete. Shards are
independent: :func:`load_logs` reads every readable shard and skips a damaged one with a
warning naming the file; :func:`check_logs` lists the damaged ones.

The settings of the exploration (env, strategy), the model and the observation and action
names travel inside every shard, as JSON under the key :data:`META_KEY` of the Parquet
key-value metadata (:func:`read_meta`). So the folder is one Parquet dataset that
``pyarrow.dataset.dataset(DIR)``, ``pandas.read_parquet(DIR)`` and
``datasets.load_dataset("parquet", data_dir=DIR)`` read as is (a ``meta.json`` among the
shards made all three fail with ``ArrowInvalid``; ``datasets`` reads every file that is not
hidden, a leading underscore does not hide one), and shards copied together from several
machines still carry their settings. Folders written before this (:data:`LEGACY_META_FILE`
beside the shards) still read; :func:`migrate_legacy_meta`, which ``dynprune explore`` runs
when it resumes such a folder, moves the settings into the shards.

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
| token_agreement      | float64       | position-wise agreement with the full model's answer (over the longer) |
| prefix_fidelity      | float64, null | share of the full answer before the first difference (what the rewards read) |
| task_score           | float64, null | gold-answer score, null when the prompt has none (or profiled) |
| speedup              | float64       | ``baseline_latency / pruned_latency - 1``                  |
| kept_fraction        | float64       | fraction of matmul FLOPs kept                              |
| reward               | float64       | the env's reward for this configuration                    |
| budget_s             | float64, null | latency budget of the row (latency_budget reward), else null |
| healing              | string, null  | healing active under the plan (``"<name>@<fingerprint>:<group>"``), else null |
| baseline_latency_s, baseline_tokens_per_s | float64 | the full model's latency and throughput  |
| baseline_ppl         | float64       | perplexity of the full model's answer under the full model |
| strategy             | string        | ``"dfs"``, ``"random"`` or ``"sweep"``                     |
| order                | int32         | visit order of the configuration within its prompt         |

Shards of older formats still read. ``prefix_fidelity``, ``budget_s`` and ``healing`` came
after the first format: shards without them read with nulls there (:data:`OPTIONAL_COLUMNS`).
``token_agreement`` was called ``fidelity`` (:data:`RENAMED_COLUMNS`): such a shard reads
with the column under its current name, and :func:`migrate_renamed_columns`, which ``dynprune
explore`` runs when it resumes a folder, rewrites it so the folder stays one dataset.
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

from dynprune.fileio import atomic_path

__all__ = [
    "LEGACY_META_FILE",
    "LOG_FEATURES",
    "META_KEY",
    "OPTIONAL_COLUMNS",
    "RENAMED_COLUMNS",
    "SHARD_PREFIX",
    "check_logs",
    "load_logs",
    "migrate_legacy_meta",
    "migrate_renamed_columns",
    "read_meta",
    "shard_path",
    "shard_paths",
    "to_mdp_dataset",
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
        "token_agreement": datasets.Value("float64"),
        "prefix_fidelity": datasets.Value("float64"),
        "task_score": datasets.Value("float64"),
        "speedup": datasets.Value("float64"),
        "kept_fraction": datasets.Value("float64"),
        "reward": datasets.Value("float64"),
        "budget_s": datasets.Value("float64"),
        "healing": datasets.Value("string"),
        "baseline_latency_s": datasets.Value("float64"),
        "baseline_tokens_per_s": datasets.Value("float64"),
        "baseline_ppl": datasets.Value("float64"),
        "strategy": datasets.Value("string"),
        "order": datasets.Value("int32"),
    }
)

#: Columns added after the first log format: a shard without them still reads, with nulls there.
OPTIONAL_COLUMNS = ("prefix_fidelity", "budget_s", "healing")

#: Columns renamed since the first log format, old name -> current name: a shard with the old name
#: and without the current one reads with the column renamed. ``fidelity`` was the token agreement,
#: which is not the rewards' prefix fidelity (one name, one quantity).
RENAMED_COLUMNS = {"fidelity": "token_agreement"}

#: Key of the exploration's settings (JSON) in every shard's Parquet key-value metadata.
META_KEY = b"dynprune"

#: Settings file of log directories written before the settings moved into the shards.
LEGACY_META_FILE = "meta.json"

#: Shard files are ``shard-<prompt id>.parquet``.
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".parquet"

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
#: Longest shard file name: file systems allow 255 bytes, and an atomic write's temporary name adds
#: about 14 more to the part of the name it keeps (dynprune.fileio); room is left for both.
_MAX_SHARD_NAME = 200


# --------------------------------------------------------------------------- paths


def shard_path(log_dir: str | os.PathLike[str], prompt_id: str) -> Path:
    """The shard file of one prompt: ``<log_dir>/shard-<prompt id>.parquet``.

    Characters outside ``[A-Za-z0-9._-]`` become ``_`` and the name then gets a short hash of
    the real id, so two ids never share a file and the name stays portable. An id too long for a
    file name is cut and gets the hash too (the shard's rows carry the whole id).
    """
    safe = _SAFE.sub("_", prompt_id)
    room = _MAX_SHARD_NAME - len(SHARD_PREFIX) - len(SHARD_SUFFIX)
    if safe != prompt_id or safe.startswith(".") or len(safe) > room:
        safe = f"{safe.lstrip('.')[: room - 9]}-{hashlib.sha1(prompt_id.encode()).hexdigest()[:8]}"
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


def write_shard(path: str | os.PathLike[str], rows: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> Path:
    """Write one prompt's rows as a Parquet shard, atomically.

    The rows go through ``datasets.Dataset.from_list(rows, features=LOG_FEATURES)`` (the
    schema, and its ``huggingface`` features metadata) into ``.<name>.tmp`` beside the target,
    which is fsync-ed and then renamed over ``path``: a reader (or a crash) never sees half a
    shard.

    Args:
        path: The shard file (:func:`shard_path`).
        rows: The prompt's rows, with every column of :data:`LOG_FEATURES`.
        meta: The exploration's settings, stored as JSON under :data:`META_KEY` (:func:`read_meta`).

    Raises:
        ValueError: ``rows`` is empty or a row lacks a column of :data:`LOG_FEATURES`.
    """
    path = Path(path)
    if not rows:
        raise ValueError(f"{path.name}: refusing to write a shard with no rows")
    missing = sorted(set(LOG_FEATURES) - set(rows[0]))
    if missing:
        raise ValueError(f"{path.name}: rows lack columns {missing}")
    table = datasets.Dataset.from_list(rows, features=LOG_FEATURES).data.table
    _write_table(path, table, meta)
    return path


def _write_table(path: Path, table: pa.Table, meta: dict[str, Any] | None) -> None:
    """Write ``table`` to ``path`` atomically, with ``meta`` under :data:`META_KEY` (other metadata kept)."""
    if meta is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: _meta_json(meta)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
        _fsync(tmp)


def _meta_json(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, default=str).encode("utf-8")


def _current_names(meta: Any) -> Any:
    """``meta`` with the explore setting ``max_scenarios`` under its current name ``max_configs`` (logs written
    before the rename compare equal to, and resume as, the same settings written now)."""
    explore = meta.get("settings", {}).get("explore") if isinstance(meta, dict) else None
    if isinstance(explore, dict) and "max_scenarios" in explore and "max_configs" not in explore:
        renamed = {("max_configs" if k == "max_scenarios" else k): v for k, v in explore.items()}
        return {**meta, "settings": {**meta["settings"], "explore": renamed}}
    return meta


def _shard_meta(path: Path) -> dict[str, Any] | None:
    """The settings stored in one shard's footer; None when it has none (raises when unreadable)."""
    raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    return None if raw is None else _current_names(json.loads(raw))


def read_meta(log_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The settings of a log directory: what every shard carries under :data:`META_KEY`.

    Keys: ``format``, ``settings`` (``env`` and ``explore``, what must match for two runs to
    share a folder), ``model_id``, ``num_layers``, ``observation_names``, ``action_names``,
    ``n_actions``. Reads the footers only. A folder written before the settings moved into the
    shards is read from its :data:`LEGACY_META_FILE`. Damaged shards are skipped here
    (:func:`check_logs` reports them).

    Raises:
        FileNotFoundError: no shard carries settings and there is no legacy file (not written
            by ``dynprune explore``, or nothing finished yet).
        ValueError: two shards carry different settings (two explorations copied into one folder).
    """
    log_dir = Path(log_dir)
    found: tuple[Path, dict[str, Any]] | None = None
    for path in shard_paths(log_dir) if log_dir.is_dir() else []:
        try:
            meta = _shard_meta(path)
        except Exception:  # noqa: BLE001 - a damaged shard is check_logs' business, not a reason to fail here
            continue
        if meta is None:
            continue
        if found is None:
            found = (path, meta)
        elif meta != found[1]:
            raise ValueError(
                f"{found[0].name} and {path.name} in {log_dir} were explored with different settings "
                f"({found[1].get('settings')} vs {meta.get('settings')}); keep one exploration per folder"
            )
    if found is not None:
        return found[1]
    legacy = log_dir / LEGACY_META_FILE
    if legacy.is_file():
        return _current_names(json.loads(legacy.read_text()))
    raise FileNotFoundError(
        f"{log_dir}: no shard with dynprune settings (and no {LEGACY_META_FILE}): "
        "not a dynprune explore log directory, or no prompt finished yet"
    )


def migrate_legacy_meta(log_dir: str | os.PathLike[str]) -> int:
    """Move the settings of an old log directory from :data:`LEGACY_META_FILE` into its shards.

    Each readable shard without settings is rewritten (atomically, rows unchanged) with the
    legacy file's settings under :data:`META_KEY`; then the legacy file, which ``dynprune
    explore`` wrote, is removed, and the folder reads as one Parquet dataset. Nothing happens
    when there is no legacy file. A legacy file that is not ours (no ``settings``, or settings
    that differ from the shards') is left where it is, and so is every other file.

    Returns:
        The number of shards rewritten.

    Raises:
        ValueError: the legacy file is not a dynprune settings file, or disagrees with the shards.
    """
    log_dir = Path(log_dir)
    legacy = log_dir / LEGACY_META_FILE
    if not legacy.is_file():
        return 0
    try:
        meta = _current_names(json.loads(legacy.read_text()))
    except ValueError as err:
        raise ValueError(f"{legacy} is not a dynprune settings file ({err}); move it out of the log folder") from err
    if not isinstance(meta, dict) or "settings" not in meta:
        raise ValueError(f"{legacy} is not a dynprune settings file (no 'settings'); move it out of the log folder")
    bare: list[Path] = []
    for path in shard_paths(log_dir):
        try:
            current = _shard_meta(path)
        except Exception:  # noqa: BLE001 - a damaged shard is measured again by explore; leave it
            continue
        if current is None:
            bare.append(path)
        elif current.get("settings") != meta["settings"]:
            raise ValueError(f"{path.name} and {legacy} disagree on the settings; not migrating {log_dir}")
    for path in bare:
        _write_table(path, pq.read_table(path), meta)
    # every shard now carries what the legacy file said; it was ours (checked above)
    legacy.unlink()
    return len(bare)


def migrate_renamed_columns(log_dir: str | os.PathLike[str]) -> int:
    """Rewrite the shards of a log directory that still carry a column under its old name (:data:`RENAMED_COLUMNS`).

    Each such readable shard is rewritten (atomically) as :func:`load_logs` reads it: the
    column under its current name, in the current schema (a column added since is null), its
    settings kept. Shards written since already have the current names, and a folder mixing the
    two is two schemas to ``pyarrow.dataset``, ``pandas`` and ``datasets``, which take one schema
    for the whole folder; after this it is one dataset again. Current and damaged shards are
    left as they are (explore measures a damaged one again).

    Returns:
        The number of shards rewritten.
    """
    rewritten = 0
    for path in shard_paths(log_dir):
        try:
            names = pq.read_schema(path).names
            if not any(old in names and new not in names for old, new in RENAMED_COLUMNS.items()):
                continue
            table, meta = _read_shard(path), _shard_meta(path)
        except Exception:  # noqa: BLE001 - a damaged shard is measured again by explore; leave it
            continue
        _write_table(path, table, meta)
        rewritten += 1
    return rewritten


# --------------------------------------------------------------------------- reading


def _current_columns(table: pa.Table) -> pa.Table:
    """``table`` with each old column of :data:`RENAMED_COLUMNS` renamed (when the current name is not there)."""
    names = table.column_names
    renames = {old: new for old, new in RENAMED_COLUMNS.items() if old in names and new not in names}
    return table.rename_columns([renames.get(c, c) for c in names]) if renames else table


def _read_shard(path: Path) -> pa.Table:
    """Read one shard and cast it to the log schema; raises on a damaged or foreign file."""
    table = _current_columns(pq.read_table(path))
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
