"""Function-call outputs: parse them from model text and score them against BFCL-style ground truth.

Parsing (:func:`parse_calls`) accepts the formats models actually emit:

- a JSON object ``{"name": ..., "arguments": {...}}`` (also ``"parameters"`` / ``"args"``;
  OpenAI's ``{"function": {"name": ..., "arguments": "<json string>"}}`` and
  ``{"tool_calls": [...]}`` too), or a JSON list of them; Python-literal dicts
  (single quotes) are read with ``ast.literal_eval``;
- the same wrapped in a Markdown code fence (```` ```json ... ``` ````) or in
  ``<tool_call>...</tool_call>`` tags (Qwen / Hermes style, one call per tag);
- Python call syntax ``f(a=1, b="x")`` or ``[f(a=1), g(b=2)]`` (the BFCL format), read with
  ``ast``: only keyword arguments with literal values (``ast.literal_eval``), never ``eval``;
- a JSON call embedded in prose ("Sure! {...}"), or a Python call alone on a line.

Scoring (:func:`score_calls`) compares the parsed calls with ground truth in the BFCL
format ``[{"func_name": {"arg": [allowed values ...]}}]``, where an allowed value ``""``
means the argument may be omitted. Values compare as in BFCL's AST checker: numbers by
value (``5 == 5.0``, but ``True`` is not ``1``), strings case-insensitively after
stripping, lists element by element, dicts key by key (a ground-truth dict holds lists of
allowed values per key, like a call's arguments). A string never equals a number (``"5"`` is not ``5``).
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from dynprune.types import FunctionCallScore

__all__ = ["parse_calls", "score_calls", "values_match"]

_ARG_KEYS = ("arguments", "parameters", "args")
# keys a call object may carry besides its name and arguments (ids and types of OpenAI tool calls)
_CALL_KEYS = frozenset(("name", *_ARG_KEYS, "id", "type", "function"))
_TOOL_CALL_RE = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL | re.IGNORECASE)
_FENCE_RE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\r?\n?(.*?)(?:```|\Z)", re.DOTALL)
_JSON_NAMES = {"true": True, "false": False, "null": None}

Call = dict[str, Any]
"""A parsed call: ``{"name": str, "arguments": dict}``."""


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


def _call_from_dict(obj: dict[str, Any]) -> Call | None:
    """Read one call object, or None when ``obj`` is not one."""
    if "name" not in obj and isinstance(obj.get("function"), dict):
        obj = obj["function"]  # OpenAI: {"type": "function", "function": {"name", "arguments"}}
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip() or not set(obj) <= _CALL_KEYS:
        return None
    args: Any = {}
    for key in _ARG_KEYS:
        if key in obj:
            args = obj[key]
            break
    if isinstance(args, str):  # OpenAI sends arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    return {"name": name.strip(), "arguments": dict(args)}


def _calls_from_value(value: Any) -> list[Call] | None:
    """Read calls from a decoded JSON / literal value: a call object or a list of them."""
    if isinstance(value, dict):
        if "tool_calls" in value and "name" not in value:
            return _calls_from_value(value["tool_calls"])
        call = _call_from_dict(value)
        return None if call is None else [call]
    if isinstance(value, list):
        calls: list[Call] = []
        for item in value:
            call = _call_from_dict(item) if isinstance(item, dict) else None
            if call is None:
                return None
            calls.append(call)
        return calls
    return None


class _JsonNames(ast.NodeTransformer):
    """Turn the bare names ``true`` / ``false`` / ``null`` into constants (JSON-minded models write them)."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _JSON_NAMES:
            return ast.copy_location(ast.Constant(_JSON_NAMES[node.id]), node)
        return node


