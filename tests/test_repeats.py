"""A winner that is not noise: the top configurations are measured again with other seeds,
the figure to rely on is the worst run for a latency and the mean for a throughput, and a
winner within the runner-up's noise is reported as a tie."""
from __future__ import annotations

import pytest

from app.domain.repeats import Run, summarise, verdict


def runs(*figures, penalty=0.0, slo_ok=True):
    return [Run(i, i, f, penalty, slo_ok) for i, f in enumerate(figures, start=1)]


@pytest.mark.unit
def test_the_figure_to_rely_on_is_the_worst_latency_and_the_mean_throughput():
    latency = summarise("a", {}, runs(1.0, 1.2, 1.1), "minimize_ttft")
    assert latency.relied == 1.2 and latency.mean == pytest.approx(1.1) and (latency.low, latency.high) == (1.0, 1.2)
    assert latency.std == pytest.approx(0.0816, abs=1e-4)
    throughput = summarise("b", {}, runs(900.0, 1000.0, 1100.0), "maximize_throughput")
    assert throughput.relied == pytest.approx(1000.0)
    penalised = summarise("c", {}, runs(1.0, 1.0) + [Run(9, 9, 1.0, 2.0, True)], "minimize_ttft")
    assert penalised.relied_score == pytest.approx(3.0)  # the worst SLO verdict of any run counts


@pytest.mark.unit
def test_a_winner_within_the_runner_ups_noise_is_a_tie():
    a = summarise("a", {"x": 1}, runs(1.00, 1.10, 1.05), "minimize_ttft")
    b = summarise("b", {"x": 2}, runs(1.08, 1.20, 1.15), "minimize_ttft")  # b's best (1.08) beats a's worst (1.10)
    found = verdict([b, a], "minimize_ttft")
    assert found["winner"] is a and found["runner_up"] is b and found["tie"] is True
    c = summarise("c", {"x": 3}, runs(1.11, 1.20, 1.15), "minimize_ttft")  # all of c's runs are worse than all of a's
    clear = verdict([a, c], "minimize_ttft")
    assert clear["winner"] is a and clear["tie"] is False
    up = verdict([summarise("d", {}, runs(1000.0, 1040.0), "maximize_throughput"),
                  summarise("e", {}, runs(1030.0, 1050.0), "maximize_throughput")], "maximize_throughput")
    assert up["winner"].key == "e" and up["tie"] is True  # d's best 1040 is above e's worst 1030
    third = summarise("f", {"x": 4}, runs(1.09, 1.30), "minimize_ttft")  # third, but its best run is within a's
    three = verdict([a, b, c, third], "minimize_ttft")
    assert three["runner_up"] is b and three["tied"] == [b, third]  # c is clear of a: not tied


@pytest.mark.unit
def test_a_configuration_that_broke_a_hard_slo_in_any_run_cannot_win():
    good = summarise("a", {}, runs(2.0, 2.1), "minimize_ttft")
    flaky = summarise("b", {}, runs(1.0) + runs(1.1, slo_ok=False), "minimize_ttft")
    found = verdict([good, flaky], "minimize_ttft")
    assert found["winner"] is good and found["runner_up"] is None and found["tie"] is False
    assert found["ineligible"] == [flaky]


@pytest.mark.unit
def test_after_the_search_the_top_configurations_are_measured_again_with_other_seeds(db, monkeypatch):
    """The coordinator, against a real store: once the search has nothing left, the two best
    configurations get `repeats` more experiments each (seeds 1..repeats, linked to the
    original), the strategy never sees them, and the task ends when they have."""
    from app.coordinator import _history, coordinate
    from app.store.db import session_scope
    from app.store.models import Task
    from app.store.pool import GpuSpec, register_worker
    from tests.helpers import experiments, mixed_task, run_attempt, submit

    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "30")
    register_worker("gpu-g@h", "g", "h", "gpu.g", 4, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(4)], "inc1", 1)
    data = mixed_task([{"max-running-requests": m} for m in (16, 32, 64)], parallel=4)
    data["optimization"].update(repeats=2, repeat_top=2)
    task_id = submit(data)
    figures = {16: 100.0, 32: 300.0, 64: 200.0}  # maximize_throughput: 32, then 64, are the top two
    for d in coordinate(task_id):
        exp = next(e for e in experiments(task_id) if e.id == d.experiment_id)
        tput = figures[exp.params["max-running-requests"]]
        run_attempt(d, objective=tput, measured={"maximize_throughput": tput}, penalty=0.0, slo_ok=True, metrics={})
    repeats = coordinate(task_id)
    exps = experiments(task_id)
    added = [e for e in exps if e.repeat_of is not None]
    assert len(repeats) == len(added) == 4
    by_id = {e.id: e for e in exps}
    assert sorted((by_id[e.repeat_of].params["max-running-requests"], e.seed) for e in added) == [
        (32, 1), (32, 2), (64, 1), (64, 2)]
    assert all(e.params == by_id[e.repeat_of].params for e in added)
    with session_scope() as s:
        assert s.get(Task, task_id).status == "running"
        assert len(_history(s, task_id)) == 3  # the strategy's history: the search only
    for d in repeats:
        exp = next(e for e in added if e.id == d.experiment_id)
        tput = figures[exp.params["max-running-requests"]] + 10 * exp.seed
        run_attempt(d, objective=tput, measured={"maximize_throughput": tput}, penalty=0.0, slo_ok=True, metrics={})
    assert coordinate(task_id) == []
    with session_scope() as s:
        task = s.get(Task, task_id)
        assert task.status == "completed"
        from app.serializers import task_dict

        v = task_dict(s, task, experiments=False)["repeats"]
    assert v["pending"] == 0 and not v["tie"]
    assert v["winner"]["params"] == {"max-running-requests": 32} and [r["measured"] for r in v["winner"]["runs"]] == [
        300.0, 310.0, 320.0]
    assert v["winner"]["relied"] == pytest.approx(310.0) and v["objective"]["unit"] == "tok/s/GPU"


