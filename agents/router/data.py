"""The router's training data (:func:`load_router_data`).

The Parquet logs of ``dynprune explore`` (DFS and/or random layer sets, any number of log
folders) give each prompt's measured configurations and their scores
(``offline_data.prefs.row_score``); the preference pairs (``dynprune prefs`` file, or derived
from the same logs with the same rule) give (winner, loser) configurations per prompt.
:func:`fbc_targets` picks FBC's target per prompt; :func:`layer_masks` turns layer sets into
the 0/1 masks the losses take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["RouterData", "fbc_targets", "healing_identity", "layer_masks", "load_router_data"]


@dataclass
class RouterData:
    """What the router learns from.

    Attributes:
        num_layers: Decoder layers of the model the logs were measured on.
        texts: ``{prompt id: prompt text}``.
        configs: ``{prompt id: [(pruned layers, score), ...]}``: every measured layer set (DFS/random).
        pairs: Preference pairs ``{"prompt_id", "winner_layers", "loser_layers", ...}``.
        healing: ``"<name>@<fingerprint>"`` of the plan-conditional healing the pruned
            configurations were measured under (``dynprune explore --healing``), or None.
    """

    num_layers: int
    texts: dict[str, str]
    configs: dict[str, list[tuple[tuple[int, ...], float]]]
    pairs: list[dict[str, Any]] = field(default_factory=list)
    healing: str | None = None

    @property
    def prompt_ids(self) -> list[str]:
        """Prompts with configurations or pairs, in first-appearance order."""
        ids = dict.fromkeys(self.configs)
        ids.update(dict.fromkeys(p["prompt_id"] for p in self.pairs))
        return list(ids)


def _read_pairs(path: str | Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no preference pairs file at {path} (expected the Parquet file of dynprune prefs)")
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ValueError(f"{path} is not a readable Parquet file of preference pairs: {e}") from e
    needed = {"prompt_id", "winner_layers", "loser_layers"}
    if not needed <= set(table.column_names):
        raise ValueError(
            f"{path} lacks columns {sorted(needed - set(table.column_names))}; expected {sorted(needed)}"
        )
    if table.num_rows == 0:
        raise ValueError(f"{path} holds no preference pairs (0 rows); DPO and ORPO need at least one")
    return table.to_pylist()


def healing_identity(label: str | None) -> str | None:
    """``"<name>@<fingerprint>"`` of a log row's healing label (``"<name>@<fingerprint>:<group>"``), or None."""
    return None if label is None else label.rsplit(":", 1)[0]


def load_router_data(
    log_dirs: Sequence[str | Path],
    pairs: str | Path | Sequence[Mapping[str, Any]] | None = None,
    prompt_ids: Sequence[str] | None = None,
) -> RouterData:
    """Read logged configurations (and preference pairs) for router training.

    Args:
        log_dirs: Log folders of ``dynprune explore`` (same model; several strategies may be combined).
        pairs: A pairs file (``dynprune prefs``), a list of pair rows, or ``None``: derived from the
            logs with :func:`offline_data.prefs.preference_pairs` (every non-tied pair).
        prompt_ids: Keep only these prompts.

    Raises:
        ValueError: no logs, logs of models with different layer counts, logs measured under different
            healings (a configuration's score depends on the healing it was served with), an empty pairs file.
    """
    from dynprune.tasks import load_prompts
    from offline_data.dataset import load_logs, read_meta
    from offline_data.prefs import configs_per_prompt, preference_pairs

    if not log_dirs:
        raise ValueError("router training needs at least one log folder (dynprune explore --out DIR)")
    rows: list[dict[str, Any]] = []
    num_layers: int | None = None
    sources: set[str] = set()
    for d in log_dirs:
        meta = read_meta(d)
        n = int(meta["num_layers"])
        if num_layers is not None and n != num_layers:
            raise ValueError(f"log folder {d} was measured on a {n}-layer model, the others on {num_layers} layers")
        num_layers = n
        src = meta.get("settings", {}).get("env", {}).get("prompts", "dynprune")
        sources.add(src if isinstance(src, str) else "dynprune")
        rows.extend(load_logs(d).to_list())
    assert num_layers is not None
    # pruned rows only: the none configuration is never healed (logs written before the column: None)
    healings = {healing_identity(r.get("healing")) for r in rows if r["layers"]}
    if len(healings) > 1:
        raise ValueError(f"the logs were measured under different healings {sorted(map(str, healings))} (None: "
                         "unhealed); train a router on logs explored with one healing (dynprune explore --healing DIR)")
    keep = None if prompt_ids is None else set(prompt_ids)
    if keep is not None:
        rows = [r for r in rows if r["prompt_id"] in keep]
    configs = configs_per_prompt(rows)
    if pairs is None:
        pair_rows = preference_pairs(rows)
    elif isinstance(pairs, (str, Path)):
        pair_rows = _read_pairs(pairs)
    else:
        pair_rows = [dict(p) for p in pairs]
    if keep is not None:
        pair_rows = [p for p in pair_rows if p["prompt_id"] in keep]
    texts: dict[str, str] = {}
    for src in sources:
        texts.update({p.id: p.text for p in load_prompts(src, split=None)})
    wanted = set(configs) | {p["prompt_id"] for p in pair_rows}
    missing = sorted(wanted - set(texts))
    if missing:
        raise ValueError(f"prompt ids {missing[:5]} of the logs are not in the prompt source(s) {sorted(sources)}")
    return RouterData(num_layers, {k: texts[k] for k in wanted}, configs, pair_rows, next(iter(healings), None))


def fbc_targets(
    configs: Mapping[str, Sequence[tuple[Sequence[int], float]]], threshold: float
) -> dict[str, tuple[int, ...]]:
    """Per prompt, the successful configuration (score >= ``threshold``) with the most layers pruned.

    Ties on layer count go to the higher score, then to the first logged. Prompts without a
    successful configuration get no target.
    """
    out: dict[str, tuple[int, ...]] = {}
    for pid, items in configs.items():
        best: tuple[int, float, int] | None = None
        for order, (layers, score) in enumerate(items):
            if score < threshold - 1e-9:
                continue
            key = (len(layers), score, -order)
            if best is None or key > best:
                best = key
                out[pid] = tuple(sorted(int(i) for i in layers))
    return out


def layer_masks(layer_sets: Sequence[Sequence[int]], num_layers: int) -> torch.Tensor:
    m = torch.zeros((len(layer_sets), num_layers))
    for i, layers in enumerate(layer_sets):
        for layer in layers:
            if not 0 <= int(layer) < num_layers:
                raise ValueError(f"layer {layer} out of range 0..{num_layers - 1} in a logged configuration")
            m[i, int(layer)] = 1.0
    return m
