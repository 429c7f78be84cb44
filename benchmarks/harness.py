"""The frame every benchmark script runs in: the settings they share and one :func:`run`.

A benchmark is one file read top to bottom (CleanRL style): its ``Args`` (a subclass of
:class:`Args` that adds its own fields, each with a docstring), its measurement, its table,
and a ``main(argv)`` that hands them to :func:`run`::

    @dataclass
    class Args(harness.Args):
        \"\"\"Speed limit: measured layer-skip speed-up beside the naive L/(L-k).\"\"\"

        repeats: int = 10
        \"\"\"interleaved repeats\"\"\"
        out: str = "benchmarks/results/speed_limit.json"

        SMOKE = {"repeats": 3}  # what --smoke runs with
        POSITIVE = ("repeats",)  # checked by the base's __post_init__

    def measure(args: Args, lm: PrunableLM | None) -> dict[str, Any]:
        ...  # the script's own keys: {"rows": [...], ...}

    def print_table(result: dict[str, Any]) -> None: ...

    def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
        return harness.run(harness.parse_args(Args, argv), measure, table=print_table, files={".png": plot})

:func:`run` does what every script did by hand before: fix torch's threads, seed the global
RNGs, load the model (``model=False`` for scripts that load none or load their own), time
the whole run, stamp ``args``, ``machine`` and ``wall_s``, write the JSON atomically, write
every extra file (figures, tables) beside it, and print a header line and the table.
:func:`save` is that epilogue alone, for modes that redraw existing results. A long script
that measures in parts passes ``checkpoints=True`` and calls the :data:`Checkpoint` it gets after
each part, so a run cut short keeps what it measured; ``machine_extra`` adds keys to ``machine``
(the GPU's record).
"""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from benchmarks.utils import load_average, machine_info, parse_args, write_json

if TYPE_CHECKING:
    from dynprune.models import PrunableLM

__all__ = ["STAMPS", "Args", "default_of", "header", "parse_args", "run", "save", "sibling"]

STAMPS = ("args", "machine", "wall_s")
"""Keys :func:`run` adds to every result; a measurement may not return them."""

SMOKE_MODEL = "tiny-llama"
"""The model of every ``--smoke`` run: tiny and random, loads in a second."""


