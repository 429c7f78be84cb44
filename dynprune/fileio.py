"""Atomic file writes, and failed writes turned into one line a user can act on.

Atomic writes go to a temporary file in the destination's folder, then ``os.replace``:
a crash (or Ctrl-C) mid-write leaves either the old file or the new one, never a
half-written one. The temporary file gets the permissions a plain ``open`` would
give (``mkstemp`` alone makes it private to the owner).

:func:`check_writable` proves a folder takes files *before* a command spends minutes
computing what it will write there; :func:`describe_os_error` and :class:`WriteFailed`
give a failed write (read-only folder, full disk, name too long) one line naming the
path and the remedy, which the ``dynprune`` command prints instead of a traceback.

:func:`atomic_dir` does for a folder of files what :func:`atomic_path` does for one file.
:func:`json_object_lines` and :func:`read_safetensors` read the two formats several modules
parse (prompt files, telemetry traces; importance and adapter files), with errors naming the
file and line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

#: Longest part of a destination's name that goes into its temporary file's name: file
#: systems allow 255 bytes per name, and the temporary name adds a dot, a random part and
#: a suffix (about 14 bytes), so a destination whose own name fits always gets a temporary name.
_TMP_NAME_PART = 64

#: What to do about a failed write, by errno.
_REMEDIES = {
    errno.EACCES: "fix the folder's permissions or choose another folder",
    errno.EPERM: "fix the folder's permissions or choose another folder",
    errno.EROFS: "the file system is read-only; choose a folder on a writable disk",
    errno.ENOSPC: "free disk space or choose a folder on another disk",
    errno.EDQUOT: "free space within your disk quota or choose a folder on another disk",
    errno.EFBIG: "the file exceeds the size this file system (or ulimit -f) allows; choose another disk",
    errno.ENAMETOOLONG: "use a shorter file or folder name",
}

#: errnos that mean "this place does not take writes" (as opposed to a missing file or a bad path).
WRITE_ERRNOS = frozenset(_REMEDIES) - {errno.ENAMETOOLONG}


def describe_os_error(err: OSError, remedy: str | None = None) -> str:
    """One line for a failed file operation: the reason, the path and what to do.

    ``remedy`` replaces the default advice for the error's errno.

    Example:
        >>> describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/runs/a/metrics.jsonl"))
        'No space left on device: /runs/a/metrics.jsonl; free disk space or choose a folder on another disk'
    """
    if isinstance(err, WriteFailed):
        return str(err)
    reason = err.strerror or str(err)
    where = f": {os.fsdecode(err.filename)}" if err.filename is not None else ""
    advice = remedy or _REMEDIES.get(err.errno or -1)
    line = f"{reason}{where}" + (f"; {advice}" if advice else "")
    return " ".join(line.split())


class WriteFailed(OSError):
    """An ``OSError`` whose message is one line a user can act on; ``errno`` and ``filename`` are the cause's."""

    def __init__(self, cause: OSError, message: str) -> None:
        super().__init__(cause.errno, cause.strerror, cause.filename)
        self.message = " ".join(message.split())

    def __str__(self) -> str:
        return self.message


def check_writable(folder: str | os.PathLike[str], what: str | None = None) -> Path:
    """Create ``folder`` if needed and prove a file can be created in it; return it.

    Call it before long work whose result goes there (calibration, training, exploration).

    Args:
        folder: The folder the command will write into.
        what: How the user named it (``"--out"``, ``"the cache ($DYNPRUNE_CACHE)"``), for the message.

    Raises:
        WriteFailed: the folder cannot be created or written (read-only, full disk, permissions);
            the message names the folder and what to do.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".dynprune-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        label = f"{what} {folder}" if what else str(folder)
        advice = _REMEDIES.get(err.errno or -1, "choose another folder")
        raise WriteFailed(err, f"{label} is not writable ({err.strerror or err}); {advice}") from err
    return folder


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode() -> int:
    return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    For writers that take a file name (safetensors, Parquet):
    ``with atomic_path(out) as tmp: save_file(tensors, tmp)``.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name[:_TMP_NAME_PART]}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.chmod(tmp, _default_mode())
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` whole, on error it is removed.

    For writers of several files (a model folder, a healing folder):
    ``with atomic_dir(out) as tmp: model.save_pretrained(tmp)``. The folder and the files written
    directly in it get the permissions a plain ``mkdir`` / ``open`` gives (``mkdtemp`` makes the folder
    private to the owner, and safetensors its files). An existing ``path`` is moved aside, the new
    folder moved in, then the old one deleted: a crash leaves the old folder or the new one, whole.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name[:_TMP_NAME_PART]}-", dir=dest.parent))
    try:
        yield tmp
        umask = _umask()
        os.chmod(tmp, 0o777 & ~umask)
        for f in tmp.iterdir():
            if f.is_file():
                os.chmod(f, 0o666 & ~umask)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name[:_TMP_NAME_PART]}-old-", dir=dest.parent))
            os.replace(dest, old / "x")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def json_object_lines(lines: Iterable[str], where: Callable[[int], str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Decode each non-blank line as a JSON object; yield ``(1-based line number, object)``.

    Blank lines are skipped (and still counted). ``where(n)`` names line ``n`` in the messages
    (``lambda n: f"{path} line {n}"``).

    Raises:
        ValueError: a line that is not JSON, or JSON that is not an object, naming the line.
    """
    import json

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where(number)}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(value, dict):
            raise ValueError(f"{where(number)}: expected a JSON object, got {type(value).__name__}")
        yield number, value


def read_safetensors(path: str | os.PathLike[str], what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Every tensor of a safetensors file and its metadata: ``(tensors, metadata)``.

    ``what`` names the file for the messages (``"importance file"``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a damaged file (safetensors raises its own error types; the message names the file).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:
        raise ValueError(f"{path} is not a valid {what}: {e}") from e
    return tensors, metadata


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (fsynced before the rename); return the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: object, indent: int = 2) -> Path:
    """Write ``data`` as JSON atomically (non-JSON values such as paths are written with ``str``)."""
    import json

    return atomic_write_text(path, json.dumps(data, indent=indent, default=str) + "\n")
