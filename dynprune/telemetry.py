"""Hardware telemetry: live snapshots, synthetic load scenarios and recorded traces.

The environment's observation starts with the machine's state (the CASRAP state:
CPU / GPU utilisation, free memory and VRAM, battery). Three interchangeable sources
produce it, all behind the :class:`Monitor` protocol:

- :class:`HardwareMonitor` reads the real machine (psutil, NVML).
- :class:`ScenarioMonitor` samples named synthetic load profiles (:data:`SCENARIOS`)
  with its own seeded generator, so a run is reproducible on any machine.
- :class:`ReplayMonitor` plays back a trace written by :func:`record_trace`.

A field that the machine does not have (no GPU, no battery) is ``None`` in a
:class:`~dynprune.types.TelemetrySnapshot`; the environment maps ``None`` to
:data:`MISSING` (-1) in observations, see :func:`snapshot_to_vector`.

Example::

    monitor = make_monitor("scenario", scenario="mixed", seed=0)
    monitor.reset(seed=0)          # start of an episode: re-seed, pick a scenario
    vec = snapshot_to_vector(monitor.snapshot())
    slow = monitor.latency_factor  # 1.6 under "busy_cpu"
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import psutil

from dynprune.fileio import atomic_write_text, json_object_lines
from dynprune.types import TelemetrySnapshot

__all__ = [
    "MISSING",
    "TELEMETRY_FIELDS",
    "SCENARIOS",
    "SCENARIO_GROUPS",
    "MONITOR_MODES",
    "Monitor",
    "HardwareMonitor",
    "Scenario",
    "ScenarioMonitor",
    "TraceRecorder",
    "ReplayMonitor",
    "snapshot_to_vector",
    "write_trace",
    "read_trace",
    "record_trace",
    "make_monitor",
]

logger = logging.getLogger(__name__)

MISSING: float = -1.0
"""Observation value of a telemetry field the machine does not have (a ``None`` field)."""

TELEMETRY_FIELDS: tuple[str, ...] = (
    "cpu_util",
    "mem_available_frac",
    "gpu_util",
    "vram_free_frac",
    "battery_frac",
)
"""Snapshot fields that enter the observation vector, in order. All are fractions in [0, 1]."""

MONITOR_MODES: tuple[str, ...] = ("live", "scenario", "replay")
"""Modes accepted by :func:`make_monitor`."""

_GIB = float(1 << 30)


def snapshot_to_vector(snap: TelemetrySnapshot) -> list[float]:
    """Turn a snapshot into the observation's telemetry block.

    Args:
        snap: The snapshot.

    Returns:
        One float per name in :data:`TELEMETRY_FIELDS`, in that order; a ``None``
        field (the machine has no such thing) becomes :data:`MISSING`.
    """
    values: list[float] = []
    for name in TELEMETRY_FIELDS:
        value = getattr(snap, name)
        values.append(MISSING if value is None else float(value))
    return values


@runtime_checkable
class Monitor(Protocol):
    """What the environment needs from a telemetry source."""

    @property
    def latency_factor(self) -> float:
        """How much slower inference runs under the current load (1.0 = unloaded)."""
        ...

    @property
    def budget_scale(self) -> float:
        """Multiplier on latency budgets under the current load (1.0 = nominal)."""
        ...

    def snapshot(self) -> TelemetrySnapshot:
        """Return the hardware state now."""
        ...

    def reset(self, seed: int | None = None) -> None:
        """Start an episode; re-seed when ``seed`` is given."""
        ...

    def next_episode(self) -> str:
        """Move to the next episode's load and return its name."""
        ...


# --------------------------------------------------------------------------------------
# Live hardware
# --------------------------------------------------------------------------------------


def _parse_device(device: str) -> int | None:
    """Return the CUDA index named by ``device`` ("cuda" -> 0), or None for a non-CUDA device."""
    text = str(device).strip().lower()
    if text in ("cpu", "mps", "meta"):
        return None
    if text == "cuda":
        return 0
    if text.startswith("cuda:"):
        index = text[len("cuda:") :]
        if index.isdigit():
            return int(index)
    raise ValueError(f"device must be 'cpu', 'mps', 'cuda' or 'cuda:N', got {device!r}")


