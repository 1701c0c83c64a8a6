"""Task documents as untrusted input: bounded parsing of JSON/YAML text and a bounded walk
over the parsed value, before any validation looks at it.

A few hundred bytes of YAML with nested aliases expand to gigabytes when composed, copied
or serialised, so aliases are refused outright (task files have no use for them). Nesting
is capped while composing, so neither YAML nor JSON can exhaust the stack, and the walk
refuses what the store or an export could not represent faithfully: integers outside the
signed 64-bit range, Infinity and NaN, strings with lone surrogates, over-long strings.
"""
from __future__ import annotations

import json
import math
from typing import Any

import yaml

from app.domain.limits import INT64_MAX, INT64_MIN, MAX_BODY, MAX_DEPTH, MAX_NODES, MAX_TEXT

from .errors import Loc

MAX_ERRORS = 20  # problems reported for one document; the rest would only repeat them


class DocumentError(ValueError):
    """Text that is not a usable task document (syntax, aliases, size, nesting)."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and with a nesting limit."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in task files", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_text(text: str, as_json: bool = False) -> Any:
    """Parse a task's text: JSON when `as_json`, else YAML (a superset of JSON)."""
    if len(text) > MAX_BODY:
        raise DocumentError(f"the text is longer than {MAX_BODY:,} characters")
    if as_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DocumentError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        except RecursionError:
            raise DocumentError(f"nested deeper than {MAX_DEPTH} levels") from None
        if _deeper_than(data, MAX_DEPTH):  # callers copy and merge it recursively
            raise DocumentError(f"nested deeper than {MAX_DEPTH} levels")
        return data
    loader = None
    try:
        loader = _BoundedLoader(text)  # the reader refuses control characters already here
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise DocumentError(f"invalid YAML{where}: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _deeper_than(data: Any, limit: int) -> bool:
    """Whether containers nest more than `limit` deep (iterative: any depth is safe to ask)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                return True
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return False


def _text_problem(text: str) -> str | None:
    if len(text) > MAX_TEXT:
        return f"text longer than {MAX_TEXT:,} characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text is not valid Unicode (a lone surrogate)"
    return None


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return _text_problem(value)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if INT64_MIN <= value <= INT64_MAX else "integer outside the signed 64-bit range"
    if isinstance(value, float):
        return None if math.isfinite(value) else "must be a finite number (not Infinity or NaN)"
    return f"unsupported value of type {type(value).__name__}"


def document_problems(data: Any) -> list[dict[str, Any]]:
    """Problems of a parsed document as {"loc", "msg"}; at most MAX_ERRORS of them.

    Iterative, and stops at MAX_NODES values, so its cost is bounded whatever the input."""
    errors: list[dict[str, Any]] = []
    stack: list[tuple[Any, Loc]] = [(data, [])]
    nodes = 1  # values seen or waiting on the stack
    while stack and len(errors) < MAX_ERRORS:
        value, loc = stack.pop()
        if isinstance(value, (dict, list)):
            nodes += len(value)
            if nodes > MAX_NODES:
                return errors + [{"loc": [], "msg": f"the document has more than {MAX_NODES:,} values"}]
        if len(loc) > MAX_DEPTH:
            errors.append({"loc": loc[:MAX_DEPTH], "msg": f"nested deeper than {MAX_DEPTH} levels"})
            continue
        if isinstance(value, dict):
            for key, item in value.items():
                problem = _scalar_problem(key) if not isinstance(key, (dict, list)) else "keys must be scalars"
                if problem:
                    errors.append({"loc": loc, "msg": f"key: {problem}"})
                    continue
                stack.append((item, loc + [key if isinstance(key, str) else str(key)]))
        elif isinstance(value, list):
            stack.extend((item, loc + [i]) for i, item in enumerate(value))
        else:
            problem = _scalar_problem(value)
            if problem:
                errors.append({"loc": loc, "msg": problem})
    return errors
