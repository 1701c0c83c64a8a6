"""The simulated engine makes tuning non-trivial: on the quickstart task the best
configuration sits inside the grid for every parameter, and the task's SLO changes which
configuration wins. Checked with the engine's scheduler and performance model in virtual
time (deterministic), the same code the HTTP engine runs on the wall clock."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from app.domain.objectives import is_better, score
from app.domain.taskspec import load_task_file
from app.tools.simengine.virtual import replay

pytestmark = pytest.mark.unit

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.json"


def evaluate(spec, slo):
    """Objective of every grid point, as the tuner would score it."""
    sim = spec.to_dict()["sim"]
    bench = spec.benchmark
    names = list(spec.search_space)
    results = {}
    for values in itertools.product(*(spec.search_space[n].grid_values() for n in names)):
        params = dict(zip(names, values))
        argv = ["--engine", spec.engine, "--model", spec.model.id_or_path, "--sim-gpu", sim["gpu"], *spec.launch_flags(params)]
        levels = [replay(argv, sc, int(c), bench.max_requests_per_iteration) for sc in bench.traffic_scenarios
                  for c in bench.num_concurrency]
        s = score([levels], spec.optimization.objective, slo)
        results[values] = s.objective if s.slo_ok else None
    return names, results


def best(results, objective):
    winner = None
    for values, value in results.items():
        if value is not None and (winner is None or is_better(value, results[winner], objective)):
            winner = values
    return winner


@pytest.fixture(scope="module")
def quickstart():
    return load_task_file(QUICKSTART)


def test_quickstart_optimum_is_inside_the_grid(quickstart):
    names, results = evaluate(quickstart, quickstart.to_dict().get("slo"))
    winner = best(results, quickstart.optimization.objective)
    for name, value in zip(names, winner):
        grid = quickstart.search_space[name].grid_values()
        assert len(grid) >= 3
        assert value not in (min(grid), max(grid)), f"best --{name}={value} is a corner of {grid}"


def test_the_slo_changes_the_winner(quickstart):
    objective = quickstart.optimization.objective
    _, with_slo = evaluate(quickstart, quickstart.to_dict().get("slo"))
    _, without = evaluate(quickstart, None)
    assert best(with_slo, objective) != best(without, objective)