def _clip01(value: float) -> float:
    """Clamp a value to [0, 1]."""
    return min(1.0, max(0.0, float(value)))


class HardwareMonitor:
    """Snapshots of the real machine.

    - CPU utilisation: ``psutil.cpu_percent(interval=None)`` over all cores, i.e. the
      utilisation since the previous call; primed once at construction so the first
      snapshot is meaningful.
    - Memory: ``psutil.virtual_memory()`` available / total and available GiB.
    - GPU (only when ``device`` is ``"cuda"`` / ``"cuda:N"``): utilisation and free VRAM
      through NVML (``pynvml`` from nvidia-ml-py, initialised lazily once). Without NVML
      but with CUDA, free VRAM comes from ``torch.cuda.mem_get_info`` and ``gpu_util``
      is ``None``. ``CUDA_VISIBLE_DEVICES`` is honoured when mapping ``cuda:N`` to the
      NVML device. For a CPU device the GPU fields are ``None``: the model does not use one.
    - Battery: ``psutil.sensors_battery()``.

    Missing = ``None``; the environment maps ``None`` to -1 (:data:`MISSING`) in
    observations. Never raises while taking a snapshot: an exception from NVML, torch or
    a psutil sensor makes that field ``None`` and is logged once at debug level.

    Args:
        device: The device the model runs on: ``"cpu"``, ``"mps"``, ``"cuda"`` or ``"cuda:N"``.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = str(device)
        self._cuda_index = _parse_device(self.device)
        self._logged: set[str] = set()
        self._nvml_tried = False
        self._nvml: Any = None  # the pynvml module once NVML is initialised
        self._nvml_handle: Any = None  # the NVML device handle, None when unavailable
        # prime the counter: cpu_percent(interval=None) measures since the previous call
        self._cpu_percent()

    @property
    def latency_factor(self) -> float:
        """1.0: live timings already include the real load."""
        return 1.0

    @property
    def budget_scale(self) -> float:
        """1.0: live runs use the nominal latency budget."""
        return 1.0

    def reset(self, seed: int | None = None) -> None:
        """Do nothing: the live machine cannot be re-seeded (kept for the :class:`Monitor` protocol)."""
        del seed

    def next_episode(self) -> str:
        """Return ``"live"``: the live machine has no episodes."""
        return "live"

    def _failed(self, key: str, exc: BaseException) -> None:
        """Log a sensor failure once per sensor at debug level."""
        if key not in self._logged:
            self._logged.add(key)
            logger.debug("telemetry: %s unavailable (%s: %s); reporting None", key, type(exc).__name__, exc)

    def _cpu_percent(self) -> float | None:
        try:
            return _clip01(psutil.cpu_percent(interval=None) / 100.0)
        except Exception as exc:  # a sensor must never crash the env
            self._failed("cpu_util", exc)
            return None

    def _memory(self) -> tuple[float | None, float | None]:
        try:
            vm = psutil.virtual_memory()
            return _clip01(vm.available / vm.total), vm.available / _GIB
        except Exception as exc:
            self._failed("memory", exc)
            return None, None

    def _battery(self) -> tuple[float | None, bool | None]:
        try:
            battery = psutil.sensors_battery()  # AttributeError on platforms without sensors
        except Exception as exc:
            self._failed("battery", exc)
            return None, None
        if battery is None:
            return None, None
        plugged = battery.power_plugged
        return _clip01(battery.percent / 100.0), (None if plugged is None else not plugged)

    def _nvml_device(self) -> Any:
        """Initialise NVML once and return the device handle, or None when unavailable."""
        if not self._nvml_tried:
            self._nvml_tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                assert self._cuda_index is not None
                visible = os.environ.get("CUDA_VISIBLE_DEVICES")
                entry = str(self._cuda_index)
                if visible is not None and visible.strip():
                    entries = [e.strip() for e in visible.split(",") if e.strip()]
                    if self._cuda_index >= len(entries):
                        raise ValueError(
                            f"cuda:{self._cuda_index} out of range for CUDA_VISIBLE_DEVICES={visible!r}"
                        )
                    entry = entries[self._cuda_index]
                if entry.isdigit():
                    handle = pynvml.nvmlDeviceGetHandleByIndex(int(entry))
                else:
                    handle = pynvml.nvmlDeviceGetHandleByUUID(entry)
                self._nvml, self._nvml_handle = pynvml, handle
            except Exception as exc:
                self._failed("nvml", exc)
        return self._nvml_handle

    def _gpu(self) -> tuple[float | None, float | None, float | None]:
        """Return (gpu_util, vram_free_frac, vram_free_gb)."""
        if self._cuda_index is None:
            return None, None, None
        util: float | None = None
        handle = self._nvml_device()
        if handle is not None:
            try:
                util = _clip01(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0)
            except Exception as exc:  # e.g. not supported on MIG slices
                self._failed("gpu_util", exc)
            try:
                mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                return util, _clip01(mem.free / mem.total), mem.free / _GIB
            except Exception as exc:
                self._failed("nvml_memory", exc)
        # fall back to CUDA's own view of free memory (no utilisation there)
        try:
            import torch

            if not torch.cuda.is_available():
                return util, None, None
            free, total = torch.cuda.mem_get_info(self._cuda_index)
            return util, _clip01(free / total), free / _GIB
        except Exception as exc:
            self._failed("cuda_memory", exc)
            return util, None, None

    def snapshot(self) -> TelemetrySnapshot:
        """Return the machine's state now; fields it lacks (or cannot read) are ``None``.

        ``cpu_util`` and the memory fields are ``None`` only if psutil itself fails.
        """
        cpu = self._cpu_percent()
        mem_frac, mem_gb = self._memory()
        gpu_util, vram_frac, vram_gb = self._gpu()
        battery, on_battery = self._battery()
        return TelemetrySnapshot(
            cpu_util=cpu,  # None only when psutil fails
            mem_available_frac=mem_frac,
            mem_available_gb=mem_gb,
            gpu_util=gpu_util,
            vram_free_frac=vram_frac,
            vram_free_gb=vram_gb,
            battery_frac=battery,
            on_battery=on_battery,
            timestamp=time.time(),
            source="live",
        )


# --------------------------------------------------------------------------------------
# Synthetic load scenarios
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A named synthetic load profile of a notional machine.

    Each snapshot samples every fraction as ``clip(mean + noise * N(0, 1), 0, 1)``.
    A ``None`` mean means the notional machine has no such thing (the field is ``None``).

    Attributes:
        name: Scenario name (the key in :data:`SCENARIOS`).
        description: One line on what the load models.
        cpu_util: Mean CPU utilisation.
        cpu_noise: Standard deviation of CPU utilisation.
        mem_available_frac: Mean available RAM fraction.
        mem_noise: Standard deviation of the available RAM fraction.
        mem_total_gb: RAM of the notional machine, GiB (gives ``mem_available_gb``).
        gpu_util: Mean GPU utilisation, ``None`` for no GPU.
        gpu_noise: Standard deviation of GPU utilisation.
        vram_free_frac: Mean free VRAM fraction, ``None`` for no GPU.
        vram_noise: Standard deviation of the free VRAM fraction.
        vram_total_gb: VRAM of the notional GPU, GiB (gives ``vram_free_gb``).
        battery_frac: Mean battery charge, ``None`` for no battery.
        battery_noise: Standard deviation of the battery charge.
        on_battery: Whether the machine runs from battery, ``None`` for no battery.
        latency_factor: How much slower inference runs under this load (1.6 = 60 % slower).
        budget_scale: Multiplier on the nominal latency budget (< 1 = tighter, e.g. to save
            energy on battery).
    """

    name: str
    description: str
    cpu_util: float
    cpu_noise: float
    mem_available_frac: float
    mem_noise: float
    mem_total_gb: float = 16.0
    gpu_util: float | None = None
    gpu_noise: float = 0.0
    vram_free_frac: float | None = None
    vram_noise: float = 0.0
    vram_total_gb: float = 8.0
    battery_frac: float | None = None
    battery_noise: float = 0.0
    on_battery: bool | None = None
    latency_factor: float = 1.0
    budget_scale: float = 1.0

    def __post_init__(self) -> None:
        for field_name in ("cpu_util", "mem_available_frac", "gpu_util", "vram_free_frac", "battery_frac"):
            value = getattr(self, field_name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"Scenario {self.name!r}: {field_name} must be in [0, 1], got {value}")
        for field_name in ("cpu_noise", "mem_noise", "gpu_noise", "vram_noise", "battery_noise"):
            value = getattr(self, field_name)
            if not value >= 0.0:
                raise ValueError(f"Scenario {self.name!r}: {field_name} must be >= 0, got {value}")
        for field_name in ("mem_total_gb", "vram_total_gb", "latency_factor", "budget_scale"):
            value = getattr(self, field_name)
            if not value > 0.0:
                raise ValueError(f"Scenario {self.name!r}: {field_name} must be > 0, got {value}")
        if (self.gpu_util is None) != (self.vram_free_frac is None):
            raise ValueError(
                f"Scenario {self.name!r}: gpu_util and vram_free_frac must both be set or both None, "
                f"got {self.gpu_util} and {self.vram_free_frac}"
            )
        if (self.battery_frac is None) != (self.on_battery is None):
            raise ValueError(
                f"Scenario {self.name!r}: battery_frac and on_battery must both be set or both None, "
                f"got {self.battery_frac} and {self.on_battery}"
            )


