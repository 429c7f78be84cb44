"""The prompt set shipped with dynprune (``dynprune/tasks/data/prompts.jsonl``).

Several hundred prompts written for this project, in seven categories (see
:data:`CATEGORIES`). Short factual, arithmetic, reasoning and "what does this code
print" prompts carry a short gold answer (a word, a name or a number) so that "the gold
answer is contained in the output, case-insensitively" is a task score a small model can
earn; tool-call prompts carry BFCL-style tool schemas and ground truth; the rest
(instructions, summaries, open coding tasks) have no gold answer and are scored by
fidelity to the full model. Lengths range from a few tokens to about 200.

The split is written in the file (about 25 % test in every category) and never changes.
Every row is checked on load; a bad row is a ``ValueError`` naming its line.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from dynprune.tasks.files import parse_jsonl
from dynprune.types import Prompt

#: Categories of the shipped set, in file order.
CATEGORIES: tuple[str, ...] = ("qa", "arithmetic", "instruction", "summary", "code", "reasoning", "tool_call")
#: ``Prompt.source`` of every shipped prompt.
SOURCE: str = "dynprune"
#: The data file, relative to the ``dynprune.tasks`` package.
DATA_FILE: str = "data/prompts.jsonl"

_ID_PATTERN = re.compile(r"^(?P<category>[a-z_]+)-(?P<number>\d{4})$")


def _check_row(prompt: Prompt, where: str) -> None:
    # Rules that hold for the shipped set on top of those for any prompt file.
    if prompt.category not in CATEGORIES:
        raise ValueError(f"{where}: category must be one of {list(CATEGORIES)}, got {prompt.category!r}")
    match = _ID_PATTERN.match(prompt.id)
    if match is None or match["category"] != prompt.category:
        raise ValueError(f"{where}: id must look like '{prompt.category}-0001', got {prompt.id!r}")
    if prompt.category == "tool_call":
        if not prompt.tools or not prompt.ground_truth:
            raise ValueError(f"{where}: a tool_call prompt needs non-empty 'tools' and 'ground_truth'")
        if prompt.answer is not None:
            raise ValueError(f"{where}: a tool_call prompt is scored by ground truth; 'answer' must be null")
    elif prompt.tools or prompt.ground_truth:
        raise ValueError(f"{where}: only tool_call prompts may carry 'tools' or 'ground_truth'")
    # A gold answer already present in the prompt would be earned by echoing the prompt.
    if prompt.answer is not None and prompt.answer.lower() in prompt.text.lower():
        raise ValueError(f"{where}: gold answer {prompt.answer!r} appears in the prompt text itself")


@lru_cache(maxsize=1)
def _load() -> tuple[Prompt, ...]:
    name = f"dynprune/tasks/{DATA_FILE}"
    text = resources.files("dynprune.tasks").joinpath(DATA_FILE).read_text(encoding="utf-8")
    numbered = parse_jsonl(
        text, name=name, stem="dynprune", source=SOURCE, require=("id", "text", "category", "split")
    )
    first_line: dict[str, int] = {}
    for line, prompt in numbered:
        where = f"{name} line {line}"
        _check_row(prompt, where)
        key = " ".join(prompt.text.lower().split())
        if key in first_line:
            raise ValueError(f"{where}: text repeats the prompt on line {first_line[key]}")
        first_line[key] = line
    return tuple(prompt for _, prompt in numbered)


def load_shipped() -> list[Prompt]:
    """Load and check the shipped prompt set.

    Returns:
        All shipped prompts in file order (grouped by category), both splits.

    Raises:
        ValueError: a malformed row, naming its line (a packaging bug, not a user error).
    """
    return list(_load())
