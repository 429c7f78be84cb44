"""Atomic file writes: a temporary file in the destination's folder, then ``os.replace``.

A crash (or Ctrl-C) mid-write leaves either the old file or the new one, never a
half-written one. The temporary file gets the permissions a plain ``open`` would
give (``mkstemp`` alone makes it private to the owner).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    For writers that take a file name (safetensors, Parquet):
    ``with atomic_path(out) as tmp: save_file(tensors, tmp)``.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    os.chmod(tmp, _default_mode())
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
