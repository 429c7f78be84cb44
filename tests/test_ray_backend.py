"""``dynprune explore --backend ray`` on a real local Ray runtime, bound to 127.0.0.1 only.

One runtime for the module (2 CPUs, started by the same function the command uses when no
cluster is named), stopped at the end together with every process it started. Each test
runs the real command on tiny-llama and compares with the processes backend.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import threading
from collections.abc import Iterator
from pathlib import Path

# Ray reads it when imported: it must come before the first `import ray` (offline_data.ray_backend)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pytest  # noqa: E402

ray = pytest.importorskip("ray")

# Ray's start and each worker's torch import take seconds: 68 s for the file at load average 12 on 2 cores
pytestmark = pytest.mark.slow

from dynprune.cli import main  # noqa: E402
from offline_data.dataset import load_logs, read_meta, shard_paths  # noqa: E402

N_PROMPTS = 4
EXPLORE = ["explore", "--strategy", "sweep", "--model", "tiny-llama", "--reward", "proxy", "--max-new-tokens", "3",
           "--profile-tokens", "2", "--profile-repeats", "1", "--prompts", str(N_PROMPTS)]
# measured with a clock, so they differ between any two runs; everything else must match
TIMING_COLUMNS = {"latency_s", "tokens_per_s", "speedup", "baseline_latency_s", "baseline_tokens_per_s"}


def _ray_processes(before: set[int]) -> list[psutil.Process]:
    """Processes under this one that were not there before Ray started (GCS, raylet, agents, workers)."""
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in before]


@pytest.fixture(scope="module")
def ray_started() -> Iterator[set[int]]:
    """A private Ray runtime with 2 CPUs; yields the pids that were there before it."""
    from offline_data.ray_backend import start_local_ray

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    start_local_ray(num_cpus=2)
    try:
        yield before
    finally:
        started = _ray_processes(before)
        ray.shutdown()
        _, alive = psutil.wait_procs(started, timeout=20)
        for proc in alive:  # only processes this fixture's runtime started, by pid
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        assert not alive, f"Ray processes still running after ray.shutdown(): {[p.pid for p in alive]}"


def explore_cli(out: Path, *extra: str) -> int:
    return main([*EXPLORE, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same exploration on the processes backend (one worker, in this process)."""
    out = tmp_path_factory.mktemp("processes")
    assert explore_cli(out) == 0
    return out


def assert_same_rows(got: Path, want: Path) -> None:
    a, b = (sorted(load_logs(d).to_list(), key=lambda r: (r["prompt_id"], r["order"])) for d in (got, want))
    assert len(a) == len(b) == N_PROMPTS * 10
    for x, y in zip(a, b, strict=True):
        for column in x.keys() - TIMING_COLUMNS:
            if isinstance(y[column], float) or column == "observation":
                # another thread count may change the last bits of a float reduction
                np.testing.assert_allclose(x[column], y[column], rtol=1e-5, err_msg=column)
            else:
                assert x[column] == y[column], column
    assert read_meta(got)["settings"] == read_meta(want)["settings"]


@contextlib.contextmanager
def kill_worker_after_new_shard(out: Path) -> Iterator[dict[str, object]]:
    """Kill the Ray worker running run_worker as soon as a shard appears that was not there before.

    Yields a dict that gets ``pid`` (the killed worker) and ``shard`` (the new shard, with its
    ``mtime_ns``); empty when the task ended before it could be killed.
    """
    old = set(shard_paths(out)) if out.is_dir() else set()
    record: dict[str, object] = {}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.01):
            new = sorted(set(shard_paths(out)) - old) if out.is_dir() else []
            if not new:
                continue
            for proc in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    # Ray names a worker process after the task it runs
                    if proc.name().startswith("ray::run_worker"):
                        record.update(pid=proc.pid, shard=new[0], mtime_ns=new[0].stat().st_mtime_ns)
                        proc.kill()
                        return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        stop.set()
        thread.join()


def test_ray_tasks_write_the_processes_rows_with_the_threads_asked(ray_started, reference, tmp_path, capsys):
    out = tmp_path / "ray"
    assert explore_cli(out, "--backend", "ray", "--workers", "2", "--threads", "2") == 0
    printed = capsys.readouterr().out
    assert f"{N_PROMPTS} prompts measured ({N_PROMPTS * 10} rows), 0 already logged" in printed
    # read by each task in its own process: the option reached the tasks
    assert "torch threads per Ray task: 2" in printed
    assert_same_rows(out, reference)
    # a second run finds every prompt logged and starts no task
    assert explore_cli(out, "--backend", "ray", "--workers", "2", "--threads", "2") == 0
    assert f"0 prompts measured (0 rows), {N_PROMPTS} already logged" in capsys.readouterr().out


def test_a_killed_worker_is_run_again_and_loses_nothing(ray_started, reference, tmp_path, capsys):
    out = tmp_path / "ray"
    with kill_worker_after_new_shard(out) as killed:
        assert explore_cli(out, "--backend", "ray") == 0
    assert killed, "the Ray task finished before the test could kill its worker"
    # Ray ran the task again; the new attempt skipped what the dead one wrote, and the count
    # comes from the folder (the attempt's own report would say "1 already logged")
    printed = capsys.readouterr().out
    assert f"{N_PROMPTS} prompts measured ({N_PROMPTS * 10} rows), 0 already logged" in printed
    assert killed["shard"].stat().st_mtime_ns == killed["mtime_ns"]  # written once, before the kill
    assert_same_rows(out, reference)


def test_spent_retries_end_in_one_line_and_a_rerun_resumes(ray_started, reference, tmp_path, capsys):
    out = tmp_path / "ray"
    with kill_worker_after_new_shard(out) as killed:
        assert explore_cli(out, "--backend", "ray", "--retries", "0") == 1
    assert killed, "the Ray task finished before the test could kill its worker"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("dynprune explore: error:")]
    assert len(lines) == 1, err
    assert "worker 0: WorkerCrashedError" in lines[0] and lines[0].endswith("re-run to resume")
    logged = len(shard_paths(out))  # the killed prompt's and, on a slow machine, perhaps one more
    assert killed["shard"] in shard_paths(out) and logged < N_PROMPTS
    assert f"{logged} of {N_PROMPTS} logged" in lines[0]
    # the re-run picks up after the logged prompts (resuming is the same on either backend; this
    # one runs in this process, sparing a Ray worker start)
    assert explore_cli(out) == 0
    printed = capsys.readouterr().out
    rest = N_PROMPTS - logged
    assert f"{rest} prompts measured ({rest * 10} rows), {logged} already logged" in printed
    assert killed["shard"].stat().st_mtime_ns == killed["mtime_ns"]
    assert_same_rows(out, reference)


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def test_nothing_ray_started_uses_an_address_beyond_loopback(ray_started):
    # after the runs above, so the task workers exist beside the GCS, raylet and agents
    pids = {p.pid for p in _ray_processes(ray_started)}
    assert len(pids) >= 3
    sockets = [c for c in psutil.net_connections(kind="inet") if c.pid in pids and c.laddr]
    assert any(c.status == psutil.CONN_LISTEN for c in sockets)
    beyond = [(c.pid, c.status, c.laddr) for c in sockets if not _loopback(c.laddr.ip)]
    assert beyond == []
