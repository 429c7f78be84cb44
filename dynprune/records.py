"""Read and write run logs: one JSON object per line (JSON Lines).

A run writes ``<run_dir>/metrics.jsonl`` (one :class:`~dynprune.types.StepRecord`
per environment step), ``<run_dir>/train_log.jsonl`` (training progress) and
``<run_dir>/test/<agent>.jsonl`` (StepRecords of one evaluated agent).

Crash safety works in two halves:

- :func:`append_record` writes one whole line, then flushes and ``fsync``-s, so a
  crash can only ever leave the *last* line half-written. Before appending it cuts
  such a half-written tail off, so a resumed run never glues a new record onto it.
- :func:`read_jsonl` / :func:`read_records` skip a malformed *last* line with a
  warning (a crash mid-write) but raise ``ValueError`` naming ``file:line`` for a
  malformed line anywhere else (that is corruption, not a crash).

:func:`summarise` turns records into per-agent (or per-action) means. Whole files
are written with :mod:`dynprune.fileio`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypedDict

from dynprune.types import StepRecord

__all__ = [
    "GroupSummary",
    "append_record",
    "keep_first_lines",
    "read_jsonl",
    "read_records",
    "record_from_dict",
    "summarise",
]

_FIELDS = {f.name: f for f in dataclasses.fields(StepRecord)}
_REQUIRED = [
    name for name, f in _FIELDS.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
]


# --------------------------------------------------------------------------- writing


def _cut_partial_tail(path: Path) -> None:
    """Drop a half-written last line (no trailing newline) left by a crash, with a warning."""
    with open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        # walk back in chunks to the last newline; everything after it is the broken tail
        pos, block = size, 4096
        cut = 0
        while pos > 0:
            start = max(0, pos - block)
            fh.seek(start)
            chunk = fh.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                cut = start + i + 1
                break
            pos = start
        fh.seek(cut)
        tail = fh.read(size - cut)
        # a complete JSON object that merely lacks its newline is kept: add the newline
        try:
            complete = isinstance(json.loads(tail), dict)
        except ValueError:
            complete = False
        if not complete:
            warnings.warn(
                f"{path}: dropping a half-written last line ({size - cut} bytes) before appending",
                RuntimeWarning,
                stacklevel=3,
            )
            fh.truncate(cut)
        else:
            fh.seek(size)
            fh.write(b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def append_record(path: str | os.PathLike[str], record: StepRecord | Mapping[str, Any]) -> None:
    """Append one record to a JSON Lines file as a single line, then flush and fsync.

    ``record`` is a :class:`StepRecord` (written as ``dataclasses.asdict``) or any
    JSON-serialisable mapping (e.g. a ``train_log.jsonl`` entry). Missing parent folders
    are created. A half-written last line left by an earlier crash is removed first
    (with a ``RuntimeWarning``), so every line stays a whole JSON object.
    """
    path = Path(path)
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        data: Any = dataclasses.asdict(record)
    elif isinstance(record, Mapping):
        data = dict(record)
    else:
        raise TypeError(f"expected a StepRecord or a mapping, got {type(record).__name__}")
    # serialise before touching the file: a bad value must not leave half a line behind
    line = (json.dumps(data, separators=(",", ":")) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _cut_partial_tail(path)
    with open(path, "ab") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def keep_first_lines(path: str | os.PathLike[str], keep: int) -> int:
    """Cut a JSON Lines file after its first ``keep`` lines (blank lines not counted); return lines dropped.

    Resuming a run from a checkpoint uses it to drop the records written after that
    checkpoint (they are measured again), so no step is logged twice. A half-written
    last line is dropped with the rest. The file is cut in place and fsync-ed; cutting
    again to the same length is a no-op, so a crash during the cut is harmless.

    Raises:
        ValueError: ``keep`` is negative.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    kept, cut = 0, 0
    while kept < keep:
        end = data.find(b"\n", cut)
        if end < 0:  # fewer whole lines than asked: keep them all, drop only a half-written tail
            break
        if data[cut:end].strip():
            kept += 1
        cut = end + 1
    dropped = sum(1 for line in data[cut:].split(b"\n") if line.strip())
    if cut < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
    return dropped


# --------------------------------------------------------------------------- reading


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)``; skip blank lines and a broken last line; raise on others."""
    # bytes, not text: a crash can cut a multi-byte character in half on the last line
    lines = path.read_bytes().split(b"\n")
    # index of the last non-blank line: the only one a crash can have cut short
    last = max((i for i, s in enumerate(lines) if s.strip()), default=-1)
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        lineno = i + 1
        try:
            obj = json.loads(raw)
        except ValueError as err:
            if i == last:
                warnings.warn(
                    f"{path}:{lineno}: skipping a truncated last line ({err})",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return
            raise ValueError(f"{path}:{lineno}: malformed JSON line: {err}") from err
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON Lines file into a list of dicts.

    Blank lines are ignored. A malformed last line (a crash mid-write) is skipped with a
    ``RuntimeWarning`` naming ``file:line``; a malformed line elsewhere, or a line that
    is not a JSON object, raises ``ValueError`` naming ``file:line``.
    """
    return [obj for _, obj in _iter_jsonl(Path(path))]


