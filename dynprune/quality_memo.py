"""An exact memo of teacher-forced quality: one forward pass per (model, adapters, prompt, plan, settings), ever.

The quality half of a reward is deterministic: the same
model, adapters, prompt, plan and generation settings give the same full answer and the same
teacher-forced metrics every time. So a (prompt, plan) pair is measured once and looked up
after that, in memory and optionally on disk.

The key is a SHA-256 of everything the metrics depend on: the model's identity
(``model_id``: name and a weight fingerprint), its dtype and device type (argmaxes can differ
between them), the bytes of every adapter the plan uses, the healing active under the plan
(its weights' fingerprint and group, ``dynprune.healing``; absent when none is), the plan's
layers / heads / channels, the prompt's token ids and the full answer's token ids (which pin the chat template and the
generation settings), and the answer-length limit.

On disk the memo is one JSON file written atomically (temporary file + rename, after merging
what other processes wrote since), every ``flush_every`` new entries and on :meth:`flush`:
a crash loses at most the entries since the last flush, never the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynprune.fileio import atomic_write_json
from dynprune.plan import PruningPlan
from dynprune.types import QualityMetrics

if TYPE_CHECKING:
    from torch import nn

    from dynprune.models import PrunableLM

log = logging.getLogger(__name__)

FORMAT = 1


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's parameter names, shapes, dtypes and bytes (exact identity of its weights)."""
    import torch

    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        t = p.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def quality_key(
    lm: PrunableLM, plan: PruningPlan, prompt_ids: Sequence[int], answer_ids: Sequence[int], max_new_tokens: int
) -> str:
    """The memo key of ``plan`` on a prompt whose full answer is ``answer_ids`` (see the module docstring)."""
    adapters = {
        str(i): module_fingerprint(m if (m := plan.module_for(i)) is not None else lm.adapters[i])
        for i in plan.adapters
    }
    spec = {
        "model": lm.model_id,
        "dtype": str(lm.dtype),
        "device": lm.device.type,
        "adapters": adapters,
        "plan": {k: v for k, v in plan.to_dict().items() if k != "name"},
        "prompt": list(prompt_ids),
        "answer": list(answer_ids),
        "max_new_tokens": int(max_new_tokens),
    }
    healing = lm.healing.key_for(plan) if getattr(lm, "healing", None) is not None else None
    if healing is not None:  # only then: keys of unhealed plans stay what they were
        spec["healing"] = healing
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _to_json(m: QualityMetrics) -> dict[str, Any]:
    # JSON has no inf/nan: a perplexity that overflowed is written as a string and read back
    d = asdict(m)
    return {k: (repr(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _from_json(d: dict[str, Any]) -> QualityMetrics:
    if "fidelity" in d and "token_agreement" not in d:  # a memo written before the rename
        d = {("token_agreement" if k == "fidelity" else k): v for k, v in d.items()}
    return QualityMetrics(**{k: (float(v) if isinstance(v, str) else v) for k, v in d.items()})


class QualityMemo:
    """Teacher-forced metrics by :func:`quality_key`, in memory and optionally in a JSON file.

    Args:
        path: The memo file (read now if it exists; written on flush). None: memory only.
        flush_every: Write the file after this many new entries (and on :meth:`flush`).

    Attributes:
        hits, misses: Lookups answered and not answered since construction.
    """

    def __init__(self, path: str | Path | None = None, flush_every: int = 64) -> None:
        if flush_every < 1:
            raise ValueError(f"flush_every must be >= 1, got {flush_every}")
        self.path = Path(path) if path else None
        self.flush_every = flush_every
        self._entries: dict[str, QualityMetrics] = {}
        self._unsaved = 0
        self.hits = 0
        self.misses = 0
        if self.path is not None and self.path.is_file():
            self._entries.update(self._read(self.path))

    @staticmethod
    def _read(path: Path) -> dict[str, QualityMetrics]:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            return {k: _from_json(v) for k, v in data["entries"].items()}
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
            raise ValueError(f"{path} is not a quality memo file ({e}); delete it to start a new one") from e

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> QualityMetrics | None:
        """The metrics stored under ``key``, or None."""
        hit = self._entries.get(key)
        if hit is None:
            self.misses += 1
        else:
            self.hits += 1
        return hit

    def put(self, key: str, metrics: QualityMetrics) -> None:
        """Store ``metrics`` under ``key``; writes the file every ``flush_every`` new entries."""
        if key in self._entries:
            return
        self._entries[key] = metrics
        self._unsaved += 1
        if self.path is not None and self._unsaved >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write every entry to the file (merged with entries other processes wrote meanwhile), atomically."""
        if self.path is None or not self._unsaved:
            return
        if self.path.is_file():
            try:
                for k, v in self._read(self.path).items():
                    self._entries.setdefault(k, v)
            except ValueError as e:
                log.warning("replacing unreadable quality memo: %s", e)
        atomic_write_json(self.path, {"format": FORMAT, "entries": {k: _to_json(v) for k, v in self._entries.items()}},
                          indent=None)
        self._unsaved = 0

    def __del__(self) -> None:
        try:
            self.flush()
        except Exception:  # interpreter shutdown: nothing more to do
            pass
