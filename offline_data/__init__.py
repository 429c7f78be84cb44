"""Exploration that logs data, logged datasets, preference pairs and the d3rlpy export.

- :mod:`offline_data.explore`: DFS and random search over layer sets and a sweep of the
  action table, measured on real prompts and written as one Parquet shard per prompt;
  resumable, and split over worker processes (or Ray tasks) by prompt id.
- :mod:`offline_data.ray_backend`: the same workers as Ray tasks (``backend="ray"``).
- :mod:`offline_data.dataset`: the shard schema, :func:`load_logs` / :func:`check_logs`
  (a damaged shard is reported by name, the others stay usable), :func:`read_meta` (the
  settings every shard carries) and :func:`to_mdp_dataset` (d3rlpy ``MDPDataset`` of
  one-step episodes).
- :mod:`offline_data.minari_export`: :func:`to_minari` (a Minari dataset that recovers the
  logged env) and :func:`to_d3rlpy` (a Minari dataset into d3rlpy, observations beside their
  actions).
- :mod:`offline_data.relabel`: latency-budget rows under more budgets (hindsight relabelling).
- :mod:`offline_data.prefs`: winner/loser pairs of layer sets for preference training.
- :mod:`offline_data.cli`: ``dynprune explore | prefs | minari`` (``dynprune offline``, which trains
  agents on the logs, is :mod:`agents.offline_cli`: the agents sit above the data).

The names below are imported on first access, so ``import offline_data`` loads neither
``datasets`` nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ExploreConfig": "offline_data.explore",
    "ExploreFailed": "offline_data.explore",
    "dfs_configs": "offline_data.explore",
    "explore": "offline_data.explore",
    "random_configs": "offline_data.explore",
    "run_worker": "offline_data.explore",
    "split_round_robin": "offline_data.explore",
    "LOG_FEATURES": "offline_data.dataset",
    "check_logs": "offline_data.dataset",
    "load_logs": "offline_data.dataset",
    "migrate_legacy_meta": "offline_data.dataset",
    "migrate_renamed_columns": "offline_data.dataset",
    "read_meta": "offline_data.dataset",
    "to_mdp_dataset": "offline_data.dataset",
    "to_d3rlpy": "offline_data.minari_export",
    "to_minari": "offline_data.minari_export",
    "budget_span": "offline_data.relabel",
    "relabel_budgets": "offline_data.relabel",
    "preference_pairs": "offline_data.prefs",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'offline_data' has no attribute {name!r}")


__all__ = sorted(_LAZY)
