"""User prompt files (JSONL and CSV), and the row checks every prompt source shares.

A JSONL file holds one JSON object per line; a CSV file has a header row. Either way a
row needs a non-empty ``text`` and may carry ``id``, ``category``, ``answer``, ``tools``,
``ground_truth`` and ``split`` (in a CSV, ``tools`` and ``ground_truth`` are JSON-encoded
cells and an empty cell means "not given"). Every problem is a ``ValueError`` that names
the file and the 1-based line where the bad row starts.

Rows without an id get ``"<file stem>-<line>"``; rows without a split get a fixed split
from a hash of their id (:func:`hash_split`), so the same file always splits the same way.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dynprune.fileio import json_object_lines
from dynprune.types import Prompt

#: Fields a prompt row may carry.
FIELDS: tuple[str, ...] = ("id", "text", "category", "answer", "tools", "ground_truth", "split")
#: Values of ``Prompt.split``.
SPLITS: tuple[str, ...] = ("train", "test")
#: Share of prompts that :func:`hash_split` puts in the test split.
TEST_FRACTION: float = 0.25
#: File suffixes :func:`load_file` reads.
FILE_SUFFIXES: tuple[str, ...] = (".jsonl", ".csv")


def hash_split(prompt_id: str, test_fraction: float = TEST_FRACTION) -> str:
    """Deterministic split of a prompt from its id alone.

    The first 8 bytes of ``sha256(id)`` read as a fraction in [0, 1); below ``test_fraction``
    is ``"test"``, the rest ``"train"``. Independent of Python's hash seed and of row order.

    Args:
        prompt_id: The prompt's id.
        test_fraction: Expected share of test prompts, in [0, 1].

    Returns:
        ``"train"`` or ``"test"``.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction!r}")
    digest = hashlib.sha256(prompt_id.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "test" if u < test_fraction else "train"


def _type_name(value: Any) -> str:
    return type(value).__name__


def _check_tools(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    # A tool schema is a JSON object with at least a string "name" (BFCL / OpenAI style).
    if not isinstance(value, list):
        raise ValueError(f"{where}: 'tools' must be a list of tool schemas, got {_type_name(value)}")
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise ValueError(
                f"{where}: tools[{i}] must be an object with a non-empty string 'name', got {tool!r:.80}"
            )
    return tuple(value)


def _check_ground_truth(value: Any, where: str) -> tuple[dict[str, Any], ...]:
    # BFCL style: [{"function_name": {"arg": [allowed values...]}}, ...], one key per call.
    if not isinstance(value, list):
        raise ValueError(
            f"{where}: 'ground_truth' must be a list of calls "
            f'[{{"name": {{"arg": [allowed...]}}}}], got {_type_name(value)}'
        )
    for i, call in enumerate(value):
        if not isinstance(call, dict) or len(call) != 1:
            raise ValueError(
                f"{where}: ground_truth[{i}] must be an object with exactly one function name, "
                f"got {call!r:.80}"
            )
        ((name, args),) = call.items()
        if not isinstance(args, dict):
            raise ValueError(
                f"{where}: ground_truth[{i}][{name!r}] must map argument names to lists of allowed "
                f"values, got {_type_name(args)}"
            )
        for arg, allowed in args.items():
            if not isinstance(allowed, list):
                raise ValueError(
                    f"{where}: ground_truth[{i}][{name!r}][{arg!r}] must be a list of allowed values, "
                    f"got {_type_name(allowed)}"
                )
    return tuple(value)


def prompt_from_record(
    record: Mapping[str, Any],
    *,
    where: str,
    default_id: str,
    source: str,
    require: Iterable[str] = ("text",),
) -> Prompt:
    """Check one row of a prompt file and build its :class:`Prompt`.

    Args:
        record: The row: field name -> value, as parsed from JSON (or from CSV, see
            :func:`load_csv`). Absent fields and ``None`` values count as "not given".
        where: Location used in error messages, e.g. ``"prompts.jsonl line 7"``.
        default_id: Id used when the row has none.
        source: ``Prompt.source`` of the result.
        require: Fields that must be given (``"text"`` always is).

    Returns:
        The prompt.

    Raises:
        ValueError: unknown field, missing required field, empty text, a field of the wrong
            type, a split other than train/test, or ground truth naming a function that is
            not among the row's tools.
    """
    unknown = sorted(str(k) for k in record if k not in FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; expected some of {list(FIELDS)}")
    for name in {"text", *require}:
        if record.get(name) is None:
            raise ValueError(f"{where}: missing required field {name!r}")

    text = record["text"]
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: 'text' must be a non-empty string, got {text!r:.80}")

    prompt_id = record.get("id")
    if prompt_id is None:
        prompt_id = default_id
    elif not isinstance(prompt_id, str) or not prompt_id.strip():
        raise ValueError(f"{where}: 'id' must be a non-empty string, got {prompt_id!r}")

    category = record.get("category")
    if category is None:
        category = "general"
    elif not isinstance(category, str) or not category.strip():
        raise ValueError(f"{where}: 'category' must be a non-empty string, got {category!r}")

    # Numbers are accepted as gold answers and kept as their string form ("42").
    answer = record.get("answer")
    if isinstance(answer, bool) or not (answer is None or isinstance(answer, (str, int, float))):
        raise ValueError(f"{where}: 'answer' must be a string, a number or null, got {_type_name(answer)}")
    if answer is not None:
        answer = str(answer)
        if not answer.strip():
            raise ValueError(f"{where}: 'answer' must not be empty; use null for no gold answer")

    tools = _check_tools(record["tools"], where) if record.get("tools") is not None else ()
    ground_truth = (
        _check_ground_truth(record["ground_truth"], where) if record.get("ground_truth") is not None else ()
    )
    if ground_truth:
        tool_names = {tool["name"] for tool in tools}
        for call in ground_truth:
            (name,) = call
            if name not in tool_names:
                raise ValueError(
                    f"{where}: ground_truth calls {name!r}, which is not among the tools {sorted(tool_names)}"
                )

    split = record.get("split")
    if split is None:
        split = hash_split(prompt_id)
    elif split not in SPLITS:
        raise ValueError(f"{where}: 'split' must be one of {list(SPLITS)}, got {split!r}")

    return Prompt(
        id=prompt_id,
        text=text,
        category=category,
        answer=answer,
        tools=tools,
        ground_truth=ground_truth,
        split=split,
        source=source,
    )


def _check_unique_ids(numbered: list[tuple[int, Prompt]], name: str) -> None:
    first_line: dict[str, int] = {}
    for line, prompt in numbered:
        if prompt.id in first_line:
            raise ValueError(
                f"{name} line {line}: duplicate id {prompt.id!r} (first used on line {first_line[prompt.id]})"
            )
        first_line[prompt.id] = line


def parse_jsonl(
    text: str,
    *,
    name: str,
    stem: str,
    source: str,
    require: Iterable[str] = ("text",),
) -> list[tuple[int, Prompt]]:
    """Parse JSONL text into prompts, each with the 1-based line it came from.

    Blank lines are skipped (and still counted). Ids must be unique.

    Args:
        text: The file's contents.
        name: File name used in error messages.
        stem: Prefix of generated ids (``"<stem>-<line>"``).
        source: ``Prompt.source`` of every prompt.
        require: Fields every row must give, beside ``text``.

    Returns:
        ``(line, prompt)`` pairs in file order.

    Raises:
        ValueError: a line that is not a JSON object, or a bad row (see :func:`prompt_from_record`).
    """
    require = tuple(require)
    numbered: list[tuple[int, Prompt]] = []
    for line_no, record in json_object_lines(text.splitlines(), lambda n: f"{name} line {n}"):
        prompt = prompt_from_record(
            record, where=f"{name} line {line_no}", default_id=f"{stem}-{line_no}", source=source, require=require
        )
        numbered.append((line_no, prompt))
    _check_unique_ids(numbered, name)
    return numbered


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    # utf-8-sig also reads files that start with a byte-order mark (spreadsheet exports).
    return path.read_text(encoding="utf-8-sig")


def _non_empty(prompts: list[Prompt], path: Path) -> list[Prompt]:
    if not prompts:
        raise ValueError(f"{path}: no prompts found (expected at least one row with 'text')")
    return prompts


def load_jsonl(path: str | os.PathLike[str]) -> list[Prompt]:
    """Load prompts from a JSONL file (one JSON object per line).

    Args:
        path: The file.

    Returns:
        The prompts in file order, ``source`` set to the path.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed row, naming the file and the line.
    """
    path = Path(path)
    numbered = parse_jsonl(_read_text(path), name=str(path), stem=path.stem, source=str(path))
    return _non_empty([prompt for _, prompt in numbered], path)


def _json_cell(value: str, column: str, where: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: column {column!r} must hold JSON, got {value!r:.80} ({exc.msg})") from exc


def load_csv(path: str | os.PathLike[str]) -> list[Prompt]:
    """Load prompts from a CSV file whose header row names a ``text`` column.

    Cells are strings; an empty cell means "not given". ``tools`` and ``ground_truth``
    cells hold JSON. Quoted cells may span several lines; errors name the line where the
    row starts.

    Args:
        path: The CSV file (UTF-8; a leading byte-order mark is allowed).

    Returns:
        The prompts in row order, each with ``source`` set to the path.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no ``text`` column, an unknown column, a row with too many or too few
            cells, or a malformed row, naming the file and the line.
    """
    path = Path(path)
    return _non_empty([prompt for _, prompt in _parse_csv(path)], path)


def _parse_csv(path: Path) -> list[tuple[int, Prompt]]:
    """The prompts of a CSV file, each with the 1-based line where its row starts (see :func:`load_csv`)."""
    name = str(path)
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{name}: empty file; expected a header row with a 'text' column") from None
    except csv.Error as exc:
        raise ValueError(f"{name} line 1: unreadable CSV header ({exc})") from exc
    header = [column.strip() for column in header]
    if "text" not in header:
        raise ValueError(f"{name} line 1: header must contain a 'text' column, got {header}")
    unknown = [column for column in header if column not in FIELDS]
    if unknown:
        raise ValueError(f"{name} line 1: unknown column(s) {unknown}; expected some of {list(FIELDS)}")
    if len(set(header)) != len(header):
        raise ValueError(f"{name} line 1: repeated column name in header {header}")

    numbered: list[tuple[int, Prompt]] = []
    start = reader.line_num + 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ValueError(f"{name} line {start}: unreadable CSV row ({exc})") from exc
        where = f"{name} line {start}"
        line_no, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            raise ValueError(
                f"{where}: expected {len(header)} cells (one per header column), got {len(cells)}"
            )
        record: dict[str, Any] = {}
        for column, cell in zip(header, cells, strict=True):
            if column != "text":
                cell = cell.strip()
            if cell == "":
                continue
            record[column] = _json_cell(cell, column, where) if column in ("tools", "ground_truth") else cell
        record.setdefault("text", "")
        prompt = prompt_from_record(record, where=where, default_id=f"{path.stem}-{line_no}", source=name)
        numbered.append((line_no, prompt))
    _check_unique_ids(numbered, name)
    return numbered


def load_file(path: str | os.PathLike[str]) -> list[Prompt]:
    """Load prompts from a ``.jsonl`` or ``.csv`` file, chosen by its suffix.

    Args:
        path: The file.

    Returns:
        The prompts in file order.

    Raises:
        ValueError: another suffix, or a malformed row.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return load_jsonl(path)
    if suffix == ".csv":
        return load_csv(path)
    raise ValueError(f"prompt file must end in one of {list(FILE_SUFFIXES)}, got {str(path)!r}")


def prompt_location(prompt: Prompt) -> str:
    """Where ``prompt`` came from, for error messages: ``"<file> line <n>"`` for a prompt file, else its source.

    The file is read again to find the line (only on the error path), so a file changed since
    it was loaded gives its source alone.
    """
    path = Path(prompt.source)
    suffix = path.suffix.lower()
    if suffix in FILE_SUFFIXES and path.is_file():
        try:
            if suffix == ".jsonl":
                numbered = parse_jsonl(_read_text(path), name=str(path), stem=path.stem, source=str(path))
            else:
                numbered = _parse_csv(path)
        except (OSError, ValueError):
            return prompt.source
        for line, other in numbered:
            if other.id == prompt.id:
                return f"{prompt.source} line {line}"
    return prompt.source