def _dotted_name(node: ast.AST) -> str | None:
    """``math.factorial`` -> "math.factorial"; None for anything but names and attribute chains."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _parse_python_calls(text: str) -> list[Call] | None:
    """Read ``f(a=1)`` or ``[f(a=1), g(b=2)]``; only keyword arguments with literal values."""
    source = text.strip().rstrip(";").strip()
    if not source or len(source) > 100_000:
        return None
    try:
        body = ast.parse(source, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    nodes = body.elts if isinstance(body, (ast.List, ast.Tuple)) else [body]
    if not nodes:
        return None
    calls: list[Call] = []
    for node in nodes:
        if not isinstance(node, ast.Call) or node.args:
            return None  # positional arguments cannot be named without the schema
        name = _dotted_name(node.func)
        if name is None:
            return None
        args: dict[str, Any] = {}
        for keyword in node.keywords:
            if keyword.arg is None:  # **kwargs
                return None
            try:
                args[keyword.arg] = ast.literal_eval(_JsonNames().visit(keyword.value))
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
                return None
        calls.append({"name": name, "arguments": args})
    return calls


def _parse_payload(text: str) -> list[Call] | None:
    """Parse one whole fragment: JSON, then a Python literal, then Python call syntax."""
    source = text.strip()
    if not source:
        return None
    try:
        return _calls_from_value(json.loads(source))
    except (json.JSONDecodeError, RecursionError):
        pass
    if source[0] in "[{":
        try:
            calls = _calls_from_value(ast.literal_eval(source))
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            calls = None
        if calls is not None:
            return calls
    return _parse_python_calls(source)


def _collect(fragments: Sequence[str]) -> list[Call]:
    """Calls of every fragment that parses, in order."""
    calls: list[Call] = []
    for fragment in fragments:
        calls.extend(_parse_payload(fragment) or [])
    return calls


def _embedded_json_calls(text: str) -> list[Call]:
    """Calls from JSON values embedded in prose, left to right."""
    decoder = json.JSONDecoder()
    calls: list[Call] = []
    i = 0
    while True:
        starts = [j for j in (text.find("{", i), text.find("[", i)) if j >= 0]
        if not starts:
            return calls
        start = min(starts)
        try:
            value, end = decoder.raw_decode(text, start)
        except (json.JSONDecodeError, RecursionError):
            i = start + 1
            continue
        found = _calls_from_value(value)
        if found:
            calls.extend(found)
            i = end
        else:
            i = start + 1


def parse_calls(text: str) -> list[Call] | None:
    """Extract function calls from a model's output.

    Tries, in order, and returns the first that yields calls: ``<tool_call>`` tags,
    Markdown code fences, the whole text (JSON, Python literal, or Python call syntax),
    JSON values embedded in prose, Python calls alone on a line.

    Args:
        text: The model's output.

    Returns:
        A list of ``{"name": str, "arguments": dict}`` in output order; ``[]`` when the
        output is an explicit empty list of calls; ``None`` when nothing parses.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        return None
    tagged = _TOOL_CALL_RE.findall(stripped)
    if tagged and (calls := _collect(tagged)):
        return calls
    fenced = _FENCE_RE.findall(stripped)
    if fenced and (calls := _collect(fenced)):
        return calls
    whole = _parse_payload(stripped)
    if whole is not None:
        return whole
    if calls := _embedded_json_calls(stripped):
        return calls
    if calls := _collect([line for line in stripped.splitlines() if "(" in line]):
        return calls
    return None


# --------------------------------------------------------------------------------------
# Value comparison
# --------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers_equal(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _is_omittable(options: Sequence[Any]) -> bool:
    """BFCL marks an optional argument with the allowed value ``""``."""
    return any(isinstance(o, str) and o == "" for o in options)


