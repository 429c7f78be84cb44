"""Tests of dynprune.telemetry: live snapshots, scenarios, traces and the factory."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import types
from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from dynprune import telemetry
from dynprune.telemetry import (
    MISSING,
    SCENARIOS,
    TELEMETRY_FIELDS,
    HardwareMonitor,
    Monitor,
    ReplayMonitor,
    Scenario,
    ScenarioMonitor,
    TraceRecorder,
    make_monitor,
    read_trace,
    record_trace,
    snapshot_to_vector,
)
from dynprune.types import TelemetrySnapshot

FRACTIONS = ("cpu_util", "mem_available_frac", "gpu_util", "vram_free_frac", "battery_frac")


def assert_valid(snap: TelemetrySnapshot) -> None:
    """Every fraction is in [0, 1] or None; GiB fields are >= 0 or None."""
    for name in FRACTIONS:
        value = getattr(snap, name)
        assert value is None or 0.0 <= value <= 1.0, (name, value)
    for name in ("mem_available_gb", "vram_free_gb"):
        value = getattr(snap, name)
        assert value is None or value >= 0.0, (name, value)
    assert snap.on_battery in (None, True, False)


# ---------------------------------------------------------------------------- fake NVML / torch


class FakeNVMLError(Exception):
    pass


def fake_pynvml(*, init_fails: bool = False, util_fails: bool = False) -> types.ModuleType:
    """A stand-in for pynvml: one 80 GiB GPU at 42 % with 20 GiB free; records the index asked for."""
    mod = types.ModuleType("pynvml")
    mod.asked = []  # type: ignore[attr-defined]

    def nvmlInit() -> None:
        if init_fails:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByIndex(index: int) -> str:
        mod.asked.append(index)  # type: ignore[attr-defined]
        return f"handle{index}"

    def nvmlDeviceGetUtilizationRates(handle: str) -> object:
        if util_fails:
            raise FakeNVMLError("Not Supported")
        return types.SimpleNamespace(gpu=42, memory=10)

    def nvmlDeviceGetMemoryInfo(handle: str) -> object:
        return types.SimpleNamespace(free=20 * 2**30, total=80 * 2**30, used=60 * 2**30)

    mod.nvmlInit = nvmlInit  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByIndex = nvmlDeviceGetHandleByIndex  # type: ignore[attr-defined]
    mod.nvmlDeviceGetUtilizationRates = nvmlDeviceGetUtilizationRates  # type: ignore[attr-defined]
    mod.nvmlDeviceGetMemoryInfo = nvmlDeviceGetMemoryInfo  # type: ignore[attr-defined]
    return mod


def fake_torch(cuda: bool) -> types.ModuleType:
    """A stand-in for torch with only ``torch.cuda.is_available`` and ``mem_get_info`` (2 of 8 GiB free)."""
    mod = types.ModuleType("torch")
    mod.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        is_available=lambda: cuda, mem_get_info=lambda index: (2 * 2**30, 8 * 2**30)
    )
    return mod


# ---------------------------------------------------------------------------- live


def test_live_snapshot_fields_in_range_or_none() -> None:
    monitor = HardwareMonitor("cpu")
    snap = monitor.snapshot()
    assert_valid(snap)
    assert snap.source == "live"
    assert snap.cpu_util is not None and snap.mem_available_frac is not None
    assert snap.mem_available_gb is not None and snap.mem_available_gb > 0
    # a CPU device reports no GPU fields
    assert snap.gpu_util is None and snap.vram_free_frac is None and snap.vram_free_gb is None
    assert monitor.latency_factor == 1.0 and monitor.budget_scale == 1.0
    assert isinstance(monitor, Monitor)


def test_cpu_percent_is_primed_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    def cpu_percent(interval: object = "unset") -> float:
        calls.append(interval)
        return 37.0

    monkeypatch.setattr(psutil, "cpu_percent", cpu_percent)
    monitor = HardwareMonitor()
    assert calls == [None]
    assert monitor.snapshot().cpu_util == pytest.approx(0.37)
    assert calls == [None, None]


def test_snapshot_to_vector_maps_none_to_missing() -> None:
    snap = TelemetrySnapshot(cpu_util=0.5, mem_available_frac=0.25, mem_available_gb=4.0, battery_frac=0.8)
    assert snapshot_to_vector(snap) == [0.5, 0.25, MISSING, MISSING, 0.8]
    assert MISSING == -1.0
    assert TELEMETRY_FIELDS == (
        "cpu_util",
        "mem_available_frac",
        "gpu_util",
        "vram_free_frac",
        "battery_frac",
    )


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cuda:-1", ""])
def test_bad_device_is_an_error(device: str) -> None:
    with pytest.raises(ValueError, match="cuda:N"):
        HardwareMonitor(device)


def test_cuda_without_nvml_or_cuda_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's situation for a CUDA device: no NVML library, no CUDA -> None fields, no crash."""
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(init_fails=True))
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda=False))
    snap = HardwareMonitor("cuda:0").snapshot()
    assert_valid(snap)
    assert (snap.gpu_util, snap.vram_free_frac, snap.vram_free_gb) == (None, None, None)
    vec = snapshot_to_vector(snap)
    assert vec[TELEMETRY_FIELDS.index("gpu_util")] == MISSING
    assert vec[TELEMETRY_FIELDS.index("vram_free_frac")] == MISSING


