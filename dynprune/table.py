"""A reward table: every (prompt, action) of an action table measured once, stored in Parquet.

In the spirit of NAS-Bench-201 (Dong and Yang 2020: every architecture of a search space trained
once, then served from a table), :func:`build_table` measures every action of a table on every
prompt of a prompt set with ``timing="modelled"``: quality exact from the teacher-forced pass
(through the quality memo), latency from the calibrated latency model, both stored. The
``DynPruneTable-v0`` environment (``envs/table_env.py``) then serves the same observations,
rewards, load scenarios and budgets as ``DynPrune-v0`` from the table, without a model.

File layout: one row per prompt (its id, split, category, text, prompt features, answer
length, full model's perplexity, task score and modelled latency, its mean-pooled prompt
embedding), with one list per measured quantity holding one value per action (speed-up,
latency, perplexity, fidelity, exact match, prefix fidelity, task score, kept fraction).
The schema's metadata (key ``dynprune``) holds the model identity, generation settings, the
action table and its plans, the latency model used, and the vocabulary's mean embedding (for
the ``prompt_embedding=N`` observation).

:func:`build_table` is resumable: it rewrites the file atomically every ``flush_every`` prompts
and, given an existing file built with the same settings, measures only the prompts it lacks.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dynprune.fileio import atomic_path

if TYPE_CHECKING:
    from dynprune.actions import ActionEntry
    from dynprune.latency_model import LatencyModel
    from dynprune.models import PrunableLM
    from dynprune.types import Prompt

FORMAT = 1
META_KEY = b"dynprune"
ACTION_COLUMNS = ("speedup", "latency_s", "ppl", "token_agreement", "exact_match", "prefix_fidelity", "task_score",
                  "kept_fraction")
"""Per-action quantities, one list of length (actions) per prompt row, as ``Evaluation`` has them."""
PROMPT_COLUMNS = ("prompt_id", "split", "category", "text", "prompt_tokens", "feature_tokens", "prompt_perplexity",
                  "complexity", "answer_tokens", "baseline_ppl", "baseline_task_score", "full_latency_s", "embedding")


@dataclass(frozen=True)
class RewardTable:
    """A reward table in memory: per-prompt columns, per-(prompt, action) matrices and the build's metadata.

    Attributes:
        meta: The build's metadata (model, settings, actions, latency model, vocabulary mean embedding).
        prompts: Column name -> one value per prompt (:data:`PROMPT_COLUMNS`; ``embedding`` is prompts x hidden).
        actions: Column name -> prompts x actions float64 matrix (:data:`ACTION_COLUMNS`; a missing
            task score is NaN).
    """

    meta: dict[str, Any]
    prompts: dict[str, np.ndarray]
    actions: dict[str, np.ndarray]

    @property
    def action_names(self) -> tuple[str, ...]:
        """The action table's names, in action-id order."""
        return tuple(a["name"] for a in self.meta["actions"])

    @property
    def n_prompts(self) -> int:
        """Rows (prompts) in the table."""
        return len(self.prompts["prompt_id"])

    def select(self, split: str | None) -> RewardTable:
        """The rows of one split (``None``: all), in file order."""
        if split is None:
            return self
        keep = np.flatnonzero(self.prompts["split"] == split)
        if not len(keep):
            have = sorted(set(self.prompts["split"]))
            raise ValueError(f"the table has no prompts of split {split!r}; it has {have}")
        return RewardTable(self.meta, {k: v[keep] for k, v in self.prompts.items()},
                           {k: v[keep] for k, v in self.actions.items()})


def table_meta(lm: PrunableLM, max_new_tokens: int, actions: Sequence[ActionEntry], plans: Sequence[Any],
               latency: LatencyModel, prompts_source: str, timing: str = "modelled") -> dict[str, Any]:
    """The metadata that identifies a table build (a resumed build must match it)."""
    table = lm.model.get_input_embeddings().weight
    healing = getattr(lm, "healing", None)
    return {
        "format": FORMAT,
        "model": lm.name,
        "model_id": lm.model_id,
        "device": lm.device.type,
        "dtype": str(lm.dtype).replace("torch.", ""),
        "adapters": sorted(int(i) for i in lm.adapters),
        "max_new_tokens": int(max_new_tokens),
        "prompts": prompts_source,
        "timing": timing,
        # the plan-conditional healing served under pruned plans (dynprune.healing), or None
        # labels: each action's "<name>@<fingerprint>:<group>" (None: served unhealed), as DynPrune-v0 records them
        "healing": None if healing is None else {"name": healing.name, "fingerprint": healing.fingerprint,
                                                 "labels": [healing.label(p) for p in plans]},
        "actions": [{"name": e.name, "kind": e.kind, "amount": e.amount, "plan": p.to_dict()}
                    for e, p in zip(actions, plans, strict=True)],
        "latency_model": latency.to_dict(),
        "hidden_size": lm.geometry.hidden_size,
        "vocab_mean_embedding": table.detach().float().mean(dim=0).cpu().double().tolist(),
    }


