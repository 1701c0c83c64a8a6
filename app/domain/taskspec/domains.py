"""Search-space domains: the normalised parameter ranges every strategy works on."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

Scalar = Union[str, int, float, bool]


@dataclass(frozen=True)
class Choice:
    """A finite set of values. `None` (only produced internally by quant_config) means
    "do not pass this flag at all"."""

    values: tuple[Scalar | None, ...]
    kind: str = field(default="choice", init=False)

    @property
    def is_finite(self) -> bool:
        return True

    def size(self) -> int:
        return len(self.values)

    def value_at(self, index: int) -> Scalar | None:
        return self.values[index]

    def grid_values(self) -> list[Scalar | None]:
        return list(self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "choice", "values": list(self.values)}


@dataclass(frozen=True)
class FloatRange:
    """A continuous interval; infinite, so only random/bayesian strategies can use it."""

    low: float
    high: float
    log: bool = False
    kind: str = field(default="float", init=False)

    @property
    def is_finite(self) -> bool:
        return False

    def size(self) -> None:
        return None

    def grid_values(self) -> list[float]:
        raise ValueError("a continuous range has no finite grid")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class IntRange:
    """Integers low, low+step, ... <= high. Finite, so it can be part of a grid."""

    low: int
    high: int
    step: int = 1
    log: bool = False
    kind: str = field(default="int", init=False)

    @property
    def is_finite(self) -> bool:
        return True

    def size(self) -> int:
        return (self.high - self.low) // self.step + 1

    def value_at(self, index: int) -> int:
        return self.low + index * self.step

    def grid_values(self) -> range:
        """Lazy: a range of 10^12 integers costs no more than one of ten (slice it to use it)."""
        return range(self.low, self.high + 1, self.step)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "step": self.step, "log": self.log}


Domain = Union[Choice, FloatRange, IntRange]
