"""Berkeley Function Calling Leaderboard (BFCL v4) prompts, read from the ``bfcl-eval`` package.

The package ships the benchmark as JSON-lines files; this module reads them directly and
never imports ``bfcl_eval`` itself (its ``__init__`` pulls in heavy dependencies that a
``--no-deps`` install does not have). Each question row
``{"id", "question": [[{"role", "content"}, ...]], "function": [schemas]}`` is paired by
id with its row in ``possible_answer/`` (``{"id", "ground_truth": [{"fn": {"arg":
[allowed...]}}]}``) and becomes a ``tool_call`` :class:`Prompt` whose text is the last
user message. A few ``live_simple`` rows also carry a system message; it is not kept.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from dynprune.fileio import json_object_lines
from dynprune.tasks.files import hash_split
from dynprune.types import Prompt

#: Command that installs the data package.
INSTALL_COMMAND: str = "pip install --no-deps bfcl-eval==2026.3.23"
#: Accepted set names -> BFCL category (the file is ``BFCL_v4_<category>.json``).
BFCL_SETS: dict[str, str] = {
    "simple": "simple_python",
    "simple_python": "simple_python",
    "multiple": "multiple",
    "live_simple": "live_simple",
}


def bfcl_available() -> bool:
    """Whether the ``bfcl-eval`` package is installed (checked without importing it)."""
    return importlib.util.find_spec("bfcl_eval") is not None


def bfcl_data_dir() -> Path:
    """The ``data`` folder of the installed ``bfcl-eval`` package.

    Raises:
        ModuleNotFoundError: the package is not installed; the message gives the install command.
        FileNotFoundError: the package has no ``data`` folder.
    """
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"BFCL prompts need the bfcl-eval package, which is not installed; install it with: "
            f"{INSTALL_COMMAND}"
        )
    data_dir = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"bfcl-eval is installed but has no data folder at {data_dir}; "
            f"reinstall it with: {INSTALL_COMMAND}"
        )
    return data_dir


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"BFCL file not found: {path}; expected the data of bfcl-eval==2026.3.23 ({INSTALL_COMMAND})"
        )
    rows: list[tuple[int, dict[str, Any]]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for line_no, row in json_object_lines(lines, lambda n: f"{path} line {n}"):
        if not isinstance(row.get("id"), str):
            raise ValueError(f"{path} line {line_no}: expected a JSON object with a string 'id'")
        rows.append((line_no, row))
    return rows


def _last_user_message(question: Any, where: str) -> str:
    # "question" is a list of turns, each a list of {"role", "content"} messages.
    if isinstance(question, list):
        for turn in reversed(question):
            if not isinstance(turn, list):
                continue
            for message in reversed(turn):
                if isinstance(message, dict) and message.get("role") == "user":
                    content = message.get("content")
                    if isinstance(content, str) and content.strip():
                        return content
    raise ValueError(f"{where}: no non-empty user message in 'question'")


def load_bfcl(name: str) -> list[Prompt]:
    """Load one BFCL set as tool-call prompts with their ground truth.

    Args:
        name: One of :data:`BFCL_SETS` (``"simple"``, ``"multiple"``, ``"live_simple"``;
            ``"simple_python"`` is the same as ``"simple"``).

    Returns:
        The prompts in file order: ``category="tool_call"``, ``tools`` the offered function
        schemas, ``ground_truth`` the allowed calls, ``source="bfcl:<category>"`` and a fixed
        split from a hash of the BFCL id (about 25 % test).

    Raises:
        ValueError: an unknown set name, a malformed row, or a question without ground truth.
        ModuleNotFoundError: ``bfcl-eval`` is not installed.
    """
    if name not in BFCL_SETS:
        raise ValueError(f"unknown BFCL set {name!r}; expected one of {sorted(BFCL_SETS)}")
    category = BFCL_SETS[name]
    data_dir = bfcl_data_dir()
    file_name = f"BFCL_v4_{category}.json"
    question_path = data_dir / file_name
    answer_path = data_dir / "possible_answer" / file_name

    answers: dict[str, list[Any]] = {}
    for line_no, row in _read_rows(answer_path):
        ground_truth = row.get("ground_truth")
        if not isinstance(ground_truth, list) or not ground_truth:
            raise ValueError(f"{answer_path} line {line_no}: 'ground_truth' must be a non-empty list")
        answers[row["id"]] = ground_truth

    source = f"bfcl:{category}"
    prompts: list[Prompt] = []
    for line_no, row in _read_rows(question_path):
        where = f"{question_path} line {line_no}"
        tools = row.get("function")
        if not isinstance(tools, list) or not tools:
            raise ValueError(f"{where}: 'function' must be a non-empty list of tool schemas")
        if row["id"] not in answers:
            raise ValueError(f"{where}: id {row['id']!r} has no ground truth in {answer_path}")
        prompts.append(
            Prompt(
                id=row["id"],
                text=_last_user_message(row.get("question"), where),
                category="tool_call",
                answer=None,
                tools=tuple(tools),
                ground_truth=tuple(answers[row["id"]]),
                split=hash_split(row["id"]),
                source=source,
            )
        )
    return prompts
