"""Run folders: a marker file says a folder is a dynprune run and names what the run writes.

A command that writes a run folder (``dynprune train``, ``offline``, ``router train``) calls
:func:`prepare_run_folder` before anything else. It writes ``dynprune-run.json``, the marker:
the kind of run and the names (glob patterns, top level of the folder) of everything that kind
of run writes. So

- a folder is a run when it holds the marker, never because it holds a ``config.json``
  (a Hugging Face model folder holds one too);
- ``--force`` replaces a run by deleting only the paths the marker names (the user's own
  files in the folder stay) and refuses any folder without a marker;
- a non-empty folder without a marker is never written into (a run's ``config.json`` would
  overwrite a model's);
- ``--resume`` (:func:`open_run_folder`) refuses a folder without a marker.

Every refusal is a ``ValueError`` whose message names the folder and what to do.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynprune.fileio import atomic_write_json, check_writable

__all__ = ["MARKER", "RunMarker", "open_run_folder", "prepare_run_folder", "read_marker", "remove_outputs"]

#: File name of the marker.
MARKER = "dynprune-run.json"
#: Version of the marker's layout.
MARKER_FORMAT = 1


@dataclass(frozen=True)
class RunMarker:
    """What ``dynprune-run.json`` holds.

    Attributes:
        kind: The command that made the run (``"train"``, ``"offline"``, ``"router"``).
        outputs: Glob patterns of the top-level names the run writes (files or folders),
            e.g. ``("config.json", "metrics.jsonl", "test", ".*.tmp")``; ``--force`` deletes these.
        created: Local time the run folder was prepared (``YYYY-mm-dd HH:MM:SS``).
        format: Layout version (:data:`MARKER_FORMAT`).
    """

    kind: str
    outputs: tuple[str, ...]
    created: str = ""
    format: int = MARKER_FORMAT

    def __post_init__(self) -> None:
        if not self.kind:
            raise ValueError("a run marker needs a kind (the command that made the run), got ''")
        for pattern in self.outputs:
            # a pattern names top-level entries and must say something beyond wildcards: a marker
            # must never be able to tell --force to delete the whole folder or anything outside it
            if not pattern or "/" in pattern or "\\" in pattern or pattern in (".", ".."):
                raise ValueError(f"run output pattern {pattern!r} must be a name inside the folder")
            if not pattern.strip("*?.[]!"):
                raise ValueError(f"run output pattern {pattern!r} matches almost anything; name the files")
        if MARKER not in self.outputs:
            object.__setattr__(self, "outputs", (*self.outputs, MARKER))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to the marker file."""
        return {"format": self.format, "kind": self.kind, "created": self.created, "outputs": list(self.outputs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunMarker:
        """Read the JSON form; ``ValueError`` for a marker of a later format or a malformed one."""
        if int(data.get("format", 0)) > MARKER_FORMAT:
            raise ValueError(f"run marker format {data.get('format')} is newer than this dynprune reads "
                             f"({MARKER_FORMAT}); upgrade dynprune")
        return cls(kind=str(data["kind"]), outputs=tuple(str(p) for p in data["outputs"]),
                   created=str(data.get("created", "")), format=int(data.get("format", MARKER_FORMAT)))


def read_marker(folder: str | os.PathLike[str]) -> RunMarker | None:
    """The marker of ``folder``, or None when it has none.

    Raises:
        ValueError: the marker exists but cannot be read (the message names it).
    """
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        return RunMarker.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is damaged ({err}); if {folder} is a run you no longer need, delete the "
                         f"folder yourself, else restore the file") from err


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def remove_outputs(folder: str | os.PathLike[str], marker: RunMarker) -> list[Path]:
    """Delete the top-level entries of ``folder`` that the marker names (the marker last); return them.

    Entries the marker does not name (a user's notes, data) are left alone.
    """
    folder = Path(folder)
    removed = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name == MARKER):
        if not _matches(entry.name, marker.outputs):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry)
    return removed


def prepare_run_folder(
    folder: str | os.PathLike[str],
    kind: str,
    outputs: Sequence[str],
    *,
    force: bool = False,
    option: str = "--run-dir",
    resume_hint: bool = False,
) -> RunMarker:
    """Make ``folder`` ready for a new run of ``kind``: refuse, or clear a previous run's outputs.

    Args:
        folder: The run folder (created when missing).
        kind: The command writing the run.
        outputs: Glob patterns of the top-level names this kind of run writes.
        force: Replace a previous run: delete the paths its marker names, keep everything else.
        option: How the user named the folder, for messages.
        resume_hint: Mention ``--resume`` when the folder already holds a run.

    Returns:
        The marker written.

    Raises:
        ValueError: the folder is a file, holds files but is not a dynprune run, or holds a run
            and ``force`` is False; the message says what to do.
        WriteFailed: the folder cannot be written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder} is a file, not a folder; choose a folder for the run")
    if folder.is_dir() and any(folder.iterdir()):
        previous = read_marker(folder)
        if previous is None:
            raise ValueError(
                f"{option} {folder} is not empty and is not a dynprune run (it has no {MARKER}); "
                + ("--force only replaces dynprune runs, never other files; " if force else "")
                + "choose a new or empty folder"
            )
        if not force:
            also = ", or --resume to continue it" if resume_hint else ""
            raise ValueError(
                f"{option} {folder} already holds a run (dynprune {previous.kind}); pass --force to replace the "
                f"files that run wrote (other files stay){also}, or choose another folder"
            )
        check_writable(folder, option)
        remove_outputs(folder, previous)
    check_writable(folder, option)
    marker = RunMarker(kind=kind, outputs=tuple(outputs), created=time.strftime("%Y-%m-%d %H:%M:%S"))
    atomic_write_json(folder / MARKER, marker.to_dict())
    return marker


def open_run_folder(folder: str | os.PathLike[str], option: str = "--run-dir") -> RunMarker:
    """The marker of an existing run (for ``--resume``, ``test``); ``ValueError`` when ``folder`` is no run."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{option} {folder} does not exist; start a run there first (without --resume)")
    marker = read_marker(folder)
    if marker is None:
        raise ValueError(f"{option} {folder} is not a dynprune run (it has no {MARKER}); "
                         "check the path, or start a new run in an empty folder (without --resume)")
    return marker
