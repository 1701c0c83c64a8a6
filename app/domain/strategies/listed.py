"""Strategy "list": run the explicit `optimization.configs`, suggested in the order written
(the coordinator then starts a task's waiting experiments longest predicted first, once it
can predict lengths: app.coordinator._renew).

Useful to re-measure known-good configurations (the same one several times, to see the
noise) or to compare a handful of hand-picked ones; benchmarks use it to shape workloads.
Configs are taken by position: experiment k runs configs[k]. The configs were validated and normalised by the task parser
(`spec.list_configs`, with single-valued parameters filled in).
"""
from __future__ import annotations

from typing import Any, Sequence

from app.domain.strategies.base import Strategy, Trial


class ListedStrategy(Strategy):
    name = "list"
    label = "list of configurations"
    learns_from_results = False

    def suggest(self, history: Sequence[Trial], n: int) -> list[dict[str, Any]]:
        if n <= 0:
            return []
        done = len(history)
        return [dict(c) for c in self.spec.list_configs[done : done + n]]
