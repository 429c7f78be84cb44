"""Helpers shared by the benchmark scripts.

- :func:`parse_args`: fill an ``Args`` dataclass from the command line; the
  docstring under each field becomes its ``--help`` text (CleanRL/tyro style,
  without the dependency).
- :func:`write_json`: atomic JSON write (temporary file in the same folder + ``os.replace``).
- :func:`machine_info`: what the numbers were measured on (CPU, cores, threads,
  library versions, device, date, load).
- :func:`summary`: median / min / max of a list of measurements.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime
import inspect
import os
import platform
import statistics
import textwrap
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from dynprune.fileio import atomic_write_json

T = TypeVar("T")


# ----------------------------------------------------------------------------- command line


def field_docs(cls: type) -> dict[str, str]:
    """``{field name: docstring}`` for the string literal written under each field of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:], strict=False):
        is_doc = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and is_doc:
            docs[node.target.id] = inspect.cleandoc(str(after.value.value))
    return docs


def _base_type(hint: Any) -> tuple[type, bool]:
    """``(type, optional)`` of a field annotation such as ``int``, ``str | None``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported field type {hint!r}: only X or X | None")
        return inner[0], True
    return hint, False


def parse_args(cls: type[T], argv: Sequence[str] | None = None) -> T:
    """Build an ``argparse`` parser from the dataclass ``cls`` and return a filled instance.

    ``bool`` fields become ``--flag / --no-flag``; ``X | None`` fields accept ``none``.
    """
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    parser = argparse.ArgumentParser(
        description=inspect.cleandoc(cls.__doc__ or ""), formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        typ, optional = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = docs.get(f.name, "")
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue

        def convert(text: str, typ: type = typ, optional: bool = optional) -> Any:
            if optional and text.lower() == "none":
                return None
            return typ(text)

        parser.add_argument(flag, type=convert, default=f.default, dest=f.name, help=help_text)
    return cls(**vars(parser.parse_args(argv)))


# ----------------------------------------------------------------------------- output


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented JSON atomically: a crash never leaves a half-written file."""
    return atomic_write_json(path, data)


def summary(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int]:
    """``{"median", "min", "max", "n"}`` of ``values`` times ``scale`` (e.g. 1e3 for s -> ms)."""
    if not values:
        raise ValueError("summary of an empty list of measurements")
    scaled = [v * scale for v in values]
    return {"median": statistics.median(scaled), "min": min(scaled), "max": max(scaled), "n": len(scaled)}


# ----------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: Any = "cpu") -> dict[str, Any]:
    """Describe where a benchmark ran: CPU, cores, torch threads, versions, device, date, load."""
    import torch
    import transformers

    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        mem_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # psutil is a dependency, but the description must never fail
        physical, mem_gb = None, None
    dev = torch.device(device)
    if dev.type == "cuda":
        device_name = torch.cuda.get_device_name(dev)
    else:
        device_name = f"cpu: {cpu_model()}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "memory_gb": mem_gb,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": device_name,
        "load_average_1m": load,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
