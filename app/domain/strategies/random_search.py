"""Seeded random search.

The strategy keeps no state, so randomness must be replayable: for a given search space
and `optimization.seed` it walks one fixed pseudo-random sequence of points from the
start and returns the first ones not yet in the history. Rebuilding after a restart
therefore yields exactly the points the lost process would have suggested next.

Points the engine refuses by its own argument checks (known constraints) are skipped.
Finite spaces are sampled without replacement (a seeded permutation of the grid indices;
for very large grids, seeded draws with rejection) and run out when all points are used.
Spaces with a continuous range sample every dimension independently (uniform, or
log-uniform when `log` is set) and never run out.
"""
from __future__ import annotations

import math
import random
from collections import OrderedDict
from typing import Any, Iterator, Sequence

from app.domain.strategies.base import Strategy, Trial, fingerprint, point_at, seen_keys, total_size
from app.domain.taskspec import Choice, Domain, FloatRange, IntRange

PERMUTATION_LIMIT = 200_000  # above this, draw indices with rejection instead of shuffling
_CACHE_SIZE = 8
_PERMUTATIONS: "OrderedDict[tuple[str, int], list[int]]" = OrderedDict()


def _permutation(space: dict[str, Domain], total: int, seed: int) -> list[int]:
    key = (fingerprint(space), seed)
    perm = _PERMUTATIONS.get(key)
    if perm is None:
        perm = list(range(total))
        random.Random(seed).shuffle(perm)
        _PERMUTATIONS[key] = perm
        while len(_PERMUTATIONS) > _CACHE_SIZE:
            _PERMUTATIONS.popitem(last=False)
    return perm


def sample(domain: Domain, rng: random.Random) -> Any:
    """One value of one dimension."""
    if isinstance(domain, Choice):
        return domain.values[rng.randrange(domain.size())]
    if isinstance(domain, IntRange):
        if domain.log:
            value = math.exp(rng.uniform(math.log(domain.low), math.log(domain.high + 1)))
            return min(domain.high, max(domain.low, int(value)))
        return domain.value_at(rng.randrange(domain.size()))
    assert isinstance(domain, FloatRange)
    if domain.log:
        return math.exp(rng.uniform(math.log(domain.low), math.log(domain.high)))
    return rng.uniform(domain.low, domain.high)


def sequence(space: dict[str, Domain], seed: int, max_draws: int) -> Iterator[dict[str, Any]]:
    """The fixed pseudo-random sequence of candidate points for (space, seed)."""
    total = total_size(space)
    if total is not None and total <= PERMUTATION_LIMIT:
        for index in _permutation(space, total, seed):
            yield point_at(space, index)
        return
    rng = random.Random(seed)
    for _ in range(max_draws):
        if total is not None:
            yield point_at(space, rng.randrange(total))
        else:
            yield {name: sample(dom, rng) for name, dom in space.items()}


class RandomStrategy(Strategy):
    name = "random"
    label = "random"
    learns_from_results = False

    def suggest(self, history: Sequence[Trial], n: int) -> list[dict[str, Any]]:
        if n <= 0:
            return []
        seen = seen_keys(history)
        # Bounded so a nearly exhausted huge grid cannot loop forever.
        max_draws = 100 * (len(seen) + n) + 10_000
        return self.take_new(sequence(self.spec.search_space, self.spec.optimization.seed, max_draws), seen, n)
