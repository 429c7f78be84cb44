"""Fault injection on run folders: signals, kills, damaged files, read-only folders, a full disk.

Every case checks three things: nothing finished is lost, nothing is counted twice, and the
error is one line that names the value and says what to do.

How the faults are made:

- **SIGINT**: the process sends itself ``SIGINT`` from inside the env's ``step`` (a real signal;
  Python turns it into ``KeyboardInterrupt`` at the next bytecode, as with Ctrl-C), in process.
- **SIGKILL**: a child process runs the real ``dynprune`` command and kills itself with
  ``SIGKILL`` at a chosen point (an env step, a file rename); the test then resumes in process.
- **Read-only folders**: ``chmod 0o555`` when that binds. As root (these tests often run as root,
  and root writes through permission bits) it does not, and mounting a read-only or tiny
  filesystem needs privileges a test must not assume; then a *write hook* stands in: every
  Python-level way of creating, opening for writing, renaming or deleting a path under the
  folder raises ``PermissionError(EACCES)``, as the kernel would.
- **Full disk**: the same hook, armed at a chosen point, lets files open but every write
  under the folder raise ``OSError(ENOSPC)``, as a full filesystem does.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynprune.cli import main
from dynprune.records import read_jsonl

# profiled timing: the faults do not depend on how latency is timed, and it needs no latency model fitted first
TINY = ["--model", "tiny-llama", "--max-new-tokens", "3", "--profile-tokens", "2", "--profile-repeats", "1",
        "--train-prompts", "6", "--test-prompts", "2", "--reward", "proxy", "--checkpoint-every", "4",
        "--timing", "profiled"]
EXPLORE = ["--model", "tiny-llama", "--max-new-tokens", "3", "--profile-tokens", "2", "--profile-repeats", "1",
           "--timing", "profiled"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """Calibrations of these tests go to a cache of their own (shared by the module's tests)."""
    monkeypatch.setenv("DYNPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "faults-cache"))


def run(*argv: str | Path) -> int:
    return main([str(a) for a in argv])


def one_line_error(err: str, command: str) -> str:
    """The error line of a failed command; fails unless stderr ends in exactly one ``error:`` line."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert lines[-1].startswith(f"dynprune {command}: error: "), lines[-1]
    assert "Traceback" not in err
    return lines[-1]


def assert_run_log(run_dir: Path, steps: int) -> None:
    """Every step logged once, episodes numbered 0..steps-1, train_log in step with metrics."""
    records = read_jsonl(run_dir / "metrics.jsonl")
    ids = [(r["episode"], r["step"]) for r in records]
    assert len(records) == steps, f"{len(records)} step records for {steps} steps"
    assert len(set(ids)) == len(ids), f"duplicate (episode, step) ids: {sorted(ids)}"
    assert sorted(r["episode"] for r in records) == list(range(steps)), [r["episode"] for r in records]
    log = read_jsonl(run_dir / "train_log.jsonl")
    assert [e["timesteps"] for e in log] == list(range(1, steps + 1)), [e["timesteps"] for e in log]
    assert [e["episode"] for e in log] == list(range(steps)), [e["episode"] for e in log]


def replay_size(run_dir: Path) -> int:
    """Transitions in the run's checkpointed replay buffer."""
    from stable_baselines3.common.save_util import load_from_pkl

    rb = load_from_pkl(run_dir / "checkpoint_replay.pkl")
    return rb.buffer_size if rb.full else rb.pos


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt for the test, as in an interactive shell.

    A suite started in the background by a non-interactive shell (``make test &``, CI runners) inherits SIGINT
    ignored, and Python then installs no handler: the Ctrl-C tests would see nothing.
    """
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def signal_at_step(monkeypatch, n: int, sig: int) -> object:
    """The process sends itself ``sig`` during the ``n``-th env step (1-based); returns the real ``step``."""
    from envs.dynprune_env import DynPruneEnv

    real = DynPruneEnv.step
    calls = {"n": 0}

    def step(self, action):
        calls["n"] += 1
        if calls["n"] == n:
            signal.raise_signal(sig)  # raise(3): to this (the main) thread, as a terminal's Ctrl-C
        return real(self, action)

    monkeypatch.setattr(DynPruneEnv, "step", step)
    return real


def hf_folder(path: Path) -> dict[str, bytes]:
    """A Hugging Face model folder with a user's notes; returns its files' bytes."""
    path.mkdir(parents=True)
    files = {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 64}).encode(),
        "model.safetensors": os.urandom(4096),
        "tokenizer.json": b'{"version": "1.0"}',
        "notes.txt": b"my notes",
    }
    for name, data in files.items():
        (path / name).write_bytes(data)
    return files


def folder_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the write hook


def _under(path: object, folder: Path) -> bool:
    if isinstance(path, int):  # an open file descriptor: not a path
        return False
    try:
        p = Path(os.fsdecode(path))
    except TypeError:
        return False
    p = Path(os.path.abspath(p))
    return p == folder or folder in p.parents


def _enospc(name: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fsdecode(name))


def _fd_path(fd: int) -> str | None:
    """The path an open file descriptor names (Linux ``/proc``), or None."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


class _FullDiskFile:
    """A file opened for writing on a full disk: it opens, reads and seeks; every write fails with ENOSPC."""

    def __init__(self, real, name: str) -> None:
        self._real, self.name = real, name

    def write(self, data) -> int:
        raise _enospc(self.name)

    def writelines(self, lines) -> None:
        raise _enospc(self.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._real.close()

    def __iter__(self):
        return iter(self._real)

    def __getattr__(self, name: str):
        return getattr(self._real, name)


_HOOKS: list[WriteHook] = []


@pytest.fixture(autouse=True)
def _remove_write_hooks() -> Iterator[None]:
    """A failed test must not leave a hook behind for the next one."""
    yield
    while _HOOKS:
        _HOOKS.pop().remove()


class WriteHook:
    """Makes ``folder`` read-only (``mode="read-only"``) or full (``mode="full"``) for this process.

    Installed on creation; :meth:`remove` restores the real functions.
    """

    def __init__(self, folder: Path, mode: str) -> None:
        self.folder, self.mode = Path(os.path.abspath(folder)), mode
        self._mp = pytest.MonkeyPatch()
        _HOOKS.append(self)
        real_open, real_os_open = builtins.open, os.open
        writes = ("w", "a", "x", "+")

        def denied(path: object) -> OSError:
            return PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

        def hooked_open(file, mode="r", *args, **kwargs):
            if _under(file, self.folder) and any(c in mode for c in writes):
                if self.mode == "read-only":
                    raise denied(file)
                return _FullDiskFile(real_open(file, mode, *args, **kwargs), os.fsdecode(file))
            return real_open(file, mode, *args, **kwargs)

        def hooked_os_open(path, flags, *args, **kwargs):
            if (self.mode == "read-only" and _under(path, self.folder)
                    and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)):
                raise denied(path)
            return real_os_open(path, flags, *args, **kwargs)

        def guard(real):
            def hooked(*paths, **kwargs):
                inside = [p for p in paths[:2] if _under(p, self.folder)]
                if self.mode == "read-only" and inside:
                    if real is real_mkdir and os.path.exists(inside[0]):
                        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(inside[0]))
                    raise denied(inside[0])
                return real(*paths, **kwargs)
            return hooked

        def full_fd(real):
            # native writers (pyarrow, safetensors) bypass Python's open; a full disk shows on their
            # fsync (delayed allocation) or on os.write
            def hooked(fd, *args, **kwargs):
                path = _fd_path(fd) if self.mode == "full" else None
                if path is not None and _under(path, self.folder):
                    raise _enospc(path)
                return real(fd, *args, **kwargs)
            return hooked

        real_mkdir = os.mkdir
        self._mp.setattr(os, "fsync", full_fd(os.fsync))
        self._mp.setattr(os, "write", full_fd(os.write))
        self._mp.setattr(builtins, "open", hooked_open)
        self._mp.setattr(io, "open", hooked_open)
        self._mp.setattr(os, "open", hooked_os_open)
        for name in ("replace", "rename", "mkdir", "unlink", "remove", "rmdir", "truncate"):
            self._mp.setattr(os, name, guard(getattr(os, name)))

    def remove(self) -> None:
        self._mp.undo()


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """Make ``folder`` read-only for this process; yields how (``"chmod"`` or ``"write hook"``)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o555)
    probe = folder / ".probe"
    hook = None
    try:
        probe.write_bytes(b"")
    except PermissionError:
        how = "chmod"
    else:  # root (or CAP_DAC_OVERRIDE) writes through the mode bits
        probe.unlink()
        how = "write hook"
        hook = WriteHook(folder, "read-only")
    try:
        yield how
    finally:
        if hook is not None:
            hook.remove()
        os.chmod(folder, 0o755)


# --------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished 8-episode run (checkpoints every 4 steps); tests copy it."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DYNPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "faults-cache"))
        assert run("train", "--run-dir", run_dir, "--episodes", "8", *TINY) == 0
    return run_dir


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


# --------------------------------------------------------------------------- resume


def test_sigint_then_resume_numbers_on(tmp_path, monkeypatch, capsys, ctrl_c_raises):
    run_dir = tmp_path / "run"
    from envs.dynprune_env import DynPruneEnv

    real = signal_at_step(monkeypatch, 10, signal.SIGINT)
    assert run("train", "--run-dir", run_dir, "--episodes", "16", *TINY) == 130
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 9  # every finished step kept
    monkeypatch.setattr(DynPruneEnv, "step", real)
    assert run("train", "--run-dir", run_dir, "--resume") == 0
    assert_run_log(run_dir, 16)
    assert replay_size(run_dir) == 16
    capsys.readouterr()
    assert run("report", run_dir) == 0
    assert "episodes: 16    steps in metrics.jsonl: 16" in capsys.readouterr().out


KILL_DRIVER = r"""
import os, signal, sys
from pathlib import Path

where, n = sys.argv[1], int(sys.argv[2])
argv = sys.argv[3:]
run_dir = Path(argv[argv.index("--run-dir") + 1]).resolve() if "--run-dir" in argv else None
calls = {"n": 0}
if where == "step":  # die in the middle of the n-th env step
    from envs.dynprune_env import DynPruneEnv
    real_step = DynPruneEnv.step
    def step(self, action):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, action)
    DynPruneEnv.step = step