@dataclass
class Args:
    """Settings every benchmark has; a script's ``Args`` subclasses this and adds its own fields."""

    model: str = "smollm2-135m"
    """model spec: smollm2-135m (embedded), tiny-llama, a model folder or a Hugging Face id"""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N"""
    dtype: str = "auto"
    """model dtype: auto (bf16 on a capable GPU, else fp32), float32, bfloat16 or float16"""
    threads: int | None = None
    """torch CPU threads (none: torch's default, all cores it sees)"""
    seed: int = 0
    """seed of the run: Python's, NumPy's and torch's global RNGs, and every seeded choice of the script"""
    out: str = ""
    """JSON file to write (each script sets its own default under benchmarks/results/; figures go beside it)"""
    smoke: bool = False
    """quick check on tiny-llama with tiny settings (seconds, meaningless numbers); needs --out"""

    SMOKE_TO_TEMP: ClassVar[bool] = False
    """A script that sets it sends a ``--smoke`` run without ``--out`` to ``<tmp>/<name>_smoke.json`` instead of
    refusing it (the real results file is never overwritten either way)."""
    SMOKE: ClassVar[Mapping[str, Any]] = {}
    """The script's settings of a ``--smoke`` run (tiny sizes), put in place before any check."""
    POSITIVE: ClassVar[tuple[str, ...]] = ()
    """The script's fields that must be >= 1 (checked with the smoke settings in place)."""

    def __post_init__(self) -> None:
        if self.smoke:
            for name, value in self.SMOKE.items():
                setattr(self, name, value)
        if not self.out:
            raise ValueError(f"{type(self).__name__}: out is empty; give --out PATH")
        default_out = default_of(type(self), "out")
        if self.smoke and self.SMOKE_TO_TEMP and self.out == default_out:
            self.out = str(Path(tempfile.gettempdir()) / f"{Path(default_out).stem}_smoke.json")
        if self.smoke and self.out == default_out:  # never overwrite real results with a smoke run
            raise ValueError("--smoke needs --out PATH (the real results file is not overwritten by a smoke run)")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (or none for torch's default), got {self.threads}")
        if self.smoke:
            self.model = SMOKE_MODEL
        self.require_positive(*self.POSITIVE)

    def require_positive(self, *names: str) -> None:
        """Raise ``ValueError`` naming the first of the fields ``names`` that is below 1 (``Args.n must be >= 1``)."""
        from dynprune.validation import require_at_least

        require_at_least(self, 1, *names)


A = TypeVar("A", bound=Args)
Measure = Callable[[A, "PrunableLM | None"], dict[str, Any]]
"""A script's measurement: ``(args, the loaded model or None) -> its own result keys``."""
Checkpoint = Callable[[dict[str, Any]], None]
"""Writes the keys measured so far, stamped like the final result, to the JSON: a run cut short
(a time limit, a crash in a later part) keeps what it measured."""
MeasureWithCheckpoints = Callable[[A, "PrunableLM | None", Checkpoint], dict[str, Any]]
"""A measurement of ``run(..., checkpoints=True)``: it also gets a :data:`Checkpoint`."""
FileWriter = Callable[[dict[str, Any], Path], object]
"""Writes one extra output (a PNG, a markdown table) of a result to the path it is given."""


def default_of(cls: type, name: str) -> Any:
    """The default of the dataclass field ``name`` of ``cls`` (e.g. a script's default ``out``)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.default
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def sibling(out: str | Path, suffix: str) -> Path:
    """The file beside ``out`` with its stem and ``suffix``: ``sibling("r/x.json", "_mse.png") == r/x_mse.png``."""
    out = Path(out)
    return out.with_name(out.stem + suffix)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global RNGs (CleanRL's prologue); seeded objects keep their own seeds."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def header(result: dict[str, Any]) -> str:
    """One line: what ran where, when, under which load."""
    a, m = result["args"], result["machine"]
    return (f"{a.get('model')} on {m['device_name']}, {m['torch_threads']} threads, {m['date']}, "
            f"load {m['load_average_1m']} -> {m.get('load_average_1m_end')}, {result['wall_s']:.1f} s")


def save(
    result: dict[str, Any],
    out: str | Path,
    *,
    table: Callable[[dict[str, Any]], None] | None = None,
    files: Mapping[str, FileWriter] | None = None,
) -> dict[str, Any]:
    """Write ``result`` to ``out`` as JSON and each of ``files`` beside it, then print the header and table.

    ``files`` maps a suffix to a writer: ``{".png": plot}`` calls ``plot(result, <out stem>.png)``.
    Every file is written atomically: the JSON through ``dynprune.fileio``, the others to a
    draft in the same folder that replaces the target only once the writer returned.
    """
    out = Path(out)
    written = [write_json(result, out)]
    for suffix, writer in (files or {}).items():
        dest = sibling(out, suffix)
        with tempfile.TemporaryDirectory(prefix=".draft-", dir=dest.parent) as tmp:
            draft = Path(tmp) / dest.name  # the real name: writers pick the format by the suffix
            writer(result, draft)
            os.replace(draft, dest)
        written.append(dest)
    if "machine" in result and "wall_s" in result:
        print(f"\n{header(result)}")
    if table is not None:
        table(result)
    print("wrote " + ", ".join(str(p) for p in written), flush=True)
    return result


def run(
    args: A,
    measure: Measure[A] | MeasureWithCheckpoints[A],
    *,
    model: bool = True,
    table: Callable[[dict[str, Any]], None] | None = None,
    files: Mapping[str, FileWriter] | None = None,
    machine_extra: Callable[[Any], dict[str, Any]] | None = None,
    checkpoints: bool = False,
) -> dict[str, Any]:
    """Run one benchmark: fix threads, seed, load the model, measure, stamp, write, print; return the result.

    Args:
        args: The script's parsed settings.
        measure: ``measure(args, lm)`` returns the script's own keys (none of :data:`STAMPS`);
            ``lm`` is the model loaded from ``args.model`` / ``device`` / ``dtype``, or ``None``
            when ``model`` is False (the script loads none, or loads it its own way).
        model: Load the model before measuring.
        table: Prints the result's table after the header line.
        files: Extra outputs beside the JSON, ``{suffix: writer}`` (see :func:`save`).
        machine_extra: ``machine_extra(device)`` returns keys added to ``machine`` (e.g. the GPU's record).
        checkpoints: Call ``measure(args, lm, checkpoint)``; each ``checkpoint(keys so far)`` rewrites the JSON.

    The result is ``{"args", "machine", <measure's keys>, "wall_s"}``: ``machine`` is taken
    after the model is loaded and before the measurement (so its load average is the other
    processes', not this run's), with ``load_average_1m_end`` added once the measurement ends.
    """
    from dynprune.metrics import fix_threads
    from dynprune.models import load_model, resolve_device

    t_start = time.perf_counter()
    fix_threads(args.threads)
    seed_everything(args.seed)
    lm = None
    if model:
        print(f"loading {args.model} ...", flush=True)
        lm = load_model(args.model, device=args.device, dtype=args.dtype, calibrate=True)
        print(f"model: {lm}", flush=True)
    device = lm.device if lm is not None else resolve_device(args.device)
    machine = machine_info(device)
    if machine_extra is not None:
        machine.update(machine_extra(device))

    def stamped(measured: dict[str, Any]) -> dict[str, Any]:
        clash = sorted(set(STAMPS) & set(measured))
        if clash:
            raise ValueError(f"a measurement may not return the keys the harness stamps: {clash}")
        return {"args": dataclasses.asdict(args), "machine": machine, **measured,
                "wall_s": time.perf_counter() - t_start}

    def checkpoint(measured: dict[str, Any]) -> None:
        write_json(stamped(measured), args.out)

    measured = measure(args, lm, checkpoint) if checkpoints else measure(args, lm)  # type: ignore[call-arg]
    machine["load_average_1m_end"] = load_average()
    return save(stamped(measured), args.out, table=table, files=files)
