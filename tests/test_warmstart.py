"""Warm start: an earlier task with the same model, engine, hardware and traffic seeds a new
one (its best tried first, its history given to the sampler); any other is refused, saying
what differs."""
from __future__ import annotations

import pytest

from app.domain.taskspec import TaskSpecError, parse_task
from app.domain.warmstart import differences

pytestmark = pytest.mark.unit


def task(strategy="bayesian", space=(16, 32, 64), **extra) -> dict:
    data = {"task_name": "warm", "base_runtime": "sim", "model": {"id_or_path": "llama-3-8b"},
            "sim": {"time_scale": 0.02, "startup_seconds": 0.3},
            "parameters": {"max-running-requests": list(space)},
            "optimization": {"strategy": strategy, "objective": "maximize_throughput", "max_parallel_experiments": 4,
                             "timeout_per_iteration": 120},
            "benchmark": {"traffic_scenarios": ["D(64,16)"], "num_concurrency": [2], "max_requests_per_iteration": 6,
                          "max_time_per_iteration": 60}}
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


def test_differences_name_what_makes_a_history_unusable():
    base = parse_task(task())
    assert differences(base, parse_task(task(space=(8, 512)))) == []  # only the search space differs
    other = parse_task(task(model={"id_or_path": "qwen-7b"}, benchmark={"num_concurrency": [8]}))
    found = differences(base, other)
    assert found == ["model: 'llama-3-8b' there, 'qwen-7b' here", "load levels: [2.0] there, [8.0] here"]
    assert differences(base, parse_task(task(sim={"gpu": "A100-80GB"})))[0].startswith("simulated GPU")


@pytest.fixture
def earlier(db, monkeypatch):
    """A finished task that measured 16 -> 100, 32 -> 300, 64 -> 200 tok/s/GPU."""
    from app.coordinator import coordinate
    from app.store.pool import GpuSpec, register_worker
    from tests.helpers import experiments, run_attempt, submit

    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "30")
    register_worker("gpu-g@h", "g", "h", "gpu.g", 4, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(4)], "inc1", 1)
    task_id = submit(task(strategy="grid_search"))
    for d in coordinate(task_id):
        exp = next(e for e in experiments(task_id) if e.id == d.experiment_id)
        tput = {16: 100.0, 32: 300.0, 64: 200.0}[exp.params["max-running-requests"]]
        run_attempt(d, objective=tput, measured={"maximize_throughput": tput}, penalty=0.0, slo_ok=True, metrics={})
    coordinate(task_id)
    return task_id


def test_a_warm_start_tries_the_earlier_best_first_and_gives_the_sampler_its_history(earlier):
    from app.coordinator import coordinate
    from app.serializers import task_dict
    from app.store.db import session_scope
    from app.store.models import Task
    from tests.helpers import experiments, submit

    by_id = {e.id: e for e in experiments(earlier)}
    new = submit(task(space=(16, 32, 64, 128), optimization={"warm_start_from": earlier, "warm_start_top": 1}))
    coordinate(new)
    exps = experiments(new)
    warm = [e for e in exps if e.warm_from is not None]
    assert [e.params for e in warm] == [{"max-running-requests": 32}] and by_id[warm[0].warm_from].objective == 300.0
    assert warm[0].seq == 1  # tried first
    # the sampler had the earlier history: it spends nothing on 16 and 64 again, only on 128
    assert sorted(e.params["max-running-requests"] for e in exps) == [32, 128]
    with session_scope() as s:
        summary = task_dict(s, s.get(Task, new))
    assert summary["warm_start_from"] == earlier and summary["experiments"][0]["warm_from"] == warm[0].warm_from


def test_grid_with_a_warm_start_tries_the_earlier_best_first_then_its_own_order(earlier):
    from app.coordinator import coordinate
    from tests.helpers import experiments, submit

    new = submit(task(strategy="grid_search", space=(16, 32, 64, 128),
                      optimization={"warm_start_from": earlier, "warm_start_top": 2}))
    coordinate(new)
    exps = experiments(new)
    assert [(e.params["max-running-requests"], e.warm_from is not None) for e in exps[:2]] == [(32, True), (64, True)]
    assert sorted(e.params["max-running-requests"] for e in exps) == [16, 32, 64, 128]  # the grid is still covered


@pytest.mark.parametrize("change,expected", [
    ({"model": {"id_or_path": "qwen-7b"}}, "measured something else, so its history cannot be used: model: "),
    ({"benchmark": {"traffic_scenarios": ["D(512,64)"]}}, "traffic scenarios: ['D(64,16)'] there, ['D(512,64)'] here"),
    ({"optimization": {"objective": "minimize_ttft"}}, "objectives: ['maximize_throughput'] there"),
])
def test_an_incompatible_warm_start_is_refused_with_what_differs(earlier, change, expected):
    from app.store.db import session_scope
    from app.store.models import Task
    from app.task_service import create_task

    data = task(**change)
    data["optimization"]["warm_start_from"] = earlier
    with pytest.raises(TaskSpecError) as info:
        create_task(parse_task(data), enqueue=False)
    (error,) = info.value.errors
    assert error["loc"] == ["optimization", "warm_start_from"] and expected in error["msg"]
    with session_scope() as s:  # nothing stored
        assert s.query(Task).count() == 1


def test_a_warm_start_from_a_missing_task_is_refused(db):
    from app.task_service import create_task

    with pytest.raises(TaskSpecError) as info:
        create_task(parse_task(task(optimization={"warm_start_from": 999})), enqueue=False)
    assert info.value.errors == [{"loc": ["optimization", "warm_start_from"], "msg": "there is no task 999 to start from"}]


def test_a_warm_start_from_an_id_no_task_can_have_is_a_field_error():
    """Task ids are 32-bit columns: a larger id is refused by the schema, before any query
    (PostgreSQL would raise 'out of range' on the lookup)."""
    with pytest.raises(TaskSpecError) as info:
        parse_task(task(optimization={"warm_start_from": 2**40}))
    (error,) = info.value.errors
    assert error["loc"][-1] == "warm_start_from" and "2147483647" in error["msg"]