def test_real_nvml_absent_or_present_never_crashes() -> None:
    """With the real pynvml: whatever this machine has, a CUDA snapshot is valid."""
    snap = HardwareMonitor("cuda").snapshot()
    assert_valid(snap)


def test_nvml_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    snap = HardwareMonitor("cuda:1").snapshot()
    assert snap.gpu_util == pytest.approx(0.42)
    assert snap.vram_free_frac == pytest.approx(0.25)
    assert snap.vram_free_gb == pytest.approx(20.0)
    assert nvml.asked == [1]  # type: ignore[attr-defined]


def test_nvml_honours_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monitor = HardwareMonitor("cuda:1")
    monitor.snapshot()
    monitor.snapshot()
    assert nvml.asked == [5]  # type: ignore[attr-defined]  # NVML initialised once


def test_nvml_utilisation_failure_keeps_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(util_fails=True))
    snap = HardwareMonitor("cuda").snapshot()
    assert snap.gpu_util is None
    assert snap.vram_free_frac == pytest.approx(0.25)


def test_torch_fallback_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(init_fails=True))
    monkeypatch.setitem(sys.modules, "torch", fake_torch(cuda=True))
    snap = HardwareMonitor("cuda:0").snapshot()
    assert snap.gpu_util is None
    assert snap.vram_free_frac == pytest.approx(0.25)
    assert snap.vram_free_gb == pytest.approx(2.0)


def test_battery_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    battery = namedtuple("sbattery", "percent secsleft power_plugged")
    monkeypatch.setattr(psutil, "sensors_battery", lambda: battery(35.0, 3600, False), raising=False)
    snap = HardwareMonitor().snapshot()
    assert snap.battery_frac == pytest.approx(0.35)
    assert snap.on_battery is True
    monkeypatch.setattr(psutil, "sensors_battery", lambda: battery(80.0, -2, None), raising=False)
    snap = HardwareMonitor().snapshot()
    assert snap.battery_frac == pytest.approx(0.8) and snap.on_battery is None


def test_sensor_failures_give_none_and_log_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise RuntimeError("sensor exploded")

    monitor = HardwareMonitor()
    monkeypatch.setattr(psutil, "sensors_battery", broken, raising=False)
    monkeypatch.setattr(psutil, "cpu_percent", broken)
    monkeypatch.setattr(psutil, "virtual_memory", broken)
    with caplog.at_level(logging.DEBUG, logger="dynprune.telemetry"):
        first = monitor.snapshot()
        monitor.snapshot()
    assert first.battery_frac is None and first.on_battery is None
    assert first.cpu_util is None and first.mem_available_frac is None
    assert snapshot_to_vector(first) == [MISSING] * len(TELEMETRY_FIELDS)
    battery_logs = [r for r in caplog.records if "battery" in r.getMessage()]
    assert len(battery_logs) == 1 and battery_logs[0].levelno == logging.DEBUG