elif where == "checkpoint-rename":  # die right after the n-th rename into run_dir/checkpoint*
    real_replace = os.replace
    def replace(src, dst, **kw):
        real_replace(src, dst, **kw)
        dst = Path(os.path.abspath(dst))
        if dst.parent == run_dir and dst.name.startswith("checkpoint"):
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
elif where == "explore-prompt":  # die while measuring the n-th prompt
    from envs.dynprune_env import DynPruneEnv
    real_records = DynPruneEnv.action_records
    def action_records(self):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_records(self)
    DynPruneEnv.action_records = action_records
from dynprune.cli import main
sys.exit(main(argv))
"""


def killed(where: str, n: int, *argv: str | Path) -> subprocess.CompletedProcess:
    """Run ``dynprune argv`` in a child that kills itself with SIGKILL at (where, n)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}  # one thread: a tiny model spins on more
    proc = subprocess.run([sys.executable, "-c", KILL_DRIVER, where, str(n), *map(str, argv)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("where,n", [("step", 10), ("checkpoint-rename", 3)],
                         ids=["mid-step", "mid-checkpoint"])
def test_sigkill_then_resume_logs_each_step_once(tmp_path, where, n):
    run_dir = tmp_path / "run"
    killed(where, n, "train", "--run-dir", run_dir, "--episodes", "16", *TINY)
    before = (run_dir / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    assert len(before) >= 8
    assert run("train", "--run-dir", run_dir, "--resume") == 0
    assert_run_log(run_dir, 16)
    after = (run_dir / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    assert after[:4] == before[:4]  # records up to the first checkpoint are kept as written
    assert replay_size(run_dir) == 16  # the replay buffer holds each step once too


def test_resume_honours_more_episodes_and_refuses_other_changes(run_copy, capsys):
    capsys.readouterr()
    assert run("train", "--run-dir", run_copy, "--resume", "--reward", "casrap") == 2
    line = one_line_error(capsys.readouterr().err, "train")
    assert "--reward" in line and "proxy" in line and "casrap" in line
    assert run("train", "--run-dir", run_copy, "--resume", "--episodes", "4") == 2
    line = one_line_error(capsys.readouterr().err, "train")
    assert "--episodes" in line and "8" in line
    assert run("train", "--run-dir", run_copy, "--resume", "--episodes", "12") == 0
    assert_run_log(run_copy, 12)
    assert json.loads((run_copy / "config.json").read_text())["episodes"] == 12


# --------------------------------------------------------------------------- --force and folders that are not runs


def test_force_refuses_a_model_folder(tmp_path, capsys):
    folder = tmp_path / "hf-model"
    files = hf_folder(folder)
    for extra in ([], ["--force"]):
        assert run("train", "--run-dir", folder, "--episodes", "4", *extra, *TINY) == 2
        line = one_line_error(capsys.readouterr().err, "train")
        assert "not a dynprune run" in line and str(folder) in line
        assert folder_bytes(folder) == files


def test_force_on_a_run_keeps_the_users_files(run_copy):
    (run_copy / "notes.txt").write_text("mine")
    (run_copy / "data").mkdir()
    (run_copy / "data" / "x.csv").write_text("1,2\n")
    assert run("train", "--run-dir", run_copy, "--episodes", "4", "--force", *TINY) == 0
    assert (run_copy / "notes.txt").read_text() == "mine"
    assert (run_copy / "data" / "x.csv").read_text() == "1,2\n"
    assert_run_log(run_copy, 4)


def test_other_force_commands_refuse_a_model_folder(tmp_path, capsys):
    logs = tmp_path / "logs"
    assert run("explore", "--strategy", "sweep", "--out", logs, "--prompts", "1", *EXPLORE) == 0
    commands = {
        "offline": ["offline", "--logs", logs, "--algo", "bc", "--steps", "2", "--batch-size", "4", "--run-dir"],
        "router": ["router", "train", "--method", "fbc", "--logs", logs, "--features", "tokens", "--model",
                   "tiny-llama", "--epochs", "1", "--run-dir"],
        "compress": ["compress", "quantize", "--model", "tiny-llama", "--format", "fp16", "--no-eval", "--out"],
    }
    for name, argv in commands.items():
        folder = tmp_path / f"hf-{name}"
        files = hf_folder(folder)
        assert run(*argv, folder, "--force") == 2, name
        line = one_line_error(capsys.readouterr().err, name)
        assert str(folder) in line, line
        assert folder_bytes(folder) == files, name


def test_run_written_before_markers_resumes_but_is_not_forced(run_copy, capsys):
    """A guard for runs of earlier versions (no marker): --resume adopts them, --force does not delete them."""
    from dynprune.runfolder import MARKER

    (run_copy / MARKER).unlink()
    files = folder_bytes(run_copy)
    assert run("train", "--run-dir", run_copy, "--episodes", "4", "--force", *TINY) == 2
    assert "not a dynprune run" in one_line_error(capsys.readouterr().err, "train")
    assert folder_bytes(run_copy) == files
    assert run("train", "--run-dir", run_copy, "--resume", "--episodes", "10") == 0
    assert (run_copy / MARKER).is_file()
    assert_run_log(run_copy, 10)


def test_a_marker_cannot_name_the_whole_folder():
    from dynprune.runfolder import RunMarker

    for pattern in ("*", "..", "../x", "a/b", "*.*", ""):
        with pytest.raises(ValueError, match="pattern"):
            RunMarker(kind="train", outputs=(pattern,))


def test_resume_on_a_folder_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "hf-model"
    files = hf_folder(folder)
    assert run("train", "--run-dir", folder, "--resume") == 2
    line = one_line_error(capsys.readouterr().err, "train")
    assert "not a dynprune run" in line and str(folder) in line
    assert folder_bytes(folder) == files


# --------------------------------------------------------------------------- damaged checkpoints


@pytest.mark.parametrize("damage", ["truncated-checkpoint", "corrupt-replay"])
def test_damaged_checkpoint_is_a_one_line_error(run_copy, capsys, damage):
    if damage == "truncated-checkpoint":
        path = run_copy / "checkpoint.zip"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path = run_copy / "checkpoint_replay.pkl"
        path.write_bytes(b"\x80\x04garbage" + bytes(range(64)))
    records = (run_copy / "metrics.jsonl").read_bytes()
    assert run("train", "--run-dir", run_copy, "--resume", "--episodes", "12") == 2
    line = one_line_error(capsys.readouterr().err, "train")
    assert str(path) in line and "--force" in line, line
    assert (run_copy / "metrics.jsonl").read_bytes() == records  # nothing dropped on a failed resume


# --------------------------------------------------------------------------- read-only folders, full disk


def count_calls(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[int]:
    """Wrap ``module.name`` so each call appends 1 to the returned list, then runs the real function."""
    calls: list[int] = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_train_into_a_read_only_folder(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "ro"
    with read_only(folder):
        assert run("train", "--run-dir", folder / "run", "--episodes", "4", *TINY) == 2
    line = one_line_error(capsys.readouterr().err, "train")
    assert str(folder) in line and "writ" in line


def test_full_disk_mid_training_then_resume(tmp_path, monkeypatch, capsys):
    from envs.dynprune_env import DynPruneEnv

    run_dir = tmp_path / "run"
    hook: dict[str, WriteHook] = {}
    real_step = DynPruneEnv.step
    calls = {"n": 0}

    def step(self, action):
        calls["n"] += 1
        if calls["n"] == 7:  # the disk fills up during the 7th step (checkpoint at 4)
            hook["h"] = WriteHook(run_dir, "full")
        return real_step(self, action)

    monkeypatch.setattr(DynPruneEnv, "step", step)
    capsys.readouterr()
    assert run("train", "--run-dir", run_dir, "--episodes", "16", *TINY) == 2
    line = one_line_error(capsys.readouterr().err, "train")
    assert "No space left" in line and "--resume" in line, line
    hook["h"].remove()
    monkeypatch.setattr(DynPruneEnv, "step", real_step)
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 6  # every step before the disk filled is kept
    assert run("train", "--run-dir", run_dir, "--resume") == 0
    assert_run_log(run_dir, 16)


def test_calibrate_checks_the_output_folder_before_computing(tmp_path, monkeypatch, capsys):
    import dynprune.importance as importance

    calls = count_calls(monkeypatch, importance, "calibrate")
    folder = tmp_path / "ro"
    with read_only(folder):
        rc = run("calibrate", "--model", "tiny-llama", "--n-prompts", "2", "--seq-len", "8",
                 "--out", folder / "imp.safetensors")
        assert rc == 2 and calls == []
    line = one_line_error(capsys.readouterr().err, "calibrate")
    assert str(folder) in line


def test_demo_with_a_read_only_cache_warns_and_goes_on(tmp_path, monkeypatch, capsys, caplog):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DYNPRUNE_CACHE", str(cache))
    with read_only(cache):
        rc = run("demo", "--model", "tiny-llama", "--max-new-tokens", "2", "--repeats", "1")
    assert rc == 0
    assert "skip 1 layers" in capsys.readouterr().out  # the table was printed
    # the warning goes to stderr through logging (pytest's log capture holds it here)
    assert "not cached" in caplog.text and str(cache) in caplog.text and "DYNPRUNE_CACHE" in caplog.text


# --------------------------------------------------------------------------- explore


def prompts_file(path: Path, ids: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": f"Say {k}.", "split": "train"}) + "\n"
                            for k, i in enumerate(ids)))
    return path


def test_explore_prompt_id_longer_than_a_file_name(tmp_path, capsys):
    from offline_data.dataset import load_logs

    long_id = "p" * 300
    src = prompts_file(tmp_path / "prompts.jsonl", ["short", long_id])
    out = tmp_path / "logs"
    argv = ["explore", "--strategy", "sweep", "--out", out, "--prompt-source", src, *EXPLORE]
    assert run(*argv) == 0
    assert run(*argv) == 0  # the re-run finds both prompts done
    assert "0 prompts measured" in capsys.readouterr().out
    ds = load_logs(out)
    assert sorted(set(ds["prompt_id"])) == sorted(["short", long_id])


def test_explore_into_a_read_only_folder(tmp_path, monkeypatch, capsys):
    import dynprune.models as models

    loads = count_calls(monkeypatch, models, "load_model")
    folder = tmp_path / "ro"
    with read_only(folder):
        rc = run("explore", "--strategy", "sweep", "--out", folder / "logs", "--prompts", "1", *EXPLORE)
        assert rc == 2 and loads == []  # refused before the model loads
    line = one_line_error(capsys.readouterr().err, "explore")
    assert str(folder) in line


def test_explore_full_disk_keeps_finished_prompts(tmp_path, monkeypatch, capsys):
    from envs.dynprune_env import DynPruneEnv
    from offline_data.dataset import load_logs

    out = tmp_path / "logs"
    hook: dict[str, WriteHook] = {}
    real = DynPruneEnv.action_records
    calls = {"n": 0}

    def action_records(self):
        calls["n"] += 1
        if calls["n"] == 2:  # the disk fills up while the second prompt is measured
            hook["h"] = WriteHook(out, "full")
        return real(self)

    monkeypatch.setattr(DynPruneEnv, "action_records", action_records)
    argv = ["explore", "--strategy", "sweep", "--out", out, "--prompts", "3", *EXPLORE]
    capsys.readouterr()
    assert run(*argv) == 2
    line = one_line_error(capsys.readouterr().err, "explore")
    assert "No space left" in line and "re-run" in line.lower(), line
    hook["h"].remove()
    monkeypatch.setattr(DynPruneEnv, "action_records", real)
    assert len(set(load_logs(out)["prompt_id"])) == 1  # the first prompt's shard is kept
    assert run(*argv) == 0
    ds = load_logs(out)
    assert len(set(ds["prompt_id"])) == 3 and len(ds) == 3 * len(set(ds["action"]))  # each prompt once


def test_explore_sigint_keeps_finished_prompts(tmp_path, monkeypatch, ctrl_c_raises):
    """A guard (this held before): Ctrl-C during exploration keeps finished prompts, the re-run adds the rest."""
    from envs.dynprune_env import DynPruneEnv
    from offline_data.dataset import load_logs

    out = tmp_path / "logs"
    real = DynPruneEnv.action_records
    calls = {"n": 0}

    def action_records(self):
        calls["n"] += 1
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGINT)  # to this thread, see signal_at_step
        return real(self)

    monkeypatch.setattr(DynPruneEnv, "action_records", action_records)
    argv = ["explore", "--strategy", "sweep", "--out", out, "--prompts", "3", *EXPLORE]
    assert run(*argv) == 130
    monkeypatch.setattr(DynPruneEnv, "action_records", real)
    assert len(set(load_logs(out)["prompt_id"])) == 1
    assert run(*argv) == 0
    ds = load_logs(out)
    assert len(set(ds["prompt_id"])) == 3 and len(ds) == 3 * len(set(ds["action"]))


@pytest.mark.slow
def test_explore_sigkill_keeps_finished_prompts(tmp_path):
    """A guard (this held before): a killed exploration loses only the prompt in flight."""
    from offline_data.dataset import load_logs

    out = tmp_path / "logs"
    argv = ["explore", "--strategy", "sweep", "--out", out, "--prompts", "3", *EXPLORE]
    killed("explore-prompt", 2, *argv)
    assert len(set(load_logs(out)["prompt_id"])) == 1
    assert run(*argv) == 0
    ds = load_logs(out)
    assert len(set(ds["prompt_id"])) == 3 and len(ds) == 3 * len(set(ds["action"]))
