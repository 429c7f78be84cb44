"""The arrows go one way: the engine (dynprune) imports none of the packages above it; envs none of
agents, offline_data, benchmarks; offline_data not agents; agents not benchmarks, and agents act on
observations, never on the model.

A static scan of every module's imports (function-level ones included) plus a fresh interpreter that
imports dynprune and lists what came with it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABOVE_ENGINE = {"envs", "agents", "offline_data", "benchmarks"}

#: package -> top-level packages its modules may not import.
FORBIDDEN = {
    "dynprune": ABOVE_ENGINE,
    "envs": {"agents", "offline_data", "benchmarks"},
    "offline_data": {"agents", "benchmarks"},
    "agents": {"benchmarks"},
}

#: Engine modules that hold, edit or run the model: agents pick actions from observations, and the env
#: (and the engine below it) applies them, so no agent module imports these ...
MODEL_MODULES = ("dynprune.models", "dynprune.pruning", "dynprune.plan", "dynprune.selection", "dynprune.importance",
                 "dynprune.healing", "dynprune.healing_train", "dynprune.adapter", "dynprune.compress",
                 "dynprune.generation", "dynprune.paired_timing", "dynprune.latency_model")
#: ... except these: the router's ``--features tokens`` computes its features from the model's own embeddings.
MODEL_ALLOWED = {("agents.router.cli", "dynprune.models")}


def modules(package: str) -> list[tuple[str, Path]]:
    """(dotted name, path) of every module of ``package``."""
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


def imported(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, anywhere in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_package_above_it(package):
    bad = [f"{name} imports {target}" for name, path in modules(package) for target in sorted(imported(path))
           if target.split(".")[0] in FORBIDDEN[package]]
    assert modules(package), f"no modules found under {ROOT / package}"
    assert not bad, f"{package} must not import {sorted(FORBIDDEN[package])}:\n" + "\n".join(bad)


def test_agents_never_touch_the_model():
    bad = [f"{name} imports {target}" for name, path in modules("agents") for target in sorted(imported(path))
           if target.startswith(MODEL_MODULES)
           and not any(name == who and target.startswith(what) for who, what in MODEL_ALLOWED)]
    assert not bad, "agents act on observations; the env applies their actions to the model:\n" + "\n".join(bad)


def test_the_scan_sees_function_level_imports(tmp_path):
    # the scan must be able to fail: a lazy import inside a function counts
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from agents.cli import train\n    import envs.dynprune_env\n")
    assert {"agents.cli", "agents.cli.train", "envs.dynprune_env"} <= imported(src)


def test_importing_dynprune_loads_no_package_above_it():
    code = ("import dynprune, dynprune.cli, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'envs','agents','offline_data','benchmarks'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_command_module_is_registered_and_none_fails_silently(monkeypatch):
    from dynprune import cli

    commands = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert {"train", "test", "main", "explore", "prefs", "minari", "offline", "router", "compress", "bench",
            "adapters", "heal", "demo", "calibrate", "table", "report"} <= commands
    # a command module that cannot be imported is an error, not a missing command
    monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "agents.no_such_module:add_commands"))
    with pytest.raises(ModuleNotFoundError, match="agents.no_such_module"):
        cli.build_parser()
