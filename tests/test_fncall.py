"""Tests of dynprune.fncall: parsing function calls from model output and scoring them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from dynprune.fncall import parse_calls, score_calls, values_match
from dynprune.types import FunctionCallScore

F_A1 = [{"name": "f", "arguments": {"a": 1}}]


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # JSON object, with each key variant
        ('{"name": "f", "arguments": {"a": 1}}', F_A1),
        ('{"name": "f", "parameters": {"a": 1}}', F_A1),
        ('{"name": "f", "args": {"a": 1}}', F_A1),
        ('  {"name": " f ", "arguments": {"a": 1}}\n', F_A1),
        ('{"name": "f"}', [{"name": "f", "arguments": {}}]),
        # JSON list
        (
            '[{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {"b": "x"}}]',
            [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {"b": "x"}}],
        ),
        ("[]", []),
        # code fences
        ('Here it is:\n```json\n{"name": "f", "arguments": {"a": 1}}\n```\nDone.', F_A1),
        ('```\n[{"name": "f", "arguments": {"a": 1}}]\n```', F_A1),
        ("```python\nf(a=1)\n```", F_A1),
        # Qwen / Hermes tags, one call per tag, closing tag optional at the end
        (
            '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n'
            '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>',
            [{"name": "f", "arguments": {"a": 1}}, {"name": "g", "arguments": {}}],
        ),
        ('<tool_call>{"name": "f", "arguments": {"a": 1}}', F_A1),
        # OpenAI shapes: nested function, arguments as a JSON string
        ('{"type": "function", "function": {"name": "f", "arguments": "{\\"a\\": 1}"}}', F_A1),
        ('{"tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": {"a": 1}}}]}', F_A1),
        # Python literal dict (single quotes)
        ("{'name': 'f', 'arguments': {'a': 1}}", F_A1),
        # Python call syntax
        ("f(a=1)", F_A1),
        ("f(a=1);", F_A1),
        (
            "math.hypot(x=4, y=-5.5, z=None)",
            [{"name": "math.hypot", "arguments": {"x": 4, "y": -5.5, "z": None}}],
        ),
        (
            '[f(a=1), g(b="x", c=[1, 2], d={"k": (1, 2)}, e=true, n=null)]',
            [
                {"name": "f", "arguments": {"a": 1}},
                {"name": "g", "arguments": {"b": "x", "c": [1, 2], "d": {"k": (1, 2)}, "e": True, "n": None}},
            ],
        ),
        ("g()", [{"name": "g", "arguments": {}}]),
        # embedded in prose
        ('Sure! {"name": "f", "arguments": {"a": 1}} is the call.', F_A1),
        ("I will call the tool.\nf(a=1)\nThat is all.", F_A1),
    ],
)
def test_parse_formats(text: str, expected: list[dict[str, Any]]) -> None:
    assert parse_calls(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "The capital of France is Paris.",
        '{"answer": 42}',
        '{"name": "Paris", "population": 2100000}',  # a JSON answer, not a call
        '{"name": "f", "arguments": [1, 2]}',
        "[1, 2, 3]",
        "f(1, 2)",  # positional arguments cannot be named
        "f(**kw)",
        "f(a=x)",  # not a literal
        '__import__("os").system("echo hacked")',
        'f(a=__import__("os").getcwd())',
        "f(a=1",
        "<tool_call>garbage</tool_call>",
    ],
)
def test_parse_nothing(text: str) -> None:
    assert parse_calls(text) is None


def test_parse_never_evaluates(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    assert parse_calls(f"f(a=open({str(marker)!r}, 'w'))") is None
    assert parse_calls(f"[open({str(marker)!r}, 'w')]") is None
    assert not marker.exists()


def test_parse_rejects_non_string() -> None:
    with pytest.raises(TypeError, match="text must be a str, got int"):
        parse_calls(5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    ("pred", "allowed", "ok"),
    [
        (5, 5.0, True),
        (5.0, 5, True),
        (0.1 + 0.2, 0.3, True),
        (True, 1, False),
        (1, True, False),
        (True, True, True),
        ("5", 5, False),
        (" Paris ", "paris", True),
        ("Paris", "London", False),
        ([1, 2.0], [1.0, 2], True),
        ([1, 2], [2, 1], False),
        ([1], [1, 2], False),
        (None, None, True),
        ({"size": "Large"}, {"size": ["large"], "milk": ["", "oat"]}, True),
        ({"size": "large", "extra": 1}, {"size": ["large"]}, False),
        ({}, {"size": ["large"]}, False),
        ({"format": "epoch_millis"}, {"format": "epoch_millis"}, True),
    ],
)
def test_values_match(pred: Any, allowed: Any, ok: bool) -> None:
    assert values_match(pred, allowed) is ok


# ---------------------------------------------------------------------------- scoring

GT_AREA = [{"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}]


def scores(s: FunctionCallScore) -> tuple[float, ...]:
    """(exact, json, parsed, call_ratio, name_match, arg_match)."""
    return (s.exact_match, s.json_match, s.parsed, s.call_ratio, s.name_match, s.arg_match)


def test_perfect_call_with_optional_argument_omitted() -> None:
    out = '{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}'
    assert scores(score_calls(out, GT_AREA)) == (0.0, 1.0, 1.0, 1.0, 1.0, 1.0)


def test_numeric_equivalence_and_case_insensitive_strings() -> None:
    out = "calculate_triangle_area(base=10.0, height=5, unit=' UNITS')"
    assert scores(score_calls(out, GT_AREA)) == (0.0, 1.0, 1.0, 1.0, 1.0, 1.0)


def test_wrong_value_is_partial() -> None:
    out = "calculate_triangle_area(base=10, height=6)"
    # call not matched; name right; base and unit (omitted, allowed) right, height wrong: 2/3
    s = score_calls(out, GT_AREA)
    assert scores(s) == pytest.approx((0.0, 0.0, 1.0, 0.0, 1.0, 2 / 3))


def test_missing_required_argument() -> None:
    s = score_calls("calculate_triangle_area(base=10)", GT_AREA)
    assert scores(s) == pytest.approx((0.0, 0.0, 1.0, 0.0, 1.0, 2 / 3))


def test_extra_argument_breaks_the_call_not_the_arguments() -> None:
    s = score_calls("calculate_triangle_area(base=10, height=5, colour='red')", GT_AREA)
    assert scores(s) == (0.0, 0.0, 1.0, 0.0, 1.0, 1.0)


def test_bool_is_not_a_number() -> None:
    gt = [{"f": {"flag": [True], "n": [1]}}]
    assert score_calls("f(flag=True, n=1)", gt).call_ratio == 1.0
    s = score_calls("f(flag=1, n=True)", gt)
    assert (s.call_ratio, s.arg_match) == (0.0, 0.0)


def test_parallel_calls_partial() -> None:
    gt = [{"f": {"a": [1], "b": ["x"]}}, {"g": {"c": [2]}}]
    out = '[{"name": "g", "arguments": {"c": 2.0}}, {"name": "f", "arguments": {"a": 1, "b": "y"}}]'
    # f wrong (b), g right: 1/2 calls; names 2/2; arguments a, c right, b wrong: 2/3
    s = score_calls(out, gt)
    assert scores(s) == pytest.approx((0.0, 0.0, 1.0, 0.5, 1.0, 2 / 3))


def test_extra_call_fails_json_match_only() -> None:
    out = "[calculate_triangle_area(base=10, height=5), other(x=1)]"
    assert scores(score_calls(out, GT_AREA)) == (0.0, 0.0, 1.0, 1.0, 1.0, 1.0)


def test_duplicate_expected_calls_match_one_to_one() -> None:
    gt = [{"f": {"a": [1]}}, {"f": {"a": [2]}}]
    # one predicted f(a=2) satisfies only the second call; one of two names; best f per call: 0 then 1
    assert scores(score_calls("f(a=2)", gt)) == (0.0, 0.0, 1.0, 0.5, 0.5, 0.5)
    # the same predicted call cannot satisfy both expected calls
    assert scores(score_calls("[f(a=2), f(a=2)]", gt)) == (0.0, 0.0, 1.0, 0.5, 1.0, 0.5)
    assert scores(score_calls("[f(a=2), f(a=1)]", gt)) == (0.0, 1.0, 1.0, 1.0, 1.0, 1.0)


def test_best_same_name_call_counts_for_arguments() -> None:
    gt = [{"f": {"a": [1], "b": [2], "c": [3]}}]
    s = score_calls("[f(a=9, b=9, c=3), f(a=1, b=2, c=9)]", gt)
    assert (s.call_ratio, s.arg_match) == pytest.approx((0.0, 2 / 3))


def test_wrong_name() -> None:
    s = score_calls("triangle_area(base=10, height=5)", GT_AREA)
    assert scores(s) == (0.0, 0.0, 1.0, 0.0, 0.0, 0.0)


def test_no_parse_scores_zero() -> None:
    assert scores(score_calls("I cannot help with that.", GT_AREA)) == (0.0,) * 6
    assert scores(score_calls("", GT_AREA)) == (0.0,) * 6


def test_calls_without_arguments_use_name_match() -> None:
    gt = [{"now": {}}, {"today": {}}]
    assert scores(score_calls("now()", gt)) == (0.0, 0.0, 1.0, 0.5, 0.5, 0.5)


def test_nested_dict_argument() -> None:
    gt = [{"order": {"drink": [{"size": ["large"], "milk": ["", "oat"]}]}}]
    assert score_calls('order(drink={"size": "Large"})', gt).call_ratio == 1.0
    assert score_calls('order(drink={"size": "large", "milk": "cow"})', gt).call_ratio == 0.0


def test_reference_exact_and_json_match() -> None:
    ref = '{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}'
    assert scores(score_calls(ref + "\n", GT_AREA, reference=ref))[:2] == (1.0, 1.0)
    reordered = '{"arguments": {"height": 5.0, "base": 10}, "name": "calculate_triangle_area"}'
    assert scores(score_calls(reordered, GT_AREA, reference=ref))[:2] == (0.0, 1.0)
    # json_match against a reference is exact for strings, unlike the ground-truth comparison
    ref_unit = '{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "unit": "units"}}'
    out_unit = "calculate_triangle_area(base=10, height=5, unit='Units')"
    s = score_calls(out_unit, GT_AREA, reference=ref_unit)
    assert (s.json_match, s.call_ratio) == (0.0, 1.0)
    # an unparseable reference never gives json_match
    assert score_calls(ref, GT_AREA, reference="no calls here").json_match == 0.0


def test_reference_call_order_ignored() -> None:
    ref = "[f(a=1), g(b=2)]"
    gt = [{"f": {"a": [1]}}, {"g": {"b": [2]}}]
    assert score_calls("[g(b=2), f(a=1)]", gt, reference=ref).json_match == 1.0
    assert score_calls("[g(b=2), f(a=1), f(a=1)]", gt, reference=ref).json_match == 0.0


def test_no_call_expected() -> None:
    assert scores(score_calls("The weather is nice.", [])) == (0.0, 1.0, 0.0, 1.0, 1.0, 1.0)
    assert scores(score_calls("f(a=1)", [])) == (0.0, 0.0, 1.0, 0.0, 0.0, 0.0)
    assert scores(score_calls("[]", ())) == (0.0, 1.0, 1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("gt", "why"),
    [
        ({"f": {"a": [1]}}, "must be a list"),
        ("f(a=1)", "must be a list"),
        ([{"f": {"a": [1]}, "g": {}}], r"ground_truth\[0\] must be a dict with exactly one function name"),
        ([{"f": [1]}], "must map argument names to lists"),
        ([{"f": {"a": 1}}], r"ground_truth\[0\]\['f'\]\['a'\] must be a list of allowed values, got 1"),
    ],
)
def test_bad_ground_truth(gt: Any, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        score_calls("f(a=1)", gt)


# ---------------------------------------------------------------------------- BFCL data


def instantiate(allowed: Any) -> Any:
    """A concrete value that a BFCL allowed value describes (nested dicts hold option lists)."""
    if isinstance(allowed, dict):
        out = {}
        for key, spec in allowed.items():
            options = spec if isinstance(spec, list) else [spec]
            if options and not (isinstance(options[0], str) and options[0] == ""):
                out[key] = instantiate(options[0])
        return out
    if isinstance(allowed, list):
        return [instantiate(v) for v in allowed]
    return allowed


def canonical_output(ground_truth: list[dict[str, Any]]) -> str:
    """A JSON list of calls built from the first allowed value of every argument."""
    calls = []
    for entry in ground_truth:
        ((name, args),) = entry.items()
        arguments = {
            arg: instantiate(options[0])
            for arg, options in args.items()
            if not (isinstance(options[0], str) and options[0] == "")
        }
        calls.append({"name": name, "arguments": arguments})
    return json.dumps(calls)


def test_bfcl_ground_truth_instantiations_score_one() -> None:
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("bfcl-eval is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "possible_answer"
    n = 0
    for file in ("BFCL_v4_simple_python.json", "BFCL_v4_parallel_multiple.json", "BFCL_v4_live_simple.json"):
        path = folder / file
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            gt = json.loads(line)["ground_truth"]
            if any(options == [] for entry in gt for args in entry.values() for options in args.values()):
                continue  # a few live entries allow no value at all: unsatisfiable, as in BFCL
            s = score_calls(canonical_output(gt), gt)
            assert scores(s)[1:] == (1.0, 1.0, 1.0, 1.0, 1.0), (file, line[:200])
            n += 1
    if n == 0:
        pytest.skip("no BFCL possible_answer files found")
