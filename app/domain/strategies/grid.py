"""Grid search in a well-spread order.

Product order (1,1,1), (1,1,2), ... would spend a short budget (max_iterations < grid
size) on one corner of the space. Instead points come in greedy farthest-point
(maximin) order over normalised coordinates (index / (len - 1) per dimension), starting
from the first grid point, so any prefix covers the space as evenly as greedy allows.
The order is deterministic: it depends only on the search space, not on the history,
so rebuilding it after a restart yields the same sequence.

Cost: each greedy step is O(candidates x dims), done with numpy and only as far as
needed. Grids over SAMPLE_LIMIT points use a deterministic sample of candidates; the
rest of the grid then follows in product order, so the whole grid is still covered.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from app.domain.strategies.base import Strategy, Trial, canonical, fingerprint, grid_sizes, point_at, seen_keys, total_size
from app.domain.taskspec import Domain

SAMPLE_LIMIT = 20_000
_CACHE_SIZE = 16


class MaximinOrder:
    """Lazily extended maximin ordering of the indices of one grid."""

    def __init__(self, sizes: list[int]) -> None:
        self.total = int(np.prod(sizes, dtype=object)) if sizes else 1
        if self.total <= SAMPLE_LIMIT:
            candidates = np.arange(self.total, dtype=np.int64)
        else:
            rng = np.random.default_rng(0)
            picked: set[int] = {0}
            while len(picked) < SAMPLE_LIMIT:  # python ints: totals may exceed int64
                picked.update(int(x * self.total) for x in rng.random(SAMPLE_LIMIT - len(picked)))
            candidates = np.array(sorted(picked), dtype=object)
        self.candidates = candidates
        self.candidate_set = {int(c) for c in candidates} if self.total > SAMPLE_LIMIT else None
        self.coords = self._coords(candidates, sizes)  # (dims, candidates), one row per dim
        self.min_dist = np.full(len(candidates), np.inf)
        self._dist = np.empty(len(candidates))
        self._buf = np.empty(len(candidates))
        self.order: list[int] = []  # positions into self.candidates, in maximin order
        self._lock = threading.Lock()  # cached orders are shared between callers
        self._take(0)

    @staticmethod
    def _coords(candidates: np.ndarray, sizes: list[int]) -> np.ndarray:
        coords = np.zeros((max(len(sizes), 1), len(candidates)))
        rest = [int(c) for c in candidates]
        for dim in range(len(sizes) - 1, -1, -1):
            size = sizes[dim]
            digits = [r % size for r in rest]
            rest = [r // size for r in rest]
            if size > 1:
                coords[dim] = np.array(digits, dtype=float) / (size - 1)
        return coords

    def _take(self, position: int) -> None:
        self.order.append(position)
        dist, buf = self._dist, self._buf
        dist.fill(0.0)
        for row in self.coords:  # squared distance, in place: this loop is the hot spot
            np.subtract(row, row[position], out=buf)
            np.multiply(buf, buf, out=buf)
            np.add(dist, buf, out=dist)
        np.minimum(self.min_dist, dist, out=self.min_dist)
        self.min_dist[position] = -1.0  # never chosen again

    def _extend(self, wanted: int) -> bool:
        """Make order[wanted] exist; False when every candidate is ordered already."""
        with self._lock:
            while len(self.order) <= wanted:
                if len(self.order) >= len(self.candidates):
                    return False
                self._take(int(np.argmax(self.min_dist)))  # ties: lowest grid index
            return True

    def __iter__(self) -> Iterator[int]:
        """Grid indices: maximin-ordered candidates, then (big grids) the rest in order."""
        i = 0
        while i < len(self.order) or self._extend(i):
            yield int(self.candidates[self.order[i]])
            i += 1
        if self.candidate_set is not None:
            for index in range(self.total):
                if index not in self.candidate_set:
                    yield index


_ORDERS: "OrderedDict[str, MaximinOrder]" = OrderedDict()


def maximin_order(space: dict[str, Domain]) -> MaximinOrder:
    """The (cached) order for a finite space; shared by all TaskSpec instances of it."""
    key = fingerprint(space)
    order = _ORDERS.get(key)
    if order is None:
        order = _ORDERS[key] = MaximinOrder(grid_sizes(space))
        while len(_ORDERS) > _CACHE_SIZE:
            _ORDERS.popitem(last=False)
    else:
        _ORDERS.move_to_end(key)
    return order


def unused_points(space: dict[str, Domain], seen: set[str],
                  refused: Callable[[dict[str, Any]], bool] = lambda _: False) -> Iterator[dict[str, Any]]:
    """Grid points not in `seen` nor `refused`, well spread first. Also the bayesian fallback."""
    for index in maximin_order(space):
        point = point_at(space, index)
        if canonical(point) not in seen and not refused(point):
            yield point


class GridStrategy(Strategy):
    """Every point of the (finite) grid that the engine accepts by its own argument checks,
    exactly once, best-spread first."""

    name = "grid_search"
    label = "grid search"
    learns_from_results = False

    def suggest(self, history: Sequence[Trial], n: int) -> list[dict[str, Any]]:
        space = self.spec.search_space
        if n <= 0 or total_size(space) is None:
            return []
        seen = seen_keys(history)
        return self.take_new(unused_points(space, seen, self.refused), seen, n)
