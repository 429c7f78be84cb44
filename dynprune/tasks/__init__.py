"""Prompt sources: the shipped set, BFCL, and user files, all as :class:`~dynprune.types.Prompt`.

Example::

    from dynprune.tasks import load_prompts

    train = load_prompts("dynprune", split="train")
    bfcl = load_prompts("bfcl:simple", limit=40)   # needs bfcl-eval installed
    mine = load_prompts("my_prompts.jsonl")        # or a .csv with a 'text' column

Every source gives each prompt a fixed ``"train"`` / ``"test"`` split, so an agent trained
on one split is always evaluated on the other.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from dynprune.tasks.bfcl import BFCL_SETS, INSTALL_COMMAND, bfcl_available, load_bfcl
from dynprune.tasks.files import (
    FILE_SUFFIXES,
    SPLITS,
    hash_split,
    load_csv,
    load_file,
    load_jsonl,
    prompt_location,
)
from dynprune.tasks.shipped import CATEGORIES, load_shipped
from dynprune.types import Prompt

#: Named sources :func:`load_prompts` accepts (beside a path to a .jsonl / .csv file).
SOURCES: tuple[str, ...] = ("dynprune", "bfcl:simple", "bfcl:multiple", "bfcl:live_simple")

__all__ = [
    "BFCL_SETS",
    "CATEGORIES",
    "FILE_SUFFIXES",
    "INSTALL_COMMAND",
    "SOURCES",
    "SPLITS",
    "bfcl_available",
    "hash_split",
    "load_bfcl",
    "load_csv",
    "load_file",
    "load_jsonl",
    "load_prompts",
    "load_shipped",
    "prompt_location",
    "split_counts",
]


def _unknown_source(source: str) -> ValueError:
    return ValueError(
        f"unknown prompt source {source!r}; expected one of {list(SOURCES)} "
        f"or a path to a file ending in {' / '.join(FILE_SUFFIXES)}"
    )


def load_prompts(
    source: str | os.PathLike[str] = "dynprune",
    split: str | None = None,
    limit: int | None = None,
) -> list[Prompt]:
    """Load prompts from a named source or a user file.

    Args:
        source: ``"dynprune"`` (the shipped set), ``"bfcl:simple"``, ``"bfcl:multiple"``,
            ``"bfcl:live_simple"`` (``"bfcl:simple_python"`` also works), or a path to a
            ``.jsonl`` / ``.csv`` file (see :mod:`dynprune.tasks.files`).
        split: ``"train"``, ``"test"``, or ``None`` for both.
        limit: Keep at most this many prompts (the first ones, in source order, after the
            split is applied); ``None`` keeps all.

    Returns:
        The prompts, in source order.

    Raises:
        ValueError: an unknown source, split or limit, or a malformed row in a file.
        FileNotFoundError: a prompt file that does not exist.
        ModuleNotFoundError: a BFCL source without ``bfcl-eval`` installed.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)} or None, got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative int or None, got {limit!r}")

    if isinstance(source, str) and source == "dynprune":
        prompts = load_shipped()
    elif isinstance(source, str) and source.startswith("bfcl:"):
        name = source.removeprefix("bfcl:")
        if name not in BFCL_SETS:
            raise _unknown_source(source)
        prompts = load_bfcl(name)
    elif Path(source).suffix.lower() in FILE_SUFFIXES:
        prompts = load_file(source)
    else:
        raise _unknown_source(str(source))

    if split is not None:
        prompts = [prompt for prompt in prompts if prompt.split == split]
    if limit is not None:
        prompts = prompts[:limit]
    return prompts


def split_counts(prompts: Iterable[Prompt]) -> dict[str, dict[str, int]]:
    """Count prompts per category and split.

    Args:
        prompts: Any prompts.

    Returns:
        ``{category: {"train": n, "test": m}}``, categories sorted by name.
    """
    counts = Counter((prompt.category, prompt.split) for prompt in prompts)
    categories = sorted({category for category, _ in counts})
    return {category: {split: counts[(category, split)] for split in SPLITS} for category in categories}