def _scenarios(*items: Scenario) -> dict[str, Scenario]:
    return {s.name: s for s in items}


# The notional machine: a laptop with 16 GiB RAM, an 8 GiB GPU and a battery.
SCENARIOS: dict[str, Scenario] = _scenarios(
    Scenario(
        name="idle",
        description="nothing else running, on mains power",
        cpu_util=0.10, cpu_noise=0.05,
        mem_available_frac=0.70, mem_noise=0.03,
        gpu_util=0.05, gpu_noise=0.03, vram_free_frac=0.90, vram_noise=0.02,
        battery_frac=0.95, battery_noise=0.02, on_battery=False,
        latency_factor=1.0, budget_scale=1.0,
    ),
    Scenario(
        name="busy_cpu",
        description="background jobs saturate the CPU cores",
        cpu_util=0.85, cpu_noise=0.08,
        mem_available_frac=0.50, mem_noise=0.05,
        gpu_util=0.10, gpu_noise=0.05, vram_free_frac=0.85, vram_noise=0.03,
        battery_frac=0.90, battery_noise=0.03, on_battery=False,
        latency_factor=1.6, budget_scale=1.0,
    ),
    Scenario(
        name="low_memory",
        description="other processes hold most of the RAM; paging risk",
        cpu_util=0.40, cpu_noise=0.10,
        mem_available_frac=0.08, mem_noise=0.03,
        gpu_util=0.10, gpu_noise=0.05, vram_free_frac=0.80, vram_noise=0.03,
        battery_frac=0.90, battery_noise=0.03, on_battery=False,
        latency_factor=1.3, budget_scale=0.9,
    ),
    Scenario(
        name="low_battery",
        description="unplugged with little charge; power saving throttles the clocks",
        cpu_util=0.25, cpu_noise=0.08,
        mem_available_frac=0.60, mem_noise=0.05,
        gpu_util=0.05, gpu_noise=0.03, vram_free_frac=0.90, vram_noise=0.02,
        battery_frac=0.12, battery_noise=0.04, on_battery=True,
        latency_factor=1.25, budget_scale=0.7,
    ),
    Scenario(
        name="gpu_contention",
        description="another job shares the GPU: high utilisation, little free VRAM",
        cpu_util=0.35, cpu_noise=0.08,
        mem_available_frac=0.55, mem_noise=0.05,
        gpu_util=0.90, gpu_noise=0.05, vram_free_frac=0.15, vram_noise=0.05,
        battery_frac=0.90, battery_noise=0.03, on_battery=False,
        latency_factor=1.5, budget_scale=0.9,
    ),
)  # fmt: skip
"""Named synthetic load profiles; see :class:`Scenario`."""