def values_match(predicted: Any, allowed: Any) -> bool:
    """Whether a predicted value equals one allowed ground-truth value, BFCL-style.

    Numbers compare by value (int 5 equals float 5.0) but booleans only equal booleans;
    strings compare case-insensitively after stripping; lists element by element; a
    ground-truth dict maps each key to a list of allowed values (``""`` = may be omitted)
    and the predicted dict may hold no other key.
    """
    if isinstance(allowed, bool) or isinstance(predicted, bool):
        return isinstance(allowed, bool) and isinstance(predicted, bool) and predicted == allowed
    if _is_number(allowed):
        return _is_number(predicted) and _numbers_equal(predicted, allowed)
    if isinstance(allowed, str):
        return isinstance(predicted, str) and predicted.strip().lower() == allowed.strip().lower()
    if allowed is None:
        return predicted is None
    if isinstance(allowed, (list, tuple)):
        return (
            isinstance(predicted, (list, tuple))
            and len(predicted) == len(allowed)
            and all(values_match(p, a) for p, a in zip(predicted, allowed, strict=True))
        )
    if isinstance(allowed, dict):
        if not isinstance(predicted, dict) or not set(predicted) <= set(allowed):
            return False
        for key, spec in allowed.items():
            options = spec if isinstance(spec, list) else [spec]
            if key in predicted:
                if not any(values_match(predicted[key], o) for o in options):
                    return False
            elif not _is_omittable(options):
                return False
        return True
    return bool(predicted == allowed)


