"""Tests of the prompt sources: the shipped set, BFCL and user files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynprune.tasks import (
    CATEGORIES,
    SOURCES,
    hash_split,
    load_file,
    load_prompts,
    split_counts,
)
from dynprune.tasks.bfcl import BFCL_SETS, INSTALL_COMMAND, bfcl_available, load_bfcl
from dynprune.types import Prompt

needs_bfcl = pytest.mark.skipif(not bfcl_available(), reason=f"bfcl-eval not installed ({INSTALL_COMMAND})")


# ---------------------------------------------------------------- the shipped set


@pytest.fixture(scope="module")
def shipped() -> list[Prompt]:
    return load_prompts("dynprune")


def test_shipped_size_and_unique(shipped: list[Prompt]) -> None:
    assert len(shipped) >= 300
    assert len({p.id for p in shipped}) == len(shipped)
    assert len({" ".join(p.text.lower().split()) for p in shipped}) == len(shipped)
    assert all(p.source == "dynprune" for p in shipped)


def test_shipped_every_category_in_both_splits(shipped: list[Prompt]) -> None:
    counts = split_counts(shipped)
    assert set(counts) == set(CATEGORIES)
    for category, by_split in counts.items():
        total = by_split["train"] + by_split["test"]
        assert by_split["train"] > 0 and by_split["test"] > 0, category
        # stratified: about a quarter of every category is test
        assert abs(by_split["test"] - total / 4) <= 1, (category, by_split)


def test_shipped_split_is_fixed(shipped: list[Prompt]) -> None:
    # The split is written in the file: loading twice, or per split, gives the same partition.
    again = load_prompts("dynprune")
    assert [(p.id, p.split) for p in again] == [(p.id, p.split) for p in shipped]
    train = load_prompts("dynprune", split="train")
    test = load_prompts("dynprune", split="test")
    assert {p.id for p in train} | {p.id for p in test} == {p.id for p in shipped}
    assert not {p.id for p in train} & {p.id for p in test}
    assert {p.split for p in train} == {"train"} and {p.split for p in test} == {"test"}


def test_shipped_answers_short_and_not_in_text(shipped: list[Prompt]) -> None:
    with_answer = [p for p in shipped if p.answer is not None]
    assert len(with_answer) >= 150
    for p in with_answer:
        assert 0 < len(p.answer) <= 30, p.id
        assert p.answer.lower() not in p.text.lower(), p.id
    for category in ("qa", "arithmetic", "reasoning"):
        assert all(p.answer for p in shipped if p.category == category), category


def test_shipped_lengths_vary(shipped: list[Prompt]) -> None:
    words = [len(p.text.split()) for p in shipped]
    assert min(words) <= 4
    assert max(words) >= 120


def test_shipped_tool_calls(shipped: list[Prompt]) -> None:
    tool_calls = [p for p in shipped if p.category == "tool_call"]
    assert len(tool_calls) >= 40
    for p in tool_calls:
        assert 1 <= len(p.tools) <= 3, p.id
        assert p.ground_truth, p.id
        schemas = {tool["name"]: tool for tool in p.tools}
        for tool in p.tools:
            params = tool["parameters"]
            assert params["type"] == "dict" and set(params["required"]) <= set(params["properties"]), p.id
        for call in p.ground_truth:
            ((name, args),) = call.items()
            assert name in schemas, (p.id, name)
            params = schemas[name]["parameters"]
            assert set(args) <= set(params["properties"]), (p.id, name)
            assert set(params["required"]) <= set(args), (p.id, name)
            assert all(isinstance(allowed, list) and allowed for allowed in args.values()), p.id
    assert all(not p.tools and not p.ground_truth for p in shipped if p.category != "tool_call")


def test_limit_and_bad_arguments() -> None:
    assert len(load_prompts("dynprune", split="test", limit=5)) == 5
    assert load_prompts("dynprune", limit=0) == []
    with pytest.raises(ValueError, match="split must be one of"):
        load_prompts("dynprune", split="validation")
    with pytest.raises(ValueError, match="limit must be"):
        load_prompts("dynprune", limit=-1)


@pytest.mark.parametrize("source", ["nope", "bfcl:parallel", "prompts.json", "hf:squad"])
def test_unknown_source(source: str) -> None:
    with pytest.raises(ValueError, match="unknown prompt source") as info:
        load_prompts(source)
    for name in SOURCES:
        assert name in str(info.value)


def test_hash_split_is_deterministic() -> None:
    splits = [hash_split(f"x-{i}") for i in range(2000)]
    assert splits == [hash_split(f"x-{i}") for i in range(2000)]
    assert 0.2 < splits.count("test") / len(splits) < 0.3
    assert hash_split("any", test_fraction=0.0) == "train"
    assert hash_split("any", test_fraction=1.0) == "test"


# ---------------------------------------------------------------- BFCL


@needs_bfcl
@pytest.mark.parametrize(
    ("source", "count"), [("bfcl:simple", 400), ("bfcl:multiple", 200), ("bfcl:live_simple", 258)]
)
def test_bfcl_sources(source: str, count: int) -> None:
    prompts = load_prompts(source)
    assert len(prompts) == count
    assert len({p.id for p in prompts}) == count
    assert {p.category for p in prompts} == {"tool_call"}
    assert {p.source for p in prompts} == {f"bfcl:{BFCL_SETS[source.removeprefix('bfcl:')]}"}
    assert {p.split for p in prompts} == {"train", "test"}
    for p in prompts:
        assert p.text.strip() and p.tools and p.ground_truth, p.id
        assert p.split == hash_split(p.id)
        tool_names = {tool["name"] for tool in p.tools}
        for call in p.ground_truth:
            assert set(call) <= tool_names, p.id


@needs_bfcl
def test_bfcl_ground_truth_aligned_by_id() -> None:
    # Compare against the raw files: each prompt's ground truth is the row with the same id.
    from dynprune.tasks.bfcl import bfcl_data_dir

    path = bfcl_data_dir() / "possible_answer" / "BFCL_v4_multiple.json"
    raw = {row["id"]: row["ground_truth"] for row in map(json.loads, path.read_text().splitlines()) if row}
    prompts = load_bfcl("multiple")
    assert {p.id for p in prompts} == set(raw)
    for p in prompts:
        assert list(p.ground_truth) == raw[p.id]
    assert [p.id for p in load_bfcl("simple")] == [p.id for p in load_bfcl("simple_python")]
    assert load_prompts("bfcl:live_simple", split="test", limit=3)[0].split == "test"


def test_bfcl_missing_package_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps bfcl-eval==2026.3.23"):
        load_bfcl("simple")


# ---------------------------------------------------------------- user files


def _write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_user_jsonl(tmp_path: Path) -> None:
    tool = {"name": "get_weather", "parameters": {"type": "dict", "properties": {}, "required": []}}
    path = _write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"text": "What is 2 + 3?", "answer": 5},
            "",
            {"id": "w1", "text": "Weather?", "category": "tool_call", "tools": [tool],
             "ground_truth": [{"get_weather": {"city": ["Paris"]}}], "split": "test"},
        ],
    )  # fmt: skip
    prompts = load_prompts(str(path))
    assert [p.id for p in prompts] == ["mine-1", "w1"]
    first, second = prompts
    assert first.answer == "5" and first.category == "general" and first.split == hash_split("mine-1")
    assert first.source == str(path)
    assert second.tools == (tool,) and second.split == "test" and second.category == "tool_call"
    assert load_prompts(path, split="test") == [p for p in prompts if p.split == "test"]
    assert second in load_prompts(path, split="test")


def test_user_csv(tmp_path: Path) -> None:
    path = tmp_path / "mine.csv"
    path.write_text(
        "id,text,answer,split,category\n"
        'a,"Capital of France?",Paris,train,qa\n'
        ',"A prompt\nover two lines",,,\n'
        "c,Name a colour.,,test,\n"
    )
    prompts = load_file(path)
    assert [p.id for p in prompts] == ["a", "mine-3", "c"]
    assert prompts[0].answer == "Paris" and prompts[0].category == "qa" and prompts[0].split == "train"
    assert prompts[1].text == "A prompt\nover two lines" and prompts[1].answer is None
    assert prompts[2].split == "test" and prompts[2].category == "general"


def test_user_csv_with_tools(tmp_path: Path) -> None:
    tool = {"name": "f", "parameters": {"type": "dict", "properties": {"x": {"type": "integer"}}}}
    path = tmp_path / "tools.csv"
    gt = [{"f": {"x": [1]}}]
    path.write_text(
        "text,tools,ground_truth\n"
        f'"Call f with 1.","{json.dumps([tool]).replace(chr(34), chr(34) * 2)}",'
        f'"{json.dumps(gt).replace(chr(34), chr(34) * 2)}"\n'
    )
    (prompt,) = load_prompts(str(path))
    assert prompt.tools == (tool,) and prompt.ground_truth == tuple(gt)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"text": "ok"', "invalid JSON"),
        ('["text"]', "expected a JSON object"),
        ('{"id": "x"}', "missing required field 'text'"),
        ('{"text": "   "}', "non-empty string"),
        ('{"text": 5}', "non-empty string"),
        ('{"text": "hi", "split": "dev"}', "'split' must be one of"),
        ('{"text": "hi", "answer": ["a"]}', "'answer' must be"),
        ('{"text": "hi", "tools": {"name": "f"}}', "'tools' must be a list"),
        ('{"text": "hi", "tools": [{"name": "f"}], "ground_truth": [{"g": {}}]}', "not among the tools"),
        ('{"text": "hi", "ground_truth": [{"f": {"x": 1}}], "tools": [{"name": "f"}]}', "list of allowed"),
        ('{"text": "hi", "anwser": "typo"}', "unknown field"),
        ('{"id": "first", "text": "again"}', "duplicate id 'first' \\(first used on line 1\\)"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", ['{"id": "first", "text": "fine"}', "", row])
    with pytest.raises(ValueError, match=message) as info:
        load_prompts(str(path))
    assert f"{path} line 3" in str(info.value)


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("id,prompt\na,hello\n", 1, "must contain a 'text' column"),
        ("text,colour\nhello,red\n", 1, "unknown column"),
        ("id,text\na,hello\nb,\n", 3, "non-empty string"),
        ("id,text\na,hello\na,again\n", 3, "duplicate id 'a'"),
        ("id,text\na,hello\nb,hi,extra\n", 3, "expected 2 cells"),
        ('text,tools\nhello,"[not json"\n', 2, "must hold JSON"),
        ('text,split\n"two\nlines",val\n', 2, "'split' must be one of"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path: Path, content: str, line: int, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_prompts(str(path))
    assert f"{path} line {line}" in str(info.value)


def test_user_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="prompt file not found"):
        load_prompts(str(tmp_path / "missing.jsonl"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts found"):
        load_prompts(str(empty))
    with pytest.raises(ValueError, match="must end in one of"):
        load_file(tmp_path / "prompts.txt")