SCENARIO_GROUPS: dict[str, tuple[str, ...]] = {"mixed": tuple(SCENARIOS)}
"""Names that stand for several scenarios; ``"mixed"`` is all of them, one per episode."""


def _valid_scenario_names() -> str:
    return ", ".join([*SCENARIOS, *SCENARIO_GROUPS])


def _resolve_scenarios(name_or_names: str | Sequence[str]) -> tuple[str, ...]:
    """Expand a name, a group name or a list of names into scenario names; raise on unknown names."""
    names = [name_or_names] if isinstance(name_or_names, str) else list(name_or_names)
    if not names:
        raise ValueError(f"need at least one scenario name (one of {_valid_scenario_names()}), got none")
    resolved: list[str] = []
    for name in names:
        if name in SCENARIO_GROUPS:
            resolved.extend(SCENARIO_GROUPS[name])
        elif name in SCENARIOS:
            resolved.append(name)
        else:
            raise ValueError(f"unknown scenario {name!r}; valid names: {_valid_scenario_names()}")
    return tuple(resolved)


class ScenarioMonitor:
    """Synthetic snapshots sampled around the means of named :class:`Scenario` s.

    With several names (or ``"mixed"``) each :meth:`next_episode` (and :meth:`reset`)
    picks one: at random with the monitor's generator, or in order when ``cycle=True``.
    All randomness comes from the monitor's own ``numpy`` generator, so the same seed
    gives the same sequence of snapshots on any machine. Timestamps come from a
    synthetic clock (``tick_s`` per snapshot since the last :meth:`reset`), not the wall clock.

    Args:
        name_or_names: A scenario name, ``"mixed"``, or a sequence of names.
        seed: Seed of the generator (``None``: fresh entropy).
        cycle: Visit the scenarios in order instead of drawing them at random.
        tick_s: Seconds of synthetic clock between two snapshots.
    """

    def __init__(
        self,
        name_or_names: str | Sequence[str] = "idle",
        seed: int | None = None,
        *,
        cycle: bool = False,
        tick_s: float = 1.0,
    ) -> None:
        self.names = _resolve_scenarios(name_or_names)
        self.cycle = bool(cycle)
        self.tick_s = float(tick_s)
        self._rng = np.random.default_rng(seed)
        self._episode = -1
        self._tick = 0
        self._current = SCENARIOS[self.names[0]]
        self.next_episode()

    @property
    def scenario(self) -> Scenario:
        """The scenario of the current episode."""
        return self._current

    @property
    def latency_factor(self) -> float:
        """Slow-down of inference under the current scenario."""
        return self._current.latency_factor

    @property
    def budget_scale(self) -> float:
        """Latency-budget multiplier of the current scenario."""
        return self._current.budget_scale

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: re-seed (when ``seed`` is given), restart the clock and pick a scenario.

        With a seed, the cycle restarts at the first name too, so ``reset(s)`` always gives
        the same snapshots as a fresh ``ScenarioMonitor(names, seed=s)``.
        """
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._episode = -1
        self.next_episode()

    def next_episode(self) -> str:
        """Pick the scenario of the next episode and return its name."""
        self._episode += 1
        self._tick = 0
        if len(self.names) == 1:
            index = 0
        elif self.cycle:
            index = self._episode % len(self.names)
        else:
            index = int(self._rng.integers(len(self.names)))
        self._current = SCENARIOS[self.names[index]]
        return self._current.name

    def snapshot(self) -> TelemetrySnapshot:
        """Sample a snapshot of the current scenario."""
        s = self._current
        # always draw the same number of normals, so a None field does not shift the stream
        z = self._rng.standard_normal(5)
        mem = _clip01(s.mem_available_frac + s.mem_noise * z[1])
        vram = None if s.vram_free_frac is None else _clip01(s.vram_free_frac + s.vram_noise * z[3])
        snap = TelemetrySnapshot(
            cpu_util=_clip01(s.cpu_util + s.cpu_noise * z[0]),
            mem_available_frac=mem,
            mem_available_gb=mem * s.mem_total_gb,
            gpu_util=None if s.gpu_util is None else _clip01(s.gpu_util + s.gpu_noise * z[2]),
            vram_free_frac=vram,
            vram_free_gb=None if vram is None else vram * s.vram_total_gb,
            battery_frac=None if s.battery_frac is None else _clip01(s.battery_frac + s.battery_noise * z[4]),
            on_battery=s.on_battery,
            timestamp=self._tick * self.tick_s,
            source=f"scenario:{s.name}",
        )
        self._tick += 1
        return snap


# --------------------------------------------------------------------------------------
# Traces: record and replay
# --------------------------------------------------------------------------------------

_REQUIRED_KEYS = ("cpu_util", "mem_available_frac", "mem_available_gb")
_FRACTION_KEYS = ("cpu_util", "mem_available_frac", "gpu_util", "vram_free_frac", "battery_frac")
_FLOAT_KEYS = (*_FRACTION_KEYS, "mem_available_gb", "vram_free_gb", "timestamp")


def write_trace(snapshots: Sequence[TelemetrySnapshot], path: str | os.PathLike[str]) -> Path:
    """Write snapshots as JSON lines, atomically (temporary file, then ``os.replace``).

    Args:
        snapshots: The snapshots, in order.
        path: Destination file; its folder is created if needed.

    Returns:
        The destination path.
    """
    text = "".join(json.dumps(dataclasses.asdict(snap)) + "\n" for snap in snapshots)
    return atomic_write_text(path, text)


def _snapshot_from_record(record: dict[str, Any], where: str) -> TelemetrySnapshot:
    """Validate one decoded JSON object and build a snapshot; ``where`` names file and line for errors."""
    missing = [key for key in _REQUIRED_KEYS if record.get(key) is None]
    if missing:
        raise ValueError(f"{where}: missing required field(s) {', '.join(missing)}")
    for key in _FLOAT_KEYS:
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: field {key} must be a finite number or null, got {value!r}")
        if key in _FRACTION_KEYS and not 0.0 <= value <= 1.0:
            raise ValueError(f"{where}: field {key} must be in [0, 1], got {value!r}")
    on_battery = record.get("on_battery")
    if on_battery is not None and not isinstance(on_battery, bool):
        raise ValueError(f"{where}: field on_battery must be true, false or null, got {on_battery!r}")
    # every number as a float (JSON may hold 1 for 1.0); the required ones are not None (checked above)
    numbers = {key: None if record.get(key) is None else float(record[key]) for key in _FLOAT_KEYS}
    numbers["timestamp"] = numbers["timestamp"] or 0.0
    return TelemetrySnapshot(**numbers, on_battery=on_battery, source=str(record.get("source", "live")))


def read_trace(path: str | os.PathLike[str]) -> list[TelemetrySnapshot]:
    """Read a trace written by :func:`write_trace`; blank lines are skipped, unknown keys ignored.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: A line is not a valid snapshot (the message names the file and line number),
            or the file holds no snapshot.
    """
    src = Path(path)
    snapshots: list[TelemetrySnapshot] = []
    with src.open(encoding="utf-8") as fh:
        for lineno, record in json_object_lines(fh, lambda n: f"{src}:{n}"):
            snapshots.append(_snapshot_from_record(record, f"{src}:{lineno}"))
    if not snapshots:
        raise ValueError(f"{src}: expected at least one snapshot, got an empty trace")
    return snapshots


class TraceRecorder:
    """Collects snapshots from a monitor and writes them as a trace.

    Args:
        monitor: The source of snapshots (usually a :class:`HardwareMonitor`).
    """

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.snapshots: list[TelemetrySnapshot] = []

    def record(
        self, n: int, interval_s: float = 1.0, sleep: Callable[[float], None] = time.sleep
    ) -> list[TelemetrySnapshot]:
        """Take ``n`` snapshots, ``interval_s`` seconds apart; return them (also kept in ``snapshots``)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        taken: list[TelemetrySnapshot] = []
        for i in range(n):
            if i and interval_s:
                sleep(interval_s)
            taken.append(self.monitor.snapshot())
        self.snapshots.extend(taken)
        return taken

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the collected snapshots atomically as JSON lines; return the path."""
        if not self.snapshots:
            raise ValueError("expected at least one recorded snapshot before save(), got none")
        return write_trace(self.snapshots, path)


def record_trace(
    monitor: Monitor,
    path: str | os.PathLike[str],
    n: int = 60,
    interval_s: float = 1.0,
) -> Path:
    """Record ``n`` snapshots from ``monitor``, ``interval_s`` seconds apart, into a JSON-lines trace.

    The file is written atomically once all snapshots are taken. Returns its path.
    """
    recorder = TraceRecorder(monitor)
    recorder.record(n, interval_s)
    return recorder.save(path)


class ReplayMonitor:
    """Plays back a recorded trace in order, starting over after the last snapshot.

    Snapshots keep their recorded values and timestamps; ``source`` becomes
    ``"replay:<file name>"``. Episodes continue the trace (:meth:`next_episode` does not
    rewind); :meth:`reset` rewinds to the first snapshot.

    Args:
        path: A trace written by :func:`record_trace` / :func:`write_trace`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        source = f"replay:{self.path.name}"
        self.snapshots = [dataclasses.replace(s, source=source) for s in read_trace(self.path)]
        self._pos = 0

    def __len__(self) -> int:
        return len(self.snapshots)

    @property
    def latency_factor(self) -> float:
        """1.0: a trace records load, not its effect on inference speed."""
        return 1.0

    @property
    def budget_scale(self) -> float:
        """1.0: replay uses the nominal latency budget."""
        return 1.0

    def reset(self, seed: int | None = None) -> None:
        """Rewind to the first snapshot (``seed`` is accepted for the protocol and ignored)."""
        del seed
        self._pos = 0

    def next_episode(self) -> str:
        """Keep playing from the current position; return the trace's source name."""
        return f"replay:{self.path.name}"

    def snapshot(self) -> TelemetrySnapshot:
        """Return the next snapshot of the trace, cycling at the end."""
        snap = self.snapshots[self._pos]
        self._pos = (self._pos + 1) % len(self.snapshots)
        return snap


