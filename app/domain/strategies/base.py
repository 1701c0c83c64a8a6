"""What every search strategy is, and the helpers they share.

A strategy is a plain object with no memory between calls: `suggest(history, n)` rebuilds
whatever state it needs from the history of experiments already created (in any state),
so a coordinator restart, a retry, or two coordinators taking turns lose nothing. The
caller enforces `max_iterations`; a strategy only promises never to suggest a parameter
set that is already in the history, and to return fewer (or none) when it runs out.
"""
from __future__ import annotations

import abc
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Sequence

from app.domain.states import EXP_STATES, ExperimentState

if TYPE_CHECKING:
    from app.domain.taskspec import Domain, TaskSpec



@dataclass
class Trial:
    """One experiment as a strategy sees it. `objective` is set for succeeded ones that may
    be the best; `infeasible` for failed ones whose parameter set cannot run at all (out of
    memory, KV cache too small, an invalid value: see app.domain.engines.failures);
    `slo_broken` for succeeded ones that broke a hard SLO. The last two are constraint
    violations the search learns from, not results."""

    params: dict[str, Any]
    state: ExperimentState
    objective: float | None = None
    infeasible: bool = False
    slo_broken: bool = False
    # A multi-objective task's figures, one per objective in order, each with the SLO penalty
    # applied in its direction (app.domain.objectives.penalised); None otherwise.
    values: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.state not in EXP_STATES:
            raise ValueError(f"unknown trial state {self.state!r}; expected one of {', '.join(EXP_STATES)}")
        self.state = ExperimentState(self.state)


def canonical(params: dict[str, Any]) -> str:
    """A parameter set as a comparable string. `None` means "flag not passed", which is
    the same as the key being absent, so such keys are dropped."""
    return json.dumps({k: v for k, v in params.items() if v is not None},
                      sort_keys=True, separators=(",", ":"), default=str)


def seen_keys(history: Iterable[Trial]) -> set[str]:
    return {canonical(t.params) for t in history}


def grid_sizes(space: dict[str, "Domain"]) -> list[int]:
    """Number of values per dimension; only meaningful for finite spaces."""
    return [dom.size() for dom in space.values()]  # type: ignore[misc]


def point_at(space: dict[str, "Domain"], index: int) -> dict[str, Any]:
    """The `index`-th point of the cartesian grid in product order (last dimension
    fastest), computed without materialising the grid."""
    names = list(space)
    point: dict[str, Any] = {}
    for name in reversed(names):
        dom = space[name]
        index, digit = divmod(index, dom.size())  # type: ignore[operator]
        point[name] = dom.value_at(digit)  # type: ignore[union-attr]
    return {name: point[name] for name in names}


def total_size(space: dict[str, "Domain"]) -> int | None:
    if any(not dom.is_finite for dom in space.values()):
        return None
    return math.prod(grid_sizes(space))


def fingerprint(space: dict[str, "Domain"]) -> str:
    """Identifies a search space across TaskSpec instances (the coordinator re-parses the
    task on every tick), so caches keyed by it survive that."""
    return json.dumps([[name, dom.to_dict()] for name, dom in space.items()], default=str)


class Strategy(abc.ABC):
    """Suggests new parameter sets for one task."""

    name: ClassVar[str] = "base"
    label: ClassVar[str] = "base"  # how pages and the CLI name it
    # Whether its suggestions depend on earlier results. One that does not (grid, random, a
    # list) may have its next experiments created before the running ones end, so a GPU
    # freed by a finishing job is handed on at once, without waiting for a coordinator pass.
    learns_from_results: ClassVar[bool] = True

    def __init__(self, spec: "TaskSpec") -> None:
        self.spec = spec

    def refused(self, params: dict[str, Any]) -> bool:
        """Whether the engine refuses `params` by its own argument checks (the known constraints
        declared in the engine registry): such a point is never suggested, so no GPU is spent
        learning what the engine's source already says."""
        return self.spec.engine_spec.refusal(params) is not None

    def take_new(self, points: Iterable[dict[str, Any]], seen: set[str], n: int) -> list[dict[str, Any]]:
        """The first `n` of `points` that are neither in `seen` nor refused by the engine
        (`seen` grows with them, so the next caller in this call skips them too)."""
        out: list[dict[str, Any]] = []
        if n <= 0:
            return out
        for point in points:
            key = canonical(point)
            if key in seen or self.refused(point):
                continue
            seen.add(key)
            out.append(point)
            if len(out) >= n:
                break
        return out

    @abc.abstractmethod
    def suggest(self, history: Sequence[Trial], n: int) -> list[dict[str, Any]]:
        """Up to `n` parameter sets not in `history` (and distinct from each other)."""