def _budgeted_search(budget_h: float, patience: int | None = None) -> int:
    """A finished search of three 1-GPU configurations, 600 s each (0.5 GPU-h), in a task with
    a GPU-hour budget and two repeats of its top two; returns the task's id. The three score
    within 1 % of each other (the best, 64, then 32), inside a 5 % noise: with `patience` 2,
    the third result stops the task (no improvement)."""
    from app.coordinator import coordinate
    from app.store.pool import GpuSpec, register_worker
    from tests.helpers import experiments, mixed_task, run_attempt, submit

    register_worker("gpu-g@h", "g", "h", "gpu.g", 4, [GpuSpec(i, "sim", 1, f"u{i}", True) for i in range(4)], "inc1", 1)
    data = mixed_task([{"max-running-requests": m} for m in (16, 32, 64)], parallel=4)
    data["optimization"].update(repeats=2, repeat_top=2,
                                early_stopping={"probe": False, "gpu_hour_budget": budget_h,
                                                "patience": patience, "noise": 0.05})
    task_id = submit(data)
    for d in coordinate(task_id):
        m = next(e for e in experiments(task_id) if e.id == d.experiment_id).params["max-running-requests"]
        figure = 100 + m / 100
        run_attempt(d, seconds=600, objective=figure, measured={"maximize_throughput": figure}, penalty=0.0,
                    slo_ok=True, metrics={})
    return task_id


@pytest.mark.unit
def test_only_the_repeats_that_fit_in_what_is_left_of_the_gpu_hour_budget_are_created(db, monkeypatch):
    """0.9 GPU-h budget, 0.5 spent by the search: 0.4 GPU-h (1440 GPU-s) left. Seed by seed, a
    repeat of the best, 64 (600 s), fits twice; one of the runner-up, 32, does not: its run
    measured one level only (the incumbent probe stopped it), its predicted length, which a
    repeat's full run takes, is 1500 s. Four repeats before, two now."""
    from app.coordinator import coordinate
    from app.store.db import session_scope
    from app.store.models import Experiment
    from tests.helpers import experiments

    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "30")
    task_id = _budgeted_search(0.9)
    with session_scope() as s:
        (stopped,) = [e for e in s.query(Experiment).filter_by(task_id=task_id)
                      if e.params["max-running-requests"] == 32]
        stopped.expected_s, stopped.stop_reason = 1500.0, "cannot_win"
    placed = coordinate(task_id)
    added = [e for e in experiments(task_id) if e.repeat_of is not None]
    assert len(placed) == len(added) == 2
    assert sorted((e.params["max-running-requests"], e.seed) for e in added) == [(64, 1), (64, 2)]


@pytest.mark.parametrize("database_url", [pytest.param("sqlite", marks=pytest.mark.unit),
                                          pytest.param("postgresql", marks=pytest.mark.process)], indirect=True)
@pytest.mark.parametrize("patience", [None, 2])
def test_the_gpu_hour_budget_counts_the_repeats(database_url, patience, monkeypatch):
    """A repeat that runs long spends the budget: the task stops (GPU_BUDGET), its repeats not
    started are cancelled, and the task ends without exceeding its budget further. Measured with
    one aggregate query over the repeats (SQL durations on either database). So too when
    patience stopped the search first: its repeats still spend the budget."""
    from app.coordinator import _gpu_s, coordinate
    from app.store.db import session_scope
    from app.store.models import Experiment, Task
    from tests.helpers import experiments, run_attempt

    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "30")
    task_id = _budgeted_search(1.2, patience)  # 0.7 GPU-h left: room for all four 600 s repeats
    placed = coordinate(task_id)
    assert len(placed) == 4
    with session_scope() as s:
        assert s.get(Task, task_id).stop_reason == ("no_improvement" if patience else None)
    first = placed[0]
    run_attempt(first, seconds=3000, objective=1.0, measured={"maximize_throughput": 1.0}, penalty=0.0, slo_ok=True,
                metrics={})  # 0.5 + 0.83 GPU-h > 1.2
    with session_scope() as s:
        ended = s.get(Experiment, first.experiment_id).finished_at
        spent = _gpu_s(s, task_id, ended, Experiment.repeat_of.is_not(None))
    assert spent == pytest.approx(3000, abs=5)
    assert coordinate(task_id) == []
    with session_scope() as s:
        task = s.get(Task, task_id)
        assert (task.stop_reason, task.status) == ("gpu_budget", "completed")
    repeats = [e for e in experiments(task_id) if e.repeat_of is not None]
    assert sorted(e.state for e in repeats) == ["cancelled"] * 3 + ["succeeded"]