def _identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What must agree for a resumed build to add rows to an existing table."""
    keep = ("format", "model_id", "device", "dtype", "adapters", "max_new_tokens", "prompts", "actions", "timing",
            "healing")
    ident = {k: meta.get(k) for k in keep}
    lat = meta.get("latency_model") or {}
    ident["latency"] = (lat.get("key"), lat.get("prefill"), lat.get("decode"))
    return ident


def _write(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, Any] = {}
    for name in PROMPT_COLUMNS:
        values = [r[name] for r in rows]
        if name == "embedding":
            cols[name] = pa.array(values, type=pa.list_(pa.float32()))
        elif name == "baseline_task_score":
            cols[name] = pa.array(values, type=pa.float64())
        else:
            cols[name] = pa.array(values)
    for name in ACTION_COLUMNS:
        cols[name] = pa.array([r[name] for r in rows], type=pa.list_(pa.float64()))
    table = pa.table(cols).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(path: str | Path) -> RewardTable:
    """Read a table file written by :func:`build_table`."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reward table at {path}; build one with: dynprune table build --out {path}")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own error types for damaged files
        raise ValueError(f"{path} is not a Parquet reward table: {e}") from e
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError(f"{path} has no dynprune metadata; not a reward table (build one with dynprune table build)")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: reward table format {meta.get('format')!r}, expected {FORMAT}; rebuild it")
    if "fidelity" in table.column_names and "token_agreement" not in table.column_names:  # built before the rename
        table = table.rename_columns(["token_agreement" if c == "fidelity" else c for c in table.column_names])
    missing = [c for c in (*PROMPT_COLUMNS, *ACTION_COLUMNS) if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; rebuild it with dynprune table build")
    prompts: dict[str, np.ndarray] = {}
    for name in PROMPT_COLUMNS:
        col = table.column(name).to_pylist()
        if name == "embedding":
            prompts[name] = np.array(col, dtype=np.float32).reshape(len(col), -1)
        elif name == "baseline_task_score":
            prompts[name] = np.array([math.nan if v is None else v for v in col], dtype=np.float64)
        else:
            prompts[name] = np.array(col)
    n_actions = len(meta["actions"])
    actions = {}
    for name in ACTION_COLUMNS:
        col = table.column(name).to_pylist()
        arr = np.array([[math.nan if v is None else v for v in row] for row in col], dtype=np.float64)
        if arr.shape != (len(col), n_actions):
            raise ValueError(f"{path}: column {name} has shape {arr.shape}, expected ({len(col)}, {n_actions})")
        actions[name] = arr.reshape(len(col), n_actions)
    return RewardTable(meta, prompts, actions)


def _existing_rows(path: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of a table file built with the same settings (resume); raises when the settings differ."""
    if not path.is_file():
        return []
    old = read_table(path)
    if _identity(old.meta) != _identity(meta):
        diff = sorted(k for k, v in _identity(meta).items() if _identity(old.meta).get(k) != v)
        raise ValueError(f"{path} was built with other settings ({', '.join(diff)} differ); "
                         "write to another --out, or delete the file to rebuild")
    rows = []
    for i in range(old.n_prompts):
        row: dict[str, Any] = {}
        for name in PROMPT_COLUMNS:
            v = old.prompts[name][i]
            if name == "embedding":
                row[name] = v.tolist()
            elif name == "baseline_task_score":
                row[name] = None if math.isnan(v) else float(v)
            else:
                row[name] = v.item() if hasattr(v, "item") else v
        for name in ACTION_COLUMNS:
            row[name] = [None if math.isnan(x) else float(x) for x in old.actions[name][i]]
        rows.append(row)
    return rows


def build_table(
    lm: PrunableLM,
    prompts: Sequence[Prompt],
    out: str | Path,
    *,
    max_new_tokens: int = 32,
    actions: Sequence[ActionEntry] | None = None,
    prompts_source: str = "dynprune",
    cache_file: str | Path | None = None,
    memo_file: str | Path | None = None,
    latency_model: LatencyModel | None = None,
    flush_every: int = 10,
    progress: Callable[[str], None] | None = print,
    timing: str = "modelled",
) -> Path:
    """Measure every action of ``actions`` (default table) on every prompt and write the table to ``out``.

    ``timing="modelled"``: the full model's answer once per prompt (``cache_file`` keeps answers
    across runs), one teacher-forced pass per (prompt, action) (``memo_file`` keeps them),
    latency from ``latency_model`` (default: the cached fit of ``lm`` as it runs now).
    ``timing="live"``: each plan generates its own greedy answer timed beside the full model
    (``dynprune.paired_timing``: forward passes interleaved), so speed-up, token agreement,
    prefix fidelity and task score are those of the served answer (the honest live step of
    DynPrune-v0); the full model's latency is its own timed generation. A held-out live table
    scores every agent on the same measurements. With healing attached (``lm.set_healing``)
    pruned plans are served healed; the metadata records which healing.
    Resumes from an existing ``out`` built with the same settings.
    """
    from dynprune.actions import DEFAULT_TABLE, entry_plan
    from dynprune.plan import NO_PRUNING
    from dynprune.runtime import PlanEvaluator

    if flush_every < 1:
        raise ValueError(f"flush_every must be >= 1, got {flush_every}")
    if timing not in ("modelled", "live"):
        raise ValueError(f"timing must be 'modelled' or 'live' for a table, got {timing!r}")
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("prompt ids must be unique in a table")
    out = Path(out)
    actions = tuple(actions or DEFAULT_TABLE)
    ev = PlanEvaluator(lm, max_new_tokens, cache_file=cache_file, memo=memo_file, latency_model=latency_model)
    plans = [entry_plan(e, lm, use_adapters=bool(lm.adapters)) for e in actions]
    meta = table_meta(lm, max_new_tokens, actions, plans, ev.latency_model, prompts_source, timing)
    done = {r["prompt_id"]: r for r in _existing_rows(out, meta)}
    todo = [p for p in prompts if p.id not in done]
    say = progress or (lambda line: None)
    say(f"[table] {lm.model_id}: {len(prompts)} prompts x {len(actions)} actions; {len(done)} already in {out}, "
        f"{len(todo)} to measure")
    order = {pid: i for i, pid in enumerate(ids)}
    t0 = time.perf_counter()

    def write() -> None:
        rows = sorted(done.values(), key=lambda r: order.get(r["prompt_id"], len(order)))
        _write(out, meta, rows)
        ev.memo.flush()

    for k, prompt in enumerate(todo, 1):
        base = ev.baseline(prompt)
        evals = [ev.evaluate(prompt, plan, timing) for plan in plans]
        done[prompt.id] = {
            "prompt_id": prompt.id, "split": prompt.split, "category": prompt.category, "text": prompt.text,
            "prompt_tokens": len(base.prompt_ids), "feature_tokens": base.features.n_tokens,
            "prompt_perplexity": base.features.perplexity, "complexity": base.features.complexity,
            "answer_tokens": len(base.answer_ids), "baseline_ppl": base.ppl,
            "baseline_task_score": base.task_score,
            "full_latency_s": ev.modelled_latency_s(NO_PRUNING, base) if timing == "modelled" else base.latency_s,
            "embedding": lm.prompt_embedding(prompt.text).tolist(),
            **{name: [getattr(e, name) for e in evals] for name in ACTION_COLUMNS},
        }
        if k % flush_every == 0 or k == len(todo):
            write()
            el = time.perf_counter() - t0
            say(f"[table] {len(done)}/{len(prompts)} prompts ({k / el:.2f} prompts/s, "
                f"ETA {el / k * (len(todo) - k):.0f} s) -> {out}")
    if not todo:
        write()
    return out


def table_summary(table: RewardTable) -> dict[str, Any]:
    """Mean of each per-action quantity per action, and the prompt counts per split (``dynprune table info``)."""
    splits = {str(s): int((table.prompts["split"] == s).sum()) for s in sorted(set(table.prompts["split"]))}
    per_action = {
        name: {col: float(np.nanmean(table.actions[col][:, a])) for col in ("speedup", "prefix_fidelity", "ppl")}
        for a, name in enumerate(table.action_names)
    }
    return {"model_id": table.meta["model_id"], "prompts": table.n_prompts, "splits": splits,
            "max_new_tokens": table.meta["max_new_tokens"], "actions": per_action,
            "latency_model": {"key": table.meta["latency_model"]["key"],
                              "holdout": table.meta["latency_model"].get("holdout")}}