def test_battery_sensor_missing_from_psutil(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(psutil, "sensors_battery", raising=False)
    snap = HardwareMonitor().snapshot()
    assert snap.battery_frac is None and snap.on_battery is None


# ---------------------------------------------------------------------------- scenarios


def take(monitor: Monitor, n: int) -> list[TelemetrySnapshot]:
    return [monitor.snapshot() for _ in range(n)]


def test_scenario_table() -> None:
    assert set(SCENARIOS) == {"idle", "busy_cpu", "low_memory", "low_battery", "gpu_contention"}
    assert SCENARIOS["idle"].latency_factor == 1.0
    assert all(s.latency_factor >= 1.0 and s.budget_scale > 0 for s in SCENARIOS.values())
    assert SCENARIOS["busy_cpu"].cpu_util > SCENARIOS["idle"].cpu_util
    assert SCENARIOS["low_memory"].mem_available_frac < 0.2
    assert SCENARIOS["low_battery"].on_battery is True
    assert SCENARIOS["gpu_contention"].gpu_util > 0.8


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_snapshots_valid_and_centred(name: str) -> None:
    monitor = ScenarioMonitor(name, seed=1)
    snaps = take(monitor, 200)
    for snap in snaps:
        assert_valid(snap)
        assert snap.source == f"scenario:{name}"
    scenario = SCENARIOS[name]
    mean_cpu = sum(s.cpu_util for s in snaps) / len(snaps)
    assert mean_cpu == pytest.approx(scenario.cpu_util, abs=0.05)
    assert monitor.latency_factor == scenario.latency_factor
    assert monitor.budget_scale == scenario.budget_scale
    assert [s.timestamp for s in snaps[:3]] == [0.0, 1.0, 2.0]


def test_scenario_determinism() -> None:
    a = take(ScenarioMonitor("mixed", seed=7), 20)
    b = take(ScenarioMonitor("mixed", seed=7), 20)
    c = take(ScenarioMonitor("mixed", seed=8), 20)
    assert a == b
    assert a != c


def test_scenario_reset_reseeds() -> None:
    monitor = ScenarioMonitor(["idle", "busy_cpu"], seed=3)
    first = [monitor.scenario.name, *take(monitor, 5)]
    for _ in range(4):
        monitor.next_episode()
        take(monitor, 3)
    monitor.reset(seed=3)
    assert [monitor.scenario.name, *take(monitor, 5)] == first
    monitor.reset(seed=4)
    assert take(monitor, 5) != first[1:]


def test_scenario_episodes_pick_from_names() -> None:
    monitor = ScenarioMonitor("mixed", seed=0)
    picked = {monitor.next_episode() for _ in range(100)}
    assert picked == set(SCENARIOS)
    cycling = ScenarioMonitor(["busy_cpu", "idle"], seed=0, cycle=True)
    assert cycling.scenario.name == "busy_cpu"
    assert [cycling.next_episode() for _ in range(3)] == ["idle", "busy_cpu", "idle"]
    monitor = ScenarioMonitor("low_battery", seed=0)
    assert monitor.next_episode() == "low_battery"
    assert monitor.latency_factor == SCENARIOS["low_battery"].latency_factor


def test_unknown_scenario_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        ScenarioMonitor("turbo")
    message = str(err.value)
    assert "'turbo'" in message
    for name in [*SCENARIOS, "mixed"]:
        assert name in message
    with pytest.raises(ValueError, match="at least one"):
        ScenarioMonitor([])


def test_scenario_validation() -> None:
    with pytest.raises(ValueError, match=r"cpu_util must be in \[0, 1\], got 1.5"):
        Scenario(
            name="bad", description="", cpu_util=1.5, cpu_noise=0.0, mem_available_frac=0.5, mem_noise=0.0
        )
    with pytest.raises(ValueError, match="latency_factor must be > 0"):
        Scenario(
            name="bad", description="", cpu_util=0.5, cpu_noise=0.0, mem_available_frac=0.5, mem_noise=0.0,
            latency_factor=0.0,
        )  # fmt: skip
    with pytest.raises(ValueError, match="both be set or both None"):
        Scenario(
            name="bad", description="", cpu_util=0.5, cpu_noise=0.0, mem_available_frac=0.5, mem_noise=0.0,
            gpu_util=0.5,
        )  # fmt: skip


def test_scenario_without_gpu_has_none_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    bare = Scenario(
        name="bare", description="", cpu_util=0.5, cpu_noise=0.1, mem_available_frac=0.5, mem_noise=0.1
    )
    monkeypatch.setitem(telemetry.SCENARIOS, "bare", bare)
    snap = ScenarioMonitor("bare", seed=0).snapshot()
    assert snap.gpu_util is None and snap.vram_free_gb is None and snap.battery_frac is None
    assert snapshot_to_vector(snap)[2:] == [MISSING, MISSING, MISSING]


# ---------------------------------------------------------------------------- traces


def test_trace_round_trip(tmp_path: Path) -> None:
    snaps = take(ScenarioMonitor("mixed", seed=5), 4)
    path = record_trace(ScenarioMonitor("mixed", seed=5), tmp_path / "sub" / "trace.jsonl", n=4, interval_s=0)
    assert path.exists()
    assert [p.name for p in path.parent.iterdir()] == ["trace.jsonl"]  # no temporary file left behind
    assert read_trace(path) == snaps
    replay = ReplayMonitor(path)
    assert len(replay) == 4
    played = take(replay, 6)
    expected = [dataclasses.replace(s, source="replay:trace.jsonl") for s in snaps]
    assert played == expected + expected[:2]  # cycles at the end
    replay.reset(seed=123)
    assert replay.snapshot() == expected[0]
    assert replay.latency_factor == 1.0 and isinstance(replay, Monitor)


def test_trace_of_live_monitor_round_trips(tmp_path: Path) -> None:
    path = record_trace(HardwareMonitor(), tmp_path / "live.jsonl", n=2, interval_s=0)
    snaps = read_trace(path)
    assert len(snaps) == 2 and all(s.source == "live" for s in snaps)
    for snap in snaps:
        assert_valid(snap)


def test_recorder_sleeps_between_snapshots(tmp_path: Path) -> None:
    sleeps: list[float] = []
    recorder = TraceRecorder(ScenarioMonitor("idle", seed=0))
    recorder.record(3, interval_s=0.5, sleep=sleeps.append)
    assert sleeps == [0.5, 0.5]
    assert len(recorder.snapshots) == 3
    recorder.save(tmp_path / "t.jsonl")
    with pytest.raises(ValueError, match="n must be >= 1"):
        recorder.record(0)
    with pytest.raises(ValueError, match="at least one recorded snapshot"):
        TraceRecorder(ScenarioMonitor("idle")).save(tmp_path / "empty.jsonl")


def good_line() -> str:
    return json.dumps({"cpu_util": 0.5, "mem_available_frac": 0.5, "mem_available_gb": 8.0})


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"cpu_util": 0.5}), "missing required field"),
        (json.dumps({"cpu_util": 2.0, "mem_available_frac": 0.5, "mem_available_gb": 8.0}), r"\[0, 1\]"),
        (json.dumps({"cpu_util": "hi", "mem_available_frac": 0.5, "mem_available_gb": 8.0}), "finite number"),
    ],
)
def test_malformed_trace_line_names_file_and_line(tmp_path: Path, bad: str, why: str) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(f"{good_line()}\n\n{bad}\n{good_line()}\n")
    with pytest.raises(ValueError, match=why) as err:
        ReplayMonitor(path)
    assert f"{path}:3" in str(err.value)


