"""What a task would run, before it is stored: how many experiments, how many GPUs each,
and notes on the search space. The New task page shows it as the user types; the work is
bounded whatever the task's size (ranges are never materialised)."""
from __future__ import annotations

import itertools
from typing import Any

from app.domain.taskspec import Choice, IntRange, TaskSpecError, parse_task
from app.task_service import check_submittable

MAX_ENUMERATED = 10_000  # parameter sets looked at to find the GPU range


def _gpu_range(spec) -> tuple[list[int], list[str]]:
    """Distinct GPU counts over the parameter sets the task can run. Bounded work: at most
    MAX_ENUMERATED values per axis and MAX_ENUMERATED combinations are looked at."""
    notes: list[str] = []
    if spec.optimization.strategy == "list":
        configs = spec.list_configs[:MAX_ENUMERATED]
        return sorted({spec.gpus_needed(c) for c in configs}) or [1], notes
    engine = spec.engine_spec
    relevant = set(engine.gpu_flags) | ({engine.dp_inside_tp} if engine.dp_inside_tp else set())
    axes: list[tuple[str, list[Any]]] = []
    for name, dom in spec.search_space.items():
        if name not in relevant:
            continue
        if isinstance(dom, (Choice, IntRange)):  # IntRange's values are a lazy range: slicing is free
            axes.append((name, dom.grid_values()[:MAX_ENUMERATED]))
    counts: set[int] = set()
    for i, combo in enumerate(itertools.product(*(values for _, values in axes))):
        if i >= MAX_ENUMERATED:
            notes.append(f"GPU range computed over the first {MAX_ENUMERATED:,} parameter sets")
            break
        counts.add(spec.gpus_needed(dict(zip((n for n, _ in axes), combo))))
    return sorted(counts) or [1], notes


def preview_task(data: Any) -> dict[str, Any]:
    """Experiments the task will run and GPUs each needs; errors instead when invalid."""
    out: dict[str, Any] = {"experiments": None, "gpus_per_experiment": None, "gpu_counts": None,
                           "grid_size": None, "notes": [], "errors": []}
    try:
        spec = parse_task(data)
        check_submittable(spec)
    except TaskSpecError as exc:
        out["errors"] = exc.errors
        return out
    strategy, limit = spec.optimization.strategy, int(spec.optimization.max_iterations)
    grid = spec.grid_size()
    out["grid_size"] = grid
    if strategy == "list":
        available = len(spec.list_configs)
        out["experiments"] = min(limit, available)
    elif grid is not None:
        out["experiments"] = min(limit, grid)
    else:
        out["experiments"] = limit
    notes = list(spec.notes)
    if strategy in ("grid_search", "random") and grid is not None and limit < grid:
        notes.append(f"the search space has {grid:,} parameter sets; {limit:,} of them will run")
    if grid is None and strategy in ("random", "bayesian"):
        notes.append("the search space is continuous; max_iterations decides how many experiments run")
    counts, gpu_notes = _gpu_range(spec)
    out["gpus_per_experiment"] = [counts[0], counts[-1]]
    out["gpu_counts"] = counts
    out["notes"] = notes + gpu_notes
    return out
