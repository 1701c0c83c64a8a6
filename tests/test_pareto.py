"""Multi-objective answers: the Pareto front holds exactly the non-dominated points, the
hypervolume is exact, and a task's objectives parse into a multi-objective search."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.pareto import default_reference, dominates, front, hypervolume
from app.domain.taskspec import TaskSpecError, parse_task

pytestmark = pytest.mark.unit

DIRECTIONS = st.lists(st.sampled_from(["minimize", "maximize"]), min_size=2, max_size=3)


@settings(max_examples=200, deadline=None)
@given(DIRECTIONS.flatmap(lambda d: st.tuples(st.just(d), st.lists(
    st.tuples(*[st.integers(0, 6)] * len(d)), max_size=40))))
def test_the_front_holds_only_and_all_the_non_dominated_points(case):
    directions, points = case
    on = front(points, directions)
    for i in on:  # nothing beats a front point on every objective
        assert not any(dominates(q, points[i], directions) for q in points)
    for i in set(range(len(points))) - set(on):  # everything else is beaten by a front point
        assert any(dominates(points[j], points[i], directions) for j in on)


def test_hypervolume_is_the_dominated_area_or_volume():
    # maximise throughput, minimise TTFT; reference (100 tok/s, 10 s)
    d = ["maximize", "minimize"]
    assert hypervolume([(300, 2)], d, (100, 10)) == pytest.approx(200 * 8)
    # two boxes overlapping on 100..200 x 4..10
    assert hypervolume([(300, 4), (200, 2)], d, (100, 10)) == pytest.approx(200 * 6 + 100 * 2)
    assert hypervolume([(50, 2)], d, (100, 10)) == 0.0  # worse than the reference on one objective
    # adding a dominated point changes nothing
    assert hypervolume([(300, 4), (200, 2), (150, 5)], d, (100, 10)) == pytest.approx(1400)
    cube = ["minimize"] * 3
    assert hypervolume([(0, 0, 0)], cube, (1, 2, 3)) == pytest.approx(6)
    # two unit-corner boxes: [0,2]x[0,1]x[0,1] and [0,1]x[0,2]x[0,1] overlap in a unit cube
    assert hypervolume([(0, 1, 0), (1, 0, 0)], cube, (2, 2, 1)) == pytest.approx(2 + 2 - 1)


def test_hypervolume_in_3d_agrees_with_counting_grid_cells():
    pts = [(1, 4, 2), (2, 2, 3), (3, 1, 1), (4, 3, 0)]
    ref = (5, 5, 5)
    cells = sum(1 for c in itertools.product(range(5), repeat=3)
                if any(all(p[k] <= c[k] for k in range(3)) for p in pts))
    assert hypervolume(pts, ["minimize"] * 3, ref) == pytest.approx(cells)


def test_default_reference_is_the_worst_figure_made_ten_percent_worse():
    assert default_reference([(300, 2), (100, 5)], ["maximize", "minimize"]) == pytest.approx([90, 5.5])


def task(**optimization) -> dict:
    return {"task_name": "mo", "base_runtime": "sim", "model": {"id_or_path": "llama-3-8b"},
            "parameters": {"max-running-requests": [16, 64, 256], "chunked-prefill-size": [512, 4096]},
            "optimization": {"strategy": "bayesian", "max_iterations": 6, **optimization}}


def test_two_or_three_objectives_make_a_multi_objective_task():
    spec = parse_task(task(objectives=["maximize_throughput", "minimize_p99_ttft"], reference_point=[100, 10]))
    assert spec.multi_objective and spec.objective_names == ["maximize_throughput", "minimize_p99_ttft"]
    assert spec.optimization.objective == "maximize_throughput"  # the first one ranks `best`
    assert parse_task(spec.to_dict()).objective_names == spec.objective_names
    both = parse_task(task(objectives=["minimize_ttft", "maximize_throughput"], objective="minimize_tpot"))
    assert both.optimization.objective == "minimize_ttft"  # the form sends its select's objective too
    assert any("minimize_tpot is replaced by the first of optimization.objectives" in n for n in both.notes)
    single = parse_task(task(objective="minimize_ttft"))
    assert not single.multi_objective and single.objective_names == ["minimize_ttft"]


@pytest.mark.parametrize("optimization,loc", [
    ({"objectives": ["minimize_ttft", "minimize_ttft"]}, "optimization.objectives"),
    ({"objectives": ["minimize_ttft", "maximize_throughput"], "reference_point": [1, 2, 3]}, "optimization.reference_point"),
    ({"objective": "minimize_ttft", "reference_point": [1, 2]}, "optimization.reference_point"),
    ({"objectives": ["minimize_ttft", "maximize_throughput"], "repeats": 2}, "optimization.repeats"),
    ({"objectives": ["minimize_ttft"]}, "optimization.objectives"),
    ({"objectives": ["minimize_ttft", "minimize_tpot", "minimize_latency", "maximize_throughput"]},
     "optimization.objectives"),
])
def test_bad_objective_lists_are_field_errors(optimization, loc):
    with pytest.raises(TaskSpecError) as info:
        parse_task(task(**optimization))
    assert loc in [".".join(map(str, e["loc"])) for e in info.value.errors]


def test_multi_objective_bayesian_search_learns_from_every_objective():
    """The sampler is given each experiment's figures (penalised per objective) and keeps
    suggesting unseen points; a TPE study with two directions is what reads them."""
    from app.domain.objectives import trial_values
    from app.domain.strategies import make_strategy
    from app.domain.strategies.base import Trial, canonical

    spec = parse_task(task(objectives=["maximize_throughput", "minimize_p99_ttft"], seed=3))
    assert trial_values({"maximize_throughput": 500.0, "minimize_p99_ttft": 2.0}, 1.0, spec.objective_names) == (250.0, 4.0)
    assert trial_values({"maximize_throughput": 500.0}, 0.0, spec.objective_names) is None
    assert trial_values({"minimize_ttft": 1.0}, 0.0, ["minimize_ttft"]) is None  # one objective: its score
    history = [Trial(params={"max-running-requests": m, "chunked-prefill-size": 512}, state="succeeded",
                     objective=float(m), values=(float(m), m / 10)) for m in (16, 64)]
    points = make_strategy(spec).suggest(history, 4)
    keys = {canonical(p) for p in points} | {canonical(t.params) for t in history}
    assert len(points) == 4 and len(keys) == 6  # all new, all distinct: the space is exhausted
