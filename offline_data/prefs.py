"""Preference pairs from logged exploration: which of two layer sets was better on a prompt.

For a router trained with preference losses (FBC, DPO, ORPO), every pair of layer sets
measured on the same prompt is a comparison. The rule (the thesis'): the **winner** has the
higher score; at equal score, the one with **more layers pruned** wins (same quality,
cheaper). Pairs equal in both are ties and give no pair.

The score of a row is its task score when the prompt has one (live timing), else its token
agreement with the full model: the same score the DFS explores on (:func:`row_score`). Only layer-set
plans take part (a table action that slices heads or FFN channels is not a layer set); a
layer set logged twice on one prompt (a DFS row and a sweep row) counts once, with its
first row.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from dynprune.fileio import atomic_path
from dynprune.rewards import quality

__all__ = ["MODES", "PAIR_FEATURES", "compare", "preference_pairs", "row_score", "write_pairs"]

#: Pair-selection modes of :func:`preference_pairs`.
MODES = ("all", "random")

#: Schema of a written pair.
PAIR_FEATURES = datasets.Features(
    {
        "prompt_id": datasets.Value("string"),
        "winner_layers": datasets.Sequence(datasets.Value("int32")),
        "loser_layers": datasets.Sequence(datasets.Value("int32")),
        "winner_score": datasets.Value("float64"),
        "loser_score": datasets.Value("float64"),
    }
)

#: Scores closer than this are equal (the tie-break on layer count applies).
SCORE_TOL = 1e-9


def row_score(row: Mapping[str, Any]) -> float:
    """The score of a logged row: :func:`dynprune.rewards.quality` of its task score when it has one from a
    live generation, else of its token agreement with the full model (the ``token_agreement`` column,
    which every log has; :func:`~offline_data.dataset.load_logs` reads an old log's ``fidelity`` under this name).

    Profiled timing has no pruned generation, so there a task score is only known for plans
    that reproduce the full model's answer (it is copied from the full model) and is missing
    for the others; mixing the two scales on one prompt would rank a set by which score it
    happened to get. So a profiled row (``timing`` other than ``"live"``) is always scored by
    token agreement; a live row of a prompt with ground truth by its task score. A row without a
    ``timing`` key counts as live.
    """
    live = row.get("timing", "live") == "live"
    return quality(row.get("task_score") if live else None, row["token_agreement"])


def compare(score_a: float, layers_a: int, score_b: float, layers_b: int) -> int:
    """``1`` when A wins, ``-1`` when B wins, ``0`` for a tie.

    Higher score wins; at equal score (within :data:`SCORE_TOL`) more layers pruned wins.
    """
    if not math.isclose(score_a, score_b, rel_tol=0.0, abs_tol=SCORE_TOL):
        return 1 if score_a > score_b else -1
    if layers_a != layers_b:
        return 1 if layers_a > layers_b else -1
    return 0


def _is_layer_set(row: Mapping[str, Any]) -> bool:
    """True when the row's plan only removes whole layers (or nothing)."""
    plan = row.get("plan")
    if not plan:
        return True
    data = json.loads(plan) if isinstance(plan, str) else dict(plan)
    return not (data.get("heads") or data.get("ffn"))


def configs_per_prompt(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[tuple[int, ...], float]]]:
    """``{prompt id: [(layers, score), ...]}`` in first-appearance order, one entry per layer set."""
    out: dict[str, list[tuple[tuple[int, ...], float]]] = {}
    seen: dict[str, set[tuple[int, ...]]] = {}
    for row in rows:
        if not _is_layer_set(row):
            continue
        pid = str(row["prompt_id"])
        layers = tuple(sorted(int(i) for i in row["layers"]))
        if layers in seen.setdefault(pid, set()):
            continue
        seen[pid].add(layers)
        out.setdefault(pid, []).append((layers, row_score(row)))
    return out


def preference_pairs(
    ds: datasets.Dataset | Iterable[Mapping[str, Any]],
    mode: str = "all",
    seed: int = 0,
    max_pairs_per_prompt: int | None = None,
) -> list[dict[str, Any]]:
    """Winner/loser pairs of layer sets measured on the same prompt.

    Args:
        ds: Logged rows (``offline_data.dataset.load_logs``) or any iterable of row mappings
            with ``prompt_id``, ``layers``, ``token_agreement``, ``task_score`` (and optionally ``plan``).
        mode: ``"all"``: every non-tied pair of each prompt, in visit order (the first
            ``max_pairs_per_prompt`` when given). ``"random"``: ``max_pairs_per_prompt``
            distinct non-tied pairs drawn at random per prompt (default: as many as the
            prompt has layer sets).
        seed: Seed of ``"random"``; combined with each prompt id, so a prompt's pairs do not
            depend on the other prompts.
        max_pairs_per_prompt: Cap on pairs per prompt (``None``: see ``mode``).

    Returns:
        Rows ``{"prompt_id", "winner_layers", "loser_layers", "winner_score", "loser_score"}``,
        grouped by prompt in first-appearance order.

    Example:
        >>> rows = [{"prompt_id": "p", "layers": [], "token_agreement": 1.0, "task_score": None},
        ...         {"prompt_id": "p", "layers": [2], "token_agreement": 1.0, "task_score": None}]
        >>> preference_pairs(rows)[0]["winner_layers"]  # same score: more layers pruned wins
        [2]
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if max_pairs_per_prompt is not None and max_pairs_per_prompt < 0:
        raise ValueError(f"max_pairs_per_prompt must be >= 0 or None, got {max_pairs_per_prompt}")
    out: list[dict[str, Any]] = []
    for pid, configs in configs_per_prompt(ds).items():
        pairs: list[dict[str, Any]] = []
        for i in range(len(configs)):
            for j in range(i + 1, len(configs)):
                (la, sa), (lb, sb) = configs[i], configs[j]
                verdict = compare(sa, len(la), sb, len(lb))
                if verdict == 0:
                    continue
                (wl, ws), (ll, ls) = ((la, sa), (lb, sb)) if verdict > 0 else ((lb, sb), (la, sa))
                pairs.append(
                    {"prompt_id": pid, "winner_layers": list(wl), "loser_layers": list(ll),
                     "winner_score": ws, "loser_score": ls}
                )
        if mode == "all":
            out.extend(pairs if max_pairs_per_prompt is None else pairs[:max_pairs_per_prompt])
            continue
        k = len(configs) if max_pairs_per_prompt is None else max_pairs_per_prompt
        k = min(k, len(pairs))
        rng = np.random.default_rng([int(seed), zlib.crc32(pid.encode("utf-8"))])
        for idx in sorted(rng.choice(len(pairs), size=k, replace=False).tolist()):
            out.append(pairs[idx])
    return out


def write_pairs(pairs: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write pairs to one Parquet file with ``datasets`` (temporary file, then rename)."""
    path = Path(path)
    if not pairs:
        raise ValueError(f"no preference pairs to write to {path}: every prompt's layer sets tie (or there are none)")
    ds = datasets.Dataset.from_list(pairs, features=PAIR_FEATURES)
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        with atomic_path(path) as tmp:
            ds.to_parquet(str(tmp))
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    return path
