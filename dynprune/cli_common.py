"""What the ``dynprune`` sub-commands share: the model flags and loading a model from them.

Every command module (the engine's and those above it) imports these public names; none imports
another command module's private helpers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from dynprune.models import PrunableLM

T = TypeVar("T")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--device``, ``--dtype`` and ``--threads`` (read by :func:`load_model_from_args`)."""
    p.add_argument(
        "--model", default="smollm2-135m", help="model spec: smollm2-135m, tiny-llama, a folder or HF id"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16, float16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def load_model_from_args(args: argparse.Namespace, calibrate: bool = False) -> PrunableLM:
    """Fix the torch threads and load ``--model`` on ``--device`` in ``--dtype``.

    ``calibrate`` also sets its importance (the cached calibration, measured once if there is none),
    for commands whose plans select heads, channels or layers by importance.
    """
    from dynprune.metrics import fix_threads
    from dynprune.models import load_model

    fix_threads(args.threads)
    return load_model(args.model, device=args.device, dtype=args.dtype, calibrate=calibrate)


def comma_separated(convert: Callable[[str], T], what: str, example: str) -> Callable[[str], tuple[T, ...]]:
    """An argparse ``type`` reading ``"1,2,5"`` as ``(1, 2, 5)`` (each item through ``convert``; empty items skipped).

    A bad item is an ``ArgumentTypeError`` naming ``what`` the items are and an ``example``:
    ``p.add_argument("--layers", type=comma_separated(int, "layer indices", "1,2,5"))``.
    """

    def parse(text: str) -> tuple[T, ...]:
        try:
            return tuple(convert(v) for v in text.split(",") if v.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} such as {example}, got {text!r}") from e

    return parse
