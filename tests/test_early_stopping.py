"""Early stopping through the whole system: a real coordinator, a simulated GPU worker and
the simulated engine. A candidate that cannot beat the best at the deciding load level has its
other levels skipped and its engine stopped, succeeds with that level's score and says why;
the task stops creating experiments when they stop improving, and says why."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.helpers import mixed_task, run_to_end, start_stack


def stopping_task(configs: list[dict], **early_stopping) -> dict:
    data = mixed_task(configs, parallel=1)
    data["benchmark"].update(num_concurrency=[4, 16], max_requests_per_iteration=16)
    data["optimization"]["early_stopping"] = early_stopping
    return data


@pytest.mark.integration
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_what_cannot_win_stops_early_and_a_plateau_stops_the_task(stack):
    from app.serializers import task_dict
    from app.store.db import session_scope
    from app.store.models import Attempt, Experiment, Gpu, Task

    start_stack(stack, gpus=1)
    # 16 requests at once is best served by 16 running at most; one at a time cannot win
    configs = [{"max-running-requests": 16}, {"max-running-requests": 1}, {"max-running-requests": 2},
               {"max-running-requests": 3}, {"max-running-requests": 4}, {"max-running-requests": 5}]
    task_id = run_to_end(stack, stopping_task(configs, probe=True, patience=1))
    with session_scope() as s:
        task = s.get(Task, task_id)
        exps = s.execute(select(Experiment).where(Experiment.task_id == task_id).order_by(Experiment.seq)).scalars().all()
        assert task.status == "completed", stack.logs()
        first, second = exps[0], exps[1]
        # the first ran every level (nothing to beat yet), in the levels' written order
        assert first.stop_reason is None
        assert [lv["concurrency"] for lv in first.metrics["scenarios"][0]["levels"]] == [4, 16]
        # the second ran the deciding level only, then its engine was stopped: a success, not a failure
        assert second.state == "succeeded" and second.stop_reason == "cannot_win", second.error
        assert [lv["concurrency"] for lv in second.metrics["scenarios"][0]["levels"]] == [16]
        assert second.objective < first.objective and second.slo_ok is not False
        assert second.metrics["early_stop"]["incumbent"] == pytest.approx(first.objective)
        attempt = s.execute(select(Attempt).where(Attempt.experiment_id == second.id)).scalar_one()
        assert attempt.engine_gone_at is not None
        # the plateau: no improvement in 1 experiment, so not every configuration was run
        assert task.stop_reason == "no_improvement"
        assert sum(e.state == "succeeded" for e in exps) < len(configs)
        assert all(e.state in ("succeeded", "cancelled") for e in exps)
        gpu = s.execute(select(Gpu)).scalar_one()
        assert gpu.held_by is None and gpu.fenced_by is None  # the GPU is free again
        report = task_dict(s, task)
        assert report["stop"].startswith("stopped: no improvement")
        shown = {e["seq"]: e for e in report["experiments"]}
        assert shown[2]["stop_reason"] == "cannot_win" and shown[2]["stop"].startswith("stopped early")
        assert shown[2]["failure"] is None and shown[1]["stop"] is None


@pytest.mark.process
def test_in_virtual_time_each_level_is_replayed_once_and_the_probe_judges_that_figure(db, monkeypatch):
    """The job against a real simulated engine (virtual clock, the probe on): each level's
    figures are the model's replay, computed once as the level ends; the probe reads the level
    as it is kept (the deciding level was replayed twice: for the probe, then for the result)."""
    from app.coordinator import coordinate
    from app.store.pool import GpuSpec, register_worker
    from tests.helpers import experiments, submit
    from workers import sim_figures
    from workers.experiment_job import execute

    replayed: list[int] = []
    replay = sim_figures.virtual_level

    def counted(argv, level, spec, num_gpus):
        replayed.append(level["concurrency"])
        return replay(argv, level, spec, num_gpus)

    monkeypatch.setattr(sim_figures, "virtual_level", counted)
    monkeypatch.setenv("AUTOTUNER_WORKER_DEAD_AFTER", "60")
    register_worker("gpu-g@h", "g", "h", "gpu.g", 1, [GpuSpec(0, "sim", 1, "u0", True)], "inc1", 1)
    task_id = submit(stopping_task([{"max-running-requests": 16}, {"max-running-requests": 1}], probe=True))
    coordinate(task_id)
    for _ in range(2):  # the first's end places the second on the GPU it frees
        (queued,) = [e for e in experiments(task_id) if e.state == "queued"]
        assert execute(queued.id, queued.attempt, worker="gpu-g@h", host="h") == "succeeded"
    first, second = experiments(task_id)
    assert replayed == [16, 4, 16]  # the first: the deciding level, then the other; the second stops after it
    assert [lv["clock"] for lv in first.metrics["scenarios"][0]["levels"]] == ["virtual", "virtual"]
    assert second.stop_reason == "cannot_win" and second.metrics["early_stop"]["incumbent"] == first.objective
    (kept,) = second.metrics["scenarios"][0]["levels"]
    assert kept["clock"] == "virtual" and second.objective == kept["output_throughput_per_gpu"]


@pytest.mark.unit
def test_the_incumbent_counts_probed_running_experiments(db):
    """What a probe must beat: the best eligible result, or a running experiment's score at its
    deciding level (final); never a score that broke a hard SLO, nor another attempt's."""
    from app.store.db import session_scope
    from app.store.models import Experiment
    from tests.helpers import submit
    from workers.probe import incumbent, record_probe

    task_id = submit(mixed_task([{"max-running-requests": n} for n in (1, 2, 3, 4)]))
    rows = [("succeeded", 100.0, True), ("succeeded", 300.0, False), ("running", None, None), ("running", None, None)]
    with session_scope() as s:
        for seq, (state, objective, slo_ok) in enumerate(rows, start=1):
            s.add(Experiment(task_id=task_id, seq=seq, params={"max-running-requests": seq}, state=state,
                             objective=objective, slo_ok=slo_ok, attempt=1))
    with session_scope() as s:
        third, fourth = (s.execute(select(Experiment.id).where(Experiment.task_id == task_id, Experiment.seq == n))
                         .scalar_one() for n in (3, 4))
    assert incumbent(task_id, "maximize") == 100.0  # the SLO breaker's 300 never counts
    record_probe(third, 2, 150.0)  # a stale attempt writes nothing
    assert incumbent(task_id, "maximize") == 100.0
    record_probe(third, 1, 150.0)
    assert incumbent(task_id, "maximize") == 150.0
    assert incumbent(task_id, "minimize") == 100.0
    record_probe(fourth, 1, 90.0)
    assert incumbent(task_id, "minimize") == 90.0


