"""Strategies: complete and duplicate-free, well spread, replayable from history."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.domain.strategies import STRATEGIES, make_strategy
from app.domain.strategies.base import Trial, canonical
from app.domain.strategies.grid import GridStrategy
from app.domain.taskspec import load_task_file, parse_task
from tests.helpers import use_engines_file

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parent / "data" / "examples-original"


@pytest.fixture(autouse=True)
def generic_engine(tmp_path, monkeypatch):
    """Strategies do not care which flags they tune: an operator engine with an open
    vocabulary lets these tests name parameters a, b, c."""
    path = tmp_path / "engines.json"
    path.write_text(json.dumps({"generic": {"command": ["server", "--port", "{port}"]}}))
    use_engines_file(monkeypatch, path)


def task(parameters: dict, strategy: str = "grid_search", **optimization) -> "object":
    return parse_task({
        "task_name": "t", "model": {"id_or_path": "m"}, "base_runtime": "generic", "deployment_mode": "process",
        "parameters": parameters, "optimization": {"strategy": strategy, **optimization},
    })


def keys(points) -> list[str]:
    return [canonical(p) for p in points]


def full_grid(spec) -> set[str]:
    names = list(spec.search_space)
    values = [spec.search_space[n].grid_values() for n in names]
    return {canonical(dict(zip(names, combo))) for combo in itertools.product(*values)}


def run_to_end(spec, k: int, state: str = "succeeded", limit: int = 10_000) -> list[dict]:
    """Suggest k at a time, feeding everything back as history, until exhausted."""
    history: list[Trial] = []
    while len(history) < limit:
        batch = make_strategy(spec).suggest(history, k)
        assert len(batch) <= k
        if not batch:
            break
        history += [Trial(p, state, objective=float(len(history)) if state == "succeeded" else None) for p in batch]
    return [t.params for t in history]


def test_registry_and_factory():
    assert set(STRATEGIES) == {"grid_search", "random", "list", "bayesian"}
    assert isinstance(make_strategy(task({"a": [1]})), GridStrategy)


def test_trial_state_is_checked():
    with pytest.raises(ValueError):
        Trial({}, "done")


# --- grid -----------------------------------------------------------------------------


def test_grid_yields_whole_grid_without_duplicates():
    spec = task({"a": [1, 2, 3], "b": ["x", "y"], "c": {"type": "int", "low": 0, "high": 6, "step": 3}})
    points = run_to_end(spec, 4)
    assert len(points) == 18 == spec.grid_size()
    assert len(set(keys(points))) == 18
    assert set(keys(points)) == full_grid(spec)


def test_grid_first_point_is_the_first_grid_point_and_n_zero():
    spec = task({"a": [1, 2, 3], "b": [4, 5]})
    assert make_strategy(spec).suggest([], 1) == [{"a": 1, "b": 4}]
    assert make_strategy(spec).suggest([], 0) == []


def test_grid_first_four_of_5x5_are_the_corners():
    spec = task({"a": [1, 2, 3, 4, 5], "b": [10, 20, 30, 40, 50]})
    first = make_strategy(spec).suggest([], 4)
    corners = {(a, b) for a in (1, 5) for b in (10, 50)}
    assert {(p["a"], p["b"]) for p in first} == corners


def test_grid_prefix_covers_both_halves_of_every_dimension():
    spec = task({"a": list(range(8)), "b": list(range(6)), "c": list(range(5)), "d": [0, 1]})
    first = make_strategy(spec).suggest([], 6)
    for name, dom in spec.search_space.items():
        mid = (len(dom.values) - 1) / 2
        seen = [dom.values.index(p[name]) for p in first]
        assert min(seen) < mid < max(seen), name


def test_grid_skips_history_in_any_state_and_is_replayable():
    spec = task({"a": list(range(4)), "b": list(range(4))})
    first = make_strategy(spec).suggest([], 6)
    history = [Trial(first[0], "failed"), Trial(first[1], "cancelled"), Trial(first[2], "running")]
    rest = make_strategy(spec).suggest(history, 3)
    assert rest == first[3:6]


def test_grid_deterministic_across_instances():
    params = {"a": list(range(7)), "b": [0.1, 0.2, 0.3]}
    assert make_strategy(task(params)).suggest([], 21) == make_strategy(task(params)).suggest([], 21)


def test_grid_with_quant_none_values_covers_grid():
    spec = parse_task({"task_name": "t", "model": {"id_or_path": "m"},
                       "parameters": {"tp-size": [1, 2]}, "quant_config": {"kvcache_dtype": ["auto", "fp8_e5m2"]}})
    points = run_to_end(spec, 3)
    assert len(points) == 4 == len(set(keys(points)))
    # a history that dropped the None-valued key still counts as the same point
    history = [Trial({"tp-size": 1}, "succeeded", 1.0)]
    assert all(canonical(p) != canonical({"tp-size": 1}) for p in make_strategy(spec).suggest(history, 4))


def test_large_grid_is_sampled_distinct_and_spread():
    # 10**6 points: sampled candidates (how long it takes: benchmarks/strategy_speed.py)
    params = {f"p{i}": list(range(10)) for i in range(6)}
    spec = task(params, max_iterations=50)
    first = make_strategy(spec).suggest([], 50)
    assert len(set(keys(first))) == 50
    assert first[0] == {name: 0 for name in params}
    for name in params:
        assert {p[name] for p in first[:20]} & {0, 1, 2} and {p[name] for p in first[:20]} & {7, 8, 9}


def test_empty_space_is_one_default_run():
    spec = task({})
    assert run_to_end(spec, 3) == [{}]


# --- random ---------------------------------------------------------------------------


def test_random_is_seeded_and_deterministic():
    params = {"a": {"type": "float", "low": 0, "high": 1}, "b": [1, 2, 3], "c": {"type": "int", "low": 1, "high": 1000, "log": True}}
    one = make_strategy(task(params, "random", seed=7)).suggest([], 10)
    two = make_strategy(task(params, "random", seed=7)).suggest([], 10)
    other = make_strategy(task(params, "random", seed=8)).suggest([], 10)
    assert one == two and one != other
    assert all(0 <= p["a"] <= 1 and p["b"] in (1, 2, 3) and 1 <= p["c"] <= 1000 for p in one)


def test_random_rebuilt_from_history_continues_the_sequence():
    params = {"a": {"type": "float", "low": 0, "high": 1, "log": False}, "b": [1, 2]}
    spec = task(params, "random", seed=3)
    ten = make_strategy(spec).suggest([], 10)
    history = [Trial(p, "succeeded", 1.0) for p in ten[:4]]
    assert make_strategy(spec).suggest(history, 6) == ten[4:]


def test_random_finite_grid_without_replacement_then_exhausted():
    spec = task({"a": [1, 2, 3], "b": [True, False], "c": ["x", "y"]}, "random", seed=1)
    points = run_to_end(spec, 5)
    assert len(points) == 12 and set(keys(points)) == full_grid(spec)
    assert points != [dict(zip("abc", combo)) for combo in itertools.product([1, 2, 3], [True, False], ["x", "y"])]


# --- list -----------------------------------------------------------------------------


def test_list_strategy_runs_configs_in_order():
    configs = [{"tp-size": 2}, {"tp-size": 1}, {"tp-size": 4, "schedule-policy": "lpm"}]
    spec = task({}, "list", configs=configs)
    strategy = make_strategy(spec)
    assert strategy.suggest([], 2) == configs[:2]
    assert strategy.suggest([Trial(configs[0], "running")], 5) == configs[1:]
    assert strategy.suggest([Trial(c, "failed") for c in configs], 5) == []
    repeated = make_strategy(task({}, "list", configs=[{"tp-size": 1}] * 3))
    assert repeated.suggest([Trial({"tp-size": 1}, "succeeded")], 5) == [{"tp-size": 1}] * 2


# --- bayesian -------------------------------------------------------------------------


def bayes_spec(**optimization):
    return task({
        "mem-fraction-static": {"type": "continuous", "low": 0.6, "high": 0.95},
        "chunked-prefill-size": [512, 1024, 2048, 4096],
        "max-running-requests": {"type": "integer", "low": 8, "high": 256, "step": 8},
    }, "bayesian", **optimization)


def valid(spec, point) -> bool:
    space = spec.search_space
    return (set(point) == set(space)
            and 0.6 <= point["mem-fraction-static"] <= 0.95
            and point["chunked-prefill-size"] in (512, 1024, 2048, 4096)
            and point["max-running-requests"] in range(8, 257, 8))


def finished_history(spec, count: int) -> list[Trial]:
    points = make_strategy(task(
        {k: v.to_dict() for k, v in spec.search_space.items()}, "random", seed=99)).suggest([], count)
    return [Trial(p, "succeeded", objective=abs(p["mem-fraction-static"] - 0.8) + p["chunked-prefill-size"] / 1e4)
            for p in points]


def test_bayesian_with_finished_history():
    spec = bayes_spec(seed=5)
    history = finished_history(spec, 15) + [Trial(finished_history(spec, 16)[-1].params, "failed")]
    out = make_strategy(spec).suggest(history, 4)
    assert len(out) == 4 and len(set(keys(out))) == 4
    assert all(valid(spec, p) for p in out)
    assert not set(keys(out)) & {canonical(t.params) for t in history}
    assert make_strategy(spec).suggest(history, 4) == out  # replayable


def test_bayesian_with_running_trials_spreads_and_avoids_them():
    spec = bayes_spec(seed=1)
    history = finished_history(spec, 12)
    running = make_strategy(spec).suggest(history, 3)
    history += [Trial(p, state) for p, state in zip(running, ("pending", "queued", "running"))]
    out = make_strategy(spec).suggest(history, 5)
    assert len(out) == 5 and len(set(keys(out))) == 5
    assert all(valid(spec, p) for p in out)
    assert not set(keys(out)) & {canonical(t.params) for t in history}


def test_bayesian_empty_history_and_maximize():
    spec = load_task_file(DATA / "bayesian_task.json")
    out = make_strategy(spec).suggest([], 3)
    assert len(set(keys(out))) == 3
    maximize = task({"a": {"type": "float", "low": 0, "high": 1}}, "bayesian", objective="maximize_throughput")
    assert len(make_strategy(maximize).suggest([], 2)) == 2


def test_bayesian_exhausts_a_small_finite_space():
    spec = task({"a": [1, 2, 3], "b": ["x", "y"]}, "bayesian")
    points = run_to_end(spec, 2)
    assert len(points) == 6 and set(keys(points)) == full_grid(spec)


def test_bayesian_ignores_history_outside_the_space():
    spec = task({"a": [1, 2]}, "bayesian")
    history = [Trial({"a": 7}, "succeeded", 1.0), Trial({"a": 1, "zzz": 2}, "failed"), Trial({"a": 1}, "cancelled")]
    assert make_strategy(spec).suggest(history, 5) == [{"a": 2}]


# --- property: incremental suggestions cover the grid exactly once --------------------

values_st = st.lists(st.integers(-50, 50), min_size=1, max_size=4, unique=True)
grids = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), values_st, min_size=0, max_size=3)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid=grids, k=st.integers(1, 5), strategy=st.sampled_from(["grid_search", "random"]),
       state=st.sampled_from(["succeeded", "failed", "running"]))
def test_incremental_union_is_the_grid(grid, k, strategy, state):
    spec = task(grid, strategy, seed=3)
    points = run_to_end(spec, k, state=state)
    assert len(points) == len(set(keys(points)))
    assert set(keys(points)) == full_grid(spec)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grid=st.dictionaries(st.sampled_from(["a", "b"]), values_st, min_size=1, max_size=2), k=st.integers(1, 4))
def test_incremental_union_is_the_grid_bayesian(grid, k):
    spec = task(grid, "bayesian")
    points = run_to_end(spec, k)
    assert len(points) == len(set(keys(points)))
    assert set(keys(points)) == full_grid(spec)


def test_suggestions_are_json_able():
    spec = load_task_file(DATA / "quant_custom_task.json")
    for name in STRATEGIES:
        if name == "list":
            continue
        spec.optimization.strategy = name
        out = make_strategy(spec).suggest([], 2)
        assert json.loads(json.dumps(out)) == out


def test_infeasible_failures_steer_bayesian_away_from_their_region():
    """Parameter sets that cannot run (out of memory at start-up, ...) are infeasible trials
    for TPE, not ignored failures: fewer suggestions land where the engine cannot start."""
    from app.domain.strategies.bayesian import Encoding, _frozen

    spec = task({"mem-fraction-static": {"type": "float", "low": 0.5, "high": 1.0}}, "bayesian", seed=3,
                objective="maximize_throughput")
    enc = Encoding(spec.search_space)
    frozen = _frozen(Trial({"mem-fraction-static": 0.99}, "failed", infeasible=True), enc)
    assert frozen.state.name == "COMPLETE" and frozen.constraints == {"runs": 1.0}
    assert _frozen(Trial({"mem-fraction-static": 0.99}, "failed"), enc).state.name == "FAIL"

    start = make_strategy(task({"mem-fraction-static": {"type": "float", "low": 0.5, "high": 1.0}}, "random",
                               seed=7)).suggest([], 30)

    def in_bad_region(infeasible: bool) -> int:
        history = [Trial(p, "failed", infeasible=infeasible) if p["mem-fraction-static"] > 0.85
                   else Trial(p, "succeeded", p["mem-fraction-static"]) for p in start]
        return sum(1 for s in make_strategy(spec).suggest(history, 20) if s["mem-fraction-static"] > 0.85)

    assert in_bad_region(infeasible=True) < in_bad_region(infeasible=False)


def test_the_coordinator_marks_configuration_failures_infeasible():
    from app.coordinator import _trial
    from app.store.models import Experiment

    def exp(state, kind):
        return Experiment(params={"tp-size": 1}, state=state, objective=None, slo_ok=None, failure_kind=kind)

    assert _trial(exp("failed", "oom")).infeasible and _trial(exp("failed", "kv_cache")).infeasible
    assert not _trial(exp("failed", "engine_died")).infeasible
    assert not _trial(exp("failed", "worker_lost")).infeasible
