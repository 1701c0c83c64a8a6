"""Errors: the problem list of a task file, and the collector that accumulates them.

Also turns pydantic's errors into the same {"loc", "msg"} shape (used by the semantic
pass and by the loader alike)."""
from __future__ import annotations

from typing import Any, Union

from pydantic import ValidationError

Loc = list[Union[str, int]]


class TaskSpecError(ValueError):
    """Every problem of one task file; `errors` is a list of {"loc": [...], "msg": str}."""

    def __init__(self, errors: list[dict[str, Any]]):
        self.errors = errors
        super().__init__(self.format())

    def format(self) -> str:
        lines = [f"{len(self.errors)} problem(s) in the task:"]
        lines += [f"  {format_loc(e['loc']) or '(file)'}: {e['msg']}" for e in self.errors]
        return "\n".join(lines)


def format_loc(loc: Loc) -> str:
    """["benchmark", "traffic_scenarios", 0] -> "benchmark.traffic_scenarios[0]"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Collector:
    """Accumulates semantic errors and notes so that all of them are reported together."""

    def __init__(self) -> None:
        self.errors: list[dict[str, Any]] = []
        self.notes: list[str] = []

    def error(self, loc: Loc, msg: str) -> None:
        self.errors.append({"loc": list(loc), "msg": msg})

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)



_PYDANTIC_MESSAGES = {"extra_forbidden": "unknown field", "missing": "required field is missing"}


def pydantic_errors(exc: ValidationError, prefix: Loc = ()) -> list[dict[str, Any]]:
    """pydantic's errors -> [{"loc", "msg"}], with friendlier wording."""
    out = []
    for err in exc.errors(include_url=False):
        msg = _PYDANTIC_MESSAGES.get(err["type"], err["msg"])
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append({"loc": list(prefix) + list(err["loc"]), "msg": msg})
    return out