# --------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------


def make_monitor(
    mode: str,
    *,
    device: str = "cpu",
    scenario: str | Sequence[str] | None = None,
    trace: str | os.PathLike[str] | None = None,
    seed: int | None = None,
) -> Monitor:
    """Build a telemetry source.

    Args:
        mode: ``"live"`` (the real machine), ``"scenario"`` (synthetic load) or ``"replay"`` (a trace).
        device: Device of the model, for the live GPU fields.
        scenario: Scenario name(s) or ``"mixed"``; required for, and only for, ``"scenario"``.
        trace: Trace file; required for, and only for, ``"replay"``.
        seed: Seed of the scenario generator (scenario mode only).

    Raises:
        ValueError: Unknown mode, a missing argument the mode needs, or one it does not use.
    """
    if mode not in MONITOR_MODES:
        raise ValueError(f"mode must be one of {', '.join(MONITOR_MODES)}, got {mode!r}")
    if mode != "scenario" and scenario is not None:
        raise ValueError(f"scenario= is only used with mode='scenario', got mode={mode!r}")
    if mode != "replay" and trace is not None:
        raise ValueError(f"trace= is only used with mode='replay', got mode={mode!r}")
    if mode == "live":
        return HardwareMonitor(device)
    if mode == "scenario":
        if scenario is None:
            raise ValueError(
                f"mode='scenario' needs scenario=<name> (one of {_valid_scenario_names()}), got None"
            )
        return ScenarioMonitor(scenario, seed=seed)
    if trace is None:
        raise ValueError("mode='replay' needs trace=<path to a JSON-lines trace>, got None")
    return ReplayMonitor(trace)