@pytest.mark.unit
def test_pages_and_the_live_feed_show_why_things_stopped(client):
    """A stopped experiment reads as stopped early (not failed) on the task and experiment
    pages and in the live feed the page's script redraws from; the task shows its stop rule."""
    from app.domain.taskspec import parse_task
    from app.store.db import session_scope
    from app.store.models import Experiment, Task
    from app.task_service import create_task

    data = stopping_task([{"max-running-requests": 16}, {"max-running-requests": 1}], probe=True, patience=1)
    task_id = create_task(parse_task(data), enqueue=False)
    level = {"concurrency": 16, "completed": 16, "errors": 0, "error_kinds": {}, "duration": 2.0,
             "request_throughput": 8.0, "output_throughput": 50.0, "output_throughput_per_gpu": 50.0,
             "total_token_throughput": 250.0, "total_token_throughput_per_gpu": 250.0, "goodput": None,
             "good_requests": None, "request_rate": None,
             **{f"{stat}_{metric}_ms": 10.0 for stat in ("mean", "median", "p90", "p95", "p99")
                for metric in ("ttft", "tpot", "itl", "e2el")}}
    with session_scope() as s:
        task = s.get(Task, task_id)
        task.status, task.stop_reason = "completed", "no_improvement"
        s.add(Experiment(task_id=task_id, seq=1, params={"max-running-requests": 16}, state="succeeded",
                         objective=90.0, slo_ok=True, attempt=1))
        stopped = Experiment(task_id=task_id, seq=2, params={"max-running-requests": 1}, state="succeeded",
                             objective=50.0, slo_ok=True, attempt=1, stop_reason="cannot_win",
                             metrics={"scenarios": [{"scenario": "D(64,16)", "levels": [level]}],
                                      "early_stop": {"reason": "cannot_win", "incumbent": 90.0, "levels_run": 1}})
        s.add(stopped)
        s.flush()
        stopped_id = stopped.id
    page = client.get(f"/tasks/{task_id}").data.decode()
    assert "stopped: no improvement beyond noise in the last 1 experiments" in page
    assert "stopped early: at the deciding load level it cannot beat the best so far" in page
    assert 'class="failure"' not in page
    feed = client.get(f"/api/tasks/{task_id}/live").get_json()
    assert feed["task"]["stop"].startswith("stopped: no improvement")
    (row,) = [e for e in feed["experiments"]["experiments"] if e["seq"] == 2]
    assert row["stop_reason"] == "cannot_win" and row["failure"] is None
    html = client.get(f"/experiments/{stopped_id}").data.decode()
    assert 'id="exp-stop"' in html and "best so far 90" in html and "engine stopped" in html