def _json_equal(a: Any, b: Any) -> bool:
    """Equality of two JSON values: numbers by value, booleans only with booleans, strings exactly."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) or _is_number(b):
        return _is_number(a) and _is_number(b) and _numbers_equal(a, b)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (
            isinstance(a, (list, tuple))
            and isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and set(a) == set(b)
            and all(_json_equal(a[k], b[k]) for k in a)
        )
    return bool(a == b)


def _same_calls(predicted: list[Call], reference: list[Call]) -> bool:
    """Same calls as a multiset (parallel calls have no order); arguments as JSON values."""
    if len(predicted) != len(reference):
        return False
    unused = list(predicted)
    for ref in reference:
        for i, pred in enumerate(unused):
            if pred["name"] == ref["name"] and _json_equal(pred["arguments"], ref["arguments"]):
                del unused[i]
                break
        else:
            return False
    return True


# --------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------


def _read_ground_truth(ground_truth: Sequence[dict[str, Any]]) -> list[tuple[str, dict[str, list[Any]]]]:
    """Validate BFCL ground truth ``[{"name": {"arg": [allowed ...]}}]`` into (name, args) pairs."""
    if isinstance(ground_truth, (str, bytes, dict)) or not isinstance(ground_truth, Sequence):
        raise ValueError(
            "ground_truth must be a list of {name: {arg: [allowed values]}}, "
            f"got {type(ground_truth).__name__}"
        )
    expected: list[tuple[str, dict[str, list[Any]]]] = []
    for i, entry in enumerate(ground_truth):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(
                f"ground_truth[{i}] must be a dict with exactly one function name, got {entry!r}"
            )
        ((name, args),) = entry.items()
        if not isinstance(args, dict):
            raise ValueError(f"ground_truth[{i}][{name!r}] must map argument names to lists, got {args!r}")
        for arg, options in args.items():
            if not isinstance(options, list):
                raise ValueError(
                    f"ground_truth[{i}][{name!r}][{arg!r}] must be a list of allowed values, got {options!r}"
                )
        expected.append((str(name), args))
    return expected


def _arg_ok(pred_args: dict[str, Any], arg: str, options: list[Any]) -> bool:
    """The argument is present with an allowed value, or absent where ``""`` allows that."""
    if arg in pred_args:
        return any(values_match(pred_args[arg], o) for o in options)
    return _is_omittable(options)


def _call_matches(pred: Call, name: str, args: dict[str, list[Any]]) -> bool:
    """Same name, no argument outside the ground truth, every ground-truth argument right."""
    return (
        pred["name"] == name
        and set(pred["arguments"]) <= set(args)
        and all(_arg_ok(pred["arguments"], arg, options) for arg, options in args.items())
    )


def _max_matching(edges: list[list[int]], n_right: int) -> int:
    """Size of a maximum bipartite matching (Kuhn's augmenting paths); ``edges[i]``: right nodes of left i."""
    owner = [-1] * n_right

    def augment(i: int, seen: list[bool]) -> bool:
        for j in edges[i]:
            if not seen[j]:
                seen[j] = True
                if owner[j] < 0 or augment(owner[j], seen):
                    owner[j] = i
                    return True
        return False

    return sum(augment(i, [False] * n_right) for i in range(len(edges)))


def score_calls(
    output: str,
    ground_truth: Sequence[dict[str, Any]],
    reference: str | None = None,
) -> FunctionCallScore:
    """Score a model's function-call output.

    Args:
        output: The model's raw output text.
        ground_truth: BFCL style ``[{"func_name": {"arg": [allowed values ...]}}]``; an
            allowed value ``""`` means the argument may be omitted.
        reference: Optional reference output (e.g. the dataset's answer string or the full
            model's output).

    Returns:
        A :class:`~dynprune.types.FunctionCallScore` with, each in [0, 1]:

        - ``exact_match``: ``output.strip() == reference.strip()``; 0 without a reference.
        - ``json_match``: with a reference, both parse and their calls are equal as JSON
          values (argument order and call order ignored, values exact except int/float);
          without one, every expected call is matched (as for ``call_ratio``) and there is
          no extra predicted call.
        - ``parsed``: 1 when the output parses into calls (:func:`parse_calls` is not None).
        - ``call_ratio``: fraction of expected calls matched one-to-one by a predicted call
          with the same name, every ground-truth argument allowed or (where ``""`` allows it)
          omitted, and no argument outside the ground truth.
        - ``name_match``: fraction of expected calls whose name is predicted (counted with
          multiplicity: two expected calls of ``f`` need two predicted calls of ``f``).
        - ``arg_match``: over all expected (call, argument) pairs, the fraction that is right
          (allowed value, or omitted where allowed) in the best predicted call of that name;
          equal to ``name_match`` when no expected call has arguments.

        With empty ground truth (no call should be made) the last three and (without a
        reference) ``json_match`` are 1 when no call is predicted, else 0. An output that
        does not parse scores 0 on all but ``exact_match``.

    Raises:
        ValueError: ``ground_truth`` is not in the BFCL format.
    """
    expected = _read_ground_truth(ground_truth)
    predicted = parse_calls(output)
    calls = predicted or []

    exact = float(reference is not None and output.strip() == reference.strip())
    parsed = float(predicted is not None)
    ref_json: float | None = None
    if reference is not None:
        ref_calls = parse_calls(reference)
        ref_json = float(
            predicted is not None and ref_calls is not None and _same_calls(predicted, ref_calls)
        )

    if not expected:
        none_predicted = float(not calls)
        json_match = none_predicted if ref_json is None else ref_json
        return FunctionCallScore(exact, json_match, parsed, none_predicted, none_predicted, none_predicted)

    # call_ratio: one-to-one assignment of predicted calls to the expected calls they satisfy
    edges = [
        [j for j, pred in enumerate(calls) if _call_matches(pred, name, args)] for name, args in expected
    ]
    matched = _max_matching(edges, len(calls))
    call_ratio = matched / len(expected)

    if ref_json is not None:
        json_match = ref_json
    else:
        json_match = float(matched == len(expected) and len(calls) == len(expected))

    # name_match: expected names found among predicted names, with multiplicity
    expected_names = Counter(name for name, _ in expected)
    predicted_names = Counter(pred["name"] for pred in calls)
    name_match = sum(min(n, predicted_names[name]) for name, n in expected_names.items()) / len(expected)

    # arg_match: right arguments of the best same-name predicted call, over all expected arguments
    n_pairs = sum(len(args) for _, args in expected)
    if n_pairs == 0:
        arg_match = name_match
    else:
        right = 0
        for name, args in expected:
            right += max(
                (
                    sum(_arg_ok(pred["arguments"], arg, options) for arg, options in args.items())
                    for pred in calls
                    if pred["name"] == name
                ),
                default=0,
            )
        arg_match = right / n_pairs

    return FunctionCallScore(
        exact_match=exact,
        json_match=json_match,
        parsed=parsed,
        call_ratio=call_ratio,
        name_match=name_match,
        arg_match=arg_match,
    )
