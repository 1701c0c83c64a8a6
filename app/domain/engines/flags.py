"""Flag vocabularies: the command-line flags one engine release accepts, with their types.

Why: a misspelt flag (`--mem-fration-static`) used to be discovered when every experiment of
a task failed at start-up; with the vocabulary it is refused at submission with the closest
known name, and values are checked against the flag's type and choices. The vocabularies are
data (`vocab/<engine>.json`, extracted from the engine's own argument parser for the release
named in the file), so following a new engine release means replacing one file.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

VOCAB_DIR = Path(__file__).resolve().parent / "vocab"
FLAG_TYPES = ("int", "float", "str", "bool", "bool_optional")


@dataclass(frozen=True)
class FlagSpec:
    """One flag: `bool` is a bare switch (store_true), `bool_optional` takes `--no-` too."""

    name: str
    type: str = "str"
    choices: tuple[str, ...] | None = None
    nargs: str | None = None

    @property
    def is_switch(self) -> bool:
        return self.type in ("bool", "bool_optional")

    def value_problem(self, value: Any) -> str | None:
        """Why `value` is not a valid value of this flag, or None. `None` (flag not passed)
        is always valid."""
        if value is None:
            return None
        if self.is_switch:
            return None if isinstance(value, bool) else f"--{self.name} is a switch: its values must be true or false"
        if isinstance(value, bool):
            return f"--{self.name} takes a {self.type} value, not true/false"
        if self.type == "int" and not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            return f"--{self.name} takes an integer, not {value!r}"
        if self.type == "float" and not isinstance(value, (int, float)):
            return f"--{self.name} takes a number, not {value!r}"
        if self.choices is not None and str(value) not in self.choices:
            return f"{value!r} is not a valid --{self.name}; choose from {', '.join(self.choices)}"
        return None

    def argv(self, value: Any) -> list[str]:
        """The argv fragment for one value: switches become bare flags (`--no-x` for a false
        BooleanOptionalAction flag, nothing for a false store_true flag)."""
        if value is None:
            return []
        if isinstance(value, bool):
            if value:
                return [f"--{self.name}"]
            return [f"--no-{self.name}"] if self.type == "bool_optional" else []
        if self.type == "int" and isinstance(value, float):
            value = int(value)
        return [f"--{self.name}", str(value)]


@dataclass(frozen=True)
class Vocabulary:
    """The flags of one engine release, looked up by name or alias."""

    engine: str
    version: str
    flags: dict[str, FlagSpec]
    aliases: dict[str, str] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def canonical(self, name: str) -> str | None:
        """The flag's own name for `name` (itself or an alias), or None if unknown."""
        if name in self.flags:
            return name
        return self.aliases.get(name)

    def get(self, name: str) -> FlagSpec | None:
        canonical = self.canonical(name)
        return None if canonical is None else self.flags[canonical]

    def closest(self, name: str) -> str | None:
        """The known flag a misspelt `name` most probably meant."""
        found = difflib.get_close_matches(name, list(self.flags) + list(self.aliases), n=1, cutoff=0.6)
        return self.canonical(found[0]) if found else None

    @property
    def label(self) -> str:
        return f"{self.engine} {self.version}"


def vocabulary_from_dict(data: dict[str, Any]) -> Vocabulary:
    """Build a vocabulary from the JSON layout of `vocab/*.json` (also used for operator-
    defined engines); raises ValueError naming the first malformed entry."""
    flags: dict[str, FlagSpec] = {}
    aliases: dict[str, str] = {}
    for name, raw in (data.get("flags") or {}).items():
        raw = {"type": raw} if isinstance(raw, str) else dict(raw or {})
        kind = raw.get("type", "str")
        if kind not in FLAG_TYPES:
            raise ValueError(f"flag {name!r}: type {kind!r} is not one of {', '.join(FLAG_TYPES)}")
        choices = raw.get("choices")
        flags[name] = FlagSpec(
            name=name, type=kind, nargs=raw.get("nargs"),
            choices=tuple(str(c) for c in choices) if choices and not raw.get("open_choices") else None,
        )
        for alias in raw.get("aliases") or ():
            if alias != name:
                aliases[alias] = name
    return Vocabulary(
        engine=str(data.get("engine", "")), version=str(data.get("version", "")),
        flags=flags, aliases=aliases, source=dict(data.get("source") or {}),
    )


@lru_cache(maxsize=None)
def load_vocabulary(engine: str) -> Vocabulary:
    """The packaged vocabulary of a built-in engine (read once per process)."""
    return vocabulary_from_dict(json.loads((VOCAB_DIR / f"{engine}.json").read_text(encoding="utf-8")))