def record_from_dict(data: Mapping[str, Any]) -> StepRecord:
    """Build a :class:`StepRecord` from its ``dataclasses.asdict`` form.

    Keys that ``StepRecord`` does not have are ignored (logs written by a newer version
    still read); a missing required key raises ``ValueError`` naming it. Records written before
    ``fidelity`` was renamed ``token_agreement`` read with their ``fidelity`` as the token agreement.
    """
    if "fidelity" in data and "token_agreement" not in data:
        data = {("token_agreement" if k == "fidelity" else k): v for k, v in data.items()}
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"StepRecord fields missing: {missing}")
    kwargs = {k: v for k, v in data.items() if k in _FIELDS}
    if "observation" in kwargs:
        # JSON has no tuples: restore the declared type
        kwargs["observation"] = tuple(float(x) for x in kwargs["observation"])
    return StepRecord(**kwargs)


def read_records(path: str | os.PathLike[str]) -> list[StepRecord]:
    """Read a file of StepRecord lines (``metrics.jsonl``, ``test/<agent>.jsonl``).

    Same rules as :func:`read_jsonl`; a line that is valid JSON but not a StepRecord
    raises ``ValueError`` naming ``file:line`` and the missing fields.
    """
    path = Path(path)
    out = []
    for lineno, obj in _iter_jsonl(path):
        try:
            out.append(record_from_dict(obj))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}:{lineno}: not a StepRecord: {err}") from err
    return out


# --------------------------------------------------------------------------- summaries


class GroupSummary(TypedDict):
    """Means over one group of step records (one agent, one action, or all).

    ``std_*`` are population standard deviations; ``mean_task_score`` is ``None`` when no
    record of the group carries a task score. ``action_mix`` counts records per
    ``action_name``, ordered by action id.
    """

    n: int
    mean_reward: float
    std_reward: float
    mean_speedup: float
    std_speedup: float
    mean_token_agreement: float
    std_token_agreement: float
    mean_ppl_change: float
    std_ppl_change: float
    mean_task_score: float | None
    action_mix: dict[str, int]


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation; NaN for no values."""
    if not values:
        return math.nan, math.nan
    m = math.fsum(values) / len(values)
    var = math.fsum((v - m) ** 2 for v in values) / len(values)
    return m, math.sqrt(var) if math.isfinite(var) else math.nan


def _as_record(r: StepRecord | Mapping[str, Any]) -> StepRecord:
    return r if isinstance(r, StepRecord) else record_from_dict(r)


def _summarise_group(records: list[StepRecord]) -> GroupSummary:
    reward = _mean_std([r.reward for r in records])
    speedup = _mean_std([r.speedup for r in records])
    agreement = _mean_std([r.token_agreement for r in records])
    ppl = _mean_std([r.ppl_change for r in records])
    scores = [r.task_score for r in records if r.task_score is not None]
    # order the mix by action id so tables list actions in action-table order
    first_id: dict[str, int] = {}
    for r in records:
        first_id.setdefault(r.action_name, r.action)
    counts = Counter(r.action_name for r in records)
    mix = {name: counts[name] for name in sorted(counts, key=lambda n: (first_id[n], n))}
    return GroupSummary(
        n=len(records),
        mean_reward=reward[0],
        std_reward=reward[1],
        mean_speedup=speedup[0],
        std_speedup=speedup[1],
        mean_token_agreement=agreement[0],
        std_token_agreement=agreement[1],
        mean_ppl_change=ppl[0],
        std_ppl_change=ppl[1],
        mean_task_score=math.fsum(scores) / len(scores) if scores else None,
        action_mix=mix,
    )


def summarise(records: Iterable[StepRecord | Mapping[str, Any]], by: str | None = "agent") -> dict[str, GroupSummary]:
    """Summarise step records per group.

    Args:
        records: StepRecords or their dict form.
        by: ``"agent"`` (default), ``"action_name"``, any other StepRecord field, or
            ``None`` for one group named ``"all"``. Records with an empty agent name are
            grouped under ``"(unnamed)"``.

    Returns:
        ``{group name: GroupSummary}`` in order of first appearance (by action id when
        grouping by action); empty for no records.
    """
    if by is not None and by not in _FIELDS:
        raise ValueError(f"by must be None or a StepRecord field ({', '.join(_FIELDS)}), got {by!r}")
    groups: dict[str, list[StepRecord]] = {}
    for r in records:
        rec = _as_record(r)
        key = "all" if by is None else str(getattr(rec, by))
        if by == "agent" and not key:
            key = "(unnamed)"
        groups.setdefault(key, []).append(rec)
    if by in ("action", "action_name"):
        # per-action tables read best in action-table order
        groups = dict(sorted(groups.items(), key=lambda kv: (kv[1][0].action, kv[0])))
    return {k: _summarise_group(v) for k, v in groups.items()}
