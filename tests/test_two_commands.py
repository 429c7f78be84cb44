"""The two commands: `make run` is the main job, `make test` the suite, CI runs `make test`."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _recipe(target: str) -> list[str]:
    """The command lines of a Makefile target."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"^{target}:", line))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_make_run_is_the_main_job_and_make_test_the_suite():
    # the two targets exist and do what their names say; both set everything up first on a fresh machine
    assert any("dynprune main" in line for line in _recipe("run"))
    assert any("pytest" in line for line in _recipe("test"))
    makefile = (ROOT / "Makefile").read_text().splitlines()
    assert "run: setup" in makefile and "test: setup" in makefile
    assert _recipe("setup")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == "make test"


def test_main_command_exists_with_the_readme_defaults():
    from dynprune.cli import build_parser

    args = build_parser().parse_args(["main"])
    assert args.command == "main" and args.model == "smollm2-135m"
