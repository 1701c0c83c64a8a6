"""Pareto sets and their hypervolume, for tasks with two or three objectives.

Why these two: a multi-objective task has no single best; its answer is the set of
configurations no other beats on every objective (the Pareto set), and how good that set is
as a whole is the hypervolume it dominates up to a reference point (the figure SCOOT and
Optuna report). Both are exact: a task's set is small (tens of points), so the 2-D sweep
and the 3-D slicing below cost nothing next to one experiment.

Figures come in each objective's own direction (`directions`, "minimize"/"maximize"); inside,
everything is turned into minimisation by negating the maximised ones.
"""
from __future__ import annotations

from typing import Sequence

Point = Sequence[float]


def _as_min(point: Point, directions: Sequence[str]) -> tuple[float, ...]:
    return tuple(v if d == "minimize" else -v for v, d in zip(point, directions))


def dominates(a: Point, b: Point, directions: Sequence[str]) -> bool:
    """`a` is at least as good as `b` on every objective and better on one."""
    am, bm = _as_min(a, directions), _as_min(b, directions)
    return all(x <= y for x, y in zip(am, bm)) and any(x < y for x, y in zip(am, bm))


def front(points: Sequence[Point], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, in input order (equal points are all kept).

    In lexicographic order (as minimisation) no point dominates one before it, so each point
    need only be checked against the front found so far: O(points x front), not O(points²)."""
    mins = [_as_min(p, directions) for p in points]
    kept: list[int] = []
    for i in sorted(range(len(mins)), key=lambda k: mins[k]):
        m = mins[i]
        if not any(all(a <= b for a, b in zip(mins[j], m)) and mins[j] != m for j in kept):
            kept.append(i)
    return sorted(kept)


def default_reference(points: Sequence[Point], directions: Sequence[str], margin: float = 0.1) -> list[float]:
    """A reference point when the task states none: each objective's worst figure among
    `points`, made `margin` (10 %) worse, so every point contributes some volume."""
    ref = []
    for k, d in enumerate(directions):
        values = [p[k] for p in points]
        worst = max(values) if d == "minimize" else min(values)
        ref.append(worst + margin * abs(worst) if d == "minimize" else worst - margin * abs(worst))
    return ref


def _hv2(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    area, low = 0.0, ref[1]
    for x, y in sorted(points):
        if y < low:
            area += (ref[0] - x) * (low - y)
            low = y
    return area


def hypervolume(points: Sequence[Point], directions: Sequence[str], reference: Point) -> float:
    """The volume dominated by `points` and bounded by `reference` (2 or 3 objectives);
    points not better than the reference on every objective add nothing."""
    ref = _as_min(reference, directions)
    pts = [m for m in (_as_min(p, directions) for p in points) if all(x < r for x, r in zip(m, ref))]
    if not pts:
        return 0.0
    if len(ref) == 2:
        return _hv2(pts, ref)
    if len(ref) != 3:
        raise ValueError(f"hypervolume of {len(ref)} objectives: only 2 or 3 are supported")
    pts.sort(key=lambda p: p[2])
    volume = 0.0
    for i, p in enumerate(pts):  # slab between this point's z and the next one's (or the reference's)
        top = pts[i + 1][2] if i + 1 < len(pts) else ref[2]
        if top > p[2]:
            volume += _hv2([q[:2] for q in pts[: i + 1]], ref[:2]) * (top - p[2])
    return volume
