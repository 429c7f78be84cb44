"""Checkpoints of a ``dynprune train`` run, and what ``--resume`` does with them.

A checkpoint is ``checkpoint.zip`` (the SB3 model; its step count ``num_timesteps`` is the
checkpoint's step) and ``checkpoint_replay.pkl`` (the replay buffer). The training loop takes
one *between* env steps (SB3's ``on_rollout_start``), where model, buffer and logs agree: every
step up to ``num_timesteps`` has its transition in the buffer, its gradient step done and its
record in ``metrics.jsonl``. (Taken inside ``on_step``, as before, the buffer missed the step
just logged.)

Resuming from the checkpoint of step N (:func:`rewind_logs`) cuts ``metrics.jsonl`` to its
first N records and ``train_log.jsonl`` to the episodes that ended by step N. Records written
after the checkpoint (a SIGKILL or a full disk leaves them behind) are measured again, so no
step is logged twice, and episode numbers go on from the last one kept.

Damaged files are ``CheckpointError`` (a ``ValueError``) naming the file and the remedy.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynprune.fileio import atomic_path
from dynprune.records import keep_first_lines, read_jsonl

__all__ = ["CHECKPOINT", "REPLAY", "CheckpointError", "ResumePoint", "load_checkpoint", "resume_seed",
           "rewind_logs", "save_checkpoint"]

#: The model file of a checkpoint.
CHECKPOINT = "checkpoint.zip"
#: The replay-buffer file of a checkpoint.
REPLAY = "checkpoint_replay.pkl"
#: What a damaged zip or pickle raises while SB3 reads it (SB3 asserts on a zip without data).
_DAMAGE = (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, AssertionError, KeyError, AttributeError,
           IndexError, TypeError, RuntimeError, UnicodeDecodeError, ValueError)


class CheckpointError(ValueError):
    """A checkpoint file is damaged or does not fit the run; the message names it and the remedy."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run goes on.

    Attributes:
        steps: Env steps done at the checkpoint (records kept in ``metrics.jsonl``).
        next_episode: Number of the first episode after the checkpoint.
        dropped_records: ``metrics.jsonl`` records cut because they came after the checkpoint.
        dropped_episodes: ``train_log.jsonl`` lines cut for the same reason.
    """

    steps: int
    next_episode: int
    dropped_records: int
    dropped_episodes: int


def _write(path: Path, save: Any) -> None:
    """``save(file)`` into a temporary file beside ``path``, fsync, rename over ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            save(fh)
            fh.flush()
            os.fsync(fh.fileno())


def save_checkpoint(model: Any, run_dir: Path) -> None:
    """Write the replay buffer, then the model, each atomically (temporary file, fsync, rename).

    The model's step count is the checkpoint's. A kill between the two renames leaves a buffer
    newer than the model, which :func:`load_checkpoint` cuts back to the model's step.
    """
    _write(run_dir / REPLAY, model.save_replay_buffer)
    _write(run_dir / CHECKPOINT, model.save)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def load_checkpoint(algo: Any, run_dir: Path, env: Any) -> Any:
    """Load ``checkpoint.zip`` (and the replay buffer when present) of ``run_dir`` for ``env``.

    A replay buffer newer than the model (a kill between the two renames of
    :func:`save_checkpoint`) is cut back to the model's step; an older one is used with a warning.

    Args:
        algo: The SB3 class to load with (``DoubleDQN``).
        run_dir: The run folder.
        env: The training env (its spaces must match the checkpoint's).

    Raises:
        CheckpointError: a file is damaged, or the checkpoint was made for other spaces.
    """
    path = run_dir / CHECKPOINT
    try:
        model = algo.load(path, env=env, device="cpu")
    except _DAMAGE as err:
        if isinstance(err, ValueError) and "spaces do not match" in str(err):
            raise CheckpointError(f"{path} was saved for another observation or action space ({_first_line(err)}); "
                                  "resume with the run's own settings, or start again with --force") from err
        raise CheckpointError(f"{path} is damaged ({_first_line(err)}); restore it from a copy, or start the run "
                              "again with --force (its records are replaced)") from err
    replay = run_dir / REPLAY
    if not replay.is_file():
        warnings.warn(f"{replay} is missing: resuming with an empty replay buffer", RuntimeWarning, stacklevel=2)
        return model
    try:
        model.load_replay_buffer(replay)
    except _DAMAGE as err:
        raise CheckpointError(f"{replay} is damaged ({_first_line(err)}); delete it to resume with an empty replay "
                              "buffer (the agent keeps its weights), or start the run again with --force") from err
    rb = model.replay_buffer
    stored = rb.buffer_size if rb.full else rb.pos
    if not rb.full and stored > model.num_timesteps:
        # transitions of steps after the model's checkpoint: those steps are taken again
        rb.pos = model.num_timesteps
    elif stored < min(model.num_timesteps, rb.buffer_size):
        warnings.warn(f"{replay} holds {stored} transitions for {model.num_timesteps} steps; "
                      "the missing ones are not replayed", RuntimeWarning, stacklevel=2)
    return model


def rewind_logs(run_dir: Path, steps: int) -> ResumePoint:
    """Cut ``metrics.jsonl`` and ``train_log.jsonl`` back to the checkpoint of step ``steps``."""
    metrics, log = run_dir / "metrics.jsonl", run_dir / "train_log.jsonl"
    dropped_records = keep_first_lines(metrics, steps)
    entries = read_jsonl(log) if log.exists() else []
    ended = 0
    while ended < len(entries) and int(entries[ended].get("timesteps", 0)) <= steps:
        ended += 1
    dropped_episodes = keep_first_lines(log, ended) if log.exists() else 0
    records = read_jsonl(metrics) if metrics.exists() else []
    if len(records) < steps:
        warnings.warn(f"{metrics} holds {len(records)} records for the {steps} steps of the checkpoint",
                      RuntimeWarning, stacklevel=2)
    next_episode = max((int(r["episode"]) for r in records), default=-1) + 1
    return ResumePoint(steps, next_episode, dropped_records, dropped_episodes)


def resume_seed(seed: int, steps: int) -> int:
    """Seed of a run resumed at ``steps``: the continuation draws new prompts, scenarios and
    exploration instead of replaying those of step 0, and the same resume draws the same ones."""
    import numpy as np

    return int(np.random.SeedSequence([seed, steps]).generate_state(1)[0])
