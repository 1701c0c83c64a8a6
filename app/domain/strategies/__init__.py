"""Search strategies: given a task and the experiments so far, what to run next.

`make_strategy(spec)` picks the class named by `optimization.strategy`. Strategies are
cheap, stateless objects; the coordinator may build a new one on every tick.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from app.domain.strategies.base import Strategy, Trial
from app.domain.strategies.bayesian import BayesianStrategy
from app.domain.strategies.grid import GridStrategy
from app.domain.strategies.listed import ListedStrategy
from app.domain.strategies.random_search import RandomStrategy

if TYPE_CHECKING:
    from app.domain.taskspec import TaskSpec

# The registry: `optimization.strategy` names (the task spec's `StrategyName`) -> classes.
STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (GridStrategy, RandomStrategy, ListedStrategy, BayesianStrategy)
}


def make_strategy(spec: "TaskSpec") -> Strategy:
    """The strategy object for `spec` (its `optimization.strategy`)."""
    try:
        cls = STRATEGIES[spec.optimization.strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {spec.optimization.strategy!r}; "
                         f"expected one of {sorted(STRATEGIES)}") from None
    return cls(spec)


__all__ = ["STRATEGIES", "Strategy", "Trial", "make_strategy"]