def test_empty_trace_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty trace"):
        ReplayMonitor(path)


# ---------------------------------------------------------------------------- factory


def test_make_monitor_modes(tmp_path: Path) -> None:
    assert isinstance(make_monitor("live"), HardwareMonitor)
    scenario = make_monitor("scenario", scenario="busy_cpu", seed=0)
    assert isinstance(scenario, ScenarioMonitor) and scenario.latency_factor == 1.6
    path = record_trace(scenario, tmp_path / "t.jsonl", n=2, interval_s=0)
    assert isinstance(make_monitor("replay", trace=path), ReplayMonitor)


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"mode": "turbo"}, "mode must be one of live, scenario, replay, got 'turbo'"),
        ({"mode": "scenario"}, "needs scenario="),
        ({"mode": "replay"}, "needs trace="),
        ({"mode": "live", "scenario": "idle"}, "only used with mode='scenario'"),
        ({"mode": "scenario", "scenario": "idle", "trace": "x"}, "only used with mode='replay'"),
        ({"mode": "scenario", "scenario": "nope"}, "unknown scenario 'nope'"),
    ],
)
def test_make_monitor_errors(kwargs: dict[str, object], why: str) -> None:
    mode = kwargs.pop("mode")
    with pytest.raises(ValueError, match=why):
        make_monitor(mode, **kwargs)  # type: ignore[arg-type]
